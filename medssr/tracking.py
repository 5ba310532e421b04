"""MLflow tracking and registry: one parent run per pipeline run, one nested run per stage.

Standard MLflow settings are honoured (``MLFLOW_TRACKING_URI``, ``MLFLOW_S3_ENDPOINT_URL``, AWS
credentials). Without them the store is ``sqlite:///<cwd>/.medssr/mlflow.db`` with artifacts under
``<cwd>/.medssr/mlartifacts``. MLflow itself retries every REST call (urllib3 ``Retry``); that is the one
retry layer, bounded by :class:`TrackingConfig`'s ``http_*`` settings (or the ``MLFLOW_HTTP_REQUEST_*``
variables when set), so a dead server is reported within a minute, by :meth:`Tracker.call`, as
:class:`~medssr.dependencies.DependencyUnavailable`. Run creation is not idempotent: it is never
retried blindly, but looked for by a token tag before it is tried again (:meth:`Tracker.create_run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from medssr.dependencies import DependencyUnavailable, looks_unreachable, reported_unreachable, short_cause
from medssr.errors import UserError

log = logging.getLogger(__name__)

LOCAL_DIR = ".medssr"
PIPELINE_RUN_TAG = "medssr.pipeline_run_id"
STAGE_TAG = "medssr.stage"
KIND_TAG = "medssr.kind"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
CREATE_TOKEN_TAG = "medssr.create_token"  # finds a run whose creation answer was lost
COMPLETE_TAG = "medssr.complete"  # on a model version whose registration ran to its end
REGISTRATION_KEY_TAG = "medssr.registration_key"  # the inputs a model version was registered from
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_CHARS = 6000
MAX_DIGEST_CHARS = 32

T = TypeVar("T")


@dataclass
class TrackingConfig:
    """Where runs and models are tracked, and how hard to try when the server does not answer."""

    tracking_uri: str = field(
        default="",
        metadata={"help": "MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else sqlite under ./.medssr"},
    )
    experiment: str = field(default="medssr", metadata={"help": "MLflow experiment name"})
    # MLflow's own retry policy (its MLFLOW_HTTP_REQUEST_* variables win when set). Defaults: a stopped
    # server is reported after about 6-9 s of backoff (0 + 2 + 4 s plus jitter), a silent one after 4 x 10 s.
    http_max_retries: int = field(
        default=3, metadata={"help": "retries of a failed MLflow REST call (MLFLOW_HTTP_REQUEST_MAX_RETRIES)"}
    )
    http_backoff_factor: int = field(
        default=1,
        metadata={"help": "MLflow's backoff between retries: factor x 2**(retry-1) s, the first at once "
                          "(MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, whole seconds)"},
    )
    http_timeout_s: int = field(
        default=10,
        metadata={"help": "seconds an MLflow REST call waits for an answer (MLFLOW_HTTP_REQUEST_TIMEOUT); raise "
                          "it for large artifact uploads through a slow artifact proxy"},
    )
    artifacts_destination: str = field(
        default="",
        metadata={
            "help": "the server's --artifacts-destination (e.g. s3://bucket/mlartifacts); maps proxied "
            "mlflow-artifacts:/ locations to the S3 URI KServe needs. Empty: MLFLOW_ARTIFACTS_DESTINATION"
        },
    )


def local_tracking_uri(root: str | os.PathLike | None = None) -> str:
    root = Path(root or Path.cwd()).resolve()
    return f"sqlite:///{root / LOCAL_DIR / 'mlflow.db'}"


def resolve_tracking_uri(config: TrackingConfig | None = None) -> str:
    config = config or TrackingConfig()
    return config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


# ---------------------------------------------------------------------------------------------- retries

HTTP_SETTINGS = {  # TrackingConfig field -> the MLflow variable that sets it
    "http_max_retries": "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "http_backoff_factor": "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "http_timeout_s": "MLFLOW_HTTP_REQUEST_TIMEOUT",
}


# Variables the user set before medssr ran: those win over TrackingConfig.
USER_HTTP_SETTINGS = frozenset(variable for variable in HTTP_SETTINGS.values() if variable in os.environ)


def apply_http_settings(config: TrackingConfig) -> dict[str, int]:
    """Give MLflow's REST client (which reads its variables at each call) our retry policy; returns the policy in force."""
    effective = {}
    for name, variable in HTTP_SETTINGS.items():
        if variable not in USER_HTTP_SETTINGS:
            os.environ[variable] = str(getattr(config, name))
        effective[name] = int(os.environ[variable])
    return effective


