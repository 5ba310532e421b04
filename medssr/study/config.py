"""The typed configuration of a study: which arms, trained and evaluated with which stage settings.

A study's stage settings are a pipeline preset's sections (``split``, ``synthesis``, ``labeling``,
``train_self``, ``train_supervised``, ``training_job``, ``evaluation``; ``pipelines/presets/study.yaml`` by
default: SmolLM2-135M on a 2-core CPU in about 90 minutes, README "Study"), declared once in the stage
configs, with ``params`` (``STAGE.SETTING=VALUE``, as ``medssr pipeline run --param``) laid over them. So
``medssr pipeline run --preset study`` runs the study's medssr arm with the same settings, and a preset
for a GPU cluster (``paper``) is the same command. The other fields choose what one invocation does (which
arms, where the report goes, MLflow) and may change between the parts of one study; the resolved stage
settings and the extra evaluation set are the study's identity, and a rerun with other ones is
refused instead of mixing two studies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from medssr.study.plan import StudyPlan
from medssr.hashing import config_hash

STUDY_STAGES = ("split", "synthesis", "labeling", "train_self", "train_supervised", "training_job", "evaluation")
"""The preset sections a study reads; the rest of a preset (registration, promotion, deployment) is the pipeline's."""
HELDOUT = "raredis_heldout"
IN_DISTRIBUTION = "raredis_seen"


