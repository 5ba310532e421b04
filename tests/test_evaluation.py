"""Evaluation: registry and hub field mapping, filters, scoring, the cache's keys, and the harness on
reference-format fixtures with a real (tiny) model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medssr.data import EvalResult, MCQItem, read_jsonl
from medssr.evaluation import BENCHMARKS, EvaluationConfig, HubSource, load_benchmark, run_evaluation
from medssr.evaluation.cache import model_identity, run_key
from medssr.evaluation.filters import PIPELINES, chain, extract, strip_thinking
from medssr.evaluation.registry import BenchmarkUnavailable, item_from_hub_row, resolve_names
from medssr.evaluation.scoring import bootstrap_ci, score
from medssr.generation.base import GeneratorConfig, SamplingParams
from tests.test_labeling import tiny_answerer  # noqa: F401 (session fixture: the tiny model trained to answer B or C)

FIXTURES = Path(__file__).parent / "data" / "eval_benchmarks"


def test_registry_holds_the_papers_ten_benchmarks_and_ours():
    assert set(BENCHMARKS) == {
        "medqa", "medmcqa", "pubmedqa", "mmlu", "bioasq", "lancet", "medbullets", "nejm", "medxpertqa",
        "raredis_sub", "raredis_heldout", "raredis_seen",
    }
    assert BENCHMARKS["raredis_sub"].hub.dataset == "tdlhl/RareDis-Sub"
    assert {name for name, spec in BENCHMARKS.items() if spec.rare} == {"raredis_sub", "raredis_heldout", "raredis_seen"}
    assert resolve_names(["all"]) == [name for name in BENCHMARKS if name != "raredis_seen"], "a study's own set is evaluated when named"
    assert resolve_names(["raredis_seen"]) == ["raredis_seen"]
    assert resolve_names(["pubmedqa", "medqa"]) == ["medqa", "pubmedqa"]
    with pytest.raises(ValueError, match="unknown nope"):
        resolve_names(["nope"])


def test_hub_rows_map_onto_items():
    medmcqa = item_from_hub_row(
        {"id": "x1", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2},
        BENCHMARKS["medmcqa"].hub, "medmcqa", 0,
    )
    assert (medmcqa.id, medmcqa.answer, medmcqa.options["C"]) == ("x1", "C", "c")
    pubmedqa = item_from_hub_row({"pubid": 7, "question": "Does it?", "final_decision": "maybe"}, BENCHMARKS["pubmedqa"].hub, "pubmedqa", 0)
    assert pubmedqa.options == {"A": "yes", "B": "no", "C": "maybe"} and pubmedqa.answer == "C"
    mmlu = item_from_hub_row({"question": "Q?", "choices": ["w", "x", "y", "z"], "answer": 3}, BENCHMARKS["mmlu"].hub, "mmlu", 4)
    assert (mmlu.id, mmlu.answer) == ("mmlu-000004", "D")
    xpert = item_from_hub_row(
        {"id": "Text-1", "question": "Stem text. Answer Choices: (A) p (B) q", "options": {"A": "p", "B": "q"}, "label": "B"},
        BENCHMARKS["medxpertqa"].hub, "medxpertqa", 0,
    )
    assert xpert.stem == "Stem text." and xpert.answer == "B"
    reference = item_from_hub_row({"id": "r1", "question": "Stem?\nA. one\nB. two", "gold": "a"}, BENCHMARKS["raredis_sub"].hub, "raredis_sub", 0)
    assert reference.options == {"A": "one", "B": "two"} and reference.answer == "A"
    with pytest.raises(ValueError):
        item_from_hub_row({"question": "Q?", "choices": ["w", "x"], "answer": "Z"}, HubSource("d", "s", options="choices"), "d", 0)


def test_reference_files_load_and_missing_ones_are_unavailable():
    medqa = load_benchmark("medqa", FIXTURES, limit=3)
    assert len(medqa.items) == 3 and medqa.origin.endswith("test_short_medqa.json")
    assert medqa.items[1].options["D"] == "Sphingomyelinase"  # the stray quote line after the options is ignored
    with pytest.raises(BenchmarkUnavailable, match="no file .*test_short_lancet.json; no Hugging Face source"):
        load_benchmark("lancet", FIXTURES)
    with pytest.raises(BenchmarkUnavailable, match="hub loading is off"):
        load_benchmark("medxpertqa", FIXTURES, use_hub=False)


def test_filters_compose():
    item = MCQItem(id="1", stem="s", options={"A": "x", "B": "y", "C": "z"})
    assert strip_thinking("<think>The answer is A.</think>The answer is C.", item) == "The answer is C."
    assert PIPELINES["strict"]("<think>The answer is A.</think>Final: B", item) is None
    assert PIPELINES["lenient"]("<think>The answer is A.</think>Final answer: B", item) == "B"
    stop_early = chain(lambda text, _: None, extract("strict"))
    assert stop_early("The answer is A", item) is None


def test_score_reports_recovery_beside_accuracy():
    gold = ["A", "B", "C", "D"]
    strict = [["A", "A"], ["B", None], [None, None], ["A", "D"]]
    lenient = [["A", "A"], ["B", "B"], ["C", None], ["A", "D"]]
    recovered = [[None, None], [None, "B"], ["C", "A"], [None, None]]
    result = score(gold, strict, lenient, recovered, bootstrap_samples=500, seed=0)
    assert result["strict"]["mean"] == pytest.approx((0.5 + 0.5) / 2)  # samples: [A,B,-,A] -> 2/4 and [A,-,-,D] -> 2/4
    assert result["lenient"]["mean"] == pytest.approx((3 / 4 + 3 / 4) / 2)
    assert result["recovery_rate"] == pytest.approx(3 / 8)
    assert (result["recovered"], result["recovered_correct"]) == (3, 2)
    assert result["with_recovery"]["mean"] == pytest.approx((3 / 4 + 3 / 4) / 2)
    per_sample = np.array([[1, 1], [1, 0], [0, 0], [0, 1]]).mean(axis=0)
    assert result["strict"]["std"] == pytest.approx(per_sample.std())
    low, high = result["strict"]["ci95"]
    assert 0.0 <= low <= result["strict"]["mean"] <= high <= 1.0


def test_bootstrap_interval_narrows_with_more_questions():
    rng = np.random.default_rng(1)
    small = (rng.random((20, 1)) < 0.5).astype(float)
    large = (rng.random((2000, 1)) < 0.5).astype(float)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(bootstrap_ci(large, 400, 0)) < width(bootstrap_ci(small, 400, 0))


def test_a_true_effect_of_the_minimal_detectable_size_is_detected_at_the_stated_power():
    from medssr.evaluation.scoring import POWER, minimal_detectable_effect, paired_bootstrap

    rng = np.random.default_rng(3)
    n, sigma = 200, 0.4
    effect = minimal_detectable_effect(rng.normal(0.0, sigma, n))
    assert effect == pytest.approx((1.959964 + 0.841621) * sigma / np.sqrt(n), rel=0.15)
    detected = [paired_bootstrap(rng.normal(effect, sigma, n), np.zeros(n), 400, seed)[1] > 0 for seed in range(300)]
    assert abs(np.mean(detected) - POWER) < 0.1
    assert np.isnan(minimal_detectable_effect(np.array([0.5])))


def test_an_over_long_benchmark_question_is_rejected_and_counted_the_rest_load(tiny_model, tmp_path):
    from medssr.data import RecordError
    from medssr.prompt_limit import PromptLimit

    rows = [{"id": f"q{i}", "question": f"Which gene, case {i}?\nA. MECP2\nB. FMR1", "gold": "B"} for i in range(4)]
    rows[2]["question"] = "hypotonia " * 1_000_000 + "\nA. MECP2\nB. FMR1"  # ~10 MB
    (tmp_path / "test_short_medqa.json").write_text(json.dumps(rows))
    limit = PromptLimit.for_generator(GeneratorConfig(model=str(tiny_model), max_prompt_tokens=256))

    bench = load_benchmark("medqa", tmp_path, on_error="skip", use_hub=False, prompt_limit=limit)
    assert [item.id for item in bench.items] == ["q0", "q1", "q3"] and bench.rejected == 1
    with pytest.raises(RecordError, match=r"test_short_medqa.json:3: field 'stem': the prompt has \d+ characters, over 256 tokens"):
        load_benchmark("medqa", tmp_path, on_error="raise", use_hub=False, prompt_limit=limit)


def test_model_identity_changes_with_the_weights(tiny_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    config = GeneratorConfig(model=str(copy))
    first = model_identity(config)
    assert first["resolved"] == str(copy.resolve()) and "model.safetensors" in first["files"]
    assert model_identity(config) == first
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "medssr_test": 1}', 1))
    assert model_identity(config) != first
    sampling = SamplingParams()
    key = run_key(first, config, sampling, 4, "evaluate")
    assert run_key(first, config, SamplingParams(max_tokens=16), 4, "evaluate") != key
    assert run_key(first, GeneratorConfig(model=str(copy), batch_size=2), sampling, 4, "evaluate") == key


def _config(model, tmp_path, **overrides) -> EvaluationConfig:
    settings = dict(
        models=[str(model)],
        benchmarks_dir=str(FIXTURES),
        benchmarks=["medqa", "pubmedqa", "medxpertqa"],
        n=2,
        sampling=SamplingParams(max_tokens=12),
        generator=GeneratorConfig(batch_size=32),
        cache_dir=str(tmp_path / "cache"),
        out_dir=str(tmp_path / "out"),
        bootstrap_samples=200,
        use_hub=False,
    )
    settings.update(overrides)
    return EvaluationConfig(**settings)


@pytest.mark.slow
def test_harness_end_to_end_with_cache_and_skips(tiny_answerer, tiny_model, tmp_path):  # noqa: F811
    config = _config(tiny_answerer, tmp_path)
    result = run_evaluation(config)

    assert set(result.summary["tiny-answerer"]) == {"medqa", "pubmedqa"}
    assert "medxpertqa" in result.skipped and "hub loading is off" in result.skipped["medxpertqa"]
    medqa = result.summary["tiny-answerer"]["medqa"]
    assert (medqa["items"], medqa["n"], medqa["generated_questions"]) == (4, 2, 4)
    # The answerer mostly says B (the key of 2 of the 4 MedQA questions); its lenient reading finds more.
    assert medqa["lenient"]["mean"] >= medqa["strict"]["mean"]
    assert medqa["parsed_lenient"] > 0.5
    samples = read_jsonl(Path(config.out_dir) / "samples" / "tiny-answerer" / "medqa.jsonl", EvalResult).records
    assert len(samples) == 8
    for record in samples:
        if record.recovered is not None:  # only samples strict extraction could not read are recovered
            assert record.strict is None and record.recovered in ("A", "B", "C", "D")
    unparsed = sum(r.strict is None for r in samples)
    assert medqa["recovery_rate"] == pytest.approx(unparsed / 8)
    markdown = Path(result.paths["markdown"]).read_text()
    assert "| medqa | 4 × 2 |" in markdown and "medxpertqa: no file" in markdown
    assert Path(result.paths["png"]).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(Path(result.paths["json"]).read_text())
    assert saved["summary"]["tiny-answerer"]["pubmedqa"]["items"] == 3
    assert result.metrics()["eval/tiny-answerer/medqa/strict_acc"] == medqa["strict"]["mean"]

    # Unchanged settings: every answer comes from the cache, identical scores.
    again = run_evaluation(config)
    assert again.summary["tiny-answerer"]["medqa"]["generated_questions"] == 0
    assert again.summary["tiny-answerer"]["medqa"]["strict"] == medqa["strict"]
    # A changed setting never reuses answers.
    longer = run_evaluation(_config(tiny_answerer, tmp_path, sampling=SamplingParams(max_tokens=13)))
    assert longer.summary["tiny-answerer"]["medqa"]["generated_questions"] == 4
    text = run_evaluation(_config(tiny_answerer, tmp_path, prompt_style="text", benchmarks=["pubmedqa"]))
    assert text.summary["tiny-answerer"]["pubmedqa"]["generated_questions"] == 3
    # Changed benchmark content: only the changed question is generated again.
    edited = tmp_path / "bench"
    shutil.copytree(FIXTURES, edited)
    rows = json.loads((edited / "test_short_medqa.json").read_text())
    rows[0]["question"] = rows[0]["question"].replace("9-year-old", "10-year-old")
    (edited / "test_short_medqa.json").write_text(json.dumps(rows))
    changed = run_evaluation(_config(tiny_answerer, tmp_path, benchmarks_dir=str(edited), benchmarks=["medqa"]))
    assert changed.summary["tiny-answerer"]["medqa"]["generated_questions"] == 1
    assert changed.summary["tiny-answerer"]["medqa"]["content_sha256"] != medqa["content_sha256"]

    # Two models side by side, deltas against the first.
    both = run_evaluation(
        _config(tiny_answerer, tmp_path, models=[str(tiny_answerer), str(tiny_model)], model_names=["answerer", "random"],
                benchmarks=["pubmedqa"], out_dir=str(tmp_path / "both"))
    )
    assert list(both.summary) == ["answerer", "random"]
    compared = Path(both.paths["markdown"]).read_text()
    assert "strict accuracy % (Δ vs answerer)" in compared and "### random" in compared
    # Per-question results of every model, and the paired difference of the second to the first.
    from medssr.evaluation.per_question import read_rows

    for label in ("answerer", "random"):
        rows = read_rows(both.report["per_question"][label])
        assert len(rows) == both.summary[label]["pubmedqa"]["items"] * both.summary[label]["pubmedqa"]["n"]
        assert {row["model"] for row in rows} == {label}
        strict = sum(row["strict"] for row in rows) / len(rows)
        assert strict == pytest.approx(both.summary[label]["pubmedqa"]["strict"]["mean"])
    paired = both.report["paired"]["random_vs_answerer"]["pubmedqa"]["strict"]
    difference = both.summary["random"]["pubmedqa"]["strict"]["mean"] - both.summary["answerer"]["pubmedqa"]["strict"]["mean"]
    assert paired["delta"] == pytest.approx(difference) and paired["ci"][0] <= paired["delta"] <= paired["ci"][1]
    assert "| random vs answerer | pubmedqa |" in compared


@pytest.mark.slow
def test_evaluate_cli(tiny_answerer, tmp_path, capsys):  # noqa: F811
    from medssr.cli import main

    out = tmp_path / "report"
    code = main([
        "evaluate", "--model", str(tiny_answerer), "--benchmarks-dir", str(FIXTURES), "--only", "pubmedqa", "raredis_sub",
        "--limit", "2", "--n", "1", "--max-tokens", "8", "--no-hub", "--bootstrap", "50",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "tiny-answerer pubmedqa: strict" in printed and "(2 items)" in printed
    assert "skipped raredis_sub: no file" in printed
    assert (out / "results.md").is_file() and (out / "samples" / "tiny-answerer" / "pubmedqa.jsonl").is_file()
    assert "### tiny-answerer · pubmedqa: 2 questions" in (out / "results.md").read_text()  # the calibration section
    assert main(["calibration", str(out), "--bins", "4", "--out", str(tmp_path / "calibration")]) == 0
    assert "### tiny-answerer · pubmedqa: 2 questions" in capsys.readouterr().out
    assert (tmp_path / "calibration" / "calibration.json").is_file()
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--benchmarks-dir", str(FIXTURES), "--out", str(out)]) == 2
    assert "no model folder" in capsys.readouterr().err


@pytest.mark.slow
def test_heldout_rare_disease_set_is_built_by_synthesis_code():
    full = load_benchmark("raredis_heldout", None, heldout_size=12, seed=0)
    first = load_benchmark("raredis_heldout", None, limit=3, heldout_size=12, seed=0)
    assert len(full.items) == 12 and full.origin == BENCHMARKS["raredis_heldout"].builder
    assert [item.id for item in first.items] == [item.id for item in full.items[:3]]  # a limit is a prefix
    assert all(item.answer in item.options for item in full.items)


@pytest.mark.slow
def test_second_pass_rides_along_and_catches_up_on_cached_answers(tiny_answerer, tmp_path):  # noqa: F811
    """With recovery on, the second pass is asked during generation (stored beside the completions);
    completions cached by a run without it get it afterwards, in a separate call, without being
    generated again. Both ways give every unreadable sample a letter."""
    fresh = run_evaluation(_config(tiny_answerer, tmp_path, benchmarks=["medqa"], cache_dir=str(tmp_path / "a")))
    skipped = run_evaluation(_config(tiny_answerer, tmp_path, benchmarks=["medqa"], recovery=False, cache_dir=str(tmp_path / "b")))
    assert skipped.summary["tiny-answerer"]["medqa"]["recovered"] == 0
    caught_up = run_evaluation(_config(tiny_answerer, tmp_path, benchmarks=["medqa"], cache_dir=str(tmp_path / "b")))
    for result in (fresh, caught_up):
        scores = result.summary["tiny-answerer"]["medqa"]
        assert scores["recovered"] == round(scores["recovery_rate"] * scores["items"] * scores["n"]) > 0
    assert caught_up.summary["tiny-answerer"]["medqa"]["generated_questions"] == 0
    assert fresh.report["timing"]["tiny-answerer"]["generated_questions"] == 4