def is_server_error(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.get_http_status_code() >= 500


# ---------------------------------------------------------------------------------------------- params


def config_dict(config: Any) -> dict[str, Any]:
    """A config (dataclass, pydantic model or mapping) as plain JSON-able data."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = dataclasses.asdict(config)
    elif hasattr(config, "model_dump"):
        data = config.model_dump(mode="json")
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise TypeError(f"cannot read a config of type {type(config).__name__}")
    return json.loads(json.dumps(data, default=str, sort_keys=True))


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of the fully resolved config."""
    canonical = json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}``; lists keep their JSON form."""
    flat: dict[str, str] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    key = prefix.rstrip(".")
    text = data if isinstance(data, str) else json.dumps(data, default=str)
    flat[key] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return flat


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file, or of every file in a folder (relative names included)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


_BAD_KEY_CHARS = re.compile(r"[^\w\-./ ]")


def metric_key(key: str) -> str:
    """MLflow keys allow letters, digits, ``_-./`` and spaces."""
    return _BAD_KEY_CHARS.sub("_", key)


def numeric_items(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers (bools included) of a nested mapping, flattened to metric keys."""
    found: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found.update(numeric_items(value, f"{name}."))
        elif isinstance(value, (int, float)) and math.isfinite(float(value)):
            found[metric_key(name)] = float(value)
    return found


# ---------------------------------------------------------------------------------------------- runs


