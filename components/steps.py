"""What each pipeline step does, as plain functions the KFP components call with their inputs.

A step builds its stage's typed config from the step's parameters, calls the stage function
(``run_synthesis``, ``run_labeling``, ...), and records the result: an MLflow run nested under the
pipeline's parent run (config params + hash, metrics, artifacts, dataset inputs) and the KFP output
artifacts. Stage logic lives in ``medssr.*``; nothing here decides anything about the method.

Where files live: small things (datasets, reports, metrics) are KFP artifacts. Model folders are
written to the run's folder on the shared ``workspace`` (a local folder under kfp.local, the
workspace PVC on a cluster) and passed on as paths, because the training job's own pods (PyTorchJob,
TrainJob) must read the data and write the model there, and copying multi-GB folders through the KFP
artifact store between every step would cost more than the steps. Each Model artifact records the
folder in its metadata.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medssr.lifetime import watch_runner
from medssr.pipelines.resume import resumable, runner_lock_tag
from medssr.tracking import StageRun, Tracker, TrackingConfig, config_hash, file_sha256

COMPUTE_SECONDS = "compute_seconds"
IMPORT_SECONDS = "import_seconds"  # loading the stage's libraries in the step's fresh process
EVALUATED_NAMES = ("base", "stage1", "stage2")


# ---------------------------------------------------------------------------------------------- helpers


STEP_TIMINGS_ENV = "MEDSSR_STEP_TIMINGS"


def record_step_time(step: str, seconds: float) -> None:
    """Append the step function's wall time to the file MEDSSR_STEP_TIMINGS names (set by local runs),
    so a run's timing report can split tracking from orchestration."""
    path = os.environ.get(STEP_TIMINGS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "seconds": seconds}) + "\n")


def end_process_fast_after_success(step: Callable) -> Callable:
    """Under the KFP executor, end the step's process with ``os._exit(0)`` once the step has returned and
    the executor has written its outputs: Python's own teardown of the loaded torch / transformers /
    mlflow modules took 1-7 s per step, a third of the local pipeline's orchestration overhead. A step
    that raised keeps the normal exit (traceback, status 1); called in-process (tests, other code) this
    changes nothing."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        watch_runner()  # a local run's step ends with its runner, even one killed by SIGKILL
        started = time.perf_counter()
        result = step(*args, **kwargs)
        record_step_time(step.__name__, time.perf_counter() - started)
        main = sys.modules.get("__main__")
        if getattr(getattr(main, "__spec__", None), "name", "") == "kfp.dsl.executor_main":
            failures: list = []
            previous_hook = sys.excepthook

            def record_failure(*exc_info):
                failures.append(exc_info)
                previous_hook(*exc_info)

            def exit_now():
                if failures:
                    return
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)

            sys.excepthook = record_failure
            atexit.register(exit_now)  # registered last, so it runs first at exit: after the outputs are written
        return result

    return wrapper


def tracker_for(tracking_uri: str, experiment: str) -> Tracker:
    return Tracker(TrackingConfig(tracking_uri=tracking_uri, experiment=experiment))


def run_folder(workspace: str, run_id: str, *parts: str) -> Path:
    path = Path(workspace).expanduser().resolve().joinpath(run_id, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_id() -> str:
    """Lower-case, label-safe and sortable: ``medssr-20261125-211500-1a2b3c``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"medssr-{stamp}-{uuid.uuid4().hex[:6]}"


def split_csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@contextmanager
def timed(record: dict, key: str = COMPUTE_SECONDS):
    started = time.perf_counter()
    try:
        yield
    finally:
        record[key] = record.get(key, 0.0) + time.perf_counter() - started


def png_html(title: str, png: str | os.PathLike | None, markdown: str = "") -> str:
    """A self-contained HTML page (KFP renders HTML artifacts) with an inline PNG and a pre-formatted table."""
    image = ""
    if png and Path(png).is_file():
        encoded = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        image = f'<img alt="{title}" src="data:image/png;base64,{encoded}"/>'
    table = f"<pre>{markdown.replace('&', '&amp;').replace('<', '&lt;')}</pre>" if markdown else ""
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body><h2>{title}</h2>{image}{table}</body></html>"


def log_kfp_metrics(kfp_metrics, values: dict[str, Any]) -> None:
    """Finite numbers into a KFP Metrics artifact (keys made KFP-safe)."""
    from medssr.tracking import numeric_items

    for key, value in numeric_items(values).items():
        kfp_metrics.log_metric(re.sub(r"[^\w.\-]", "_", key), value)


