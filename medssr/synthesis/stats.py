"""Requested-versus-achieved shares of a synthesis run, and the chart of them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from medssr.data import MCQItem
from medssr.storage import atomic_writer

DIMENSIONS = ("rarity", "category", "question_type", "difficulty")


def shares(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: round(counts[k] / total, 6) if total else 0.0 for k in sorted(counts)}


def achieved_shares(items: list[MCQItem]) -> dict[str, dict[str, float]]:
    """Rarity over all items; category, type and difficulty over the knowledge items."""
    knowledge = [i for i in items if i.metadata.get("origin") == "knowledge"]
    return {
        "rarity": shares(Counter("rare" if i.metadata.get("rare") else "seed" for i in items)),
        "category": shares(Counter(i.metadata["category"] for i in knowledge)),
        "question_type": shares(Counter(i.metadata["question_type"] for i in knowledge)),
        "difficulty": shares(Counter(i.metadata["difficulty"] for i in knowledge)),
    }


def write_chart(path: str | Path, requested: dict[str, dict[str, float]], achieved: dict[str, dict[str, float]]) -> None:
    """Grouped bars, requested vs achieved, one panel per dimension (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(DIMENSIONS), 1, figsize=(11, 3.2 * len(DIMENSIONS)))
    for axis, dimension in zip(axes, DIMENSIONS):
        keys = sorted(set(requested.get(dimension, {})) | set(achieved.get(dimension, {})))
        positions = range(len(keys))
        axis.bar([p - 0.2 for p in positions], [requested.get(dimension, {}).get(k, 0) for k in keys], 0.4, label="requested")
        axis.bar([p + 0.2 for p in positions], [achieved.get(dimension, {}).get(k, 0) for k in keys], 0.4, label="achieved")
        axis.set_xticks(list(positions))
        axis.set_xticklabels(keys, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel("share")
        axis.set_title(dimension.replace("_", " "))
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    with atomic_writer(path, mode="wb", encoding=None) as handle:
        figure.savefig(handle, format="png", dpi=90)
    plt.close(figure)
