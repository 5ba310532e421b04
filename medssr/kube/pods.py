"""The pieces of a pod that medssr sets, whichever kind wraps the pod (PyTorchJob replica, TrainJob node,
InferenceService predictor): resources, environment, volumes, placement; and a pod's own state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from medssr.cluster import ClusterSettings
from medssr.kube.conditions import ObjectState, status_of

SHM_VOLUME_NAME = "dshm"
# NCCL (and PyTorch's data-loader workers) exchange tensors through /dev/shm; a container's default is 64 MiB.
SHM_PATH = "/dev/shm"


def resources(cpu: str | None = None, memory: str | None = None, gpus: int = 0, *, cap_cpu: bool = True) -> dict[str, dict[str, str]]:
    """A container ``resources`` block: what is given is requested; memory and GPUs are also the limit (the
    scheduler needs a GPU's limit to equal its request), CPU only when ``cap_cpu`` (a capped CPU is throttled,
    which training processes, unlike a predictor, should not be)."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if cpu:
        requests["cpu"] = str(cpu)
        if cap_cpu:
            limits["cpu"] = str(cpu)
    if memory:
        requests["memory"] = limits["memory"] = str(memory)
    if gpus:
        gpu = ClusterSettings.gpu_accelerator  # its default: training jobs and predictors have no settings file
        requests[gpu] = limits[gpu] = str(gpus)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def env(plain: Mapping[str, str], secrets: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """Container ``env``: plain values, then variables read from Secrets (``medssr.launch.SecretEnvVar``: names only)."""
    variables: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in plain.items()]
    for item in secrets:
        ref = {"name": item.secret_name, "key": item.key}
        if item.optional:
            ref["optional"] = True
        variables.append({"name": item.name, "valueFrom": {"secretKeyRef": ref}})
    return variables


def volumes(claims: Iterable[Any], shared_memory: bool = False, shm_size: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container volumeMounts): PVCs (``medssr.launch.VolumeMount``), and a memory-backed /dev/shm
    when ``shared_memory``."""
    claims = list(claims)
    pod_volumes = [{"name": v.name, "persistentVolumeClaim": {"claimName": v.claim_name}} for v in claims]
    mounts = []
    for v in claims:
        mount: dict[str, Any] = {"name": v.name, "mountPath": v.mount_path}
        if v.read_only:
            mount["readOnly"] = True
        if v.sub_path:
            mount["subPath"] = v.sub_path
        mounts.append(mount)
    if shared_memory:
        empty_dir: dict[str, Any] = {"medium": "Memory"}
        if shm_size:
            empty_dir["sizeLimit"] = shm_size
        pod_volumes.append({"name": SHM_VOLUME_NAME, "emptyDir": empty_dir})
        mounts.append({"name": SHM_VOLUME_NAME, "mountPath": SHM_PATH})
    return pod_volumes, mounts


def placement(
    service_account: str | None = None, node_selector: Mapping[str, str] | None = None, tolerations: Iterable[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The pod-spec fields that place a pod: service account, node selector, tolerations (those set)."""
    fields: dict[str, Any] = {}
    if service_account:
        fields["serviceAccountName"] = service_account
    if node_selector:
        fields["nodeSelector"] = dict(node_selector)
    if tolerations:
        fields["tolerations"] = list(tolerations)
    return fields


def state(pod: Mapping[str, Any]) -> ObjectState:
    """A pod's phase, and why a container waits or stopped, with restarts."""
    status = status_of(pod)
    details = []
    restarts = 0
    for container in status.get("containerStatuses") or []:
        restarts += int(container.get("restartCount") or 0)
        container_state = container.get("state") or {}
        for key in ("waiting", "terminated"):
            reason = (container_state.get(key) or {}).get("reason")
            if reason and reason != "Completed":
                details.append(f"{container.get('name')}: {reason}")
    if restarts:
        details.append(f"restarts={restarts}")
    return ObjectState(str(status.get("phase") or "Pending"), "", ", ".join(details))
