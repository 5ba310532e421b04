"""PyTorchJob backend: a `kubeflow.org/v1` PyTorchJob (Kubeflow training operator) with a Master and Workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from medssr.launch.base import JobSpec, JobStatus, torchrun_command
from medssr.launch.kubernetes import (
    CustomJobLauncher,
    KubernetesLauncherConfig,
    env_list,
    job_labels,
    pod_placement,
    resources,
    true_conditions,
    volumes,
)

# The operator only wires up the container with this name (MASTER_ADDR, PET_* rendezvous settings).
CONTAINER_NAME = "pytorch"


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
    group, version, plural, kind = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
    config: PyTorchJobLauncherConfig

    def __init__(self, config: PyTorchJobLauncherConfig | None = None) -> None:
        super().__init__(config or PyTorchJobLauncherConfig())

    def build_object(self, spec: JobSpec) -> dict[str, Any]:
        labels = job_labels(spec)
        pod_volumes, mounts = volumes(spec)
        container: dict[str, Any] = {
            "name": CONTAINER_NAME,
            "image": spec.image,
            "imagePullPolicy": self.config.image_pull_policy,
            "command": torchrun_command(spec),
            "env": env_list(spec),
        }
        if res := resources(spec):
            container["resources"] = res
        if mounts:
            container["volumeMounts"] = mounts
        pod_spec: dict[str, Any] = {"containers": [container]}
        if pod_volumes:
            pod_spec["volumes"] = pod_volumes
        pod_spec.update(pod_placement(self.config))

        def replica(count: int) -> dict[str, Any]:
            return {
                "replicas": count,
                "restartPolicy": self.config.restart_policy,
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            }

        replica_specs = {"Master": replica(1)}
        if spec.num_workers:
            replica_specs["Worker"] = replica(spec.num_workers)
        run_policy: dict[str, Any] = {"cleanPodPolicy": self.config.clean_pod_policy, "backoffLimit": self.config.backoff_limit}
        if self.config.ttl_seconds_after_finished is not None:
            run_policy["ttlSecondsAfterFinished"] = self.config.ttl_seconds_after_finished
        if self.config.active_deadline_seconds is not None:
            run_policy["activeDeadlineSeconds"] = self.config.active_deadline_seconds
        return {
            "apiVersion": f"{self.group}/{self.version}",
            "kind": self.kind,
            "metadata": {"name": spec.job_name, "namespace": self.config.namespace, "labels": labels},
            "spec": {"nprocPerNode": str(spec.nproc_per_node), "pytorchReplicaSpecs": replica_specs, "runPolicy": run_policy},
        }

    def state_of(self, obj: dict[str, Any]) -> JobStatus:
        conditions = true_conditions(obj)
        for state in ("Succeeded", "Failed"):
            if state in conditions:
                condition = conditions[state]
                return JobStatus(state, condition.get("reason") or state, condition.get("message") or "")
        if "Running" in conditions:
            return JobStatus("Running", conditions["Running"].get("reason") or "", conditions["Running"].get("message") or "")
        return JobStatus("Pending")

    def master_pod_selector(self, name: str) -> str:
        return f"training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master"
