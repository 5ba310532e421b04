"""Training launchers behind one contract (submit, wait, logs, delete): a local torchrun process, a Kubeflow
PyTorchJob, or a Kubeflow Trainer v2 TrainJob, picked from a typed config.

    status = run_training_job(PyTorchJobLauncherConfig(namespace="medssr"), JobSpec(run_id=..., stage=..., ...))
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import fields

from medssr.kube.client import reachable
from medssr.launch.base import (
    JobHandle,
    JobSpec,
    JobStatus,
    Launcher,
    SecretEnvVar,
    TrainingJobFailed,
    VolumeMount,
    job_name,
)
from medssr.launch.kubernetes import CustomJobLauncher
from medssr.launch.local import LocalLauncher, LocalLauncherConfig
from medssr.launch.pytorchjob import PyTorchJobLauncher, PyTorchJobLauncherConfig
from medssr.launch.trainjob import TrainJobLauncher, TrainJobLauncherConfig

LauncherConfig = LocalLauncherConfig | PyTorchJobLauncherConfig | TrainJobLauncherConfig
log = logging.getLogger(__name__)

__all__ = [
    "JobHandle",
    "JobSpec",
    "JobStatus",
    "Launcher",
    "LauncherConfig",
    "LocalLauncher",
    "LocalLauncherConfig",
    "PyTorchJobLauncher",
    "PyTorchJobLauncherConfig",
    "SecretEnvVar",
    "TrainJobLauncher",
    "TrainJobLauncherConfig",
    "TrainingJobFailed",
    "VolumeMount",
    "build_launcher",
    "job_name",
    "launcher_config_from_dict",
    "run_training_job",
]


def build_launcher(config: LauncherConfig) -> Launcher:
    """The backend for a launcher config."""
    if isinstance(config, LocalLauncherConfig):
        return LocalLauncher(config)
    if isinstance(config, PyTorchJobLauncherConfig):
        return PyTorchJobLauncher(config)
    if isinstance(config, TrainJobLauncherConfig):
        return TrainJobLauncher(config)
    raise TypeError(f"no launcher backend for {type(config).__name__}")


def launcher_config_from_dict(data: dict) -> LauncherConfig:
    """A typed launcher config from plain data (YAML, a pipeline parameter): `backend` picks the class."""
    classes = {"local": LocalLauncherConfig, "pytorchjob": PyTorchJobLauncherConfig, "trainjob": TrainJobLauncherConfig}
    backend = data.get("backend", "local")
    if backend not in classes:
        raise ValueError(f"backend: must be one of {', '.join(classes)}, not {backend!r}")
    config_class = classes[backend]
    unknown = sorted(set(data) - {f.name for f in fields(config_class)})
    if unknown:
        raise ValueError(f"{backend} launcher: unknown setting(s) {', '.join(unknown)}")
    return config_class(**data)


def run_training_job(
    launcher_config: LauncherConfig,
    spec: JobSpec,
    timeout: float | None = None,
    log_sink: Callable[[str], None] | None = print,
) -> JobStatus:
    """Submit, stream the job's (master) log lines to `log_sink`, wait; raise TrainingJobFailed unless it succeeded.

    This is what the pipeline's train step calls: the step's log shows the training log and the step fails with
    the job's reason.
    """
    launcher = build_launcher(launcher_config)
    # A cluster backend's API server that stops answering is reported by name, not as a urllib3 traceback.
    api_reachable = reachable(launcher.api) if isinstance(launcher, CustomJobLauncher) else contextlib.nullcontext()
    with api_reachable:
        handle = launcher.submit(spec)
        log.info("submitted %s job %s", handle.backend, handle.name)
        follower = None
        if log_sink is not None:
            follower = threading.Thread(target=_follow_logs, args=(launcher, handle, log_sink), daemon=True, name=f"follow-{handle.name}")
            follower.start()
        status = launcher.wait(handle, timeout=timeout)
    if follower is not None:
        # The stream ends with the job; a cluster without reachable pod logs must not hold the step up.
        follower.join(timeout=10)
    if not status.succeeded:
        raise TrainingJobFailed(handle, status)
    return status


def _follow_logs(launcher: Launcher, handle: JobHandle, sink: Callable[[str], None]) -> None:
    try:
        for line in launcher.logs(handle, follow=True):
            sink(line)
    except Exception as error:  # noqa: BLE001 - logs are a convenience; the job's status decides the outcome
        log.warning("log stream of %s stopped: %s", handle.name, error)
