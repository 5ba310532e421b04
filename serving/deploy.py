"""Deploy a registered model as a KServe InferenceService (Hugging Face runtime, vLLM backend).

``storageUri`` is the model version's own S3 location, resolved through the MLflow registry
(KServe's storage initializer has no ``models:/`` scheme); the predictor runs under the service
account that carries the S3 Secret (``medssr-predictor`` in ``manifests/``). ``run_deploy`` creates
the object or patches it, then waits for ``Ready`` and reports the failing condition when it is not.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from medssr.cluster import standard_labels

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
# Schemes KServe's storage initializer downloads from; anything else (models:/, runs:/, mlflow-artifacts:,
# a local path) means the model was resolved to something a pod cannot fetch.
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "hf://", "https://", "oci://")
MODEL_REF = re.compile(r"^(?:models:/)?(?P<name>[^/@\s]+)(?:@(?P<alias>[\w\-]+)|/(?P<version>\d+))?$")
# KServe derives longer names (NAME-predictor-...) from this one; keep room for its suffixes.
MAX_NAME_LENGTH = 45
# KServe reports these model transition states when a load failed for good: waiting longer is pointless.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


class DeployError(RuntimeError):
    """The InferenceService was not Ready in time, or KServe reported that it failed."""


@dataclass
class DeployConfig:
    """Which registered model to serve, where, on what resources."""

    model: str = field(metadata={"help": "Registered model: NAME[@ALIAS] (alias default: champion), NAME/VERSION or models:/..."})
    namespace: str = field(default="medssr", metadata={"help": "Namespace of the InferenceService."})
    name: str = field(default="", metadata={"help": "InferenceService name; default: derived from the model name."})
    storage_uri: str = field(
        default="", metadata={"help": "Model folder URI (s3://...); default: the version's location in MLflow."}
    )
    tracking_uri: str = field(default="", metadata={"help": "MLflow tracking URI; default: MLFLOW_TRACKING_URI."})
    artifacts_destination: str = field(
        default="",
        metadata={"help": "The MLflow server's --artifacts-destination (s3://...), to map proxied artifact "
                          "locations; default: MLFLOW_ARTIFACTS_DESTINATION."},
    )
    run_id: str = field(default="manual", metadata={"help": "Pipeline run id, for the medssr.io/run-id label."})
    service_account: str = field(
        default="medssr-predictor", metadata={"help": "Service account bound to the S3 Secret."}
    )
    runtime: str = field(default="", metadata={"help": "ServingRuntime name; empty lets KServe pick by modelFormat."})
    backend: str = field(
        default="", metadata={"help": "Hugging Face runtime backend: vllm (GPU) or huggingface; empty: vllm with GPUs."}
    )
    gpus: int = field(default=1, metadata={"help": "nvidia.com/gpu per replica."})
    cpu: str = field(default="4", metadata={"help": "CPU request and limit."})
    memory: str = field(default="32Gi", metadata={"help": "Memory request and limit."})
    max_model_len: int = field(default=4096, metadata={"help": "vLLM context length (prompt + completion)."})
    dtype: str = field(default="bfloat16", metadata={"help": "Weights dtype in the runtime."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "Share of GPU memory vLLM may use."})
    min_replicas: int = field(default=1, metadata={"help": "Fewest replicas (0 allows scale to zero)."})
    max_replicas: int = field(default=1, metadata={"help": "Most replicas."})
    node_selector: dict[str, str] = field(default_factory=dict, metadata={"help": "Predictor pod nodeSelector."})
    tolerations: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "Predictor pod tolerations."})
    deployment_mode: str = field(
        default="", metadata={"help": "serving.kserve.io/deploymentMode (RawDeployment, Serverless); empty: cluster default."}
    )
    kubeconfig: str = field(default="", metadata={"help": "Kubeconfig file; empty: in-cluster, else ~/.kube/config."})
    context: str = field(default="", metadata={"help": "Kubeconfig context; empty: the current one."})
    wait: bool = field(default=True, metadata={"help": "Wait until the InferenceService is Ready."})
    timeout_s: float = field(default=900.0, metadata={"help": "How long to wait for Ready."})
    poll_s: float = field(default=2.0, metadata={"help": "Seconds between status checks."})

    def __post_init__(self):
        if not MODEL_REF.match(self.model or ""):
            raise ValueError(f"model: {self.model!r} is not NAME, NAME@ALIAS, NAME/VERSION or models:/NAME@ALIAS")
        if not self.backend:
            self.backend = "vllm" if self.gpus else "huggingface"
        if self.backend not in ("vllm", "huggingface"):
            raise ValueError(f"backend must be vllm or huggingface, not {self.backend!r}")
        if self.backend == "vllm" and self.gpus < 1:
            raise ValueError("gpus: the vllm backend needs at least one GPU (use backend=huggingface on CPU)")
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError("replicas: need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.storage_uri:
            check_storage_uri(self.storage_uri)

    @property
    def registry_reference(self) -> str:
        """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (alias ``champion`` when none is given)."""
        match = MODEL_REF.match(self.model)
        if match["version"]:
            return f"models:/{match['name']}/{match['version']}"
        return f"models:/{match['name']}@{match['alias'] or 'champion'}"

    @property
    def service_name(self) -> str:
        return self.name or dns_name(MODEL_REF.match(self.model)["name"])

    def with_cluster_defaults(self, defaults) -> DeployConfig:
        """This config with resources, placement and service account from ``medssr.cluster.ClusterDefaults``."""
        from dataclasses import replace

        workload = defaults.predictor
        return replace(
            self,
            service_account=defaults.predictor_service_account,
            gpus=workload.gpus,
            cpu=workload.cpu,
            memory=workload.memory,
            node_selector=dict(workload.node_selector),
            tolerations=list(workload.tolerations),
            backend="",  # chosen again from the GPU count
        )


@dataclass
class DeployResult:
    name: str
    namespace: str
    url: str
    ready: bool
    storage_uri: str
    created: bool


def dns_name(text: str) -> str:
    """A DNS-1035 label (what KServe requires of a name): lower case, digits and '-', a letter first."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    return name[:MAX_NAME_LENGTH].rstrip("-")


