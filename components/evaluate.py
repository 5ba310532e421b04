"""Component: base, stage 1 and stage 2 side by side on the run's benchmarks (JSON, Markdown, PNG)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics, Output

from medssr.components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(
    parent_run_id: str, tracking_uri: str, experiment: str, run_id: str, workspace: str,
    base_model: str, stage1_model: str, stage2_model: str, benchmarks_dir: str, evaluation: dict,
    results: Output[Artifact], report: Output[Markdown], chart: Output[HTML], metrics: Output[Metrics],
):
    from medssr.components.steps import run_stage

    run = {"parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "experiment": experiment, "run_id": run_id, "workspace": workspace}
    inputs = {"models": [base_model, stage1_model, stage2_model], "benchmarks_dir": benchmarks_dir}
    run_stage("evaluate", "evaluation", run, evaluation, inputs, {"results": results, "report": report, "chart": chart, "metrics": metrics})