class Tracker:
    """An MLflow client bound to one tracking URI and experiment; a server it cannot reach is reported by name."""

    def __init__(self, config: TrackingConfig | None = None):
        from mlflow import MlflowClient

        self.config = config or TrackingConfig()
        self.tracking_uri = resolve_tracking_uri(self.config)
        self.is_local_default = self.tracking_uri == local_tracking_uri()
        # MLflow announces the creation of a new sqlite store's tables at INFO on the console; not news to users.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        if self.is_local_default:
            (Path.cwd() / LOCAL_DIR).mkdir(parents=True, exist_ok=True)
        self.http = apply_http_settings(self.config)
        self.is_rest = self.tracking_uri.startswith(("http://", "https://"))
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._experiment_id: str | None = None

    @property
    def wait_settings(self) -> str:
        return ", ".join(f"{variable}={self.http[name]}" for name, variable in HTTP_SETTINGS.items())

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried by MLflow alone; a server it could not reach is DependencyUnavailable."""
        if not self.is_rest:
            return fn(*args, **kwargs)
        with reported_unreachable("MLflow tracking server", self.tracking_uri, self.wait_settings):
            return fn(*args, **kwargs)

    def create_run(self, tags: Mapping[str, str]) -> str:
        """Create a run in the experiment; returns its id. A POST is not idempotent, so MLflow's blind retry is
        off for it: after a failed try the run is looked for by a one-off token tag (the server may have created
        it before the answer was lost), and only tried again when it is not there."""
        tags = {**tags, CREATE_TOKEN_TAG: uuid.uuid4().hex}
        experiment_id = self.experiment_id
        if not self.is_rest:
            return self.client.create_run(experiment_id, tags=tags).info.run_id
        started = time.monotonic()
        for retry in range(self.http["http_max_retries"] + 1):
            try:
                return self._post_create_run(experiment_id, tags)
            except Exception as exc:
                if not (looks_unreachable(exc) or is_server_error(exc)):
                    raise
                query = f"tags.`{CREATE_TOKEN_TAG}` = '{tags[CREATE_TOKEN_TAG]}'"
                found = self.call(self.client.search_runs, [experiment_id], filter_string=query, max_results=1)
                if found:
                    return found[0].info.run_id
                if retry == self.http["http_max_retries"]:
                    raise DependencyUnavailable("MLflow tracking server", self.tracking_uri, short_cause(exc),
                                                time.monotonic() - started, self.wait_settings) from exc
                wait = self.http["http_backoff_factor"] * 2**retry
                log.warning("creating an MLflow run failed (%s); looked for it, not there; trying again in %d s",
                            short_cause(exc), wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _post_create_run(self, experiment_id: str, tags: Mapping[str, str]) -> str:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/runs/create"
        body = {
            "experiment_id": experiment_id,
            "start_time": int(time.time() * 1000),
            "run_name": tags.get(RUN_NAME_TAG, ""),
            "tags": [{"key": key, "value": str(value)} for key, value in tags.items()],
        }
        store = self.client._tracking_client.store  # the RestStore: its host and credentials
        response = http_request(store.get_host_creds(), endpoint, "POST", max_retries=0,
                                timeout=self.http["http_timeout_s"], json=body)
        return verify_rest_response(response, endpoint).json()["run"]["info"]["run_id"]

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._get_or_create_experiment(self.config.experiment)
        return self._experiment_id

    def _get_or_create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.call(self.client.get_experiment_by_name, name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.is_local_default:
            location = (Path.cwd() / LOCAL_DIR / "mlartifacts" / name).resolve().as_uri()
        try:
            return self.call(self.client.create_experiment, name, artifact_location=location)
        except MlflowException as exc:  # created meanwhile by a parallel step
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
                raise
            return self.call(self.client.get_experiment_by_name, name).experiment_id

    def start_pipeline_run(self, pipeline_run_id: str, tags: Mapping[str, str] | None = None) -> str:
        """The parent run of a pipeline run; a retried step finds the one it already made."""
        query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}' and tags.`{KIND_TAG}` = 'pipeline'"
        existing = self.call(self.client.search_runs, [self.experiment_id], filter_string=query, max_results=1)
        if existing:
            return existing[0].info.run_id
        all_tags = {PIPELINE_RUN_TAG: pipeline_run_id, KIND_TAG: "pipeline", RUN_NAME_TAG: f"pipeline-{pipeline_run_id}"}
        all_tags.update(tags or {})
        return self.create_run(all_tags)

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.call(self.client.set_terminated, run_id, status)

    @contextlib.contextmanager
    def stage(self, stage: str, parent_run_id: str = "", tags: Mapping[str, str] | None = None) -> Iterator[StageRun]:
        """A nested run for one stage. An exception marks it (and the parent) FAILED with the reason, then re-raises."""
        all_tags = {STAGE_TAG: stage, KIND_TAG: "stage", RUN_NAME_TAG: stage}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
            parent = self.call(self.client.get_run, parent_run_id)
            pipeline_run_id = parent.data.tags.get(PIPELINE_RUN_TAG)
            if pipeline_run_id:
                all_tags[PIPELINE_RUN_TAG] = pipeline_run_id
        all_tags.update(tags or {})
        stage_run = StageRun(self, self.create_run(all_tags), stage)
        started = time.perf_counter()
        try:
            yield stage_run
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):  # the original failure matters more than a logging one
                stage_run.set_tags({"medssr.error": reason[:5000]})
                stage_run.log_text("".join(traceback.format_exception(exc)), "error.txt")
                self.finish_run(stage_run.run_id, "FAILED")
                if parent_run_id:
                    self.call(self.client.set_tag, parent_run_id, "medssr.error", f"{stage}: {reason}"[:5000])
                    self.finish_run(parent_run_id, "FAILED")
            raise
        stage_run.log_metrics({"stage_seconds": time.perf_counter() - started})
        self.finish_run(stage_run.run_id, "FINISHED")


class StageRun:
    """Logging helpers for one MLflow run; all calls go through the tracker."""

    def __init__(self, tracker: Tracker, run_id: str, stage: str):
        self.tracker, self.run_id, self.stage = tracker, run_id, stage
        self.client = tracker.client

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(k, str(v)) for k, v in tags.items()]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self.tracker.call(self.client.log_batch, self.run_id, tags=entries[start : start + MAX_PARAMS_PER_BATCH])

    def log_config(self, config: Any, prefix: str = "") -> str:
        """The full resolved config as flattened params, plus its sha256 (param and tag); returns the hash."""
        from mlflow.entities import Param

        digest = config_hash(config)
        params = flatten(config_dict(config), prefix)
        params[f"{prefix}config_sha256"] = digest
        entries = [Param(metric_key(k), v) for k, v in sorted(params.items())]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self.tracker.call(self.client.log_batch, self.run_id, params=entries[start : start + MAX_PARAMS_PER_BATCH])
        self.set_tags({f"{prefix}config_sha256": digest})
        return digest

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> int:
        """Log the finite numbers of a (nested) mapping; returns how many were logged."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        entries = [Metric(k, v, stamp, step or 0) for k, v in numeric_items(metrics, prefix).items()]
        self._log_metric_entries(entries)
        return len(entries)

    def log_history(self, history: list[Mapping[str, Any]], step_key: str = "step", prefix: str = "") -> int:
        """Curves: one metric point per record and numeric field, at the record's step."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        entries = []
        for index, record in enumerate(history):
            step = int(record.get(step_key, index))
            values = {k: v for k, v in record.items() if k != step_key}
            entries += [Metric(k, v, stamp, step) for k, v in numeric_items(values, prefix).items()]
        self._log_metric_entries(entries)
        return len(entries)

    def _log_metric_entries(self, entries: list) -> None:
        for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
            self.tracker.call(self.client.log_batch, self.run_id, metrics=entries[start : start + MAX_METRICS_PER_BATCH])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file, or a folder's contents, under ``artifact_path``."""
        path = Path(path)
        if path.is_dir():
            self.tracker.call(self.client.log_artifacts, self.run_id, str(path), artifact_path)
        else:
            self.tracker.call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.tracker.call(self.client.log_text, self.run_id, text, artifact_file)

    def log_table(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """Rows as an MLflow table (``mlflow.log_table``: viewable and comparable in the UI's artifact view)."""
        import pandas as pd

        self.tracker.call(self.client.log_table, self.run_id, pd.DataFrame(list(rows)), artifact_file)

    def log_dataset(self, path: str | os.PathLike, name: str, context: str, source: str | None = None) -> str:
        """Record a JSONL file as a dataset input of this run (content digest, row count, schema)."""
        import pandas as pd
        from mlflow.data import from_pandas
        from mlflow.entities import DatasetInput, InputTag

        path = Path(path)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        frame = pd.DataFrame(
            [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()} for row in rows]
        )
        digest = file_sha256(path)
        with warnings.catch_warnings():  # a local path matches two equivalent source types; either is right
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=source or str(path.resolve()), name=name, digest=digest[:MAX_DIGEST_CHARS])
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        self.tracker.call(self.client.log_inputs, self.run_id, datasets=[entry])
        return digest

    @property
    def artifact_uri(self) -> str:
        return self.tracker.call(self.client.get_run, self.run_id).info.artifact_uri


