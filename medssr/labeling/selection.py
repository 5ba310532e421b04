"""Which majority votes become pseudo-labels: enough parsed answers, a clear winner, a useful agreement."""

from __future__ import annotations

from dataclasses import dataclass

from medssr.answers import Vote

TOO_FEW_PARSED = "too_few_parsed"
TIE = "tie"
BELOW_MIN = "below_min_agreement"
ABOVE_MAX = "above_max_agreement"
DROP_REASONS = (TOO_FEW_PARSED, TIE, BELOW_MIN, ABOVE_MAX)


@dataclass(frozen=True)
class SelectionRule:
    """Keep a vote when ``min_parsed`` answers parsed, one letter won, and min <= agreement <= max.

    Unanimous votes carry no GRPO signal (every rollout gets the same reward), and near-uniform votes
    are mostly noise, so both ends are cut.
    """

    min_agreement: float
    max_agreement: float
    min_parsed: int

    def __post_init__(self):
        if not 0.0 <= self.min_agreement <= self.max_agreement <= 1.0:
            raise ValueError(
                f"agreement bounds must satisfy 0 <= min <= max <= 1, got {self.min_agreement} and {self.max_agreement}"
            )
        if self.min_parsed < 1:
            raise ValueError("min_parsed must be >= 1")

    def drop_reason(self, vote: Vote) -> str | None:
        """Why the vote is not kept (one of DROP_REASONS), or None when it is kept."""
        if vote.parsed < self.min_parsed:
            return TOO_FEW_PARSED
        if vote.label is None:
            return TIE
        # Agreement is k / parsed; compare with a little slack so 5/8 >= 0.625 holds in floating point.
        if vote.agreement < self.min_agreement - 1e-9:
            return BELOW_MIN
        if vote.agreement > self.max_agreement + 1e-9:
            return ABOVE_MAX
        return None
