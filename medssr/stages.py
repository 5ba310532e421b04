"""The pipeline's stages: for each, its config class (the only declaration of its settings), the settings
the run wires in (inputs and outputs, not parameters), and its run function, which builds the config,
calls the stage library and returns what to record (:class:`StageRecord`).

The KFP step that runs a stage (``medssr.components.steps.run_stage``) is the same for all of them; the
CLI builds the same configs from the same settings (``medssr.configs``), so a field added to a config is
a pipeline parameter, a preset key and a command-line option at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medssr import configs

EVALUATED_NAMES = ("base", "stage1", "stage2")
CANDIDATE_NAME, BASELINE_NAME = "stage2", "base"  # the registered model and the reference of the gate


@dataclass
class TrainingJobConfig:
    """Where a GRPO stage runs: the launcher backend and the job's processes, resources and placement. Unset
    resources come from the cluster settings (ConfigMap medssr-config: ``cluster_config``, else the step's
    environment), else the fields' fallbacks."""

    launcher: Literal["local", "pytorchjob", "trainjob"] = field(
        default="local", metadata={"help": "local (torchrun subprocess), pytorchjob (kubeflow.org/v1) or trainjob (Trainer v2)."})
    namespace: str = field(default="", metadata={"help": "Namespace of the cluster job; empty: the cluster settings', else MEDSSR_NAMESPACE, "
                                                           "else the install's (medssr)."})
    image: str = field(default="", metadata={"help": "Container image of the cluster job (medssr installed); empty: the GPU image the "
                                                       "pipeline's generating steps run in (MEDSSR_GPU_IMAGE, else medssr.cluster's default)."})
    nproc_per_node: int = field(default=0, metadata={"help": "Training processes per node (torchrun); 0: the GPUs per node, at least 1."})
    num_workers: int | None = field(default=None, metadata={"help": "Nodes besides the first (PyTorchJob workers; TrainJob numNodes - 1); "
                                                                     "unset: the cluster settings' MEDSSR_TRAIN_WORKERS, else 0."})
    gpus_per_node: int | None = field(
        default=None,
        metadata={"help": "nvidia.com/gpu of each node's pod; unset: the cluster settings' MEDSSR_TRAIN_GPUS, else 0."},
    )
    cpu: str = field(default="", metadata={"help": "CPU request of each node's pod; empty: the cluster settings' MEDSSR_TRAIN_CPU."})
    memory: str = field(default="", metadata={"help": "Memory request and limit of each node's pod; empty: the cluster settings' MEDSSR_TRAIN_MEMORY."})
    shm_size: str = field(default="", metadata={"help": "Size limit of the memory-backed /dev/shm (GPU pods always get one); empty: no limit."})
    service_account: str = field(default="", metadata={"help": "Service account of the training pods; empty: the namespace's default."})
    pvcs: list[str] = field(default_factory=list, metadata={"help": "PersistentVolumeClaims mounted in every pod, as CLAIM:/PATH "
                                                                    "(a pipeline step also mounts the cluster settings' workspace PVC)."})
    cluster_config: str = field(default="", metadata={"help": "YAML with ConfigMap medssr-config (e.g. `kubectl kustomize manifests/overlays/gpu`) "
                                                              "or its data; empty: the MEDSSR_* environment, when set (a pipeline step's)."})
    kubeconfig: str = field(default="", metadata={"help": "kubeconfig file; empty: in-cluster service account, else ~/.kube/config."})
    context: str = field(default="", metadata={"help": "kubeconfig context; empty: the current one."})
    timeout_s: int = field(default=0, metadata={"help": "Seconds to wait for the job; 0: no limit."})

    def __post_init__(self):
        for name in ("nproc_per_node", "num_workers", "gpus_per_node", "timeout_s"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name}: must not be negative, got {getattr(self, name)}")
        self.claims()  # validates them

    def claims(self) -> list[tuple[str, str]]:
        """``pvcs`` as (claim, mount path) pairs."""
        pairs = []
        for item in self.pvcs:
            claim, _, mount_path = item.partition(":")
            if not claim or not mount_path.startswith("/"):
                raise ValueError(f"pvcs: {item!r} is not CLAIM:/MOUNT/PATH")
            pairs.append((claim, mount_path))
        return pairs


