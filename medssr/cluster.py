"""Kubernetes labels shared by everything medssr creates, the cluster settings of ConfigMap ``medssr-config``,
and the per-run status query behind ``medssr status``.

Every object the system creates (PyTorchJobs, TrainJobs, InferenceServices, their pods) carries
``standard_labels(run_id, stage, component)``, so one label selector finds a whole run:
``kubectl get ... -l medssr.io/run-id=RUN_ID``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medssr.generation import BACKENDS as GENERATION_BACKENDS

RUN_ID_LABEL = "medssr.io/run-id"
STAGE_LABEL = "medssr.io/stage"
COMPONENT_LABEL = "app.kubernetes.io/component"
APP_NAME = "medssr"

# A label value: at most 63 characters, alphanumerics at both ends, '-', '_', '.' inside (or empty).
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class KubeApiSettings:
    """How long a Kubernetes API call waits: urllib3's Retry in the client is the one retry layer (connection
    failures of any call, failed reads of idempotent ones: a create is never re-sent blindly). A stopped API
    server is reported within about 2 s, a silent one after (max_retries + 1) x read_timeout_s."""

    connect_timeout_s: float = field(default=5.0, metadata={"help": "seconds to open a connection to the API server"})
    read_timeout_s: float = field(
        default=12.0, metadata={"help": "seconds a (non-streaming) API call waits for its answer; watches and log streams are bounded by the server"}
    )
    max_retries: int = field(default=3, metadata={"help": "retries of an API call that found no server"})
    backoff_factor: float = field(default=0.5, metadata={"help": "urllib3 backoff between retries: factor x 2**(retry-1) s"})


KUBE_API = KubeApiSettings()
KUBE_API_SETTINGS_TEXT = "medssr.cluster.KubeApiSettings (connect_timeout_s, read_timeout_s, max_retries)"


def bounded_api_client(configuration, settings: KubeApiSettings = KUBE_API):
    """A ``kubernetes.client.ApiClient`` for ``configuration`` whose calls retry and time out as ``settings`` say."""
    import urllib3
    from kubernetes import client

    configuration.retries = urllib3.Retry(total=settings.max_retries, backoff_factor=settings.backoff_factor)
    api = client.ApiClient(configuration)
    request = api.rest_client.request

    # The client has no default timeout (a call to a silent server waits forever): give every call one,
    # except that a stream (watch, followed log) keeps reading as long as the server sends.
    def request_with_timeouts(method, url, *args, _preload_content=True, _request_timeout=None, **kwargs):
        if _request_timeout is None:
            _request_timeout = (settings.connect_timeout_s, settings.read_timeout_s if _preload_content else None)
        return request(method, url, *args, _preload_content=_preload_content, _request_timeout=_request_timeout, **kwargs)

    api.rest_client.request = request_with_timeouts
    return api


def is_kube_unreachable(exc: BaseException) -> bool:
    import urllib3.exceptions

    return isinstance(exc, (urllib3.exceptions.MaxRetryError, urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError))


def kube_reachable(api_client):
    """API calls in this block that find no server answering raise DependencyUnavailable naming it."""
    from medssr.dependencies import reported_unreachable

    return reported_unreachable("Kubernetes API server", api_client.configuration.host, KUBE_API_SETTINGS_TEXT, is_kube_unreachable)


def validate_label_value(value: str, field: str) -> str:
    """Return ``value`` if Kubernetes accepts it as a label value, else raise ValueError naming ``field``."""
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(
            f"{field}={value!r} is not a valid Kubernetes label value "
            "(at most 63 characters: letters, digits, '-', '_', '.', starting and ending alphanumeric)"
        )
    return value


def standard_labels(run_id: str, stage: str, component: str) -> dict[str, str]:
    """The labels every medssr-created object carries.

    ``stage`` is the pipeline stage (e.g. ``train-self``, ``train-supervised``, ``serve``); ``component``
    is the kind of workload (e.g. ``trainer``, ``predictor``).
    """
    return {
        RUN_ID_LABEL: validate_label_value(run_id, "run_id"),
        STAGE_LABEL: validate_label_value(stage, "stage"),
        "app.kubernetes.io/name": APP_NAME,
        COMPONENT_LABEL: validate_label_value(component, "component"),
        "app.kubernetes.io/part-of": APP_NAME,
        "app.kubernetes.io/managed-by": APP_NAME,
    }


def run_selector(run_id: str) -> str:
    """The label selector that finds every object of one run."""
    return f"{RUN_ID_LABEL}={validate_label_value(run_id, 'run_id')}"


def manifest_yaml(obj: Mapping[str, Any]) -> str:
    """An object as YAML for ``kubectl apply -f -`` and for reading: no anchors where it shares a dict (labels), and
    strings a YAML 1.2 reader (kubectl) takes for numbers, e.g. ``1e-06`` in a command, quoted (PyYAML's 1.1 rules
    leave them plain)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    Dumper.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"), list("-+.0123456789")
    )
    return yaml.dump(dict(obj), Dumper=Dumper, sort_keys=False)


