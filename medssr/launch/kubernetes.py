"""What the PyTorchJob and TrainJob backends share: create/wait/logs/delete of a custom object through the one API
client of ``medssr.kube``. Each backend names its kind's module (group/version/plural, object builder, state
reader) and how the kind's phases map onto the launcher's job states."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from medssr.errors import UserError
from medssr.kube import client as kube_client
from medssr.kube.labels import standard_labels
from medssr.launch.base import FINAL_STATES, JobHandle, JobSpec, JobState, JobStatus, last_lines, torchrun_command

log = logging.getLogger(__name__)
WATCH_CHUNK_S = 30  # re-list after this long so a silently dropped watch cannot stall a wait


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
    ttl_seconds_after_finished: int | None = field(
        default=86400,
        metadata={"help": "The operator deletes a finished job after this long; None = keep (PyTorchJob; a v2.3 TrainJob has no such "
                           "field)."},
    )
    active_deadline_seconds: int | None = field(default=None, metadata={"help": "The operator fails a job running longer than this; None = no limit."})
    backoff_limit: int = field(default=3, metadata={"help": "Pod restarts before the job is Failed (PyTorchJob)."})
    on_conflict: Literal["fail", "reuse"] = field(
        default="fail",
        metadata={"help": "A job with this run id and stage exists: 'fail', or 'reuse' it (a retried pipeline step re-attaches)."},
    )
    delete_on_timeout: bool = field(default=True, metadata={"help": "Delete the job when wait() times out (else leave it running)."})
    poll_interval_s: float = field(default=2.0, metadata={"help": "Seconds between pod-log retries while following logs."})
    api_outage_s: float = field(
        default=300.0,
        metadata={"help": "Seconds wait() rides out an API server that stopped answering (a control-plane restart) "
                          "before it reports it; each call's own retries are medssr.kube.client.KubeApiSettings."},
    )
    log_tail_lines: int = field(default=20, metadata={"help": "Master pod log lines quoted in a Failed status."})


class ApiOutage:
    """How long the API server has not answered a waiting launcher: an error that is not a connection failure, or
    an outage longer than ``limit_s``, is raised; anything shorter is announced and waited out."""

    def __init__(self, api, limit_s: float):
        from medssr.dependencies import Dependency

        self.dependency = Dependency("Kubernetes API server", api.configuration.host, "KubernetesLauncherConfig.api_outage_s "
                                     f"({limit_s:g} s) and {kube_client.KUBE_API_SETTINGS_TEXT}")
        self.limit_s = limit_s
        self.since: float | None = None

    def ride_out(self, error: Exception, pause_s: float) -> None:
        from medssr.dependencies import announce_outage, short_cause

        if not kube_client.is_unreachable(error):
            raise error
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        if now - self.since > self.limit_s:
            raise error
        announce_outage(self.dependency, short_cause(error), now - self.since, self.limit_s)
        time.sleep(pause_s)

    def over(self) -> None:
        if self.since is not None:
            log.info("the Kubernetes API server answers again after %.0f s", time.monotonic() - self.since)
        self.since = None


def job_labels(spec: JobSpec) -> dict[str, str]:
    return {**spec.labels, **standard_labels(spec.run_id, spec.stage, "training")}


class CustomJobLauncher:
    """create / wait / logs / delete of one namespaced custom resource kind. Subclasses set `resource` (the kind's
    module in ``medssr.kube``) and `job_states` (its phases that are not Pending, as launcher states)."""

    backend = ""
    resource: Any = None
    job_states: dict[str, JobState] = {}

    def __init__(self, config: KubernetesLauncherConfig) -> None:
        self.config = config
        self.group, self.version, self.plural, self.kind = self.resource.GROUP, self.resource.VERSION, self.resource.PLURAL, self.resource.KIND

    # The API client is made on first use: building an object (`--dry-run`) needs no cluster or kubeconfig.
    @cached_property
    def api(self):
        return kube_client.api_client(self.config.kubeconfig, self.config.context)

    @cached_property
    def custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    @cached_property
    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def build_object(self, spec: JobSpec) -> dict[str, Any]:
        return self.resource.build(spec, self.config, torchrun_command(spec), job_labels(spec))

    def state_of(self, obj: dict[str, Any]) -> JobStatus:
        state = self.resource.state(obj)
        job_state = self.job_states.get(state.phase, "Pending")
        reason = state.reason or (state.phase if job_state in FINAL_STATES else "")
        return JobStatus(job_state, reason, state.message)

    # --- the contract -------------------------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> JobHandle:
        from kubernetes.client.rest import ApiException

        if not spec.image:
            raise UserError(f"image: required for the {self.backend} backend")
        body = self.build_object(spec)
        name, namespace = body["metadata"]["name"], self.config.namespace
        try:
            self.custom.create_namespaced_custom_object(self.group, self.version, namespace, self.plural, body)
        except ApiException as error:
            if error.status != 409:
                raise RuntimeError(f"creating {self.kind} {namespace}/{name} failed: {kube_client.api_message(error)}") from error
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
        outage = ApiOutage(self.api, self.config.api_outage_s)
        while True:
            try:
                obj = self.get(handle)
            except ApiException as error:
                if error.status == 404:
                    return JobStatus("Failed", "Deleted", f"{self.kind} {handle.namespace}/{handle.name} no longer exists")
                raise
            except Exception as error:
                outage.ride_out(error, self.config.poll_interval_s)
                continue
            outage.over()
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
            except Exception as error:  # the server went away mid-watch: read the object again once it is back
                outage.ride_out(error, 0.0)
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
                        raise RuntimeError(f"logs of pod {handle.namespace}/{name} unavailable: {kube_client.api_message(error)}") from error
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
        pods = self.core.list_namespaced_pod(handle.namespace, label_selector=self.resource.master_pod_selector(handle.name)).items
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
            detail = f"logs of {where} unavailable: {kube_client.api_message(error)}"
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