def split_config(benchmarks_dir: str, split_benchmark: str, stage2_size: int, stage2_data: str, seed: int):
    from medssr.pipelines.data import SplitConfig

    return SplitConfig(
        benchmarks_dir=benchmarks_dir,
        split_benchmark=split_benchmark,
        train_size=stage2_size,
        stage2_data=stage2_data,
        seed=seed,
    )


def resolve_base_model(base_model: str, folder: Path) -> str:
    """``tiny`` builds the random test model into the run folder, ``smollm2`` the packaged demo model
    (local runs); ``models:/`` becomes its registry location. Hub ids and ``s3://`` URIs pass on unchanged,
    so every later step, and a training job's own pods, resolve them where they run."""
    from medssr import models, storage
    from medssr.tracking import resolve_model_reference

    if base_model == "tiny":
        return str(models.build_tiny_model(folder / "tiny-base"))
    if base_model == "smollm2":
        return str(models.build_smollm2())
    if base_model.startswith("models:/"):
        return resolve_model_reference(base_model)
    if not storage.is_s3(base_model):
        models.resolve_model(base_model)  # a missing local folder fails here, not in the training job
    return base_model


# ---------------------------------------------------------------------------------------------- steps


@end_process_fast_after_success
@resumable("prepare", ignore=("kfp_run_id",))
def prepare_step(
    run_id: str,
    kfp_run_id: str,
    workspace: str,
    tracking_uri: str,
    experiment: str,
    base_model: str,
    benchmarks_dir: str,
    split_benchmark: str,
    stage2_size: int,
    stage2_data: str,
    seed: int,
    pipeline_params: str,
    stage2_out,
) -> dict[str, str]:
    """Open the pipeline's parent run, split stage-2 data from the evaluation set, resolve the base model."""
    record: dict[str, Any] = {}
    with timed(record, IMPORT_SECONDS):
        from medssr.pipelines.data import split_stage2_data

    run_id = pipeline_run_id(run_id, kfp_run_id) or new_run_id()
    params = json.loads(pipeline_params) if pipeline_params else {}
    tracker = tracker_for(tracking_uri, experiment)
    tags = {"medssr.kfp_run_id": kfp_run_id} if kfp_run_id and "{{" not in kfp_run_id else {}
    parent = tracker.start_pipeline_run(run_id, tags={**tags, **runner_lock_tag()})
    StageRun(tracker, parent, "pipeline").log_config(params)  # params + config_sha256 on the parent run
    with tracker.stage("prepare", parent) as stage:
        config = split_config(benchmarks_dir, split_benchmark, stage2_size, stage2_data, seed)
        stage.log_config(config)
        folder = run_folder(workspace, run_id, "prepare")
        with timed(record):
            split = split_stage2_data(config, folder)
            model = resolve_base_model(base_model, folder)
        shutil.copyfile(split.train_path, stage2_out.path)
        stage2_out.metadata.update({"items": split.counts["stage2_items"], "sha256": file_sha256(split.train_path)})
        stage.log_metrics({**split.counts, **record})
        stage.log_dataset(split.train_path, "stage2-train", "training")
        stage.set_tags({"medssr.base_model": model})
    return {"parent_run_id": parent, "run_id": run_id, "base_model": model, "eval_benchmarks_dir": str(split.eval_dir)}


