"""The promotion gate: paired decision rules, and the registry flow against a real MLflow server."""

from __future__ import annotations

import numpy as np
import pytest

from medssr.evaluation.per_question import accuracy_by_question, write_rows
from medssr.evaluation.scoring import bootstrap_ci, paired_bootstrap
from medssr.promotion import PromotionConfig, RegisterConfig, decide, run_promotion, run_register
from medssr.tracking import Tracker, TrackingConfig

RARE = ["raredis_heldout", "raredis_sub"]


def results(bench: str, correct: list[bool]) -> dict[str, dict[str, float]]:
    """Per-question accuracy of one benchmark: question q<i> right or wrong."""
    return {bench: {f"q{i}": float(ok) for i, ok in enumerate(correct)}}


def changed(base: list[bool], gains: int, losses: int) -> list[bool]:
    """``base`` with the first ``gains`` wrong answers made right and the first ``losses`` right ones made wrong."""
    out = list(base)
    wrong = [i for i, ok in enumerate(base) if not ok][:gains]
    right = [i for i, ok in enumerate(base) if ok][:losses]
    for i in wrong:
        out[i] = True
    for i in right:
        out[i] = False
    return out


BASE_60 = [i % 3 == 0 for i in range(60)]  # 20 of 60 right


def test_paired_interval_is_narrower_than_unpaired_ones():
    """A small consistent gain on the same questions is clear when paired, lost in two unpaired intervals."""
    reference = np.array(BASE_60, dtype=float)
    candidate = np.array(changed(BASE_60, gains=6, losses=0), dtype=float)
    delta, low, high = paired_bootstrap(candidate, reference, 2000, 0)
    assert delta == pytest.approx(0.1) and low > 0.0
    cand_low, _ = bootstrap_ci(candidate.reshape(-1, 1), 2000, 0)
    _, ref_high = bootstrap_ci(reference.reshape(-1, 1), 2000, 0)
    assert cand_low < ref_high  # the unpaired intervals overlap
    with pytest.raises(ValueError, match="one value per question"):
        paired_bootstrap(candidate, reference[:-1], 100, 0)


def test_point_gain_above_margin_with_interval_including_zero_refuses():
    reference = results("raredis_heldout", BASE_60)
    candidate = results("raredis_heldout", changed(BASE_60, gains=5, losses=2))  # +5 points on the point estimate
    passed, reason, rows = decide(candidate, reference, RARE, margin=0.01, tolerance=0.02)
    row = rows[0]
    assert row.delta == pytest.approx(3 / 60) and row.delta > 0.01
    assert row.low < 0.0 < row.high and row.passed is False and not passed
    assert reason.startswith("raredis_heldout gain +5.0 [") and "does not clear +1.0" in reason


def test_interval_clearing_margin_promotes_and_unshared_sets_are_informational():
    rare_base = [i % 3 == 0 for i in range(150)]
    reference = {**results("raredis_heldout", rare_base), **results("medqa", BASE_60), **results("nejm", [True] * 5)}
    candidate = {
        **results("raredis_heldout", changed(rare_base, gains=30, losses=3)),
        **results("medqa", BASE_60),
        **results("raredis_sub", [True] * 4),
    }
    passed, reason, rows = decide(candidate, reference, RARE, margin=0.01, tolerance=0.02)
    by_bench = {row.benchmark: row for row in rows}
    assert passed, reason
    assert by_bench["raredis_heldout"].low > 0.01 and by_bench["raredis_heldout"].questions == 150
    assert by_bench["medqa"].delta == 0.0 and by_bench["medqa"].passed is True  # no change: lower bound 0 >= -2 points
    assert by_bench["nejm"].passed is None and by_bench["raredis_sub"].passed is None
    # the gain these 150 questions would pass with 80% probability: the margin plus the comparison's MDE
    import numpy as np

    from medssr.evaluation.scoring import minimal_detectable_effect

    differences = np.array(changed(rare_base, gains=30, losses=3), dtype=float) - np.array(rare_base, dtype=float)
    assert by_bench["raredis_heldout"].detectable == pytest.approx(0.01 + minimal_detectable_effect(differences))
    assert by_bench["medqa"].detectable is None


def test_other_benchmark_credibly_worse_than_tolerance_refuses():
    rare_base = [i % 3 == 0 for i in range(150)]
    reference = {**results("raredis_heldout", rare_base), **results("medqa", BASE_60)}
    candidate = {**results("raredis_heldout", changed(rare_base, gains=30, losses=0)), **results("medqa", changed(BASE_60, 0, 6))}
    passed, reason, rows = decide(candidate, reference, RARE, margin=0.01, tolerance=0.02)
    assert not passed and reason.startswith("medqa could lose more than 2.0 points")
    assert [r.passed for r in rows if r.benchmark == "raredis_heldout"] == [True]


def test_no_shared_rare_benchmark_refuses_and_the_decision_is_seeded():
    passed, reason, _ = decide(results("medqa", [True] * 9), results("medqa", [False] * 9), RARE, 0.01, 0.02)
    assert not passed and "no rare-disease benchmark" in reason
    args = (results("raredis_heldout", changed(BASE_60, 5, 2)), results("raredis_heldout", BASE_60), RARE, 0.01, 0.02)
    assert decide(*args, seed=3)[2] == decide(*args, seed=3)[2]


