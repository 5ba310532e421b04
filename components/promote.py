"""Component: the promotion gate for real (moves alias champion when it passes); returns whether it passed."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(
    parent_run_id: str, tracking_uri: str, experiment: str, run_id: str, workspace: str,
    registration: dict, promotion: dict, decision: Output[Markdown],
) -> bool:
    from medssr.components.steps import run_stage

    run = {"parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "experiment": experiment, "run_id": run_id, "workspace": workspace}
    return run_stage("promote", "promotion", run, promotion, {"name": registration["name"], "dry_run": False},
                     {"decision": decision})
