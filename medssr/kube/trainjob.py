"""TrainJob, ``trainer.kubeflow.org/v1alpha1`` (Kubeflow Trainer v2.3) on a torch training runtime."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medssr.kube import pods
from medssr.kube.conditions import ObjectState, state_from, status_of, true_conditions
from medssr.kube.manifests import custom_object

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
# The torch runtimes (torch-distributed as shipped) name their trainer replicated job and its container "node".
TRAINER_NODE = "node"
# Owner of our entry in spec.runtimePatches (a list map keyed by manager; Kueue adds its own beside it).
PATCH_MANAGER = "medssr.io/launcher"
# Label JobSet puts on the pods of a TrainJob (finds pods we did not label).
POD_OWNER_LABEL = "jobset.sigs.k8s.io/jobset-name"
# Trainer v2.3 condition types; while none is True the job is created or running by its jobsStatus.
COMPLETE, FAILED, SUSPENDED = "Complete", "Failed", "Suspended"


def build(spec, config, command: list[str], labels: Mapping[str, str]) -> dict[str, Any]:
    """The TrainJob of a ``medssr.launch.JobSpec`` under a ``TrainJobLauncherConfig``: ``num_nodes`` nodes on the
    config's runtime, each running ``command``."""
    labels = dict(labels)
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": command,
        "env": pods.env(spec.env, spec.secret_env),
        "numNodes": spec.num_nodes,
        "numProcPerNode": spec.nproc_per_node,
    }
    if resources := pods.resources(spec.cpu, spec.memory, spec.gpus_per_node, cap_cpu=False):
        trainer["resourcesPerNode"] = resources
    body_spec: dict[str, Any] = {
        "runtimeRef": {"name": config.runtime_name, "apiGroup": GROUP, "kind": config.runtime_kind},
        "trainer": trainer,
        "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": jobset_patch(spec, config, labels)}}],
    }
    if config.active_deadline_seconds is not None:
        body_spec["activeDeadlineSeconds"] = config.active_deadline_seconds
    return custom_object(GROUP, VERSION, KIND, spec.job_name, config.namespace, labels, body_spec)


def jobset_patch(spec, config, labels: dict[str, str]) -> dict[str, Any]:
    """What Trainer v2.3 lets a TrainJob change in its runtime's JobSet: the labels of the JobSet, of the trainer
    Job and its pods, and the trainer pods' volumes, mounts, service account and placement."""
    pod_spec: dict[str, Any] = {}
    pod_volumes, mounts = pods.volumes(spec.volumes, spec.needs_shared_memory, spec.shm_size)
    if pod_volumes:
        pod_spec["volumes"] = pod_volumes
        pod_spec["containers"] = [{"name": TRAINER_NODE, "volumeMounts": mounts}]
    pod_spec.update(pods.placement(config.service_account_name, config.node_selector, config.tolerations))
    pod_template: dict[str, Any] = {"metadata": {"labels": labels}}
    if pod_spec:
        pod_template["spec"] = pod_spec
    trainer_job = {"name": TRAINER_NODE, "template": {"metadata": {"labels": labels}, "spec": {"template": pod_template}}}
    return {"metadata": {"labels": labels}, "spec": {"replicatedJobs": [trainer_job]}}


def state(job: Mapping[str, Any]) -> ObjectState:
    """Failed, Complete or Suspended by its true condition; else Running while a child Job has pods active or
    ready (with their counts), else Created."""
    conditions = true_conditions(job)
    for phase in (FAILED, COMPLETE, SUSPENDED):
        if phase in conditions:
            return state_from(phase, conditions[phase])
    # jobsStatus counts the child Jobs of each replicated job; a Job is active while any of its pods runs or waits.
    jobs = status_of(job).get("jobsStatus") or []
    if any((job_status.get("active") or 0) + (job_status.get("ready") or 0) > 0 for job_status in jobs):
        counts = ", ".join(f"{j.get('name')}: {j.get('active') or 0} active, {j.get('ready') or 0} ready" for j in jobs)
        return ObjectState("Running", "", counts)
    return ObjectState("Created")


def master_pod_selector(name: str) -> str:
    # Rank 0 of the trainer JobSet: the first pod (completion index 0) of its "node" replicated job.
    return f"{POD_OWNER_LABEL}={name},jobset.sigs.k8s.io/replicatedjob-name={TRAINER_NODE},batch.kubernetes.io/job-completion-index=0"
