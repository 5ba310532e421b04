"""Evaluation on the paper's ten benchmarks plus our held-out rare-disease set: registry, harness, report."""

from medssr.evaluation.harness import EvaluationConfig, EvaluationResult, run_evaluation
from medssr.evaluation.registry import BENCHMARKS, BenchmarkSpec, BenchmarkUnavailable, HubSource, load_benchmark

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "BenchmarkUnavailable",
    "EvaluationConfig",
    "EvaluationResult",
    "HubSource",
    "load_benchmark",
    "run_evaluation",
]
