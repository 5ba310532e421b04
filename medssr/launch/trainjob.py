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
    pod_placement,
    resources,
    true_conditions,
    volumes,
)

# The torch runtimes (torch-distributed as shipped) name their trainer replicated job and its container "node".
TRAINER_NODE = "node"
# Owner of our entry in spec.runtimePatches (a list map keyed by manager; Kueue adds its own beside it).
PATCH_MANAGER = "medssr.io/launcher"
# Trainer v2.3 condition types; while none is True the job is pending or running by its jobsStatus.
COMPLETE, FAILED, SUSPENDED = "Complete", "Failed", "Suspended"


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
            "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": self.jobset_patch(spec, labels)}}],
        }
        if self.config.active_deadline_seconds is not None:
            body_spec["activeDeadlineSeconds"] = self.config.active_deadline_seconds
        return {
            "apiVersion": f"{self.group}/{self.version}",
            "kind": self.kind,
            "metadata": {"name": spec.job_name, "namespace": self.config.namespace, "labels": labels},
            "spec": body_spec,
        }

    def jobset_patch(self, spec: JobSpec, labels: dict[str, str]) -> dict[str, Any]:
        """What Trainer v2.3 lets a TrainJob change in its runtime's JobSet: the labels of the JobSet, of the trainer
        Job and its pods, and the trainer pods' volumes, mounts, service account and placement."""
        pod_spec: dict[str, Any] = {}
        pod_volumes, mounts = volumes(spec)
        if pod_volumes:
            pod_spec["volumes"] = pod_volumes
            pod_spec["containers"] = [{"name": TRAINER_NODE, "volumeMounts": mounts}]
        pod_spec.update(pod_placement(self.config))
        pod_template: dict[str, Any] = {"metadata": {"labels": labels}}
        if pod_spec:
            pod_template["spec"] = pod_spec
        trainer_job = {"name": TRAINER_NODE, "template": {"metadata": {"labels": labels}, "spec": {"template": pod_template}}}
        return {"metadata": {"labels": labels}, "spec": {"replicatedJobs": [trainer_job]}}

    def state_of(self, obj: dict[str, Any]) -> JobStatus:
        conditions = true_conditions(obj)
        for condition_type, state in ((FAILED, "Failed"), (COMPLETE, "Succeeded"), (SUSPENDED, "Pending")):
            if condition_type in conditions:
                condition = conditions[condition_type]
                return JobStatus(state, condition.get("reason") or condition_type, condition.get("message") or "")
        # jobsStatus counts the child Jobs of each replicated job; a Job is active while any of its pods runs or waits.
        jobs = (obj.get("status") or {}).get("jobsStatus") or []
        if any((job.get("active") or 0) + (job.get("ready") or 0) > 0 for job in jobs):
            counts = ", ".join(f"{job.get('name')}: {job.get('active') or 0} active, {job.get('ready') or 0} ready" for job in jobs)
            return JobStatus("Running", "", counts)
        return JobStatus("Pending")

    def master_pod_selector(self, name: str) -> str:
        # Rank 0 of the trainer JobSet: the first pod (completion index 0) of its "node" replicated job.
        return (
            f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name={TRAINER_NODE},"
            "batch.kubernetes.io/job-completion-index=0"
        )
