"""Component: deploy the promoted model (models:/NAME@ALIAS) as a KServe InferenceService and wait for Ready."""

from kfp import dsl

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy(
    parent_run_id: str, tracking_uri: str, experiment: str, run_id: str, model_name: str, alias: str, namespace: str
) -> str:
    from medssr.components.steps import deploy_step

    return deploy_step(parent_run_id, tracking_uri, experiment, run_id, model_name, alias, namespace)
