"""Component: knowledge-grounded, distribution-controlled synthesis (seeded by the run's stage-2 questions)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def synthesize(
    parent_run_id: str, tracking_uri: str, experiment: str, run_id: str, workspace: str,
    stage2: Input[Dataset], eval_benchmarks_dir: str, synthesis: dict,
    items: Output[Dataset], stats: Output[Artifact], chart: Output[HTML],
):
    from medssr.components.steps import run_stage

    run = {"parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "experiment": experiment, "run_id": run_id, "workspace": workspace}
    run_stage("synthesize", "synthesis", run, synthesis, {"stage2": stage2.path, "eval_benchmarks_dir": eval_benchmarks_dir},
              {"items": items, "stats": stats, "chart": chart})
