"""Component: self-consistency pseudo-labels from the base policy, with the precision/yield audit."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from medssr.components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def pseudo_label(
    parent_run_id: str, tracking_uri: str, experiment: str, run_id: str, workspace: str,
    base_model: str, items: Input[Dataset], labeling: dict,
    labeled: Output[Dataset], audit: Output[Markdown], metrics: Output[Metrics],
):
    from medssr.components.steps import run_stage

    run = {"parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "experiment": experiment, "run_id": run_id, "workspace": workspace}
    run_stage("pseudo_label", "labeling", run, labeling, {"items": items.path, "base_model": base_model},
              {"labeled": labeled, "audit": audit, "metrics": metrics})
