"""What each step of a study computes: the shared data, the training runs, each arm's evaluation.

Every function takes the study and its step folder and returns the JSON-able result its marker keeps.
Each stage's config comes from the study's settings through the pipeline's stage registry
(``StudyConfig.stage``), wired as the pipeline's steps wire it, and the stages are medssr's own
(split, synthesis, labelling, training, evaluation harness).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from medssr.data import LabeledItem, MCQItem, read_jsonl, write_jsonl
from medssr.labeling.audit import kb_key
from medssr.study.config import HELDOUT, IN_DISTRIBUTION


def prepare(study, folder: Path) -> dict:
    """The base model, the stage-2 split (its held-out part cut to split.eval_size) and the question types of
    raredis_heldout."""
    from medssr import models
    from medssr.evaluation.registry import load_benchmark
    from medssr.split import split_stage2_data
    from medssr.pipelines.presets import default_benchmarks_dir
    from medssr.cpu import cpu_prefers_bf16
    from medssr.study.chance import question_type

    config = study.config
    base = models.model_location(config.settings["base_model"], build_dir=folder)
    split = split_stage2_data(config.stage("split", benchmarks_dir=config.settings["split"]["benchmarks_dir"] or default_benchmarks_dir()), folder)
    evaluation = config.stage("evaluation")
    heldout = load_benchmark(HELDOUT, None, heldout_size=evaluation.heldout_size, seed=evaluation.seed).items
    return {
        "base_model": base,
        "stage2": str(split.train_path),
        "eval_dir": str(split.eval_dir),
        "counts": {**split.counts, f"eval_questions.{HELDOUT}": len(heldout)},
        "heldout_question_types": {item.id: question_type(item, HELDOUT) for item in heldout},
        "cpu_native_bf16": cpu_prefers_bf16(),  # what dtype auto and bf16 unset resolve to on the machine that prepared it
    }


def synthesize(study, prepared: dict, folder: Path) -> dict:
    from medssr.stages import synthesis_config
    from medssr.synthesis.run import run_synthesis

    result = run_synthesis(synthesis_config(study.config.settings["synthesis"], prepared["stage2"], prepared["eval_dir"]), folder / "items.jsonl")
    return {"items": str(result.path), "stats": result.stats, "chart": str(result.chart_path)}


def cache_dir(study, stage: str) -> str:
    """The stage's completions cache: its own setting, else one in the study folder (moves with it)."""
    return study.config.settings[stage]["cache_dir"] or str(study.root / "cache")


def label(study, prepared: dict, synthesized: dict, folder: Path) -> dict:
    """Pseudo-labels by the base model's majority vote, and the same questions keyed by the knowledge base
    (the oracle's stage-1 data)."""
    from medssr.labeling import run_labeling
    from medssr.stages import require_labels

    labeling = study.config.stage("labeling", data=synthesized["items"], out=str(folder / "pseudo_labels.jsonl"),
                                  model=prepared["base_model"], cache_dir=cache_dir(study, "labeling"))
    result = require_labels(run_labeling(labeling), labeling)
    keyed = [LabeledItem.model_validate({**item.model_dump(), "label": kb_key(item)}) for item in result.kept if kb_key(item) is not None]
    write_jsonl(folder / "kb_labels.jsonl", keyed)
    return {
        "pseudo_labels": str(folder / "pseudo_labels.jsonl"),
        "kb_labels": str(folder / "kb_labels.jsonl"),
        "kept": len(result.kept),
        "kb_labelled": len(keyed),
        "audit": result.audit,
        "audit_paths": {k: v for k, v in result.paths.items() if k != "labeled"},
        "metrics": result.metrics(),
    }


def seen(study, prepared: dict, labeled: dict, folder: Path) -> dict:
    """The in-distribution evaluation set: new questions about the conditions of stage 1's knowledge questions
    (:mod:`medssr.synthesis.seen`), as a benchmark file in its own folder."""
    from medssr.data import write_reference_benchmark
    from medssr.evaluation.registry import BENCHMARKS
    from medssr.stages import synthesis_config
    from medssr.synthesis.seen import build_seen_items

    trained = read_jsonl(labeled["kb_labels"], LabeledItem).records
    synthesis = synthesis_config(study.config.settings["synthesis"], prepared["stage2"], prepared["eval_dir"])
    items, missing = build_seen_items(trained, study.config.seen_per_item, synthesis, study.config.stage("evaluation").seed)
    benchmarks = folder / "benchmarks"
    benchmarks.mkdir(parents=True, exist_ok=True)
    write_reference_benchmark(benchmarks / BENCHMARKS[IN_DISTRIBUTION].filename, items)
    knowledge = sum(1 for item in trained if item.metadata.get("origin") == "knowledge")
    return {"benchmarks_dir": str(benchmarks), "items": len(items), "not_built": missing, "from_questions": knowledge}


def plant(study, precision: str, kb_labels: str, folder: Path) -> dict:
    """The oracle's stage-1 questions, their keys corrupted to ``precision`` (seeded by planted_seed)."""
    from medssr.study.planted import planted_labels, precision_of

    keyed = read_jsonl(kb_labels, LabeledItem).records
    planted = planted_labels(keyed, precision, study.config.planted_seed)
    write_jsonl(folder / "labels.jsonl", planted)
    return {"requested": precision, "labels": str(folder / "labels.jsonl"), "items": len(planted), "precision": precision_of(planted, keyed)}


