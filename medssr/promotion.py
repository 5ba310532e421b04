"""Registering a trained model and the promotion gate that moves the ``champion`` alias.

A registered version carries its evaluation's per-question results (which question, which sample,
correct or not; ``gate/per_question.jsonl`` on its registration run) and those of the model it was
trained from, evaluated in the same run (``gate/baseline_per_question.jsonl``). The gate compares
the candidate with the champion on the questions both answered, with a PAIRED bootstrap of the
difference in accuracy (questions resampled, both models' results for a question together), and
promotes only when, on every rare-disease benchmark, the lower bound of the gain is above
``margin``, and on no other benchmark the lower bound falls below ``-tolerance`` (a loss larger
than the tolerance cannot be ruled out). With no champion yet, the reference is the candidate's own
base model: a first version must beat what it was trained from in the same way. A refusal is a
normal outcome; the decision table is printed and logged either way (version tags + artifacts). A version
whose registration was cut short (no ``medssr.complete`` tag) is refused as a candidate.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medssr.errors import UserError
from medssr.evaluation.per_question import METRICS, accuracy_by_question, paired_difference, read_rows
from medssr.storage import write_text
from medssr.hashing import config_dict, config_hash, file_sha256, folder_fingerprint
from medssr.references import RegistryReference, registry_reference
from medssr.registry import COMPLETE_TAG, get_model_version, is_complete, register_model_folder
from medssr.tracking import StageRun, Tracker, TrackingConfig

EVAL_TAG_PREFIX = "eval."
DEFAULT_RARE_BENCHMARKS = ("raredis_heldout", "raredis_sub")
GATE_ARTIFACTS = "gate"
PER_QUESTION_FILE = "per_question.jsonl"
BASELINE_PER_QUESTION_FILE = "baseline_per_question.jsonl"
PROTOCOL_TAG = "medssr.eval_protocol"


@dataclass
class RegisterConfig:
    """Register a trained model folder as a new version of NAME with alias ``candidate``."""

    name: str = field(default="medssr", metadata={"help": "registered model name"})
    model_dir: str = field(default="", metadata={"help": "Hugging Face model folder (safetensors + tokenizer)"})
    scores: dict[str, float] = field(
        default_factory=dict, metadata={"help": "benchmark -> score of this model (higher is better)"}
    )
    tags: dict[str, str] = field(default_factory=dict, metadata={"help": "extra version tags (run id, hashes)"})
    per_question: str = field(
        default="",
        metadata={"help": "this model's per-question results (evaluation's per_question/<model>.jsonl); the gate pairs on them"},
    )
    baseline_per_question: str = field(
        default="",
        metadata={"help": "per-question results of the model it was trained from, in the same evaluation: the gate's reference while "
                           "there is no champion"},
    )
    protocol: str = field(
        default="",
        metadata={"help": "evaluation protocol digest (results.json 'protocol'); only results under the same protocol are compared"},
    )
    alias: str = field(default="candidate", metadata={"help": "alias given to the new version"})
    parent_run_id: str = field(default="", metadata={"help": "MLflow parent (pipeline) run; empty: a top-level run"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": "MLflow settings"})


@dataclass
class RegisterResult:
    name: str
    version: str
    source: str
    run_id: str


def registration_key(config: RegisterConfig) -> str:
    """What a registration is made from: its config (the pipeline run included, the tracking server not), the
    model folder's fingerprint and the per-question files' contents. The same key registers the same version
    (a rerun finishes it)."""
    files = [file_sha256(path) if path else "" for path in (config.per_question, config.baseline_per_question)]
    what = {k: v for k, v in config_dict(config).items() if k != "tracking"}  # the server is where, not what
    parts = [config_hash(what), folder_fingerprint(config.model_dir), *files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def run_register(config: RegisterConfig, stage_run: StageRun | None = None) -> RegisterResult:
    """Log the gate files, then the folder, create the version with score and provenance tags, mark it complete,
    set the alias (:func:`medssr.registry.register_model_folder`); a rerun of a registration cut short finishes it."""
    if stage_run is None:
        with Tracker(config.tracking).stage("register", config.parent_run_id) as own_run:
            return run_register(config, own_run)
    tags = {f"{EVAL_TAG_PREFIX}{bench}": f"{score:.6f}" for bench, score in sorted(config.scores.items())}
    tags.update(config.tags)
    if config.protocol:
        tags[PROTOCOL_TAG] = config.protocol
    stage_run.log_config(config)
    for path, name in ((config.per_question, PER_QUESTION_FILE), (config.baseline_per_question, BASELINE_PER_QUESTION_FILE)):
        if path:
            read_rows(path)  # a malformed file fails here, not later in the gate
            with tempfile.TemporaryDirectory(prefix="medssr-gate-") as tmp:
                copy = Path(tmp) / name
                copy.write_bytes(Path(path).read_bytes())
                stage_run.log_artifact(copy, GATE_ARTIFACTS)
    stage_run.log_metrics({f"{EVAL_TAG_PREFIX}{b}": s for b, s in config.scores.items()})
    tags.setdefault("medssr.mlflow_run_id", stage_run.run_id)
    version = register_model_folder(stage_run, config.name, config.model_dir, tags=tags, alias=config.alias,
                                    registration_key=registration_key(config))
    stage_run.set_tags({"medssr.registered_model": config.name, "medssr.registered_version": version.version})
    return RegisterResult(config.name, str(version.version), version.source, stage_run.run_id)


@dataclass
class PromotionConfig:
    """Which version competes with the champion, and the rules it must pass."""

    name: str = field(default="medssr", metadata={"help": "registered model name"})
    candidate: str = field(default="candidate", metadata={"help": "candidate alias, or a version number"})
    champion_alias: str = field(default="champion", metadata={"help": "alias the gate moves"})
    rare_benchmarks: list[str] = field(
        default_factory=lambda: list(DEFAULT_RARE_BENCHMARKS),
        metadata={"help": "rare-disease benchmarks the candidate must win on (those answered by both)"},
    )
    metric: str = field(default="lenient", metadata={"help": f"per-question accuracy compared: {', '.join(METRICS)}"})
    margin: float = field(default=0.01, metadata={"help": "the lower bound of the gain on each rare-disease benchmark must be above this"})
    tolerance: float = field(default=0.02, metadata={"help": "on other benchmarks, the lower bound of the change must not fall below -tolerance"})
    level: float = field(default=0.95, metadata={"help": "confidence level of the paired bootstrap intervals"})
    resamples: int = field(default=2000, metadata={"help": "bootstrap resamples of the questions"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed (the same seed gives the same decision)"})
    dry_run: bool = field(default=False, metadata={"help": "decide and log, but do not move the alias"})
    parent_run_id: str = field(default="", metadata={"help": "MLflow parent (pipeline) run; empty: a top-level run"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": "MLflow settings"})

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric: must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level: must be between 0 and 1, not {self.level}")
        if self.resamples < 100:
            raise ValueError(f"resamples: at least 100 for a usable interval, not {self.resamples}")


@dataclass
class DecisionRow:
    benchmark: str
    questions: int
    reference: float | None
    candidate: float | None
    delta: float | None
    low: float | None
    high: float | None
    rule: str
    passed: bool | None  # None: informational row, not part of the decision
    detectable: float | None = None
    """On a rare-disease benchmark, the true gain these questions' comparison passes the rule with 80% probability:
    the margin plus the comparison's minimal detectable effect."""


