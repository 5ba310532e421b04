"""What each step of a study computes: the shared data, the training runs, each arm's evaluation.

Every function takes the study and its step folder and returns the JSON-able result its marker keeps;
the stages themselves are medssr's own (split, synthesis, labelling, training, evaluation harness).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from medssr.data import LabeledItem, MCQItem, read_jsonl, write_jsonl
from medssr.labeling.audit import kb_key
from medssr.study.config import StudyConfig

HELDOUT = "raredis_heldout"


def benchmarks_dir(config: StudyConfig) -> str:
    from medssr.pipelines.presets import default_benchmarks_dir

    return config.benchmarks_dir or default_benchmarks_dir()


def primary_benchmarks(config: StudyConfig) -> list[str]:
    return [HELDOUT, config.split_benchmark]


def extra_benchmarks(config: StudyConfig) -> list[str]:
    names = [part.strip() for part in config.extra_benchmarks.split(",") if part.strip()]
    overlap = set(names) & set(primary_benchmarks(config))
    if overlap:
        raise ValueError(f"extra_benchmarks: {', '.join(sorted(overlap))} is evaluated in full already")
    return names


def prepare(study, folder: Path) -> dict:
    """The base model, the stage-2 split (its held-out part cut to split_eval_size) and the question
    types of raredis_heldout."""
    from medssr import models
    from medssr.evaluation.registry import load_benchmark
    from medssr.pipelines.data import BENCHMARK_PREFIX, SplitConfig, split_stage2_data
    from medssr.study.prior import question_type

    config = study.config
    base = models.model_location(config.base_model, build_dir=folder, seed=config.seed)
    split = split_stage2_data(
        SplitConfig(benchmarks_dir=benchmarks_dir(config), split_benchmark=config.split_benchmark, train_size=config.stage2_size, seed=config.seed),
        folder,
    )
    eval_file = split.eval_dir / f"{BENCHMARK_PREFIX}{config.split_benchmark}.json"
    rows = json.loads(eval_file.read_text(encoding="utf-8"))
    if len(rows) < config.split_eval_size:
        raise ValueError(f"split_eval_size: {config.split_benchmark} has {len(rows)} held-out questions, fewer than {config.split_eval_size}")
    eval_file.write_text(json.dumps(rows[: config.split_eval_size], ensure_ascii=False), encoding="utf-8")
    heldout = load_benchmark(HELDOUT, None, heldout_size=config.heldout_size, seed=config.seed).items
    return {
        "base_model": base,
        "stage2": str(split.train_path),
        "eval_dir": str(split.eval_dir),
        "counts": {**split.counts, f"eval_questions.{config.split_benchmark}": config.split_eval_size, f"eval_questions.{HELDOUT}": len(heldout)},
        "heldout_question_types": {item.id: question_type(item, HELDOUT) for item in heldout},
    }


def synthesize(study, prepared: dict, folder: Path) -> dict:
    from medssr.synthesis.config import SynthesisConfig
    from medssr.synthesis.run import run_synthesis

    config = study.config
    synthesis = SynthesisConfig(
        n=config.synth_n,
        rare_ratio=config.rare_ratio,
        seed=config.seed,
        options_per_item=config.options_per_item,
        seed_questions=prepared["stage2"] if config.rare_ratio < 1.0 else None,
        decontaminate_against=[prepared["eval_dir"]],
    )
    result = run_synthesis(synthesis, folder / "items.jsonl")
    return {"items": str(result.path), "stats": result.stats, "chart": str(result.chart_path)}


def generator_config(config: StudyConfig, model: str = ""):
    from medssr.generation.base import GeneratorConfig

    return GeneratorConfig(backend=config.generation_backend, model=model, batch_size=config.generation_batch_size, device=config.device, progress=False)


def label(study, prepared: dict, synthesized: dict, folder: Path) -> dict:
    """Pseudo-labels by the base model's majority vote, and the same questions keyed by the knowledge base
    (the oracle's stage-1 data)."""
    from medssr.labeling import LABELING_SAMPLING, LabelingConfig, run_labeling

    config = study.config
    labeling = LabelingConfig(
        data=synthesized["items"],
        out=str(folder / "pseudo_labels.jsonl"),
        generator=generator_config(config, prepared["base_model"]),
        n_samples=config.label_samples,
        sampling=dataclasses.replace(LABELING_SAMPLING, max_tokens=config.label_max_tokens, seed=config.seed),
        min_agreement=config.min_agreement,
        max_agreement=config.max_agreement,
        min_parsed=config.min_parsed,
        recovery=config.label_recovery,
        prompt_style=config.prompt_style,
        on_error="skip",
        cache_dir=str(study.root / "cache"),
    )
    result = run_labeling(labeling)
    if not result.kept:
        raise ValueError(f"labelling kept no question of {result.audit['items']} (see {result.paths['markdown']}); widen the agreement bounds")
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


def training_config(config: StudyConfig, stage: str, model: str, data: str, output_dir: Path):
    from medssr.training import TrainingConfig

    return TrainingConfig(
        stage=stage,
        model=model,
        data=data,
        output_dir=str(output_dir),
        learning_rate=config.learning_rate,
        num_generations=config.num_generations,
        per_device_train_batch_size=config.train_batch_size,
        beta=config.beta,
        max_completion_length=config.max_completion_length,
        temperature=config.train_temperature,
        max_steps=config.stage1_max_steps if stage == "self" else config.stage2_max_steps,
        save_steps=config.save_steps,
        seed=config.seed,
        use_vllm=config.use_vllm,
        vllm_tensor_parallel_size=config.vllm_tensor_parallel_size,
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        gradient_checkpointing=config.gradient_checkpointing,
    )


def train(study, run: str, stage: str, start_model: str, data: str, folder: Path) -> dict:
    """One GRPO stage: in this process, or under torchrun with nproc_per_node processes. Resumes from the
    run's own checkpoints when an earlier attempt was killed."""
    training = training_config(study.config, stage, start_model, data, folder / "model")
    if study.config.nproc_per_node == 1:
        from medssr.training import run_training

        metrics = run_training(training).metrics
    else:
        from medssr.launch import JobSpec, LocalLauncherConfig, run_training_job

        spec = JobSpec(run_id=study.study_id, stage=f"train-{run}", training=dataclasses.asdict(training), nproc_per_node=study.config.nproc_per_node)
        run_training_job(LocalLauncherConfig(work_dir=str(folder / "launch")), spec)
        metrics = json.loads((folder / "model" / "metrics.json").read_text(encoding="utf-8"))
    return {
        "run": run,
        "stage": stage,
        "start_model": start_model,
        "data": data,
        "model_dir": str(folder / "model"),
        "history": str(folder / "model" / "log_history.jsonl"),
        "metrics": {k: v for k, v in metrics.items() if k != "config"},
        "training_config": dataclasses.asdict(training),
    }


def evaluation_config(study, arm: str, model: str, benchmarks: list[str], limit: int | None, out: Path):
    from medssr.evaluation import EvaluationConfig
    from medssr.generation.base import SamplingParams

    config, prepared = study.config, study.finished("prepare")
    return EvaluationConfig(
        models=[model],
        model_names=[arm],
        benchmarks_dir=prepared["eval_dir"],
        benchmarks=benchmarks,
        limit=limit,
        n=config.eval_samples,
        sampling=SamplingParams(temperature=config.eval_temperature, top_p=config.eval_top_p, top_k=config.eval_top_k, max_tokens=config.eval_max_tokens),
        prompt_style=config.prompt_style,
        generator=generator_config(config),
        recovery=True,
        cache_dir=str(study.root / "cache"),
        out_dir=str(out),
        bootstrap_samples=config.bootstrap_samples,
        seed=config.seed,
        use_hub=False,
        heldout_size=config.heldout_size,
        on_error="skip",
    )


def evaluation_sets(config: StudyConfig) -> list[tuple[str, list[str], int | None]]:
    """(folder, benchmarks, limit): the primary benchmarks in full, the extra ones at extra_limit."""
    sets = [("eval", primary_benchmarks(config), None)]
    if extra_benchmarks(config):
        sets.append(("eval-extra", extra_benchmarks(config), config.extra_limit))
    return sets


def evaluate_arm(study, arm: str, model: str, folder: Path) -> dict:
    from medssr.evaluation import run_evaluation

    summary: dict = {}
    per_question, timing = [], {}
    for name, benchmarks, limit in evaluation_sets(study.config):
        result = run_evaluation(evaluation_config(study, arm, model, benchmarks, limit, folder / name))
        summary.update(result.summary[arm])
        per_question.append(result.report["per_question"][arm])
        timing[name] = result.report["timing"][arm]
        if result.skipped:
            raise ValueError(f"arm {arm}: benchmarks not evaluated: {result.skipped}")
    return {"arm": arm, "model": model, "summary": summary, "per_question": per_question, "timing": timing}


def evaluate_prior(study, folder: Path) -> dict:
    """The prior arm, scored like the others on the same questions (the harness's loader and prompt bound)."""
    from medssr.evaluation.per_question import rows_from, write_rows
    from medssr.evaluation.registry import load_benchmark
    from medssr.evaluation.scoring import score
    from medssr.prompts import PromptLimit, build_prompt
    from medssr.study.prior import AnswerPrior, prior_records

    config = study.config
    prepared, labels = study.finished("prepare"), study.finished("label")
    prior = AnswerPrior()
    prior.add(read_jsonl(labels["pseudo_labels"], LabeledItem).records, "synthesis")
    prior.add(read_jsonl(prepared["stage2"], MCQItem).records, config.split_benchmark)
    limit = PromptLimit.for_generator(generator_config(config, prepared["base_model"]))
    summary, per_question = {}, []
    for name, benchmarks, benchmark_limit in evaluation_sets(config):
        rows = []
        for benchmark in benchmarks:
            items = load_benchmark(
                benchmark, prepared["eval_dir"], benchmark_limit, "skip", False, config.heldout_size, config.seed,
                prompt_limit=limit, prompt_of=lambda item: build_prompt(item, config.prompt_style),
            ).items
            records = prior_records(prior, benchmark, items, config.eval_samples)
            answers = [[r.strict for r in records[i * config.eval_samples:(i + 1) * config.eval_samples]] for i in range(len(items))]
            summary[benchmark] = score([item.answer for item in items], answers, answers, [[None] * config.eval_samples for _ in items],
                                       config.bootstrap_samples, config.seed)
            rows += rows_from(records)
        path = folder / name / "per_question" / "prior.jsonl"
        write_rows(path, rows)
        per_question.append(str(path))
    return {"arm": "prior", "model": None, "summary": summary, "per_question": per_question, "letters": prior.table()}
