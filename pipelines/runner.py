"""Compile the pipeline, submit it to a KFP API server, or run it here with kfp.local."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssr.cluster import PIPELINE_SERVICE_ACCOUNT, ClusterSettings
from medssr.components.steps import STEP_TIMINGS_ENV

COMPILED = Path(__file__).resolve().parent / "compiled" / "medssr.yaml"
LAST_RUN_FILE = "last-run"  # under the local pipeline root: the run id `--resume` continues


def pipeline_defaults(settings: ClusterSettings | None = None) -> dict[str, Any]:
    """Every pipeline parameter with its default value."""
    from medssr.pipelines.medssr_pipeline import build_pipeline

    signature = inspect.signature(build_pipeline(settings).pipeline_func)
    return {name: p.default for name, p in signature.parameters.items()}


def parse_overrides(pairs: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """``["labeling.max_tokens=96", "run_id=x", ...]`` -> typed values: ``STAGE.SETTING`` by the stage config's
    field type, a run parameter by the type of its default. Stage values come back as ``{stage: {setting: v}}``."""
    from medssr.configs import coerce
    from medssr.stages import STAGES

    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE or STAGE.SETTING=VALUE")
        stage, dot, name = key.partition(".")
        if dot:
            if stage not in STAGES:
                raise ValueError(f"--param {key}: no stage {stage!r} (stages: {', '.join(STAGES)})")
            settings = {s.name: s for s in STAGES[stage].settings()}
            if name not in settings:
                raise ValueError(f"--param {key}: no such pipeline parameter (see `medssr pipeline params`)")
            parsed.setdefault(stage, {})[name] = coerce(text, settings[name].annotation, key)
            continue
        if key not in defaults or isinstance(defaults[key], dict):
            raise ValueError(f"--param {key}: no such pipeline parameter (see `medssr pipeline params`)")
        parsed[key] = coerce(text, type(defaults[key]), key)
    return parsed


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` laid over ``base``; a stage's mapping is merged setting by setting."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def resolved_params(overrides: dict[str, Any], settings: ClusterSettings | None = None) -> dict[str, Any]:
    """Defaults + overrides, a run id, and ``pipeline_params``: the whole set as JSON for the parent run."""
    from medssr.components.steps import new_run_id
    from medssr.configs import plain

    params = merged(pipeline_defaults(settings), overrides)
    # KFP takes plain data (lists, no tuples) and no nulls: an unset setting keeps its config's default.
    params = {k: {n: plain(v) for n, v in value.items() if v is not None} if isinstance(value, dict) else value for k, value in params.items()}
    params["run_id"] = params.get("run_id") or new_run_id()
    params["pipeline_params"] = json.dumps({k: v for k, v in sorted(params.items()) if k != "pipeline_params"})
    return params


def compile_pipeline(out: str | os.PathLike, settings: ClusterSettings | None = None) -> Path:
    from kfp import compiler

    from medssr.pipelines.medssr_pipeline import build_pipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings), str(out))
    out.write_text(_sorted_header_defaults(out.read_text(encoding="utf-8")), encoding="utf-8")
    return out


def _sorted_header_defaults(text: str) -> str:
    """KFP's comment header prints a mapping parameter's default in protobuf map order, which changes from one
    process to the next; sorted, the compiled file is the same for the same pipeline."""
    import ast
    import re

    def ordered(value):
        return {k: ordered(v) for k, v in sorted(value.items())} if isinstance(value, dict) else value

    def sort(match: re.Match) -> str:
        return f"{match[1]}{ordered(ast.literal_eval(match[2]))}]"

    return re.sub(r"^(#\s+\w+: dict \[Default: )(\{.*\})\]$", sort, text, flags=re.MULTILINE)


@dataclass(frozen=True)
class KfpApiSettings:
    """How long `medssr pipeline submit` waits for the KFP API server before it reports it unreachable."""

    connect_timeout_s: float = field(default=5.0, metadata={"help": "seconds to open a connection to the KFP API server"})
    read_timeout_s: float = field(default=12.0, metadata={"help": "seconds the health check waits for an answer"})
    max_retries: int = field(default=3, metadata={"help": "retries of the health check that found no server"})
    backoff_factor: float = field(default=0.5, metadata={"help": "urllib3 backoff between retries: factor x 2**(retry-1) s"})


KFP_API = KfpApiSettings()
KFP_API_SETTINGS_TEXT = "medssr.pipelines.runner.KfpApiSettings (connect_timeout_s, read_timeout_s, max_retries)"


def check_kfp_host(host: str, settings: KfpApiSettings = KFP_API) -> None:
    """GET the health endpoint with bounded retries and timeouts: kfp.Client has no timeout of its own, so a
    silent server would hold it forever. Any HTTP answer (even 401 behind an auth proxy) means it is there."""
    import urllib3

    pool = urllib3.PoolManager(
        retries=urllib3.Retry(total=settings.max_retries, backoff_factor=settings.backoff_factor, raise_on_status=False),
        timeout=urllib3.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s),
    )
    pool.request("GET", f"{host.rstrip('/')}/apis/v2beta1/healthz")


def _is_kfp_unreachable(exc: BaseException) -> bool:
    import urllib3.exceptions

    return isinstance(exc, (urllib3.exceptions.MaxRetryError, urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError))


def submit(host: str, params: dict[str, Any], experiment: str = "medssr", package: str | os.PathLike | None = None,
           run_name: str | None = None, namespace: str | None = None,
           service_account: str | None = PIPELINE_SERVICE_ACCOUNT):
    """Upload-free submission of the compiled package as a run; returns kfp's RunPipelineResult. A host that
    does not answer raises DependencyUnavailable naming it."""
    import kfp

    from medssr.dependencies import reported_unreachable

    package = Path(package or COMPILED)
    if not package.is_file():
        raise FileNotFoundError(f"no compiled pipeline at {package} (run `medssr pipeline compile`)")
    with reported_unreachable("KFP API server", host, KFP_API_SETTINGS_TEXT, _is_kfp_unreachable):
        check_kfp_host(host)
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
    ``verbose`` streams it all to the console.

    The run holds a lock on its run folder (``<workspace>/<run id>``): its steps end when this process ends,
    even by SIGKILL. Run again with the same run id, it resumes: the MLflow runs the killed attempt left
    RUNNING are marked KILLED, the parent run goes on, and the stages that finished are reused."""
    from medssr.lifetime import RUN_FOLDER_ENV, RunnerLock
    from medssr.pipelines.resume import close_abandoned_runs, reopen_parent_run
    from medssr.tracking import Tracker, TrackingConfig

    root = local_pipeline_root(pipeline_root)
    root.mkdir(parents=True, exist_ok=True)
    run_id = str(params["run_id"])
    run_folder = Path(params["workspace"]).expanduser().resolve() / run_id
    lock = RunnerLock(run_folder).acquire()  # held until this process ends, however it ends
    try:
        (root / LAST_RUN_FILE).write_text(run_id + "\n", encoding="utf-8")
        tracker = Tracker(TrackingConfig(tracking_uri=params["tracking_uri"], experiment=params["experiment"]))
        closed = close_abandoned_runs(tracker, run_id)
        if closed:
            print(f"  marked KILLED: MLflow run(s) {', '.join(closed)}, left RUNNING by a runner that was killed", flush=True)
        if parent := reopen_parent_run(tracker, run_id):
            print(f"  resuming run {run_id} in its MLflow parent run {parent}: finished stages are reused", flush=True)
        with _environment(RUN_FOLDER_ENV, str(run_folder)):
            return _run_pipeline(params, root, verbose)
    finally:
        lock.release()