# ---------------------------------------------------------------------------------------------- registry

def get_model_version(tracker: Tracker, ref: str):
    """The ModelVersion a reference (``medssr.models.RegistryReference``) names; a UserError when it does not exist."""
    from mlflow.exceptions import MlflowException

    from medssr.models import RegistryReference

    reference = RegistryReference.parse(ref)
    try:
        if reference.alias:
            return tracker.call(tracker.client.get_model_version_by_alias, reference.name, reference.alias)
        return tracker.call(tracker.client.get_model_version, reference.name, reference.version)
    except MlflowException as exc:
        if exc.get_http_status_code() in (400, 404):
            raise UserError(f"{ref}: no such registered model version ({str(exc).splitlines()[0]})") from None
        raise


def version_location(tracker: Tracker, version) -> str:
    """Where a version's files are: its source, or the run artifact location the registry reports."""
    source = version.source
    if source.startswith(("runs:/", "models:/")):
        source = tracker.call(tracker.client.get_model_version_download_uri, version.name, version.version)
    return source


def registry_location(tracker: Tracker, version) -> str:
    """Where a version's folder is, as a local path or a storage URI, without fetching it: a ``file:`` location as
    its path, a location proxied by the MLflow server (``mlflow-artifacts:``) mapped to the server's S3 destination
    when that is configured (``artifacts_destination`` / MLFLOW_ARTIFACTS_DESTINATION, what KServe needs), any
    other as the registry reports it."""
    from urllib.parse import unquote, urlparse

    location = version_location(tracker, version)
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    destination = tracker.config.artifacts_destination or os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    if parsed.scheme == "mlflow-artifacts" and destination:
        return f"{destination.rstrip('/')}/{parsed.path.lstrip('/')}"
    return location


def resolve_model_reference(ref: str, config: TrackingConfig | None = None, cache_dir: str | os.PathLike | None = None) -> str:
    """``models:/NAME@ALIAS`` or ``models:/NAME/N`` -> a local path or an ``s3://`` URI of the model folder
    (``registry_location``); a location that is neither is downloaded once into ``cache_dir`` (default
    ``.medssr/models/NAME/VERSION``)."""
    from urllib.parse import urlparse

    tracker = Tracker(config or TrackingConfig())
    version = get_model_version(tracker, ref)
    if not is_complete(version):
        raise UserError(f"{ref}: {version.name} v{version.version} was not completely registered (no {COMPLETE_TAG} tag): "
                        "run its register step again to finish it")
    location = registry_location(tracker, version)
    if urlparse(location).scheme in ("", "s3"):
        return location
    import mlflow.artifacts

    target = Path(cache_dir or Path.cwd() / LOCAL_DIR / "models" / version.name / str(version.version))
    if not (target / ".complete").exists():
        target.mkdir(parents=True, exist_ok=True)
        tracker.call(mlflow.artifacts.download_artifacts, artifact_uri=location, dst_path=str(target), tracking_uri=tracker.tracking_uri)
        (target / ".complete").touch()
    folder = target / Path(urlparse(location).path).name
    return str(folder if folder.is_dir() else target)


