"""Which arms a study has, which training runs make each one, and which pairs of arms it compares.

The arms every study has: ``base``; ``chance`` (no model: each question scored 1/k, what a policy that knows
nothing and prefers no letter earns in expectation); ``rl-real`` (stage 2 only); ``self`` (stage 1 only);
``medssr`` (stage 1, then stage 2); ``oracle`` (stage 1 on the same kept questions rewarded by their
knowledge-base key, then stage 2). Settings add more: ``planted-P`` (stage 1 rewarded by the key corrupted
so that a share P of the labels is right, then stage 2: the gain as a function of label precision) and,
per extra training seed S, ``rl-real-seedS`` and ``medssr-seedS`` (the headline pair trained again), and per
oracle length N, ``oracle-Nsteps`` (stage 1 only on the key for N steps: how long the positive control must train).

With ``match_steps`` rl-real trains stage 2 for as many GRPO steps as medssr's two stages together, so the
two differ in what they learn from, not in how long they train.
"""

from __future__ import annotations

from dataclasses import dataclass

CHANCE = "chance"
"""A planted precision of 1/k per question (k: its number of options)."""


@dataclass(frozen=True)
class TrainingRun:
    """One GRPO stage of a study: its stage config, the run it starts from and the data it trains on."""

    stage: str
    """"self" (train_self's settings, labelled data) or "supervised" (train_supervised's, gold answers)."""
    start: str
    """"base" or the training run whose model it continues."""
    data: str
    """The study input it trains on: stage2, pseudo_labels, kb_labels or planted-P."""
    seed: int | None = None
    """Training seed in place of the stage settings' (None: theirs)."""
    max_steps: int | None = None
    """Steps in place of the stage settings' (None: theirs)."""


@dataclass(frozen=True)
class Arm:
    name: str
    model: str | None
    """The training run whose model it evaluates, "base", or None (the chance arm has no model)."""
    description: str


def planted_name(precision: str) -> str:
    return f"planted-{precision}"


def oracle_steps_name(steps: int) -> str:
    return f"oracle-{steps}steps"


def parse_precision(text: str) -> float | None:
    """A planted precision: a number in [0, 1) or "chance" (None)."""
    if text == CHANCE:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"planted_precisions: {text!r} is neither a number in [0, 1) nor {CHANCE!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"planted_precisions: {text} is not in [0, 1) (precision 1 is the oracle arm)")
    return value


class StudyPlan:
    """The arms, training runs and paired comparisons of a study's settings."""

    def __init__(self, stage1_steps: int, stage2_steps: int, match_steps: bool, planted: list[str], extra_seeds: list[int],
                 oracle_steps: list[int] = ()):
        for text in planted:
            parse_precision(text)
        if len(set(planted)) != len(planted) or len(set(extra_seeds)) != len(extra_seeds):
            raise ValueError("planted_precisions and extra_seeds: each value once")
        if len(set(oracle_steps)) != len(oracle_steps) or any(steps < 1 for steps in oracle_steps):
            raise ValueError(f"oracle_steps: each a number of steps of at least 1, once, not {list(oracle_steps)}")
        if match_steps and min(stage1_steps, stage2_steps) < 1:
            raise ValueError("match_steps: needs max_steps set (not -1) in train_self and train_supervised")
        matched = stage1_steps + stage2_steps if match_steps else None
        self.runs: dict[str, TrainingRun] = {
            "rl-real": TrainingRun("supervised", "base", "stage2", max_steps=matched),
            "self": TrainingRun("self", "base", "pseudo_labels"),
            "medssr": TrainingRun("supervised", "self", "stage2"),
            "oracle-stage1": TrainingRun("self", "base", "kb_labels"),
            "oracle": TrainingRun("supervised", "oracle-stage1", "stage2"),
        }
        steps = f" for {matched} steps (stage 1's and stage 2's together)" if matched else ""
        arms = [
            Arm("base", "base", "the base model"),
            Arm(CHANCE, None, "no model: 1/k per question"),
            Arm("rl-real", "rl-real", f"stage 2 only{steps}"),
            Arm("self", "self", "stage 1 only (pseudo-labels)"),
            Arm("medssr", "medssr", "stage 1 (pseudo-labels), then stage 2"),
            Arm("oracle", "oracle", "stage 1 rewarded by the knowledge-base key, then stage 2"),
        ]
        for precision in planted:
            name = planted_name(precision)
            self.runs[f"{name}-stage1"] = TrainingRun("self", "base", name)
            self.runs[name] = TrainingRun("supervised", f"{name}-stage1", "stage2")
            share = "1/k" if precision == CHANCE else precision
            arms.append(Arm(name, name, f"stage 1 rewarded by the key corrupted to precision {share}, then stage 2"))
        for seed in extra_seeds:
            self.runs[f"rl-real-seed{seed}"] = TrainingRun("supervised", "base", "stage2", seed=seed, max_steps=matched)
            self.runs[f"self-seed{seed}"] = TrainingRun("self", "base", "pseudo_labels", seed=seed)
            self.runs[f"medssr-seed{seed}"] = TrainingRun("supervised", f"self-seed{seed}", "stage2", seed=seed)
            arms += [Arm(f"rl-real-seed{seed}", f"rl-real-seed{seed}", f"rl-real, training seed {seed}"),
                     Arm(f"medssr-seed{seed}", f"medssr-seed{seed}", f"medssr, training seed {seed}")]
        for steps_ in oracle_steps:
            name = oracle_steps_name(steps_)
            self.runs[name] = TrainingRun("self", "base", "kb_labels", max_steps=steps_)
            arms.append(Arm(name, name, f"stage 1 only, rewarded by the knowledge-base key, for {steps_} steps"))
        self.arms: dict[str, Arm] = {arm.name: arm for arm in arms}
        self.oracle_steps = list(oracle_steps)
        self.planted = list(planted)
        self.comparisons: list[tuple[str, str]] = [
            ("medssr", "rl-real"), ("medssr", "base"), ("self", "base"), ("oracle", "base"), ("oracle", "medssr"), ("medssr", CHANCE),
            ("oracle", "rl-real"),
            *((planted_name(p), "rl-real") for p in planted),
            *((f"medssr-seed{seed}", f"rl-real-seed{seed}") for seed in extra_seeds),
            *((oracle_steps_name(n), "base") for n in oracle_steps),
        ]
        """(candidate, reference) pairs the report shows as paired deltas; the first is the headline."""

    def chain(self, arm: str) -> list[str]:
        """The training runs behind an arm's model, first to last."""
        runs, run = [], self.arms[arm].model
        while run not in (None, "base"):
            runs.insert(0, run)
            run = self.runs[run].start
        return runs
