"""The launcher contract: what a training job is (`JobSpec`), and the four calls every backend implements.

Modelled on kubeflow/sdk's trainer client: a thin front (`medssr.launch.build_launcher`) picks a backend from a
typed config, and each backend (local torchrun process, PyTorchJob, TrainJob) implements the same small contract.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from medssr.kube.labels import validate_label_value
from medssr.kube.pods import SHM_VOLUME_NAME

TRAINING_MODULE = "medssr.training"
JobState = Literal["Pending", "Running", "Succeeded", "Failed", "Timeout"]
FINAL_STATES = ("Succeeded", "Failed")
MAX_NAME_LENGTH = 63


@dataclass
class SecretEnvVar:
    """An environment variable read from a Kubernetes Secret: only the names travel, never the value."""

    name: str = field(metadata={"help": "Environment variable name in the training container."})
    secret_name: str = field(metadata={"help": "Secret in the job's namespace."})
    key: str = field(metadata={"help": "Key inside the Secret."})
    optional: bool = field(default=False, metadata={"help": "Start even if the Secret or key is missing."})


@dataclass
class VolumeMount:
    """A PersistentVolumeClaim mounted into every training pod (data, checkpoints, the output model)."""

    name: str = field(metadata={"help": "Volume name inside the pod (DNS-1123 label)."})
    claim_name: str = field(metadata={"help": "PersistentVolumeClaim in the job's namespace."})
    mount_path: str = field(metadata={"help": "Where the claim appears in the container."})
    read_only: bool = field(default=False, metadata={"help": "Mount read-only."})
    sub_path: str | None = field(default=None, metadata={"help": "Mount only this sub-folder of the claim."})


@dataclass
class JobSpec:
    """One training job: which run and stage it belongs to, what to train and on what resources."""

    run_id: str = field(metadata={"help": "The pipeline run this job belongs to (label medssr.io/run-id; part of the job name)."})
    stage: str = field(metadata={"help": "Pipeline stage, e.g. train-self or train-supervised (label medssr.io/stage; part of the job name)."})
    training: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "medssr.training.TrainingConfig fields, passed to the entry point as --field value options."},
    )
    image: str = field(default="", metadata={"help": "Container image with medssr installed (cluster backends)."})
    nproc_per_node: int = field(default=1, metadata={"help": "Training processes per node (torchrun --nproc-per-node; GPUs per node on a GPU cluster)."})
    num_workers: int = field(default=0, metadata={"help": "Worker nodes besides the master (PyTorchJob Worker replicas; TrainJob numNodes - 1)."})
    gpus_per_node: int = field(default=0, metadata={"help": "nvidia.com/gpu limit of each node's pod."})
    cpu: str | None = field(default=None, metadata={"help": "CPU request of each node's pod, e.g. '4'."})
    memory: str | None = field(default=None, metadata={"help": "Memory request and limit of each node's pod, e.g. '32Gi'."})
    shm_size: str | None = field(
        default=None,
        metadata={"help": "Size of the memory-backed /dev/shm of each node's pod, e.g. '32Gi' (counts against its memory); "
                          "GPU pods always get one (NCCL needs it), unbounded when this is None."},
    )
    env: dict[str, str] = field(default_factory=dict, metadata={"help": "Plain (non-secret) environment variables."})
    secret_env: list[SecretEnvVar] = field(default_factory=list, metadata={"help": "Environment variables from Secrets (names and keys only)."})
    volumes: list[VolumeMount] = field(default_factory=list, metadata={"help": "PVCs with the data and checkpoints."})
    labels: dict[str, str] = field(default_factory=dict, metadata={"help": "Extra labels on the job and its pods."})
    entry_module: str = field(default=TRAINING_MODULE, metadata={"help": "Python module torchrun runs in every process."})

    def __post_init__(self) -> None:
        validate_label_value(self.run_id, "run_id")
        validate_label_value(self.stage, "stage")
        if not self.run_id or not self.stage:
            raise ValueError("run_id and stage: both required (they name and label the job)")
        for name in ("nproc_per_node",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("num_workers", "gpus_per_node"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative, got {getattr(self, name)}")
        self.secret_env = [item if isinstance(item, SecretEnvVar) else SecretEnvVar(**item) for item in self.secret_env]
        self.volumes = [item if isinstance(item, VolumeMount) else VolumeMount(**item) for item in self.volumes]
        for key, value in self.labels.items():
            validate_label_value(value, f"labels[{key}]")
        if SHM_VOLUME_NAME in {v.name for v in self.volumes}:
            raise ValueError(f"volumes: the name {SHM_VOLUME_NAME!r} is taken by the /dev/shm volume")
        if self.entry_module == TRAINING_MODULE:
            check_training_settings(self.training)
            check_vllm_placement(self.training, self.nproc_per_node)

    @property
    def num_nodes(self) -> int:
        return 1 + self.num_workers

    @property
    def needs_shared_memory(self) -> bool:
        return self.gpus_per_node > 0 or self.shm_size is not None

    @property
    def job_name(self) -> str:
        return job_name(self.run_id, self.stage)


@dataclass
class JobHandle:
    """What `submit` returns and the other calls take: enough to find the job again."""

    backend: str
    name: str
    namespace: str | None = None
    log_path: Path | None = None


@dataclass
class JobStatus:
    state: JobState
    reason: str = ""
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "Succeeded"

    def __str__(self) -> str:
        head = f"{self.state}" + (f" ({self.reason})" if self.reason else "")
        return f"{head}: {self.message}" if self.message else head


class TrainingJobFailed(RuntimeError):
    """A training job ended Failed or did not finish in time; `status` says why."""

    def __init__(self, handle: JobHandle, status: JobStatus) -> None:
        where = f"{handle.namespace}/{handle.name}" if handle.namespace else handle.name
        super().__init__(f"training job {where} ({handle.backend}) {status}")
        self.handle = handle
        self.status = status


class Launcher(Protocol):
    """The contract every backend implements."""

    def submit(self, spec: JobSpec) -> JobHandle: ...

    def wait(self, handle: JobHandle, timeout: float | None = None) -> JobStatus:
        """Block until the job is Succeeded or Failed, or return state Timeout after `timeout` seconds."""
        ...

    def logs(self, handle: JobHandle, follow: bool = False) -> Iterator[str]:
        """The job's log lines (the master process/pod); with `follow`, until the job ends."""
        ...

    def delete(self, handle: JobHandle) -> None: ...


