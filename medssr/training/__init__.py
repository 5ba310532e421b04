"""GRPO training stages on TRL: stage 1 against pseudo-labels ("self"), stage 2 against gold answers ("supervised").

Entry point for torchrun (in a PyTorchJob or locally): ``python -m medssr.training --config CFG.yaml [--field value ...]``.
"""

from medssr.training.config import TrainingConfig
from medssr.training.grpo import TrainingResult, run_training

__all__ = ["TrainingConfig", "TrainingResult", "run_training"]
