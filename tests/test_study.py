"""``medssr study`` on the tiny model: killed after its first arm it resumes without redoing finished arms,
ends with the report and one MLflow parent run; the prior arm and the study's settings on their own."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medssr.data import EvalResult, LabeledItem, MCQItem, read_jsonl
from medssr.evaluation.calibration import sample_letter
from medssr.study import ARMS, StudyConfig
from medssr.study.config import PAIRED_COMPARISONS
from medssr.study.prior import AnswerPrior
from medssr.pipelines.presets import preset_file

TINY = [
    "base_model=tiny", "split.train_size=8", "split.eval_size=4", "evaluation.heldout_size=4", "synthesis.n=16",
    "labeling.min_agreement=0.0", "labeling.max_tokens=8", "labeling.batch_size=16",
    *(f"{stage}.{setting}" for stage in ("train_self", "train_supervised") for setting in (
        "max_steps=2", "num_generations=2", "per_device_train_batch_size=2", "learning_rate=1e-4", "max_completion_length=8", "save_steps=1")),
    "evaluation.n=2", "evaluation.max_tokens=8", "evaluation.batch_size=16", "evaluation.bootstrap_samples=50",
]
"""The tiny study: the study preset with these overrides (a study is a preset's stage settings plus --param)."""


def options(letters: str = "ABCD") -> dict[str, str]:
    return {letter: f"option {letter}" for letter in letters}


def test_prior_answers_the_most_common_target_of_the_question_type():
    labelled = [
        LabeledItem(id=f"s{i}", stem="q", options=options(), answer="A", label=label, agreement=1.0, metadata={"question_type": "inheritance"})
        for i, label in enumerate("CCB")
    ]
    gold = [MCQItem(id=f"g{i}", stem="q", options=options(), answer=answer) for i, answer in enumerate("DDA")]
    prior = AnswerPrior().add(labelled, "synthesis").add(gold, "medqa")
    # the pseudo-label is the target of a labelled item, not its answer
    assert prior.predict(MCQItem(id="h", stem="q", options=options(), metadata={"question_type": "inheritance"}), "raredis_heldout") == "C"
    assert prior.predict(MCQItem(id="m", stem="q", options=options()), "medqa") == "D"
    # a type never trained on: all targets together (C 2, D 2, B 1, A 1; the tie goes to the earlier letter)
    assert prior.predict(MCQItem(id="x", stem="q", options=options(), metadata={"question_type": "diagnosis"}), "raredis_heldout") == "C"
    # only the question's own letters: among A-C, C is the most common
    assert prior.predict(MCQItem(id="y", stem="q", options=options("ABC")), "medqa") == "A"


def test_settings_are_checked_and_the_identity_leaves_out_what_a_part_chooses(tmp_path):
    with pytest.raises(ValueError, match="arms: unknown"):
        StudyConfig(arms="base,rl_real")
    with pytest.raises(ValueError, match="num_generations: GRPO needs at least 2"):
        StudyConfig(params=["train_supervised.num_generations=1"])
    with pytest.raises(ValueError, match="--param labeling.max_tokenz: no such pipeline parameter"):
        StudyConfig(params=["labeling.max_tokenz=3"])
    with pytest.raises(ValueError, match="evaluation.benchmarks: a study names .* raredis_heldout"):
        StudyConfig(params=["evaluation.benchmarks=[medqa]"])
    assert StudyConfig(arms="oracle,base").selected_arms() == ["base", "oracle"]
    assert StudyConfig(arms="base").identity_hash() == StudyConfig(arms="all", report="x.md", out_dir=str(tmp_path)).identity_hash()
    assert StudyConfig(params=["train_self.max_steps=3"]).identity_hash() != StudyConfig().identity_hash()
    # the same settings by another route are the same study
    preset = tmp_path / "mine.yaml"
    preset.write_text(Path(preset_file("study")).read_text().replace("max_steps: 32", "max_steps: 3"))
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
    assert (labeling.n_samples, labeling.sampling.max_tokens, labeling.max_agreement) == (4, 96, 1.0)
    assert config.stage("train_self", stage="self").max_steps == 32


def test_the_cli_has_an_option_per_setting():
    from medssr.cli import build_parser

    args = build_parser().parse_args(["study", "--arms", "base,prior", "--param", "train_self.max_steps=3", "--param", "labeling.recovery=false",
                                      "--extra-benchmarks", "nejm", "mmlu"])
    assert (args.arms, args.params, args.extra_benchmarks) == ("base,prior", ["train_self.max_steps=3", "labeling.recovery=false"], ["nejm", "mmlu"])
    with pytest.raises(SystemExit):  # no abbreviations, and the old flat options are gone
        build_parser().parse_args(["study", "--stage1-max-steps", "3"])


def study_options(out_dir: Path, tracking: str) -> list[str]:
    options = ["--out-dir", str(out_dir), "--report", str(out_dir.parent / "report" / "study-tiny.md"), "--tracking-uri", tracking]
    for pair in TINY:
        options += ["--param", pair]
    return options


def test_a_killed_study_resumes_without_redoing_finished_arms_and_writes_the_report(tmp_path, monkeypatch):
    out_dir = tmp_path / "study"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "medssr.cli", "study", *study_options(out_dir, tracking)],
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
    finished_before = {arm for arm in ARMS if (out_dir / f"arm-{arm}" / "done.json").is_file()}
    assert {"base", "prior", "rl-real"} <= finished_before and finished_before != set(ARMS)
    markers_before = {arm: (out_dir / f"arm-{arm}" / "done.json").read_text() for arm in finished_before}
    rl_real_model = (out_dir / "train-rl-real" / "model" / "model.safetensors").stat().st_mtime_ns
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
    assert main(["study", *study_options(out_dir, tracking)]) == 0

    assert "rl-real" not in trained and not set(evaluated) & finished_before
    assert set(trained) <= {"self", "medssr", "oracle-stage1", "oracle"} and "oracle" in trained
    assert {arm: (out_dir / f"arm-{arm}" / "done.json").read_text() for arm in finished_before} == markers_before
    assert (out_dir / "train-rl-real" / "model" / "model.safetensors").stat().st_mtime_ns == rl_real_model
    report_path = tmp_path / "report" / "study-tiny.md"
    report = report_path.read_text(encoding="utf-8")
    for a, b in PAIRED_COMPARISONS:
        assert f"| {a} vs {b} | raredis_heldout | 4 |" in report
    assert "## `raredis_heldout` by question type" in report and "| = 1.00 |" in report
    assert report.count("- part ") == 2 and "medssr study --out-dir" in report and "--command" not in report
    # the settings block shows what differs from the stage configs' defaults, not all of them
    assert '"synthesis.n": 16' in report and '"split.eval_size": 4' in report and "synthesis.contamination_ngram" not in report
    # answer letters: each row's shares add up to 100, and the base arm's are its samples' reference-protocol letters
    table = report.split("## Answer letters")[1].split("`raredis_heldout`")[1].split("\n\n")[1].splitlines()
    columns = [cell.strip() for cell in table[0].strip("|").split("|")][1:]
    rows = {cells[0]: [float(c) for c in cells[1:]] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert set(rows) == {"gold", "base", "rl-real", "self", "medssr", "oracle"}
    assert all(abs(sum(values) - 100) < 0.5 for values in rows.values())
    samples = read_jsonl(next((out_dir / "arm-base" / "eval" / "samples").glob("*/raredis_heldout.jsonl")), EvalResult).records
    letters = [sample_letter(record, "with_recovery") or "none" for record in samples]
    assert rows["base"] == [round(100 * letters.count(c) / len(letters), 1) for c in columns]
    figures = report_path.with_suffix("")
    assert sorted(p.name for p in figures.glob("*.png")) == ["accuracy.png", "by_type.png", "labels.png", "paired.png", "training.png"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("medssr-study").experiment_id])
    parents = [run for run in runs if run.data.tags.get("medssr.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    nested = sorted(run.data.tags["medssr.stage"] for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id)
    # each step logged once, even the ones finished by the killed part
    assert nested == sorted(["prepare", "synthesize", "label", *(f"train-{r}" for r in ("rl-real", "self", "medssr", "oracle-stage1", "oracle")),
                             *(f"arm-{arm}" for arm in ARMS)])
    assert "paired.medssr_vs_rl-real.raredis_heldout.with_recovery.delta" in parents[0].data.metrics
    assert json.loads((out_dir / "study.json").read_text())["identity"]["synthesis.n"] == 16


def test_a_folder_holding_another_study_is_refused(tmp_path):
    from medssr.study.folder import Study

    Study(StudyConfig(out_dir=str(tmp_path), params=TINY)).claim()
    with pytest.raises(ValueError, match="synthesis.n: 16 there"):
        Study(StudyConfig(out_dir=str(tmp_path), params=[*TINY, "synthesis.n=17"])).claim()