@dataclass
class Decision:
    name: str
    candidate_version: str
    reference: str
    """What the candidate was compared with: "champion vN", or its base model while there is no champion."""
    champion_version: str | None
    passed: bool
    promoted: bool
    reason: str
    rows: list[DecisionRow]
    margin: float
    tolerance: float
    level: float
    metric: str
    dry_run: bool

    def table(self) -> str:
        """The decision as a Markdown table followed by the verdict line."""
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        signed = lambda v: f"{100 * v:+.1f}"  # noqa: E731
        lines = [
            f"Promotion of {self.name} v{self.candidate_version} against {self.reference} "
            f"({self.metric} accuracy %, paired bootstrap {100 * self.level:g}% intervals over the questions both answered)",
            "",
            "| benchmark | n | reference | candidate | delta [interval] | rule | verdict | gain passed at 80% |",
            "|---|---:|---:|---:|---:|---|---|---:|",
        ]
        for row in self.rows:
            verdict = "info" if row.passed is None else ("pass" if row.passed else "FAIL")
            delta = "-" if row.delta is None else f"{signed(row.delta)} [{signed(row.low)}, {signed(row.high)}]"
            detectable = "" if row.detectable is None else signed(row.detectable)
            lines.append(
                f"| {row.benchmark} | {row.questions} | {pct(row.reference)} | {pct(row.candidate)} | {delta} | {row.rule} | {verdict} | {detectable} |"
            )
        verdict = "PROMOTE" if self.passed else "REFUSE"
        action = " (dry run: alias not moved)" if self.dry_run and self.passed else ""
        lines += ["", f"Decision: {verdict}: {self.reason}{action}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores_of(version) -> dict[str, float]:
    """Benchmark scores stored on a model version as ``eval.<benchmark>`` tags (point estimates, for display)."""
    scores = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(EVAL_TAG_PREFIX):
            try:
                scores[key[len(EVAL_TAG_PREFIX) :]] = float(value)
            except ValueError:
                continue
    return scores


def decide(
    candidate: dict[str, dict[str, float]],
    reference: dict[str, dict[str, float]],
    rare_benchmarks: list[str],
    margin: float,
    tolerance: float,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    reference_name: str = "the champion",
) -> tuple[bool, str, list[DecisionRow]]:
    """The gate as a pure function of per-question accuracies (``benchmark -> question -> share of
    samples correct``) of the candidate and its reference: (passed, reason, rows)."""
    rows: list[DecisionRow] = []
    failures: list[str] = []
    rare_compared: list[str] = []
    rare = set(rare_benchmarks)
    for bench in sorted(set(candidate) | set(reference)):
        d = paired_difference(candidate.get(bench, {}), reference.get(bench, {}), resamples, seed, level)
        if d is None:
            rows.append(DecisionRow(bench, 0, None, None, None, None, None, "no question answered by both: ignored", None))
            continue
        delta, (low, high) = d["delta"], d["ci"]
        detectable = None
        if bench in rare:
            detectable = margin + d["mde"]
            rare_compared.append(bench)
            passed = low > margin
            rule = f"rare: lower bound > {100 * margin:+.1f}"
            if not passed:
                failures.append(f"{bench} gain {100 * delta:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] does not clear {100 * margin:+.1f}")
        else:
            passed = low >= -tolerance
            rule = f"other: lower bound >= {-100 * tolerance:+.1f}"
            if not passed:
                failures.append(f"{bench} could lose more than {100 * tolerance:.1f} points (lower bound {100 * low:+.1f})")
        rows.append(DecisionRow(bench, d["n"], d["reference"], d["model"], delta, low, high, rule, passed, detectable))
    if not rare_compared:
        return False, f"no rare-disease benchmark ({', '.join(rare_benchmarks)}) was answered by both the candidate and {reference_name}", rows
    if failures:
        return False, "; ".join(failures), rows
    return True, (
        f"beats {reference_name} on {', '.join(rare_compared)} (gain credibly above {100 * margin:+.1f} points) "
        f"and is not credibly worse than {100 * tolerance:.1f} points elsewhere"
    ), rows


def load_gate_results(tracker: Tracker, version, file: str) -> list[dict] | None:
    """A version's per-question results (``file`` of its registration run's gate artifacts), or None."""
    run_id = (version.tags or {}).get("medssr.mlflow_run_id") or version.run_id
    if not run_id:
        return None
    names = {Path(a.path).name for a in tracker.call(tracker.client.list_artifacts, run_id, GATE_ARTIFACTS)}
    if file not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="medssr-gate-") as tmp:
        local = tracker.call(tracker.client.download_artifacts, run_id, f"{GATE_ARTIFACTS}/{file}", tmp)
        return read_rows(local)


