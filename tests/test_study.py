"""``medssr study`` on the tiny model: killed after its first arm it resumes without redoing finished arms,
ends with the report and one MLflow parent run; the prior arm and the study's settings on their own."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medssr.data import EvalResult, LabeledItem, MCQItem, read_jsonl
from medssr.evaluation.calibration import sample_letter
from medssr.evaluation.per_question import accuracy_by_question
from medssr.study import StudyConfig
from medssr.study.chance import chance_rows, target_letters
from medssr.study.plan import StudyPlan, TrainingRun
from medssr.study.planted import planted_labels, precision_of
from medssr.pipelines.presets import preset_file

TINY = [
    "split.train_size=8", "split.eval_size=4", "evaluation.heldout_size=4", "synthesis.n=16",
    "labeling.min_agreement=0.0", "labeling.max_tokens=8", "labeling.batch_size=16",
    *(f"{stage}.{setting}" for stage in ("train_self", "train_supervised") for setting in (
        "max_steps=2", "num_generations=2", "per_device_train_batch_size=2", "learning_rate=1e-4", "max_completion_length=8", "save_steps=1")),
    "evaluation.n=2", "evaluation.max_tokens=8", "evaluation.batch_size=16", "evaluation.bootstrap_samples=50",
]
"""The tiny study: the study preset with these overrides (a study is a preset's stage settings plus --param) and a
tiny base model."""


def options(letters: str = "ABCD") -> dict[str, str]:
    return {letter: f"option {letter}" for letter in letters}


def test_the_chance_arm_scores_one_in_k_per_question_and_counts_the_targets_letters():
    items = [MCQItem(id="q4", stem="q", options=options(), answer="B"), MCQItem(id="q5", stem="q", options=options("ABCDE"), answer="E")]
    rows = chance_rows("medqa", items)
    for metric in ("strict", "lenient", "with_recovery"):
        assert accuracy_by_question(rows, metric) == {"medqa": {"q4": 0.25, "q5": 0.2}}
    labelled = [LabeledItem(id=f"s{i}", stem="q", options=options(), answer="A", label=label, agreement=1.0,
                            metadata={"question_type": "inheritance"}) for i, label in enumerate("CCB")]
    gold = [MCQItem(id=f"g{i}", stem="q", options=options(), answer=answer) for i, answer in enumerate("DDA")]
    # a labelled item's target is its pseudo-label, not its answer
    assert target_letters([(labelled, "synthesis"), (gold, "medqa")]) == {"inheritance": {"B": 1, "C": 2}, "medqa": {"A": 1, "D": 2}}


@pytest.mark.parametrize("precision", ["1.0", "0.5", "0.2", "chance"])
def test_planted_labels_hit_the_requested_precision_seeded(precision):
    import random

    rng = random.Random(7)
    keyed = [LabeledItem(id=f"k{i}", stem="q", options=options("ABCD" if i % 3 else "ABCDE"), answer="A",
                         label=rng.choice("ABCD"), agreement=0.5) for i in range(300)]
    if precision == "1.0":
        with pytest.raises(ValueError, match="precision 1 is the oracle arm"):
            planted_labels(keyed, precision, seed=0)
        return
    planted = planted_labels(keyed, precision, seed=0)
    wanted = sum(1 / len(item.options) for item in keyed) / len(keyed) if precision == "chance" else float(precision)
    # the planted share is exact up to rounding, well inside the sampling error of a Bernoulli draw (about 0.03 here)
    assert abs(precision_of(planted, keyed) - wanted) <= 1 / len(keyed)
    assert all(item.label in item.letters for item in planted) and [item.id for item in planted] == [item.id for item in keyed]
    wrong = [item.label for item, key in zip(planted, keyed) if item.label != key.label]
    assert len(set(wrong)) >= 4, "wrong labels are spread over the other letters"
    assert planted_labels(keyed, precision, seed=0) == planted, "the same seed plants the same labels"
    assert planted_labels(keyed, precision, seed=1) != planted
    with pytest.raises(ValueError, match="neither a number"):
        planted_labels(keyed, "half", seed=0)


def test_the_plan_matches_the_steps_plants_precisions_and_repeats_the_headline_pair():
    plan = StudyPlan(32, 32, match_steps=True, planted=["0.5", "chance"], extra_seeds=[1])
    assert list(plan.arms) == ["base", "chance", "rl-real", "self", "medssr", "oracle", "planted-0.5", "planted-chance",
                               "rl-real-seed1", "medssr-seed1"]
    assert plan.runs["rl-real"] == TrainingRun("supervised", "base", "stage2", max_steps=64)
    longer = StudyPlan(32, 32, match_steps=True, planted=[], extra_seeds=[], oracle_steps=[64])
    assert longer.runs["oracle-64steps"] == TrainingRun("self", "base", "kb_labels", max_steps=64)
    assert longer.chain("oracle-64steps") == ["oracle-64steps"] and ("oracle-64steps", "base") in longer.comparisons
    with pytest.raises(ValueError, match="oracle_steps"):
        StudyPlan(32, 32, match_steps=True, planted=[], extra_seeds=[], oracle_steps=[0])
    assert plan.runs["medssr"].max_steps is None and plan.runs["self"].max_steps is None, "medssr trains 32 + 32 steps"
    assert plan.runs["planted-chance-stage1"] == TrainingRun("self", "base", "planted-chance")
    assert plan.runs["rl-real-seed1"] == TrainingRun("supervised", "base", "stage2", seed=1, max_steps=64)
    assert plan.chain("medssr-seed1") == ["self-seed1", "medssr-seed1"] and plan.chain("base") == [] and plan.chain("chance") == []
    assert plan.comparisons[0] == ("medssr", "rl-real") and ("medssr-seed1", "rl-real-seed1") in plan.comparisons
    assert ("planted-0.5", "rl-real") in plan.comparisons and ("oracle", "base") in plan.comparisons
    assert StudyPlan(32, 16, match_steps=False, planted=[], extra_seeds=[]).runs["rl-real"].max_steps is None
    with pytest.raises(ValueError, match="match_steps"):
        StudyPlan(-1, 32, match_steps=True, planted=[], extra_seeds=[])


def test_settings_are_checked_and_the_identity_leaves_out_what_a_part_chooses(tmp_path):
    with pytest.raises(ValueError, match="arms: unknown"):
        StudyConfig(arms="base,rl_real")
    with pytest.raises(ValueError, match="arms: unknown planted-0.7"):
        StudyConfig(arms="planted-0.7")
    assert "planted-0.7" in StudyConfig(arms="planted-0.7", planted_precisions=["0.7"]).selected_arms()
    with pytest.raises(ValueError, match="num_generations: GRPO needs at least 2"):
        StudyConfig(params=["train_supervised.num_generations=1"])
    with pytest.raises(ValueError, match="--param labeling.max_tokenz: no such pipeline parameter"):
        StudyConfig(params=["labeling.max_tokenz=3"])
    with pytest.raises(ValueError, match="evaluation.benchmarks: a study names .* raredis_heldout"):
        StudyConfig(params=["evaluation.benchmarks=[medqa]"])
    assert StudyConfig(arms="oracle,base").selected_arms() == ["base", "oracle"]
    assert StudyConfig(arms="base").identity_hash() == StudyConfig(arms="all", report="x.md", out_dir=str(tmp_path)).identity_hash()
    assert StudyConfig(params=["train_self.max_steps=3"]).identity_hash() != StudyConfig().identity_hash()
    assert StudyConfig(extra_seeds=[2]).identity_hash() != StudyConfig().identity_hash()
    assert StudyConfig(planted_precisions=["0.3"]).identity_hash() != StudyConfig().identity_hash()
    # the same settings by another route are the same study
    preset = tmp_path / "mine.yaml"
    preset.write_text(Path(preset_file("study")).read_text().replace("max_steps: 8", "max_steps: 3"))
    assert StudyConfig(preset=str(preset)).identity_hash() == StudyConfig(params=["train_self.max_steps=3", "train_supervised.max_steps=3"]).identity_hash()


def test_the_study_builds_each_stage_as_the_pipeline_step_does():
    """The study's stage settings are the study preset's, built through the same stage registry as the pipeline's
    steps: `medssr pipeline run --preset study` runs the study's medssr arm."""
    from medssr.pipelines.presets import preset_values
    from medssr.stages import STAGES

    config, preset = StudyConfig(), preset_values("study")
    assert config.settings["base_model"] == preset["base_model"]
    for stage in ("split", "synthesis", "labeling", "train_self", "train_supervised", "evaluation"):
        assert config.settings[stage] == {**STAGES[stage].defaults(), **preset.get(stage, {})}, stage
    labeling = config.stage("labeling", data="i.jsonl", out="o.jsonl", model="m")
    assert (labeling.n_samples, labeling.sampling.max_tokens, labeling.max_agreement) == (4, 64, 1.0)
    assert config.stage("train_self", stage="self").max_steps == 8


def test_the_cli_has_an_option_per_setting():
    from medssr.cli import build_parser

    args = build_parser().parse_args(["study", "--arms", "base,chance", "--param", "train_self.max_steps=3", "--param", "labeling.recovery=false",
                                      "--extra-benchmarks", "nejm", "mmlu"])
    assert (args.arms, args.params, args.extra_benchmarks) == ("base,chance", ["train_self.max_steps=3", "labeling.recovery=false"], ["nejm", "mmlu"])
    with pytest.raises(SystemExit):  # no abbreviations, and the old flat options are gone
        build_parser().parse_args(["study", "--stage1-max-steps", "3"])


@pytest.fixture(scope="module")
def format_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model taught to end with "The answer is X." (X random), so that GRPO rewards can differ."""
    from medssr.models import teach_answer_format

    items = read_jsonl(Path(__file__).parent / "data" / "train_self.jsonl", LabeledItem, on_error="skip").records
    return teach_answer_format(tiny_model, items, tmp_path_factory.mktemp("format-model"), steps=40, rows_per_step=4)


def study_options(out_dir: Path, tracking: str, model: Path) -> list[str]:
    options = ["--out-dir", str(out_dir), "--report", str(out_dir.parent / "report" / "study-tiny.md"), "--tracking-uri", tracking,
               "--planted-precisions", "chance", "--extra-seeds", "1", "--oracle-steps", "3", "--param", f"base_model={model}"]
    for pair in TINY:
        options += ["--param", pair]
    return options


def table_rows(report: str, heading: str) -> dict[str, list[str]]:
    """The first Markdown table after ``heading``: its first column -> its other cells (a later row wins)."""
    section = report.split(heading, 1)[1]
    block = section[section.index("\n| ") + 1:].split("\n\n")[0].splitlines()
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in block[2:])}


def test_a_killed_study_resumes_without_redoing_finished_arms_and_writes_the_report(format_model, tmp_path, monkeypatch):
    out_dir = tmp_path / "study"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    options = study_options(out_dir, tracking, format_model)
    process = subprocess.Popen(
        [sys.executable, "-m", "medssr.cli", "study", *options],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    first_trained = out_dir / "arm-rl-real" / "done.json"
    deadline = time.monotonic() + 900
    try:
        while not first_trained.is_file():
            assert process.poll() is None, "the study ended before its first trained arm"
            assert time.monotonic() < deadline, "no arm finished in 15 minutes"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # an assertion above may have found it ended
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    config = StudyConfig(out_dir=str(out_dir), planted_precisions=["chance"], extra_seeds=[1], oracle_steps=[3],
                         params=[f"base_model={format_model}", *TINY])
    arms = list(config.plan.arms)
    finished_before = {arm for arm in arms if (out_dir / f"arm-{arm}" / "done.json").is_file()}
    assert {"base", "chance", "rl-real"} <= finished_before and finished_before != set(arms)
    markers_before = {arm: (out_dir / f"arm-{arm}" / "done.json").read_text() for arm in finished_before}
    rl_real_model = (out_dir / "train-rl-real" / "model" / "model.safetensors").stat().st_mtime_ns
    assert not (out_dir / "train-rl-real" / "model" / "checkpoints").exists(), "a finished run keeps no checkpoints"
    # rl-real trains as many steps as medssr's two stages together
    assert json.loads((out_dir / "train-rl-real" / "done.json").read_text())["metrics"]["global_step"] == 4
    # the rest runs in a moved folder, as on another machine with the folder copied over
    out_dir = Path(shutil.move(out_dir, tmp_path / "moved"))
    assert "<study>/prepare/" in (out_dir / "prepare" / "done.json").read_text()

    from medssr.evaluation import harness
    from medssr.study import steps
    from medssr.cli import main

    trained, evaluated = [], []
    real_train, real_evaluate = steps.train, harness.run_evaluation
    monkeypatch.setattr(steps, "train", lambda study, run, *args: trained.append(run) or real_train(study, run, *args))
    monkeypatch.setattr("medssr.evaluation.run_evaluation", lambda config, *a: evaluated.append(config.model_names[0]) or real_evaluate(config, *a))
    monkeypatch.chdir(tmp_path)
    assert main(["study", *study_options(out_dir, tracking, format_model)]) == 0

    assert "rl-real" not in trained and not set(evaluated) & finished_before
    assert set(trained) <= set(config.plan.runs) - {"rl-real"} and {"oracle", "planted-chance", "medssr-seed1"} <= set(trained)
    assert {arm: (out_dir / f"arm-{arm}" / "done.json").read_text() for arm in finished_before} == markers_before
    assert (out_dir / "train-rl-real" / "model" / "model.safetensors").stat().st_mtime_ns == rl_real_model
    seeds = {run: json.loads((out_dir / f"train-{run}" / "done.json").read_text())["training_config"]["seed"] for run in ("medssr", "medssr-seed1")}
    assert seeds == {"medssr": 0, "medssr-seed1": 1}
    planted = json.loads((out_dir / "plant-chance" / "done.json").read_text())
    assert planted["requested"] == "chance" and abs(planted["precision"] - 0.25) <= 1 / planted["items"]
    report_path = tmp_path / "report" / "study-tiny.md"
    report = report_path.read_text(encoding="utf-8")
    assert "## `raredis_heldout` by question type" in report and "| = 1.00 |" in report and "## Gain by label precision" in report
    assert report.count("- part ") == 2 and "medssr study --out-dir" in report and "--command" not in report
    # the settings block shows what differs from the stage configs' defaults, not all of them
    assert '"synthesis.n": 16' in report and '"split.eval_size": 4' in report and "synthesis.contamination_ngram" not in report
    assert '"extra_seeds": [\n  1\n ]' in report

    # each arm is a result unless a training run behind it learned nothing; the training table says which
    training = table_rows(report, "## Training runs")
    learned_nothing = {run for run, cells in training.items() if "learned nothing" in cells[3] or cells[5] == "**no**"}
    assert set(training) == set(config.plan.runs) and all(re.fullmatch(r"\d+ of \d+( \(learned nothing\))?", cells[3]) for cells in training.values())
    for arm in arms:
        no_result = bool(set(config.plan.chain(arm)) & learned_nothing)
        row = next(line for line in report.splitlines() if line.startswith(f"| {arm} | raredis_heldout | 4 |"))
        assert ("no result" in row) == no_result, row
        assert (f"- `{arm}`: train-" in report) == no_result
    assert "| chance | medqa | 4 | 25.0 [25.0, 25.0] | 25.0 [25.0, 25.0] | 25.0 [25.0, 25.0] | 0.0 |" in report  # 1 in 4 options
    assert "| chance | raredis_heldout | 4 | 20.0 [20.0, 20.0] |" in report  # 1 in 5
    for a, b in config.plan.comparisons:
        row = next(line for line in report.splitlines() if line.startswith(f"| {a} vs {b} | raredis_heldout | 4 |"))
        assert ("no result" in row) == bool(set(config.plan.chain(a) + config.plan.chain(b)) & learned_nothing), row
    # answer letters: each row's shares add up to 100, and the base arm's are its samples' reference-protocol letters
    table = report.split("## Answer letters")[1].split("`raredis_heldout`")[1].split("\n\n")[1].splitlines()
    columns = [cell.strip() for cell in table[0].strip("|").split("|")][1:]
    rows = {cells[0]: [float(c) for c in cells[1:]] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert set(rows) == {"gold", *(arm for arm in arms if arm != "chance" and not set(config.plan.chain(arm)) & learned_nothing)}
    assert all(abs(sum(values) - 100) < 0.5 for values in rows.values())
    samples = read_jsonl(next((out_dir / "arm-base" / "eval" / "samples").glob("*/raredis_heldout.jsonl")), EvalResult).records
    letters = [sample_letter(record, "with_recovery") or "none" for record in samples]
    assert rows["base"] == [round(100 * letters.count(c) / len(letters), 1) for c in columns]
    # the positive control is read on the in-distribution questions, for the oracle and the longer stage-1-only oracle
    seen = json.loads((out_dir / "seen" / "done.json").read_text())
    assert seen["items"] > 0 and f"| chance | raredis_seen | {seen['items']} |" in report
    controls = table_rows(report, "## Positive control")
    assert controls["oracle-3steps"][:2] == ["3", "raredis_seen"] and controls["oracle"][0] == "2"
    assert "oracle minus base on `raredis_seen`" in report
    figures = report_path.with_suffix("")
    assert sorted(p.name for p in figures.glob("*.png")) == ["accuracy.png", "by_type.png", "labels.png", "paired.png", "precision.png", "training.png"]

    # the raw files are published beside the report, and the script recomputes every paired delta from them alone
    raw = figures / "raw"
    assert sorted(p.name for p in (raw / "per_question").iterdir()) == sorted(f"{arm}.jsonl.gz" for arm in arms)
    assert {p.name for p in (raw / "training").iterdir()} == {f"{run}.log_history.jsonl.gz" for run in config.plan.runs}
    published = json.loads((raw / "headline.json").read_text())
    assert published == json.loads((out_dir / "report" / "paired.json").read_text())
    moved = Path(shutil.copytree(raw, tmp_path / "elsewhere"))  # nothing outside raw/ is read
    script = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "recompute_study.py"), str(moved)],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert script.returncode == 0, script.stdout + script.stderr
    assert f"{len(published)} of {len(published)} published numbers reproduced" in script.stdout
    headline = published["medssr_vs_rl-real.raredis_heldout.with_recovery.delta"]
    assert f"medssr minus rl-real, raredis_heldout, reference protocol: {100 * headline:+.1f}" in script.stdout
    edited = json.loads((moved / "headline.json").read_text())
    edited["medssr_vs_rl-real.raredis_heldout.with_recovery.delta"] += 0.01
    (moved / "headline.json").write_text(json.dumps(edited))
    script = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "recompute_study.py"), str(moved)],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert script.returncode == 1 and "not reproduced: medssr_vs_rl-real.raredis_heldout.with_recovery.delta" in script.stdout

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("medssr-study").experiment_id])
    parents = [run for run in runs if run.data.tags.get("medssr.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    nested = sorted(run.data.tags["medssr.stage"] for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id)
    # each step logged once, even the ones finished by the killed part
    assert nested == sorted(["prepare", "synthesize", "label", "seen", "plant-chance", *(f"train-{r}" for r in config.plan.runs),
                             *(f"arm-{arm}" for arm in arms)])
    metrics, tags = parents[0].data.metrics, parents[0].data.tags
    assert "paired.medssr_vs_rl-real.raredis_heldout.with_recovery.mde" in metrics
    assert {f"signal.train-{run}.steps_with_variance" for run in config.plan.runs} <= set(metrics)
    assert {key.removeprefix("medssr.learned_nothing.train-") for key in tags if key.startswith("medssr.learned_nothing.")} == learned_nothing
    assert json.loads((out_dir / "study.json").read_text())["identity"]["synthesis.n"] == 16


def test_a_folder_holding_another_study_is_refused(tmp_path):
    from medssr.study.folder import Study

    Study(StudyConfig(out_dir=str(tmp_path), params=TINY)).claim()
    with pytest.raises(ValueError, match="synthesis.n: 16 there"):
        Study(StudyConfig(out_dir=str(tmp_path), params=[*TINY, "synthesis.n=17"])).claim()


def test_the_premise_rule_needs_the_wilson_lower_bound_ten_points_over_chance():
    from medssr.evaluation.calibration import wilson_interval
    from medssr.study.probe import goes_on

    low, _ = wilson_interval(45, 100)  # 45% right of 100 with chance 20%: lower bound 35.6 >= 30
    assert goes_on(low, 0.2, 0.10)
    low, _ = wilson_interval(38, 100)  # 38%: lower bound 29.1, not 10 points above chance
    assert not goes_on(low, 0.2, 0.10) and not goes_on(None, 0.2, 0.10)


def test_the_probe_votes_on_every_question_type_with_permuted_options(tiny_model, tmp_path, capsys):
    from medssr.cli import main
    from medssr.synthesis.config import QUESTION_TYPES

    out = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_model), "--out-dir", str(out), "--items-per-type", "6", "--votes", "3", "--max-tokens", "1",
                 "--allowed-letters", "A", "B", "C", "D", "E", "--batch-size", "32"]) == 0
    table = json.loads((out / "probe.json").read_text())
    assert [row["question_type"] for row in table["types"]] == list(QUESTION_TYPES)
    for row in table["types"]:
        labels = read_jsonl(out / row["question_type"] / "labels.jsonl", LabeledItem).records
        assert row["items"] == 6 and row["voted"] == len(labels) <= 6 and row["chance"] == pytest.approx(0.2)
        assert row["correct"] == sum(item.label == item.answer for item in labels)
        low, high = row["ci95"]
        assert 0.0 <= low <= row["precision"] <= high <= 1.0
        assert row["goes_on"] is (low >= row["chance"] + 0.10)
        audit = json.loads((out / row["question_type"] / "labels.audit.json").read_text())
        assert audit["settings"]["permute_options"] is True
    assert "| diagnosis | 6 |" in (out / "probe.md").read_text() and "rule: Wilson 95% lower bound >= chance + 0.1" in capsys.readouterr().out