def check_storage_uri(uri: str) -> str:
    if not uri.startswith(STORAGE_SCHEMES):
        raise ValueError(
            f"storage URI {uri!r} cannot be fetched by KServe's storage initializer "
            f"(needs one of {', '.join(STORAGE_SCHEMES)}); register the model with S3 artifacts or pass --storage-uri"
        )
    return uri


def resolve_storage_uri(config: DeployConfig) -> str:
    """The model version's folder as an S3 (or other fetchable) URI, from the MLflow registry."""
    if config.storage_uri:
        return check_storage_uri(config.storage_uri)
    from medssr import tracking

    tracker = tracking.Tracker(tracking.TrackingConfig(tracking_uri=config.tracking_uri))
    version = tracking.get_model_version(tracker, config.registry_reference)
    location = tracking.version_location(tracker, version)
    if location.startswith("mlflow-artifacts:"):
        # Proxied artifacts live under the tracking server's --artifacts-destination.
        destination = (
            config.artifacts_destination
            or os.environ.get("MLFLOW_ARTIFACTS_DESTINATION")
            or os.environ.get("MEDSSR_MLFLOW_ARTIFACTS_DESTINATION", "")
        )
        if destination:
            path = re.sub(r"^mlflow-artifacts:(//[^/]*)?", "", location)
            location = f"{destination.rstrip('/')}/{path.lstrip('/')}"
    try:
        return check_storage_uri(location)
    except ValueError as exc:
        raise ValueError(f"{config.registry_reference} (version {version.version}): {exc}") from None


