"""Launchers: the local torchrun backend on real processes, and the PyTorchJob / TrainJob backends against the real
kube-apiserver of tests/plugins/kube.py (no controllers run: the tests play the operator by patching `.status`)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from medssr.launch import (
    JobSpec,
    LocalLauncher,
    LocalLauncherConfig,
    PyTorchJobLauncher,
    PyTorchJobLauncherConfig,
    SecretEnvVar,
    TrainingJobFailed,
    TrainJobLauncher,
    TrainJobLauncherConfig,
    VolumeMount,
    build_launcher,
    job_name,
    launcher_config_from_dict,
    run_training_job,
)
from medssr.launch.base import training_arguments
from medssr.kube.trainjob import PATCH_MANAGER, TRAINER_NODE
from tests.plugins.kube import fields_outside_schema, missing_or_changed, openapi_schema

IMAGE = "registry.example.com/medssr:0.1.0-gpu"
TRAINING = {"stage": "self", "model": "/data/models/base", "data": "/data/train.jsonl", "output_dir": "/ckpt/stage1", "max_steps": 5, "use_vllm": True}


# --- pure logic ---------------------------------------------------------------------------------------------


def test_job_names_are_dns_labels_derived_from_run_and_stage():
    assert job_name("run42", "train-self") == "run42-train-self"
    lossy = job_name("Run_42", "train-self")
    assert lossy.startswith("run-42-train-self-") and lossy != job_name("run-42", "train-self")
    long_a, long_b = job_name("a" * 70, "train-self"), job_name("a" * 69 + "b", "train-self")
    assert len(long_a) <= 63 and len(long_b) <= 63 and long_a != long_b
    assert job_name("7f3a", "train-self")[0].isalpha()
    assert job_name("run42", "train-self") == job_name("run42", "train-self")  # never random


def test_job_spec_rejects_bad_settings_before_anything_runs():
    with pytest.raises(ValueError, match="unknown setting"):
        JobSpec(run_id="r1", stage="train-self", training={**TRAINING, "learning_rat": 1e-6})
    with pytest.raises(ValueError, match="output_dir"):
        JobSpec(run_id="r1", stage="train-self", training={"stage": "self", "model": "m", "data": "d"})
    with pytest.raises(ValueError, match="run_id"):
        JobSpec(run_id="run:1", stage="train-self", training=TRAINING)
    assert training_arguments({"learning_rate": 1e-6, "use_vllm": False, "checkpoint_dir": None}) == [
        "--learning-rate", "1e-06", "--use-vllm", "false"
    ]


def test_vllm_tensor_parallel_groups_stay_on_one_node(tmp_path):
    from medssr.training.config import TrainingConfig
    from medssr.training.grpo import build_grpo_config

    eight_b = {**TRAINING, "vllm_tensor_parallel_size": 4, "vllm_gpu_memory_utilization": 0.5}
    assert JobSpec(run_id="r1", stage="train-self", training=eight_b, nproc_per_node=8, gpus_per_node=8).training == eight_b
    grpo_config = build_grpo_config(TrainingConfig(**{**eight_b, "output_dir": str(tmp_path)}), tmp_path / "checkpoints")
    assert (grpo_config.vllm_tensor_parallel_size, grpo_config.vllm_gpu_memory_utilization) == (4, 0.5)  # TRL's names
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size=4 must divide nproc_per_node=6"):
        JobSpec(run_id="r1", stage="train-self", training=eight_b, nproc_per_node=6, gpus_per_node=6)
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size: must be at least 1"):
        JobSpec(run_id="r1", stage="train-self", training={**TRAINING, "vllm_tensor_parallel_size": 0})


def test_launcher_configs_come_from_plain_data():
    config = launcher_config_from_dict({"backend": "pytorchjob", "namespace": "medssr", "delete_on_timeout": False})
    assert isinstance(config, PyTorchJobLauncherConfig) and config.namespace == "medssr" and not config.delete_on_timeout
    assert isinstance(launcher_config_from_dict({}), LocalLauncherConfig)
    with pytest.raises(ValueError, match="runtime_name"):
        launcher_config_from_dict({"backend": "pytorchjob", "runtime_name": "torch-distributed"})
    with pytest.raises(ValueError, match="backend"):
        launcher_config_from_dict({"backend": "slurm"})
    spec = JobSpec(run_id="r1", stage="train-self", training=TRAINING, volumes=[{"name": "ws", "claim_name": "pvc", "mount_path": "/data"}])
    assert spec.volumes == [VolumeMount(name="ws", claim_name="pvc", mount_path="/data")]


# --- local backend ------------------------------------------------------------------------------------------

PROBE = '''
"""A stand-in entry module: prints its rank, then exits as told."""
import argparse, os, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--sleep", type=float, default=0)
args = parser.parse_args()
print(f"probe rank={os.environ['RANK']} world={os.environ['WORLD_SIZE']} secret={os.environ.get('PROBE_TOKEN', '-')} pid={os.getpid()}", flush=True)
time.sleep(args.sleep)
if args.exit_code:
    print(f"probe failing on purpose with {args.exit_code}", file=sys.stderr, flush=True)
sys.exit(args.exit_code)
'''


@pytest.fixture
def probe_spec(tmp_path):
    (tmp_path / "probe_pkg").mkdir()
    (tmp_path / "probe_pkg" / "launch_probe.py").write_text(PROBE)

    def make(stage: str, nproc: int = 1, **training) -> JobSpec:
        return JobSpec(
            run_id="local1",
            stage=stage,
            training=training,
            nproc_per_node=nproc,
            env={"PYTHONPATH": str(tmp_path / "probe_pkg"), "PROBE_TOKEN": "from-env"},
            entry_module="launch_probe",
        )

    return make


@pytest.mark.slow
def test_local_launcher_runs_torchrun_and_maps_exit_status(tmp_path, probe_spec):
    launcher = build_launcher(LocalLauncherConfig(work_dir=str(tmp_path / "jobs")))
    assert isinstance(launcher, LocalLauncher)

    ok = launcher.submit(probe_spec("ok", nproc=2))
    bad = launcher.submit(probe_spec("bad", exit_code=3))
    status = launcher.wait(ok, timeout=120)
    assert status.state == "Succeeded", status
    lines = list(launcher.logs(ok))
    assert any("probe rank=0 world=2 secret=from-env" in line for line in lines)
    assert any("probe rank=1 world=2" in line for line in lines)
    assert ok.log_path == tmp_path / "jobs" / "local1-ok" / "train.log"

    failed = launcher.wait(bad, timeout=120)
    assert failed.state == "Failed" and failed.reason.startswith("ExitCode")
    assert "probe failing on purpose with 3" in failed.message  # the last log lines travel with the status


@pytest.mark.slow
def test_local_launcher_times_out_and_stops_the_process_tree(tmp_path, probe_spec):
    launcher = LocalLauncher(LocalLauncherConfig(work_dir=str(tmp_path / "jobs"), stop_grace_s=5))
    handle = launcher.submit(probe_spec("slow", sleep=600))
    deadline = time.monotonic() + 60
    while not (probe := [line for line in launcher.logs(handle) if "probe rank=0" in line]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert probe, "the probe never started"
    status = launcher.wait(handle, timeout=0.5)
    assert status.state == "Timeout" and "process stopped" in status.message
    # The rank process itself (a grandchild, under torchrun) is gone too.
    with pytest.raises(ProcessLookupError):
        os.kill(int(probe[0].rsplit("pid=", 1)[1]), 0)
    assert launcher.wait(handle, timeout=1).state == "Failed"  # stopped by a signal, not a success


@pytest.mark.slow
def test_run_training_job_trains_the_tiny_model_under_torchrun(tmp_path, tiny_model):
    from medssr.data import MCQItem, write_jsonl

    items = [
        MCQItem(id=f"q{i}", stem=f"Which letter is number {i % 3}?", options={"A": "zero", "B": "one", "C": "two"}, answer="ABC"[i % 3])
        for i in range(4)
    ]
    write_jsonl(tmp_path / "train.jsonl", items)
    out = tmp_path / "out"
    spec = JobSpec(
        run_id="localreal",
        stage="train-supervised",
        training={
            "stage": "supervised",
            "model": str(tiny_model),
            "data": str(tmp_path / "train.jsonl"),
            "output_dir": str(out),
            "max_steps": 2,
            "num_generations": 2,
            "per_device_train_batch_size": 2,
            "max_completion_length": 8,
            "save_steps": 100,
        },
    )
    lines: list[str] = []
    status = run_training_job(LocalLauncherConfig(work_dir=str(tmp_path / "jobs")), spec, timeout=300, log_sink=lines.append)
    assert status.state == "Succeeded", status
    assert list(out.glob("*.safetensors")), sorted(p.name for p in out.iterdir())
    summary = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    assert summary["global_step"] == 2


# --- cluster backends against the real API server --------------------------------------------------------

def cluster_spec(run_id: str, stage: str = "train-self", **overrides) -> JobSpec:
    values = dict(
        run_id=run_id,
        stage=stage,
        training=TRAINING,
        image=IMAGE,
        nproc_per_node=4,
        num_workers=2,
        gpus_per_node=4,
        memory="64Gi",
        env={"HF_HUB_OFFLINE": "1"},
        secret_env=[SecretEnvVar(name="AWS_ACCESS_KEY_ID", secret_name="medssr-s3", key="accessKey")],
        volumes=[VolumeMount(name="workspace", claim_name="medssr-workspace", mount_path="/data")],
        labels={"team": "rare-disease"},
    )
    values.update(overrides)
    return JobSpec(**values)


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# Every placement and lifetime setting a cluster launcher passes on.
FULL_PLACEMENT = dict(
    service_account_name="medssr-trainer",
    node_selector={"nvidia.com/gpu.present": "true"},
    tolerations=[GPU_TOLERATION],
    ttl_seconds_after_finished=600,
    active_deadline_seconds=86400,
)


def large_model_spec(run_id: str) -> JobSpec:
    """An 8B model on two nodes of 8 GPUs, vLLM split over 2 GPUs per engine: every field a launcher can set is set."""
    return cluster_spec(
        run_id,
        training={**TRAINING, "model": "/models/qwen3-8b", "vllm_tensor_parallel_size": 2, "vllm_gpu_memory_utilization": 0.5},
        nproc_per_node=8,
        num_workers=1,
        gpus_per_node=8,
        cpu="32",
        memory="256Gi",
        shm_size="64Gi",
        secret_env=[
            SecretEnvVar(name="AWS_ACCESS_KEY_ID", secret_name="medssr-s3", key="accessKey"),
            SecretEnvVar(name="HF_TOKEN", secret_name="hf", key="token", optional=True),
        ],
        volumes=[
            VolumeMount(name="workspace", claim_name="medssr-workspace", mount_path="/data"),
            VolumeMount(name="models", claim_name="medssr-models", mount_path="/models", read_only=True, sub_path="qwen3"),
        ],
    )


def strategic_merge(base, patch):
    """Kubernetes' strategic merge as the trainer applies a runtime patch to the runtime's JobSet template, for the
    lists a patch of ours touches: replicatedJobs, containers, volumes, volumeMounts and env merge by name, other
    lists (tolerations) are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{key: strategic_merge(base[key], value) if key in base else value for key, value in patch.items()}}
    named = isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base + patch)
    if named:
        patches = {item["name"]: item for item in patch}
        kept = [strategic_merge(item, patches.pop(item["name"])) if item["name"] in patches else item for item in base]
        return kept + list(patches.values())
    return patch


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def play_operator(kube_cluster, launcher, handle, steps: list[tuple[float, dict]]) -> threading.Thread:
    """Patch the job's status subresource in a thread: each step (delay, status) after the previous one."""
    from kubernetes import client

    custom = client.CustomObjectsApi(kube_cluster.api_client())

    def run():
        for delay, status in steps:
            time.sleep(delay)
            custom.patch_namespaced_custom_object_status(
                launcher.group, launcher.version, handle.namespace, launcher.plural, handle.name, {"status": status}
            )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def pytorchjob_conditions(*pairs: tuple[str, str, str, str]) -> dict:
    return {
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": now(), "lastUpdateTime": now()} for t, s, r, m in pairs
        ]
    }