# ---------------------------------------------------------------------------------------------------------
# Cluster settings: the ConfigMap medssr-config written by manifests/ (base + overlay), read by pipeline
# steps as environment variables (envFrom) and turned into typed defaults here.


@dataclass(frozen=True)
class WorkloadDefaults:
    """Resources and placement of one kind of workload (training replica or predictor)."""

    gpus: int = field(metadata={"help": "nvidia.com/gpu per pod (0: CPU only)"})
    cpu: str = field(metadata={"help": "CPU request and limit, Kubernetes quantity"})
    memory: str = field(metadata={"help": "memory request and limit, Kubernetes quantity"})
    node_selector: dict[str, str] = field(metadata={"help": "pod nodeSelector"})
    tolerations: list[dict[str, Any]] = field(metadata={"help": "pod tolerations"})

    def resources(self) -> dict[str, dict[str, str]]:
        """A container ``resources`` block (requests == limits, as GPUs require)."""
        amounts = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            amounts["nvidia.com/gpu"] = str(self.gpus)
        return {"requests": dict(amounts), "limits": dict(amounts)}


@dataclass(frozen=True)
class ClusterDefaults:
    """The settings of ConfigMap ``medssr-config`` (see ``manifests/``), typed and checked."""

    namespace: str = field(metadata={"help": "namespace of the install (MEDSSR_NAMESPACE)"})
    mlflow_tracking_uri: str = field(metadata={"help": "in-cluster MLflow server (MLFLOW_TRACKING_URI)"})
    artifact_root: str = field(metadata={"help": "s3:// prefix for run artifacts (MEDSSR_ARTIFACT_ROOT)"})
    s3_endpoint_url: str = field(metadata={"help": "S3 endpoint (AWS_ENDPOINT_URL)"})
    s3_secret: str = field(metadata={"help": "Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (MEDSSR_S3_SECRET)"})
    workspace_pvc: str = field(metadata={"help": "shared scratch PVC (MEDSSR_WORKSPACE_PVC)"})
    predictor_service_account: str = field(
        metadata={"help": "service account of the KServe predictor (MEDSSR_PREDICTOR_SERVICE_ACCOUNT)"}
    )
    device: str = field(metadata={"help": "cuda or cpu (MEDSSR_DEVICE)"})
    generation_backend: str = field(metadata={"help": "vllm, transformers or openai (MEDSSR_GENERATION_BACKEND)"})
    train_workers: int = field(metadata={"help": "PyTorchJob worker replicas besides the master (MEDSSR_TRAIN_WORKERS)"})
    train: WorkloadDefaults = field(metadata={"help": "training pods (MEDSSR_TRAIN_*)"})
    predictor: WorkloadDefaults = field(metadata={"help": "predictor pods (MEDSSR_PREDICTOR_*)"})

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], source: str = "medssr-config") -> ClusterDefaults:
        """Read the settings from the ConfigMap's data (or ``os.environ`` inside a step that loads it
        with envFrom). A missing or malformed key raises ValueError naming the key and ``source``."""

        def text(key: str) -> str:
            value = values.get(key)
            if value is None or not str(value).strip():
                raise ValueError(f"{source}: missing setting {key}")
            return str(value).strip()

        def number(key: str) -> int:
            raw = text(key)
            if not raw.isdigit():
                raise ValueError(f"{source}: {key}={raw!r} is not a non-negative integer")
            return int(raw)

        def parsed(key: str, kind: type) -> Any:
            raw = text(key)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as error:
                raise ValueError(f"{source}: {key} is not JSON ({error.msg})") from None
            if not isinstance(value, kind):
                raise ValueError(f"{source}: {key} must be a JSON {kind.__name__}, got {raw!r}")
            return value

        def workload(prefix: str) -> WorkloadDefaults:
            selector = parsed(f"{prefix}_NODE_SELECTOR", dict)
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
                raise ValueError(f"{source}: {prefix}_NODE_SELECTOR must map strings to strings")
            tolerations = parsed(f"{prefix}_TOLERATIONS", list)
            if not all(isinstance(t, dict) for t in tolerations):
                raise ValueError(f"{source}: {prefix}_TOLERATIONS must be a JSON list of objects")
            return WorkloadDefaults(
                gpus=number(f"{prefix}_GPUS"),
                cpu=text(f"{prefix}_CPU"),
                memory=text(f"{prefix}_MEMORY"),
                node_selector=selector,
                tolerations=tolerations,
            )

        device = text("MEDSSR_DEVICE")
        if device not in {"cuda", "cpu"}:
            raise ValueError(f"{source}: MEDSSR_DEVICE={device!r} must be 'cuda' or 'cpu'")
        backend = text("MEDSSR_GENERATION_BACKEND")
        if backend not in GENERATION_BACKENDS:
            raise ValueError(f"{source}: MEDSSR_GENERATION_BACKEND={backend!r} must be one of {', '.join(GENERATION_BACKENDS)}")
        return cls(
            namespace=text("MEDSSR_NAMESPACE"),
            mlflow_tracking_uri=text("MLFLOW_TRACKING_URI"),
            artifact_root=text("MEDSSR_ARTIFACT_ROOT"),
            s3_endpoint_url=text("AWS_ENDPOINT_URL"),
            s3_secret=text("MEDSSR_S3_SECRET"),
            workspace_pvc=text("MEDSSR_WORKSPACE_PVC"),
            predictor_service_account=text("MEDSSR_PREDICTOR_SERVICE_ACCOUNT"),
            device=device,
            generation_backend=backend,
            train_workers=number("MEDSSR_TRAIN_WORKERS"),
            train=workload("MEDSSR_TRAIN"),
            predictor=workload("MEDSSR_PREDICTOR"),
        )


