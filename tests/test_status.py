"""`medssr status RUN_ID`: phases read from job/service/pod status, and the command against the real API
server, where the test plays the operators (it creates the run's objects and patches their `.status`)."""

from __future__ import annotations

import datetime as dt
import shlex
import subprocess
import sys
import types

import pytest

from medssr import cli
from medssr.kube import inferenceservice, pods, pytorchjob, run_status, trainjob
from medssr.kube.labels import run_selector, standard_labels, validate_label_value
from medssr.kube.run_status import RunObject, RunStatus, format_status_table, human_age, kubectl_commands, query_run_status

NOW = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.timezone.utc)


# -------------------------------------------------------------------------------------------- labels
def test_standard_labels():
    labels = standard_labels("run-7", "train-self", "trainer")
    assert labels == {
        "medssr.io/run-id": "run-7",
        "medssr.io/stage": "train-self",
        "app.kubernetes.io/name": "medssr",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/part-of": "medssr",
        "app.kubernetes.io/managed-by": "medssr",
    }
    assert run_selector("run-7") == "medssr.io/run-id=run-7"


@pytest.mark.parametrize("bad", ["-run", "run_", "a" * 64, "run 7", "run/7", "ü"])
def test_label_values_are_checked(bad):
    with pytest.raises(ValueError, match="run_id="):
        standard_labels(bad, "train-self", "trainer")
    assert validate_label_value("a" * 63, "x") == "a" * 63


# -------------------------------------------------------------------------------------------- phases
def _cond(type_: str, status: str = "True", reason: str = "", message: str = "", at: str = "2026-11-25T11:00:00Z"):
    condition = {"type": type_, "status": status, "lastTransitionTime": at}
    condition.update({k: v for k, v in (("reason", reason), ("message", message)) if v})
    return condition


def phase(reader, status: dict) -> tuple[str, str]:
    """(phase, detail) a kind's state reader gives an object with this status."""
    state = reader({"status": status})
    return state.phase, state.detail


def test_pytorchjob_phase():
    assert phase(pytorchjob.state, {}) == ("Pending", "")
    created = _cond("Created", at="2026-11-25T11:00:00Z")
    running = _cond("Running", reason="JobRunning", at="2026-11-25T11:01:00Z")
    assert phase(pytorchjob.state, {"conditions": [created, running]}) == ("Running", "JobRunning")
    # The operator keeps Running=False next to a final condition; the final one wins.
    done = [created, {**running, "status": "False"}, _cond("Succeeded", reason="JobSucceeded", at="2026-11-25T11:09:00Z")]
    assert phase(pytorchjob.state, {"conditions": done}) == ("Succeeded", "JobSucceeded")
    failed = [created, _cond("Failed", reason="JobFailed", message="master exited with code 1")]
    assert phase(pytorchjob.state, {"conditions": failed}) == ("Failed", "JobFailed: master exited with code 1")


def test_trainjob_phase():
    assert phase(trainjob.state, {}) == ("Created", "")
    assert phase(trainjob.state, {"jobsStatus": [{"name": "node", "active": 2}]}) == ("Running", "node: 2 active, 0 ready")
    assert phase(trainjob.state, {"conditions": [_cond("Complete", reason="JobsCompleted")]}) == ("Complete", "JobsCompleted")
    assert phase(trainjob.state, {"conditions": [_cond("Failed", reason="BackoffLimitExceeded")]})[0] == "Failed"
    assert phase(trainjob.state, {"conditions": [_cond("Suspended", reason="Suspended")]})[0] == "Suspended"


def test_inferenceservice_phase():
    assert phase(inferenceservice.state, {}) == ("Pending", "no status conditions yet (is the KServe controller running?)")
    ready = {"url": "http://m.medssr.example.com", "conditions": [_cond("PredictorReady"), _cond("Ready")]}
    assert phase(inferenceservice.state, ready) == ("Ready", "http://m.medssr.example.com")
    waiting = {"conditions": [_cond("PredictorReady", "False", "RevisionMissing", "no revision"), _cond("Ready", "False")]}
    assert phase(inferenceservice.state, waiting) == ("NotReady", "PredictorReady=False: RevisionMissing: no revision")


def test_pod_phase():
    assert phase(pods.state, {}) == ("Pending", "")
    crash = {
        "phase": "Running",
        "containerStatuses": [
            {"name": "pytorch", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
        ],
    }
    assert phase(pods.state, crash) == ("Running", "pytorch: CrashLoopBackOff, restarts=3")
    done = {"phase": "Succeeded", "containerStatuses": [{"name": "p", "state": {"terminated": {"reason": "Completed"}}}]}
    assert phase(pods.state, done) == ("Succeeded", "")


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(5, "5s"), (119, "119s"), (200, "3m20s"), (540, "9m"), (3000, "50m"), (4 * 3600 + 600, "4h10m"),
     (20 * 3600, "20h"), (3 * 86400 + 7200, "3d2h"), (30 * 86400, "30d"), (-3, "0s")],
)
def test_human_age(seconds, expected):
    assert human_age(NOW - dt.timedelta(seconds=seconds), NOW) == expected
    assert human_age(None, NOW) == "<unknown>"