def pytorch_launcher(kube_cluster, namespace, **config) -> PyTorchJobLauncher:
    return build_launcher(PyTorchJobLauncherConfig(namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig), **config))


def trainjob_launcher(kube_cluster, namespace, **config) -> TrainJobLauncher:
    return build_launcher(TrainJobLauncherConfig(namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig), **config))


@pytest.mark.k8s
def test_pytorchjob_object_carries_the_spec_and_labels(kube_cluster, kube_namespace):
    launcher = pytorch_launcher(kube_cluster, kube_namespace, ttl_seconds_after_finished=600, node_selector={"nvidia.com/gpu.present": "true"})
    handle = launcher.submit(cluster_spec("run7"))
    assert handle.name == "run7-train-self"
    job = launcher.get(handle)  # read back from the server: what survived schema validation and pruning

    labels = job["metadata"]["labels"]
    assert labels["medssr.io/run-id"] == "run7" and labels["medssr.io/stage"] == "train-self"
    assert labels["app.kubernetes.io/name"] == "medssr" and labels["app.kubernetes.io/component"] == "training"
    assert labels["app.kubernetes.io/part-of"] == "medssr" and labels["team"] == "rare-disease"
    spec = job["spec"]
    assert spec["runPolicy"]["ttlSecondsAfterFinished"] == 600 and spec["nprocPerNode"] == "4"
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    template = spec["pytorchReplicaSpecs"]["Worker"]["template"]
    assert template["metadata"]["labels"]["medssr.io/run-id"] == "run7"
    pod = template["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # A GPU pod gets a memory-backed /dev/shm beside its claims (NCCL needs more than the container's 64 MiB).
    assert pod["volumes"] == [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": "medssr-workspace"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch" and container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["command"][:4] == ["python", "-m", "torch.distributed.run", "--nproc-per-node=4"]
    command = container["command"]
    assert command[command.index("-m", 3) + 1] == "medssr.training"
    assert command[command.index("--data") + 1] == "/data/train.jsonl" and command[command.index("--use-vllm") + 1] == "true"
    assert {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "medssr-s3", "key": "accessKey"}}} in container["env"]
    assert container["volumeMounts"] == [{"name": "workspace", "mountPath": "/data"}, {"name": "dshm", "mountPath": "/dev/shm"}]

    listed = kube_cluster.kubectl("get", "pytorchjobs", "-n", kube_namespace, "-l", "medssr.io/run-id=run7", "-o", "name")
    assert listed.stdout.split() == ["pytorchjob.kubeflow.org/run7-train-self"]
    other = kube_cluster.kubectl("get", "pytorchjobs", "-n", kube_namespace, "-l", "medssr.io/run-id=run8", "-o", "name")
    assert other.stdout.strip() == ""