def train(study, run: str, planned, start_model: str, data: str, folder: Path) -> dict:
    """One GRPO stage (``planned``, a :class:`~medssr.study.plan.TrainingRun`) where ``training_job`` says: in this
    process when that is one local process, else through its launcher (torchrun here, or a PyTorchJob / TrainJob).
    Resumes from the run's own checkpoints when an earlier attempt was killed."""
    from medssr.launch import run_training_job
    from medssr.stages import training_job

    stage = planned.stage
    replaced = {name: value for name, value in (("seed", planned.seed), ("max_steps", planned.max_steps)) if value is not None}
    training = study.config.stage(f"train_{stage}", stage=stage, model=start_model, data=data, output_dir=str(folder / "model"), **replaced)
    job = study.config.stage("training_job")
    launcher, spec = training_job(job, training, study.study_id, f"train-{run}", folder)
    if job.launcher == "local" and spec.nproc_per_node == 1 and spec.num_workers == 0:
        from medssr.training import run_training

        metrics = run_training(training).metrics  # no torchrun start-up for what one process does alike
    else:
        run_training_job(launcher, spec, timeout=job.timeout_s or None)
        metrics = json.loads((folder / "model" / "metrics.json").read_text(encoding="utf-8"))
    # A finished run's checkpoints only served its resumption (each holds optimizer state: 3.6 GB a run for
    # SmolLM2-135M at save_steps 4), so they go once its model is written, before the marker.
    shutil.rmtree(folder / "model" / "checkpoints", ignore_errors=True)
    return {
        "run": run,
        "stage": stage,
        "starts_from": planned.start,
        "start_model": start_model,
        "data": data,
        "model_dir": str(folder / "model"),
        "history": str(folder / "model" / "log_history.jsonl"),
        "metrics": {k: v for k, v in metrics.items() if k != "config"},
        "training_config": dataclasses.asdict(training),
    }


def evaluation_sets(study) -> list[tuple[str, dict]]:
    """(folder, what it changes in the evaluation section): the section's benchmarks as set, then the extra ones
    at extra_limit."""
    sets = [("eval", {})]
    seen = study.finished("seen") if study.config.seen_per_item else None
    if seen and seen["items"]:
        sets.append(("eval-seen", {"benchmarks": [IN_DISTRIBUTION], "benchmarks_dir": seen["benchmarks_dir"], "limit": None}))
    if study.config.extra_benchmarks:
        sets.append(("eval-extra", {"benchmarks": list(study.config.extra_benchmarks), "limit": study.config.extra_limit}))
    return sets


def evaluation_config(study, arm: str, model: str, out: Path, changes: dict):
    wired = {"benchmarks_dir": study.finished("prepare")["eval_dir"], **changes}
    return study.config.stage("evaluation", models=[model], model_names=[arm], out_dir=str(out), cache_dir=cache_dir(study, "evaluation"), **wired)


def evaluate_arm(study, arm: str, model: str, folder: Path) -> dict:
    from medssr.evaluation import run_evaluation

    summary: dict = {}
    per_question, timing = [], {}
    for name, changes in evaluation_sets(study):
        result = run_evaluation(evaluation_config(study, arm, model, folder / name, changes))
        summary.update(result.summary[arm])
        per_question.append(result.report["per_question"][arm])
        timing[name] = result.report["timing"][arm]
        if result.skipped:
            raise ValueError(f"arm {arm}: benchmarks not evaluated: {result.skipped}")
    return {"arm": arm, "model": model, "summary": summary, "per_question": per_question, "timing": timing}


def evaluate_chance(study, folder: Path) -> dict:
    """The chance arm on the same questions as the others (the harness's loader and prompt bound): 1/k per
    question; beside it the letter counts of the reward targets."""
    import numpy as np

    from medssr.evaluation.per_question import METRICS, write_rows
    from medssr.evaluation.registry import load_benchmark
    from medssr.evaluation.scoring import bootstrap_ci
    from medssr.prompt_limit import PromptLimit
    from medssr.prompts import build_prompt
    from medssr.study.chance import chance_rows, target_letters

    prepared, labels = study.finished("prepare"), study.finished("label")
    letters = target_letters([(read_jsonl(labels["pseudo_labels"], LabeledItem).records, "synthesis"),
                              (read_jsonl(prepared["stage2"], MCQItem).records, study.config.settings["split"]["split_benchmark"])])
    summary, per_question = {}, []
    for name, changes in evaluation_sets(study):
        config = evaluation_config(study, "chance", prepared["base_model"], folder / name, changes)
        limit = PromptLimit.for_generator(dataclasses.replace(config.generator, model=prepared["base_model"]))
        rows = []
        for benchmark in config.benchmarks:
            items = load_benchmark(
                benchmark, config.benchmarks_dir, config.limit, config.on_error, config.use_hub, config.heldout_size, config.seed,
                prompt_limit=limit, prompt_of=lambda item: build_prompt(item, config.prompt_style),
            ).items
            expected = np.array([1 / len(item.options) for item in items]).reshape(-1, 1)
            low, high = bootstrap_ci(expected, config.bootstrap_samples, config.seed)
            scores = {"mean": float(expected.mean()), "std": 0.0, "ci95": [low, high]}
            summary[benchmark] = {"items": len(items), "n": None, **{metric: scores for metric in METRICS}, "recovery_rate": 0.0}
            rows += chance_rows(benchmark, items)
        path = folder / name / "per_question" / "chance.jsonl"
        write_rows(path, rows)
        per_question.append(str(path))
    return {"arm": "chance", "model": None, "summary": summary, "per_question": per_question, "letters": letters}
