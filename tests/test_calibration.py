"""Calibration of self-consistency: the vote per question, agreement buckets, the expected calibration error."""

from __future__ import annotations

import json

import pytest

from medssr.data import EvalResult, write_jsonl
from medssr.evaluation.calibration import CalibrationConfig, calibration, calibration_of_folder, question_votes


def _record(item: str, sample: int, lenient: str | None, gold: str = "A", strict: str | None = None,
            recovered: str | None = None, model: str = "base", benchmark: str = "medqa") -> EvalResult:
    return EvalResult(model=model, benchmark=benchmark, item_id=item, sample=sample, completion="", answer=gold,
                      strict=strict, lenient=lenient, recovered=recovered, correct_strict=strict == gold,
                      correct_lenient=lenient == gold)


def test_expected_calibration_error_of_a_hand_computed_example():
    # Two buckets, [0, 0.5) and [0.5, 1]. Low: one question at 0.25, wrong: gap 0.25, weight 1/5.
    # High: agreements 1, 1, 1, 0.5 (mean 0.875), 3 of 4 right (0.75): gap 0.125, weight 4/5.
    outcomes = [(1.0, True), (1.0, True), (1.0, False), (0.5, True), (0.25, False)]
    result = calibration(outcomes, bins=2, bootstrap_samples=200, seed=0)
    assert result["ece"] == pytest.approx(0.2 * 0.25 + 0.8 * 0.125)  # 0.15
    low, high = result["buckets"]
    assert (low["questions"], low["accuracy"], low["mean_agreement"]) == (1, 0.0, 0.25)
    assert (high["questions"], high["accuracy"], high["mean_agreement"]) == (4, 0.75, 0.875)
    assert high["coverage_at_or_above"] == pytest.approx(0.8) and high["accuracy_at_or_above"] == 0.75
    assert low["coverage_at_or_above"] == 1.0 and result["majority_accuracy"] == pytest.approx(0.6)
    assert calibration([(0.9, True)] * 3, bins=5, bootstrap_samples=50, seed=0)["ece"] == pytest.approx(0.1)
    assert calibration([], bins=3, bootstrap_samples=50, seed=0)["ece"] is None


def test_accuracies_come_with_wilson_intervals_and_the_ece_with_a_resampled_one():
    from medssr.evaluation.calibration import wilson_interval

    # Wilson 95% for 3 of 4: centre (0.75 + 1.92/4) / (1 + 3.84/4), the textbook [0.301, 0.954].
    low, high = wilson_interval(3, 4)
    assert low == pytest.approx(0.3006, abs=1e-3) and high == pytest.approx(0.9544, abs=1e-3)
    assert wilson_interval(0, 5)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(0, 5)[1] > 0.4 and wilson_interval(0, 0) is None
    outcomes = [(1.0, True), (1.0, True), (1.0, False), (0.5, True), (0.25, False)] * 8
    result = calibration(outcomes, bins=2, bootstrap_samples=500, seed=3)
    assert result["buckets"][1]["accuracy_ci95"] == wilson_interval(24, 32)
    assert result["majority_accuracy_ci95"] == wilson_interval(24, 40)
    low, high = result["ece_ci95"]
    assert 0.0 <= low < result["ece"] < high <= 1.0
    assert calibration(outcomes, bins=2, bootstrap_samples=500, seed=3)["ece_ci95"] == [low, high]  # seeded
    assert calibration(outcomes, bins=2, bootstrap_samples=0, seed=3)["ece_ci95"] is None
    # A perfectly calibrated set still resamples to a non-zero ECE sometimes: the interval is not a point.
    spread = calibration([(1.0, True)] * 20 + [(0.5, True), (0.5, False)] * 10, bins=2, bootstrap_samples=500, seed=0)
    assert spread["ece"] == 0.0 and spread["ece_ci95"][1] > 0.0


def test_each_question_votes_over_its_samples_with_the_labelling_vote():
    records = [
        *(_record("q1", s, letter) for s, letter in enumerate(["A", "A", "B", None])),  # 2 of 3 parsed: A, right
        *(_record("q2", s, letter) for s, letter in enumerate(["A", "B"])),  # a tie: no majority, wrong
        *(_record("q3", s, None) for s in range(2)),  # nothing parsed
        *(_record("q4", s, "C", gold="C") for s in range(2)),
    ]
    assert question_votes(records) == [(pytest.approx(2 / 3), True), (0.5, False), (0.0, False), (1.0, True)]
    with_recovery = [_record("q5", 0, "A", strict=None, recovered="B", gold="B"), _record("q5", 1, "B", strict="B", gold="B")]
    assert question_votes(with_recovery, "with_recovery") == [(1.0, True)]
    assert question_votes(with_recovery, "lenient") == [(0.5, False)]


def test_calibration_of_an_evaluation_folder_per_model_and_benchmark(tmp_path):
    write_jsonl(tmp_path / "samples" / "base" / "medqa.jsonl", [_record(f"q{i}", s, "A") for i in range(3) for s in range(2)])
    write_jsonl(tmp_path / "samples" / "base" / "pubmedqa.jsonl",
                [_record("p", s, letter, benchmark="pubmedqa") for s, letter in enumerate("AB")])
    result = calibration_of_folder(tmp_path, CalibrationConfig(bins=4), bootstrap_samples=100, seed=0)
    assert set(result) == {"base"} and set(result["base"]) == {"medqa", "pubmedqa"}
    assert result["base"]["medqa"]["ece"] == 0.0 and result["base"]["medqa"]["questions"] == 3
    assert result["base"]["pubmedqa"]["ece"] == 0.5
    json.dumps(result)  # the report writes it as JSON
    with pytest.raises(FileNotFoundError, match="samples"):
        calibration_of_folder(tmp_path / "empty", CalibrationConfig(), bootstrap_samples=100, seed=0)
    with pytest.raises(ValueError, match="bins"):
        CalibrationConfig(bins=0)


def test_calibration_cli_names_a_folder_without_samples(tmp_path, capsys):
    from medssr.cli import main

    assert main(["calibration", str(tmp_path)]) == 2
    assert "no samples/<model>/<benchmark>.jsonl" in capsys.readouterr().err
