"""What medssr knows about the cluster, declared once: the install's names (namespace, service accounts, the
ConfigMap, Secrets and workspace PVC: ``ClusterSettings``), where GPU pods go, the container images, and the
settings of ConfigMap ``medssr-config`` (written by ``manifests/``: base + overlay), read by pipeline steps as
environment variables (envFrom) and turned into typed defaults here (``ClusterDefaults``).

``medssr train --launcher``, the pipeline and ``medssr deploy`` take their defaults from this module;
``manifests/`` repeats them as data, and tests/test_manifests.py checks that the two agree.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssr.errors import UserError
from medssr.generation import BACKENDS as GENERATION_BACKENDS
from medssr.kube.labels import APP_NAME, PART_OF_LABEL

NAMESPACE = "medssr"
"""The namespace manifests/base installs into (its medssr-config says it again as MEDSSR_NAMESPACE)."""
PIPELINE_SERVICE_ACCOUNT = "medssr-pipeline"
"""The pipeline steps' account: may create and watch training jobs and InferenceServices in NAMESPACE."""
PREDICTOR_SERVICE_ACCOUNT = "medssr-predictor"
"""The KServe predictor's account, which carries the S3 Secret for the storage initializer."""

DEFAULT_IMAGE = "ghcr.io/medssr/medssr:0.1.0-cpu"
"""The Dockerfile's ``cpu`` target: pipeline steps that do not generate."""
DEFAULT_GPU_IMAGE = "ghcr.io/medssr/medssr:0.1.0-gpu"
"""The Dockerfile's ``gpu`` target: steps that generate and the training jobs."""


def cpu_image() -> str:
    """The CPU image: MEDSSR_IMAGE, else DEFAULT_IMAGE."""
    return os.environ.get("MEDSSR_IMAGE") or DEFAULT_IMAGE


def gpu_image() -> str:
    """The GPU image: MEDSSR_GPU_IMAGE, else DEFAULT_GPU_IMAGE."""
    return os.environ.get("MEDSSR_GPU_IMAGE") or DEFAULT_GPU_IMAGE


@dataclass(frozen=True)
class ClusterSettings:
    """How medssr's pods are wired to the install: the ConfigMap and Secrets they read (names only, never values),
    the workspace PVC, labels, and where GPU pods go. The pipeline's steps take all of it (compile time: ``medssr
    pipeline compile --settings`` reads a YAML file of these fields); training jobs and predictors take the S3 keys,
    the GPU resource and, when ``medssr-config`` gives none, the GPU placement."""

    config_map: str = field(default="medssr-config", metadata={"help": "ConfigMap with the shared settings (ClusterDefaults)"})
    s3_secret: str = field(default="medssr-s3", metadata={"help": "Secret with the S3 keys s3_secret_keys"})
    s3_secret_keys: list[str] = field(
        default_factory=lambda: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], metadata={"help": "keys of s3_secret, exposed as env of the same name"}
    )
    mlflow_secret: str = field(default="medssr-mlflow", metadata={"help": "optional Secret with MLflow credentials"})
    mlflow_secret_keys: list[str] = field(
        default_factory=lambda: ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"], metadata={"help": "keys of mlflow_secret"}
    )
    workspace_pvc: str = field(default="medssr-workspace", metadata={"help": "PVC shared by the steps and training jobs"})
    workspace_mount: str = field(default="/workspace", metadata={"help": "where the PVC is mounted (the pipeline's workspace default)"})
    gpu_accelerator: str = field(
        default="nvidia.com/gpu",
        metadata={"help": "extended resource a GPU pod requests; training jobs and predictors request the default"},
    )
    gpu_count: int = field(default=1, metadata={"help": "GPUs per generating step (labelling, evaluation); 0: CPU"})
    gpu_node_selector: dict[str, str] = field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}, metadata={"help": "nodeSelector of GPU pods"}
    )
    gpu_tolerations: list[dict[str, Any]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        metadata={"help": "tolerations of GPU pods"},
    )
    pod_labels: dict[str, str] = field(default_factory=lambda: {PART_OF_LABEL: APP_NAME}, metadata={"help": "labels on every step pod"})

    @classmethod
    def from_yaml(cls, path: str | Path) -> ClusterSettings:
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of cluster settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown cluster setting(s): {', '.join(unknown)}")
        return cls(**data)

    def gpu_placement(self, gpus: int) -> tuple[dict[str, str], list[dict[str, Any]]]:
        """(nodeSelector, tolerations) of a pod with ``gpus`` GPUs: the GPU nodes' when it has any, else none."""
        return (dict(self.gpu_node_selector), [dict(t) for t in self.gpu_tolerations]) if gpus else ({}, [])


@dataclass(frozen=True)
class WorkloadDefaults:
    """Resources and placement of one kind of workload (training replica or predictor)."""

    gpus: int = field(metadata={"help": "GPUs (ClusterSettings.gpu_accelerator) per pod (0: CPU only)"})
    cpu: str = field(metadata={"help": "CPU request and limit, Kubernetes quantity"})
    memory: str = field(metadata={"help": "memory request and limit, Kubernetes quantity"})
    node_selector: dict[str, str] = field(metadata={"help": "pod nodeSelector"})
    tolerations: list[dict[str, Any]] = field(metadata={"help": "pod tolerations"})