@contextlib.contextmanager
def _environment(name: str, value: str):
    """``os.environ[name] = value`` while the block runs (the step subprocesses inherit it)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def last_local_run(pipeline_root: str | os.PathLike | None = None) -> str:
    """The run id of the last local run started with this pipeline root (for ``--resume``)."""
    path = local_pipeline_root(pipeline_root) / LAST_RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no local run to resume: {path} does not exist (start one with `medssr pipeline run --local`)")
    return path.read_text(encoding="utf-8").strip()


def _run_pipeline(params: dict[str, Any], root: Path, verbose: bool) -> LocalRun:
    import kfp.local

    from medssr.pipelines.medssr_pipeline import build_pipeline
    from medssr.pipelines.step_logs import StepLogs

    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    # kfp.local warns when an image name lacks "python"; the project image is Python, and locally unused.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    # ... and that cluster-only settings (accelerators, display names) do nothing here, which is expected.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner", category=UserWarning)
    pipeline = build_pipeline()
    timings = root / f"{params.get('run_id') or 'run'}.step-timings.jsonl"
    timings.unlink(missing_ok=True)
    logs = None if verbose else step_logs_folder(root, str(params.get("run_id") or ""))
    started = time.perf_counter()
    try:
        with _environment(STEP_TIMINGS_ENV, str(timings)):
            if logs is None:
                pipeline(**params)
            else:
                with contextlib.closing(StepLogs(logs, sys.stdout)) as stream, contextlib.redirect_stdout(stream):
                    pipeline(**params)
    finally:
        wall = time.perf_counter() - started
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
