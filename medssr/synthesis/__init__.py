"""Knowledge-enhanced, distribution-controlled synthesis of rare-disease reasoning questions."""

from medssr.synthesis.config import DIFFICULTIES, HELDOUT_FRACTION, QUESTION_TYPES, SynthesisConfig
from medssr.synthesis.run import SynthesisResult, run_synthesis

__all__ = ["DIFFICULTIES", "HELDOUT_FRACTION", "QUESTION_TYPES", "SynthesisConfig", "SynthesisResult", "run_synthesis"]
