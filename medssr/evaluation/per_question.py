"""Per-question results: which question, which sample, correct or not, under each accuracy definition.

Evaluation writes one such table per evaluated model (``per_question/<model>.jsonl``, also logged as
an MLflow table); a registered version carries its own and its baseline's, so the promotion gate can
compare two models on the questions both answered (a paired comparison) long after the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from medssr.data import EvalResult
from medssr.storage import read_text, write_text

METRICS = ("strict", "lenient", "with_recovery")
"""strict and lenient extraction, and the reference protocol's number (strict, else the recovered letter)."""

COLUMNS = ("model", "benchmark", "item_id", "sample", *METRICS)


def rows_from(records: Iterable[EvalResult]) -> list[dict]:
    """One row per (question, sample) with a boolean per metric."""
    rows = []
    for record in records:
        recovered_ok = record.strict is None and record.recovered is not None and record.recovered == record.answer
        rows.append(
            {
                "model": record.model,
                "benchmark": record.benchmark,
                "item_id": record.item_id,
                "sample": record.sample,
                "strict": record.correct_strict,
                "lenient": record.correct_lenient,
                "with_recovery": record.correct_strict or recovered_ok,
            }
        )
    return rows


def write_rows(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    write_text(path, "".join(json.dumps({key: row[key] for key in COLUMNS}) + "\n" for row in rows))


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a per-question file; a malformed line names the file and line."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        missing = [key for key in COLUMNS if key not in row]
        if missing:
            raise ValueError(f"{path}:{number}: field '{missing[0]}' is missing")
        rows.append(row)
    return rows


def paired_difference(
    model: dict[str, float], reference: dict[str, float], resamples: int, seed: int, level: float = 0.95
) -> dict | None:
    """A model minus its reference on the questions both answered (``question -> accuracy`` each):
    ``{n, model, reference, delta, ci, mde}`` with a paired-bootstrap interval and the minimal detectable
    effect of the comparison (at 80% power), or None when no question is shared."""
    import numpy as np

    from medssr.evaluation.scoring import minimal_detectable_effect, paired_bootstrap

    shared = sorted(set(model) & set(reference))
    if not shared:
        return None
    ours, theirs = np.array([model[q] for q in shared]), np.array([reference[q] for q in shared])
    delta, low, high = paired_bootstrap(ours, theirs, resamples, seed, level)
    return {"n": len(shared), "model": float(ours.mean()), "reference": float(theirs.mean()), "delta": delta, "ci": [low, high],
            "mde": minimal_detectable_effect(ours - theirs, level)}


def paired_deltas(
    rows: Iterable[dict], reference_rows: Iterable[dict], resamples: int, seed: int, level: float = 0.95
) -> dict[str, dict[str, dict]]:
    """``benchmark -> metric -> paired_difference(...)`` of a model's per-question rows against its reference's."""
    rows, reference_rows = list(rows), list(reference_rows)
    out: dict[str, dict[str, dict]] = {}
    for metric in METRICS:
        model, reference = accuracy_by_question(rows, metric), accuracy_by_question(reference_rows, metric)
        for bench in model:
            difference = paired_difference(model[bench], reference.get(bench, {}), resamples, seed, level)
            if difference is not None:
                out.setdefault(bench, {})[metric] = difference
    return out


def accuracy_by_question(rows: Iterable[dict], metric: str) -> dict[str, dict[str, float]]:
    """``benchmark -> item_id -> share of that question's samples correct under metric``."""
    if metric not in METRICS:
        raise ValueError(f"metric: must be one of {', '.join(METRICS)}, not {metric!r}")
    sums: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        cell = sums.setdefault(row["benchmark"], {}).setdefault(str(row["item_id"]), [0.0, 0.0])
        cell[0] += bool(row[metric])
        cell[1] += 1
    return {bench: {item: ok / count for item, (ok, count) in items.items()} for bench, items in sums.items()}