def test_table_and_commands():
    status = RunStatus(
        run_id="r1",
        namespace="ml",
        objects=[
            RunObject("PyTorchJob", "r1-self", "train-self", "Succeeded", "", NOW - dt.timedelta(minutes=30)),
            RunObject("Pod", "r1-self-master-0", "train-self", "Succeeded", "", NOW - dt.timedelta(minutes=29)),
        ],
        missing_kinds=["TrainJob"],
    )
    lines = format_status_table(status, NOW).splitlines()
    assert lines[0].split() == ["KIND", "NAME", "STAGE", "PHASE", "AGE", "DETAIL"]
    assert lines[1].split() == ["PyTorchJob", "r1-self", "train-self", "Succeeded", "30m", "-"]
    assert lines[2].split() == ["Pod", "r1-self-master-0", "train-self", "Succeeded", "29m", "-"]
    assert len({line.index("STAGE") if "STAGE" in line else line.index("train-self") for line in lines}) == 1
    commands = kubectl_commands(status)
    # An unserved kind would make kubectl refuse the whole `get`, so it is left out.
    assert commands[0] == "kubectl get pytorchjobs,inferenceservices,pods -n ml -l medssr.io/run-id=r1"
    assert "kubectl describe pytorchjob r1-self -n ml" in commands
    assert "kubectl logs -n ml r1-self-master-0 --all-containers" in commands


# ----------------------------------------------------------------------------------- real API server
def _job(kind: str, name: str, run_id: str, stage: str) -> dict:
    labels = standard_labels(run_id, stage, "trainer")
    pod = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "node", "image": "medssr:test"}]}}
    if kind == "PyTorchJob":
        spec = {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}}
        return {"apiVersion": "kubeflow.org/v1", "kind": kind, "metadata": {"name": name, "labels": labels}, "spec": spec}
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "labels": labels},
        "spec": {"runtimeRef": {"name": "torch-distributed"}, "trainer": {"image": "medssr:test", "numNodes": 1}},
    }


def _isvc(name: str, run_id: str) -> dict:
    labels = standard_labels(run_id, "serve", "predictor")
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": labels},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": "s3://medssr/m"}}},
    }


@pytest.fixture(scope="module")
def run_objects(kube_cluster):
    """A run with two PyTorchJobs, a TrainJob, an InferenceService and pods in several states, plus another
    run's job that must not show up."""
    import secrets

    from kubernetes import client

    namespace = kube_cluster.namespace(f"medssr-status-{secrets.token_hex(3)}")
    run_id = f"run-{secrets.token_hex(3)}"
    api = kube_cluster.api_client()
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    resources = {kind.KIND: (kind.GROUP, kind.VERSION, kind.PLURAL) for kind in run_status.RUN_CUSTOM_RESOURCES}

    def create(body: dict, status: dict | None = None) -> None:
        group, version, plural = resources[body["kind"]]
        custom.create_namespaced_custom_object(group, version, namespace, plural, body)
        if status is not None:
            custom.patch_namespaced_custom_object_status(
                group, version, namespace, plural, body["metadata"]["name"], {"status": status}
            )

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    create(
        _job("PyTorchJob", f"{run_id}-self", run_id, "train-self"),
        {"conditions": [_cond("Created", at=now), _cond("Succeeded", reason="PyTorchJobSucceeded", at=now)]},
    )
    create(
        _job("PyTorchJob", f"{run_id}-supervised", run_id, "train-supervised"),
        {"conditions": [_cond("Created", at=now), _cond("Failed", reason="PyTorchJobFailed", message="OOMKilled", at=now)]},
    )
    # Trainer v2.3 requires every count of a jobsStatus entry.
    running = {"name": "node", "active": 1, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}
    create(_job("TrainJob", f"{run_id}-tj", run_id, "train-self"), {"jobsStatus": [running]})
    create(
        _isvc(f"{run_id}-isvc", run_id),
        {"url": "http://isvc.example.com", "conditions": [_cond("PredictorReady", at=now), _cond("Ready", at=now)]},
    )
    create(_job("PyTorchJob", "other-run-job", "other-run", "train-self"), {"conditions": [_cond("Running", at=now)]})

    def pod(name: str, labels: dict, status: dict) -> None:
        body = client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1PodSpec(containers=[client.V1Container(name="pytorch", image="medssr:test")]),
        )
        core.create_namespaced_pod(namespace, body)
        core.patch_namespaced_pod_status(name, namespace, {"status": status})

    pod(
        f"{run_id}-self-master-0",
        standard_labels(run_id, "train-self", "trainer"),
        {"phase": "Succeeded"},
    )
    # A worker pod carrying only the operator's label (its template was not labelled): found via its job.
    pod(
        f"{run_id}-supervised-worker-0",
        {"training.kubeflow.org/job-name": f"{run_id}-supervised"},
        {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "pytorch",
                    "image": "medssr:test",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                }
            ],
        },
    )
    pod("other-run-master-0", standard_labels("other-run", "train-self", "trainer"), {"phase": "Running"})
    return namespace, run_id


