"""Component: register the stage-2 model folder in MLflow (alias candidate) with scores and provenance tags."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

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
    registered: Output[Model],
) -> str:
    from medssr.components.steps import register_step

    return register_step(
        parent_run_id, tracking_uri, experiment, run_id, model_name, model_dir, results.path, evaluated_name,
        gate_metric, [stage1_data.path, stage2_data.path], registered,
    )
