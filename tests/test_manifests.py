"""manifests/: every overlay renders with kubectl's kustomize, its core objects pass the Kubernetes schemas,
the settings ConfigMap parses, and `kubectl apply --dry-run=server -k` succeeds against the real API server."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from medssr.cluster import ClusterDefaults
from medssr.kube.pods import resources
from tests.plugins.kube import crd_schemas

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
# Schemas of the Kubernetes minor the manifests target (the oldest we claim is 1.30; the API server of the
# test suite is older still and checks the same objects with --dry-run=server below).
KUBERNETES_SCHEMA_VERSION = "1.30.0"
EXPECTED_OBJECTS = {
    ("Namespace", "medssr"),
    ("ServiceAccount", "medssr-pipeline"),
    ("ServiceAccount", "medssr-predictor"),
    ("Role", "medssr-pipeline"),
    ("RoleBinding", "medssr-pipeline"),
    ("ConfigMap", "medssr-config"),
    ("Secret", "medssr-s3"),
    ("PersistentVolumeClaim", "medssr-workspace"),
    ("PersistentVolumeClaim", "mlflow-db"),
    ("Deployment", "mlflow"),
    ("Service", "mlflow"),
    ("ClusterServingRuntime", "medssr"),
}
# The install step of the README, run in a copy of manifests/ (s3.env is git-ignored).
SECRET_FILE_STEP = "cp manifests/base/s3.env.example manifests/base/s3.env"


def test_overlays_exist():
    assert OVERLAYS == ["cpu-dev", "gpu"]


@pytest.fixture(scope="module")
def install_tree(tmp_path_factory) -> Path:
    """A copy of manifests/ prepared as the README says (the S3 env file from its example)."""
    root = tmp_path_factory.mktemp("install")
    shutil.copytree(MANIFESTS, root / "manifests", ignore=shutil.ignore_patterns("s3.env"))
    subprocess.run(shlex.split(SECRET_FILE_STEP), cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def rendered(install_tree) -> dict[str, list[dict]]:
    out = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [KUBECTL, "kustomize", str(install_tree / "manifests" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def _by_kind(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def test_render_without_secret_file_fails_clearly(tmp_path):
    shutil.copytree(MANIFESTS, tmp_path / "manifests", ignore=shutil.ignore_patterns("s3.env"))
    result = subprocess.run(
        [KUBECTL, "kustomize", str(tmp_path / "manifests" / "overlays" / "cpu-dev")], capture_output=True, text=True
    )
    assert result.returncode != 0 and "s3.env" in result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_expected_objects(rendered, overlay):
    docs = rendered[overlay]
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == EXPECTED_OBJECTS
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "medssr", doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "medssr", doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_pass_kubernetes_schemas(rendered, overlay):
    custom = crd_schemas()  # custom resources are held to their CRDs' schemas (test_every_object_has_a_schema)
    for doc in rendered[overlay]:
        if (doc["apiVersion"], doc["kind"]) in custom:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")


def test_schema_check_catches_a_bad_field(rendered):
    deployment = json.loads(json.dumps(_by_kind(rendered["gpu"], "Deployment", "mlflow")))
    deployment["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_configmap_parses(rendered, overlay):
    data = _by_kind(rendered[overlay], "ConfigMap", "medssr-config")["data"]
    defaults = ClusterDefaults.from_mapping(data)
    assert defaults.namespace == "medssr"
    assert defaults.s3_secret == "medssr-s3" and defaults.workspace_pvc == "medssr-workspace"
    assert defaults.predictor_service_account == "medssr-predictor"
    assert defaults.mlflow_tracking_uri == "http://mlflow.medssr.svc.cluster.local:5000"
    # The placement defaults are valid pod fields: put them in a pod and validate it.
    for workload in (defaults.train, defaults.predictor):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe"},
            "spec": {
                "nodeSelector": workload.node_selector,
                "tolerations": workload.tolerations,
                "containers": [{"name": "main", "image": "medssr:test", "resources": resources(workload.cpu, workload.memory, workload.gpus)}],
            },
        }
        kubernetes_validate.validate(pod, KUBERNETES_SCHEMA_VERSION, strict=True)
    if overlay == "gpu":
        assert defaults.device == "cuda" and defaults.generation_backend == "vllm"
        assert defaults.train.gpus >= 1 and defaults.predictor.gpus >= 1
        assert resources(gpus=defaults.train.gpus)["limits"]["nvidia.com/gpu"] == str(defaults.train.gpus)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in defaults.train.tolerations
        assert defaults.train.node_selector
    else:
        assert defaults.device == "cpu" and defaults.generation_backend == "transformers"
        assert defaults.train.gpus == 0 and defaults.predictor.gpus == 0
        assert "nvidia.com/gpu" not in resources(defaults.train.cpu, defaults.train.memory, defaults.train.gpus)["limits"]
        assert defaults.train.tolerations == [] and defaults.train.node_selector == {}


def test_settings_errors_name_the_key(rendered):
    data = dict(_by_kind(rendered["gpu"], "ConfigMap", "medssr-config")["data"])
    with pytest.raises(ValueError, match="MEDSSR_TRAIN_TOLERATIONS is not JSON"):
        ClusterDefaults.from_mapping({**data, "MEDSSR_TRAIN_TOLERATIONS": "[{oops"})
    with pytest.raises(ValueError, match="MEDSSR_PREDICTOR_GPUS='two'"):
        ClusterDefaults.from_mapping({**data, "MEDSSR_PREDICTOR_GPUS": "two"})
    with pytest.raises(ValueError, match="MEDSSR_GENERATION_BACKEND='tgi' must be one of"):
        ClusterDefaults.from_mapping({**data, "MEDSSR_GENERATION_BACKEND": "tgi"})
    with pytest.raises(ValueError, match="missing setting MEDSSR_S3_SECRET"):
        ClusterDefaults.from_mapping({k: v for k, v in data.items() if k != "MEDSSR_S3_SECRET"})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server(rendered, overlay):
    docs = rendered[overlay]
    deployment = _by_kind(docs, "Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("ghcr.io/mlflow/mlflow:v3.17.2")
    args = container["args"]
    assert args[:2] == ["--host=0.0.0.0", "--port=5000"]
    assert sum(a.startswith("--workers=") for a in args) == 1  # the overlay replaced, not appended
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in args
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    env = {e["name"]: e for e in container["env"]}
    assert "MLFLOW_ARTIFACTS_DESTINATION" in env  # `$(VAR)` in args only expands a declared variable
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "medssr-s3",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert all("value" not in e or not e["name"].startswith("AWS_") for e in container["env"])
    # The volume holding the database is the PVC; the service reaches the container port.
    claim = {v["name"]: v for v in pod["volumes"]}["db"]["persistentVolumeClaim"]["claimName"]
    _by_kind(docs, "PersistentVolumeClaim", claim)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/mlflow"] == "db"
    service = _by_kind(docs, "Service", "mlflow")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 5000
    # Probes, resources and a non-root, locked-down container.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert {"requests", "limits"} <= container["resources"].keys()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_mlflow_allowed_hosts_accept_service_names_only(rendered):
    """The --allowed-hosts list, matched by MLflow's own Host check: in-cluster names and port-forward pass,
    anything else (a DNS-rebinding attacker's name, another service) is rejected."""
    import importlib.util

    # Load MLflow's Host-check module by itself: importing mlflow.server would build the whole web app.
    spec = importlib.util.find_spec("mlflow.server")
    path = Path(spec.submodule_search_locations[0]) / "security_utils.py"
    module_spec = importlib.util.spec_from_file_location("mlflow_security_utils", path)
    security_utils = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(security_utils)
    is_allowed_host_header = security_utils.is_allowed_host_header

    container = _by_kind(rendered["gpu"], "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    (flag,) = [a for a in container["args"] if a.startswith("--allowed-hosts=")]
    allowed = flag.split("=", 1)[1].split(",")
    config = ClusterDefaults.from_mapping(_by_kind(rendered["gpu"], "ConfigMap", "medssr-config")["data"])
    tracking_host = config.mlflow_tracking_uri.split("://", 1)[1]
    for host in [tracking_host, "mlflow:5000", "mlflow.medssr:5000", "localhost:5000", "127.0.0.1:15000"]:
        assert is_allowed_host_header(allowed, host), host
    for host in ["evil.example.com", "mlflow.evil.example.com:5000", "10.1.2.3:5000", "other.medssr.svc:5000"]:
        assert not is_allowed_host_header(allowed, host), host
    # The probes' path skips the Host check (the kubelet sends the pod IP as Host).
    assert "/health" in security_utils.HEALTH_ENDPOINTS


@pytest.mark.slow
def test_mlflow_container_runs_as_rendered(rendered, s3_endpoint, mlflow_empty_db, tmp_path):
    """The MLflow container of the cpu-dev overlay, started here as the kubelet would start it: its command and
    args, its env resolved from the ConfigMap and the Secret, `$(VAR)` expanded. Only what a pod gets from
    its surroundings is swapped: 127.0.0.1 and a free port for 0.0.0.0:5000, a temp folder (with a migrated
    empty database) for the /mlflow volume, moto for MinIO. Then: the probes' /health answers whatever the
    Host, the API answers the in-cluster service name and refuses other hosts, and artifacts land in S3 under
    the configured destination."""
    import base64
    import urllib.error
    import urllib.request

    from tests.plugins.mlflow_server import free_port, stop_process_group, wait_healthy

    docs = rendered["cpu-dev"]
    config = _by_kind(docs, "ConfigMap", "medssr-config")["data"]
    secret = {k: base64.b64decode(v).decode() for k, v in _by_kind(docs, "Secret", "medssr-s3")["data"].items()}
    container = _by_kind(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for item in container["env"]:
        source = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "configMapKeyRef" in source:
            env[item["name"]] = config[source["configMapKeyRef"]["key"]]
        else:
            env[item["name"]] = secret[source["secretKeyRef"]["key"]]
    env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint.url
    env["HOME"] = str(tmp_path)
    bucket, _, prefix = env["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").partition("/")
    s3_endpoint.create_bucket(bucket)
    shutil.copyfile(mlflow_empty_db, tmp_path / "mlflow.db")
    port = free_port()
    swaps = {
        "--host=0.0.0.0": "--host=127.0.0.1",
        "--port=5000": f"--port={port}",
        "--backend-store-uri=sqlite:////mlflow/mlflow.db": f"--backend-store-uri=sqlite:///{tmp_path / 'mlflow.db'}",
    }
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], swaps.get(a, a)) for a in container["args"]]
    assert f"--artifacts-destination={env['MLFLOW_ARTIFACTS_DESTINATION']}" in args
    mlflow_binary = str(Path(sys.executable).with_name(container["command"][0]))
    log_path = tmp_path / "mlflow.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([mlflow_binary, *container["command"][1:], *args], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env}, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log_path)

        def status_with_host(path: str, host: str) -> int:
            request = urllib.request.Request(url + path, headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        assert status_with_host("/health", "10.244.3.17:5000") == 200  # the kubelet's probe: Host is the pod IP
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert status_with_host(search, "mlflow.medssr.svc.cluster.local:5000") == 200
        assert status_with_host(search, "mlflow:5000") == 200
        assert status_with_host(search, "attacker.example.com") == 403

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=url)
        run = client.create_run(client.create_experiment("manifest-check"))
        client.log_text(run.info.run_id, "hello", "note.txt")
        keys = s3_endpoint.keys(bucket, prefix)
        assert any(key.endswith(f"{run.info.run_id}/artifacts/note.txt") for key in keys), keys
    finally:
        stop_process_group(process)


