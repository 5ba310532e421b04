"""Resuming a local pipeline run: the stages that finished are reused, the MLflow runs a killed runner left
RUNNING are closed, and the parent run is reused.

A step of a local run (``MEDSSR_LOCAL_RUN_FOLDER`` names ``<workspace>/<run id>``) that finishes writes
``<run folder>/<stage>/.medssr-step.json``: a key over its inputs, its return value, and copies of its output
artifacts. Run again with the same run id, a step whose key matches copies those outputs into its new
artifacts and returns the same value without doing the work again. The key covers every parameter, and the
contents of the files and folders the step reads (a file by its sha256, a folder by its files' names, sizes and
modification times), not just their paths: kfp.local gives each run new artifact paths, and an input rewritten
by a stage that was redone makes the stages after it run again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medssr.lifetime import RUN_FOLDER_ENV, lock_is_held, runner_lock_path
from medssr.storage import atomic_writer
from medssr.hashing import file_sha256
from medssr.tracking import KIND_TAG, PIPELINE_RUN_TAG, Tracker

MARKER = ".medssr-step.json"
OUTPUTS = "outputs"
RUNNER_LOCK_TAG = "medssr.runner_lock"  # on a local run's parent: the lock its live runner holds
RUNNER_HOST_TAG = "medssr.runner_host"  # ... on this machine (an MLflow server may be shared)
ABANDONED_TAG = "medssr.abandoned"


# ---------------------------------------------------------------------------------------------- step markers


def _is_artifact(value: Any) -> bool:
    from kfp import dsl

    return isinstance(value, dsl.Artifact)


def folder_manifest(folder: Path) -> str:
    """A folder's files by relative name, size and modification time (cheap for model folders of many GB)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def input_fingerprint(value: Any, run_folder: Path) -> Any:
    """What identifies one input: a path by its contents, anything else by its value. A folder holding the
    run folder (the workspace) is the run's own place, known by its path."""
    if isinstance(value, (list, tuple)):
        return [input_fingerprint(item, run_folder) for item in value]
    if isinstance(value, dict):
        return {key: input_fingerprint(item, run_folder) for key, item in value.items()}
    if isinstance(value, str) and os.path.isabs(value) and os.path.exists(value):
        path = Path(value).resolve()
        if path.is_file():
            return {"sha256": file_sha256(path)}
        if path != run_folder and path not in run_folder.parents:
            return {"folder": folder_manifest(path)}
    return value


def step_key(arguments: dict[str, Any], run_folder: Path) -> str:
    fingerprint = {name: input_fingerprint(value, run_folder) for name, value in sorted(arguments.items())}
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copyfile(source, target)


def resumable(stage: str, ignore: tuple[str, ...] = ()) -> Callable:
    """Reuse a step's finished result within a local run (see the module doc). ``stage`` names the step's
    folder and may use the step's arguments (``"train-{stage}"``); ``ignore`` names arguments that differ
    between attempts without changing the result (KFP's own run id)."""

    def decorate(step: Callable) -> Callable:
        signature = inspect.signature(step)

        @functools.wraps(step)
        def wrapper(*args, **kwargs):
            run_folder = os.environ.get(RUN_FOLDER_ENV)
            if not run_folder:  # not a local run: KFP decides about caching and retries
                return step(*args, **kwargs)
            run_folder = Path(run_folder).resolve()
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            folder = run_folder / stage.format(**arguments)
            outputs = {name: value for name, value in arguments.items() if _is_artifact(value)}
            for name, value in list(arguments.items()):  # a mapping of output artifacts (the generic step's `outputs`)
                if isinstance(value, dict) and value and all(_is_artifact(v) for v in value.values()):
                    outputs.update(arguments.pop(name))
            key = step_key({n: v for n, v in arguments.items() if n not in outputs and n not in ignore}, run_folder)
            marker = folder / MARKER
            done = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
            if done and done["key"] == key:
                for name, artifact in outputs.items():
                    saved = folder / OUTPUTS / name
                    if saved.exists():
                        _copy(saved, Path(artifact.path))
                    artifact.metadata.update(done["metadata"].get(name, {}))
                print(f"medssr: {folder.name} finished earlier in run {run_folder.name}; reusing its outputs ({marker})")
                return done["result"]
            marker.unlink(missing_ok=True)  # a different input: the old result no longer stands
            result = step(*args, **kwargs)
            shutil.rmtree(folder / OUTPUTS, ignore_errors=True)
            for name, artifact in outputs.items():
                if os.path.exists(artifact.path):
                    _copy(Path(artifact.path), folder / OUTPUTS / name)
            record = {"key": key, "result": result, "metadata": {n: dict(a.metadata) for n, a in outputs.items()}}
            with atomic_writer(marker) as handle:  # last: a marker means every output above is complete
                json.dump(record, handle, indent=2, default=str)
            return result

        return wrapper

    return decorate


# ---------------------------------------------------------------------------------------------- MLflow runs


def _running_runs(tracker: Tracker, query: str) -> list:
    return tracker.call(tracker.client.search_runs, [tracker.experiment_id], filter_string=f"{query} and attributes.status = 'RUNNING'",
                        max_results=1000)


def close_abandoned_runs(tracker: Tracker, run_id: str) -> list[str]:
    """Mark KILLED every local run's parent left RUNNING whose runner is gone (its lock is free, or it is this
    run's own, whose lock the caller holds), with its stage runs left RUNNING; returns the parents' ids."""
    closed = []
    for parent in _running_runs(tracker, f"tags.`{KIND_TAG}` = 'pipeline'"):
        lock = parent.data.tags.get(RUNNER_LOCK_TAG)
        pipeline_run = parent.data.tags.get(PIPELINE_RUN_TAG, "")
        if not lock or parent.data.tags.get(RUNNER_HOST_TAG) != socket.gethostname():
            continue  # a cluster run, or a local run of another machine (its lock is not here to check)
        if pipeline_run != run_id and lock_is_held(lock):
            continue  # a local run still going
        for stage in _running_runs(tracker, f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}' and tags.`{KIND_TAG}` = 'stage'"):
            tracker.call(tracker.client.set_tag, stage.info.run_id, ABANDONED_TAG, "its pipeline runner was killed mid-stage")
            tracker.finish_run(stage.info.run_id, "KILLED")
        tracker.call(tracker.client.set_tag, parent.info.run_id, ABANDONED_TAG, f"its runner was killed; found by run {run_id}")
        tracker.finish_run(parent.info.run_id, "KILLED")
        closed.append(parent.info.run_id)
    return closed


def reopen_parent_run(tracker: Tracker, run_id: str) -> str | None:
    """The parent run of ``run_id`` if it exists, RUNNING again (a resumed run goes on in it); else None."""
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{run_id}' and tags.`{KIND_TAG}` = 'pipeline'"
    found = tracker.call(tracker.client.search_runs, [tracker.experiment_id], filter_string=query, max_results=1)
    if not found:
        return None
    parent = found[0]
    attempts = int(parent.data.tags.get("medssr.attempts", "1")) + 1
    tracker.call(tracker.client.set_tag, parent.info.run_id, "medssr.attempts", str(attempts))
    tracker.call(tracker.client.update_run, parent.info.run_id, status="RUNNING")
    return parent.info.run_id


def runner_lock_tag() -> dict[str, str]:
    """The tags a local run's parent carries: where its runner's lock is (none outside a local run)."""
    folder = os.environ.get(RUN_FOLDER_ENV)
    return {RUNNER_LOCK_TAG: str(runner_lock_path(folder)), RUNNER_HOST_TAG: socket.gethostname()} if folder else {}
