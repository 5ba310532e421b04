"""Training rows for GRPO: the chat prompt of each question and the letter its reward is measured against."""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass

from medssr.data import LabeledItem, MCQItem, RecordError, read_jsonl
from medssr.prompt_limit import PromptLimit
from medssr.prompts import build_messages

log = logging.getLogger(__name__)


@dataclass
class TrainingRows:
    rows: list[dict]
    errors: list[RecordError]

    @property
    def rejected(self) -> int:
        return len(self.errors)


def balance_letters(items: list[MCQItem], targets: list[str], seed: int) -> list[tuple[MCQItem, str]]:
    """Each item with its options reordered so that, among items with the same number of options, the
    targets fall on every letter equally often (the items in a seeded order take the letters in turn).
    The target's text moves to its new letter and the other options keep their order; the gold answer
    and the pseudo-label move with their texts."""
    rng = random.Random(seed)
    by_width: dict[int, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_width[len(item.options)].append(index)
    new_target = {}
    for indices in by_width.values():
        rng.shuffle(indices)
        for turn, index in enumerate(indices):
            new_target[index] = items[index].letters[turn % len(items[index].letters)]
    balanced = []
    for index, (item, target) in enumerate(zip(items, targets, strict=True)):
        letters, goal = item.letters, new_target[index]
        others = iter(letter for letter in letters if letter != target)
        old_of = {new: (target if new == goal else next(others)) for new in letters}
        moved = {old: new for new, old in old_of.items()}
        update = {"options": {new: item.options[old] for new, old in old_of.items()}}
        if item.answer is not None:
            update["answer"] = moved[item.answer]
        if isinstance(item, LabeledItem):
            update["label"] = moved[item.label]
        balanced.append((item.model_copy(update=update), goal))
    return balanced


def load_training_rows(path: str | os.PathLike, stage: str, limit: PromptLimit | None = None,
                       balance_letters_seed: int | None = None) -> TrainingRows:
    """Stage "self": LabeledItem rows, target = the pseudo-label; "supervised": MCQItem rows, target = the answer.

    Bad lines are skipped and reported (file, line, field); a supervised item without an answer is a bad
    line, and so is one whose prompt is longer than ``limit``. With ``balance_letters_seed`` the options
    are reordered by :func:`balance_letters` with that seed.
    """
    record_type = LabeledItem if stage == "self" else MCQItem
    result = read_jsonl(path, record_type, on_error="skip")
    if limit is not None:
        result = limit.reject_long(result, path)
    errors = list(result.errors)
    usable = []
    for line, item in zip(result.lines, result.records, strict=True):
        target = item.label if stage == "self" else item.answer
        if target is None:
            errors.append(RecordError(path, line, "answer", "missing: supervised training needs the gold answer"))
            continue
        usable.append((item, target))
    if balance_letters_seed is not None:
        usable = balance_letters([item for item, _ in usable], [target for _, target in usable], balance_letters_seed)
    rows = [{"prompt": build_messages(item), "target": target, "letters": "".join(item.letters)} for item, target in usable]
    errors.sort(key=lambda error: error.line)
    for error in errors[:5]:
        log.warning("skipped %s", error)
    if errors:
        log.warning("%s: %d record(s) rejected, %d kept", path, len(errors), len(rows))
    if not rows:
        raise ValueError(f"{path}: no usable training records ({len(errors)} rejected)")
    return TrainingRows(rows=rows, errors=errors)
