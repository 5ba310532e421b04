"""PyTorchJob, ``kubeflow.org/v1`` (Kubeflow training operator): a Master and Workers running torchrun."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from medssr.kube import pods
from medssr.kube.conditions import ObjectState, parse_time, state_from, true_conditions
from medssr.kube.manifests import custom_object

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
# The operator only wires up the container with this name (MASTER_ADDR, PET_* rendezvous settings).
CONTAINER_NAME = "pytorch"
# Labels the operator puts on the pods it creates (the first names the job, for pods we did not label).
POD_OWNER_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
FINAL_PHASES = ("Failed", "Succeeded")


def build(spec, config, command: list[str], labels: Mapping[str, str]) -> dict[str, Any]:
    """The PyTorchJob of a ``medssr.launch.JobSpec`` under a ``PyTorchJobLauncherConfig``: one Master, ``num_workers``
    Workers, each pod running ``command``."""
    labels = dict(labels)
    pod_volumes, mounts = pods.volumes(spec.volumes, spec.needs_shared_memory, spec.shm_size)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "env": pods.env(spec.env, spec.secret_env),
    }
    if resources := pods.resources(spec.cpu, spec.memory, spec.gpus_per_node, cap_cpu=False):
        container["resources"] = resources
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {"containers": [container]}
    if pod_volumes:
        pod_spec["volumes"] = pod_volumes
    pod_spec.update(pods.placement(config.service_account_name, config.node_selector, config.tolerations))

    def replica(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": config.restart_policy, "template": {"metadata": {"labels": labels}, "spec": pod_spec}}

    replica_specs = {"Master": replica(1)}
    if spec.num_workers:
        replica_specs["Worker"] = replica(spec.num_workers)
    run_policy: dict[str, Any] = {"cleanPodPolicy": config.clean_pod_policy, "backoffLimit": config.backoff_limit}
    if config.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
    if config.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = config.active_deadline_seconds
    body = {"nprocPerNode": str(spec.nproc_per_node), "pytorchReplicaSpecs": replica_specs, "runPolicy": run_policy}
    return custom_object(GROUP, VERSION, KIND, spec.job_name, config.namespace, labels, body)


def state(job: Mapping[str, Any]) -> ObjectState:
    """A final condition (Failed, Succeeded) if one is true, else the latest true one (Created, Running,
    Restarting) as the operator appends them, else Pending."""
    conditions = true_conditions(job)
    for final in FINAL_PHASES:
        if final in conditions:
            return state_from(final, conditions[final])
    if not conditions:
        return ObjectState("Pending")
    never = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    ordered = list(conditions.values())
    latest = max(enumerate(ordered), key=lambda ic: (parse_time(ic[1].get("lastTransitionTime")) or never, ic[0]))[1]
    return state_from(str(latest.get("type")), latest)


def master_pod_selector(name: str) -> str:
    return f"{POD_OWNER_LABEL}={name},{REPLICA_TYPE_LABEL}=master"
