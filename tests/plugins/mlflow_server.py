"""Session fixture ``mlflow_server``: a real ``mlflow server`` (sqlite backend, artifacts on moto S3).

The server proxies artifacts to ``s3://<bucket>/mlartifacts`` on the ``s3_endpoint`` moto server, as a
cluster deployment would with MinIO or AWS. Migrating a fresh database takes about 20 s, so an empty
migrated database is built once per MLflow version into a cache outside the repo (``mlflow_empty_db``)
and copied; the server is then healthy in about 8 s. The fixture stops the server's whole process group
at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


MLFLOW_BUCKET = "mlflow"
STARTUP_TIMEOUT_S = 300  # a fresh server on a loaded 2-core machine has taken over 120 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MlflowServer:
    url: str
    artifacts_destination: str
    bucket: str
    log_path: Path


def wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server not healthy after {timeout}s:\n{log_path.read_text()[-3000:]}")


def start_mlflow_server(workdir: Path, backend_uri: str, artifacts_destination: str, port: int | None = None):
    port = port or free_port()
    log_path = workdir / f"mlflow-server-{port}.log"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", artifacts_destination,
    ]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            # No job runner: MLflow's GenAI job execution starts a dozen worker processes no test uses.
            command, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
    return process, f"http://127.0.0.1:{port}", log_path


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop the server and every process it started (its group), also those that outlive it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def migrated_empty_db() -> Path:
    """An empty MLflow sqlite database at the installed version's schema (built once, then reused)."""
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medssr-tests"
    path = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if not path.is_file():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        cache.mkdir(parents=True, exist_ok=True)
        building = cache / f".{path.name}.{os.getpid()}.tmp"
        building.unlink(missing_ok=True)
        SqlAlchemyStore(f"sqlite:///{building}", str(cache / "unused-artifacts")).engine.dispose()
        os.replace(building, path)
    return path


@pytest.fixture(scope="session")
def mlflow_empty_db() -> Path:
    return migrated_empty_db()


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, mlflow_empty_db, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlflow-server")
    s3_endpoint.create_bucket(MLFLOW_BUCKET)
    destination = f"s3://{MLFLOW_BUCKET}/mlartifacts"
    shutil.copyfile(mlflow_empty_db, workdir / "mlflow.db")
    process, url, log_path = start_mlflow_server(workdir, f"sqlite:///{workdir / 'mlflow.db'}", destination)
    try:
        wait_healthy(url, process, log_path)
        yield MlflowServer(url=url, artifacts_destination=destination, bucket=MLFLOW_BUCKET, log_path=log_path)
    finally:
        stop_process_group(process)
