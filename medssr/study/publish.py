"""A study's raw results, published beside its report, and the report's paired deltas recomputed from them.

``publish`` copies into ``docs/results/<report>/raw/`` what the report's numbers come from: every arm's
per-question file, every step's marker (settings, counts, wall times), each training run's log history, the
labels stage 1 trained on with their audit, the in-distribution questions, the premise probe's table when it ran
into the study folder, the study's identity and parts, and the headline numbers
(gzip-compressed JSONL where a file has lines; gzip without a timestamp, so the same results give the same
bytes). ``recompute`` reads only those files and computes every paired comparison again with the same
bootstrap settings: its numbers are the report's, or it says which differ.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from medssr.storage import atomic_writer

HEADLINE_FILE = "headline.json"
STUDY_FILE = "study.json"


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, sort_keys=True, default=str) + "\n" for row in rows)
    _write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))


def read_jsonl_gz(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines() if line.strip()]


def _lines(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def publish(report, folder: Path) -> Path:
    """Write the raw files of ``report`` (a :class:`~medssr.study.report.StudyReport`) into ``folder``."""
    study = report.study
    for arm, rows in report.rows.items():
        write_jsonl_gz(folder / "per_question" / f"{arm}.jsonl.gz", rows)
    markers = sorted(study.root.glob("*/done.json"))
    write_jsonl_gz(folder / "steps.jsonl.gz", [{"step": marker.parent.name, **json.loads(marker.read_text(encoding="utf-8"))} for marker in markers])
    for run, done in report.training.items():
        write_jsonl_gz(folder / "training" / f"{run}.log_history.jsonl.gz", _lines(done["history"]))
    labels = {"pseudo_labels": report.labels["pseudo_labels"], "kb_labels": report.labels["kb_labels"],
              **{f"planted-{precision}": done["labels"] for precision, done in report.planted.items()}}
    for name, path in labels.items():
        write_jsonl_gz(folder / "labels" / f"{name}.jsonl.gz", _lines(path))
    if report.seen:  # the in-distribution questions, which no other file holds
        from medssr.evaluation.registry import BENCHMARKS

        seen = Path(report.seen["benchmarks_dir"]) / BENCHMARKS["raredis_seen"].filename
        write_jsonl_gz(folder / "benchmarks" / "raredis_seen.jsonl.gz", json.loads(seen.read_text(encoding="utf-8")))
    probe = study.root / "probe" / "probe.json"
    if probe.is_file():
        _write_bytes(folder / "probe.json", probe.read_bytes())
    stored = json.loads((study.root / "study.json").read_text(encoding="utf-8"))
    settings = {**stored, "parts": study.parts(), "comparisons": [list(pair) for pair in report.plan.comparisons],
                "bootstrap_samples": report.resamples, "bootstrap_seed": report.seed}
    _write_bytes(folder / STUDY_FILE, (json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n").encode("utf-8"))
    _write_bytes(folder / HEADLINE_FILE, (json.dumps(report.headline_numbers(), indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return folder


def recompute(folder: str | Path) -> dict[str, float]:
    """Every paired comparison of a published study, from its per-question files: ``headline.json``'s keys."""
    from medssr.evaluation.per_question import paired_deltas

    folder = Path(folder)
    settings = json.loads((folder / STUDY_FILE).read_text(encoding="utf-8"))
    rows = {path.name.removesuffix(".jsonl.gz"): read_jsonl_gz(path) for path in sorted((folder / "per_question").glob("*.jsonl.gz"))}
    flat = {}
    for a, b in settings["comparisons"]:
        for bench, metrics in paired_deltas(rows[a], rows[b], settings["bootstrap_samples"], settings["bootstrap_seed"]).items():
            for metric, d in metrics.items():
                key = f"{a}_vs_{b}.{bench}.{metric}"
                flat.update({f"{key}.delta": d["delta"], f"{key}.ci_low": d["ci"][0], f"{key}.ci_high": d["ci"][1], f"{key}.mde": d["mde"]})
    return flat


def differences(folder: str | Path, tolerance: float = 1e-9) -> list[str]:
    """The published headline numbers that ``recompute`` does not reproduce (empty: all of them are)."""
    published = json.loads((Path(folder) / HEADLINE_FILE).read_text(encoding="utf-8"))
    again = recompute(folder)
    found = []
    for key in sorted(set(published) | set(again)):
        mine, theirs = again.get(key), published.get(key)
        same = mine is not None and theirs is not None and (
            (math.isnan(mine) and math.isnan(theirs)) or abs(mine - theirs) <= tolerance)
        if not same:
            found.append(f"{key}: published {theirs}, recomputed {mine}")
    return found
