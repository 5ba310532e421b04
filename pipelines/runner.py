"""Compile the pipeline, submit it to a KFP API server, or run it here with kfp.local."""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssr.components.steps import STEP_TIMINGS_ENV
from medssr.pipelines.settings import ClusterSettings

COMPILED = Path(__file__).resolve().parent / "compiled" / "medssr.yaml"


def pipeline_defaults(settings: ClusterSettings | None = None) -> dict[str, Any]:
    """Every pipeline parameter with its default value."""
    from medssr.pipelines.medssr_pipeline import build_pipeline

    signature = inspect.signature(build_pipeline(settings).pipeline_func)
    return {name: p.default for name, p in signature.parameters.items()}


def parse_overrides(pairs: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """``["k=v", ...]`` -> typed values (the type of each parameter's default)."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        if key not in defaults:
            raise ValueError(f"--param {key}: no such pipeline parameter (see `medssr pipeline params`)")
        kind = type(defaults[key])
        try:
            if kind is bool:
                lowered = text.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                parsed[key] = lowered in ("true", "1", "yes")
            else:
                parsed[key] = kind(text)
        except ValueError:
            raise ValueError(f"--param {key}={text!r}: expected a {kind.__name__}") from None
    return parsed


def resolved_params(overrides: dict[str, Any], settings: ClusterSettings | None = None) -> dict[str, Any]:
    """Defaults + overrides, a run id, and ``pipeline_params``: the whole set as JSON for the parent run."""
    from medssr.components.steps import new_run_id

    params = {**pipeline_defaults(settings), **overrides}
    params["run_id"] = params.get("run_id") or new_run_id()
    params["pipeline_params"] = json.dumps({k: v for k, v in sorted(params.items()) if k != "pipeline_params"})
    return params


def compile_pipeline(out: str | os.PathLike, settings: ClusterSettings | None = None) -> Path:
    from kfp import compiler

    from medssr.pipelines.medssr_pipeline import build_pipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings), str(out))
    return out


def submit(host: str, params: dict[str, Any], experiment: str = "medssr", package: str | os.PathLike | None = None,
           run_name: str | None = None, namespace: str | None = None,
           service_account: str | None = "medssr-pipeline"):
    """Upload-free submission of the compiled package as a run; returns kfp's RunPipelineResult."""
    import kfp

    package = Path(package or COMPILED)
    if not package.is_file():
        raise FileNotFoundError(f"no compiled pipeline at {package} (run `medssr pipeline compile`)")
    client = kfp.Client(host=host, namespace=namespace)
    return client.create_run_from_pipeline_package(
        str(package),
        arguments=params,
        run_name=run_name or params.get("run_id") or None,
        experiment_name=experiment,
        enable_caching=None,  # keep each task's own setting: synthesis cached, the rest not
        # the least-privilege account of manifests/base (launching PyTorchJobs, reading pod logs)
        service_account=service_account or None,
    )


@dataclass
class LocalRun:
    params: dict[str, Any]
    wall_seconds: float
    pipeline_root: Path
    step_seconds: float  # sum of the steps' own function times (stage work + their MLflow tracking)
    logs: Path | None  # the steps' logs (all.log and one file per step), unless streamed to the console


def local_pipeline_root(pipeline_root: str | os.PathLike | None = None) -> Path:
    return Path(pipeline_root or Path.cwd() / ".medssr" / "kfp").resolve()


def step_logs_folder(pipeline_root: str | os.PathLike | None, run_id: str) -> Path:
    """Where a quiet local run keeps its steps' logs: ``all.log`` and ``<step>.log``."""
    return local_pipeline_root(pipeline_root) / "logs" / (run_id or "run")


def run_local(params: dict[str, Any], pipeline_root: str | os.PathLike | None = None, verbose: bool = False) -> LocalRun:
    """Run the same pipeline with kfp.local: every step a subprocess of this Python environment. The
    console shows one line per step and the steps' output goes to ``<root>/logs/<run id>/``, unless
    ``verbose`` streams it all to the console."""
    import contextlib

    import kfp.local

    from medssr.pipelines.medssr_pipeline import build_pipeline
    from medssr.pipelines.step_logs import StepLogs

    root = local_pipeline_root(pipeline_root)
    root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    # kfp.local warns when an image name lacks "python"; the project image is Python, and locally unused.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    # ... and that cluster-only settings (accelerators, display names) do nothing here, which is expected.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner", category=UserWarning)
    pipeline = build_pipeline()
    timings = root / f"{params.get('run_id') or 'run'}.step-timings.jsonl"
    timings.unlink(missing_ok=True)
    previous = os.environ.get(STEP_TIMINGS_ENV)
    os.environ[STEP_TIMINGS_ENV] = str(timings)  # inherited by the step subprocesses
    logs = None if verbose else step_logs_folder(root, str(params.get("run_id") or ""))
    started = time.perf_counter()
    try:
        if logs is None:
            pipeline(**params)
        else:
            with contextlib.closing(StepLogs(logs, sys.stdout)) as stream, contextlib.redirect_stdout(stream):
                pipeline(**params)
    finally:
        wall = time.perf_counter() - started
        if previous is None:
            os.environ.pop(STEP_TIMINGS_ENV, None)
        else:
            os.environ[STEP_TIMINGS_ENV] = previous
    steps = [json.loads(line) for line in timings.read_text().splitlines()] if timings.is_file() else []
    return LocalRun(params=params, wall_seconds=wall, pipeline_root=root, step_seconds=sum(s["seconds"] for s in steps), logs=logs)


def stage_timings(pipeline_run_id: str, tracking_uri: str = "", experiment: str = "medssr") -> dict[str, dict[str, float]]:
    """Per stage: ``compute`` seconds inside the stage function (``compute_seconds`` where the step
    measured it, else the whole tracked stage, ``stage_seconds``: registry uploads, the gate) and
    ``imports`` seconds loading the stage's libraries in the step's fresh process."""
    from medssr.tracking import KIND_TAG, PIPELINE_RUN_TAG, STAGE_TAG, Tracker, TrackingConfig

    tracker = Tracker(TrackingConfig(tracking_uri=tracking_uri, experiment=experiment))
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}' and tags.`{KIND_TAG}` = 'stage'"
    runs = tracker.call(tracker.client.search_runs, [tracker.experiment_id], filter_string=query, max_results=200)
    timings: dict[str, dict[str, float]] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        metrics = run.data.metrics
        seconds = metrics.get("compute_seconds", metrics.get("stage_seconds"))
        if seconds is None:
            continue
        entry = timings.setdefault(run.data.tags[STAGE_TAG], {"compute": 0.0, "imports": 0.0})
        entry["compute"] += seconds
        entry["imports"] += metrics.get("import_seconds", 0.0)
    return timings


