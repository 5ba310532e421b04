"""``medssr study``: what MedSSR's two stages do to a model, arm by arm, resumable, with a report."""

from medssr.study.config import StudyConfig
from medssr.study.run import StudyResult, run_study

__all__ = ["StudyConfig", "StudyResult", "run_study"]
