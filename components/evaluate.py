"""Component: base, stage 1 and stage 2 side by side on the run's benchmarks (JSON, Markdown, PNG)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics, Output

from medssr.components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    run_id: str,
    workspace: str,
    base_model: str,
    stage1_model: str,
    stage2_model: str,
    benchmarks_dir: str,
    benchmarks: str,
    limit: int,
    n: int,
    max_tokens: int,
    heldout_size: int,
    prompt_style: str,
    backend: str,
    device: str,
    batch_size: int,
    seed: int,
    results: Output[Artifact],
    report: Output[Markdown],
    chart: Output[HTML],
    metrics: Output[Metrics],
):
    from medssr.components.steps import evaluate_step

    evaluate_step(
        parent_run_id, tracking_uri, experiment, run_id, workspace, [base_model, stage1_model, stage2_model], benchmarks_dir,
        benchmarks, limit, n, max_tokens, heldout_size, prompt_style, backend, device, batch_size, seed,
        results, report, chart, metrics,
    )
