"""The ``prior`` arm: no model, per question type always the answer letter most common in the training data.

A trained arm that only learned which letters its rewards favour scores what this arm scores, so a
gain over it is more than an answer prior. The training data are the reward targets of the medssr arm:
the stage-1 pseudo-labels (by the question type synthesis recorded) and the stage-2 gold answers (by
the benchmark they were split from). A benchmark question is of its ``metadata["question_type"]``
when it has one (raredis_heldout), else of its benchmark's name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from medssr.data import EvalResult, LabeledItem, MCQItem


def question_type(item: MCQItem, benchmark: str) -> str:
    kind = item.metadata.get("question_type")
    return kind if isinstance(kind, str) and kind else benchmark


class AnswerPrior:
    """Letter counts of the training targets, per question type and over all of them."""

    def __init__(self) -> None:
        self.by_type: dict[str, Counter] = {}
        self.overall: Counter = Counter()

    def add(self, items: Iterable[MCQItem], benchmark: str) -> AnswerPrior:
        """Count each item's reward target: its pseudo-label (LabeledItem), else its gold answer."""
        for item in items:
            target = item.label if isinstance(item, LabeledItem) else item.answer
            if target is None:
                continue
            self.by_type.setdefault(question_type(item, benchmark), Counter())[target] += 1
            self.overall[target] += 1
        return self

    def predict(self, item: MCQItem, benchmark: str) -> str:
        """The most common target among the question's own letters for its type (ties: the earlier
        letter); a type the training data never had falls back to all types together, then to A."""
        for counts in (self.by_type.get(question_type(item, benchmark), Counter()), self.overall):
            usable = {letter: counts[letter] for letter in item.letters if counts[letter]}
            if usable:
                return max(item.letters, key=lambda letter: (usable.get(letter, 0), -item.letters.index(letter)))
        return item.letters[0]

    def table(self) -> dict[str, dict[str, int]]:
        return {kind: dict(sorted(counts.items())) for kind, counts in sorted(self.by_type.items())}


def prior_records(prior: AnswerPrior, benchmark: str, items: list[MCQItem], n: int) -> list[EvalResult]:
    """The arm's answers as evaluation records: the same letter in each of the ``n`` samples (so its
    strict, lenient and reference-protocol accuracies are one number)."""
    records = []
    for item in items:
        letter = prior.predict(item, benchmark)
        for sample in range(n):
            records.append(
                EvalResult(
                    model="prior", benchmark=benchmark, item_id=item.id, sample=sample, completion="", answer=item.answer,
                    strict=letter, lenient=letter, recovered=None,
                    correct_strict=letter == item.answer, correct_lenient=letter == item.answer,
                )
            )
    return records
