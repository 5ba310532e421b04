"""InferenceService, ``serving.kserve.io/v1beta1`` (KServe) serving a model folder: on the ``medssr``
ClusterServingRuntime of ``manifests/`` (this project's model server) or on KServe's Hugging Face runtime."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from medssr.errors import UserError
from medssr.kube import pods
from medssr.kube.conditions import ObjectState, conditions_of, status_of
from medssr.kube.labels import standard_labels
from medssr.kube.manifests import custom_object

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
# Label KServe puts on the pods it creates for a service (finds pods we did not label).
POD_OWNER_LABEL = "serving.kserve.io/inferenceservice"
# Schemes KServe's storage initializer downloads from; anything else (models:/, runs:/, mlflow-artifacts:,
# a local path) means the model was resolved to something a pod cannot fetch.
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "hf://", "https://", "oci://")
# KServe derives longer names (NAME-predictor-...) from this one; keep room for its suffixes.
MAX_NAME_LENGTH = 45
# KServe reports these model transition states when a load failed for good: waiting longer is pointless.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")
# The ClusterServingRuntime of manifests/base/servingruntime.yaml: `medssr serve` on the downloaded folder.
MEDSSR_RUNTIME = "medssr"


def dns_name(text: str) -> str:
    """A DNS-1035 label (what KServe requires of a name): lower case, digits and '-', a letter first."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    return name[:MAX_NAME_LENGTH].rstrip("-")


def check_storage_uri(uri: str) -> str:
    if not uri.startswith(STORAGE_SCHEMES):
        raise UserError(
            f"storage URI {uri!r} cannot be fetched by KServe's storage initializer "
            f"(needs one of {', '.join(STORAGE_SCHEMES)}); register the model with S3 artifacts or pass --storage-uri"
        )
    return uri


def build(config, storage_uri: str) -> dict[str, Any]:
    """The InferenceService of a ``medssr.deploy.DeployConfig`` serving the folder at ``storage_uri``."""
    name = config.service_name
    if config.runtime == MEDSSR_RUNTIME:  # appended to the runtime's `medssr serve` arguments
        args = [f"--engine={config.engine}", f"--dtype={config.dtype}"]
        vllm = config.engine == "vllm"
    else:  # KServe's Hugging Face server
        args = [f"--model_name={name}", f"--backend={config.backend}", f"--dtype={config.dtype}"]
        vllm = config.backend == "vllm"
    if vllm:
        args += [f"--max-model-len={config.max_model_len}", f"--gpu-memory-utilization={config.gpu_memory_utilization}"]
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "storageUri": check_storage_uri(storage_uri),
        "args": args,
        "resources": pods.resources(config.cpu, config.memory, config.gpus),
    }
    if config.runtime:
        model["runtime"] = config.runtime
    predictor: dict[str, Any] = {
        **pods.placement(config.service_account),
        "minReplicas": config.min_replicas,
        "maxReplicas": config.max_replicas,
        "model": model,
        **pods.placement(node_selector=config.node_selector, tolerations=config.tolerations),
    }
    annotations = {"medssr.io/model": config.registry_reference, "medssr.io/storage-uri": storage_uri}
    if config.deployment_mode:
        annotations["serving.kserve.io/deploymentMode"] = config.deployment_mode
    labels = standard_labels(config.run_id, "serve", "predictor")
    return custom_object(GROUP, VERSION, KIND, name, config.namespace, labels, {"predictor": predictor}, annotations=annotations)


def state(service: Mapping[str, Any]) -> ObjectState:
    """Ready (its URL the message) when Ready is true for the current generation; Failed when KServe gave up
    loading the model; else NotReady with the first failing condition, or Pending before any condition."""
    status = status_of(service)
    generation = (service.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return ObjectState("NotReady", "", f"status is for generation {observed}, the spec is generation {generation}")
    conditions = conditions_of(service)
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is not None and str(ready.get("status")) == "True":
        return ObjectState("Ready", "", str(status.get("url") or ""))
    model_status = status.get("modelStatus") or {}
    if model_status.get("transitionStatus") in FAILED_TRANSITIONS:
        failure = model_status.get("lastFailureInfo") or {}
        return ObjectState("Failed", model_status["transitionStatus"], f"{failure.get('reason', '')} {failure.get('message', '')}".strip())
    failing = next((c for c in conditions if str(c.get("status")) != "True" and c.get("type") != "Ready"), ready)
    if failing is None:
        return ObjectState("Pending", "", "no status conditions yet (is the KServe controller running?)")
    why = ": ".join(str(failing[k]) for k in ("reason", "message") if failing.get(k))
    return ObjectState("NotReady", f"{failing.get('type')}={failing.get('status')}", why)