@dataclass
class StudyConfig:
    """A MedSSR study: every arm from the same base model, evaluated on the same questions."""

    out_dir: str = field(default=".medssr/study/smollm2", metadata={"help": (
        "Folder of the study's state (data, models, per-arm results and completion markers); a rerun resumes from it.")})
    arms: str = field(default="all", metadata={"help": (
        "Comma-separated arms to run in this part (base, chance, rl-real, self, medssr, oracle, planted-P, rl-real-seedS, "
        "medssr-seedS), or 'all'. Arms a chosen one builds on "
        "(medssr on self's stage 1) are trained as needed.")})
    report: str = field(default="docs/results/study-smollm2.md", metadata={"help": (
        "Markdown report, written once every arm is finished; figures go in the folder of the same name without .md.")})
    command: str = field(default="", metadata={"help": "The command line that ran the study, quoted in the report (the CLI sets it)."})
    preset: str = field(default="study", metadata={"help": (
        "Stage settings of every arm: a pipeline preset (pipelines/presets/NAME.yaml) or a YAML file of the same form "
        "(base_model and one mapping per stage; `medssr pipeline params --preset NAME` lists one).")})
    params: list[str] = field(default_factory=list, metadata={"help": (
        "Overrides of the preset, as `medssr pipeline run --param`: STAGE.SETTING=VALUE (labeling.max_tokens=64) or base_model=REF.")})
    extra_benchmarks: list[str] = field(default_factory=list, metadata={"help": (
        "Other local benchmarks evaluated too, at extra_limit questions each, after the evaluation section's.")})
    extra_limit: int = field(default=50, metadata={"help": "Questions per extra benchmark."})
    match_steps: bool = field(default=True, metadata={"help": (
        "rl-real trains stage 2 for train_self.max_steps + train_supervised.max_steps steps, as many GRPO steps as "
        "medssr's two stages together; off: train_supervised.max_steps.")})
    planted_precisions: list[str] = field(default_factory=lambda: ["0.5", "chance"], metadata={"help": (
        "Label-precision arms planted-P: stage 1 on the oracle's questions rewarded by the knowledge-base key corrupted "
        "(seeded) so that a share P of the labels is right (a number in [0, 1), or 'chance': 1/k per question), then "
        "stage 2. The oracle arm is precision 1.")})
    planted_seed: int = field(default=0, metadata={"help": "Seed of which planted labels are wrong and which wrong letter each gets."})
    extra_seeds: list[int] = field(default_factory=lambda: [1], metadata={"help": (
        "Further training seeds: rl-real and medssr are trained again with each (arms rl-real-seedS and medssr-seedS, "
        "their stage configs' seed replaced) and compared side by side with the first pair.")})
    seen_per_item: int = field(default=2, metadata={"help": (
        "In-distribution questions (raredis_seen) per stage-1 knowledge question: new questions of its type and difficulty "
        "about its condition, evaluated beside raredis_heldout; the positive control is read on them. 0: none.")})
    oracle_steps: list[int] = field(default_factory=lambda: [32], metadata={"help": (
        "Longer positive controls: for each N an arm oracle-Nsteps, stage 1 only, rewarded by the knowledge-base key for "
        "N steps, compared with base (how long the oracle must train before it shows).")})
    tracking_uri: str = field(default="", metadata={"help": "MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else sqlite under ./.medssr."})
    experiment: str = field(default="medssr-study", metadata={"help": "MLflow experiment of the study's parent run."})

    def __post_init__(self) -> None:
        self.selected_arms()  # validates the names and the plan's settings
        if self.seen_per_item < 0:
            raise ValueError(f"seen_per_item: must be at least 0, got {self.seen_per_item}")
        if self.extra_limit < 1:
            raise ValueError(f"extra_limit: must be at least 1, got {self.extra_limit}")
        if not self.report.endswith(".md"):
            raise ValueError(f"report: must be a .md file, not {self.report!r}")
        benchmarks = self.settings["evaluation"]["benchmarks"]
        if HELDOUT not in benchmarks or "all" in benchmarks:
            raise ValueError(f"evaluation.benchmarks: a study names the benchmarks it evaluates, {HELDOUT} among them (got {benchmarks})")
        overlap = set(self.extra_benchmarks) & set(benchmarks)
        if overlap:
            raise ValueError(f"extra_benchmarks: {', '.join(sorted(overlap))} is in evaluation.benchmarks already")
        for name in STUDY_STAGES:  # each config's own validation, with placeholders for what a step wires in
            self.stage(name, **PLACEHOLDERS.get(name, {}))

    @cached_property
    def settings(self) -> dict[str, Any]:
        """``base_model`` and every study stage's settings (the config defaults under the preset under ``params``)."""
        from medssr.pipelines.presets import preset_values
        from medssr.pipelines.runner import merged, parse_overrides
        from medssr.stages import STAGES

        given = merged(preset_values(self.preset), parse_overrides(self.params, {"base_model": ""}))
        unused = sorted(set(given) - {"base_model", *STAGES})
        if unused:
            raise ValueError(f"preset {self.preset}: a study reads base_model and stage sections, not {', '.join(unused)}")
        if not given.get("base_model"):
            raise ValueError(f"preset {self.preset}: no base_model")
        return {"base_model": given["base_model"], **{name: {**STAGES[name].defaults(), **given.get(name, {})} for name in STUDY_STAGES}}

    @cached_property
    def plan(self) -> StudyPlan:
        """The arms, training runs and comparisons these settings make."""
        return StudyPlan(self.settings["train_self"]["max_steps"], self.settings["train_supervised"]["max_steps"],
                         self.match_steps, list(self.planted_precisions), list(self.extra_seeds), list(self.oracle_steps))

    def stage(self, name: str, **wired: Any) -> Any:
        """Stage ``name``'s config from the study's settings and what the step wires in."""
        from medssr.stages import STAGES

        return STAGES[name].build({k: v for k, v in self.settings[name].items() if v is not None}, **wired)

    def selected_arms(self) -> list[str]:
        """The arms of this part, in the study's order."""
        names = [part.strip() for part in self.arms.split(",") if part.strip()]
        known = list(self.plan.arms)
        if not names or "all" in names:
            return known
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"arms: unknown {', '.join(unknown)}; known: {', '.join(known)} or all")
        return [arm for arm in known if arm in names]

    def identity(self) -> dict:
        """What makes the study what it is, flat as ``--param`` names it: base_model, every stage setting
        (``synthesis.n``), the extra evaluation set and the arms' settings."""
        return {"base_model": self.settings["base_model"], **flat_settings(self.settings),
                "extra_benchmarks": list(self.extra_benchmarks), "extra_limit": self.extra_limit, "match_steps": self.match_steps,
                "planted_precisions": list(self.planted_precisions), "planted_seed": self.planted_seed, "extra_seeds": list(self.extra_seeds),
                "seen_per_item": self.seen_per_item, "oracle_steps": list(self.oracle_steps)}

    def identity_hash(self) -> str:
        return config_hash(self.identity())


def flat_settings(by_stage: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The study stages' settings as ``--param`` names them (``synthesis.n``), as plain data."""
    from medssr.configs import plain

    return {f"{stage}.{name}": plain(value) for stage in STUDY_STAGES for name, value in by_stage[stage].items()}


PLACEHOLDERS = {
    "split": {"benchmarks_dir": "."},
    "synthesis": {"seed_questions": "stage2.jsonl"},
    "labeling": {"data": "items.jsonl", "out": "labels.jsonl", "model": "base"},
    "train_self": {"stage": "self"},
    "train_supervised": {"stage": "supervised"},
}