def test_secret_has_placeholders_only(rendered):
    import base64

    example = (MANIFESTS / "base" / "s3.env.example").read_text()
    assert "REPLACE_ME" in example
    for overlay in OVERLAYS:
        secret = _by_kind(rendered[overlay], "Secret", "medssr-s3")
        values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert set(values) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert all(v.startswith("REPLACE_ME") for v in values.values())
        assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"]
    ignored = subprocess.run(
        ["git", "check-ignore", "manifests/base/s3.env"], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.returncode == 0, "manifests/base/s3.env must be git-ignored"


def test_predictor_account_carries_the_s3_secret(rendered):
    for overlay in OVERLAYS:
        account = _by_kind(rendered[overlay], "ServiceAccount", "medssr-predictor")
        assert account["secrets"] == [{"name": "medssr-s3"}]


def _crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    return {key: jsonschema.Draft7Validator(schema) for key, schema in crd_schemas().items()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_has_a_schema(rendered, overlay):
    """Core kinds are checked by kubernetes-validate above; anything else must be a custom resource whose
    CRD the test suite carries, and must validate against that CRD's openAPIV3Schema."""
    validators = _crd_validators()
    for doc in rendered[overlay]:
        key = (doc["apiVersion"], doc["kind"])
        try:
            kubernetes_validate.validate(doc, KUBERNETES_SCHEMA_VERSION, strict=True)
            continue
        except kubernetes_validate.SchemaNotFoundError:
            pass
        assert key in validators, f"{overlay}: no schema for {key}"
        errors = sorted(validators[key].iter_errors(doc), key=str)
        assert not errors, f"{overlay}: {key} {doc['metadata']['name']}: {errors[0].message}"


# ----------------------------------------------------------------------------------------------- real server
@pytest.mark.k8s
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_apply_dry_run_server(kube_cluster, install_tree, overlay):
    """The install command, as the README gives it, with --dry-run=server: the API server admits every object
    (schemas, defaults, references) without storing anything."""
    kube_cluster.namespace("medssr")  # namespaced objects need their namespace to exist even in a dry run
    result = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-k", str(install_tree / "manifests" / "overlays" / overlay), check=False
    )
    assert result.returncode == 0, result.stderr
    created = {line.split(" ", 1)[0] for line in result.stdout.splitlines()}
    assert {"deployment.apps/mlflow", "role.rbac.authorization.k8s.io/medssr-pipeline", "secret/medssr-s3"} <= created
    # Nothing was stored.
    assert kube_cluster.kubectl("get", "deployments", "-n", "medssr", "-o", "name").stdout.strip() == ""


@pytest.mark.k8s
def test_server_rejects_a_broken_overlay(kube_cluster, install_tree):
    """The dry run is a real check: an object the API server refuses makes it fail."""
    kube_cluster.namespace("medssr")
    broken = install_tree / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["../manifests/overlays/cpu-dev"],
                "patches": [
                    {
                        "target": {"kind": "PersistentVolumeClaim", "name": "medssr-workspace"},
                        "patch": "- op: replace\n  path: /spec/accessModes\n  value: [Sometimes]\n",
                    }
                ],
            }
        )
    )
    result = kube_cluster.kubectl("apply", "--dry-run=server", "-k", str(broken), check=False)
    assert result.returncode != 0 and "Sometimes" in result.stderr