# ---------------------------------------------------------------------------------------------------------
# Status of one run: its training jobs, InferenceService and pods, as kubectl would show them.

# (kind, group, version, plural) of the custom resources a run creates.
RUN_CUSTOM_RESOURCES = (
    ("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs"),
    ("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    ("InferenceService", "serving.kserve.io", "v1beta1", "inferenceservices"),
)
# Labels the operators put on the pods they create, keyed by the owning kind: pods that lack our run label
# (e.g. from a pod template a launcher did not label) are still found through their owner.
OPERATOR_POD_LABELS = {
    "PyTorchJob": "training.kubeflow.org/job-name",
    "TrainJob": "jobset.sigs.k8s.io/jobset-name",
    "InferenceService": "serving.kserve.io/inferenceservice",
}


@dataclass(frozen=True)
class RunObject:
    """One row of ``medssr status``."""

    kind: str
    name: str
    stage: str
    phase: str
    detail: str
    created: dt.datetime | None


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    namespace: str
    objects: list[RunObject]
    missing_kinds: list[str]  # kinds whose CRD the cluster does not serve


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _true_conditions(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in status.get("conditions") or [] if str(c.get("status")) == "True"]


def _condition_text(condition: Mapping[str, Any]) -> str:
    return ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part)


def pytorchjob_phase(status: Mapping[str, Any]) -> tuple[str, str]:
    """(phase, detail) of a PyTorchJob: the latest true condition (Created, Running, Restarting,
    Succeeded, Failed), as the training operator appends them."""
    conditions = _true_conditions(status)
    for final in ("Failed", "Succeeded"):
        for condition in conditions:
            if condition.get("type") == final:
                return final, _condition_text(condition)
    if not conditions:
        return "Pending", ""
    latest = max(
        enumerate(conditions),
        key=lambda ic: (_parse_time(ic[1].get("lastTransitionTime")) or dt.datetime.min.replace(tzinfo=dt.timezone.utc), ic[0]),
    )[1]
    return str(latest.get("type")), _condition_text(latest)


def trainjob_phase(status: Mapping[str, Any]) -> tuple[str, str]:
    """(phase, detail) of a Trainer v2 TrainJob: Failed / Complete / Suspended conditions, else Running
    while any of its jobs is active, else Created."""
    by_type = {c.get("type"): c for c in _true_conditions(status)}
    for phase in ("Failed", "Complete", "Suspended"):
        if phase in by_type:
            return phase, _condition_text(by_type[phase])
    if any((job.get("active") or 0) > 0 for job in status.get("jobsStatus") or []):
        return "Running", ""
    return "Created", ""


def inferenceservice_phase(status: Mapping[str, Any]) -> tuple[str, str]:
    """(phase, detail) of an InferenceService: Ready with its URL, or NotReady with the first false
    condition's reason."""
    conditions = status.get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is not None and str(ready.get("status")) == "True":
        return "Ready", str(status.get("url") or "")
    if not conditions:
        return "Pending", ""
    failing = next((c for c in conditions if str(c.get("status")) != "True"), ready)
    detail = _condition_text(failing) if failing else ""
    return "NotReady", f"{failing.get('type')}: {detail}" if failing and detail else detail