@pytest.mark.k8s
def test_query_run_status(kube_cluster, run_objects):
    namespace, run_id = run_objects
    status = query_run_status(kube_cluster.api_client(), run_id, namespace)
    assert status.missing_kinds == []
    rows = {(o.kind, o.name): o for o in status.objects}
    assert set(rows) == {
        ("PyTorchJob", f"{run_id}-self"),
        ("PyTorchJob", f"{run_id}-supervised"),
        ("TrainJob", f"{run_id}-tj"),
        ("InferenceService", f"{run_id}-isvc"),
        ("Pod", f"{run_id}-self-master-0"),
        ("Pod", f"{run_id}-supervised-worker-0"),
    }
    assert (rows[("PyTorchJob", f"{run_id}-self")].phase, rows[("PyTorchJob", f"{run_id}-self")].stage) == (
        "Succeeded",
        "train-self",
    )
    failed = rows[("PyTorchJob", f"{run_id}-supervised")]
    assert (failed.phase, failed.detail, failed.stage) == ("Failed", "PyTorchJobFailed: OOMKilled", "train-supervised")
    assert rows[("TrainJob", f"{run_id}-tj")].phase == "Running"
    assert (rows[("InferenceService", f"{run_id}-isvc")].phase, rows[("InferenceService", f"{run_id}-isvc")].detail) == (
        "Ready",
        "http://isvc.example.com",
    )
    worker = rows[("Pod", f"{run_id}-supervised-worker-0")]
    assert (worker.phase, worker.detail) == ("Running", "pytorch: CrashLoopBackOff, restarts=2")
    assert all(o.created is not None for o in status.objects)
    # Jobs first, then pods; a kind's objects in creation order.
    assert [o.kind for o in status.objects][-2:] == ["Pod", "Pod"]


@pytest.mark.k8s
def test_status_command_and_its_kubectl_equivalent(kube_cluster, run_objects, capsys):
    namespace, run_id = run_objects
    code = cli.main(["status", run_id, "--namespace", namespace, "--kubeconfig", str(kube_cluster.kubeconfig)])
    out = capsys.readouterr().out
    assert code == 0
    table, _, commands = out.partition("\nThe same with kubectl:\n")
    lines = table.strip().splitlines()
    assert lines[0].split()[:5] == ["KIND", "NAME", "STAGE", "PHASE", "AGE"]
    body = {line.split()[1]: line.split() for line in lines[1:]}
    assert body[f"{run_id}-supervised"][:4] == ["PyTorchJob", f"{run_id}-supervised", "train-supervised", "Failed"]
    assert body[f"{run_id}-supervised"][4].endswith("s")  # created seconds ago
    assert "other-run-job" not in out and "other-run-master-0" not in out
    printed = [line.strip() for line in commands.strip().splitlines()]
    get = f"kubectl get pytorchjobs,trainjobs,inferenceservices,pods -n {namespace} -l medssr.io/run-id={run_id}"
    assert printed[0] == get
    assert f"kubectl describe pytorchjob {run_id}-supervised -n {namespace}" in printed
    # The printed kubectl command lists the same objects (except pods found only through their job).
    result = kube_cluster.kubectl(*shlex.split(get)[1:], "-o", "name")
    assert sorted(n.split("/", 1)[1] for n in result.stdout.split()) == sorted(
        n for n in body if n != f"{run_id}-supervised-worker-0"
    )


@pytest.mark.k8s
def test_status_of_an_unknown_run(kube_cluster, run_objects, capsys):
    namespace, _ = run_objects
    code = cli.main(["status", "no-such-run", "-n", namespace, "--kubeconfig", str(kube_cluster.kubeconfig)])
    assert code == 1
    assert f"No objects labelled medssr.io/run-id=no-such-run in namespace {namespace}" in capsys.readouterr().out


@pytest.mark.k8s
def test_status_reports_an_uninstalled_crd(kube_cluster, run_objects, monkeypatch):
    """The API server answers 404 for a kind it does not serve; status lists the rest and names the kind."""
    namespace, run_id = run_objects
    mpijob = types.SimpleNamespace(KIND="MPIJob", GROUP="kubeflow.org", VERSION="v2beta1", PLURAL="mpijobs",
                                   POD_OWNER_LABEL="training.kubeflow.org/job-name", state=pytorchjob.state)
    monkeypatch.setattr(run_status, "RUN_CUSTOM_RESOURCES", (*run_status.RUN_CUSTOM_RESOURCES, mpijob))
    status = query_run_status(kube_cluster.api_client(), run_id, namespace)
    assert status.missing_kinds == ["MPIJob"]
    assert len(status.objects) == 6
    assert "mpijobs" not in kubectl_commands(status)[0]


def test_status_without_cluster_credentials(tmp_path):
    """A user error, one line, exit 2 (run as a process: the console entry point end to end)."""
    result = subprocess.run(
        [sys.executable, "-m", "medssr.cli", "status", "r1", "--kubeconfig", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"medssr status: error: kubeconfig {tmp_path / 'missing'} does not exist"
