"""Seed-based items: human-annotated questions, option order shuffled (answer letter remapped) or
paraphrased by the generator (see :mod:`medssr.synthesis.rewrite`)."""

from __future__ import annotations

import random
import re
from pathlib import Path

from medssr.data import LETTERS, MCQItem, read_jsonl, read_reference_benchmark
from medssr.errors import UserError
from medssr.knowledge.base import normalise_name

# Options that refer to other options ("All of the above", "Both A and B") only make sense in place.
_POSITIONAL = re.compile(
    r"\b(all|none|both|neither) of the (above|following)\b|\b(both|either|neither)\b.*\b(and|or|nor)\b|^[A-J]( and |, |\s*&\s*)[A-J]\b",
    re.IGNORECASE,
)


def read_seed_questions(path: str | Path) -> tuple[list[MCQItem], dict[str, int]]:
    """Seed questions from JSONL of MCQItem or a reference-format benchmark JSON. Bad records are
    skipped and counted, as are items without an answer key or with duplicate options."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"seed_questions: no such file: {path}")
    result = read_jsonl(path, on_error="skip") if path.suffix == ".jsonl" else read_reference_benchmark(path, on_error="skip")
    usable = [item for item in result.records if item.answer is not None and _distinct_options(item)]
    counts = {"read": len(result.records), "invalid_records": result.rejected, "unusable": len(result.records) - len(usable)}
    return usable, counts


def _distinct_options(item: MCQItem) -> bool:
    texts = [normalise_name(t) for t in item.options.values()]
    return len(set(texts)) == len(texts)


def positional_options(item: MCQItem) -> bool:
    return any(_POSITIONAL.search(text) for text in item.options.values())


def shuffle_options(item: MCQItem, rng: random.Random) -> tuple[dict[str, str], str, bool]:
    """The options in a new order with the answer letter remapped; items whose options refer to other
    options keep their order. Returns (options, answer, shuffled)."""
    texts = list(item.options.values())
    if positional_options(item):
        return dict(item.options), item.answer, False
    order = list(range(len(texts)))
    rng.shuffle(order)
    letters = LETTERS[: len(texts)]
    old_index = list(item.options).index(item.answer)
    options = {letters[new]: texts[old] for new, old in enumerate(order)}
    return options, letters[order.index(old_index)], True
