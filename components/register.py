"""Component: register the stage-2 model folder in MLflow (alias candidate) with scores and provenance tags,
then run the promotion gate as a dry run; returns whether it passed (the pipeline promotes on it)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    run_id: str,
    model_name: str,
    model_dir: str,
    results: Input[Artifact],
    evaluated_name: str,
    gate_metric: str,
    stage1_data: Input[Dataset],
    stage2_data: Input[Dataset],
    rare_benchmarks: str,
    margin: float,
    tolerance: float,
    gate_level: float,
    gate_resamples: int,
    seed: int,
    registered: Output[Model],
    decision: Output[Markdown],
) -> bool:
    from medssr.components.steps import register_step

    return register_step(
        parent_run_id, tracking_uri, experiment, run_id, model_name, model_dir, results.path, evaluated_name,
        gate_metric, [stage1_data.path, stage2_data.path], rare_benchmarks, margin, tolerance, registered, decision,
        level=gate_level, resamples=gate_resamples, seed=seed,
    )
