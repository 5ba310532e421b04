"""InferenceService rendering, and `medssr deploy` against a real kube-apiserver (the test plays KServe)."""

from __future__ import annotations

import threading
import time

import pytest

from medssr.kube import inferenceservice
from medssr.kube.inferenceservice import GROUP, PLURAL, VERSION, state
from medssr.deploy import DeployConfig, DeployError, run_deploy
from tests.plugins.kube import fields_outside_schema, missing_or_changed, openapi_schema

S3_MODEL = "s3://medssr/mlflow/3/0123abcd/artifacts/model"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_rendered_inference_service_is_valid_and_complete():
    import jsonschema

    config = DeployConfig(model="MedSSR_Qwen3@champion", storage_uri=S3_MODEL, run_id="run-7", namespace="ml",
                          gpus=2, node_selector={"nvidia.com/gpu.present": "true"}, tolerations=[GPU_TOLERATION])
    manifest = inferenceservice.build(config, S3_MODEL)
    jsonschema.validate(manifest, openapi_schema(manifest))
    assert fields_outside_schema(manifest, openapi_schema(manifest)) == []
    assert manifest["metadata"]["name"] == "medssr-qwen3" and manifest["metadata"]["namespace"] == "ml"
    labels = manifest["metadata"]["labels"]
    assert labels["medssr.io/run-id"] == "run-7" and labels["medssr.io/stage"] == "serve"
    assert labels["app.kubernetes.io/component"] == "predictor"
    assert manifest["metadata"]["annotations"]["medssr.io/model"] == "models:/MedSSR_Qwen3@champion"
    predictor = manifest["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "medssr-predictor"
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and predictor["tolerations"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"] == S3_MODEL
    assert model["runtime"] == "medssr" and "--engine=vllm" in model["args"]  # the runtime names the model {{.Name}}
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "2" == model["resources"]["requests"]["nvidia.com/gpu"]


def test_deploy_config_refuses_what_kserve_cannot_load():
    for uri in ("models:/m@champion", "mlflow-artifacts:/1/x/artifacts/model", "/tmp/model", "runs:/abc/model"):
        with pytest.raises(ValueError, match="storage initializer"):
            DeployConfig(model="m", storage_uri=uri)
    with pytest.raises(ValueError, match="GPU"):
        DeployConfig(model="m", gpus=0, runtime="kserve-huggingfaceserver", backend="vllm")
    with pytest.raises(ValueError, match="engine"):
        DeployConfig(model="m", engine="tgi")
    assert DeployConfig(model="m", gpus=0).backend == "huggingface" and DeployConfig(model="m").backend == "vllm"
    assert DeployConfig(model="m", gpus=0).engine == "transformers" and DeployConfig(model="m").engine == "vllm"
    with pytest.raises(ValueError, match="model"):
        DeployConfig(model="not a model ref")
    assert DeployConfig(model="m").registry_reference == "models:/m@champion"
    assert DeployConfig(model="models:/m/4").registry_reference == "models:/m/4"
    cpu = DeployConfig(model="m", storage_uri=S3_MODEL, gpus=0)
    args = inferenceservice.build(cpu, S3_MODEL)["spec"]["predictor"]["model"]["args"]
    assert "--engine=transformers" in args and not any(a.startswith("--gpu-memory") for a in args)
    hf = DeployConfig(model="m", storage_uri=S3_MODEL, gpus=0, runtime="kserve-huggingfaceserver")
    args = inferenceservice.build(hf, S3_MODEL)["spec"]["predictor"]["model"]["args"]
    assert "--backend=huggingface" in args and "--model_name=m" in args


def test_deploy_config_puts_gpu_replicas_where_the_cluster_settings_put_gpu_pods():
    from medssr.cluster import ClusterSettings

    settings = ClusterSettings()
    predictor = inferenceservice.build(DeployConfig(model="m", storage_uri=S3_MODEL), S3_MODEL)["spec"]["predictor"]
    assert (predictor["nodeSelector"], predictor["tolerations"]) == settings.gpu_placement(1)
    assert predictor["model"]["resources"]["limits"][settings.gpu_accelerator] == "1"
    cpu = inferenceservice.build(DeployConfig(model="m", storage_uri=S3_MODEL, gpus=0), S3_MODEL)["spec"]["predictor"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    told = DeployConfig(model="m", node_selector={"pool": "serving"}, tolerations=[])
    assert (told.node_selector, told.tolerations) == ({"pool": "serving"}, [])


def test_state_names_the_failing_condition():
    assert (state({}).phase, state({}).detail) == ("Pending", "no status conditions yet (is the KServe controller running?)")
    failing = {"status": {"conditions": [
        {"type": "IngressReady", "status": "True"},
        {"type": "PredictorReady", "status": "False", "reason": "RevisionMissing", "message": "no revision"},
        {"type": "Ready", "status": "False"},
    ]}}
    assert (state(failing).phase, state(failing).detail) == ("NotReady", "PredictorReady=False: RevisionMissing: no revision")
    stale = {"metadata": {"generation": 2}, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}}
    assert state(stale).phase == "NotReady" and "generation 1" in state(stale).detail
    ready = {"status": {"url": "http://m.example.com", "conditions": [{"type": "Ready", "status": "True"}]}}
    assert (state(ready).phase, state(ready).detail) == ("Ready", "http://m.example.com")
    failed = {"status": {"conditions": [{"type": "Ready", "status": "False"}], "modelStatus": {
        "transitionStatus": "BlockedByFailedLoad", "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no config.json"}}}}
    assert (state(failed).phase, state(failed).detail) == ("Failed", "BlockedByFailedLoad: ModelLoadFailed no config.json")


# ----------------------------------------------------------------------------- against kube-apiserver


def _objects(kube_cluster):
    from kubernetes import client

    return client.CustomObjectsApi(kube_cluster.api_client())


def play_controller(kube_cluster, namespace: str, name: str, conditions: list[dict], url: str = "",
                    timeout_s: float = 30) -> threading.Thread:
    """What KServe's controller would do: once the object exists, write its status (for its generation)."""

    def act():
        from kubernetes.client.rest import ApiException

        objects = _objects(kube_cluster)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                current = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            except ApiException as error:
                if error.status != 404:
                    raise
                time.sleep(0.1)
                continue
            status = {"observedGeneration": current["metadata"]["generation"], "conditions": conditions}
            if url:
                status["url"] = url
            objects.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})
            return

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