def timing_report(wall_seconds: float, timings: dict[str, dict[str, float]], step_seconds: float | None = None) -> str:
    """Wall time, per-stage compute, and orchestration overhead (wall minus stage work) as a share of wall.

    Stage work is the stage functions' time plus their library imports. With ``step_seconds`` (the steps'
    whole function times, local runs) the rest splits into MLflow tracking inside the steps and
    orchestration proper (process start, the KFP executor, kfp.local bookkeeping)."""
    compute = sum(t["compute"] for t in timings.values())
    imports = sum(t["imports"] for t in timings.values())
    work = compute + imports
    lines = [f"pipeline wall time: {wall_seconds:.1f} s", f"  {'stage':<18} {'compute':>9} {'imports':>9}"]
    lines += [f"  {stage:<18} {t['compute']:8.1f}s {t['imports']:8.1f}s" for stage, t in timings.items()]
    lines.append(f"  {'sum':<18} {compute:8.1f}s {imports:8.1f}s")
    overhead = wall_seconds - work
    lines.append(f"overhead (wall - stage work): {overhead:.1f} s = {100 * overhead / wall_seconds:.1f}% of wall time")
    if step_seconds:
        tracking = max(0.0, step_seconds - work)
        orchestration = wall_seconds - step_seconds
        lines.append(f"  of which MLflow tracking inside the steps: {tracking:.1f} s = {100 * tracking / wall_seconds:.1f}%")
        lines.append(
            f"  of which orchestration (processes, KFP executor, kfp.local): {orchestration:.1f} s = "
            f"{100 * orchestration / wall_seconds:.1f}%"
        )
    return "\n".join(lines)
