"""Answer filters: small functions from a completion to an answer, composed into named pipelines.

As in lm-evaluation-harness, a pipeline is a chain of steps, each taking the previous step's
output (text, then a letter) and the question; ``None`` stops the chain. The harness scores every
completion with each pipeline in ``PIPELINES``.
"""

from __future__ import annotations

from typing import Callable

from medssr.answers import Mode, extract_answer
from medssr.data import MCQItem

Filter = Callable[[str, MCQItem], "str | None"]

THINK_END = "</think>"


def strip_thinking(text: str, item: MCQItem) -> str:
    """The text after the last ``</think>`` (reasoning models); unchanged when there is none."""
    return text.rsplit(THINK_END, 1)[1] if THINK_END in text else text


def extract(mode: Mode) -> Filter:
    """The option letter in ``mode`` (see :mod:`medssr.answers`), among the question's own letters."""

    def extract_letter(text: str, item: MCQItem) -> str | None:
        return extract_answer(text, item.letters, mode=mode, options=item.options)

    extract_letter.__name__ = f"extract_{mode}"
    return extract_letter


def chain(*steps: Filter) -> Filter:
    """Apply the steps in order; a step returning None ends the chain with None."""

    def run(text: str, item: MCQItem) -> str | None:
        value: str | None = text
        for step in steps:
            if value is None:
                return None
            value = step(value, item)
        return value

    run.__name__ = "+".join(getattr(step, "__name__", "step") for step in steps)
    return run


PIPELINES: dict[str, Filter] = {
    "strict": chain(strip_thinking, extract("strict")),
    "lenient": chain(strip_thinking, extract("lenient")),
}
