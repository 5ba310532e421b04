"""The MedSSR pipeline: synthesize -> pseudo-label -> GRPO stage 1 -> stage 2 -> evaluate base/stage 1/stage 2
side by side -> register -> promote if the gate passes -> deploy if asked.

The same definition runs on a KFP cluster (compiled YAML, ``medssr pipeline submit``) and on a laptop
(``medssr pipeline run --local``, kfp.local subprocesses). Every knob is a pipeline parameter; cluster
wiring (Secrets, ConfigMap keys, workspace PVC, GPUs and placement) comes from ``ClusterSettings``.
Synthesis is the only cached step: it takes parameters only, so equal settings reuse its output; the
other steps create MLflow runs, train, or change the registry and always run.
"""


from kfp import dsl, kubernetes

from medssr.components.deploy import deploy
from medssr.components.evaluate import evaluate
from medssr.components.finish import finish
from medssr.components.image import GPU_IMAGE
from medssr.components.prepare import prepare
from medssr.components.promote import promote
from medssr.components.pseudo_label import pseudo_label
from medssr.components.register import register
from medssr.components.synthesize import synthesize
from medssr.components.train import train
from medssr.pipelines.settings import COMMON_CONFIG_KEYS, TRAIN_CONFIG_KEYS, ClusterSettings

PIPELINE_NAME = "medssr"
GPU_STEPS = ("pseudo-label", "evaluate")


def apply_cluster_settings(task: dsl.PipelineTask, settings: "ClusterSettings", *, gpu: bool = False, train_keys: bool = False):
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