@pytest.mark.k8s
def test_inference_service_survives_admission_intact(kube_cluster, kube_namespace):
    """Created on the server with KServe's own CRD and read back: every field we set is there, unchanged."""
    config = DeployConfig(model="medssr-qwen/3", storage_uri=S3_MODEL, run_id="run-8", namespace=kube_namespace,
                          runtime="kserve-huggingfaceserver", gpus=2, cpu="8", memory="48Gi", min_replicas=0,
                          max_replicas=2, node_selector={"nvidia.com/gpu.present": "true"},
                          tolerations=[GPU_TOLERATION], deployment_mode="RawDeployment")
    manifest = inferenceservice.build(config, S3_MODEL)
    _objects(kube_cluster).create_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, manifest)
    stored = _objects(kube_cluster).get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, manifest["metadata"]["name"])
    assert missing_or_changed(manifest, stored) == []


READY = [
    {"type": "PredictorReady", "status": "True", "lastTransitionTime": "2026-11-25T00:00:00Z"},
    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-25T00:00:00Z"},
]


@pytest.mark.slow
@pytest.mark.k8s
def test_deploy_creates_waits_for_ready_then_patches(kube_cluster, kube_namespace):
    config = DeployConfig(model="medssr-qwen@champion", namespace=kube_namespace, storage_uri=S3_MODEL,
                          run_id="run-42", kubeconfig=str(kube_cluster.kubeconfig), timeout_s=30, poll_s=0.2)
    url = f"http://medssr-qwen.{kube_namespace}.example.com"
    controller = play_controller(kube_cluster, kube_namespace, "medssr-qwen", READY, url)
    result = run_deploy(config)
    controller.join(5)
    assert (result.name, result.namespace, result.url, result.ready, result.created) == (
        "medssr-qwen", kube_namespace, url, True, True)
    stored = _objects(kube_cluster).get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "medssr-qwen")
    assert stored["spec"]["predictor"]["model"]["storageUri"] == S3_MODEL
    assert stored["metadata"]["labels"]["medssr.io/run-id"] == "run-42"

    # A new version: the object is patched, and the old Ready status (an older generation) does not count.
    newer = "s3://medssr/mlflow/3/4567ef/artifacts/model"
    config.storage_uri, config.timeout_s = newer, 1.5
    with pytest.raises(DeployError, match="not Ready after 2 s: status is for generation 1"):
        run_deploy(config)
    stored = _objects(kube_cluster).get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "medssr-qwen")
    assert stored["spec"]["predictor"]["model"]["storageUri"] == newer and stored["metadata"]["generation"] == 2

    config.timeout_s = 30
    play_controller(kube_cluster, kube_namespace, "medssr-qwen", READY, url).join(10)
    result = run_deploy(config)
    assert result.ready and not result.created