@pytest.mark.k8s
@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_every_field_we_set_survives_admission(kube_cluster, kube_namespace, backend):
    """Created on the server under the operator's own CRD and read back: every field we sent is there with the same
    value. A structural schema prunes what it does not declare without an error (how TrainJob lost its volumes,
    service account and placement when Trainer v2.3 replaced podSpecOverrides with runtimePatches)."""
    make_launcher = {"pytorchjob": pytorch_launcher, "trainjob": trainjob_launcher}[backend]
    launcher = make_launcher(kube_cluster, kube_namespace, **FULL_PLACEMENT)
    spec = large_model_spec(f"intact-{backend}")
    sent = launcher.build_object(spec)
    assert fields_outside_schema(sent, openapi_schema(sent)) == []
    stored = launcher.get(launcher.submit(spec))
    assert missing_or_changed(sent, stored) == []


@pytest.mark.k8s
def test_pytorchjob_requests_gpus_shared_memory_and_placement(kube_cluster, kube_namespace):
    launcher = pytorch_launcher(kube_cluster, kube_namespace, **FULL_PLACEMENT)
    job = launcher.get(launcher.submit(large_model_spec("big1")))
    for replica, count in (("Master", 1), ("Worker", 1)):
        replica_spec = job["spec"]["pytorchReplicaSpecs"][replica]
        pod = replica_spec["template"]["spec"]
        assert replica_spec["replicas"] == count and pod["serviceAccountName"] == "medssr-trainer"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["tolerations"] == [GPU_TOLERATION]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]
        (container,) = pod["containers"]
        # CPU is requested, not capped (a capped CPU throttles the training processes); a GPU's request is its limit.
        assert container["resources"] == {"requests": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"},
                                          "limits": {"memory": "256Gi", "nvidia.com/gpu": "8"}}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        command = container["command"]
        assert command[3] == "--nproc-per-node=8"
        assert command[command.index("--vllm-tensor-parallel-size") + 1] == "2"
        assert command[command.index("--vllm-gpu-memory-utilization") + 1] == "0.5"
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 86400