def render_inference_service(config: DeployConfig, storage_uri: str) -> dict[str, Any]:
    """The InferenceService manifest (a dict ready for the API or ``yaml.safe_dump``)."""
    name = config.service_name
    amounts = {"cpu": config.cpu, "memory": config.memory}
    if config.gpus:
        amounts["nvidia.com/gpu"] = str(config.gpus)
    args = [f"--model_name={name}", f"--backend={config.backend}", f"--dtype={config.dtype}"]
    if config.backend == "vllm":
        args += [f"--max-model-len={config.max_model_len}", f"--gpu-memory-utilization={config.gpu_memory_utilization}"]
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "storageUri": check_storage_uri(storage_uri),
        "args": args,
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
    }
    if config.runtime:
        model["runtime"] = config.runtime
    predictor: dict[str, Any] = {
        "serviceAccountName": config.service_account,
        "minReplicas": config.min_replicas,
        "maxReplicas": config.max_replicas,
        "model": model,
    }
    if config.node_selector:
        predictor["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        predictor["tolerations"] = list(config.tolerations)
    annotations = {"medssr.io/model": config.registry_reference, "medssr.io/storage-uri": storage_uri}
    if config.deployment_mode:
        annotations["serving.kserve.io/deploymentMode"] = config.deployment_mode
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": config.namespace,
            "labels": standard_labels(config.run_id, "serve", "predictor"),
            "annotations": annotations,
        },
        "spec": {"predictor": predictor},
    }


def kube_api_client(kubeconfig: str = "", context: str = ""):
    """An ApiClient from a kubeconfig file, the in-cluster service account, or ~/.kube/config."""
    from kubernetes import client
    from kubernetes import config as kube_config

    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kube_config.load_incluster_config()
        return client.ApiClient()
    return kube_config.new_client_from_config(config_file=kubeconfig or None, context=context or None)


def readiness(service: dict[str, Any]) -> tuple[bool, str]:
    """(ready, why not): Ready=True for the current generation, else the first failing condition."""
    status = service.get("status") or {}
    generation = (service.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return False, f"status is for generation {observed}, the spec is generation {generation}"
    conditions = status.get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is not None and str(ready.get("status")) == "True":
        return True, ""
    failing = next((c for c in conditions if str(c.get("status")) != "True" and c.get("type") != "Ready"), ready)
    if failing is None:
        return False, "no status conditions yet (is the KServe controller running?)"
    detail = ": ".join(str(failing[k]) for k in ("reason", "message") if failing.get(k))
    return False, f"{failing.get('type')}={failing.get('status')}" + (f" ({detail})" if detail else "")


def _failed_load(service: dict[str, Any]) -> str:
    model_status = (service.get("status") or {}).get("modelStatus") or {}
    if model_status.get("transitionStatus") in FAILED_TRANSITIONS:
        failure = model_status.get("lastFailureInfo") or {}
        return f"{model_status['transitionStatus']}: {failure.get('reason', '')} {failure.get('message', '')}".strip()
    return ""


def apply_inference_service(api, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the object, or merge-patch it when it exists; returns (object, created)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    objects = client.CustomObjectsApi(api)
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        return objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest), True
    except ApiException as exc:
        if exc.status != 409:
            raise DeployError(f"cannot create InferenceService {namespace}/{name}: {_api_reason(exc)}") from None
    try:
        return objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, manifest), False
    except ApiException as exc:
        raise DeployError(f"cannot update InferenceService {namespace}/{name}: {_api_reason(exc)}") from None


def wait_until_ready(api, namespace: str, name: str, timeout_s: float, poll_s: float) -> dict[str, Any]:
    from kubernetes import client

    objects = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout_s
    while True:
        service = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        ready, why = readiness(service)
        if ready:
            return service
        failed = _failed_load(service)
        if failed:
            raise DeployError(f"InferenceService {namespace}/{name} failed to load its model: {failed}")
        if time.monotonic() >= deadline:
            raise DeployError(f"InferenceService {namespace}/{name} not Ready after {timeout_s:.0f} s: {why}")
        time.sleep(poll_s)


def run_deploy(config: DeployConfig, api=None) -> DeployResult:
    """Resolve the model's S3 location, apply the InferenceService, and (by default) wait for Ready."""
    storage_uri = resolve_storage_uri(config)
    manifest = render_inference_service(config, storage_uri)
    api = api or kube_api_client(config.kubeconfig, config.context)
    service, created = apply_inference_service(api, manifest)
    name, namespace = manifest["metadata"]["name"], config.namespace
    if config.wait:
        service = wait_until_ready(api, namespace, name, config.timeout_s, config.poll_s)
    ready, _ = readiness(service)
    url = str((service.get("status") or {}).get("url") or "")
    return DeployResult(name=name, namespace=namespace, url=url, ready=ready, storage_uri=storage_uri, created=created)


def _api_reason(exc) -> str:
    import json

    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError):
        return f"{exc.status} {exc.reason}"
