"""Training rows for GRPO: the chat prompt of each question and the letter its reward is measured against."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from medssr.data import LabeledItem, MCQItem, RecordError, read_jsonl
from medssr.prompts import build_messages

log = logging.getLogger(__name__)


@dataclass
class TrainingRows:
    rows: list[dict]
    errors: list[RecordError]

    @property
    def rejected(self) -> int:
        return len(self.errors)


def load_training_rows(path: str | os.PathLike, stage: str) -> TrainingRows:
    """Stage "self": LabeledItem rows, target = the pseudo-label; "supervised": MCQItem rows, target = the answer.

    Bad lines are skipped and reported (file, line, field); a supervised item without an answer is a bad line.
    """
    record_type = LabeledItem if stage == "self" else MCQItem
    result = read_jsonl(path, record_type, on_error="skip")
    errors = list(result.errors)
    rows = []
    for line, item in _numbered(path, result.records, errors):
        target = item.label if stage == "self" else item.answer
        if target is None:
            errors.append(RecordError(path, line, "answer", "missing: supervised training needs the gold answer"))
            continue
        rows.append({"prompt": build_messages(item), "target": target, "letters": "".join(item.letters)})
    for error in errors[:5]:
        log.warning("skipped %s", error)
    if errors:
        log.warning("%s: %d record(s) rejected, %d kept", path, len(errors), len(rows))
    if not rows:
        raise ValueError(f"{path}: no usable training records ({len(errors)} rejected)")
    return TrainingRows(rows=rows, errors=errors)


def _numbered(path, records, errors):
    """Pair each accepted record with its line number (read_jsonl keeps order and skips blanks and rejects)."""
    bad_lines = {error.line for error in errors}
    numbers = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip() and number not in bad_lines:
                numbers.append(number)
    return zip(numbers, records, strict=True)
