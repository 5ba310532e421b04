"""Deploy a registered model as a KServe InferenceService: on the ``medssr`` serving runtime (this
project's model server, ``manifests/base/servingruntime.yaml``) or on KServe's Hugging Face runtime.

``storageUri`` is the model version's own S3 location, resolved through the MLflow registry
(KServe's storage initializer has no ``models:/`` scheme); the predictor runs under the service
account that carries the S3 Secret (``medssr-predictor`` in ``manifests/``). ``run_deploy`` creates
the object or patches it, then waits for ``Ready`` and reports the failing condition when it is not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from medssr.cluster import NAMESPACE, PREDICTOR_SERVICE_ACCOUNT, ClusterSettings
from medssr.errors import UserError
from medssr.kube import client as kube_client
from medssr.kube import inferenceservice
from medssr.kube.inferenceservice import GROUP, MEDSSR_RUNTIME, PLURAL, VERSION, check_storage_uri, dns_name
from medssr.references import RegistryReference


class DeployError(RuntimeError):
    """The InferenceService was not Ready in time, or KServe reported that it failed."""


@dataclass
class DeployConfig:
    """Which registered model to serve, where, on what resources."""

    model: str = field(metadata={"help": "Registered model: NAME[@ALIAS] (alias default: champion), NAME/VERSION or models:/..."})
    namespace: str = field(default=NAMESPACE, metadata={"help": "Namespace of the InferenceService."})
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
        default=PREDICTOR_SERVICE_ACCOUNT, metadata={"help": "Service account bound to the S3 Secret."}
    )
    runtime: str = field(
        default="medssr",
        metadata={"help": "ServingRuntime: medssr (this project's server: the vote/abstain extension, per-step admission, "
                          "the OpenAI contract on CPU and GPU) or KServe's Hugging Face runtime (kserve-huggingfaceserver; "
                          "empty lets KServe pick it by modelFormat)."},
    )
    engine: str = field(
        default="", metadata={"help": "medssr runtime's engine: vllm (GPU) or transformers; empty: vllm with GPUs, else transformers."}
    )
    backend: str = field(
        default="", metadata={"help": "Hugging Face runtime backend: vllm (GPU) or huggingface; empty: vllm with GPUs."}
    )
    gpus: int = field(default=1, metadata={"help": "GPUs per replica."})
    cpu: str = field(default="4", metadata={"help": "CPU request and limit."})
    memory: str = field(default="32Gi", metadata={"help": "Memory request and limit."})
    max_model_len: int = field(default=4096, metadata={"help": "vLLM context length (prompt + completion)."})
    dtype: str = field(default="bfloat16", metadata={"help": "Weights dtype in the runtime."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "Share of GPU memory vLLM may use."})
    min_replicas: int = field(default=1, metadata={"help": "Fewest replicas (0 allows scale to zero)."})
    max_replicas: int = field(default=1, metadata={"help": "Most replicas."})
    node_selector: dict[str, str] | None = field(
        default=None, metadata={"help": "Predictor pod nodeSelector; unset: the GPU nodes' (ClusterSettings) when gpus > 0, else none."}
    )
    tolerations: list[dict[str, Any]] | None = field(
        default=None, metadata={"help": "Predictor pod tolerations; unset: the GPU nodes' (ClusterSettings) when gpus > 0, else none."}
    )
    deployment_mode: str = field(
        default="", metadata={"help": "serving.kserve.io/deploymentMode (RawDeployment, Serverless); empty: cluster default."}
    )
    kubeconfig: str = field(default="", metadata={"help": "Kubeconfig file; empty: in-cluster, else ~/.kube/config."})
    context: str = field(default="", metadata={"help": "Kubeconfig context; empty: the current one."})
    wait: bool = field(default=True, metadata={"help": "Wait until the InferenceService is Ready."})
    timeout_s: float = field(default=900.0, metadata={"help": "How long to wait for Ready."})
    poll_s: float = field(default=2.0, metadata={"help": "Seconds between status checks."})

    def __post_init__(self):
        self.reference  # a model that names no registered version is refused here
        self.engine = self.engine or ("vllm" if self.gpus else "transformers")
        self.backend = self.backend or ("vllm" if self.gpus else "huggingface")
        node_selector, tolerations = ClusterSettings().gpu_placement(self.gpus)
        self.node_selector = node_selector if self.node_selector is None else self.node_selector
        self.tolerations = tolerations if self.tolerations is None else self.tolerations
        if self.engine not in ("vllm", "transformers"):
            raise UserError(f"engine must be vllm or transformers, not {self.engine!r}")
        if self.backend not in ("vllm", "huggingface"):
            raise UserError(f"backend must be vllm or huggingface, not {self.backend!r}")
        if self.runtime != MEDSSR_RUNTIME and self.backend == "vllm" and self.gpus < 1:
            raise UserError("gpus: the vllm backend of KServe's Hugging Face runtime needs at least one GPU (use "
                            "backend=huggingface on CPU)")
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise UserError("replicas: need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.storage_uri:
            check_storage_uri(self.storage_uri)

    @property
    def reference(self) -> RegistryReference:
        return RegistryReference.parse(self.model or "", default_alias="champion")

    @property
    def registry_reference(self) -> str:
        """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (alias ``champion`` when none is given)."""
        return str(self.reference)

    @property
    def service_name(self) -> str:
        return self.name or dns_name(self.reference.name)

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
            engine="",  # both chosen again from the GPU count
            backend="",
        )


@dataclass
class DeployResult:
    name: str
    namespace: str
    url: str
    ready: bool
    storage_uri: str
    created: bool


def resolve_storage_uri(config: DeployConfig) -> str:
    """The model version's folder as an S3 (or other fetchable) URI, from the MLflow registry."""
    if config.storage_uri:
        return check_storage_uri(config.storage_uri)
    from medssr import registry, tracking

    settings = tracking.TrackingConfig(tracking_uri=config.tracking_uri, artifacts_destination=config.artifacts_destination)
    tracker = tracking.Tracker(settings)
    version = registry.get_model_version(tracker, config.registry_reference)
    location = registry.registry_location(tracker, version)
    try:
        return check_storage_uri(location)
    except UserError as exc:
        raise UserError(f"{config.registry_reference} (version {version.version}): {exc}") from None


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
            raise DeployError(f"cannot create InferenceService {namespace}/{name}: {kube_client.api_message(exc)}") from None
    try:
        return objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, manifest), False
    except ApiException as exc:
        raise DeployError(f"cannot update InferenceService {namespace}/{name}: {kube_client.api_message(exc)}") from None


