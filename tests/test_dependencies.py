"""A dead dependency (MLflow, S3, the Kubernetes API, a KFP host) is reported by name, as one line, within its
bounded retry policy; run creation is not retried blindly. Each test prints how long "dead" took to report."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from medssr.dependencies import DependencyUnavailable
from tests.plugins.http_proxy import ForwardingProxy
from tests.plugins.s3_server import free_port
from tests.plugins.unreachable import kubeconfig_for

MEDSSR = str(Path(sys.executable).with_name("medssr"))


def refused_url(scheme: str = "http") -> str:
    """A URL nothing listens on: a stopped server."""
    return f"{scheme}://127.0.0.1:{free_port()}"


@contextmanager
def silent_server():
    """A port that accepts connections (the kernel's backlog) and never answers: a hung server."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield server.getsockname()[1]


def report_of(args: list[str], env: dict | None = None, timeout: float = 150) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([MEDSSR, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return result, time.monotonic() - started


def assert_one_line_report(result: subprocess.CompletedProcess, command: str, naming: str) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"medssr {command}: error: {naming} is unreachable ("), last
    assert "the wait is set by" in last
    return last


def waiting_lines(stderr: str, what: str) -> list[str]:
    """The progress lines printed while a client waited between tries, as "k of n"."""
    prefix = f"waiting for {what}: attempt "
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert all("the wait is set by" in line for line in lines), lines
    return [line[len(prefix):].split(" failed")[0] for line in lines]


def test_stopped_mlflow_server_is_one_line_naming_it():
    url = refused_url()
    result, seconds = report_of(["promote", "medssr", "--dry-run", "--tracking-uri", url])
    line = assert_one_line_report(result, "promote", f"MLflow tracking server at {url}")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=3" in line and "Connection refused" in line
    assert waiting_lines(result.stderr, f"MLflow tracking server at {url}") == ["1 of 4", "2 of 4", "3 of 4"]
    assert "Retrying (Retry(" not in result.stderr  # urllib3's own line is replaced by the one naming the server
    print(f"\nMLflow, stopped server (defaults): reported after {seconds:.1f} s: {line}")


def test_hung_mlflow_server_is_bounded_by_the_request_timeout():
    with silent_server() as port:
        url = f"http://127.0.0.1:{port}"
        result, seconds = report_of(["promote", "medssr", "--dry-run", "--tracking-uri", url],
                                    env={"MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"})
    line = assert_one_line_report(result, "promote", f"MLflow tracking server at {url}")
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT=2" in line  # the user's own setting is the one in force, and named
    assert waiting_lines(result.stderr, f"MLflow tracking server at {url}") == ["1 of 2"]
    print(f"\nMLflow, hung server (timeout 2 s, 1 retry): reported after {seconds:.1f} s: {line}")


@pytest.mark.parametrize("kind", ["stopped", "hung"])
def test_dead_s3_endpoint_is_named(kind, monkeypatch, caplog):
    from medssr import storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    quick = storage.S3Settings(connect_timeout_s=1.0, read_timeout_s=1.0, max_attempts=2)
    monkeypatch.setattr(storage, "S3", quick)
    with (silent_server() if kind == "hung" else _nothing()) as port:
        url = f"http://127.0.0.1:{port or free_port()}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        started = time.monotonic()
        for call in (lambda: storage.read_text("s3://bucket/key"), lambda: storage.list_prefixes("s3://bucket/ckpt")):
            with caplog.at_level("WARNING", logger="medssr.dependencies"):
                with pytest.raises(DependencyUnavailable, match=f"S3 endpoint at {url} is unreachable") as caught:
                    call()
    notices = [r.getMessage() for r in caplog.records if r.name == "medssr.dependencies"]
    assert [waiting_lines(n, f"S3 endpoint at {url}") for n in notices] == [["1 of 2"], ["1 of 2"]]  # one per call
    print(f"\nS3, {kind} endpoint (1 s timeouts, 2 attempts): reported after {(time.monotonic() - started) / 2:.1f} s per call: {caught.value}")


@contextmanager
def _nothing():
    yield None


def test_stopped_kubernetes_api_server_is_one_line_naming_it(tmp_path):
    server = refused_url("https")
    result, seconds = report_of(["status", "run-x", "--kubeconfig", str(kubeconfig_for(server, tmp_path))])
    line = assert_one_line_report(result, "status", f"Kubernetes API server at {server}")
    assert waiting_lines(result.stderr, f"Kubernetes API server at {server}") == ["1 of 4", "2 of 4", "3 of 4"]
    print(f"\nKubernetes API, stopped server (defaults): reported after {seconds:.1f} s: {line}")


def test_hung_kubernetes_api_server_is_bounded(tmp_path):
    with silent_server() as port:
        server = f"https://127.0.0.1:{port}"
        result, seconds = report_of(["status", "run-x", "--kubeconfig", str(kubeconfig_for(server, tmp_path))])
    line = assert_one_line_report(result, "status", f"Kubernetes API server at {server}")
    assert "timed out" in line
    print(f"\nKubernetes API, hung server (defaults): reported after {seconds:.1f} s: {line}")


def test_training_launcher_names_a_dead_kubernetes_api_server(tmp_path):
    from medssr.launch import JobSpec, PyTorchJobLauncherConfig, run_training_job

    server = refused_url("https")
    config = PyTorchJobLauncherConfig(namespace="medssr", kubeconfig=str(kubeconfig_for(server, tmp_path)))
    spec = JobSpec(run_id="run-x", stage="train-self", image="medssr:test", entry_module="medssr.some_entry")
    with pytest.raises(DependencyUnavailable, match=f"Kubernetes API server at {server} is unreachable"):
        run_training_job(config, spec, log_sink=None)


def test_stopped_kfp_host_is_one_line_naming_it():
    host = refused_url()
    result, seconds = report_of(["pipeline", "submit", "--host", host, "--param", "run_id=dead-host"])
    line = assert_one_line_report(result, "pipeline", f"KFP API server at {host}")
    assert waiting_lines(result.stderr, f"KFP API server at {host}") == ["1 of 4", "2 of 4", "3 of 4"]
    print(f"\nKFP host, stopped server (defaults): reported after {seconds:.1f} s: {line}")


def test_hung_kfp_host_is_bounded():
    from medssr.pipelines.runner import KfpApiSettings, check_kfp_host

    with silent_server() as port:
        started = time.monotonic()
        with pytest.raises(Exception, match="timed out"):
            check_kfp_host(f"http://127.0.0.1:{port}", KfpApiSettings(read_timeout_s=1.0, max_retries=1))
    print(f"\nKFP host, hung server (1 s read timeout, 1 retry): gave up after {time.monotonic() - started:.1f} s")


class AnswerLosingProxy(ForwardingProxy):
    """A proxy to an MLflow server that forwards the first run-creation POST and then drops the connection
    without its answer: the server made the run, the client never heard."""

    timeout_s = 30.0

    def __init__(self, upstream: str):
        self.created, self.dropped = 0, 0
        super().__init__(upstream)

    def after(self, handler, status: int) -> bool:
        if not handler.path.startswith("/api/2.0/mlflow/runs/create"):
            return False
        self.created += 1
        if self.dropped:
            return False
        self.dropped += 1
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
        return True


@pytest.mark.slow
def test_run_creation_whose_answer_was_lost_is_found_not_duplicated(mlflow_server):
    from mlflow import MlflowClient

    from medssr.tracking import Tracker, TrackingConfig

    proxy = AnswerLosingProxy(mlflow_server.url)
    try:
        tracker = Tracker(TrackingConfig(tracking_uri=proxy.url, experiment="lost-answers"))
        parent = tracker.start_pipeline_run("lost-answer-run")
        with tracker.stage("prepare", parent) as stage:
            stage.log_metrics({"n": 1})
    finally:
        proxy.close()
    assert proxy.dropped == 1 and proxy.created == 2  # the lost parent creation, then the stage's
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("lost-answers").experiment_id
    runs = client.search_runs([experiment], "tags.`medssr.pipeline_run_id` = 'lost-answer-run'")
    assert sorted(r.data.tags["medssr.kind"] for r in runs) == ["pipeline", "stage"]
    assert [r.info.run_id for r in runs if r.data.tags["medssr.kind"] == "pipeline"] == [parent]
