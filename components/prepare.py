"""Component: open the pipeline's MLflow parent run, split stage-2 data from the eval set, resolve the base model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare(
    run_id: str,
    kfp_run_id: str,
    workspace: str,
    tracking_uri: str,
    experiment: str,
    base_model: str,
    benchmarks_dir: str,
    split_benchmark: str,
    stage2_size: int,
    stage2_data: str,
    seed: int,
    pipeline_params: str,
    stage2: Output[Dataset],
) -> NamedTuple("Prepared", parent_run_id=str, run_id=str, base_model=str, eval_benchmarks_dir=str):
    from collections import namedtuple

    from medssr.components.steps import prepare_step

    out = prepare_step(
        run_id, kfp_run_id, workspace, tracking_uri, experiment, base_model, benchmarks_dir,
        split_benchmark, stage2_size, stage2_data, seed, pipeline_params, stage2,
    )
    return namedtuple("Prepared", list(out))(**out)
