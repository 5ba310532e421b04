"""The one step every KFP component runs: a stage of :mod:`medssr.stages`, recorded.

``run_stage`` builds nothing itself: the stage's run function builds its config from the step's one
parameter mapping and the run's wiring and calls the stage library. The step records the result as an
MLflow run nested under the pipeline's parent run (the config as params + hash, metrics, artifacts,
datasets, tables, tags; headline metrics and tags on the parent) and fills the component's KFP outputs.

Where files live: small things (datasets, reports, metrics) are KFP artifacts. Model folders are
written to the run's folder on the shared ``workspace`` (a local folder under kfp.local, the
workspace PVC on a cluster) and passed on as paths, because the training job's own pods (PyTorchJob,
TrainJob) must read the data and write the model there, and copying multi-GB folders through the KFP
artifact store between every step would cost more than the steps.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medssr.lifetime import watch_runner
from medssr.pipelines.resume import resumable, runner_lock_tag

STEP_TIMINGS_ENV = "MEDSSR_STEP_TIMINGS"


def record_step_time(step: str, seconds: float) -> None:
    """Append the step function's wall time to the file MEDSSR_STEP_TIMINGS names (set by local runs),
    so a run's timing report can split tracking from orchestration."""
    path = os.environ.get(STEP_TIMINGS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "seconds": seconds}) + "\n")


def end_process_fast_after_success(step: Callable) -> Callable:
    """Under the KFP executor, end the step's process with ``os._exit(0)`` once the step has returned and
    the executor has written its outputs: Python's own teardown of the loaded torch / transformers /
    mlflow modules took 1-7 s per step, a third of the local pipeline's orchestration overhead. A step
    that raised keeps the normal exit (traceback, status 1); called in-process (tests, other code) this
    changes nothing."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        watch_runner()  # a local run's step ends with its runner, even one killed by SIGKILL
        started = time.perf_counter()
        result = step(*args, **kwargs)
        record_step_time(step.__name__, time.perf_counter() - started)
        main = sys.modules.get("__main__")
        if getattr(getattr(main, "__spec__", None), "name", "") == "kfp.dsl.executor_main":
            failures: list = []
            previous_hook = sys.excepthook

            def record_failure(*exc_info):
                failures.append(exc_info)
                previous_hook(*exc_info)

            def exit_now():
                if failures:
                    return
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)

            sys.excepthook = record_failure
            atexit.register(exit_now)  # registered last, so it runs first at exit: after the outputs are written
        return result

    return wrapper


def new_run_id() -> str:
    """Lower-case, label-safe and sortable: ``medssr-20261125-211500-1a2b3c``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"medssr-{stamp}-{uuid.uuid4().hex[:6]}"


def pipeline_run_id(run_id: str, kfp_run_id: str) -> str:
    """The run id given, else KFP's own run id when the placeholder was resolved."""
    if run_id:
        return run_id
    return kfp_run_id if kfp_run_id and "{{" not in kfp_run_id else ""


def png_html(title: str, png: str | os.PathLike | None, markdown: str = "") -> str:
    """A self-contained HTML page (KFP renders HTML artifacts) with an inline PNG and a pre-formatted table."""
    image = ""
    if png and Path(png).is_file():
        encoded = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        image = f'<img alt="{title}" src="data:image/png;base64,{encoded}"/>'
    table = f"<pre>{markdown.replace('&', '&amp;').replace('<', '&lt;')}</pre>" if markdown else ""
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body><h2>{title}</h2>{image}{table}</body></html>"


def _fill_outputs(record, outputs: dict) -> None:
    """KFP outputs: files copied (datasets with their item count and hash), metrics, HTML pages."""
    from medssr.hashing import file_sha256
    from medssr.tracking import numeric_items

    for name, artifact in outputs.items():
        if name in record.files:
            shutil.copyfile(record.files[name], artifact.path)
            artifact.metadata["sha256"] = file_sha256(artifact.path)
            if artifact.path.endswith(".jsonl") or record.files[name].endswith(".jsonl"):
                artifact.metadata["items"] = sum(1 for line in open(artifact.path, encoding="utf-8") if line.strip())
        elif name in record.html:
            Path(artifact.path).write_text(png_html(*record.html[name]), encoding="utf-8")
        elif name == "metrics":
            for key, value in numeric_items(record.metrics).items():
                artifact.log_metric(re.sub(r"[^\w.\-]", "_", key), value)


