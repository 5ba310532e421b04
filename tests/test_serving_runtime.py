"""What the cluster runs is what this test runs: the `medssr` ClusterServingRuntime as `kubectl kustomize` renders
manifests/, the InferenceService as `medssr deploy --dry-run` prints it, both admitted by the API server with KServe's
own CRDs (nothing pruned), then the predictor container KServe would build from the two (the runtime's command and
args, the InferenceService's args appended, `{{.Name}}` filled in, the runtime's env) started here as a process and
driven with the official `openai` client and KServe's own v2 REST client.

Only what a pod gets from its surroundings is swapped: a folder holding a copy of the model for /mnt/models (where
KServe's storage initializer puts it), 127.0.0.1 and a free port for 0.0.0.0:8080, a folder for the /tmp emptyDir."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from medssr.serving.process import free_port
from tests.plugins.kserve_server import ANSWER_TEXT
from tests.plugins.kube import missing_or_changed
from tests.plugins.mlflow_server import stop_process_group
from tests.test_manifests import KUBECTL, MANIFESTS, SECRET_FILE_STEP
from tests.test_serving import QUESTION

S3_MODEL = "s3://medssr/mlflow/7/0a1b2c/artifacts/model"
MOUNT = "/mnt/models"


def rendered_runtime(tmp_path: Path, overlay: str = "cpu-dev") -> dict:
    """The ClusterServingRuntime of an overlay, rendered by kubectl's kustomize as `kubectl apply -k` would."""
    root = tmp_path / "install"
    shutil.copytree(MANIFESTS, root / "manifests", ignore=shutil.ignore_patterns("s3.env"))
    subprocess.run(SECRET_FILE_STEP.split(), cwd=root, check=True)
    out = subprocess.run([KUBECTL, "kustomize", str(root / "manifests" / "overlays" / overlay)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    (runtime,) = [doc for doc in yaml.safe_load_all(out) if doc and doc["kind"] == "ClusterServingRuntime"]
    return runtime


def dry_run_inference_service(capsys, *args: str) -> dict:
    from medssr.cli import main

    assert main(["deploy", "medssr-tiny@champion", "--storage-uri", S3_MODEL, "--dry-run", *args]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def predictor_container(runtime: dict, service: dict) -> dict:
    """The container KServe makes of a runtime and an InferenceService's `predictor.model`: the runtime's container,
    the service's args after the runtime's, env merged by name, resources from the service, `{{.Name}}` replaced
    by the service's name (KServe's MergeRuntimeContainers and ReplacePlaceholders)."""
    (container,) = runtime["spec"]["containers"]
    model = service["spec"]["predictor"]["model"]
    env = {item["name"]: item for item in container.get("env", [])} | {item["name"]: item for item in model.get("env", [])}
    args = [arg.replace("{{.Name}}", service["metadata"]["name"]) for arg in container["args"] + model.get("args", [])]
    return {**container, "args": args, "env": list(env.values()), "resources": model.get("resources", container.get("resources"))}


@pytest.mark.slow
@pytest.mark.k8s
def test_the_runtime_and_the_inference_service_are_admitted_whole_and_run_as_the_pod_would(
        kube_cluster, kube_namespace, answering_model, tmp_path, capsys):
    runtime = rendered_runtime(tmp_path)
    service = dry_run_inference_service(capsys, "--namespace", kube_namespace, "--gpus", "0", "--dtype", "float32")
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"] == "medssr"
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert service["spec"]["predictor"]["model"]["modelFormat"]["name"] in formats

    # Admitted as `kubectl apply` sends them (it drops the namespace kustomize puts on the cluster-scoped runtime).
    try:
        for body in (runtime, service):
            kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        stored_runtime = json.loads(kube_cluster.kubectl("get", "clusterservingruntime", "medssr", "-o", "json").stdout)
        stored_service = json.loads(kube_cluster.kubectl("get", "inferenceservice", service["metadata"]["name"], "-n",
                                                         kube_namespace, "-o", "json").stdout)
    finally:
        kube_cluster.kubectl("delete", "clusterservingruntime", "medssr", "--ignore-not-found", "--wait=false")
    sent_runtime = {**runtime, "metadata": {k: v for k, v in runtime["metadata"].items() if k != "namespace"}}
    assert missing_or_changed(sent_runtime, stored_runtime) == []
    assert missing_or_changed(service, stored_service) == []

    # The pod's container, started here.
    container = predictor_container(stored_runtime, stored_service)
    models, scratch, port = tmp_path / "mnt-models", tmp_path / "tmp", free_port()
    shutil.copytree(answering_model, models)
    scratch.mkdir()
    swaps = {f"--local={MOUNT}": f"--local={models}", "--host=0.0.0.0": "--host=127.0.0.1", "--port=8080": f"--port={port}"}
    assert set(swaps) <= set(container["args"]), container["args"]
    args = [swaps.get(arg, arg) for arg in container["args"]]
    env = {item["name"]: item["value"].replace("/tmp", str(scratch)) for item in container["env"]}
    command = [str(Path(sys.executable).with_name(container["command"][0])), *container["command"][1:], *args]
    log_path = tmp_path / "predictor.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env})
    url = f"http://127.0.0.1:{port}"
    name = service["metadata"]["name"]
    try:
        probe = container["readinessProbe"]["httpGet"]
        assert probe["port"] == 8080 and {"containerPort": 8080, "name": "http", "protocol": "TCP"} in container["ports"]
        wait_ready(f"{url}{probe['path']}", process, log_path)
        drive_with_the_openai_client(url, name)
        asyncio.run(drive_with_kserves_v2_client(url, name))
        annotations = stored_runtime["spec"]["annotations"]
        assert annotations["prometheus.io/port"] == "8080"
        metrics = httpx.get(f"{url}{annotations['prometheus.io/path']}", timeout=10).text
        assert "medssr_serving_generated_tokens_total" in metrics
    finally:
        stop_process_group(process)
    assert process.returncode == 0, log_path.read_text()[-3000:]


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the predictor exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"not ready after {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def drive_with_the_openai_client(url: str, name: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/openai/v1", api_key="not-needed", max_retries=0)
    assert [model.id for model in client.models.list()] == [name]
    messages = [{"role": "user", "content": QUESTION}]
    voted = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=16,
                                           extra_body={"medssr": {"n": 3, "abstain_below": 0.6}})
    assert [choice.message.content for choice in voted.choices] == [ANSWER_TEXT] * 3
    vote = voted.model_extra["medssr"]
    assert (vote["answer"], vote["votes"], vote["agreement"], vote["abstained"]) == ("C", {"C": 3}, 1.0, False)
    chunks = list(client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER_TEXT
    assert chunks[-1].usage.completion_tokens == voted.usage.completion_tokens // 3
    assert chunks[-1].model_extra["medssr"]["answer"] == "C"


async def drive_with_kserves_v2_client(url: str, name: str) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        assert await client.is_server_ready(url) and await client.is_model_ready(url, name)
        request = InferRequest(model_name=name, infer_inputs=[InferInput("text_input", [2], "BYTES", [QUESTION, "hello"])],
                               parameters={"max_tokens": 16, "temperature": 0})
        response = await client.infer(url, request, model_name=name)
    finally:
        await client.close()
    outputs = {output.name: output for output in response.outputs}
    assert len(outputs["text_output"].data) == 2 and outputs["text_output"].data[0]  # v2 continues the raw text
    assert outputs["answer"].data == ["C", ""]  # the letter of the multiple-choice question; the other has none


def test_the_gpu_overlay_runs_the_gpu_image_and_deploy_picks_vllm_with_gpus(tmp_path, capsys):
    gpu = rendered_runtime(tmp_path / "gpu", "gpu")
    cpu = rendered_runtime(tmp_path / "cpu", "cpu-dev")
    assert gpu["spec"]["containers"][0]["image"].endswith("-gpu") and cpu["spec"]["containers"][0]["image"].endswith("-cpu")
    assert "--engine=vllm" in dry_run_inference_service(capsys, "--gpus", "1")["spec"]["predictor"]["model"]["args"]
    hf = dry_run_inference_service(capsys, "--runtime", "kserve-huggingfaceserver", "--gpus", "0")["spec"]["predictor"]["model"]
    assert hf["runtime"] == "kserve-huggingfaceserver" and "--backend=huggingface" in hf["args"]
