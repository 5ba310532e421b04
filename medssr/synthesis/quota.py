"""Exact quota allocation (largest remainder) and the per-item plan that meets every quota at once."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass


def derive_seed(*parts) -> int:
    """A 64-bit seed from any parts, stable across processes (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` into integer counts proportional to ``weights`` that sum exactly to ``total``:
    floors first, then the remaining units to the largest fractional parts (ties by key)."""
    keys = sorted(k for k, w in weights.items() if w > 0)
    weight_sum = sum(weights[k] for k in keys)
    if total < 0 or (total and not weight_sum):
        raise ValueError("largest_remainder: needs total >= 0 and a positive weight")
    exact = {k: total * weights[k] / weight_sum for k in keys}
    counts = {k: int(exact[k]) for k in keys}
    left = total - sum(counts.values())
    for key in sorted(keys, key=lambda k: (-(exact[k] - counts[k]), k))[:left]:
        counts[key] += 1
    return counts


@dataclass(frozen=True)
class Cell:
    """What one knowledge item must be."""

    category: str
    question_type: str
    difficulty: str


def plan_cells(
    total: int,
    categories: dict[str, float],
    types: dict[str, float],
    difficulties: dict[str, float],
    seed: int,
    supports: dict[str, set[str]] | None = None,
) -> list[Cell]:
    """``total`` cells whose category, type and difficulty counts each meet their quota exactly.

    The three quota lists are shuffled independently and zipped. ``supports`` (category -> types it can
    produce) repairs impossible pairs by swapping types between cells, which keeps every count intact.
    """
    rng = random.Random(derive_seed(seed, "plan"))

    def expand(weights: dict[str, float]) -> list[str]:
        labels = [k for k, c in largest_remainder(total, weights).items() for _ in range(c)]
        rng.shuffle(labels)
        return labels

    cats, kinds, levels = expand(categories), expand(types), expand(difficulties)
    if supports:
        for i, (cat, kind) in enumerate(zip(cats, kinds)):
            if kind in supports.get(cat, set()):
                continue
            for j in range(len(cats)):
                if kinds[j] in supports.get(cat, set()) and kind in supports.get(cats[j], set()):
                    kinds[i], kinds[j] = kinds[j], kinds[i]
                    break
    return [Cell(c, k, d) for c, k, d in zip(cats, kinds, levels)]
