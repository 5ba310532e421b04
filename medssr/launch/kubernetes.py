"""What the PyTorchJob and TrainJob backends share: the API client, create/wait/logs/delete of a custom object,
and reading its conditions. Each backend supplies the object and how to read its state."""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from medssr.cluster import bounded_api_client, standard_labels
from medssr.launch.base import SHM_VOLUME_NAME, JobHandle, JobSpec, JobStatus, last_lines

log = logging.getLogger(__name__)
WATCH_CHUNK_S = 30  # re-list after this long so a silently dropped watch cannot stall a wait
# NCCL (and PyTorch's data-loader workers) exchange tensors through /dev/shm; a container's default is 64 MiB.
SHM_PATH = "/dev/shm"


@dataclass
class KubernetesLauncherConfig:
    """Where and how training jobs are created on a cluster."""

    namespace: str = field(default="default", metadata={"help": "Namespace of the jobs (and of the Secrets and PVCs they use)."})
    kubeconfig: str | None = field(default=None, metadata={"help": "kubeconfig file; None = in-cluster service account, else ~/.kube/config."})
    context: str | None = field(default=None, metadata={"help": "kubeconfig context; None = the current one."})
    service_account_name: str | None = field(default=None, metadata={"help": "Service account of the training pods."})
    image_pull_policy: str = field(default="IfNotPresent", metadata={"help": "imagePullPolicy of the training container."})
    node_selector: dict[str, str] = field(default_factory=dict, metadata={"help": "nodeSelector of the training pods (e.g. a GPU node pool)."})
    tolerations: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "Tolerations of the training pods (Kubernetes Toleration objects)."})
    ttl_seconds_after_finished: int | None = field(default=86400, metadata={"help": "The operator deletes a finished job after this long; None = keep (PyTorchJob; a v2.3 TrainJob has no such field)."})
    active_deadline_seconds: int | None = field(default=None, metadata={"help": "The operator fails a job running longer than this; None = no limit."})
    backoff_limit: int = field(default=3, metadata={"help": "Pod restarts before the job is Failed (PyTorchJob)."})
    on_conflict: Literal["fail", "reuse"] = field(
        default="fail",
        metadata={"help": "A job with this run id and stage exists: 'fail', or 'reuse' it (a retried pipeline step re-attaches)."},
    )
    delete_on_timeout: bool = field(default=True, metadata={"help": "Delete the job when wait() times out (else leave it running)."})
    poll_interval_s: float = field(default=2.0, metadata={"help": "Seconds between pod-log retries while following logs."})
    log_tail_lines: int = field(default=20, metadata={"help": "Master pod log lines quoted in a Failed status."})


def api_client_for(config: KubernetesLauncherConfig):
    """An ApiClient (bounded retries and timeouts) from the kubeconfig, the in-cluster service account, or
    ~/.kube/config (in that order)."""
    from kubernetes import client
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not config.context and not config.kubeconfig:
        kube_config.load_incluster_config(client_configuration=configuration)
    else:
        kube_config.load_kube_config(config_file=config.kubeconfig, context=config.context, client_configuration=configuration)
    return bounded_api_client(configuration)


def job_labels(spec: JobSpec) -> dict[str, str]:
    return {**spec.labels, **standard_labels(spec.run_id, spec.stage, "training")}


def env_list(spec: JobSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in spec.env.items()]
    for item in spec.secret_env:
        ref = {"name": item.secret_name, "key": item.key}
        if item.optional:
            ref["optional"] = True
        env.append({"name": item.name, "valueFrom": {"secretKeyRef": ref}})
    return env


def resources(spec: JobSpec) -> dict[str, dict[str, Any]]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if spec.cpu:
        requests["cpu"] = spec.cpu
    if spec.memory:
        requests["memory"] = limits["memory"] = spec.memory
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = spec.gpus_per_node
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def volumes(spec: JobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container volumeMounts): the spec's PVCs, and a memory-backed /dev/shm when it needs one."""
    pod_volumes = [{"name": v.name, "persistentVolumeClaim": {"claimName": v.claim_name}} for v in spec.volumes]
    mounts = []
    for v in spec.volumes:
        mount: dict[str, Any] = {"name": v.name, "mountPath": v.mount_path}
        if v.read_only:
            mount["readOnly"] = True
        if v.sub_path:
            mount["subPath"] = v.sub_path
        mounts.append(mount)
    if spec.needs_shared_memory:
        empty_dir: dict[str, Any] = {"medium": "Memory"}
        if spec.shm_size:
            empty_dir["sizeLimit"] = spec.shm_size
        pod_volumes.append({"name": SHM_VOLUME_NAME, "emptyDir": empty_dir})
        mounts.append({"name": SHM_VOLUME_NAME, "mountPath": SHM_PATH})
    return pod_volumes, mounts


