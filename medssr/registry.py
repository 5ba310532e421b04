"""The MLflow model registry: a reference's version, where its files are, registering a model folder.

A registered version is complete only once its artifacts are on the run and it is tagged ``medssr.complete``;
the gate and model resolution take no other, and a registration cut short is finished by running it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medssr.errors import UserError
from medssr.hashing import folder_fingerprint
from medssr.references import RegistryReference
from medssr.tracking import LOCAL_DIR, StageRun, Tracker, TrackingConfig

log = logging.getLogger(__name__)

COMPLETE_TAG = "medssr.complete"  # on a model version whose registration ran to its end
REGISTRATION_KEY_TAG = "medssr.registration_key"  # the inputs a model version was registered from


def get_model_version(tracker: Tracker, ref: str):
    """The ModelVersion a reference (:class:`~medssr.references.RegistryReference`) names; a UserError when it does not exist."""
    from mlflow.exceptions import MlflowException

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
