"""From per-sample answers to accuracy: mean +- std over the n samples, bootstrap CI, recovery rate."""

from __future__ import annotations

import numpy as np


def _mean_std(correct: np.ndarray) -> tuple[float, float]:
    """Accuracy of each sample index (column), then mean and (population) std over the samples."""
    per_sample = correct.mean(axis=0)
    return float(per_sample.mean()), float(per_sample.std())


def bootstrap_ci(correct: np.ndarray, samples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the accuracy when the QUESTIONS are resampled (all n samples of a
    question move together: they are not independent)."""
    items = correct.shape[0]
    if items == 0 or samples < 1:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    per_item = correct.mean(axis=1)
    picks = rng.integers(0, items, size=(samples, items))
    stats = per_item[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def score(
    gold: list[str],
    strict: list[list[str | None]],
    lenient: list[list[str | None]],
    recovered: list[list[str | None]],
    bootstrap_samples: int,
    seed: int,
) -> dict:
    """Scores of one model on one benchmark. ``recovered[i][s]`` is the constrained second pass's letter
    for samples strict extraction could not read (None elsewhere). Accuracies never include it; the
    reference protocol's number (strict, with forced guesses where strict failed) is reported beside."""
    items = len(gold)
    n = len(strict[0]) if items else 0
    gold_col = np.array(gold, dtype=object).reshape(-1, 1) if items else np.zeros((0, 1), dtype=object)
    strict_a = np.array(strict, dtype=object).reshape(items, n)
    lenient_a = np.array(lenient, dtype=object).reshape(items, n)
    recovered_a = np.array(recovered, dtype=object).reshape(items, n)
    strict_ok = (strict_a == gold_col) & (strict_a != None)  # noqa: E711 (elementwise on object arrays)
    lenient_ok = (lenient_a == gold_col) & (lenient_a != None)  # noqa: E711
    unparsed = strict_a == None  # noqa: E711
    recovered_any = unparsed & (recovered_a != None)  # noqa: E711
    recovered_ok = recovered_any & (recovered_a == gold_col)
    with_recovery = strict_ok | recovered_ok
    cells = max(items * n, 1)
    result = {"items": items, "n": n}
    for name, matrix in (("strict", strict_ok), ("lenient", lenient_ok), ("with_recovery", with_recovery)):
        mean, std = _mean_std(matrix.astype(float)) if items else (float("nan"), float("nan"))
        low, high = bootstrap_ci(matrix.astype(float), bootstrap_samples, seed)
        result[name] = {"mean": mean, "std": std, "ci95": [low, high]}
    result["parsed_strict"] = float((~unparsed).sum() / cells)
    result["parsed_lenient"] = float((lenient_a != None).sum() / cells)  # noqa: E711
    result["recovery_rate"] = float(unparsed.sum() / cells)
    result["recovered"] = int(recovered_any.sum())
    result["recovered_correct"] = int(recovered_ok.sum())
    return result


def paired_bootstrap(
    candidate: np.ndarray, reference: np.ndarray, samples: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean difference ``candidate - reference`` over paired questions, with its percentile interval
    when the QUESTIONS are resampled (both models' results for a question move together, so the
    question's own difficulty cancels out: the interval is far narrower than two unpaired ones)."""
    if candidate.shape != reference.shape:
        raise ValueError(f"paired results must have one value per question each, got {candidate.shape} and {reference.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    diff = np.asarray(candidate, dtype=float) - np.asarray(reference, dtype=float)
    if diff.size == 0 or samples < 1:
        return (float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, diff.size, size=(samples, diff.size))
    stats = diff[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)


POWER = 0.8
"""The power a minimal detectable effect is stated at."""


def minimal_detectable_effect(difference: np.ndarray, level: float = 0.95, power: float = POWER) -> float:
    """The smallest true mean difference that a paired comparison of these questions, its interval at ``level``,
    excludes 0 for with probability ``power``: (z of (1 + level) / 2 + z of power) x the standard error of the
    mean per-question difference (normal approximation; NaN for fewer than two questions)."""
    from statistics import NormalDist

    difference = np.asarray(difference, dtype=float)
    if difference.size < 2:
        return float("nan")
    standard_error = float(difference.std(ddof=1)) / np.sqrt(difference.size)
    return (NormalDist().inv_cdf((1 + level) / 2) + NormalDist().inv_cdf(power)) * standard_error