@end_process_fast_after_success
@resumable("synthesize")
def synthesize_step(
    n: int,
    rare_ratio: float,
    seed: int,
    options_per_item: int,
    seed_questions: str,
    benchmarks_dir: str,
    split_benchmark: str,
    stage2_size: int,
    stage2_data: str,
    decontaminate: bool,
    items,
    stats,
    shares,
    chart,
) -> None:
    """Synthesize the stage-1 questions. Parameters only (no run ids), so KFP can cache this step;
    its MLflow run is written by the next step from these artifacts."""
    record: dict[str, Any] = {}
    with timed(record, IMPORT_SECONDS):
        from medssr.pipelines.data import split_stage2_data
        from medssr.synthesis.config import SynthesisConfig
        from medssr.synthesis.run import run_synthesis

    with tempfile.TemporaryDirectory(prefix="medssr-synth-") as tmp:
        split = split_stage2_data(split_config(benchmarks_dir, split_benchmark, stage2_size, stage2_data, seed), tmp)
        config = SynthesisConfig(
            n=n,
            rare_ratio=rare_ratio,
            seed=seed,
            options_per_item=options_per_item,
            seed_questions=(seed_questions or str(split.train_path)) if rare_ratio < 1.0 else None,
            decontaminate_against=[str(split.eval_dir)] if decontaminate else [],
        )
        with timed(record):
            result = run_synthesis(config, Path(tmp) / "items.jsonl")
        shutil.copyfile(result.path, items.path)
        summary = {"config": json.loads(json.dumps(config.__dict__, default=str)), "stats": result.stats, **record}
        Path(stats.path).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        log_kfp_metrics(shares, {"achieved": result.stats.get("achieved", result.stats), **record})
        Path(chart.path).write_text(png_html("Synthesis: requested vs achieved shares", result.chart_path), encoding="utf-8")
        if result.chart_path.is_file():
            shutil.copyfile(result.chart_path, Path(stats.path).with_name("chart.png"))
    items.metadata.update({"items": sum(1 for _ in open(items.path, encoding="utf-8")), "sha256": file_sha256(items.path)})