@end_process_fast_after_success
@resumable("{step}")
def run_stage(step: str, stage: str, run: dict[str, str], config: dict[str, Any], inputs: dict[str, Any], outputs: dict) -> Any:
    """Run ``stage`` with the settings ``config`` and the run's ``inputs``; ``run`` holds the run id, the
    parent run, tracking URI, experiment and workspace; ``outputs`` the component's KFP output artifacts."""
    import contextlib

    started = time.perf_counter()
    from medssr.stages import STAGES, StageContext
    from medssr.tracking import StageRun, Tracker, TrackingConfig

    spec = STAGES[stage]
    spec.config  # noqa: B018 - loads the stage's library, so its import time is not counted as compute
    imports = time.perf_counter() - started
    tracking = TrackingConfig(tracking_uri=run["tracking_uri"], experiment=run["experiment"])
    tracker = Tracker(tracking)
    folder = Path(run["workspace"]).expanduser().resolve() / run["run_id"] / step
    folder.mkdir(parents=True, exist_ok=True)
    tracked = tracker.stage(spec.tracked_as, run["parent_run_id"]) if spec.tracked_as else contextlib.nullcontext()
    with tracked as stage_run:
        context = StageContext(run["run_id"], folder, tracking, run["parent_run_id"], stage_run, inputs)
        started = time.perf_counter()
        record = spec.run(config, context)
        timing = {"compute_seconds": time.perf_counter() - started, "import_seconds": imports}
        if stage_run is not None:
            stage_run.log_config(record.config)
            stage_run.log_metrics({**record.metrics, **timing})
            for path, name, kind in record.datasets:
                stage_run.log_dataset(path, name, kind)
            for path, artifact_folder in record.artifacts:
                stage_run.log_artifact(path, artifact_folder)
            for file, rows in record.tables.items():
                stage_run.log_table(rows, file)
            stage_run.set_tags(record.tags)
        parent = StageRun(tracker, run["parent_run_id"], "pipeline")
        if record.headline:
            parent.log_metrics(record.headline)
        if record.parent_tags:
            parent.set_tags(record.parent_tags)
        for file, text in record.parent_texts.items():
            parent.log_text(text, file)
    _fill_outputs(record, outputs)
    return record.value


def open_pipeline_run(run_id: str, kfp_run_id: str, tracking_uri: str, experiment: str, pipeline_params: str) -> dict[str, str]:
    """The pipeline's MLflow parent run, with every parameter (and their hash) on it; returns the run ids."""
    from medssr.tracking import StageRun, Tracker, TrackingConfig

    run_id = pipeline_run_id(run_id, kfp_run_id) or new_run_id()
    tracker = Tracker(TrackingConfig(tracking_uri=tracking_uri, experiment=experiment))
    tags = {"medssr.kfp_run_id": kfp_run_id} if kfp_run_id and "{{" not in kfp_run_id else {}
    parent = tracker.start_pipeline_run(run_id, tags={**tags, **runner_lock_tag()})
    StageRun(tracker, parent, "pipeline").log_config(json.loads(pipeline_params) if pipeline_params else {})
    return {"run_id": run_id, "parent_run_id": parent}


@end_process_fast_after_success
def finish_step(run_id: str, kfp_run_id: str, tracking_uri: str, experiment: str, state: str, error: str) -> None:
    """Close the parent run with the pipeline's final state (the exit handler's task)."""
    from medssr.tracking import KIND_TAG, PIPELINE_RUN_TAG, Tracker, TrackingConfig

    the_run = pipeline_run_id(run_id, kfp_run_id)
    if not the_run:
        print("finish: no run id to find the MLflow parent run by; nothing to close")
        return
    tracker = Tracker(TrackingConfig(tracking_uri=tracking_uri, experiment=experiment))
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{the_run}' and tags.`{KIND_TAG}` = 'pipeline'"
    found = tracker.call(tracker.client.search_runs, [tracker.experiment_id], filter_string=query, max_results=1)
    if not found:
        print(f"finish: no MLflow parent run for {the_run} (the run failed before it was opened)")
        return
    parent = found[0].info.run_id
    succeeded = state.upper() in ("SUCCEEDED", "SUCCESS")
    if not succeeded and error:
        tracker.call(tracker.client.set_tag, parent, "medssr.pipeline_error", error[:5000])
    tracker.finish_run(parent, "FINISHED" if succeeded else "FAILED")
