"""Faults with real servers: a dependency stopped in the middle of work and started again, and a registration
killed at its most delicate moment. Each test says what must hold: work continues (or fails as one line), nothing
is duplicated, nothing half-done is taken for done."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.plugins.http_proxy import ForwardingProxy

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 300  # a guard against a hang, far above what any of these takes


class LogWatch(logging.Handler):
    """Calls ``react(message)`` for each record of ``logger`` whose message contains ``text`` (in the logging thread)."""

    def __init__(self, logger: str, text: str, react=lambda message: None):
        super().__init__(logging.INFO)
        self.text, self.react, self.messages = text, react, []
        self.logger = logging.getLogger(logger)

    def emit(self, record):
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.react(message)

    def __enter__(self):
        self.logger.addHandler(self)
        self.before = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.before)


# --- MLflow ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_server_stopped_during_a_stage_and_restarted_the_run_continues_once(mlflow_server, stoppable_front):
    """The server stops answering between two metric logs of a stage; while MLflow's own retries wait, it comes
    back. The stage ends FINISHED with every metric point and param exactly once, in one stage run under one
    parent run."""
    from mlflow import MlflowClient

    from medssr.tracking import Tracker, TrackingConfig

    server = stoppable_front(mlflow_server.url)
    # Enough of MLflow's backoff (0, 2, 4, ... s) to see several announced retries before the server is back.
    tracker = Tracker(TrackingConfig(tracking_uri=server.url, experiment="faults", http_max_retries=8, http_backoff_factor=1))
    parent = tracker.start_pipeline_run("mlflow-restart")

    def back_after_three_failed_tries(message):
        if "attempt 3 of 9 failed" in message:
            server.start()

    with tracker.stage("train", parent) as stage:
        stage.log_config({"learning_rate": 0.1})
        stage.log_metrics({"loss": 1.0}, step=1)
        server.stop()
        with LogWatch("medssr.dependencies", f"waiting for MLflow tracking server at {server.url}",
                      back_after_three_failed_tries) as watch:
            stage.log_metrics({"loss": 0.5}, step=2)  # refused, retried by MLflow until the server is back
        stage.log_metrics({"loss": 0.25}, step=3)
    tracker.finish_run(parent)

    assert [m.split(": attempt ")[1][:6] for m in watch.messages] == ["1 of 9", "2 of 9", "3 of 9"]
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("faults").experiment_id
    runs = client.search_runs([experiment], "tags.`medssr.pipeline_run_id` = 'mlflow-restart'")
    assert sorted(r.data.tags["medssr.kind"] for r in runs) == ["pipeline", "stage"]
    assert all(r.info.status == "FINISHED" for r in runs)
    stage_run = next(r for r in runs if r.data.tags["medssr.kind"] == "stage")
    history = sorted((m.step, m.value) for m in client.get_metric_history(stage_run.info.run_id, "loss"))
    assert history == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert stage_run.data.params["learning_rate"] == "0.1" and len(stage_run.data.params) == 2  # + config_sha256


# --- S3: the checkpoint mirror ----------------------------------------------------------------------------


@pytest.mark.slow
def test_s3_stopped_during_a_checkpoint_upload_training_goes_on_and_the_mirror_catches_up(
    tiny_model, tmp_path, s3_endpoint, stoppable_front, monkeypatch
):
    """The S3 endpoint dies in the middle of checkpoint-2's upload. Training goes on; checkpoint-2 is not marked
    complete in the mirror while it is partial; the endpoint comes back and the next save uploads what it missed."""
    from medssr.training import run_training
    from medssr.training.checkpoints import MARKER
    from tests.test_training import tiny_config

    front = stoppable_front(s3_endpoint.url)
    bucket = s3_endpoint.create_bucket("medssr-faults")
    monkeypatch.setenv("AWS_ENDPOINT_URL", front.url)
    front.stop_when(rb"PUT /medssr-faults/run/checkpoint-2/")
    marked_while_down: list[bool] = []

    def come_back(message):  # in the training thread, right after the failed upload was reported
        marked_while_down.append(f"run/checkpoint-2/{MARKER}" in s3_endpoint.keys(bucket, "run/checkpoint-2/"))
        front.start()

    config = tiny_config(tiny_model, tmp_path / "out", max_steps=4, save_steps=1, save_total_limit=3,
                         checkpoint_dir=f"s3://{bucket}/run")
    with LogWatch("medssr.training.checkpoints", "checkpoint-2 is not in the mirror yet", come_back) as watch:
        result = run_training(config)

    assert front.trips == 1 and len(watch.messages) == 1, watch.messages
    assert "S3 endpoint at" in watch.messages[0] and "is unreachable" in watch.messages[0]
    assert marked_while_down == [False]
    assert result.metrics["global_step"] == 4
    keys = set(s3_endpoint.keys(bucket, "run/"))
    local = tmp_path / "out" / "checkpoints"
    for step in (1, 2, 3, 4):
        assert f"run/checkpoint-{step}/{MARKER}" in keys, sorted(keys)
    for folder in sorted(p for p in local.iterdir() if p.name.startswith("checkpoint-")):
        files = {f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file()}
        assert {k.removeprefix(f"run/{folder.name}/") for k in keys if k.startswith(f"run/{folder.name}/")} == files


# --- Kubernetes API ---------------------------------------------------------------------------------------


@pytest.mark.k8s
def test_api_server_restarted_while_a_launcher_waits_the_wait_resumes(kube_cluster, kube_namespace):
    """The API server goes down (etcd stays) while the launcher watches its PyTorchJob; the operator marks the job
    Succeeded once the server is back. The wait rides out the outage and reports Succeeded."""
    from kubernetes import client

    from medssr.launch import PyTorchJobLauncherConfig, build_launcher
    from tests.test_launch import cluster_spec, pytorchjob_conditions

    launcher = build_launcher(PyTorchJobLauncherConfig(namespace=kube_namespace, kubeconfig=str(kube_cluster.kubeconfig), poll_interval_s=0.5))
    handle = launcher.submit(cluster_spec("restart1", num_workers=0))
    outcome: dict = {}

    def wait():
        try:
            outcome["status"] = launcher.wait(handle, timeout=DEADLINE_S)
        except Exception as error:  # reported by the assertion below
            outcome["error"] = error

    with LogWatch("medssr.dependencies", "waiting for Kubernetes API server") as watch:
        waiting = threading.Thread(target=wait, daemon=True)
        waiting.start()
        time.sleep(1.0)  # let the wait reach its watch
        kube_cluster.restart_apiserver(while_down=lambda: time.sleep(3.0))
        custom = client.CustomObjectsApi(kube_cluster.api_client())
        custom.patch_namespaced_custom_object_status(
            launcher.group, launcher.version, handle.namespace, launcher.plural, handle.name,
            {"status": pytorchjob_conditions(("Succeeded", "True", "PyTorchJobSucceeded", "done after the restart"))},
        )
        waiting.join(DEADLINE_S)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["status"].state == "Succeeded" and outcome["status"].message == "done after the restart"
    assert watch.messages, "the outage was announced while the wait rode it out"


# --- The registry: no half-registered version -------------------------------------------------------------


class HoldingProxy(ForwardingProxy):
    """A proxy to an MLflow server that holds the request marking a model version complete: the test kills
    the registering process while it waits for that answer."""

    def __init__(self, upstream: str):
        self.held, self.release = threading.Event(), threading.Event()
        super().__init__(upstream)

    def before(self, handler, body: bytes | None) -> bool:
        if not (handler.path.startswith("/api/2.0/mlflow/model-versions/set-tag") and b"medssr.complete" in (body or b"")):
            return False
        self.held.set()
        self.release.wait(DEADLINE_S)
        handler.close_connection = True
        return True

    def close(self) -> None:
        self.release.set()
        super().close()


REGISTER = """
import json, sys
from medssr.promotion import RegisterConfig, run_register
from medssr.tracking import TrackingConfig
settings = json.loads(sys.argv[1])
run_register(RegisterConfig(name=settings["name"], model_dir=settings["model_dir"], scores={"raredis_heldout": 0.5},
                            tracking=TrackingConfig(tracking_uri=settings["uri"], experiment="faults-registry")))
