"""Component: open the pipeline's MLflow parent run, split stage-2 data from the eval set, resolve the base model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare(
    run_id: str, kfp_run_id: str, workspace: str, tracking_uri: str, experiment: str, pipeline_params: str, base_model: str,
    split: dict, stage2: Output[Dataset],
) -> NamedTuple("Prepared", parent_run_id=str, run_id=str, base_model=str, eval_benchmarks_dir=str):
    from collections import namedtuple

    from medssr.components.steps import open_pipeline_run, run_stage

    ids = open_pipeline_run(run_id, kfp_run_id, tracking_uri, experiment, pipeline_params)
    run = {**ids, "tracking_uri": tracking_uri, "experiment": experiment, "workspace": workspace}
    out = run_stage("prepare", "split", run, split, {"base_model": base_model}, {"stage2": stage2})
    return namedtuple("Prepared", ["parent_run_id", "run_id", "base_model", "eval_benchmarks_dir"])(
        ids["parent_run_id"], ids["run_id"], out["base_model"], out["eval_benchmarks_dir"])
