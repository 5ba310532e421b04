"""Component: register the stage-2 model folder in MLflow (alias candidate) with scores and provenance tags,
then run the promotion gate as a dry run; returns whether it passed (the pipeline promotes on it)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    parent_run_id: str, tracking_uri: str, experiment: str, run_id: str, workspace: str,
    model_dir: str, results: Input[Artifact], stage1_data: Input[Dataset], stage2_data: Input[Dataset],
    registration: dict, promotion: dict, registered: Output[Model], decision: Output[Markdown],
) -> bool:
    from medssr.components.steps import run_stage

    run = {"parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "experiment": experiment, "run_id": run_id, "workspace": workspace}
    inputs = {"model_dir": model_dir, "results": results.path, "data": [stage1_data.path, stage2_data.path], "promotion": promotion}
    run_stage("register", "registration", run, registration, inputs, {"registered": registered})
    name = registration["name"]
    return run_stage("gate", "promotion", run, promotion, {"name": name, "dry_run": True}, {"decision": decision})