@pytest.mark.k8s
def test_pytorchjob_wait_follows_conditions_to_succeeded(kube_cluster, kube_namespace):
    config = PyTorchJobLauncherConfig(namespace=kube_namespace, kubeconfig=str(kube_cluster.kubeconfig), poll_interval_s=0.2)
    launcher = build_launcher(config)
    handle = launcher.submit(cluster_spec("run1", num_workers=0))
    operator = play_operator(
        kube_cluster,
        launcher,
        handle,
        [
            (0.3, pytorchjob_conditions(("Created", "True", "PyTorchJobCreated", "created"))),
            (0.3, pytorchjob_conditions(("Created", "True", "PyTorchJobCreated", "created"), ("Running", "True", "PyTorchJobRunning", "running"))),
            (0.5, pytorchjob_conditions(("Running", "False", "PyTorchJobSucceeded", ""),
                                        ("Succeeded", "True", "PyTorchJobSucceeded", "PyTorchJob run1-train-self successfully completed."))),
        ],
    )
    assert launcher.status(handle).state == "Pending"
    status = launcher.wait(handle, timeout=30)
    operator.join()
    assert status.state == "Succeeded" and status.reason == "PyTorchJobSucceeded"
    assert "successfully completed" in status.message
    assert "Succeeded" in kube_cluster.kubectl("get", "pytorchjob", handle.name, "-n", kube_namespace).stdout  # State column


@pytest.mark.k8s
def test_pytorchjob_failure_reports_reason_and_master_pod_logs(kube_cluster, kube_namespace):
    from kubernetes import client

    launcher = pytorch_launcher(kube_cluster, kube_namespace, poll_interval_s=0.2)
    spec = cluster_spec("run2", num_workers=0)
    # What the operator would create: the master pod, labelled so the launcher can find it. No kubelet runs it,
    # so it has no log: the failure must still carry the reason and say why the log lines are missing.
    client.CoreV1Api(kube_cluster.api_client()).create_namespaced_pod(
        kube_namespace,
        {
            "metadata": {
                "name": f"{spec.job_name}-master-0",
                "labels": {"training.kubeflow.org/job-name": spec.job_name, "training.kubeflow.org/replica-type": "master"},
            },
            "spec": {"containers": [{"name": "pytorch", "image": IMAGE}]},
        },
    )
    lines: list[str] = []
    with pytest.raises(TrainingJobFailed) as failure:
        # The whole convenience path in the foreground; the job is failed from a thread once it exists.
        def fail_when_created():
            custom = client.CustomObjectsApi(kube_cluster.api_client())
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    custom.get_namespaced_custom_object("kubeflow.org", "v1", kube_namespace, "pytorchjobs", spec.job_name)
                    break
                except client.ApiException:
                    time.sleep(0.1)
            custom.patch_namespaced_custom_object_status(
                "kubeflow.org",
                "v1",
                kube_namespace,
                "pytorchjobs",
                spec.job_name,
                {"status": pytorchjob_conditions(
                    ("Failed", "True", "PyTorchJobFailed", "PyTorchJob run2-train-self is failed because 1 Master replica(s) failed."))},
            )

        thread = threading.Thread(target=fail_when_created, daemon=True)
        thread.start()
        run_training_job(launcher.config, spec, timeout=30, log_sink=lines.append)
    thread.join()
    status = failure.value.status
    assert status.state == "Failed" and status.reason == "PyTorchJobFailed"
    assert "1 Master replica(s) failed" in status.message
    assert f"pod {spec.job_name}-master-0 has no log lines (phase Pending, not scheduled to a node)" in status.message
    assert "PyTorchJobFailed" in str(failure.value) and kube_namespace in str(failure.value)


