"""Self-consistency pseudo-labels (stage 1 of MedSSR's RL), their filter and their audit."""

from medssr.labeling.pipeline import LABELING_SAMPLING, LabelingConfig, LabelingResult, run_labeling
from medssr.labeling.selection import DROP_REASONS, SelectionRule

__all__ = ["DROP_REASONS", "LABELING_SAMPLING", "LabelingConfig", "LabelingResult", "SelectionRule", "run_labeling"]
