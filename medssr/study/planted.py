"""Labels of a set precision: the knowledge-base key, corrupted on a seeded share of the questions.

Of n keyed questions, round(P x n) keep their key (round of the sum of 1/k over the questions for
"chance") and the rest get a wrong letter drawn uniformly from the question's other letters. Which
questions keep their key and which wrong letter each other one gets are seeded, so a study's
planted labels are the same on every machine; the share of right labels is the requested one up to
rounding, not up to sampling error.
"""

from __future__ import annotations

import random

from medssr.data import LabeledItem
from medssr.study.plan import parse_precision


def planted_labels(items: list[LabeledItem], precision: str, seed: int) -> list[LabeledItem]:
    """``items`` (labelled by their key) with their labels corrupted to ``precision`` (a number, or "chance")."""
    share = parse_precision(precision)
    target = sum(1 / len(item.options) for item in items) if share is None else share * len(items)
    rng = random.Random(f"{seed}:{precision}")
    order = list(range(len(items)))
    rng.shuffle(order)
    right = set(order[: round(target)])
    planted = []
    for index, item in enumerate(items):
        label = item.label
        if index not in right:
            label = rng.choice([letter for letter in item.letters if letter != item.label])
        planted.append(item.model_copy(update={"label": label}))
    return planted


def precision_of(planted: list[LabeledItem], keyed: list[LabeledItem]) -> float:
    """The share of planted labels equal to the key, question by question."""
    keys = {item.id: item.label for item in keyed}
    return sum(item.label == keys[item.id] for item in planted) / len(planted) if planted else float("nan")
