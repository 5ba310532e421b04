"""Component: one GRPO stage through a launcher (local torchrun, PyTorchJob or TrainJob); returns the model folder."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from medssr.components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    parent_run_id: str, tracking_uri: str, experiment: str, run_id: str, workspace: str,
    stage: str, base_model: str, data: Input[Dataset], training: dict, training_job: dict,
    model: Output[Model], metrics: Output[Metrics],
) -> str:
    from medssr.components.steps import run_stage

    run = {"parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "experiment": experiment, "run_id": run_id, "workspace": workspace}
    inputs = {"model": base_model, "data": data.path, "training_job": training_job, "workspace": workspace}
    return run_stage(f"train-{stage}", f"train_{stage}", run, training, inputs, {"model": model, "metrics": metrics})