def folder_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over a folder's relative file names, sizes and modification times: tells a rewritten model folder
    from the one registered before without reading gigabytes of weights."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        info = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def is_complete(version) -> bool:
    """Whether a model version's registration ran to its end (artifacts, tags, READY): the gate and model
    resolution take no other."""
    return (version.tags or {}).get(COMPLETE_TAG) == "true"


def _await_ready(tracker: Tracker, version, timeout_s: float = 300.0):
    """The version once the registry reports it READY (a store may copy the files first); None if it failed."""
    deadline = time.monotonic() + timeout_s
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(1.0)
        version = tracker.call(tracker.client.get_model_version, version.name, version.version)
    if version.status == "PENDING_REGISTRATION":
        raise TimeoutError(f"model version {version.name} v{version.version} still pending after {timeout_s:.0f} s")
    return version if version.status == "READY" else None


def _one_version(tracker: Tracker, name: str, key: str):
    """The version registered from ``key``: a complete one, else the oldest usable one; every other incomplete
    version with that key is a copy (a creation retried, a registration cut short and redone) and is deleted."""
    query = f"name = '{name}' and tags.`{REGISTRATION_KEY_TAG}` = '{key}'"
    found = sorted(tracker.call(tracker.client.search_model_versions, query), key=lambda v: int(v.version))
    kept = next((v for v in found if is_complete(v)), None) or next((v for v in found if v.status != "FAILED_REGISTRATION"), None)
    for copy in found:
        if copy is not kept and not is_complete(copy):
            log.warning("deleting %s v%s: an unfinished copy of the registration it repeats", name, copy.version)
            tracker.call(tracker.client.delete_model_version, name, copy.version)
    return kept


def register_model_folder(
    stage_run: StageRun,
    name: str,
    model_dir: str | os.PathLike,
    tags: Mapping[str, Any] | None = None,
    alias: str = "candidate",
    artifact_path: str = "model",
    registration_key: str = "",
):
    """Log a ``save_pretrained`` folder as run artifacts and register it as a new version with ``alias``.

    The version's source is that artifact folder as it is (safetensors + tokenizer), so vLLM and the
    KServe Hugging Face runtime load it directly; ``mlflow.transformers``' own layout would not.

    No half-registered version is ever taken for a finished one: the version is created last, when every
    artifact is on the run, with its tags in the same call; once READY it is tagged ``medssr.complete`` and
    only then given the alias. A registration killed before that leaves a version without the tag, which the
    gate and model resolution refuse; the same registration run again (``registration_key``: by default the
    name, the folder's fingerprint and the tags) finishes that version instead of making another, and deletes
    incomplete copies of it (a creation retried after its answer was lost).
    """
    from mlflow.exceptions import MlflowException

    tracker, client = stage_run.tracker, stage_run.client
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    version_tags = {k: str(v) for k, v in (tags or {}).items()}
    key = registration_key or hashlib.sha256(
        json.dumps([name, folder_fingerprint(model_dir), version_tags], sort_keys=True).encode()
    ).hexdigest()
    version = _one_version(tracker, name, key)
    if version is not None:
        log.info("%s v%s was registered from the same inputs before; finishing it", name, version.version)
    else:
        stage_run.log_artifact(model_dir, artifact_path)
        source = f"{stage_run.artifact_uri.rstrip('/')}/{artifact_path}"
        try:
            tracker.call(client.create_registered_model, name)
        except MlflowException as exc:
            if "already exists" not in str(exc) and "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        created = tracker.call(
            client.create_model_version, name, source, run_id=stage_run.run_id, tags={**version_tags, REGISTRATION_KEY_TAG: key}
        )
        # MLflow retries a creation whose answer timed out, and the server may have made the first one too.
        version = _one_version(tracker, name, key) or created
    ready = _await_ready(tracker, version)
    if ready is None:
        raise RuntimeError(f"the registry failed to register {name} v{version.version} ({version.status_message or version.status})")
    if not is_complete(ready):
        tracker.call(client.set_model_version_tag, name, ready.version, COMPLETE_TAG, "true")
        ready = tracker.call(client.get_model_version, name, ready.version)
    if alias:
        tracker.call(client.set_registered_model_alias, name, alias, ready.version)
    return ready