@pytest.mark.slow
@pytest.mark.k8s
def test_deploy_reports_the_failing_condition(kube_cluster, kube_namespace, capsys):
    from medssr.cli import main

    failing = [
        {"type": "PredictorReady", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu", "lastTransitionTime": "2026-11-25T00:00:00Z"},
        {"type": "Ready", "status": "False", "lastTransitionTime": "2026-11-25T00:00:00Z"},
    ]
    play_controller(kube_cluster, kube_namespace, "stuck-model", failing)
    code = main(["deploy", "stuck-model", "--namespace", kube_namespace, "--storage-uri", S3_MODEL,
                 "--kubeconfig", str(kube_cluster.kubeconfig), "--timeout", "2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "not Ready after 2 s" in err and "PredictorReady=False: ProgressDeadlineExceeded: 0/3 nodes" in err

    failed_load = {"conditions": failing, "modelStatus": {
        "transitionStatus": "BlockedByFailedLoad", "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no config.json"}}}
    objects = _objects(kube_cluster)
    objects.patch_namespaced_custom_object_status(GROUP, VERSION, kube_namespace, PLURAL, "stuck-model", {"status": failed_load})
    started = time.monotonic()
    with pytest.raises(DeployError, match="failed to load its model: BlockedByFailedLoad: ModelLoadFailed no config.json"):
        run_deploy(DeployConfig(model="stuck-model", namespace=kube_namespace, storage_uri=S3_MODEL,
                                kubeconfig=str(kube_cluster.kubeconfig), timeout_s=60, poll_s=0.2))
    assert time.monotonic() - started < 30  # a failed load is final: no waiting out the timeout


@pytest.mark.slow
@pytest.mark.k8s
def test_deploy_resolves_the_champion_alias_to_its_s3_folder(kube_cluster, kube_namespace, mlflow_server, tiny_model,
                                                             capsys):
    from medssr.cli import main
    from medssr.registry import register_model_folder
    from medssr.tracking import Tracker, TrackingConfig

    tracker = Tracker(TrackingConfig(tracking_uri=mlflow_server.url, experiment="deploy-test"))
    with tracker.stage("register", tracker.start_pipeline_run("run-deploy")) as stage:
        version = register_model_folder(stage, "deploy-tiny", tiny_model, alias="champion")
    url = f"http://deploy-tiny.{kube_namespace}.example.com"
    play_controller(kube_cluster, kube_namespace, "deploy-tiny", READY, url)
    code = main(["deploy", "deploy-tiny@champion", "--namespace", kube_namespace, "--tracking-uri", mlflow_server.url,
                 "--artifacts-destination", mlflow_server.artifacts_destination, "--run-id", "run-deploy",
                 "--kubeconfig", str(kube_cluster.kubeconfig), "--timeout", "30"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"Ready at {url}" in out
    stored = _objects(kube_cluster).get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "deploy-tiny")
    storage_uri = stored["spec"]["predictor"]["model"]["storageUri"]
    assert storage_uri.startswith(f"{mlflow_server.artifacts_destination}/") and storage_uri.endswith("/artifacts/model")
    assert stored["metadata"]["annotations"]["medssr.io/model"] == "models:/deploy-tiny@champion"
    assert tracker.client.get_model_version_by_alias("deploy-tiny", "champion").version == str(version.version)

    # Without the destination the proxied location is not something KServe can fetch: a clear error.
    code = main(["deploy", "deploy-tiny@champion", "--namespace", kube_namespace, "--tracking-uri", mlflow_server.url,
                 "--kubeconfig", str(kube_cluster.kubeconfig), "--dry-run"])
    assert code == 2 and "storage initializer" in capsys.readouterr().err
