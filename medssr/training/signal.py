"""Did a GRPO stage learn anything? Its steps' reward variance and whether its weights moved.

GRPO's advantage is a completion's reward minus its group's mean reward: a group whose completions all
earned the same reward contributes no gradient. TRL logs, per step, the share of such groups
(``frac_reward_zero_std``); a step with reward variance is one where some group was not of that kind.
A stage in which no step had reward variance, or whose saved weights equal the ones it started from,
learned nothing: every report flags it and never shows its model as a result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

ZERO_STD = "frac_reward_zero_std"
"""TRL's per-step share of prompt groups whose rewards were all equal."""


@dataclass(frozen=True)
class LearningSignal:
    """What a stage's steps had to learn from and whether its weights changed."""

    steps: int
    """Training steps whose reward statistics were logged."""
    steps_with_variance: int
    """Steps in which at least one group's rewards differed."""
    groups_with_variance: float | None
    """Mean share of a step's groups whose rewards differed (None: no step logged)."""
    max_weight_change: float | None
    """Largest absolute difference of a weight between the saved model and the start (None: not compared)."""

    @property
    def share_steps_with_variance(self) -> float | None:
        return self.steps_with_variance / self.steps if self.steps else None

    @property
    def weights_changed(self) -> bool | None:
        return None if self.max_weight_change is None else self.max_weight_change > 0

    @property
    def learned(self) -> bool:
        """False when no logged step had reward variance or the weights are the start's, bit for bit."""
        return self.steps_with_variance > 0 and self.weights_changed is not False

    def reason(self) -> str:
        """Why the stage is flagged (empty when it is not)."""
        problems = []
        if self.steps_with_variance == 0:
            problems.append(f"no reward variance in any of its {self.steps} steps")
        if self.weights_changed is False:
            problems.append("its weights are the ones it started from")
        return "; ".join(problems)

    def describe(self) -> str:
        """One line: steps with variance, weights changed or not, and the flag."""
        share = self.share_steps_with_variance
        text = f"{self.steps_with_variance} of {self.steps} steps with reward variance" + (f" ({100 * share:.0f}%)" if share is not None else "")
        if self.max_weight_change is not None:
            text += f", weights changed (max |change| {self.max_weight_change:.2g})" if self.weights_changed else ", weights unchanged"
        return text if self.learned else f"{text}: LEARNED NOTHING ({self.reason()})"

    def to_dict(self) -> dict:
        return {**asdict(self), "share_steps_with_variance": self.share_steps_with_variance,
                "weights_changed": self.weights_changed, "learned": self.learned, "reason": self.reason()}

    @classmethod
    def from_dict(cls, data: Mapping) -> LearningSignal:
        return cls(int(data["steps"]), int(data["steps_with_variance"]), data.get("groups_with_variance"), data.get("max_weight_change"))


def reward_variance(history: Iterable[Mapping]) -> tuple[int, int, float | None]:
    """(steps logged, steps with reward variance, mean share of groups with variance) from a Trainer's log history."""
    shares = [float(entry[ZERO_STD]) for entry in history if ZERO_STD in entry]
    if not shares:
        return 0, 0, None
    return len(shares), sum(share < 1.0 for share in shares), 1.0 - sum(shares) / len(shares)


def _tensors(folder: Path) -> dict[str, Path]:
    """Every tensor name of a model folder's safetensors files, with the file that holds it."""
    from safetensors import safe_open

    where = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            where.update({name: path for name in handle.keys()})
    return where


def max_weight_change(start: str | Path, trained: str | Path) -> float | None:
    """The largest absolute difference of any weight the two folders' safetensors share (compared in float32,
    one tensor at a time), or None when they share none (a start that is not a safetensors folder)."""
    from safetensors import safe_open

    before, after = _tensors(Path(start)), _tensors(Path(trained))
    shared = sorted(set(before) & set(after))
    if not shared:
        return None
    largest = 0.0
    for name in shared:
        with safe_open(str(before[name]), framework="pt") as a, safe_open(str(after[name]), framework="pt") as b:
            old, new = a.get_tensor(name).float(), b.get_tensor(name).float()
        if old.shape != new.shape:
            return math.inf
        largest = max(largest, float((new - old).abs().max()) if old.numel() else 0.0)
    return largest


def learning_signal(history: Iterable[Mapping], start: str | Path, trained: str | Path) -> LearningSignal:
    steps, with_variance, groups = reward_variance(history)
    return LearningSignal(steps, with_variance, groups, max_weight_change(start, trained))


LEARNED_TAG = "medssr.learned"
"""Tag of a training run: "true", or "false" when it learned nothing."""
FLAG_TAG_PREFIX = "medssr.learned_nothing."
"""Tag of the parent run per flagged stage (``medssr.learned_nothing.train-self``), its value the reason."""
METRIC_PREFIX = "signal."


def tracking_fields(signal: Mapping | None, stage: str) -> tuple[dict, dict, dict]:
    """What MLflow gets of a stage's ``learning_signal`` (metrics.json's dict): (the parent run's metrics
    ``signal.<stage>.*``, the stage run's tags, the parent run's tags)."""
    if not signal:
        return {}, {}, {}
    keys = ("steps", "steps_with_variance", "share_steps_with_variance", "groups_with_variance", "max_weight_change", "learned")
    metrics = {f"{METRIC_PREFIX}{stage}.{key}": signal[key] for key in keys if signal.get(key) is not None}
    parent_tags = {} if signal["learned"] else {f"{FLAG_TAG_PREFIX}{stage}": signal["reason"]}
    return metrics, {LEARNED_TAG: str(bool(signal["learned"])).lower()}, parent_tags
