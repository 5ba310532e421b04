"""TrainJob backend: a Kubeflow Trainer v2 `trainer.kubeflow.org/v1alpha1` TrainJob on a torch runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medssr.kube import trainjob
from medssr.launch.kubernetes import CustomJobLauncher, KubernetesLauncherConfig


@dataclass
class TrainJobLauncherConfig(KubernetesLauncherConfig):
    """Run training as a TrainJob (Kubeflow Trainer v2)."""

    backend: Literal["trainjob"] = field(default="trainjob", metadata={"help": "Selects this backend."})
    runtime_name: str = field(default="torch-distributed", metadata={"help": "Training runtime the job runs on."})
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = field(
        default="ClusterTrainingRuntime", metadata={"help": "Cluster-wide runtime, or one in the job's namespace."}
    )


class TrainJobLauncher(CustomJobLauncher):
    backend = "trainjob"
    resource = trainjob
    # Suspended (e.g. while Kueue holds the job) and Created are Pending.
    job_states = {"Complete": "Succeeded", "Failed": "Failed", "Running": "Running"}
    config: TrainJobLauncherConfig

    def __init__(self, config: TrainJobLauncherConfig | None = None) -> None:
        super().__init__(config or TrainJobLauncherConfig())
