"""The MedSSR pipeline: synthesize -> pseudo-label -> GRPO stage 1 -> stage 2 -> evaluate base/stage 1/stage 2
side by side -> register -> promote if the gate passes -> deploy if asked.

The same definition runs on a KFP cluster (compiled YAML, ``medssr pipeline submit``) and on a laptop
(``medssr pipeline run --local``, kfp.local subprocesses). Its parameters are the run's context and one
mapping per stage of ``medssr.stages`` (``synthesis``, ``labeling``, ...), whose defaults are the stage
config's own; cluster wiring (Secrets, ConfigMap keys, workspace PVC, GPUs and placement) comes from
``medssr.cluster.ClusterSettings``. No step is cached: each one records an MLflow run under this run's parent,
trains, or changes the registry.
"""


from kfp import dsl, kubernetes

from medssr.cluster import ClusterSettings
from medssr.components.deploy import deploy
from medssr.components.evaluate import evaluate
from medssr.components.finish import finish
from medssr.components.prepare import prepare
from medssr.components.promote import promote
from medssr.components.pseudo_label import pseudo_label
from medssr.components.register import register
from medssr.components.synthesize import synthesize
from medssr.components.train import train
from medssr.stages import STAGES

PIPELINE_NAME = "medssr"
GPU_STEPS = ("pseudo-label", "evaluate")
# ConfigMap keys every step reads (MLflow, S3 endpoint, namespace).
COMMON_CONFIG_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MEDSSR_NAMESPACE",
)
# Extra keys of the train and deploy steps: the training jobs' and predictor's placement (medssr.cluster.ClusterDefaults).
TRAIN_CONFIG_KEYS = (
    "MEDSSR_ARTIFACT_ROOT",
    "MEDSSR_S3_SECRET",
    "MEDSSR_WORKSPACE_PVC",
    "MEDSSR_PREDICTOR_SERVICE_ACCOUNT",
    "MEDSSR_DEVICE",
    "MEDSSR_GENERATION_BACKEND",
    "MEDSSR_TRAIN_WORKERS",
    *(f"MEDSSR_{kind}_{key}" for kind in ("TRAIN", "PREDICTOR") for key in ("GPUS", "CPU", "MEMORY", "NODE_SELECTOR", "TOLERATIONS")),
)


def apply_cluster_settings(task: dsl.PipelineTask, settings: ClusterSettings, *, gpu: bool = False, train_keys: bool = False):
    """Env from the ConfigMap and Secrets (names only), the workspace PVC, labels, and GPU placement."""
    keys = COMMON_CONFIG_KEYS + (TRAIN_CONFIG_KEYS if train_keys else ())
    kubernetes.use_config_map_as_env(task, settings.config_map, {k: k for k in keys}, optional=True)
    kubernetes.use_secret_as_env(task, settings.s3_secret, {k: k for k in settings.s3_secret_keys})
    if settings.mlflow_secret:
        kubernetes.use_secret_as_env(task, settings.mlflow_secret, {k: k for k in settings.mlflow_secret_keys}, optional=True)
    kubernetes.mount_pvc(task, pvc_name=settings.workspace_pvc, mount_path=settings.workspace_mount)
    for key, value in settings.pod_labels.items():
        kubernetes.add_pod_label(task, key, value)
    if gpu and settings.gpu_count > 0:
        task.set_accelerator_type(settings.gpu_accelerator).set_accelerator_limit(settings.gpu_count)
        for key, value in settings.gpu_node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for toleration in settings.gpu_tolerations:
            kubernetes.add_toleration(task, **toleration)
    return task


def build_pipeline(settings: ClusterSettings | None = None):
    """The pipeline function, wired to ``settings`` (compile-time cluster settings)."""
    settings = settings or ClusterSettings()
    # KFP parameter values cannot be null: a setting whose default is None is left out, and so takes that default.
    stage = {name: {k: v for k, v in STAGES[name].defaults().items() if v is not None} for name in STAGES}

    def wire(task, name, *, gpu=False, train_keys=False):
        task.set_display_name(name).set_caching_options(False)
        return apply_cluster_settings(task, settings, gpu=gpu, train_keys=train_keys)

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])
    def medssr_pipeline(
        run_id: str = "",
        experiment: str = "medssr",
        tracking_uri: str = "",
        workspace: str = settings.workspace_mount,
        pipeline_params: str = "",
        base_model: str = "Qwen/Qwen3-8B-Base",
        deploy_model: bool = False,
        split: dict = stage["split"],
        synthesis: dict = stage["synthesis"],
        labeling: dict = stage["labeling"],
        train_self: dict = stage["train_self"],
        train_supervised: dict = stage["train_supervised"],
        training_job: dict = stage["training_job"],
        evaluation: dict = stage["evaluation"],
        registration: dict = stage["registration"],
        promotion: dict = stage["promotion"],
        deployment: dict = stage["deployment"],
    ):
        closing = wire(
            finish(run_id=run_id, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, tracking_uri=tracking_uri, experiment=experiment),
            "finish",
        )
        with dsl.ExitHandler(closing, name="tracked-run"):
            prep = wire(
                prepare(run_id=run_id, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, workspace=workspace, tracking_uri=tracking_uri,
                        experiment=experiment, pipeline_params=pipeline_params, base_model=base_model, split=split),
                "prepare",
            )
            run = {"parent_run_id": prep.outputs["parent_run_id"], "tracking_uri": tracking_uri, "experiment": experiment,
                   "run_id": prep.outputs["run_id"], "workspace": workspace}
            synth = wire(
                synthesize(**run, stage2=prep.outputs["stage2"], eval_benchmarks_dir=prep.outputs["eval_benchmarks_dir"], synthesis=synthesis),
                "synthesize",
            )
            label = wire(
                pseudo_label(**run, base_model=prep.outputs["base_model"], items=synth.outputs["items"], labeling=labeling),
                "pseudo-label",
                gpu=True,
            )
            stage1 = wire(
                train(**run, stage="self", base_model=prep.outputs["base_model"], data=label.outputs["labeled"],
                      training=train_self, training_job=training_job),
                "train-stage1-self",
                train_keys=True,
            )
            stage2 = wire(
                train(**run, stage="supervised", base_model=stage1.outputs["Output"], data=prep.outputs["stage2"],
                      training=train_supervised, training_job=training_job),
                "train-stage2-supervised",
                train_keys=True,
            )
            evaluated = wire(
                evaluate(**run, base_model=prep.outputs["base_model"], stage1_model=stage1.outputs["Output"],
                         stage2_model=stage2.outputs["Output"], benchmarks_dir=prep.outputs["eval_benchmarks_dir"], evaluation=evaluation),
                "evaluate",
                gpu=True,
            )
            registered = wire(
                register(**run, model_dir=stage2.outputs["Output"], results=evaluated.outputs["results"],
                         stage1_data=label.outputs["labeled"], stage2_data=prep.outputs["stage2"],
                         registration=registration, promotion=promotion),
                "register-and-gate",
            )
            with dsl.If(registered.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - KFP condition
                promoted = wire(promote(**run, registration=registration, promotion=promotion), "promote")
                with dsl.If(deploy_model == True, name="deploy-asked"):  # noqa: E712 - KFP condition
                    wire(deploy(**run, registration=registration, deployment=deployment), "deploy", train_keys=True).after(promoted)

    return medssr_pipeline