def wait_until_ready(api, namespace: str, name: str, timeout_s: float, poll_s: float) -> dict[str, Any]:
    from kubernetes import client

    objects = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout_s
    while True:
        service = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state = inferenceservice.state(service)
        if state.phase == "Ready":
            return service
        if state.phase == "Failed":
            raise DeployError(f"InferenceService {namespace}/{name} failed to load its model: {state.detail}")
        if time.monotonic() >= deadline:
            raise DeployError(f"InferenceService {namespace}/{name} not Ready after {timeout_s:.0f} s: {state.detail}")
        time.sleep(poll_s)


def run_deploy(config: DeployConfig, api=None) -> DeployResult:
    """Resolve the model's S3 location, apply the InferenceService, and (by default) wait for Ready."""
    storage_uri = resolve_storage_uri(config)
    manifest = inferenceservice.build(config, storage_uri)
    api = api or kube_client.api_client(config.kubeconfig, config.context)
    service, created = apply_inference_service(api, manifest)
    name, namespace = manifest["metadata"]["name"], config.namespace
    if config.wait:
        service = wait_until_ready(api, namespace, name, config.timeout_s, config.poll_s)
    ready = inferenceservice.state(service).phase == "Ready"
    url = str((service.get("status") or {}).get("url") or "")
    return DeployResult(name=name, namespace=namespace, url=url, ready=ready, storage_uri=storage_uri, created=created)