def test_accuracy_by_question_averages_samples():
    rows = [
        {"model": "m", "benchmark": "b", "item_id": "1", "sample": s, "strict": s < 1, "lenient": s < 3, "with_recovery": True}
        for s in range(4)
    ]
    assert accuracy_by_question(rows, "strict") == {"b": {"1": 0.25}}
    assert accuracy_by_question(rows, "lenient") == {"b": {"1": 0.75}}
    with pytest.raises(ValueError, match="metric"):
        accuracy_by_question(rows, "exact")


def write_results(path, bench_correct: dict[str, list[bool]], samples: int = 2):
    """A per-question file: every sample of a question scored the same (what the gate averages)."""
    rows = [
        {"model": "m", "benchmark": bench, "item_id": f"q{i}", "sample": s, "strict": ok, "lenient": ok, "with_recovery": ok}
        for bench, correct in bench_correct.items()
        for i, ok in enumerate(correct)
        for s in range(samples)
    ]
    write_rows(path, rows)
    return str(path)


@pytest.mark.slow
def test_gate_on_registry(mlflow_server, tiny_model, tmp_path, capsys):
    from medssr.cli import main

    tracking = TrackingConfig(tracking_uri=mlflow_server.url, experiment="gate-test")
    name = "gate-model"
    client = Tracker(tracking).client
    rare_base = [i % 3 == 0 for i in range(150)]
    medqa = [i % 2 == 0 for i in range(40)]

    def register(label, candidate, baseline=None, protocol="p1"):
        candidate_path = write_results(tmp_path / f"{label}.jsonl", candidate)
        baseline_path = write_results(tmp_path / f"{label}-base.jsonl", baseline) if baseline else ""
        return run_register(RegisterConfig(
            name=name, model_dir=str(tiny_model), scores={"raredis_heldout": sum(candidate["raredis_heldout"]) / 150},
            per_question=candidate_path, baseline_per_question=baseline_path, protocol=protocol, tracking=tracking,
        ))

    def promote(**kw):
        return run_promotion(PromotionConfig(name=name, tracking=tracking, **kw))

    # No champion: the first candidate must beat its own base model, and this one is no better.
    same = {"raredis_heldout": rare_base, "medqa": medqa}
    first = register("v1", same, baseline=same)
    decision = promote()
    assert not decision.passed and decision.reference == "its base model (no champion yet)"
    assert "raredis_heldout gain +0.0" in decision.reason
    assert "champion" not in client.get_registered_model(name).aliases

    better = {"raredis_heldout": changed(rare_base, 30, 0), "medqa": medqa}
    second = register("v2", better, baseline=same)
    assert promote().promoted
    assert client.get_model_version_by_alias(name, "champion").version == second.version

    # A point-estimate gain over the champion whose paired interval includes 0: refused, champion kept.
    noisy = {"raredis_heldout": changed(better["raredis_heldout"], 4, 2), "medqa": medqa}
    third = register("v3", noisy, baseline=same)
    capsys.readouterr()
    decision = promote()
    assert not decision.passed and decision.reference == f"champion v{second.version}"
    assert client.get_model_version_by_alias(name, "champion").version == second.version
    tags = client.get_model_version(name, third.version).tags
    assert tags["medssr.gate"] == "refuse" and tags["medssr.eval_protocol"] == "p1"
    printed = capsys.readouterr().out
    assert "| raredis_heldout | 150 | 53.3 | 54.7 | +1.3 [" in printed and "| rare: lower bound > +1.0 | FAIL |" in printed

    # Another protocol is not comparable; no per-question results is no decision.
    register("v4", {"raredis_heldout": changed(better["raredis_heldout"], 40, 0), "medqa": medqa}, protocol="p2")
    assert "different protocols" in promote(dry_run=True).reason
    run_register(RegisterConfig(name=name, model_dir=str(tiny_model), tracking=tracking))
    assert "carries no per-question results" in promote(dry_run=True).reason

    best = register("v6", {"raredis_heldout": changed(better["raredis_heldout"], 40, 0), "medqa": medqa})
    assert promote(dry_run=True).passed
    assert client.get_model_version_by_alias(name, "champion").version == second.version  # dry run moves nothing
    assert main(["promote", name, "--tracking-uri", mlflow_server.url, "--experiment", "gate-test", "--out", str(tmp_path)]) == 0
    assert client.get_model_version_by_alias(name, "champion").version == best.version
    assert "Decision: PROMOTE" in (tmp_path / "promotion.md").read_text()
    # The champion against itself is refused (exit status 1).
    assert main(["promote", name, "--tracking-uri", mlflow_server.url, "--experiment", "gate-test", "--dry-run"]) == 1
    runs = client.search_runs([client.get_experiment_by_name("gate-test").experiment_id], "tags.`medssr.stage` = 'promote'")
    assert len(runs) == 8 and all("promotion.md" in [a.path for a in client.list_artifacts(r.info.run_id)] for r in runs)
    assert first.version != second.version