"""


@pytest.mark.slow
def test_registration_killed_before_it_is_complete_is_never_gated_and_its_rerun_finishes_it(mlflow_server, tiny_model, tmp_path):
    """SIGKILL of a real registering process after the version was created, before it was marked complete: the
    version carries no medssr.complete tag and no alias, the gate and model resolution refuse it, and the same
    registration run again finishes that version instead of making another."""
    from mlflow import MlflowClient

    from medssr.errors import UserError
    from medssr.promotion import PromotionConfig, RegisterConfig, run_promotion, run_register
    from medssr.registry import COMPLETE_TAG, resolve_model_reference
    from medssr.tracking import TrackingConfig

    name = "faults-half-registered"
    tracking = TrackingConfig(tracking_uri=mlflow_server.url, experiment="faults-registry")
    client = MlflowClient(mlflow_server.url)
    other = tmp_path / "other-model"
    other.mkdir()
    for file in tiny_model.iterdir():
        if file.is_file():
            (other / file.name).write_bytes(file.read_bytes())
    first = run_register(RegisterConfig(name=name, model_dir=str(other), tracking=tracking))  # complete, candidate

    proxy = HoldingProxy(mlflow_server.url)
    try:
        settings = json.dumps({"name": name, "model_dir": str(tiny_model), "uri": proxy.url})
        process = subprocess.Popen([sys.executable, "-c", REGISTER, settings], cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proxy.held.wait(DEADLINE_S), process.communicate(timeout=30)[0][-3000:]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        proxy.close()
    assert process.returncode == -signal.SIGKILL

    versions = {v.version: v for v in client.search_model_versions(f"name = '{name}'")}
    assert len(versions) == 2
    half = next(v for number, v in versions.items() if number != first.version)
    assert COMPLETE_TAG not in half.tags and half.tags["eval.raredis_heldout"] == "0.500000"
    assert client.get_model_version_by_alias(name, "candidate").version == first.version
    assert run_promotion(PromotionConfig(name=name, tracking=tracking, dry_run=True)).candidate_version == first.version
    refused = run_promotion(PromotionConfig(name=name, candidate=str(half.version), tracking=tracking, dry_run=True))
    assert not refused.passed and f"v{half.version} was not completely registered" in refused.reason
    with pytest.raises(UserError, match="not completely registered"):
        resolve_model_reference(f"models:/{name}/{half.version}", tracking)

    again = run_register(RegisterConfig(name=name, model_dir=str(tiny_model), scores={"raredis_heldout": 0.5}, tracking=tracking))
    assert again.version == half.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 2
    assert client.get_model_version(name, half.version).tags[COMPLETE_TAG] == "true"
    assert client.get_model_version_by_alias(name, "candidate").version == half.version
    assert resolve_model_reference(f"models:/{name}@candidate", tracking, cache_dir=tmp_path / "cache")
