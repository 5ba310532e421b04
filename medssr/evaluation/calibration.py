"""Self-consistency as confidence: how often a question's majority letter is right, by its agreement.

For each question, the letters of its ``n`` samples go through :func:`medssr.answers.majority_vote`
(the vote pseudo-labelling uses and the server returns): the majority letter and its agreement, the
share of parsed samples that chose it. A question with no majority (a tie, or nothing parsed) counts
as wrong at its agreement. Questions are grouped into equal-width agreement buckets; each bucket
shows how many questions fell in it, their mean agreement and the accuracy of their majority letter,
and what answering only at or above the bucket's lower edge keeps (coverage) and scores. The
expected calibration error is the question-weighted mean gap between accuracy and mean agreement
over the buckets: 0 when agreement is the probability of being right.

Every figure comes with its 95% interval: Wilson score intervals for the accuracies (questions are
the unit: a bucket's accuracy is k right of its n questions), and for the ECE the percentile interval
when the questions are resampled (``bootstrap_samples`` times, as the evaluation's other intervals).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medssr.answers import majority_vote
from medssr.data import EvalResult, read_jsonl

SAMPLES_FOLDER = "samples"


@dataclass
class CalibrationConfig:
    """How questions are bucketed by agreement, and which per-sample letter votes."""

    bins: int = field(default=5, metadata={"help": "Equal-width agreement buckets over [0, 1]."})
    letters: Literal["lenient", "strict", "with_recovery"] = field(
        default="lenient",
        metadata={"help": "The letter each sample votes with: lenient (what the server reads), strict, or "
                          "with_recovery (strict, else the letter-constrained second pass: labelling's answer)."},
    )

    def __post_init__(self):
        if self.bins < 1:
            raise ValueError(f"bins must be >= 1, got {self.bins}")
        if self.letters not in ("lenient", "strict", "with_recovery"):
            raise ValueError(f"letters must be lenient, strict or with_recovery, not {self.letters!r}")


def sample_letter(record: EvalResult, letters: str = "lenient") -> str | None:
    """The letter one sample answered under ``letters`` (lenient, strict, or with_recovery)."""
    if letters == "with_recovery":
        return record.strict if record.strict is not None else record.recovered
    return getattr(record, letters)


def question_votes(records: Iterable[EvalResult], letters: str = "lenient") -> list[tuple[float, bool]]:
    """``(agreement, majority letter is the gold answer)`` per question of one model on one benchmark."""
    by_question: dict[str, list[EvalResult]] = defaultdict(list)
    for record in records:
        by_question[record.item_id].append(record)
    outcomes = []
    for samples in by_question.values():
        vote = majority_vote([sample_letter(record, letters) for record in sorted(samples, key=lambda r: r.sample)])
        outcomes.append((vote.agreement, vote.label is not None and vote.label == samples[0].answer))
    return outcomes


def wilson_interval(right: int, total: int, z: float = 1.959964) -> list[float] | None:
    """95% Wilson score interval of the proportion ``right / total`` (None for no questions); it stays
    inside [0, 1] and is not empty at 0 or 1 right, unlike the normal approximation."""
    if total == 0:
        return None
    share = right / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _ece(agreement, correct, bins: int):
    """Expected calibration error of each row of ``agreement`` and ``correct`` ``[resamples, questions]``."""
    import numpy as np

    bucket = np.minimum((agreement * bins).astype(int), bins - 1)
    total = agreement.shape[1]
    ece = np.zeros(agreement.shape[0])
    for index in range(bins):
        members = bucket == index
        count = members.sum(axis=1)
        gap = np.abs((correct * members).sum(axis=1) - (agreement * members).sum(axis=1))  # count x |acc - conf|
        ece += np.where(count > 0, gap / total, 0.0)
    return ece


def ece_interval(outcomes: list[tuple[float, bool]], bins: int, bootstrap_samples: int, seed: int) -> list[float] | None:
    """Percentile 95% interval of the ECE when the questions are resampled (None without questions or resamples)."""
    import numpy as np

    if not outcomes or bootstrap_samples < 1:
        return None
    agreement = np.array([a for a, _ in outcomes], dtype=float)
    correct = np.array([c for _, c in outcomes], dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(outcomes), size=(bootstrap_samples, len(outcomes)))
    low, high = np.quantile(_ece(agreement[picks], correct[picks], bins), [0.025, 0.975])
    return [float(low), float(high)]


def calibration(outcomes: list[tuple[float, bool]], bins: int, *, bootstrap_samples: int, seed: int) -> dict:
    """Accuracy by agreement bucket and the expected calibration error of ``(agreement, correct)`` pairs,
    with their 95% intervals (the ECE's from ``bootstrap_samples`` resamples of the questions, ``seed``)."""
    total = len(outcomes)
    buckets = [[] for _ in range(bins)]
    for agreement, correct in outcomes:
        buckets[min(int(agreement * bins), bins - 1)].append((agreement, correct))
    rows, ece = [], 0.0
    for index, members in enumerate(buckets):
        above = [pair for pair in outcomes if pair[0] >= index / bins]
        row = {
            "low": index / bins,
            "high": (index + 1) / bins,
            "questions": len(members),
            "mean_agreement": sum(a for a, _ in members) / len(members) if members else None,
            "accuracy": sum(c for _, c in members) / len(members) if members else None,
            "accuracy_ci95": wilson_interval(sum(c for _, c in members), len(members)),
            "coverage_at_or_above": len(above) / total if total else None,
            "accuracy_at_or_above": sum(c for _, c in above) / len(above) if above else None,
            "accuracy_at_or_above_ci95": wilson_interval(sum(c for _, c in above), len(above)),
        }
        if members:
            ece += len(members) / total * abs(row["accuracy"] - row["mean_agreement"])
        rows.append(row)
    accuracy = sum(c for _, c in outcomes) / total if total else None
    return {
        "questions": total, "majority_accuracy": accuracy,
        "majority_accuracy_ci95": wilson_interval(sum(c for _, c in outcomes), total),
        "ece": ece if total else None, "ece_ci95": ece_interval(outcomes, bins, bootstrap_samples, seed),
        "bootstrap_samples": bootstrap_samples, "buckets": rows,
    }


def calibration_of_records(records: Iterable[EvalResult], config: CalibrationConfig, *, bootstrap_samples: int, seed: int) -> dict:
    """``{model: {benchmark: calibration}}`` of evaluation sample records (intervals as :func:`calibration`)."""
    grouped: dict[str, dict[str, list[EvalResult]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        grouped[record.model][record.benchmark].append(record)
    return {
        model: {bench: calibration(question_votes(rows, config.letters), config.bins, bootstrap_samples=bootstrap_samples, seed=seed)
                for bench, rows in benches.items()}
        for model, benches in grouped.items()
    }


def read_sample_records(out_dir: str | Path) -> list[EvalResult]:
    """Every sample record of an evaluation output folder, from its ``samples/<model>/<benchmark>.jsonl``."""
    files = sorted((Path(out_dir) / SAMPLES_FOLDER).glob("*/*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{out_dir}: no {SAMPLES_FOLDER}/<model>/<benchmark>.jsonl files (an evaluation output folder has them)")
    return [record for path in files for record in read_jsonl(path, EvalResult).records]


def calibration_of_folder(out_dir: str | Path, config: CalibrationConfig, *, bootstrap_samples: int, seed: int) -> dict:
    """The calibration of an evaluation output folder, from its ``samples/<model>/<benchmark>.jsonl``."""
    return calibration_of_records(read_sample_records(out_dir), config, bootstrap_samples=bootstrap_samples, seed=seed)


def _interval(values: list[float] | None) -> str:
    return "" if values is None else f" [{100 * values[0]:.1f}, {100 * values[1]:.1f}]"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def calibration_markdown(result: dict) -> str:
    """One table per model and benchmark: the buckets, then the expected calibration error."""
    parts = [
        "## Calibration: agreement of the n samples as confidence",
        "",
        "Per question the samples vote (medssr.answers.majority_vote); agreement is the share of parsed samples "
        "that chose the majority letter. Accuracy is that of the majority letter (no majority counts as wrong). "
        "'At or above' is what answering only from the bucket's lower edge keeps: a threshold for abstain_below. "
        "ECE: question-weighted mean |accuracy − mean agreement| over the buckets. Brackets: 95% intervals "
        "(Wilson for accuracies; for the ECE, the questions resampled).",
        "",
    ]
    for model, benches in result.items():
        for bench, cal in benches.items():
            parts += [
                f"### {model} · {bench}: {cal['questions']} questions, majority accuracy {_pct(cal['majority_accuracy'])} %"
                f"{_interval(cal.get('majority_accuracy_ci95'))}, ECE {_pct(cal['ece'])} points{_interval(cal.get('ece_ci95'))}",
                "",
                "| agreement | questions | mean agreement % | accuracy % [95% CI] | coverage at or above % | accuracy at or above % [95% CI] |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            last = len(cal["buckets"]) - 1
            for index, row in enumerate(cal["buckets"]):
                interval = f"[{row['low']:.2f}, {row['high']:.2f}{']' if index == last else ')'}"
                parts.append(
                    f"| {interval} | {row['questions']} | {_pct(row['mean_agreement'])} | {_pct(row['accuracy'])}"
                    f"{_interval(row.get('accuracy_ci95'))} | {_pct(row['coverage_at_or_above'])} "
                    f"| {_pct(row['accuracy_at_or_above'])}{_interval(row.get('accuracy_at_or_above_ci95'))} |"
                )
            parts.append("")
    return "\n".join(parts) + "\n"


def write_calibration(result: dict, out_dir: str | Path) -> dict[str, str]:
    from medssr.storage import write_text

    out = Path(out_dir)
    paths = {"json": str(out / "calibration.json"), "markdown": str(out / "calibration.md")}
    write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    write_text(paths["markdown"], calibration_markdown(result))
    return paths
