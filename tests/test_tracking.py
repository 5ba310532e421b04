"""MLflow tracking: nested stage runs, params/metrics/artifacts/datasets, registry references, retries."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from medssr.errors import UserError
from medssr.hashing import config_hash
from medssr.references import RegistryReference, registry_reference
from medssr.registry import register_model_folder, resolve_model_reference
from medssr.tracking import PARENT_TAG, Tracker, TrackingConfig, flatten, local_tracking_uri
from tests.plugins.s3_server import free_port


def test_flatten_and_hash_are_canonical():
    config = {"b": {"y": [1, 2], "x": 0.5}, "a": "text"}
    assert flatten(config) == {"b.y": "[1, 2]", "b.x": "0.5", "a": "text"}
    reordered = {"a": "text", "b": {"x": 0.5, "y": [1, 2]}}
    assert config_hash(config) == config_hash(reordered)
    assert config_hash(config) != config_hash({**config, "a": "other"})


def test_model_references_parse_and_reject():
    assert RegistryReference.parse("models:/medssr@champion") == RegistryReference("medssr", alias="champion")
    assert RegistryReference.parse("models:/medssr/3") == RegistryReference("medssr", version="3")
    assert str(RegistryReference.parse("medssr", default_alias="champion")) == "models:/medssr@champion"
    assert str(registry_reference("medssr", "7")) == "models:/medssr/7" and str(registry_reference("medssr", "candidate")) == "models:/medssr@candidate"
    for bad in ("runs:/abc/model", "medssr", "not a model ref"):
        with pytest.raises(UserError, match="not a registered model reference"):
            RegistryReference.parse(bad)


@pytest.mark.slow
def test_local_default_store_tracks_nested_stage_runs(tmp_path, monkeypatch, tiny_model, mlflow_empty_db):
    (tmp_path / ".medssr").mkdir()
    shutil.copyfile(mlflow_empty_db, tmp_path / ".medssr" / "mlflow.db")  # skips ~20 s of schema migrations
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(TrackingConfig(experiment="local-test"))
    assert tracker.tracking_uri == local_tracking_uri(tmp_path) and tracker.tracking_uri.startswith("sqlite:///")
    parent = tracker.start_pipeline_run("run-1")
    assert tracker.start_pipeline_run("run-1") == parent  # a retried step finds its parent again
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"id": "q1", "stem": "s", "options": {"A": "a", "B": "b"}, "answer": "A"}) + "\n")
    with tracker.stage("train", parent) as stage:
        digest = stage.log_config({"lr": 1e-5, "model": {"name": "tiny"}})
        stage.log_metrics({"shares": {"rare": 0.5}})
        stage.log_history([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0, "note": "x"}])
        stage.log_dataset(data, "stage2", "training")
        stage.log_artifact(data, "data")
        version = register_model_folder(stage, "tiny", tiny_model, tags={"eval.medqa": 0.25})
    run = tracker.client.get_run(stage.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[PARENT_TAG] == parent
    assert run.data.params["model.name"] == "tiny" and run.data.params["config_sha256"] == digest
    assert [m.step for m in tracker.client.get_metric_history(stage.run_id, "loss")] == [1, 2]
    assert run.data.metrics["shares.rare"] == 0.5 and "stage_seconds" in run.data.metrics
    assert run.inputs.dataset_inputs[0].dataset.name == "stage2"
    assert (tmp_path / ".medssr" / "mlartifacts").is_dir()
    resolved = Path(resolve_model_reference("models:/tiny@candidate", TrackingConfig(experiment="local-test")))
    assert (resolved / "model.safetensors").is_file() and str(resolved).startswith(str(tmp_path))
    assert version.tags["eval.medqa"] == "0.25"

    with pytest.raises(RuntimeError, match="boom"):
        with tracker.stage("evaluate", parent):
            raise RuntimeError("boom")
    failed = tracker.client.search_runs([tracker.experiment_id], "tags.`medssr.stage` = 'evaluate'")[0]
    assert failed.info.status == "FAILED" and "boom" in failed.data.tags["medssr.error"]
    assert tracker.client.get_run(parent).info.status == "FAILED"
    assert "evaluate: RuntimeError: boom" in tracker.client.get_run(parent).data.tags["medssr.error"]


@pytest.mark.slow
def test_registry_on_server_with_s3_artifacts(mlflow_server, s3_endpoint, tiny_model, tmp_path):
    config = TrackingConfig(tracking_uri=mlflow_server.url, experiment="registry-test")
    tracker = Tracker(config)
    with tracker.stage("register", tracker.start_pipeline_run("run-s3")) as stage:
        version = register_model_folder(stage, "tiny-s3", tiny_model, tags={"eval.raredis_heldout": 0.4})
    keys = s3_endpoint.keys(mlflow_server.bucket, "mlartifacts/")
    assert any(k.endswith("/model/model.safetensors") for k in keys) and any(k.endswith("/model/tokenizer.json") for k in keys)
    downloaded = Path(resolve_model_reference("models:/tiny-s3@candidate", config, cache_dir=tmp_path / "cache"))
    assert (downloaded / "model.safetensors").is_file() and (downloaded / "config.json").is_file()
    mapped = resolve_model_reference(
        f"models:/tiny-s3/{version.version}",
        TrackingConfig(tracking_uri=mlflow_server.url, artifacts_destination=mlflow_server.artifacts_destination),
    )
    assert mapped.startswith(f"{mlflow_server.artifacts_destination}/") and mapped.endswith("/artifacts/model")
    bucket_key = mapped[len("s3://") :].split("/", 1)[1]
    assert f"{bucket_key}/model.safetensors" in keys
    with pytest.raises(ValueError, match="no such registered model version"):
        resolve_model_reference("models:/tiny-s3@champion", config)


class DelayedProxy:
    """A TCP port that refuses connections for ``delay`` seconds, then forwards to ``target``."""

    def __init__(self, target_port: int, delay: float):
        self.port, self.target_port, self.delay = free_port(), target_port, delay
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        time.sleep(self.delay)
        with socket.create_server(("127.0.0.1", self.port)) as server:
            server.settimeout(0.2)
            while not self.stopped.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                for src, dst in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.slow
def test_briefly_unreachable_server_is_waited_for_by_mlflows_own_retries(mlflow_server):
    from medssr.dependencies import DependencyUnavailable

    proxy = DelayedProxy(int(mlflow_server.url.rsplit(":", 1)[1]), delay=3.0)
    try:
        config = TrackingConfig(tracking_uri=f"http://127.0.0.1:{proxy.port}", experiment="retry-test")
        started = time.monotonic()
        tracker = Tracker(config)
        parent = tracker.start_pipeline_run("run-retry")
        waited = time.monotonic() - started
        with tracker.stage("synthesize", parent) as stage:
            stage.log_metrics({"n": 3})
        assert waited >= 2.5  # the first calls met a closed port and were retried (MLflow's backoff: 0, 2, 4 s)
        assert Tracker(TrackingConfig(tracking_uri=mlflow_server.url)).client.get_run(stage.run_id).data.metrics["n"] == 3
        dead = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(DependencyUnavailable, match=f"MLflow tracking server at {dead} is unreachable"):
            Tracker(TrackingConfig(tracking_uri=dead)).start_pipeline_run("never")
    finally:
        proxy.stopped.set()