@pytest.mark.k8s
def test_pytorchjob_failure_without_master_pod_says_so(kube_cluster, kube_namespace):
    launcher = pytorch_launcher(kube_cluster, kube_namespace)
    handle = launcher.submit(cluster_spec("run3", num_workers=0))
    play_operator(kube_cluster, launcher, handle, [(0.2, pytorchjob_conditions(("Failed", "True", "DeadlineExceeded", "job ran past activeDeadlineSeconds")))])
    status = launcher.wait(handle, timeout=30)
    assert (status.state, status.reason) == ("Failed", "DeadlineExceeded")
    assert "activeDeadlineSeconds" in status.message and "no master pod found" in status.message


@pytest.mark.k8s
def test_pytorchjob_timeout_deletes_or_keeps_the_job_as_configured(kube_cluster, kube_namespace):
    from kubernetes.client.rest import ApiException

    deleting = pytorch_launcher(kube_cluster, kube_namespace)
    handle = deleting.submit(cluster_spec("run4"))
    started = time.monotonic()
    status = deleting.wait(handle, timeout=1.5)
    assert status.state == "Timeout" and "deleted" in status.message
    assert 1.4 <= time.monotonic() - started < 10
    with pytest.raises(ApiException) as gone:
        deleting.get(handle)
    assert gone.value.status == 404

    keeping = pytorch_launcher(kube_cluster, kube_namespace, delete_on_timeout=False)
    handle = keeping.submit(cluster_spec("run5"))
    status = keeping.wait(handle, timeout=1)
    assert status.state == "Timeout" and "left running" in status.message
    assert keeping.get(handle)["metadata"]["name"] == "run5-train-self"
    keeping.delete(handle)
    keeping.delete(handle)  # deleting twice is fine
    with pytest.raises(ApiException):
        keeping.get(handle)


@pytest.mark.k8s
def test_pytorchjob_name_conflict_fails_or_reattaches(kube_cluster, kube_namespace):
    first = pytorch_launcher(kube_cluster, kube_namespace)
    handle = first.submit(cluster_spec("run6"))
    with pytest.raises(RuntimeError, match="already exists"):
        first.submit(cluster_spec("run6"))
    again = pytorch_launcher(kube_cluster, kube_namespace, on_conflict="reuse")
    assert again.submit(cluster_spec("run6")) == handle


@pytest.mark.k8s
def test_wait_reports_a_job_deleted_underneath(kube_cluster, kube_namespace):
    launcher = pytorch_launcher(kube_cluster, kube_namespace)
    handle = launcher.submit(cluster_spec("run9"))
    threading.Timer(0.5, launcher.delete, args=(handle,)).start()
    status = launcher.wait(handle, timeout=30)
    assert (status.state, status.reason) == ("Failed", "Deleted")


@pytest.mark.k8s
def test_schemas_reject_invalid_jobs_with_422(kube_cluster, kube_namespace):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    custom = client.CustomObjectsApi(kube_cluster.api_client())
    pytorchjob = pytorch_launcher(kube_cluster, kube_namespace).build_object(cluster_spec("bad1"))
    pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    pytorchjob["spec"]["runPolicy"]["backoffLimit"] = "three"
    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object("kubeflow.org", "v1", kube_namespace, "pytorchjobs", pytorchjob)
    assert rejected.value.status == 422
    body = json.loads(rejected.value.body)["message"]
    assert "replicas" in body and "backoffLimit" in body

    # Trainer v2.3 types numProcPerNode as an integer ("auto" was valid in earlier releases).
    trainjob = trainjob_launcher(kube_cluster, kube_namespace).build_object(cluster_spec("bad2"))
    trainjob["spec"]["trainer"]["numProcPerNode"] = "auto"
    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", kube_namespace, "trainjobs", trainjob)
    assert rejected.value.status == 422 and "numProcPerNode" in json.loads(rejected.value.body)["message"]

    # The launcher turns the API server's rejection into one readable error.
    broken = cluster_spec("bad3", memory="lots")
    with pytest.raises(RuntimeError, match="creating PyTorchJob .*bad3-train-self failed"):
        pytorch_launcher(kube_cluster, kube_namespace).submit(broken)