def pod_placement(config: KubernetesLauncherConfig) -> dict[str, Any]:
    """The pod-spec fields that place a training pod: service account, node selector, tolerations (those set)."""
    placement: dict[str, Any] = {}
    if config.service_account_name:
        placement["serviceAccountName"] = config.service_account_name
    if config.node_selector:
        placement["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        placement["tolerations"] = list(config.tolerations)
    return placement


def true_conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The object's conditions with status True, by type."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conditions if str(c.get("status")) == "True"}


class CustomJobLauncher(ABC):
    """create / wait / logs / delete of one namespaced custom resource kind. Subclasses set the kind and
    implement `build_object`, `state_of` and `master_pod_selector`."""

    backend = ""
    group = version = plural = kind = ""

    def __init__(self, config: KubernetesLauncherConfig) -> None:
        self.config = config

    # The API client is made on first use: building an object (`--dry-run`) needs no cluster or kubeconfig.
    @cached_property
    def api(self):
        return api_client_for(self.config)

    @cached_property
    def custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    @cached_property
    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api)

    # --- what a backend provides ---------------------------------------------------------------------------
    @abstractmethod
    def build_object(self, spec: JobSpec) -> dict[str, Any]:
        ...

    @abstractmethod
    def state_of(self, obj: dict[str, Any]) -> JobStatus:
        ...

    @abstractmethod
    def master_pod_selector(self, name: str) -> str:
        ...

    # --- the contract -------------------------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> JobHandle:
        from kubernetes.client.rest import ApiException

        if not spec.image:
            raise ValueError(f"image: required for the {self.backend} backend")
        body = self.build_object(spec)
        name, namespace = body["metadata"]["name"], self.config.namespace
        try:
            self.custom.create_namespaced_custom_object(self.group, self.version, namespace, self.plural, body)
        except ApiException as error:
            if error.status != 409:
                raise RuntimeError(f"creating {self.kind} {namespace}/{name} failed: {_api_message(error)}") from error
            if self.config.on_conflict != "reuse":
                raise RuntimeError(
                    f"{self.kind} {namespace}/{name} already exists (run {spec.run_id}, stage {spec.stage}); "
                    "delete it, use a new run id, or set on_conflict='reuse'"
                ) from error
            log.info("%s %s/%s exists; re-attaching to it", self.kind, namespace, name)
        return JobHandle(backend=self.backend, name=name, namespace=namespace)

    def get(self, handle: JobHandle) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(self.group, self.version, handle.namespace, self.plural, handle.name)

    def status(self, handle: JobHandle) -> JobStatus:
        return self._with_failure_details(handle, self.state_of(self.get(handle)))

    def wait(self, handle: JobHandle, timeout: float | None = None) -> JobStatus:
        """Watch the object until a final condition appears; a Timeout status after `timeout` seconds."""
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                obj = self.get(handle)
            except ApiException as error:
                if error.status == 404:
                    return JobStatus("Failed", "Deleted", f"{self.kind} {handle.namespace}/{handle.name} no longer exists")
                raise
            status = self.state_of(obj)
            if status.finished:
                return self._with_failure_details(handle, status)
            remaining = WATCH_CHUNK_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return self._timed_out(handle, timeout, status)
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                    self.custom.list_namespaced_custom_object,
                    self.group,
                    self.version,
                    handle.namespace,
                    self.plural,
                    field_selector=f"metadata.name={handle.name}",
                    resource_version=obj["metadata"]["resourceVersion"],
                    timeout_seconds=max(1, int(min(remaining, WATCH_CHUNK_S) + 0.999)),
                ):
                    if event["type"] == "DELETED":
                        return JobStatus("Failed", "Deleted", f"{self.kind} {handle.namespace}/{handle.name} was deleted")
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: re-read and watch again
                    status = self.state_of(event["object"])
                    if status.finished:
                        return self._with_failure_details(handle, status)
                    if deadline is not None and time.monotonic() >= deadline:
                        break
            finally:
                watcher.stop()

    def logs(self, handle: JobHandle, follow: bool = False) -> Iterator[str]:
        """The master pod's log. With `follow`, waits for the pod to run and streams until the job ends."""
        from kubernetes.client.rest import ApiException

        while True:
            pod = self.master_pod(handle)
            if pod is not None:
                name = pod.metadata.name
                try:
                    if not follow:
                        text = self.core.read_namespaced_pod_log(name, handle.namespace)
                        yield from text.splitlines()
                        return
                    response = self.core.read_namespaced_pod_log(name, handle.namespace, follow=True, _preload_content=False)
                    try:
                        for line in response.stream():
                            yield from line.decode(errors="replace").splitlines()
                    finally:
                        response.release_conn()
                    return
                except ApiException as error:
                    if not follow:
                        raise RuntimeError(f"logs of pod {handle.namespace}/{name} unavailable: {_api_message(error)}") from error
            elif not follow:
                return
            if self._finished(handle):
                return
            time.sleep(self.config.poll_interval_s)

    def delete(self, handle: JobHandle) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                self.group,
                self.version,
                handle.namespace,
                self.plural,
                handle.name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )
        except ApiException as error:
            if error.status != 404:
                raise

    # --- helpers ------------------------------------------------------------------------------------------
    def master_pod(self, handle: JobHandle):
        """The job's master (rank 0) pod, or None before the operator created it."""
        pods = self.core.list_namespaced_pod(handle.namespace, label_selector=self.master_pod_selector(handle.name)).items
        return min(pods, key=lambda pod: pod.metadata.name) if pods else None

    def _finished(self, handle: JobHandle) -> bool:
        from kubernetes.client.rest import ApiException

        try:
            return self.state_of(self.get(handle)).finished
        except ApiException as error:
            if error.status == 404:
                return True
            raise

    def _with_failure_details(self, handle: JobHandle, status: JobStatus) -> JobStatus:
        """Add the master pod's last log lines (or why they cannot be read) to a Failed status."""
        if status.state != "Failed":
            return status
        from kubernetes.client.rest import ApiException

        pod = None
        try:
            pod = self.master_pod(handle)
            if pod is None:
                detail = "no master pod found"
            else:
                text = self.core.read_namespaced_pod_log(pod.metadata.name, handle.namespace, tail_lines=self.config.log_tail_lines)
                if text.strip():
                    detail = f"last log lines of pod {pod.metadata.name}:\n{last_lines(text, self.config.log_tail_lines)}"
                else:
                    detail = f"pod {pod.metadata.name} has no log lines ({_pod_state(pod)})"
        except ApiException as error:
            where = f"pod {pod.metadata.name} ({_pod_state(pod)})" if pod else "the master pod"
            detail = f"logs of {where} unavailable: {_api_message(error)}"
        message = f"{status.message}\n{detail}" if status.message else detail
        return JobStatus(status.state, status.reason, message)

    def _timed_out(self, handle: JobHandle, timeout: float | None, last: JobStatus) -> JobStatus:
        if self.config.delete_on_timeout:
            self.delete(handle)
            action = "deleted"
        else:
            action = "left running"
        return JobStatus(
            "Timeout",
            "Timeout",
            f"{self.kind} {handle.namespace}/{handle.name} not finished after {timeout:g} s (last state {last.state}); {action}",
        )


def _pod_state(pod) -> str:
    phase = (pod.status.phase if pod.status else None) or "Unknown"
    return f"phase {phase}" + ("" if pod.spec.node_name else ", not scheduled to a node")


def _api_message(error) -> str:
    """The API server's own message from an ApiException body, else its reason."""
    import json

    try:
        return json.loads(error.body).get("message") or str(error.reason)
    except (TypeError, ValueError, AttributeError):
        return f"{error.status} {error.reason}"
