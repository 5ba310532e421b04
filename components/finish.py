"""Component (exit handler): close the pipeline's MLflow parent run with the run's final state."""

from kfp import dsl

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finish(run_id: str, kfp_run_id: str, tracking_uri: str, experiment: str, status: dsl.PipelineTaskFinalStatus):
    from medssr.components.steps import finish_step

    finish_step(run_id, kfp_run_id, tracking_uri, experiment, status.state, status.error_message or "")