@dataclass
class StageContext:
    """What the run gives a stage: ids, folders, tracking, the open MLflow run, and its input paths."""

    run_id: str
    folder: Path  # this stage's folder in the run's workspace
    tracking: Any  # medssr.tracking.TrackingConfig
    parent_run_id: str
    stage_run: Any  # medssr.tracking.StageRun of this stage
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageRecord:
    """What a stage did, for the tracker and the step's outputs."""

    config: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)  # onto the pipeline's parent run
    artifacts: list[tuple[str, str]] = field(default_factory=list)  # (path, MLflow artifact folder)
    datasets: list[tuple[str, str, str]] = field(default_factory=list)  # (path, name, context)
    tables: dict[str, list] = field(default_factory=dict)  # MLflow table file -> rows
    tags: dict[str, str] = field(default_factory=dict)
    parent_tags: dict[str, str] = field(default_factory=dict)
    parent_texts: dict[str, str] = field(default_factory=dict)  # MLflow artifact file on the parent run -> text
    files: dict[str, str] = field(default_factory=dict)  # KFP output name -> file to copy there
    html: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)  # KFP output -> (title, png, markdown)
    value: Any = None  # the step's return value


@dataclass(frozen=True)
class Stage:
    name: str  # its pipeline parameter, its preset section and its `--param NAME.FIELD` prefix
    config_path: str  # "module:Class", imported when used: a step's process loads only its own stage's libraries
    help: str
    run: Callable[[dict, StageContext], StageRecord] | None = None
    tracked_as: str | None = None  # its nested MLflow run; None: the stage library records its own
    wired: tuple[str, ...] = ()  # fields the run sets (a nested config's name covers all its settings)
    prefixes: Mapping[str, str] = field(default_factory=dict)

    @property
    def config(self) -> type:
        import importlib

        module, _, name = self.config_path.partition(":")
        return getattr(importlib.import_module(module), name)

    def settings(self) -> list[configs.Setting]:
        return [s for s in configs.settings_of(self.config, self.prefixes) if s.name not in self.wired and s.path[0] not in self.wired]

    def defaults(self) -> dict[str, Any]:
        return {s.name: configs.plain(None if s.default is dataclasses.MISSING else s.default) for s in self.settings()}

    def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` typed by their fields; an unknown setting or a bad value is named."""
        settings = {s.name: s for s in self.settings()}
        unknown = sorted(set(values) - set(settings))
        if unknown:
            raise ValueError(f"{self.name}: unknown setting(s) {', '.join(unknown)} (see `medssr pipeline params`)")
        return {name: configs.coerce(value, settings[name].annotation, f"{self.name}.{name}") for name, value in values.items()}

    def build(self, values: Mapping[str, Any], **wired: Any) -> Any:
        """The config from parameter values and the run's wiring (flat setting names)."""
        self.check(values)
        return configs.build(self.config, {**values, **wired}, self.prefixes, what=self.name)


# ------------------------------------------------------------------------------------------ run functions


def _prepare(values: dict, ctx: StageContext) -> StageRecord:
    """Split stage-2 data off the evaluation set; resolve the base model for every later step."""
    from medssr import models
    from medssr.split import split_stage2_data

    config = STAGES["split"].build(values)
    split = split_stage2_data(config, ctx.folder)
    # Where it is, not fetched: a training job's own pods load it from there.
    model = models.model_location(ctx.inputs["base_model"], build_dir=ctx.folder)
    return StageRecord(
        config, metrics=split.counts, datasets=[(str(split.train_path), "stage2-train", "training")],
        tags={"medssr.base_model": model}, files={"stage2": str(split.train_path)},
        value={"base_model": model, "eval_benchmarks_dir": str(split.eval_dir)},
    )


def synthesis_config(values: Mapping[str, Any], stage2: str, eval_dir: str):
    """Synthesis's config in a run: the seed pool is the run's stage-2 questions unless one is given; the run's
    evaluation set is always among the decontamination targets (no evaluated question may leak into training data)."""
    return STAGES["synthesis"].build(
        values,
        seed_questions=values.get("seed_questions") or stage2,
        decontaminate_against=[*values.get("decontaminate_against", []), eval_dir],
    )


def _synthesize(values: dict, ctx: StageContext) -> StageRecord:
    from medssr.synthesis.run import run_synthesis

    stage2 = ctx.folder / "stage2.jsonl"  # a KFP artifact's file has no suffix, and seed files are read by theirs
    shutil.copyfile(ctx.inputs["stage2"], stage2)
    config = synthesis_config(values, str(stage2), ctx.inputs["eval_benchmarks_dir"])
    result = run_synthesis(config, ctx.folder / "items.jsonl")
    summary = ctx.folder / "stats.json"
    summary.write_text(json.dumps({"config": configs.plain(json.loads(json.dumps(dataclasses.asdict(config), default=str))),
                                   "stats": result.stats}, indent=2, default=str), encoding="utf-8")
    artifacts = [(str(result.path), "data"), (str(summary), "report")]
    if result.chart_path.is_file():
        artifacts.append((str(result.chart_path), "report"))
    return StageRecord(
        config, metrics={"stats": result.stats}, artifacts=artifacts, datasets=[(str(result.path), "synthetic", "training")],
        files={"items": str(result.path), "stats": str(summary)},
        html={"chart": ("Synthesis: requested vs achieved shares", str(result.chart_path), "")},
    )


def _label(values: dict, ctx: StageContext) -> StageRecord:
    from medssr.labeling import run_labeling

    config = STAGES["labeling"].build(values, data=ctx.inputs["items"], out=str(ctx.folder / "labeled.jsonl"), model=ctx.inputs["base_model"])
    result = require_labels(run_labeling(config), config)
    metrics = result.metrics()
    return StageRecord(
        config, metrics=metrics,
        headline={f"label.{k}": v for k, v in metrics.items() if not k.startswith(("bucket_precision.", "dropped."))},
        artifacts=[(result.paths[key], "data" if key == "labeled" else "audit") for key in ("labeled", "json", "markdown", "png")],
        datasets=[(result.paths["labeled"], "pseudo-labeled", "training")],
        files={"labeled": result.paths["labeled"], "audit": result.paths["markdown"]},
    )


def require_labels(result, config):
    """``result``, unless labelling kept no question: then stage 1 would have nothing to train on, and the
    settings that decide it are named."""
    if not result.kept:
        report = result.audit
        raise RuntimeError(
            f"pseudo-label: kept 0 of {report['items']} synthesised questions (free-form parse rate {result.parse_rate:.2f}, "
            f"recovered {result.recovered_rate:.2f}, dropped {report['dropped']}), so stage 1 (train-self) has nothing "
            "to train on; raise synthesis.n or labeling.n_samples, widen labeling.min_agreement/max_agreement, lower "
            "labeling.min_parsed, " + ("or raise labeling.max_tokens" if config.recovery else "or turn labeling.recovery on")
        )
    return result


def _train(stage: str) -> Callable[[dict, StageContext], StageRecord]:
    def train(values: dict, ctx: StageContext) -> StageRecord:
        """One GRPO stage through the launcher the ``training_job`` settings pick."""
        from medssr.launch import run_training_job
        from medssr.training.signal import tracking_fields

        data = ctx.folder / "data.jsonl"
        shutil.copyfile(ctx.inputs["data"], data)
        out_dir = ctx.folder / "model"
        config = STAGES[f"train_{stage}"].build(values, stage=stage, model=ctx.inputs["model"], data=str(data), output_dir=str(out_dir))
        config.validate_paths()
        job = STAGES["training_job"].build(ctx.inputs["training_job"])
        launcher, spec = training_job(job, config, ctx.run_id, f"train-{stage}", ctx.folder, ctx.inputs["workspace"])
        status = run_training_job(launcher, spec, timeout=job.timeout_s or None)
        trained = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
        pointer = ctx.folder / "model.json"
        pointer.write_text(json.dumps({"path": str(out_dir), "stage": stage}) + "\n", encoding="utf-8")
        history = out_dir / "log_history.jsonl"
        ctx.stage_run.log_history([json.loads(line) for line in history.read_text(encoding="utf-8").splitlines() if line.strip()], step_key="step")
        # A stage that learned nothing is flagged on its own run and the parent's, where the summary reads it.
        signal, signal_tags, flags = tracking_fields(trained.get("learning_signal"), f"train-{stage}")
        return StageRecord(
            config, metrics={"final": {k: v for k, v in trained.items() if k != "config"}}, headline=signal,
            artifacts=[(str(history), "training"), (str(out_dir / "metrics.json"), "training")],
            datasets=[(str(data), f"train-{stage}-data", "training")],
            tags={"medssr.launcher": job.launcher, "medssr.job_state": status.state, "medssr.model_dir": str(out_dir), **signal_tags},
            parent_tags=flags, files={"model": str(pointer)}, value=str(out_dir),
        )

    return train


def cluster_defaults(path: str = ""):
    """ClusterDefaults from ``path`` (a YAML file with ConfigMap medssr-config among its documents, or the
    ConfigMap's data mapping), else from the environment when it carries them (a step's envFrom), else None."""
    from medssr.cluster import ClusterDefaults, ClusterSettings

    if path:
        import yaml

        from medssr.errors import UserError, user_input

        with user_input():
            documents = [doc for doc in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if doc]
        name = ClusterSettings.config_map
        config_maps = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "ConfigMap"
                       and doc.get("metadata", {}).get("name") == name]
        data = config_maps[0].get("data") if config_maps else documents[0] if len(documents) == 1 else None
        if not isinstance(data, dict):
            raise UserError(f"{path}: no ConfigMap {name} and not a single mapping of its settings")
        return ClusterDefaults.from_mapping(data, source=path)
    if os.environ.get("MEDSSR_TRAIN_GPUS") is None:
        return None
    return ClusterDefaults.from_mapping(os.environ, source=f"environment ({ClusterSettings.config_map})")


def training_job(job: TrainingJobConfig, training, run_id: str, stage: str, folder: Path, workspace: str = ""):
    """(launcher config, JobSpec) of one GRPO stage, for the pipeline's train steps and ``medssr train``:
    resources and placement the job leaves unset from the cluster settings; in a step (settings from its
    environment) also the workspace PVC mounted where the step sees ``workspace``, the S3 keys from their
    Secret and the step's S3 endpoint and hub settings. Without cluster settings a GPU job goes where
    ``ClusterSettings`` puts GPU pods."""
    from medssr.cluster import NAMESPACE, ClusterSettings, gpu_image
    from medssr.launch import JobSpec, SecretEnvVar, VolumeMount, launcher_config_from_dict

    defaults = cluster_defaults(job.cluster_config) if job.launcher != "local" else None
    train = defaults.train if defaults else None
    gpus = job.gpus_per_node if job.gpus_per_node is not None else (train.gpus if train else 0)
    resources = {
        "nproc_per_node": job.nproc_per_node or max(1, gpus),
        "num_workers": job.num_workers if job.num_workers is not None else (defaults.train_workers if defaults else 0),
        "gpus_per_node": gpus,
    }
    fields = {"run_id": run_id, "stage": stage, "training": configs.plain(dataclasses.asdict(training)), **resources}
    if job.launcher == "local":
        return launcher_config_from_dict({"backend": "local", "work_dir": str(folder / "launch")}), JobSpec(**fields)
    settings = ClusterSettings()
    node_selector, tolerations = (train.node_selector, train.tolerations) if train else settings.gpu_placement(gpus)
    launcher = launcher_config_from_dict({
        "backend": job.launcher,
        "namespace": job.namespace or (defaults.namespace if defaults else os.environ.get("MEDSSR_NAMESPACE", NAMESPACE)),
        "kubeconfig": job.kubeconfig or None,
        "context": job.context or None,
        "service_account_name": job.service_account or None,
        "node_selector": dict(node_selector),
        "tolerations": list(tolerations),
    })
    volumes, secret_env, env = [], [], {}
    in_step = defaults is not None and not job.cluster_config
    if in_step and defaults.workspace_pvc and workspace:
        volumes.append(VolumeMount(name="workspace", claim_name=defaults.workspace_pvc, mount_path=str(Path(workspace).resolve())))
    for index, (claim, mount_path) in enumerate(job.claims()):
        volumes.append(VolumeMount(name=f"pvc-{index}", claim_name=claim, mount_path=mount_path))
    if defaults and defaults.s3_secret:
        secret_env = [SecretEnvVar(k, defaults.s3_secret, k) for k in settings.s3_secret_keys]
    if in_step:  # a laptop's endpoints mean nothing in a pod; a step's are the cluster's
        passthrough = ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE")
        env = {k: os.environ[k] for k in passthrough if k in os.environ}
    spec = JobSpec(
        **fields, image=job.image or gpu_image(), cpu=job.cpu or (train.cpu if train else None), memory=job.memory or (train.memory if train else None),
        shm_size=job.shm_size or None, env=env, secret_env=secret_env, volumes=volumes,
    )
    return launcher, spec


def _evaluate(values: dict, ctx: StageContext) -> StageRecord:
    """Base, stage 1 and stage 2 side by side on the run's evaluation set."""
    from medssr.evaluation.harness import run_evaluation
    from medssr.evaluation.per_question import read_rows
    from medssr.evaluation.report import headline_metrics

    config = STAGES["evaluation"].build(
        values, models=list(ctx.inputs["models"]), model_names=list(EVALUATED_NAMES),
        benchmarks_dir=ctx.inputs["benchmarks_dir"], out_dir=str(ctx.folder),
    )
    result = run_evaluation(config)
    markdown = Path(result.paths["markdown"]).read_text(encoding="utf-8")
    return StageRecord(
        config, metrics={k.replace("/", "."): v for k, v in result.metrics().items()}, headline=headline_metrics(result.report),
        artifacts=[(path, "report") for key, path in result.paths.items() if not key.startswith("per_question/")],
        tables={f"per_question/{label}.json": read_rows(path) for label, path in result.report["per_question"].items()},
        tags={f"skipped.{name}": reason[:500] for name, reason in result.skipped.items()},
        files={"results": result.paths["json"], "report": result.paths["markdown"]},
        html={"chart": ("Evaluation: base vs stage 1 vs stage 2", result.paths.get("png"), markdown)},
    )


def _register(values: dict, ctx: StageContext) -> StageRecord:
    """Register the stage-2 folder (alias candidate) with its scores, provenance and per-question results,
    then run the gate as a dry run; the step returns whether the candidate passed."""
    from medssr.promotion import run_register
    from medssr.hashing import config_hash, file_sha256

    evaluation = json.loads(Path(ctx.inputs["results"]).read_text(encoding="utf-8"))
    gate = STAGES["promotion"].build(ctx.inputs["promotion"], name=STAGES["registration"].build(values).name)
    summary = evaluation["summary"]
    if CANDIDATE_NAME not in summary:
        raise ValueError(f"evaluation results have no model {CANDIDATE_NAME!r} (have: {', '.join(summary)})")
    parent = ctx.stage_run.tracker.call(ctx.stage_run.client.get_run, ctx.parent_run_id)
    per_question = evaluation.get("per_question", {})
    config = STAGES["registration"].build(
        values, model_dir=ctx.inputs["model_dir"], protocol=evaluation.get("protocol", ""), parent_run_id=ctx.parent_run_id,
        scores={bench: float(scores[gate.metric]["mean"]) for bench, scores in summary[CANDIDATE_NAME].items()},
        tags={"medssr.run_id": ctx.run_id, "medssr.parent_run_id": ctx.parent_run_id, "eval_metric": gate.metric,
              "data_sha256": config_hash({Path(p).name: file_sha256(p) for p in ctx.inputs["data"]}),
              "config_sha256": parent.data.tags.get("config_sha256", "")},
        per_question=per_question.get(CANDIDATE_NAME, ""), baseline_per_question=per_question.get(BASELINE_NAME, ""),
        **_tracking_settings(ctx.tracking),
    )
    result = run_register(config, ctx.stage_run)
    registered = ctx.folder / "registered.json"
    registered.write_text(json.dumps({"name": result.name, "version": result.version, "source": result.source, "path": config.model_dir}) + "\n")
    return StageRecord(
        config, parent_tags={"medssr.registered_model": result.name, "medssr.registered_version": result.version},
        files={"registered": str(registered)},
    )


def _gate(values: dict, ctx: StageContext) -> StageRecord:
    """The promotion gate (a dry run after registration, for real after it passed); the decision also goes onto
    the parent run (metrics ``gate.*``, tags ``medssr.gate*``, ``gate/decision.md``). The step returns whether it passed."""
    from medssr.promotion import run_promotion

    config = STAGES["promotion"].build(values, name=ctx.inputs["name"], dry_run=ctx.inputs["dry_run"],
                                       parent_run_id=ctx.parent_run_id, **_evaluation_bootstrap(ctx), **_tracking_settings(ctx.tracking))
    decision = run_promotion(config)
    table = ctx.folder / "decision.md"
    table.write_text(decision.table() + "\n", encoding="utf-8")
    tags = {"medssr.gate": "pass" if decision.passed else "refuse", "medssr.gate_reason": decision.reason[:5000],
            "medssr.gate_reference": decision.reference}
    if decision.promoted:
        tags["medssr.champion_version"] = decision.candidate_version
    detectable = {f"gate.detectable.{row.benchmark}": row.detectable for row in decision.rows if row.detectable is not None}
    return StageRecord(
        config, headline={"gate.passed": decision.passed, "gate.promoted": decision.promoted, "gate.resamples": config.resamples, **detectable},
        parent_tags=tags,
        parent_texts={"gate/decision.md": decision.table() + "\n"}, files={"decision": str(table)}, value=decision.passed,
    )


def _evaluation_bootstrap(ctx: StageContext) -> dict[str, int]:
    """The gate's bootstrap resamples and seed: the run's evaluation settings (on its parent run), so the intervals
    the summary prints and the ones the gate decides by are computed alike; one setting, evaluation.bootstrap_samples."""
    from medssr.tracking import Tracker

    defaults, params = STAGES["evaluation"].defaults(), {}
    if ctx.parent_run_id:
        tracker = Tracker(ctx.tracking)
        params = tracker.call(tracker.client.get_run, ctx.parent_run_id).data.params
    return {"resamples": int(params.get("evaluation.bootstrap_samples", defaults["bootstrap_samples"])),
            "seed": int(params.get("evaluation.seed", defaults["seed"]))}


def _deploy(values: dict, ctx: StageContext) -> StageRecord:
    """``models:/NAME@champion`` as an InferenceService; resources and placement from medssr-config when the step
    has it. The step returns the endpoint URL."""
    from medssr.deploy import run_deploy

    config = STAGES["deployment"].build(values, model=f"{ctx.inputs['name']}@champion", tracking_uri=ctx.tracking.tracking_uri, run_id=ctx.run_id)
    if defaults := cluster_defaults():
        config = config.with_cluster_defaults(defaults)
    result = run_deploy(config)
    return StageRecord(config, tags={"medssr.endpoint": result.url, "medssr.inference_service": f"{result.namespace}/{result.name}",
                                     "medssr.storage_uri": result.storage_uri}, value=result.url)


def _tracking_settings(tracking) -> dict[str, Any]:
    """A TrackingConfig as the flat settings of a config that nests one (``tracking``)."""
    return configs.flat_values(tracking)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("split", "medssr.split:SplitConfig",
              "stage-2 data split off one benchmark (step `prepare`, which also resolves the base model)", _prepare, "prepare"),
        Stage("synthesis", "medssr.synthesis.config:SynthesisConfig",
              "knowledge-grounded question synthesis", _synthesize, "synthesize", prefixes={"generator": "rewrite_", "rewrite_sampling": "rewrite_"}),
        Stage("labeling", "medssr.labeling:LabelingConfig",
              "self-consistency pseudo-labels", _label, "pseudo_label", wired=("data", "out", "model")),
        Stage("train_self", "medssr.training.config:TrainingConfig",
              "GRPO stage 1, reward = pseudo-label", _train("self"), "train-self", wired=("stage", "model", "data", "output_dir")),
        Stage("train_supervised", "medssr.training.config:TrainingConfig",
              "GRPO stage 2, reward = gold answer", _train("supervised"), "train-supervised", wired=("stage", "model", "data", "output_dir")),
        Stage("training_job", "medssr.stages:TrainingJobConfig", "where both GRPO stages run"),
        Stage("evaluation", "medssr.evaluation.harness:EvaluationConfig",
              "base vs stage 1 vs stage 2 on the benchmarks", _evaluate, "evaluate", wired=("models", "model_names", "benchmarks_dir", "out_dir", "model")),
        Stage("registration", "medssr.promotion:RegisterConfig",
              "registry version of the stage-2 model", _register, "register",
              wired=("model_dir", "scores", "tags", "per_question", "baseline_per_question", "protocol", "parent_run_id", "tracking")),
        Stage("promotion", "medssr.promotion:PromotionConfig",
              "the gate, candidate vs champion", _gate, wired=("name", "dry_run", "parent_run_id", "tracking", "resamples", "seed")),
        Stage("deployment", "medssr.deploy:DeployConfig",
              "KServe InferenceService of the champion (when the run asks for it)", _deploy, "deploy", wired=("model", "tracking_uri", "run_id")),
    )
}
