"""Cluster settings the compiled pipeline carries (kfp-kubernetes): Secrets and ConfigMap keys as env,
the workspace PVC, GPU type/count and placement of the steps that generate.

They are compile-time settings (read from a YAML file by ``medssr pipeline compile --settings``); the
defaults match ``manifests/`` (ConfigMap ``medssr-config``, Secret ``medssr-s3``, PVC
``medssr-workspace``). Only names of Secrets and keys are written into the pipeline, never values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ConfigMap keys every step reads (MLflow, S3 endpoint, namespace).
COMMON_CONFIG_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MEDSSR_NAMESPACE",
)
# Extra keys of the train step: the training jobs' placement (medssr.cluster.ClusterDefaults).
TRAIN_CONFIG_KEYS = (
    "MEDSSR_ARTIFACT_ROOT",
    "MEDSSR_S3_SECRET",
    "MEDSSR_WORKSPACE_PVC",
    "MEDSSR_PREDICTOR_SERVICE_ACCOUNT",
    "MEDSSR_DEVICE",
    "MEDSSR_GENERATION_BACKEND",
    "MEDSSR_TRAIN_WORKERS",
    *(f"MEDSSR_{kind}_{key}" for kind in ("TRAIN", "PREDICTOR") for key in ("GPUS", "CPU", "MEMORY", "NODE_SELECTOR", "TOLERATIONS")),
)


@dataclass
class ClusterSettings:
    """How the pipeline's pods are wired to the cluster."""

    config_map: str = field(default="medssr-config", metadata={"help": "ConfigMap with the shared settings"})
    s3_secret: str = field(default="medssr-s3", metadata={"help": "Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"})
    s3_secret_keys: list[str] = field(
        default_factory=lambda: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], metadata={"help": "keys of s3_secret, exposed as env of the same name"}
    )
    mlflow_secret: str = field(default="medssr-mlflow", metadata={"help": "optional Secret with MLflow credentials"})
    mlflow_secret_keys: list[str] = field(
        default_factory=lambda: ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"], metadata={"help": "keys of mlflow_secret"}
    )
    workspace_pvc: str = field(default="medssr-workspace", metadata={"help": "PVC shared by the steps and training jobs"})
    workspace_mount: str = field(default="/workspace", metadata={"help": "where the PVC is mounted (the pipeline's workspace default)"})
    gpu_accelerator: str = field(default="nvidia.com/gpu", metadata={"help": "accelerator resource of the generating steps"})
    gpu_count: int = field(default=1, metadata={"help": "GPUs per generating step (labelling, evaluation); 0: CPU"})
    gpu_node_selector: dict[str, str] = field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}, metadata={"help": "nodeSelector of the GPU steps"}
    )
    gpu_tolerations: list[dict[str, Any]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        metadata={"help": "tolerations of the GPU steps"},
    )
    pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/part-of": "medssr"}, metadata={"help": "labels on every step pod"}
    )

    @classmethod
    def from_yaml(cls, path: str | Path) -> ClusterSettings:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of cluster settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown cluster setting(s): {', '.join(unknown)}")
        return cls(**data)
