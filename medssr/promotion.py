"""Registering a trained model and the promotion gate that moves the ``champion`` alias.

The gate compares the candidate's evaluation scores (version tags ``eval.<benchmark>``, written at
registration) with the champion's. It promotes only when the candidate beats the champion on every
rare-disease benchmark both were scored on by at least ``margin`` and loses no more than
``tolerance`` on any other benchmark both were scored on. With no champion yet it promotes. The
decision table is printed and logged either way (version tags + a Markdown artifact).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medssr.tracking import (
    StageRun,
    Tracker,
    TrackingConfig,
    get_model_version,
    register_model_folder,
)

EVAL_TAG_PREFIX = "eval."
DEFAULT_RARE_BENCHMARKS = ("raredis_heldout", "raredis_sub")


@dataclass
class RegisterConfig:
    """Register a trained model folder as a new version of NAME with alias ``candidate``."""

    name: str = field(metadata={"help": "registered model name"})
    model_dir: str = field(metadata={"help": "Hugging Face model folder (safetensors + tokenizer)"})
    scores: dict[str, float] = field(
        default_factory=dict, metadata={"help": "benchmark -> score of this model (higher is better)"}
    )
    tags: dict[str, str] = field(default_factory=dict, metadata={"help": "extra version tags (run id, hashes)"})
    alias: str = field(default="candidate", metadata={"help": "alias given to the new version"})
    parent_run_id: str = field(default="", metadata={"help": "MLflow parent (pipeline) run; empty: a top-level run"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": "MLflow settings"})


@dataclass
class RegisterResult:
    name: str
    version: str
    source: str
    run_id: str


def run_register(config: RegisterConfig, stage_run: StageRun | None = None) -> RegisterResult:
    """Log the folder, create the version with score and provenance tags, set the alias."""
    if stage_run is None:
        with Tracker(config.tracking).stage("register", config.parent_run_id) as own_run:
            return run_register(config, own_run)
    tags = {f"{EVAL_TAG_PREFIX}{bench}": f"{score:.6f}" for bench, score in sorted(config.scores.items())}
    tags.update(config.tags)
    stage_run.log_config(config)
    stage_run.log_metrics({f"{EVAL_TAG_PREFIX}{b}": s for b, s in config.scores.items()})
    tags.setdefault("medssr.mlflow_run_id", stage_run.run_id)
    version = register_model_folder(stage_run, config.name, config.model_dir, tags=tags, alias=config.alias)
    stage_run.set_tags({"medssr.registered_model": config.name, "medssr.registered_version": version.version})
    return RegisterResult(config.name, str(version.version), version.source, stage_run.run_id)


@dataclass
class PromotionConfig:
    """Which version competes with the champion, and the rules it must pass."""

    name: str = field(metadata={"help": "registered model name"})
    candidate: str = field(default="candidate", metadata={"help": "candidate alias, or a version number"})
    champion_alias: str = field(default="champion", metadata={"help": "alias the gate moves"})
    rare_benchmarks: list[str] = field(
        default_factory=lambda: list(DEFAULT_RARE_BENCHMARKS),
        metadata={"help": "rare-disease benchmarks the candidate must win on (those scored for both)"},
    )
    margin: float = field(default=0.01, metadata={"help": "minimum gain on each rare-disease benchmark"})
    tolerance: float = field(default=0.02, metadata={"help": "largest allowed loss on any other benchmark"})
    dry_run: bool = field(default=False, metadata={"help": "decide and log, but do not move the alias"})
    parent_run_id: str = field(default="", metadata={"help": "MLflow parent (pipeline) run; empty: a top-level run"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": "MLflow settings"})


@dataclass
class DecisionRow:
    benchmark: str
    champion: float | None
    candidate: float | None
    delta: float | None
    rule: str
    passed: bool | None  # None: informational row, not part of the decision


@dataclass
class Decision:
    name: str
    candidate_version: str
    champion_version: str | None
    passed: bool
    promoted: bool
    reason: str
    rows: list[DecisionRow]
    margin: float
    tolerance: float
    dry_run: bool

    def table(self) -> str:
        """The decision as a Markdown table followed by the verdict line."""
        lines = [
            f"Promotion of {self.name} v{self.candidate_version} over "
            + (f"champion v{self.champion_version}" if self.champion_version else "no champion"),
            "",
            "| benchmark | champion | candidate | delta | rule | result |",
            "|---|---:|---:|---:|---|---|",
        ]
        fmt = lambda v, sign="": "-" if v is None else f"{v:{sign}.4f}"  # noqa: E731
        for row in self.rows:
            result = "info" if row.passed is None else ("pass" if row.passed else "FAIL")
            lines.append(
                f"| {row.benchmark} | {fmt(row.champion)} | {fmt(row.candidate)} | {fmt(row.delta, '+')} "
                f"| {row.rule} | {result} |"
            )
        verdict = "PROMOTE" if self.passed else "REFUSE"
        action = " (dry run: alias not moved)" if self.dry_run and self.passed else ""
        lines += ["", f"Decision: {verdict}: {self.reason}{action}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores_of(version) -> dict[str, float]:
    """Benchmark scores stored on a model version as ``eval.<benchmark>`` tags."""
    scores = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(EVAL_TAG_PREFIX):
            try:
                scores[key[len(EVAL_TAG_PREFIX) :]] = float(value)
            except ValueError:
                continue
    return scores


def decide(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    rare_benchmarks: list[str],
    margin: float,
    tolerance: float,
) -> tuple[bool, str, list[DecisionRow]]:
    """The gate as a pure function of two score tables: (passed, reason, rows)."""
    if champion is None:
        rows = [DecisionRow(b, None, s, None, "no champion yet", None) for b, s in sorted(candidate.items())]
        return True, "no champion yet: the first candidate is promoted", rows
    rows: list[DecisionRow] = []
    shared = sorted(set(candidate) & set(champion))
    rare = [b for b in shared if b in set(rare_benchmarks)]
    for bench in shared:
        delta = candidate[bench] - champion[bench]
        if bench in rare:
            rows.append(DecisionRow(bench, champion[bench], candidate[bench], delta, f"rare: delta >= +{margin:g}", delta >= margin - 1e-12))
        else:
            rows.append(DecisionRow(bench, champion[bench], candidate[bench], delta, f"other: delta >= -{tolerance:g}", delta >= -tolerance - 1e-12))
    for bench in sorted(set(candidate) ^ set(champion)):
        rows.append(
            DecisionRow(bench, champion.get(bench), candidate.get(bench), None, "not scored for both: ignored", None)
        )
    if not rare:
        return False, f"no rare-disease benchmark ({', '.join(rare_benchmarks)}) was scored for both", rows
    failed = [r.benchmark for r in rows if r.passed is False]
    if failed:
        return False, f"failed on {', '.join(failed)}", rows
    return True, f"beats the champion on {', '.join(rare)} by >= {margin:g} and keeps the rest within {tolerance:g}", rows


def run_promotion(config: PromotionConfig, out: str | os.PathLike | None = None) -> Decision:
    """Decide, print and log the decision; move ``champion_alias`` to the candidate when it passes."""
    tracker = Tracker(config.tracking)
    candidate_ref = (
        f"models:/{config.name}/{config.candidate}" if config.candidate.isdigit() else f"models:/{config.name}@{config.candidate}"
    )
    candidate = get_model_version(tracker, candidate_ref)
    try:
        champion = get_model_version(tracker, f"models:/{config.name}@{config.champion_alias}")
    except ValueError:
        champion = None
    if champion is not None and str(champion.version) == str(candidate.version):
        passed, reason, rows = False, f"v{candidate.version} already holds {config.champion_alias}", []
    else:
        passed, reason, rows = decide(
            scores_of(candidate),
            scores_of(champion) if champion is not None else None,
            config.rare_benchmarks,
            config.margin,
            config.tolerance,
        )
    decision = Decision(
        name=config.name,
        candidate_version=str(candidate.version),
        champion_version=str(champion.version) if champion is not None else None,
        passed=passed,
        promoted=passed and not config.dry_run,
        reason=reason,
        rows=rows,
        margin=config.margin,
        tolerance=config.tolerance,
        dry_run=config.dry_run,
    )
    table = decision.table()
    print(table, flush=True)
    with tracker.stage("promote", config.parent_run_id) as stage_run:
        stage_run.log_config(config)
        stage_run.log_text(table, "promotion.md")
        stage_run.log_text(json.dumps(decision.to_dict(), indent=2), "promotion.json")
        stage_run.log_metrics({"gate_passed": passed, "promoted": decision.promoted})
        stage_run.set_tags({"medssr.gate": "pass" if passed else "refuse", "medssr.gate_reason": reason[:5000]})
        version_tags = {
            "medssr.gate": "pass" if passed else "refuse",
            "medssr.gate_reason": reason[:5000],
            "medssr.gate_run_id": stage_run.run_id,
        }
        for key, value in version_tags.items():
            tracker.call(tracker.client.set_model_version_tag, config.name, candidate.version, key, value)
        if decision.promoted:
            tracker.call(tracker.client.set_registered_model_alias, config.name, config.champion_alias, candidate.version)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "promotion.md").write_text(table + "\n", encoding="utf-8")
        (out / "promotion.json").write_text(json.dumps(decision.to_dict(), indent=2), encoding="utf-8")
    return decision