def log_synthesis_run(tracker: Tracker, parent: str, items_path: str, stats_path: str) -> None:
    """The nested ``synthesize`` run, written from the (possibly cached) synthesis artifacts, once per parent
    (a resumed run that redoes pseudo-labelling has it already)."""
    from medssr.tracking import KIND_TAG, PARENT_TAG, STAGE_TAG

    query = (f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{KIND_TAG}` = 'stage' and tags.`{STAGE_TAG}` = 'synthesize' "
             "and attributes.status = 'FINISHED'")
    if tracker.call(tracker.client.search_runs, [tracker.experiment_id], filter_string=query, max_results=1):
        return
    summary = json.loads(Path(stats_path).read_text(encoding="utf-8"))
    with tracker.stage("synthesize", parent) as stage:
        stage.log_config(summary["config"])
        stage.log_metrics({"stats": summary["stats"], **{k: summary[k] for k in (COMPUTE_SECONDS, IMPORT_SECONDS) if k in summary}})
        stage.log_dataset(items_path, "synthetic", "training")
        stage.log_artifact(items_path, "data")
        stage.log_artifact(stats_path, "report")
        chart = Path(stats_path).with_name("chart.png")
        if chart.is_file():
            stage.log_artifact(chart, "report")


def generator_config(model: str, backend: str, device: str, batch_size: int):
    from medssr.generation.base import GeneratorConfig

    return GeneratorConfig(backend=backend, model=model, device=device, batch_size=batch_size, progress=True)


@end_process_fast_after_success
@resumable("pseudo_label")
def pseudo_label_step(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    base_model: str,
    items_path: str,
    synthesis_stats_path: str,
    n_samples: int,
    min_agreement: float,
    max_agreement: float,
    min_parsed: int,
    max_tokens: int,
    answer_letters: str,
    backend: str,
    device: str,
    batch_size: int,
    labeled,
    audit,
    metrics,
    recovery: bool = True,
) -> None:
    record: dict[str, Any] = {}
    with timed(record, IMPORT_SECONDS):
        from medssr.generation.base import SamplingParams
        from medssr.labeling import LABELING_SAMPLING, LabelingConfig, run_labeling

    tracker = tracker_for(tracking_uri, experiment)
    log_synthesis_run(tracker, parent_run_id, items_path, synthesis_stats_path)
    letters = tuple(answer_letters) if answer_letters else None
    sampling = SamplingParams(
        temperature=LABELING_SAMPLING.temperature,
        top_p=LABELING_SAMPLING.top_p,
        top_k=LABELING_SAMPLING.top_k,
        max_tokens=1 if letters else max_tokens,
        allowed_letters=letters,
    )
    with tracker.stage("pseudo_label", parent_run_id) as stage, tempfile.TemporaryDirectory(prefix="medssr-label-") as tmp:
        config = LabelingConfig(
            data=items_path,
            out=str(Path(tmp) / "labeled.jsonl"),
            generator=generator_config(base_model, backend, device, batch_size),
            n_samples=n_samples,
            sampling=sampling,
            min_agreement=min_agreement,
            max_agreement=max_agreement,
            min_parsed=min_parsed,
            recovery=recovery,
        )
        stage.log_config(config)
        with timed(record):
            result = run_labeling(config)
        report = result.audit
        values = {
            "yield": report["yield"],
            "items": report["items"],
            "kept": report["kept"],
            "voted": report["voted"],
            "parse_rate": result.parse_rate,
            "recovered_rate": result.recovered_rate,
            "rejected_records": result.rejected_records,
            "precision_voted": report["precision_voted"]["precision"],
            "precision_kept": report["precision_kept"]["precision"],
            **{f"dropped.{k}": v for k, v in report["dropped"].items()},
            **record,
        }
        for bucket in report["buckets"]:
            values[f"bucket_precision.{bucket['bucket']}"] = bucket["precision"]
        for source, section in report["by_source"].items():
            values.update({f"{source}.yield": section["yield"], f"{source}.precision_voted": section["precision_voted"]["precision"],
                           f"{source}.precision_kept": section["precision_kept"]["precision"]})
        stage.log_metrics(values)
        headline = {key: value for key, value in values.items() if not key.startswith(("bucket_precision.", "dropped."))}
        StageRun(tracker, parent_run_id, "pipeline").log_metrics({k: v for k, v in headline.items() if k not in record}, prefix="label.")
        log_kfp_metrics(metrics, values)
        stage.log_dataset(result.paths["labeled"], "pseudo-labeled", "training")
        for key in ("labeled", "json", "markdown", "png"):
            stage.log_artifact(result.paths[key], "data" if key == "labeled" else "audit")
        if not result.kept:
            raise RuntimeError(
                f"pseudo-label: kept 0 of {report['items']} synthesised questions (free-form parse rate {result.parse_rate:.2f}, "
                f"recovered {result.recovered_rate:.2f}, dropped {report['dropped']}), so stage 1 (train-self) has nothing "
                "to train on; raise synth_n or label_samples, widen min_agreement/max_agreement, lower min_parsed, "
                + ("or raise label_max_tokens" if recovery else "or turn label_recovery on")
            )
        shutil.copyfile(result.paths["labeled"], labeled.path)
        labeled.metadata.update({"items": len(result.kept), "sha256": file_sha256(labeled.path)})
        Path(audit.path).write_text(Path(result.paths["markdown"]).read_text(encoding="utf-8"), encoding="utf-8")


def train_defaults():
    """The training pods' resources and placement from ConfigMap medssr-config, when the step has it (else None)."""
    if os.environ.get("MEDSSR_TRAIN_GPUS") is None:
        return None
    from medssr.cluster import ClusterDefaults

    return ClusterDefaults.from_mapping(os.environ, source="step environment (medssr-config)").train


def launcher_config(launcher: str, namespace: str, work_dir: str):
    """The launcher backend and its cluster placement (from ConfigMap medssr-config when the step has it)."""
    from medssr.launch import LocalLauncherConfig, PyTorchJobLauncherConfig, TrainJobLauncherConfig

    if launcher == "local":
        return LocalLauncherConfig(work_dir=work_dir)
    placement: dict[str, Any] = {}
    if defaults := train_defaults():
        placement = {"node_selector": defaults.node_selector, "tolerations": defaults.tolerations}
    kinds = {"pytorchjob": PyTorchJobLauncherConfig, "trainjob": TrainJobLauncherConfig}
    if launcher not in kinds:
        raise ValueError(f"launcher: must be local, pytorchjob or trainjob, not {launcher!r}")
    return kinds[launcher](namespace=namespace or os.environ.get("MEDSSR_NAMESPACE", "default"), **placement)


@end_process_fast_after_success
@resumable("train-{stage}")
def train_step(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    run_id: str,
    workspace: str,
    stage: str,
    base_model: str,
    data_path: str,
    launcher: str,
    namespace: str,
    image: str,
    workspace_pvc: str,
    s3_secret: str,
    nproc_per_node: int,
    num_workers: int,
    gpus_per_node: int,
    max_steps: int,
    num_generations: int,
    batch_size: int,
    learning_rate: float,
    beta: float,
    max_completion_length: int,
    temperature: float,
    save_steps: int,
    seed: int,
    use_vllm: bool,
    vllm_tensor_parallel_size: int,
    vllm_gpu_memory_utilization: float,
    timeout_s: int,
    model,
    metrics,
) -> str:
    """Train one GRPO stage through the launcher; returns the trained model folder."""
    record: dict[str, Any] = {}
    with timed(record, IMPORT_SECONDS):
        from medssr.launch import JobSpec, SecretEnvVar, VolumeMount, run_training_job
        from medssr.training import TrainingConfig

    stage_name = f"train-{stage}"
    folder = run_folder(workspace, run_id, stage_name)
    data = folder / "data.jsonl"
    shutil.copyfile(data_path, data)
    out_dir = folder / "model"
    training = TrainingConfig(
        stage=stage,
        model=base_model,
        data=str(data),
        output_dir=str(out_dir),
        max_steps=max_steps,
        num_generations=num_generations,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        beta=beta,
        max_completion_length=max_completion_length,
        temperature=temperature,
        save_steps=save_steps,
        seed=seed,
        use_vllm=use_vllm,
        vllm_tensor_parallel_size=vllm_tensor_parallel_size,
        vllm_gpu_memory_utilization=vllm_gpu_memory_utilization,
    )
    training.validate_paths()
    volumes = []
    if workspace_pvc and launcher != "local":
        volumes = [VolumeMount(name="workspace", claim_name=workspace_pvc, mount_path=str(Path(workspace).resolve()))]
    secret_env = []
    if s3_secret and launcher != "local":
        secret_env = [SecretEnvVar(k, s3_secret, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    passthrough = ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE")
    # CPU and memory of each node's pod from the cluster settings (the GPUs are the pipeline's gpus_per_node).
    defaults = train_defaults() if launcher != "local" else None
    spec = JobSpec(
        run_id=run_id,
        stage=stage_name,
        training=json.loads(json.dumps(training.__dict__)),
        image=image,
        nproc_per_node=nproc_per_node,
        num_workers=num_workers,
        gpus_per_node=gpus_per_node,
        cpu=defaults.cpu if defaults else None,
        memory=defaults.memory if defaults else None,
        env={k: os.environ[k] for k in passthrough if k in os.environ},
        secret_env=secret_env,
        volumes=volumes,
    )
    tracker = tracker_for(tracking_uri, experiment)
    with tracker.stage(stage_name, parent_run_id, tags={"medssr.launcher": launcher}) as run:
        run.log_config(training)
        run.log_dataset(data, f"{stage_name}-data", "training")
        with timed(record):
            status = run_training_job(
                launcher_config(launcher, namespace, str(folder / "launch")), spec, timeout=timeout_s or None
            )
        trained = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
        history_path = out_dir / "log_history.jsonl"
        history = [json.loads(line) for line in history_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        run.log_history(history, step_key="step")
        run.log_metrics({"final": {k: v for k, v in trained.items() if k != "config"}, **record})
        run.log_artifact(history_path, "training")
        run.log_artifact(out_dir / "metrics.json", "training")
        run.set_tags({"medssr.job_state": status.state, "medssr.model_dir": str(out_dir)})
    log_kfp_metrics(metrics, {**trained, **record})
    model.metadata.update({"path": str(out_dir), "stage": stage, "base_model": base_model})
    Path(model.path).write_text(json.dumps({"path": str(out_dir), "stage": stage}) + "\n", encoding="utf-8")
    return str(out_dir)


@end_process_fast_after_success
@resumable("evaluate")
def evaluate_step(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    run_id: str,
    workspace: str,
    models: list[str],
    benchmarks_dir: str,
    benchmarks: str,
    limit: int,
    n: int,
    max_tokens: int,
    heldout_size: int,
    prompt_style: str,
    backend: str,
    device: str,
    batch_size: int,
    seed: int,
    results,
    report,
    chart,
    metrics,
) -> None:
    """Evaluate base, stage 1 and stage 2 side by side on the run's evaluation set."""
    import dataclasses

    record: dict[str, Any] = {}
    with timed(record, IMPORT_SECONDS):
        from medssr.evaluation.harness import EvaluationConfig, run_evaluation
        from medssr.evaluation.per_question import read_rows
        from medssr.evaluation.report import headline_metrics
        from medssr.generation.base import SamplingParams

    out = run_folder(workspace, run_id, "evaluate")
    config = EvaluationConfig(
        models=models,
        model_names=list(EVALUATED_NAMES),
        benchmarks_dir=benchmarks_dir,
        benchmarks=split_csv(benchmarks) or ["all"],
        limit=limit or None,
        n=n,
        sampling=dataclasses.replace(SamplingParams(), max_tokens=max_tokens),
        prompt_style=prompt_style,
        generator=generator_config("", backend, device, batch_size),
        out_dir=str(out),
        seed=seed,
        use_hub=False,
        heldout_size=heldout_size,
        on_error="skip",
    )
    tracker = tracker_for(tracking_uri, experiment)
    with tracker.stage("evaluate", parent_run_id) as stage:
        stage.log_config(config)
        with timed(record):
            result = run_evaluation(config)
        values = {k.replace("/", "."): v for k, v in result.metrics().items()}
        stage.log_metrics({**values, **record})
        stage.set_tags({f"skipped.{name}": reason[:500] for name, reason in result.skipped.items()})
        for key, path in result.paths.items():
            if not key.startswith("per_question/"):
                stage.log_artifact(path, "report")
        for label, path in result.report["per_question"].items():
            stage.log_table(read_rows(path), f"per_question/{label}.json")
        StageRun(tracker, parent_run_id, "pipeline").log_metrics(headline_metrics(result.report))
        log_kfp_metrics(metrics, {**values, **record})
    shutil.copyfile(result.paths["json"], results.path)
    markdown = Path(result.paths["markdown"]).read_text(encoding="utf-8")
    Path(report.path).write_text(markdown, encoding="utf-8")
    Path(chart.path).write_text(png_html("Evaluation: base vs stage 1 vs stage 2", result.paths.get("png"), markdown), encoding="utf-8")


def scores_from_results(results_path: str, model_name: str, metric: str) -> dict[str, float]:
    """``benchmark -> mean <metric> accuracy`` of one model in an evaluation results.json."""
    summary = json.loads(Path(results_path).read_text(encoding="utf-8"))["summary"]
    if model_name not in summary:
        raise ValueError(f"evaluation results have no model {model_name!r} (have: {', '.join(summary)})")
    return {bench: float(scores[metric]["mean"]) for bench, scores in summary[model_name].items()}


@end_process_fast_after_success
@resumable("register")
def register_step(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    run_id: str,
    model_name: str,
    model_dir: str,
    results_path: str,
    evaluated_name: str,
    gate_metric: str,
    data_paths: list[str],
    rare_benchmarks: str,
    margin: float,
    tolerance: float,
    registered,
    decision_report,
    baseline_name: str = "base",
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> bool:
    """Register the stage-2 folder as a new version (alias ``candidate``) tagged with its scores and
    provenance and carrying its and its base model's per-question results, then run the gate as a dry
    run; returns whether the candidate passed (the pipeline's ``dsl.If`` promotes on it)."""
    from medssr.promotion import RegisterConfig, run_register

    tracker = tracker_for(tracking_uri, experiment)
    parent = tracker.call(tracker.client.get_run, parent_run_id)
    data_hash = config_hash({Path(p).name: file_sha256(p) for p in data_paths})
    evaluation = json.loads(Path(results_path).read_text(encoding="utf-8"))
    per_question = evaluation.get("per_question", {})
    config = RegisterConfig(
        name=model_name,
        model_dir=model_dir,
        scores=scores_from_results(results_path, evaluated_name, gate_metric),
        tags={
            "medssr.run_id": run_id,
            "medssr.parent_run_id": parent_run_id,
            "data_sha256": data_hash,
            "config_sha256": parent.data.tags.get("config_sha256", ""),
            "eval_metric": gate_metric,
        },
        per_question=per_question.get(evaluated_name, ""),
        baseline_per_question=per_question.get(baseline_name, ""),
        protocol=evaluation.get("protocol", ""),
        parent_run_id=parent_run_id,
        tracking=TrackingConfig(tracking_uri=tracking_uri, experiment=experiment),
    )
    result = run_register(config)
    registered.metadata.update({"name": result.name, "version": result.version, "source": result.source, "path": model_dir})
    Path(registered.path).write_text(json.dumps(registered.metadata) + "\n", encoding="utf-8")
    StageRun(tracker, parent_run_id, "pipeline").set_tags(
        {"medssr.registered_model": result.name, "medssr.registered_version": result.version}
    )
    return decide_promotion(
        parent_run_id, tracking_uri, experiment, model_name, rare_benchmarks, margin, tolerance, True, decision_report,
        metric=gate_metric, level=level, resamples=resamples, seed=seed,
    )


def decide_promotion(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    rare_benchmarks: str,
    margin: float,
    tolerance: float,
    dry_run: bool,
    decision_report,
    metric: str = "lenient",
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> bool:
    """The gate (dry run) or the promotion itself; returns whether the candidate passed. The decision is
    also recorded on the pipeline's parent run (metrics ``gate.*``, tags ``medssr.gate*``)."""
    from medssr.promotion import PromotionConfig, run_promotion

    decision = run_promotion(
        PromotionConfig(
            name=model_name,
            rare_benchmarks=split_csv(rare_benchmarks),
            metric=metric,
            margin=margin,
            tolerance=tolerance,
            level=level,
            resamples=resamples,
            seed=seed,
            dry_run=dry_run,
            parent_run_id=parent_run_id,
            tracking=TrackingConfig(tracking_uri=tracking_uri, experiment=experiment),
        )
    )
    Path(decision_report.path).write_text(decision.table() + "\n", encoding="utf-8")
    parent = StageRun(tracker_for(tracking_uri, experiment), parent_run_id, "pipeline")
    parent.log_metrics({"gate.passed": decision.passed, "gate.promoted": decision.promoted})
    tags = {"medssr.gate": "pass" if decision.passed else "refuse", "medssr.gate_reason": decision.reason[:5000],
            "medssr.gate_reference": decision.reference}
    if decision.promoted:
        tags["medssr.champion_version"] = decision.candidate_version
    parent.set_tags(tags)
    parent.log_text(decision.table() + "\n", "gate/decision.md")
    return decision.passed


promote_step = end_process_fast_after_success(resumable("promote")(decide_promotion))


def pipeline_run_id(run_id: str, kfp_run_id: str) -> str:
    """The run id given, else KFP's own run id when the placeholder was resolved."""
    if run_id:
        return run_id
    return kfp_run_id if kfp_run_id and "{{" not in kfp_run_id else ""


@end_process_fast_after_success
def finish_step(run_id: str, kfp_run_id: str, tracking_uri: str, experiment: str, state: str, error: str) -> None:
    """Close the parent run with the pipeline's final state (the exit handler's task)."""
    from medssr.tracking import KIND_TAG, PIPELINE_RUN_TAG

    the_run = pipeline_run_id(run_id, kfp_run_id)
    if not the_run:
        print("finish: no run id to find the MLflow parent run by; nothing to close")
        return
    tracker = tracker_for(tracking_uri, experiment)
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{the_run}' and tags.`{KIND_TAG}` = 'pipeline'"
    found = tracker.call(tracker.client.search_runs, [tracker.experiment_id], filter_string=query, max_results=1)
    if not found:
        print(f"finish: no MLflow parent run for {the_run} (the run failed before it was opened)")
        return
    parent = found[0].info.run_id
    succeeded = state.upper() in ("SUCCEEDED", "SUCCESS")
    if not succeeded and error:
        tracker.call(tracker.client.set_tag, parent, "medssr.pipeline_error", error[:5000])
    tracker.finish_run(parent, "FINISHED" if succeeded else "FAILED")


@end_process_fast_after_success
@resumable("deploy")
def deploy_step(
    parent_run_id: str, tracking_uri: str, experiment: str, run_id: str, model_name: str, alias: str, namespace: str
) -> str:
    """Deploy ``models:/NAME@ALIAS`` as an InferenceService (resources and placement from medssr-config
    when the step has it); returns the endpoint URL."""
    from medssr.serving.deploy import DeployConfig, run_deploy

    placement: dict[str, Any] = {}
    if os.environ.get("MEDSSR_PREDICTOR_GPUS") is not None:
        from medssr.cluster import ClusterDefaults

        defaults = ClusterDefaults.from_mapping(os.environ, source="step environment (medssr-config)")
        predictor = defaults.predictor
        placement = {
            "gpus": predictor.gpus,
            "cpu": predictor.cpu,
            "memory": predictor.memory,
            "node_selector": predictor.node_selector,
            "tolerations": predictor.tolerations,
            "service_account": defaults.predictor_service_account,
        }
    config = DeployConfig(
        model=f"{model_name}@{alias}",
        namespace=namespace or os.environ.get("MEDSSR_NAMESPACE", "medssr"),
        tracking_uri=tracking_uri,
        run_id=run_id,
        **placement,
    )
    tracker = tracker_for(tracking_uri, experiment)
    with tracker.stage("deploy", parent_run_id) as stage:
        stage.log_config(config)
        result = run_deploy(config)
        stage.set_tags({"medssr.endpoint": result.url, "medssr.inference_service": f"{result.namespace}/{result.name}",
                        "medssr.storage_uri": result.storage_uri})
    return result.url
