"""The ``chance`` arm: no model, each question scored 1/k (k: its number of options).

That is what a policy that knows nothing earns in expectation when it prefers no letter, or prefers one
but the gold letters are spread evenly; a trained arm must beat it to have learned more than the answer
format. Its per-question rows are k samples of which one is right, so every accuracy of a question is
exactly 1/k and paired comparisons with it carry no sampling noise of its own.

Beside it the arm records the letter counts of the reward targets per question type (the stage-1
pseudo-labels by the type synthesis recorded, the stage-2 gold answers by their benchmark): how far
a letter preference could carry a policy on its training data. A benchmark question is of its
``metadata["question_type"]`` when it has one (raredis_heldout), else of its benchmark's name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from medssr.data import LabeledItem, MCQItem
from medssr.evaluation.per_question import METRICS


def question_type(item: MCQItem, benchmark: str) -> str:
    kind = item.metadata.get("question_type")
    return kind if isinstance(kind, str) and kind else benchmark


def target_letters(groups: Iterable[tuple[Iterable[MCQItem], str]]) -> dict[str, dict[str, int]]:
    """Letter counts of the reward targets (a LabeledItem's label, else the answer) per question type, for
    (items, benchmark) groups."""
    counts: dict[str, Counter] = {}
    for items, benchmark in groups:
        for item in items:
            target = item.label if isinstance(item, LabeledItem) else item.answer
            if target is not None:
                counts.setdefault(question_type(item, benchmark), Counter())[target] += 1
    return {kind: dict(sorted(letters.items())) for kind, letters in sorted(counts.items())}


def chance_rows(benchmark: str, items: list[MCQItem]) -> list[dict]:
    """Per-question rows (``medssr.evaluation.per_question``): k samples per question, the first right."""
    return [
        {"model": "chance", "benchmark": benchmark, "item_id": item.id, "sample": sample,
         **{metric: sample == 0 for metric in METRICS}}
        for item in items
        for sample in range(len(item.options))
    ]