def pod_phase(status: Mapping[str, Any]) -> tuple[str, str]:
    """(phase, detail) of a pod: its phase, and why a container waits or stopped, with restarts."""
    phase = str(status.get("phase") or "Pending")
    details = []
    restarts = 0
    for container in status.get("containerStatuses") or []:
        restarts += int(container.get("restartCount") or 0)
        state = container.get("state") or {}
        for key in ("waiting", "terminated"):
            reason = (state.get(key) or {}).get("reason")
            if reason and reason != "Completed":
                details.append(f"{container.get('name')}: {reason}")
    if restarts:
        details.append(f"restarts={restarts}")
    return phase, ", ".join(details)


_PHASE_READERS = {
    "PyTorchJob": pytorchjob_phase,
    "TrainJob": trainjob_phase,
    "InferenceService": inferenceservice_phase,
}


def _row(kind: str, item: Mapping[str, Any], phase_reader) -> RunObject:
    metadata = item.get("metadata") or {}
    phase, detail = phase_reader(item.get("status") or {})
    return RunObject(
        kind=kind,
        name=metadata.get("name", ""),
        stage=(metadata.get("labels") or {}).get(STAGE_LABEL, ""),
        phase=phase,
        detail=detail,
        created=_parse_time(metadata.get("creationTimestamp")),
    )


def query_run_status(api_client, run_id: str, namespace: str) -> RunStatus:
    """List the run's training jobs, InferenceService and pods in ``namespace`` (label ``medssr.io/run-id``),
    through ``api_client`` (a ``kubernetes.client.ApiClient``). Kinds whose CRD is not installed are
    reported in ``missing_kinds`` rather than failing the whole query."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    selector = run_selector(run_id)
    custom = client.CustomObjectsApi(api_client)
    objects: list[RunObject] = []
    missing: list[str] = []
    owner_selectors: list[str] = []
    for kind, group, version, plural in RUN_CUSTOM_RESOURCES:
        try:
            listing = custom.list_namespaced_custom_object(group, version, namespace, plural, label_selector=selector)
        except ApiException as error:
            if error.status == 404:
                missing.append(kind)
                continue
            raise
        for item in sorted(listing.get("items", []), key=lambda i: i["metadata"].get("creationTimestamp") or ""):
            objects.append(_row(kind, item, _PHASE_READERS[kind]))
            owner_selectors.append(f"{OPERATOR_POD_LABELS[kind]}={item['metadata']['name']}")

    core = client.CoreV1Api(api_client)
    pods: dict[str, Mapping[str, Any]] = {}
    for pod_selector in [selector, *owner_selectors]:
        listing = core.list_namespaced_pod(namespace, label_selector=pod_selector)
        for pod in api_client.sanitize_for_serialization(listing).get("items", []):
            pods.setdefault(pod["metadata"]["name"], pod)
    for pod in sorted(pods.values(), key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])):
        objects.append(_row("Pod", pod, pod_phase))
    return RunStatus(run_id=run_id, namespace=namespace, objects=objects, missing_kinds=missing)


def human_age(created: dt.datetime | None, now: dt.datetime) -> str:
    """Age in kubectl's style: 45s, 3m20s, 17m, 5h10m, 3d."""
    if created is None:
        return "<unknown>"
    seconds = max(0, int((now - created).total_seconds()))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"


def format_status_table(status: RunStatus, now: dt.datetime | None = None) -> str:
    """The rows as an aligned table (KIND NAME STAGE PHASE AGE DETAIL)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    header = ("KIND", "NAME", "STAGE", "PHASE", "AGE", "DETAIL")
    rows = [
        (o.kind, o.name, o.stage or "-", o.phase, human_age(o.created, now), o.detail or "-") for o in status.objects
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "   " + row[-1]
        for row in [header, *rows]
    )


def kubectl_commands(status: RunStatus) -> list[str]:
    """The kubectl commands that show the same run (and its logs) without medssr."""
    namespace, selector = status.namespace, run_selector(status.run_id)
    # kubectl refuses the whole `get` when one resource type is unknown: list only the served ones.
    types = [plural for kind, _, _, plural in RUN_CUSTOM_RESOURCES if kind not in status.missing_kinds]
    commands = [
        f"kubectl get {','.join([*types, 'pods'])} -n {namespace} -l {selector}",
        f"kubectl logs -n {namespace} -l {selector} --all-containers --prefix --tail=100",
    ]
    for obj in status.objects:
        if obj.kind == "Pod":
            commands.append(f"kubectl logs -n {namespace} {obj.name} --all-containers")
        else:
            commands.append(f"kubectl describe {obj.kind.lower()} {obj.name} -n {namespace}")
    return commands