def job_name(run_id: str, stage: str) -> str:
    """A DNS-1123 name from the run id and stage, at most 63 characters. When the name cannot be the plain
    `<run_id>-<stage>` (too long, or characters changed), a short hash of both keeps distinct runs distinct."""
    raw = f"{run_id}-{stage}"
    base = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", raw.lower())).strip("-")
    if not base:
        raise ValueError(f"cannot derive a job name from run_id={run_id!r} stage={stage!r}")
    if not base[0].isalpha():
        base = f"j-{base}"
    if base == raw and len(base) <= MAX_NAME_LENGTH:
        return base
    digest = hashlib.sha256(f"{run_id}\0{stage}".encode()).hexdigest()[:8]
    return f"{base[: MAX_NAME_LENGTH - 9].rstrip('-')}-{digest}"


def check_training_settings(training: dict[str, Any]) -> None:
    """Fail at submit time, not minutes later in a pod, on unknown or invalid TrainingConfig settings."""
    from medssr.training.config import TrainingConfig

    known = {f.name for f in fields(TrainingConfig)}
    unknown = sorted(set(training) - known)
    if unknown:
        raise ValueError(f"training: unknown setting(s) {', '.join(unknown)}")
    TrainingConfig(**training).validate_paths()


def check_vllm_placement(training: dict[str, Any], nproc_per_node: int) -> None:
    """A vLLM colocate tensor-parallel group is `vllm_tensor_parallel_size` consecutive ranks (TRL): its size must
    divide the processes of a node, so that no group spans two nodes."""
    tensor_parallel = training.get("vllm_tensor_parallel_size") or 1
    if training.get("use_vllm") and nproc_per_node % tensor_parallel:
        raise ValueError(
            f"training.vllm_tensor_parallel_size={tensor_parallel} must divide nproc_per_node={nproc_per_node} "
            "(a tensor-parallel group must not span nodes)"
        )


def training_arguments(training: dict[str, Any]) -> list[str]:
    """`--field value` options for the training entry point (None values are left to its defaults)."""
    arguments: list[str] = []
    for key, value in training.items():
        if value is None:
            continue
        if isinstance(value, (dict, list, tuple)):
            raise ValueError(f"training.{key}: only scalar settings can be passed to the entry point, got {type(value).__name__}")
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        arguments += [f"--{key.replace('_', '-')}", text]
    return arguments


def torchrun_command(spec: JobSpec, python: str = "python", standalone: bool = False) -> list[str]:
    """`python -m torch.distributed.run ... -m <entry module> --field value ...`.

    On a cluster the operator sets PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT, which torchrun
    reads as its defaults; locally `standalone` gives a private rendezvous on a free port.
    """
    command = [python, "-m", "torch.distributed.run", f"--nproc-per-node={spec.nproc_per_node}"]
    if standalone:
        command += ["--standalone", "--nnodes=1"]
    return [*command, "-m", spec.entry_module, *training_arguments(spec.training)]


def last_lines(text: str, count: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-count:])
