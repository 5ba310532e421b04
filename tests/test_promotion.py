"""The promotion gate: pure decision rules, and the registry flow against a real MLflow server."""

from __future__ import annotations

import pytest

from medssr.promotion import PromotionConfig, RegisterConfig, decide, run_promotion, run_register
from medssr.tracking import Tracker, TrackingConfig

RARE = ["raredis_heldout", "raredis_sub"]


def test_no_champion_promotes():
    passed, reason, rows = decide({"raredis_heldout": 0.3, "medqa": 0.5}, None, RARE, 0.01, 0.02)
    assert passed and "no champion" in reason and all(row.passed is None for row in rows)


def test_rare_gain_below_margin_refuses():
    champion = {"raredis_heldout": 0.30, "medqa": 0.50}
    passed, reason, rows = decide({"raredis_heldout": 0.305, "medqa": 0.50}, champion, RARE, 0.01, 0.02)
    assert not passed and "raredis_heldout" in reason
    assert [r.passed for r in rows if r.benchmark == "raredis_heldout"] == [False]


def test_other_benchmark_drop_beyond_tolerance_refuses():
    champion = {"raredis_heldout": 0.30, "medqa": 0.50, "pubmedqa": 0.6}
    passed, reason, _ = decide({"raredis_heldout": 0.40, "medqa": 0.47, "pubmedqa": 0.59}, champion, RARE, 0.01, 0.02)
    assert not passed and reason == "failed on medqa"


def test_win_on_rare_within_tolerance_elsewhere_promotes_and_unshared_sets_are_ignored():
    champion = {"raredis_heldout": 0.30, "medqa": 0.50, "nejm": 0.2}
    candidate = {"raredis_heldout": 0.32, "medqa": 0.49, "raredis_sub": 0.9}
    passed, _, rows = decide(candidate, champion, RARE, 0.01, 0.02)
    assert passed
    ignored = {r.benchmark for r in rows if r.passed is None}
    assert ignored == {"nejm", "raredis_sub"}


def test_no_shared_rare_benchmark_refuses():
    passed, reason, _ = decide({"medqa": 0.9}, {"medqa": 0.1}, RARE, 0.01, 0.02)
    assert not passed and "no rare-disease benchmark" in reason


@pytest.mark.slow
def test_gate_on_registry_refuses_worse_candidate(mlflow_server, tiny_model, tmp_path, capsys):
    from medssr.cli import main

    tracking = TrackingConfig(tracking_uri=mlflow_server.url, experiment="gate-test")
    name = "gate-model"

    def register(scores):
        return run_register(RegisterConfig(name=name, model_dir=str(tiny_model), scores=scores, tracking=tracking))

    def promote(**kw):
        return run_promotion(PromotionConfig(name=name, tracking=tracking, **kw))

    first = register({"raredis_heldout": 0.40, "medqa": 0.50})
    assert promote().promoted
    client = Tracker(tracking).client
    assert client.get_model_version_by_alias(name, "champion").version == first.version

    worse = register({"raredis_heldout": 0.35, "medqa": 0.52})
    decision = promote()
    assert not decision.passed and not decision.promoted and "raredis_heldout" in decision.reason
    assert client.get_model_version_by_alias(name, "champion").version == first.version
    tags = client.get_model_version(name, worse.version).tags
    assert tags["medssr.gate"] == "refuse" and tags["eval.raredis_heldout"] == "0.350000"
    assert "| raredis_heldout | 0.4000 | 0.3500 | -0.0500 | rare: delta >= +0.01 | FAIL |" in capsys.readouterr().out

    better = register({"raredis_heldout": 0.45, "medqa": 0.49})
    assert promote(dry_run=True).passed
    assert client.get_model_version_by_alias(name, "champion").version == first.version  # dry run moves nothing
    assert main(["promote", name, "--tracking-uri", mlflow_server.url, "--experiment", "gate-test", "--out", str(tmp_path)]) == 0
    assert client.get_model_version_by_alias(name, "champion").version == better.version
    assert "Decision: PROMOTE" in (tmp_path / "promotion.md").read_text()
    # A stricter margin from the command line refuses the same comparison again (the candidate is the champion now).
    assert main(["promote", name, "--tracking-uri", mlflow_server.url, "--experiment", "gate-test", "--dry-run"]) == 1
    runs = client.search_runs([client.get_experiment_by_name("gate-test").experiment_id], "tags.`medssr.stage` = 'promote'")
    assert len(runs) == 5 and all("promotion.md" in [a.path for a in client.list_artifacts(r.info.run_id)] for r in runs)