def build_pipeline(settings: "ClusterSettings | None" = None):
    """The pipeline function, wired to ``settings`` (compile-time cluster settings)."""
    settings = settings or ClusterSettings()

    def wire(task, name, *, cache=False, gpu=False, train_keys=False):
        task.set_display_name(name).set_caching_options(cache)
        return apply_cluster_settings(task, settings, gpu=gpu, train_keys=train_keys)

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])
    def medssr_pipeline(
        # run and tracking
        run_id: str = "",
        experiment: str = "medssr",
        tracking_uri: str = "",
        workspace: str = settings.workspace_mount,
        pipeline_params: str = "",
        seed: int = 0,
        # data
        base_model: str = "Qwen/Qwen3-8B-Base",
        benchmarks_dir: str = "/workspace/benchmarks/medssr-eval",
        split_benchmark: str = "medqa",
        stage2_size: int = 400,
        stage2_data: str = "",
        # synthesis
        synth_n: int = 2000,
        rare_ratio: float = 0.5,
        options_per_item: int = 5,
        seed_questions: str = "",
        decontaminate: bool = True,
        # pseudo-labels
        label_samples: int = 8,
        min_agreement: float = 0.5,
        max_agreement: float = 0.9,
        min_parsed: int = 4,
        label_max_tokens: int = 1024,
        answer_letters: str = "",
        label_recovery: bool = True,
        generation_backend: str = "vllm",
        device: str = "auto",
        generation_batch_size: int = 64,
        # training (both stages)
        launcher: str = "pytorchjob",
        namespace: str = "",
        train_image: str = GPU_IMAGE,
        nproc_per_node: int = 8,
        num_workers: int = 1,
        gpus_per_node: int = 8,
        stage1_max_steps: int = 200,
        stage2_max_steps: int = 200,
        num_generations: int = 8,
        train_batch_size: int = 8,
        learning_rate: float = 1e-6,
        beta: float = 0.0,
        max_completion_length: int = 1024,
        train_temperature: float = 1.0,
        save_steps: int = 50,
        use_vllm: bool = True,
        # vLLM colocated in the training processes (TRL's names): GPUs per engine, and its share of each GPU.
        vllm_tensor_parallel_size: int = 1,
        vllm_gpu_memory_utilization: float = 0.3,
        train_timeout_s: int = 0,
        # evaluation
        eval_benchmarks: str = "all",
        eval_limit: int = 0,
        eval_samples: int = 4,
        eval_max_tokens: int = 2048,
        heldout_size: int = 200,
        prompt_style: str = "chat",
        # registry, promotion, deployment
        model_name: str = "medssr",
        gate_metric: str = "lenient",
        rare_benchmarks: str = "raredis_heldout,raredis_sub",
        margin: float = 0.01,
        tolerance: float = 0.02,
        gate_level: float = 0.95,
        gate_resamples: int = 2000,
        deploy_model: bool = False,
        serving_namespace: str = "",
    ):
        closing = wire(
            finish(run_id=run_id, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, tracking_uri=tracking_uri, experiment=experiment),
            "finish",
        )
        with dsl.ExitHandler(closing, name="tracked-run"):
            prep = wire(
                prepare(
                    run_id=run_id,
                    kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    workspace=workspace,
                    tracking_uri=tracking_uri,
                    experiment=experiment,
                    base_model=base_model,
                    benchmarks_dir=benchmarks_dir,
                    split_benchmark=split_benchmark,
                    stage2_size=stage2_size,
                    stage2_data=stage2_data,
                    seed=seed,
                    pipeline_params=pipeline_params,
                ),
                "prepare",
            )
            parent = prep.outputs["parent_run_id"]
            the_run = prep.outputs["run_id"]
            tracking = {"parent_run_id": parent, "tracking_uri": tracking_uri, "experiment": experiment}
            synth = wire(
                synthesize(
                    n=synth_n,
                    rare_ratio=rare_ratio,
                    seed=seed,
                    options_per_item=options_per_item,
                    seed_questions=seed_questions,
                    benchmarks_dir=benchmarks_dir,
                    split_benchmark=split_benchmark,
                    stage2_size=stage2_size,
                    stage2_data=stage2_data,
                    decontaminate=decontaminate,
                ),
                "synthesize",
                cache=True,
            )
            label = wire(
                pseudo_label(
                    **tracking,
                    base_model=prep.outputs["base_model"],
                    items=synth.outputs["items"],
                    synthesis_stats=synth.outputs["stats"],
                    n_samples=label_samples,
                    min_agreement=min_agreement,
                    max_agreement=max_agreement,
                    min_parsed=min_parsed,
                    max_tokens=label_max_tokens,
                    answer_letters=answer_letters,
                    backend=generation_backend,
                    device=device,
                    batch_size=generation_batch_size,
                    recovery=label_recovery,
                ),
                "pseudo-label",
                gpu=True,
            )
            training = dict(
                **tracking,
                run_id=the_run,
                workspace=workspace,
                launcher=launcher,
                namespace=namespace,
                image=train_image,
                workspace_pvc=settings.workspace_pvc,
                s3_secret=settings.s3_secret,
                nproc_per_node=nproc_per_node,
                num_workers=num_workers,
                gpus_per_node=gpus_per_node,
                num_generations=num_generations,
                batch_size=train_batch_size,
                learning_rate=learning_rate,
                beta=beta,
                max_completion_length=max_completion_length,
                temperature=train_temperature,
                save_steps=save_steps,
                seed=seed,
                use_vllm=use_vllm,
                vllm_tensor_parallel_size=vllm_tensor_parallel_size,
                vllm_gpu_memory_utilization=vllm_gpu_memory_utilization,
                timeout_s=train_timeout_s,
            )
            stage1 = wire(
                train(**training, stage="self", base_model=prep.outputs["base_model"], data=label.outputs["labeled"],
                      max_steps=stage1_max_steps),
                "train-stage1-self",
                train_keys=True,
            )
            stage2 = wire(
                train(**training, stage="supervised", base_model=stage1.outputs["Output"], data=prep.outputs["stage2"],
                      max_steps=stage2_max_steps),
                "train-stage2-supervised",
                train_keys=True,
            )
            evaluation = wire(
                evaluate(
                    **tracking,
                    run_id=the_run,
                    workspace=workspace,
                    base_model=prep.outputs["base_model"],
                    stage1_model=stage1.outputs["Output"],
                    stage2_model=stage2.outputs["Output"],
                    benchmarks_dir=prep.outputs["eval_benchmarks_dir"],
                    benchmarks=eval_benchmarks,
                    limit=eval_limit,
                    n=eval_samples,
                    max_tokens=eval_max_tokens,
                    heldout_size=heldout_size,
                    prompt_style=prompt_style,
                    backend=generation_backend,
                    device=device,
                    batch_size=generation_batch_size,
                    seed=seed,
                ),
                "evaluate",
                gpu=True,
            )
            registered = wire(
                register(
                    **tracking,
                    run_id=the_run,
                    model_name=model_name,
                    model_dir=stage2.outputs["Output"],
                    results=evaluation.outputs["results"],
                    evaluated_name="stage2",
                    gate_metric=gate_metric,
                    stage1_data=label.outputs["labeled"],
                    stage2_data=prep.outputs["stage2"],
                    rare_benchmarks=rare_benchmarks,
                    margin=margin,
                    tolerance=tolerance,
                    gate_level=gate_level,
                    gate_resamples=gate_resamples,
                    seed=seed,
                ),
                "register-and-gate",
            )
            with dsl.If(registered.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - KFP condition
                promoted = wire(
                    promote(**tracking, model_name=model_name, rare_benchmarks=rare_benchmarks, margin=margin,
                            tolerance=tolerance, gate_metric=gate_metric, gate_level=gate_level,
                            gate_resamples=gate_resamples, seed=seed, dry_run=False),
                    "promote",
                )
                with dsl.If(deploy_model == True, name="deploy-asked"):  # noqa: E712 - KFP condition
                    wire(
                        deploy(**tracking, run_id=the_run, model_name=model_name, alias="champion", namespace=serving_namespace),
                        "deploy",
                        train_keys=True,
                    ).after(promoted)

    return medssr_pipeline
