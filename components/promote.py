"""Component: the promotion gate (dry run) or the promotion itself; returns whether the candidate passed."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    rare_benchmarks: str,
    margin: float,
    tolerance: float,
    gate_metric: str,
    gate_level: float,
    gate_resamples: int,
    seed: int,
    dry_run: bool,
    decision: Output[Markdown],
) -> bool:
    from medssr.components.steps import promote_step

    return promote_step(
        parent_run_id, tracking_uri, experiment, model_name, rare_benchmarks, margin, tolerance, dry_run, decision,
        metric=gate_metric, level=gate_level, resamples=gate_resamples, seed=seed,
    )