def run_promotion(config: PromotionConfig, out: str | os.PathLike | None = None) -> Decision:
    """Decide, print and log the decision; move ``champion_alias`` to the candidate when it passes."""
    tracker = Tracker(config.tracking)
    candidate = get_model_version(tracker, str(registry_reference(config.name, config.candidate)))
    try:
        champion = get_model_version(tracker, str(RegistryReference(config.name, alias=config.champion_alias)))
    except UserError:
        champion = None
    reference_name = f"champion v{champion.version}" if champion is not None else "its base model (no champion yet)"
    passed, rows = False, []
    candidate_rows = load_gate_results(tracker, candidate, PER_QUESTION_FILE)
    if not is_complete(candidate):
        reason = f"v{candidate.version} was not completely registered (no {COMPLETE_TAG} tag): run its register step again"
    elif champion is not None and str(champion.version) == str(candidate.version):
        reason = f"v{candidate.version} already holds {config.champion_alias}"
    elif candidate_rows is None:
        reason = f"v{candidate.version} carries no per-question results ({GATE_ARTIFACTS}/{PER_QUESTION_FILE}): register it with them"
    else:
        if champion is not None:
            reference_rows = load_gate_results(tracker, champion, PER_QUESTION_FILE)
            protocols = [(v.tags or {}).get(PROTOCOL_TAG) for v in (candidate, champion)]
            missing = f"champion v{champion.version} carries no per-question results"
        else:
            reference_rows = load_gate_results(tracker, candidate, BASELINE_PER_QUESTION_FILE)
            protocols = [None, None]  # evaluated side by side in one run
            missing = f"no champion yet, and v{candidate.version} carries no results of its base model to compare with"
        if reference_rows is None:
            reason = missing
        elif all(protocols) and protocols[0] != protocols[1]:
            reason = f"the candidate and {reference_name} were evaluated under different protocols ({protocols[0]} vs {protocols[1]}): not comparable"
        else:
            passed, reason, rows = decide(
                accuracy_by_question(candidate_rows, config.metric),
                accuracy_by_question(reference_rows, config.metric),
                config.rare_benchmarks,
                config.margin,
                config.tolerance,
                config.level,
                config.resamples,
                config.seed,
                reference_name,
            )
    decision = Decision(
        name=config.name,
        candidate_version=str(candidate.version),
        reference=reference_name,
        champion_version=str(champion.version) if champion is not None else None,
        passed=passed,
        promoted=passed and not config.dry_run,
        reason=reason,
        rows=rows,
        margin=config.margin,
        tolerance=config.tolerance,
        level=config.level,
        metric=config.metric,
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
        write_text(Path(out) / "promotion.md", table + "\n")
        write_text(Path(out) / "promotion.json", json.dumps(decision.to_dict(), indent=2))
    return decision