@pytest.mark.k8s
def test_cluster_objects_built_from_the_gpu_settings(kube_cluster, kube_namespace, rendered):
    """The launchers and the InferenceService renderer fed with the gpu overlay's settings build objects that
    validate against the CRD schemas (jsonschema), whose pod templates are valid pods, whose Secret, PVC and
    service-account references exist in the manifests, and that the API server admits; `medssr status` then
    finds them all by run id."""
    from kubernetes import client

    from medssr.kube.run_status import query_run_status
    from medssr.launch.base import JobSpec, SecretEnvVar, VolumeMount
    from medssr.launch.pytorchjob import PyTorchJobLauncher, PyTorchJobLauncherConfig
    from medssr.launch.trainjob import TrainJobLauncher, TrainJobLauncherConfig

    docs = rendered["gpu"]
    defaults = ClusterDefaults.from_mapping(_by_kind(docs, "ConfigMap", "medssr-config")["data"])
    secret_keys = set(_by_kind(docs, "Secret", "medssr-s3")["data"])
    spec = JobSpec(
        run_id="gpu-settings",
        stage="train-self",
        training={"stage": "self", "model": "s3://medssr/models/base", "data": "s3://medssr/runs/r/labeled.jsonl",
                  "output_dir": "s3://medssr/runs/r/stage1"},
        image="registry.example.com/medssr:0.1.0-gpu",
        nproc_per_node=defaults.train.gpus,
        num_workers=defaults.train_workers,
        gpus_per_node=defaults.train.gpus,
        cpu=defaults.train.cpu,
        memory=defaults.train.memory,
        env={"MLFLOW_TRACKING_URI": defaults.mlflow_tracking_uri, "AWS_ENDPOINT_URL": defaults.s3_endpoint_url},
        secret_env=[SecretEnvVar(key, defaults.s3_secret, key) for key in sorted(secret_keys)],
        volumes=[VolumeMount("workspace", defaults.workspace_pvc, "/workspace")],
    )
    placement = {"namespace": kube_namespace, "kubeconfig": str(kube_cluster.kubeconfig),
                 "node_selector": defaults.train.node_selector, "tolerations": defaults.train.tolerations}
    validators = _crd_validators()
    custom = client.CustomObjectsApi(kube_cluster.api_client())
    for launcher, plural in [(PyTorchJobLauncher(PyTorchJobLauncherConfig(**placement)), "pytorchjobs"),
                             (TrainJobLauncher(TrainJobLauncherConfig(**placement)), "trainjobs")]:
        body = launcher.build_object(spec)
        errors = list(validators[(body["apiVersion"], body["kind"])].iter_errors(body))
        assert not errors, f"{body['kind']}: {errors[0].message} at {list(errors[0].path)}"
        assert body["metadata"]["labels"]["medssr.io/run-id"] == "gpu-settings"
        text = json.dumps(body)
        for key in secret_keys:
            assert f'"secretKeyRef": {{"name": "medssr-s3", "key": "{key}"}}' in text
        _by_kind(docs, "PersistentVolumeClaim", defaults.workspace_pvc)
        if body["kind"] == "PyTorchJob":
            for replica in body["spec"]["pytorchReplicaSpecs"].values():
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "replica"}, **replica["template"]}
                kubernetes_validate.validate(pod, KUBERNETES_SCHEMA_VERSION, strict=True)
                assert pod["spec"]["nodeSelector"] == defaults.train.node_selector
        custom.create_namespaced_custom_object(*body["apiVersion"].split("/"), kube_namespace, plural, body)
    # The InferenceService rendered with the same settings runs under the account that carries the S3 Secret.
    from medssr.kube import inferenceservice
    from medssr.deploy import DeployConfig

    deploy = DeployConfig(model="medssr-policy@champion", namespace=kube_namespace, run_id="gpu-settings")
    service = inferenceservice.build(deploy.with_cluster_defaults(defaults), "s3://medssr/models/policy/3")
    errors = list(validators[(service["apiVersion"], service["kind"])].iter_errors(service))
    assert not errors, f"InferenceService: {errors[0].message} at {list(errors[0].path)}"
    account = _by_kind(docs, "ServiceAccount", service["spec"]["predictor"]["serviceAccountName"])
    assert {"name": defaults.s3_secret} in account["secrets"]
    assert service["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == str(defaults.predictor.gpus)
    custom.create_namespaced_custom_object("serving.kserve.io", "v1beta1", kube_namespace, "inferenceservices", service)

    status = query_run_status(kube_cluster.api_client(), "gpu-settings", kube_namespace)
    assert sorted(o.kind for o in status.objects) == ["InferenceService", "PyTorchJob", "TrainJob"]


# ------------------------------------------------------------------------ the cluster guide's commands
CLUSTER_GUIDE = ROOT / "docs" / "cluster.md"


def shell_commands(markdown: str) -> list[str]:
    """The shell commands of the ```bash blocks of a Markdown text, in order, without comments."""
    blocks = re.findall(r"```bash\n(.*?)\n\s*```", markdown, flags=re.S)
    # a command continued over lines with a trailing backslash is one command, as the shell reads it
    lines = [line.strip() for block in blocks for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
    lines = [re.sub(r"\s+#\s.*$", "", line) for line in lines]  # a trailing comment is not part of it
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


def readme_cluster_commands() -> list[str]:
    """The shell commands of docs/cluster.md, the cluster guide, in order."""
    return shell_commands(CLUSTER_GUIDE.read_text())


def test_readme_cluster_section_is_part_of_the_guide():
    """The README's "Running on a cluster" section is a short form of the guide: each of its commands is one
    of the guide's (which test_readme_cluster_commands runs), in the guide's order."""
    text = (ROOT / "README.md").read_text()
    _, found, section = text.partition("\n## Running on a cluster\n")
    assert found, "README.md has a 'Running on a cluster' section"
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    short, guide = shell_commands(section), readme_cluster_commands()
    assert short, "the README's cluster section shows the commands"
    missing = [command for command in short if command not in guide]
    assert not missing, f"README cluster commands that docs/cluster.md does not have (and so are not run): {missing}"
    positions = [guide.index(command) for command in short]
    assert positions == sorted(positions), "the README's cluster commands are in the guide's order"


@pytest.mark.k8s
@pytest.mark.slow
def test_readme_cluster_commands(tmp_path):
    """Every command of the cluster guide (docs/cluster.md) runs here as written (RUN_ID filled in), in order, against
    a private API server (installing and deleting the namespace `medssr` must not disturb other tests). What
    needs a component that does not run here is checked as closely as it can be: `delete` does not wait for
    finalizers (no controllers clear them), `rollout status` checks the Deployment exists, `port-forward` (no pods) the Service and port, `logs` that it
    is what `medssr status` prints, `docker` lines are covered by tests/test_dockerfile.py, and medssr
    subcommands that need KFP, MLflow or an endpoint are parsed by the CLI."""
    from kubernetes import client

    from medssr import cli
    from medssr.kube.labels import standard_labels
    from medssr.kube.run_status import RunStatus, kubectl_commands
    from tests.plugins.kube import _require_build, start_kube_cluster

    _require_build()  # skips (fails under CI) like the kube_cluster fixture when the build is missing
    commands = readme_cluster_commands()
    run_id = "readme-run"
    repo = tmp_path / "repo"
    shutil.copytree(MANIFESTS, repo / "manifests", ignore=shutil.ignore_patterns("s3.env"))
    private = start_kube_cluster(tmp_path / "kube")
    try:
        private.apply_crds()

        def kubectl(args: list[str]) -> subprocess.CompletedProcess:
            result = subprocess.run([KUBECTL, "--kubeconfig", str(private.kubeconfig), *args], cwd=repo,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"kubectl {shlex.join(args)}:\n{result.stderr}"
            return result

        run_objects = {  # what `kubectl get -o name` prints for the run, by resource type
            "pytorchjobs": f"pytorchjob.kubeflow.org/{run_id}-self",
            "inferenceservices": "inferenceservice.serving.kserve.io/medssr",
        }

        def create_run_objects() -> None:
            """What the pipeline and `medssr deploy medssr@champion` create (the deploy rendered by its own
            code, with the model location given instead of resolved through MLflow)."""
            from medssr.kube import inferenceservice
            from medssr.deploy import DeployConfig

            custom = client.CustomObjectsApi(private.api_client())
            labels = standard_labels(run_id, "train-self", "training")
            template = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "pytorch", "image": "medssr:test"}]}}
            job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": f"{run_id}-self", "labels": labels},
                   "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": template}}}}
            custom.create_namespaced_custom_object("kubeflow.org", "v1", "medssr", "pytorchjobs", job)
            service = inferenceservice.build(
                DeployConfig(model="medssr@champion", namespace="medssr", run_id=run_id), "s3://medssr/mlflow/models/m-1"
            )
            custom.create_namespaced_custom_object("serving.kserve.io", "v1beta1", "medssr", "inferenceservices", service)

        docker_images = set()
        seen, unparsed = [], []
        for command in commands:
            words = shlex.split(command.replace("RUN_ID", run_id))
            env = {}
            while "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            if words[0] == "cp":
                subprocess.run(words, cwd=repo, check=True)
                seen.append("cp")
            elif words[:2] == ["kubectl", "rollout"]:
                kubectl(["get", words[3], "-n", "medssr"])
                seen.append("rollout")
            elif words[:2] == ["kubectl", "port-forward"]:
                service = words[words.index("-n") + 2]
                port = kubectl(["get", service, "-n", "medssr", "-o", "jsonpath={.spec.ports[0].port}"]).stdout
                assert words[-1] == f"{port}:{port}"
                seen.append("port-forward")
            elif words[:2] == ["kubectl", "logs"]:
                status = RunStatus(run_id=run_id, namespace="medssr", objects=[], missing_kinds=[])
                assert command.replace("RUN_ID", run_id) in kubectl_commands(status)
                seen.append("logs")
            elif words[0] == "kubectl":
                # With no controllers, finalizers (PVC protection, the namespace) are never cleared: don't wait.
                kubectl(words[1:] + (["--wait=false"] if words[1] == "delete" else []))
                seen.append(" ".join(words[1:3]))
                if words[1:3] == ["apply", "-k"]:
                    create_run_objects()
                if words[1] == "get":
                    listed = kubectl(words[1:] + ["-o", "name"]).stdout.split()
                    types = words[2].split(",")
                    assert sorted(listed) == sorted(name for kind, name in run_objects.items() if kind in types), command
                if words[1:3] == ["delete", "pytorchjobs,trainjobs,inferenceservices"]:
                    assert kubectl(["get", "pytorchjobs,inferenceservices", "-n", "medssr", "-o", "name"]).stdout == ""
                if words[1:3] == ["delete", "-k"]:
                    assert kubectl(["get", "roles", "-n", "medssr", "-o", "name"]).stdout == ""
            elif words[0] == "docker":
                if words[1] == "push":
                    docker_images.add(words[2])
                seen.append("docker")
            elif words[:3] == ["sudo", "make", "image"]:
                # Built for real by `make test` (tests/test_image.py runs it); here: the target exists.
                subprocess.run(["make", "-n", "image"], cwd=ROOT, check=True, capture_output=True)
                seen.append("make image")
            elif words[:3] == ["sudo", "buildah", "push"]:
                from medssr.cluster import DEFAULT_IMAGE

                assert words[3] == DEFAULT_IMAGE, "push the name `make image` tags"
                docker_images.add(words[4].removeprefix("docker://"))
                seen.append("buildah push")
            elif words[:3] == ["medssr", "pipeline", "compile"]:
                # Compiles for real: the step images are the ones the README builds and pushes.
                result = subprocess.run([sys.executable, "-m", "medssr.cli", *words[1:]], cwd=repo, capture_output=True,
                                        text=True, timeout=120, env={**os.environ, **env})
                assert result.returncode == 0, result.stderr
                compiled = (repo / words[words.index("--out") + 1]).read_text()
                assert set(env.values()) == docker_images, "the pipeline runs the images the README pushes"
                for image in env.values():
                    assert f"image: {image}" in compiled
                assert "ghcr.io/medssr" not in compiled
                seen.append("medssr pipeline compile")
            elif words[:2] == ["medssr", "status"]:
                # As the pipeline's own service account: its Role is enough for `medssr status`.
                token = private.service_account_token("medssr", "medssr-pipeline", create=False)
                config = yaml.safe_load(private.kubeconfig.read_text())
                config["users"][0]["user"] = {"token": token}
                account_config = tmp_path / "pipeline-kubeconfig"
                account_config.write_text(yaml.safe_dump(config))
                assert cli.main([*words[1:], "--kubeconfig", str(account_config)]) == 0
                seen.append("medssr status")
            elif words[0] == "medssr":
                # Needs KFP, the MLflow server or a served model: the CLI must accept it as written.
                try:
                    args = cli.build_parser().parse_args(words[1:])
                except SystemExit:
                    unparsed.append(command)
                    continue
                assert callable(args.func)
                if getattr(args, "package", None):
                    assert (repo / args.package).is_file(), "submit sends the package compiled above"
                seen.append(f"medssr {words[1]}")
            else:
                pytest.fail(f"README command not covered by this test: {command}")
    finally:
        private.stop()
    assert not unparsed, f"README commands the medssr CLI rejects: {unparsed}"
    assert {"cp", "create namespace", "apply --dry-run=server", "apply -k", "rollout", "docker", "medssr pipeline compile",
            "medssr pipeline", "medssr status", "get pytorchjobs,trainjobs,inferenceservices,pods", "logs", "port-forward",
            "medssr promote", "medssr deploy", "get inferenceservices", "medssr ask",
            "delete pytorchjobs,trainjobs,inferenceservices", "delete -k"} <= set(seen)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_install_names_are_the_ones_medssr_cluster_declares(rendered, overlay):
    """medssr.cluster's namespace, service accounts and ClusterSettings (the defaults of train --launcher, the
    pipeline's wiring, submit and deploy) are what manifests/ installs: the ConfigMap, the S3 Secret and its keys,
    the workspace PVC, the labels, and on the gpu overlay the GPU placement."""
    from medssr import cluster

    docs, settings = rendered[overlay], cluster.ClusterSettings()
    data = _by_kind(docs, "ConfigMap", settings.config_map)["data"]
    defaults = ClusterDefaults.from_mapping(data)
    assert (defaults.namespace, defaults.predictor_service_account) == (cluster.NAMESPACE, cluster.PREDICTOR_SERVICE_ACCOUNT)
    assert (defaults.s3_secret, defaults.workspace_pvc) == (settings.s3_secret, settings.workspace_pvc)
    assert sorted(_by_kind(docs, "Secret", settings.s3_secret)["data"]) == sorted(settings.s3_secret_keys)
    _by_kind(docs, "PersistentVolumeClaim", settings.workspace_pvc)
    _by_kind(docs, "ServiceAccount", cluster.PIPELINE_SERVICE_ACCOUNT)
    assert _by_kind(docs, "ServiceAccount", cluster.PREDICTOR_SERVICE_ACCOUNT)["secrets"] == [{"name": settings.s3_secret}]
    assert {doc["metadata"]["namespace"] for doc in docs if doc["kind"] != "Namespace"} == {cluster.NAMESPACE}
    for doc in docs:
        assert settings.pod_labels.items() <= doc["metadata"]["labels"].items(), doc["metadata"]["name"]
    if overlay == "gpu":
        for workload in (defaults.train, defaults.predictor):
            assert (workload.node_selector, workload.tolerations) == settings.gpu_placement(workload.gpus)
