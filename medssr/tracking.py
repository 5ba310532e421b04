"""MLflow run tracking: one parent run per pipeline run, one nested run per stage (the registry: medssr.registry).

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
from medssr.hashing import config_dict, config_hash, file_sha256

log = logging.getLogger(__name__)

LOCAL_DIR = ".medssr"
PIPELINE_RUN_TAG = "medssr.pipeline_run_id"
STAGE_TAG = "medssr.stage"
KIND_TAG = "medssr.kind"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
CREATE_TOKEN_TAG = "medssr.create_token"  # finds a run whose creation answer was lost
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
