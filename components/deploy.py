"""Component: deploy the promoted model (models:/NAME@champion) as a KServe InferenceService and wait for Ready."""

from kfp import dsl

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy(
    parent_run_id: str, tracking_uri: str, experiment: str, run_id: str, workspace: str, registration: dict, deployment: dict
) -> str:
    from medssr.components.steps import run_stage

    run = {"parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "experiment": experiment, "run_id": run_id, "workspace": workspace}
    return run_stage("deploy", "deployment", run, deployment, {"name": registration["name"]}, {})
