"""TrainJob backend: a Kubeflow Trainer v2 `trainer.kubeflow.org/v1alpha1` TrainJob on a torch runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from medssr.launch.base import JobSpec, JobStatus, torchrun_command
from medssr.launch.kubernetes import (
    CustomJobLauncher,
    KubernetesLauncherConfig,
    env_list,
    job_labels,
    resources,
    true_conditions,
    volumes,
)

# The torch runtimes name their trainer replicated job (and its container) "node".
TRAINER_NODE = "node"


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
    group, version, plural, kind = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
    config: TrainJobLauncherConfig

    def __init__(self, config: TrainJobLauncherConfig | None = None) -> None:
        super().__init__(config or TrainJobLauncherConfig())

    def build_object(self, spec: JobSpec) -> dict[str, Any]:
        labels = job_labels(spec)
        trainer: dict[str, Any] = {
            "image": spec.image,
            "command": torchrun_command(spec),
            "env": env_list(spec),
            "numNodes": spec.num_nodes,
            "numProcPerNode": spec.nproc_per_node,
        }
        if res := resources(spec):
            trainer["resourcesPerNode"] = res
        body_spec: dict[str, Any] = {
            "runtimeRef": {"name": self.config.runtime_name, "apiGroup": self.group, "kind": self.config.runtime_kind},
            "trainer": trainer,
            "labels": labels,  # carried onto the JobSet, its Jobs and pods
        }
        override: dict[str, Any] = {}
        pod_volumes, mounts = volumes(spec)
        if pod_volumes:
            override["volumes"] = pod_volumes
            override["containers"] = [{"name": TRAINER_NODE, "volumeMounts": mounts}]
        if self.config.service_account_name:
            override["serviceAccountName"] = self.config.service_account_name
        if self.config.node_selector:
            override["nodeSelector"] = dict(self.config.node_selector)
        if self.config.tolerations:
            override["tolerations"] = list(self.config.tolerations)
        if override:
            body_spec["podSpecOverrides"] = [{"targetJobs": [{"name": TRAINER_NODE}], **override}]
        return {
            "apiVersion": f"{self.group}/{self.version}",
            "kind": self.kind,
            "metadata": {"name": spec.job_name, "namespace": self.config.namespace, "labels": labels},
            "spec": body_spec,
        }

    def state_of(self, obj: dict[str, Any]) -> JobStatus:
        conditions = true_conditions(obj)
        if "Complete" in conditions:
            condition = conditions["Complete"]
            return JobStatus("Succeeded", condition.get("reason") or "Complete", condition.get("message") or "")
        if "Failed" in conditions:
            condition = conditions["Failed"]
            return JobStatus("Failed", condition.get("reason") or "Failed", condition.get("message") or "")
        jobs = (obj.get("status") or {}).get("jobsStatus") or []
        if any((job.get("active") or 0) > 0 for job in jobs):
            return JobStatus("Running")
        return JobStatus("Pending")

    def master_pod_selector(self, name: str) -> str:
        # Rank 0 of the trainer JobSet: the first pod (completion index 0) of its "node" replicated job.
        return (
            f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name={TRAINER_NODE},"
            "batch.kubernetes.io/job-completion-index=0"
        )