@dataclass(frozen=True)
class ClusterDefaults:
    """The settings of ConfigMap ``medssr-config`` (``ClusterSettings.config_map``; see ``manifests/``), typed and checked."""

    namespace: str = field(metadata={"help": "namespace of the install (MEDSSR_NAMESPACE)"})
    mlflow_tracking_uri: str = field(metadata={"help": "in-cluster MLflow server (MLFLOW_TRACKING_URI)"})
    artifact_root: str = field(metadata={"help": "s3:// prefix for run artifacts (MEDSSR_ARTIFACT_ROOT)"})
    s3_endpoint_url: str = field(metadata={"help": "S3 endpoint (AWS_ENDPOINT_URL)"})
    s3_secret: str = field(metadata={"help": "the install's ClusterSettings.s3_secret (MEDSSR_S3_SECRET)"})
    workspace_pvc: str = field(metadata={"help": "the install's ClusterSettings.workspace_pvc (MEDSSR_WORKSPACE_PVC)"})
    predictor_service_account: str = field(
        metadata={"help": "service account of the KServe predictor (MEDSSR_PREDICTOR_SERVICE_ACCOUNT)"}
    )
    device: str = field(metadata={"help": "cuda or cpu (MEDSSR_DEVICE)"})
    generation_backend: str = field(metadata={"help": "vllm, transformers or openai (MEDSSR_GENERATION_BACKEND)"})
    train_workers: int = field(metadata={"help": "PyTorchJob worker replicas besides the master (MEDSSR_TRAIN_WORKERS)"})
    train: WorkloadDefaults = field(metadata={"help": "training pods (MEDSSR_TRAIN_*)"})
    predictor: WorkloadDefaults = field(metadata={"help": "predictor pods (MEDSSR_PREDICTOR_*)"})

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], source: str = ClusterSettings.config_map) -> ClusterDefaults:
        """Read the settings from the ConfigMap's data (or ``os.environ`` inside a step that loads it
        with envFrom). A missing or malformed key raises UserError naming the key and ``source``."""

        def text(key: str) -> str:
            value = values.get(key)
            if value is None or not str(value).strip():
                raise UserError(f"{source}: missing setting {key}")
            return str(value).strip()

        def number(key: str) -> int:
            raw = text(key)
            if not raw.isdigit():
                raise UserError(f"{source}: {key}={raw!r} is not a non-negative integer")
            return int(raw)

        def parsed(key: str, kind: type) -> Any:
            raw = text(key)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as error:
                raise UserError(f"{source}: {key} is not JSON ({error.msg})") from None
            if not isinstance(value, kind):
                raise UserError(f"{source}: {key} must be a JSON {kind.__name__}, got {raw!r}")
            return value

        def workload(prefix: str) -> WorkloadDefaults:
            selector = parsed(f"{prefix}_NODE_SELECTOR", dict)
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
                raise UserError(f"{source}: {prefix}_NODE_SELECTOR must map strings to strings")
            tolerations = parsed(f"{prefix}_TOLERATIONS", list)
            if not all(isinstance(t, dict) for t in tolerations):
                raise UserError(f"{source}: {prefix}_TOLERATIONS must be a JSON list of objects")
            return WorkloadDefaults(
                gpus=number(f"{prefix}_GPUS"),
                cpu=text(f"{prefix}_CPU"),
                memory=text(f"{prefix}_MEMORY"),
                node_selector=selector,
                tolerations=tolerations,
            )

        device = text("MEDSSR_DEVICE")
        if device not in {"cuda", "cpu"}:
            raise UserError(f"{source}: MEDSSR_DEVICE={device!r} must be 'cuda' or 'cpu'")
        backend = text("MEDSSR_GENERATION_BACKEND")
        if backend not in GENERATION_BACKENDS:
            raise UserError(f"{source}: MEDSSR_GENERATION_BACKEND={backend!r} must be one of {', '.join(GENERATION_BACKENDS)}")
        return cls(
            namespace=text("MEDSSR_NAMESPACE"),
            mlflow_tracking_uri=text("MLFLOW_TRACKING_URI"),
            artifact_root=text("MEDSSR_ARTIFACT_ROOT"),
            s3_endpoint_url=text("AWS_ENDPOINT_URL"),
            s3_secret=text("MEDSSR_S3_SECRET"),
            workspace_pvc=text("MEDSSR_WORKSPACE_PVC"),
            predictor_service_account=text("MEDSSR_PREDICTOR_SERVICE_ACCOUNT"),
            device=device,
            generation_backend=backend,
            train_workers=number("MEDSSR_TRAIN_WORKERS"),
            train=workload("MEDSSR_TRAIN"),
            predictor=workload("MEDSSR_PREDICTOR"),
        )
