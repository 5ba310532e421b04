"""PyTorchJob backend: a `kubeflow.org/v1` PyTorchJob (Kubeflow training operator) with a Master and Workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medssr.kube import pytorchjob
from medssr.launch.kubernetes import CustomJobLauncher, KubernetesLauncherConfig


@dataclass
class PyTorchJobLauncherConfig(KubernetesLauncherConfig):
    """Run training as a PyTorchJob (training operator v1)."""

    backend: Literal["pytorchjob"] = field(default="pytorchjob", metadata={"help": "Selects this backend."})
    restart_policy: Literal["OnFailure", "Never", "ExitCode", "Always"] = field(
        default="OnFailure", metadata={"help": "Replica restart policy; restarts resume from the last checkpoint."}
    )
    clean_pod_policy: Literal["None", "Running", "All"] = field(
        default="None", metadata={"help": "Pods kept after the job ends; 'None' keeps them (and their logs) until the job is deleted."}
    )


class PyTorchJobLauncher(CustomJobLauncher):
    backend = "pytorchjob"
    resource = pytorchjob
    job_states = {"Succeeded": "Succeeded", "Failed": "Failed", "Running": "Running", "Restarting": "Running"}
    config: PyTorchJobLauncherConfig

    def __init__(self, config: PyTorchJobLauncherConfig | None = None) -> None:
        super().__init__(config or PyTorchJobLauncherConfig())
