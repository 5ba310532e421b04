"""Training rows for GRPO: the chat prompt of each question and the letter its reward is measured against."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from medssr.data import LabeledItem, MCQItem, RecordError, read_jsonl
from medssr.prompts import PromptLimit, build_messages

log = logging.getLogger(__name__)


@dataclass
class TrainingRows:
    rows: list[dict]
    errors: list[RecordError]

    @property
    def rejected(self) -> int:
        return len(self.errors)


def load_training_rows(path: str | os.PathLike, stage: str, limit: PromptLimit | None = None) -> TrainingRows:
    """Stage "self": LabeledItem rows, target = the pseudo-label; "supervised": MCQItem rows, target = the answer.

    Bad lines are skipped and reported (file, line, field); a supervised item without an answer is a bad
    line, and so is one whose prompt is longer than ``limit``.
    """
    record_type = LabeledItem if stage == "self" else MCQItem
    result = read_jsonl(path, record_type, on_error="skip")
    if limit is not None:
        result = limit.reject_long(result, path)
    errors = list(result.errors)
    rows = []
    for line, item in zip(result.lines, result.records, strict=True):
        target = item.label if stage == "self" else item.answer
        if target is None:
            errors.append(RecordError(path, line, "answer", "missing: supervised training needs the gold answer"))
            continue
        rows.append({"prompt": build_messages(item), "target": target, "letters": "".join(item.letters)})
    errors.sort(key=lambda error: error.line)
    for error in errors[:5]:
        log.warning("skipped %s", error)
    if errors:
        log.warning("%s: %d record(s) rejected, %d kept", path, len(errors), len(rows))
    if not rows:
        raise ValueError(f"{path}: no usable training records ({len(errors)} rejected)")
    return TrainingRows(rows=rows, errors=errors)