@pytest.mark.k8s
def test_trainjob_patches_the_torch_distributed_runtime_as_shipped(kube_cluster, kube_namespace):
    """The runtime is the object Trainer v2.3 ships (installed by the fixture): our one runtime patch targets its
    trainer job and container by their names, and merged as the trainer merges it, gives the trainer pods our labels,
    volumes, mounts, service account and placement, keeping what the runtime sets."""
    from kubernetes import client

    runtime = client.CustomObjectsApi(kube_cluster.api_client()).get_cluster_custom_object(
        "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", "torch-distributed"
    )
    launcher = trainjob_launcher(kube_cluster, kube_namespace, **FULL_PLACEMENT)
    job = launcher.get(launcher.submit(large_model_spec("shipped")))
    reference = job["spec"]["runtimeRef"]
    assert (reference["apiGroup"], reference["kind"], reference["name"]) == ("trainer.kubeflow.org", runtime["kind"], runtime["metadata"]["name"])
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == PATCH_MANAGER
    template = patch["trainingRuntimeSpec"]["template"]
    assert template["metadata"]["labels"]["medssr.io/run-id"] == "shipped"  # the JobSet's labels

    merged = strategic_merge(runtime["spec"]["template"], template)
    assert [j["name"] for j in merged["spec"]["replicatedJobs"]] == [j["name"] for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]]
    (trainer_job,) = [j for j in merged["spec"]["replicatedJobs"] if j["name"] == TRAINER_NODE]
    job_labels = trainer_job["template"]["metadata"]["labels"]
    assert job_labels["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer" and job_labels["medssr.io/run-id"] == "shipped"
    pod = trainer_job["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["medssr.io/stage"] == "train-self"
    assert pod["spec"]["serviceAccountName"] == "medssr-trainer"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["spec"]["tolerations"] == [GPU_TOLERATION]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["workspace", "models", "dshm"]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == TRAINER_NODE and container["image"].startswith("pytorch/pytorch:")  # trainer.image replaces it
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/data", "/models", "/dev/shm"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True, "subPath": "qwen3"} in container["volumeMounts"]
    # The name rules of TrainJob's CRD are CEL, which the test server does not enforce: hold our names to them here.
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"]) and len(job["metadata"]["name"]) <= 63
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job_name("7f3a", "train-self"))


@pytest.mark.k8s
def test_trainjob_object_and_conditions(kube_cluster, kube_namespace):
    launcher = trainjob_launcher(kube_cluster, kube_namespace, tolerations=[GPU_TOLERATION])
    handle = launcher.submit(cluster_spec("run10", stage="train-supervised", training={**TRAINING, "stage": "supervised"}))
    job = launcher.get(handle)
    assert handle.name == "run10-train-supervised"
    assert job["metadata"]["labels"]["medssr.io/stage"] == "train-supervised"
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"}
    trainer = spec["trainer"]
    assert trainer["image"] == IMAGE and trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert trainer["command"][trainer["command"].index("--stage") + 1] == "supervised"
    assert {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "medssr-s3", "key": "accessKey"}}} in trainer["env"]
    (trainer_job,) = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = trainer_job["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["medssr.io/run-id"] == "run10"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "medssr-workspace"}
    assert pod["spec"]["tolerations"] == [GPU_TOLERATION]
    listed = kube_cluster.kubectl("get", "trainjobs", "-n", kube_namespace, "-l", "medssr.io/run-id=run10", "-o", "name")
    assert listed.stdout.split() == ["trainjob.trainer.kubeflow.org/run10-train-supervised"]

    def condition(kind: str, reason: str, message: str, status: str = "True") -> dict:
        return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": now()}

    def jobs_status(active: int, ready: int, succeeded: int = 0) -> dict:
        return {"jobsStatus": [{"name": "node", "active": active, "ready": ready, "succeeded": succeeded, "failed": 0, "suspended": 0}]}

    # Trainer v2.3: Suspended (e.g. while Kueue holds the job) is not final; jobsStatus counts the running Jobs.
    custom_status = {"conditions": [condition("Suspended", "Suspended", "TrainJob is suspended")]}
    play_operator(kube_cluster, launcher, handle, [(0, custom_status)]).join()
    assert (launcher.status(handle).state, launcher.status(handle).reason) == ("Pending", "Suspended")
    play_operator(
        kube_cluster,
        launcher,
        handle,
        [
            (0.3, {"conditions": [condition("Suspended", "Resumed", "TrainJob is resumed", "False")], **jobs_status(1, 1)}),
            (0.5, {"conditions": [condition("Suspended", "Resumed", "TrainJob is resumed", "False"),
                                  condition("Complete", "JobsCompleted", "TrainJob completed")],
                   **jobs_status(0, 0, 1)}),
        ],
    )
    deadline = time.monotonic() + 10
    while launcher.status(handle).state == "Pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    running = launcher.status(handle)
    assert running.state in ("Running", "Succeeded")
    if running.state == "Running":
        assert running.message == "node: 1 active, 1 ready"
    status = launcher.wait(handle, timeout=30)
    assert (status.state, status.reason, status.message) == ("Succeeded", "JobsCompleted", "TrainJob completed")

    failing = launcher.submit(cluster_spec("run11"))
    deadline = condition("Failed", "DeadlineExceeded", "TrainJob exceeded its activeDeadlineSeconds")
    play_operator(kube_cluster, launcher, failing, [(0.2, {"conditions": [deadline]})])
    status = launcher.wait(failing, timeout=30)
    assert (status.state, status.reason) == ("Failed", "DeadlineExceeded")
    assert "activeDeadlineSeconds" in status.message and "no master pod found" in status.message
    launcher.delete(failing)
    assert kube_cluster.kubectl("get", "trainjobs", "-n", kube_namespace, "-o", "name").stdout.split() == [
        "trainjob.trainer.kubeflow.org/run10-train-supervised"
    ]


# --- medssr train --launcher ... --dry-run -------------------------------------------------------------------

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_cluster_config(tmp_path_factory) -> Path:
    """The GPU overlay as the README installs it (`kubectl kustomize`), ConfigMap medssr-config among its objects."""
    root = tmp_path_factory.mktemp("install") / "manifests"
    shutil.copytree(REPOSITORY / "manifests", root, ignore=shutil.ignore_patterns("s3.env"))
    shutil.copyfile(root / "base" / "s3.env.example", root / "base" / "s3.env")
    kubectl = shutil.which("kubectl") or "/usr/bin/kubectl"
    rendered = subprocess.run([kubectl, "kustomize", str(root / "overlays" / "gpu")], capture_output=True, text=True, check=True)
    path = root.parent / "gpu.yaml"
    path.write_text(rendered.stdout)
    return path


def train_dry_run(launcher: str, *options: str) -> list[str]:
    """`medssr train` of an 8B model on the GPU cluster's settings, as a cluster job, dry run."""
    return [
        "train", "--launcher", launcher, "--dry-run", "--run-id", "run-dry", "--image", IMAGE,
        "--stage", "self", "--model", "/data/models/qwen3-8b", "--data", "/data/train.jsonl", "--out", "/data/runs/dry/model",
        "--use-vllm", "true", "--vllm-tensor-parallel-size", "2", "--vllm-gpu-memory-utilization", "0.5",
        "--pvc", "medssr-workspace:/data", "--service-account", "medssr-trainer", *options,
    ]


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_train_dry_run_prints_the_job_its_crd_admits(launcher, gpu_cluster_config, tmp_path, capsys):
    """No cluster needed (the kubeconfig does not exist): the printed job validates against the operator's CRD, keeps
    nothing outside it, and requests what the GPU overlay's settings give a training pod."""
    import jsonschema

    from medssr.cli import main

    code = main(train_dry_run(launcher, "--cluster-config", str(gpu_cluster_config), "--kubeconfig", str(tmp_path / "absent")))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "&id" not in out  # shared dicts (the labels) are written out, not as YAML anchors
    job = yaml.safe_load(out)
    jsonschema.validate(job, openapi_schema(job))
    assert fields_outside_schema(job, openapi_schema(job)) == []
    assert job["metadata"]["name"] == "run-dry-train-self" and job["metadata"]["namespace"] == "medssr"
    if launcher == "pytorchjob":
        assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1  # MEDSSR_TRAIN_WORKERS
        pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        (container,) = pod["containers"]
        resources, command, mounts = container["resources"], container["command"], container["volumeMounts"]
    else:
        trainer = job["spec"]["trainer"]
        assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
        (trainer_job,) = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        pod = trainer_job["template"]["spec"]["template"]["spec"]
        resources, command, mounts = trainer["resourcesPerNode"], trainer["command"], pod["containers"][0]["volumeMounts"]
    assert resources == {"requests": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}, "limits": {"memory": "256Gi", "nvidia.com/gpu": "8"}}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["tolerations"] == [GPU_TOLERATION]
    assert pod["serviceAccountName"] == "medssr-trainer"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert mounts == [{"name": "pvc-0", "mountPath": "/data"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    assert "--nproc-per-node=8" in command
    assert command[command.index("--vllm-tensor-parallel-size") + 1] == "2"
    assert command[command.index("--output-dir") + 1] == "/data/runs/dry/model"


@pytest.mark.k8s
@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_train_dry_run_submits_nothing_and_applies_as_printed(launcher, kube_cluster, kube_namespace, capsys):
    from medssr.cli import main

    code = main(train_dry_run(launcher, "--namespace", kube_namespace, "--gpus-per-node", "8", "--kubeconfig", str(kube_cluster.kubeconfig)))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert kube_cluster.kubectl("get", "pytorchjobs,trainjobs", "-n", kube_namespace, "-o", "name").stdout == ""
    # What a platform engineer does with it: `medssr train ... --dry-run | kubectl apply --dry-run=server -f -`.
    applied = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=out, check=False)
    assert applied.returncode == 0 and "created (server dry run)" in applied.stdout, applied.stderr


def test_train_dry_run_needs_a_launcher_and_takes_the_clusters_defaults(capsys, monkeypatch):
    """Without --image or --namespace the job runs the pipeline's GPU image in the install's namespace, and a GPU
    job goes where the cluster settings put GPU pods: the defaults medssr.cluster declares for the pipeline and
    deploy too."""
    from medssr import cluster
    from medssr.cli import main

    monkeypatch.delenv("MEDSSR_GPU_IMAGE", raising=False)
    monkeypatch.delenv("MEDSSR_NAMESPACE", raising=False)
    training = ["--stage", "self", "--model", "m", "--data", "d.jsonl", "--out", "o"]
    assert main(["train", *training, "--dry-run"]) == 2
    assert "--dry-run prints a cluster job: give --launcher" in capsys.readouterr().err
    assert main(["train", *training, "--launcher", "pytorchjob", "--dry-run"]) == 2
    assert "--launcher pytorchjob needs --run-id" in capsys.readouterr().err
    for launcher in ("pytorchjob", "trainjob"):
        assert main(["train", *training, "--launcher", launcher, "--dry-run", "--run-id", "r1"]) == 0
        job = yaml.safe_load(capsys.readouterr().out)
        assert job["metadata"]["namespace"] == cluster.NAMESPACE
        assert f"image: {cluster.DEFAULT_GPU_IMAGE}" in yaml.safe_dump(job)
        assert "nodeSelector" not in yaml.safe_dump(job) and "tolerations" not in yaml.safe_dump(job)  # no GPUs
    settings = cluster.ClusterSettings()
    assert main(["train", *training, "--launcher", "pytorchjob", "--dry-run", "--run-id", "r1", "--gpus-per-node", "2"]) == 0
    pod = yaml.safe_load(capsys.readouterr().out)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert (pod["nodeSelector"], pod["tolerations"]) == settings.gpu_placement(2)
    assert pod["containers"][0]["resources"]["limits"][settings.gpu_accelerator] == "2"


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_pipeline_train_step_takes_placement_and_resources_from_medssr_config(launcher, gpu_cluster_config, monkeypatch):
    """Inside a train step (envFrom medssr-config of the GPU overlay) the launcher gets the training pods' placement
    and the job their CPU and memory: the job then validates against its CRD."""
    import jsonschema

    from medssr.stages import TrainingJobConfig, training_job
    from medssr.training import TrainingConfig

    (settings,) = [doc for doc in yaml.safe_load_all(gpu_cluster_config.read_text())
                   if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "medssr-config"]
    for key, value in settings["data"].items():
        monkeypatch.setenv(key, value)
    job_config = TrainingJobConfig(launcher=launcher, image="medssr:test", nproc_per_node=8, gpus_per_node=8)
    training = TrainingConfig(model="/workspace/base", data="/workspace/d.jsonl", output_dir="/workspace/out")
    config, step_spec = training_job(job_config, training, "step1", "train-self", Path("/unused"), "/workspace")
    assert (config.namespace, config.node_selector, config.tolerations) == ("medssr", {"nvidia.com/gpu.present": "true"}, [GPU_TOLERATION])
    assert (step_spec.cpu, step_spec.memory) == ("32", "256Gi") and step_spec.volumes[0].claim_name == "medssr-workspace"
    spec = large_model_spec("step1")
    job = build_launcher(config).build_object(spec)
    jsonschema.validate(job, openapi_schema(job))
    assert fields_outside_schema(job, openapi_schema(job)) == []


def test_cluster_launchers_read_their_kinds_states_as_job_states():
    """The kind modules' state readers (shared with `medssr status`) mapped onto the launcher's job states."""
    def job(*conditions: tuple[str, str], **status) -> dict:
        listed = [{"type": kind, "status": "True", "reason": reason, "lastTransitionTime": f"2026-11-25T11:0{i}:00Z"}
                  for i, (kind, reason) in enumerate(conditions)]
        return {"status": {"conditions": listed, **status}}

    pytorch = PyTorchJobLauncher(PyTorchJobLauncherConfig())
    assert pytorch.state_of(job()).state == "Pending"
    assert pytorch.state_of(job(("Created", "JobCreated"))).state == "Pending"
    assert pytorch.state_of(job(("Created", ""), ("Restarting", "PodRestart"))).state == "Running"
    finished = pytorch.state_of(job(("Created", ""), ("Running", ""), ("Succeeded", "")))
    assert (finished.state, finished.reason) == ("Succeeded", "Succeeded")  # no reason given: the condition names it
    trainer = TrainJobLauncher(TrainJobLauncherConfig())
    assert trainer.state_of(job(("Suspended", "Suspended"))).state == "Pending"
    running = trainer.state_of(job(jobsStatus=[{"name": "node", "active": 1, "ready": 1}]))
    assert (running.state, running.message) == ("Running", "node: 1 active, 1 ready")
    assert trainer.state_of(job(("Complete", "JobsCompleted"))).state == "Succeeded"
    assert trainer.state_of(job(("Failed", "DeadlineExceeded"))).reason == "DeadlineExceeded"
