"""The KFP pipeline: compiled YAML (current, complete, no secrets), submit to a recording KFP API server,
and a full local tiny run that leaves a champion in a real MLflow server with S3 artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from medssr.pipelines.runner import COMPILED, compile_pipeline, parse_overrides, pipeline_defaults

EXPECTED_TASKS = {
    "prepare", "synthesize", "pseudo-label", "train-stage1-self", "train-stage2-supervised", "evaluate",
    "register-and-gate", "promote", "deploy", "finish",
}
UNCACHED = EXPECTED_TASKS  # every step records an MLflow run under this run's parent
GROUPS = {"tracked-run", "gate-passed", "deploy-asked"}  # exit handler and the two dsl.If groups


def load_compiled(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform


def tasks_by_display_name(spec: dict) -> dict[str, dict]:
    found: dict[str, dict] = {}

    def walk(dag: dict) -> None:
        for task in dag["tasks"].values():
            found[task["taskInfo"]["name"]] = task
            inner = spec["components"].get(task["componentRef"]["name"], {})
            if "dag" in inner:
                walk(inner["dag"])

    walk(spec["root"]["dag"])
    return found


def test_committed_yaml_is_current(tmp_path):
    from medssr.cli import main

    assert main(["pipeline", "compile", "--out", str(tmp_path / "medssr.yaml")]) == 0
    fresh = (tmp_path / "medssr.yaml").read_text()
    assert fresh == COMPILED.read_text(), "pipelines/compiled/medssr.yaml is stale: run `make compile`"


def test_cluster_settings_file_changes_the_kubernetes_wiring(tmp_path):
    from medssr.cli import main

    settings = tmp_path / "cluster.yaml"
    settings.write_text(yaml.safe_dump({
        "workspace_pvc": "team-scratch", "gpu_count": 2, "gpu_accelerator": "nvidia.com/gpu",
        "gpu_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}, "s3_secret": "team-s3",
    }))
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--settings", str(settings)]) == 0
    spec, platform = load_compiled(out)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-evaluate"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    assert executors["exec-train"]["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "team-scratch"
    assert "team-s3" in {s["secretName"] for s in executors["exec-prepare"]["secretAsEnv"]}
    settings.write_text("gpu_cuont: 2\n")
    assert main(["pipeline", "compile", "--out", str(out), "--settings", str(settings)]) == 2


def test_compiled_pipeline_tasks_params_caching_and_kubernetes(tmp_path, monkeypatch):
    secret_value = "sentinel-secret-value-9f3b"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_value)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret_value)
    path = compile_pipeline(tmp_path / "p.yaml")
    text = path.read_text()
    assert secret_value not in text
    spec, platform = load_compiled(path)
    tasks = tasks_by_display_name(spec)
    assert set(tasks) == EXPECTED_TASKS | GROUPS
    assert all(not tasks[name]["cachingOptions"].get("enableCache") for name in UNCACHED)
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("base_model", "split", "synthesis", "labeling", "train_self", "training_job", "promotion", "deploy_model", "workspace"):
        assert name in params and "defaultValue" in params[name], name
    assert params["training_job"]["defaultValue"]["launcher"] == "local" and params["workspace"]["defaultValue"] == "/workspace"
    assert params["synthesis"]["defaultValue"]["rare_ratio"] == 0.5 and params["promotion"]["defaultValue"]["margin"] == 0.01
    assert set(params) == set(pipeline_defaults())
    # conditions: promote only past the gate, deploy only when asked
    conditions = [t.get("triggerPolicy", {}).get("condition", "") for t in spec["root"]["dag"]["tasks"].values()]
    inner = spec["components"]
    nested = [t.get("triggerPolicy", {}).get("condition", "") for c in inner.values() if "dag" in c for t in c["dag"]["tasks"].values()]
    all_conditions = " ".join(conditions + nested)
    assert "register-Output'] == true" in all_conditions and "deploy_model'] == true" in all_conditions

    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for executor in executors.values():
        assert executor["pvcMount"][0]["mountPath"] == "/workspace"
        assert executor["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "medssr-workspace"
        secrets = {s["secretName"]: s for s in executor["secretAsEnv"]}
        assert {k["secretKey"] for k in secrets["medssr-s3"]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert secrets["medssr-mlflow"]["optional"] is True
        keys = {k["configMapKey"] for k in executor["configMapAsEnv"][0]["keyToEnv"]}
        assert {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"} <= keys
    for gpu_step in ("exec-pseudo-label", "exec-evaluate"):
        assert executors[gpu_step]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert executors[gpu_step]["tolerations"][0]["key"] == "nvidia.com/gpu"
        resources = spec["deploymentSpec"]["executors"][gpu_step]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu" and resources["accelerator"]["resourceCount"] == "1"
    assert "nodeSelector" not in executors["exec-register"]
    assert "MEDSSR_TRAIN_TOLERATIONS" in {k["configMapKey"] for k in executors["exec-train"]["configMapAsEnv"][0]["keyToEnv"]}
    # components import medssr inside and never pip-install at run time
    for executor in spec["deploymentSpec"]["executors"].values():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command and "from medssr.components.steps import" in " ".join(executor["container"]["command"])


def test_param_overrides_are_typed():
    defaults = pipeline_defaults()
    parsed = parse_overrides(["synthesis.n=12", "synthesis.rare_ratio=0.25", "deploy_model=true", "base_model=x"], defaults)
    assert parsed == {"synthesis": {"n": 12, "rare_ratio": 0.25}, "deploy_model": True, "base_model": "x"}
    with pytest.raises(ValueError, match="no such pipeline parameter"):
        parse_overrides(["nope=1"], defaults)
    with pytest.raises(ValueError, match="synthesis.n: 'many' is not a valid int"):
        parse_overrides(["synthesis.n=many"], defaults)


class RecordingKfpApi(BaseHTTPRequestHandler):
    """The KFP v2beta1 endpoints kfp.Client uses to start a run: healthz, experiments (list/create), runs (create)."""

    requests: list = []

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append({"method": self.command, "path": self.path, "body": body})
        return body

    def do_GET(self):  # noqa: N802 - http.server API
        self._record()
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"multi_user": False, "pipeline_store": "database"})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({"experiments": [], "total_size": 0})
        return self._reply({"error": f"unexpected GET {self.path}"}, 404)

    def do_POST(self):  # noqa: N802
        body = self._record()
        if self.path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "exp-1", "display_name": body["display_name"], "storage_state": "AVAILABLE"})
        if self.path == "/apis/v2beta1/runs":
            return self._reply({**body, "run_id": "run-42", "state": "PENDING"})
        return self._reply({"error": f"unexpected POST {self.path}"}, 404)

    def log_message(self, *args):
        pass


def test_submit_sends_the_compiled_pipeline_to_the_kfp_api(capsys):
    from medssr.cli import main

    RecordingKfpApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingKfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"http://127.0.0.1:{server.server_port}"
        code = main(["pipeline", "submit", "--host", host, "--experiment", "rare-v2",
                     "--param", "synthesis.n=50", "--param", "deploy_model=true", "--param", "run_id=run-test-1"])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0 and "submitted run run-42" in capsys.readouterr().out
    paths = [(r["method"], r["path"].split("?")[0]) for r in RecordingKfpApi.requests]
    assert paths == [
        ("GET", "/apis/v2beta1/healthz"),  # medssr's bounded check: kfp.Client has no timeout of its own
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),  # looked up by name first
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    assert RecordingKfpApi.requests[3]["body"]["display_name"] == "rare-v2"
    run = RecordingKfpApi.requests[-1]["body"]
    assert run["experiment_id"] == "exp-1" and run["display_name"] == "run-test-1"
    assert run["service_account"] == "medssr-pipeline"  # the least-privilege account of manifests/base
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "medssr"
    platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-train"]["pvcMount"][0]["mountPath"] == "/workspace"
    parameters = run["runtime_config"]["parameters"]
    assert parameters["synthesis"]["n"] == 50 and parameters["deploy_model"] is True and parameters["experiment"] == "rare-v2"
    assert parameters["training_job"]["launcher"] == "pytorchjob" and parameters["base_model"] == "Qwen/Qwen3-8B-Base"  # preset paper
    assert json.loads(parameters["pipeline_params"])["synthesis"]["n"] == 50


def test_the_summary_shows_no_result_for_a_stage_that_learned_nothing():
    from medssr.pipelines.summary import NO_RESULT, result_lines
    from medssr.training.signal import LearningSignal, tracking_fields

    metrics, tags = {"eval.raredis_heldout.questions": 40.0}, {}
    for model, value in (("base", 0.2), ("stage1", 0.25), ("stage2", 0.25)):
        metrics.update({f"eval.{model}.raredis_heldout.lenient": value, f"eval.{model}.raredis_heldout.lenient.ci_low": value - 0.1,
                        f"eval.{model}.raredis_heldout.lenient.ci_high": value + 0.1})
    metrics.update({"delta.stage2_vs_base.raredis_heldout.lenient": 0.05, "delta.stage2_vs_base.raredis_heldout.lenient.ci_low": -0.05,
                    "delta.stage2_vs_base.raredis_heldout.lenient.ci_high": 0.15})
    for step, signal in (("train-self", LearningSignal(6, 4, 0.5, 1e-4)), ("train-supervised", LearningSignal(6, 0, 0.0, 0.0))):
        parent_metrics, _, flags = tracking_fields(signal.to_dict(), step)
        metrics.update(parent_metrics)
        tags.update(flags)
    assert tags == {"medssr.learned_nothing.train-supervised": "no reward variance in any of its 6 steps; its weights are the ones it started from"}
    lines = result_lines(metrics, tags, {"evaluation.n": "4"})
    assert lines[0] == ("learning signal: train-self 4 of 6 steps with reward variance (67%), weights changed (max |change| 0.0001); "
                        "train-supervised 0 of 6 steps with reward variance (0%), weights unchanged: LEARNED NOTHING "
                        "(no reward variance in any of its 6 steps; its weights are the ones it started from)")
    row = next(line for line in lines if line.lstrip().startswith("raredis_heldout"))
    assert "25.0 [15.0, 35.0]" in row and row.count("25.0") == 1 and NO_RESULT in row, "stage 2's column is no result"
    assert row.rstrip().endswith("+5.0 [-5.0, +15.0]"), "stage 2's model still differs from the base: its delta stays"
    metrics.update({"gate.promoted": 0.0, "gate.detectable.raredis_heldout": 0.112, "gate.resamples": 1000.0})
    gate = result_lines(metrics, {**tags, "medssr.gate": "refuse", "medssr.gate_reason": "r"}, {"evaluation.n": "4"})[-1]
    assert gate == ("gate's minimal detectable effect: it promotes with 80% probability only a true gain of +11.2 points on raredis_heldout "
                    "or more (its margin plus the paired comparison's MDE; 1000 bootstrap resamples, as the intervals above)")
    tags["medssr.learned_nothing.train-self"] = "no reward variance in any of its 6 steps"
    row = next(line for line in result_lines(metrics, tags, {}) if line.lstrip().startswith("raredis_heldout"))
    assert "25.0" not in row and "+5.0" not in row and row.count(NO_RESULT) == 3


def medssr_cli(args: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("medssr")), *args]  # the console script users run
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_local_tiny_runs_register_promote_refuse_and_compare_on_the_mlflow_server(mlflow_server, s3_endpoint, tmp_path):
    """Run 1 (a gate that any candidate passes) leaves a champion; run 2 (a gate none can pass) is refused,
    which is a normal end; both parent runs carry the headline metrics, and each run prints its summary."""
    from mlflow import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = medssr_cli(["pipeline", "run", "--local", "--preset", "tiny", "--param", "run_id=tiny-e2e",
                         "--param", "promotion.margin=-1", "--param", "promotion.tolerance=1"], tmp_path, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    print(result.stdout[result.stdout.index("pipeline tiny-e2e succeeded"):])  # timings and summary, for the record
    # One line per step on the console; the executor's JSON and the steps' output only in the step logs.
    assert "  [3] pseudo-label ... success (" in result.stdout and "executor_input" not in result.stdout
    logs = tmp_path / ".medssr" / "kfp" / "logs" / "tiny-e2e"
    step_log = (logs / "pseudo-label.log").read_text()
    assert "Got executor_input" in step_log and "Looking for component `pseudo_label`" in step_log
    assert "Looking for component `evaluate`" not in step_log and (logs / "all.log").is_file()
    summary = result.stdout[result.stdout.index("=== medssr: pipeline run tiny-e2e finished"):]
    assert "raredis_heldout (rare)" in summary and "stage2 - base (paired)" in summary
    assert "gate (lenient, paired bootstrap) against its base model (no champion yet): PROMOTED" in summary
    assert "champion: v1 (this run)" in summary and f"MLflow: open {mlflow_server.url}/#/experiments/" in summary

    client = MlflowClient(mlflow_server.url)
    champion = client.get_model_version_by_alias("medssr-tiny", "champion")
    tags = champion.tags
    assert {"eval.medqa", "eval.raredis_heldout", "data_sha256", "config_sha256", "medssr.run_id", "medssr.eval_protocol"} <= set(tags)
    assert tags["medssr.run_id"] == "tiny-e2e" and tags["medssr.gate"] == "pass"
    keys = s3_endpoint.keys(mlflow_server.bucket, "mlartifacts/")
    assert any(k.endswith("/artifacts/model/model.safetensors") for k in keys)
    assert any(k.endswith("/artifacts/gate/baseline_per_question.jsonl") for k in keys)

    experiment = client.get_experiment_by_name("medssr").experiment_id
    runs = client.search_runs([experiment], "tags.`medssr.pipeline_run_id` = 'tiny-e2e'")
    parent = [r for r in runs if r.data.tags.get("medssr.kind") == "pipeline"]
    stages = sorted(r.data.tags["medssr.stage"] for r in runs if r.data.tags.get("medssr.kind") == "stage")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.params["synthesis.n"] == "8" and "config_sha256" in parent[0].data.params
    assert stages == sorted(["prepare", "synthesize", "pseudo_label", "train-self", "train-supervised", "evaluate", "register", "promote", "promote"])
    by_stage = {r.data.tags["medssr.stage"]: r for r in runs if r.data.tags.get("medssr.kind") == "stage"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in by_stage.values())
    assert {"yield", "parse_rate", "recovered_rate"} <= set(by_stage["pseudo_label"].data.metrics)
    assert any(key.startswith("stats.achieved.category.") for key in by_stage["synthesize"].data.metrics)
    history = client.get_metric_history(by_stage["train-self"].info.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert by_stage["synthesize"].inputs.dataset_inputs and by_stage["train-supervised"].inputs.dataset_inputs
    assert any(k.startswith("eval.stage2.medqa") for k in by_stage["evaluate"].data.metrics)
    tables = [a.path for a in client.list_artifacts(by_stage["evaluate"].info.run_id, "per_question")]
    assert tables == ["per_question/base.json", "per_question/stage1.json", "per_question/stage2.json"]

    # Run 2: nothing can clear a margin of +100 points, so the gate refuses, and the run still succeeds.
    result = medssr_cli(["pipeline", "run", "--local", "--preset", "tiny", "--param", "run_id=tiny-refused",
                         "--param", "promotion.margin=1"], tmp_path, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"against champion v{champion.version}: REFUSED: raredis_heldout gain" in result.stdout
    assert client.get_model_version_by_alias("medssr-tiny", "champion").version == champion.version
    refused = client.search_runs([experiment], "tags.`medssr.pipeline_run_id` = 'tiny-refused' and tags.`medssr.kind` = 'pipeline'")[0]
    assert refused.info.status == "FINISHED" and refused.data.tags["medssr.gate"] == "refuse"

    # The parent runs carry what they are compared by, side by side, without opening their children.
    for run in (client.get_run(parent[0].info.run_id), refused):
        metrics = run.data.metrics
        for model in ("base", "stage1", "stage2"):
            assert {f"eval.{model}.raredis_heldout.lenient", f"eval.{model}.medqa.with_recovery.ci_low"} <= set(metrics)
        assert {"delta.stage2_vs_base.raredis_heldout.lenient.ci_high", "delta.stage1_vs_base.medqa.strict",
                "label.yield", "label.parse_rate", "label.precision_kept", "gate.passed"} <= set(metrics)
        assert metrics["eval.raredis_heldout.questions"] == 4.0
    assert client.get_run(parent[0].info.run_id).data.metrics["gate.promoted"] == 1.0 and refused.data.metrics["gate.passed"] == 0.0


@pytest.mark.slow
def test_failed_stage_fails_the_run_with_its_reason_in_the_step_log_and_mlflow(tmp_path, mlflow_empty_db):
    import shutil

    from mlflow import MlflowClient

    (tmp_path / ".medssr").mkdir()
    shutil.copyfile(mlflow_empty_db, tmp_path / ".medssr" / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = medssr_cli(["pipeline", "run", "--local", "--preset", "tiny", "--param", "run_id=broken",
                         "--param", "split.split_benchmark=no-such-benchmark"], tmp_path, env, timeout=300)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "medssr pipeline: error:" in result.stderr and "prepare" in result.stderr
    assert "no benchmark file" in result.stdout  # the step's own log carries the reason
    client = MlflowClient(f"sqlite:///{tmp_path / '.medssr' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("medssr").experiment_id], "tags.`medssr.pipeline_run_id` = 'broken'")
    by_kind = {r.data.tags.get("medssr.stage", r.data.tags["medssr.kind"]): r for r in runs}
    assert by_kind["pipeline"].info.status == "FAILED" and by_kind["prepare"].info.status == "FAILED"
    assert "no benchmark file" in by_kind["prepare"].data.tags["medssr.error"]
    assert "prepare: FileNotFoundError" in by_kind["pipeline"].data.tags["medssr.error"]


def write_benchmark(folder: Path, name: str, count: int, prefix: str) -> Path:
    rows = [
        {"id": f"{prefix}-{i}", "question": f"Question {prefix} number {i} about findings?\nA. one\nB. two\nC. three\nD. four",
         "gold": "ABCD"[i % 4], "name": name}
        for i in range(count)
    ]
    path = folder / f"test_short_{name}.json"
    path.write_text(json.dumps(rows))
    return path


def test_stage2_split_is_disjoint_from_the_evaluation_set(tmp_path):
    from medssr.data import read_jsonl, read_reference_benchmark
    from medssr.split import SplitConfig, split_stage2_data

    source = tmp_path / "bench"
    source.mkdir()
    write_benchmark(source, "medqa", 20, "mq")
    write_benchmark(source, "nejm", 5, "nj")
    split = split_stage2_data(SplitConfig(benchmarks_dir=str(source), split_benchmark="medqa", train_size=6, seed=3), tmp_path / "out")
    train = read_jsonl(split.train_path).records
    evaluated = read_reference_benchmark(split.eval_dir / "test_short_medqa.json").records
    assert len(train) == 6 and len(evaluated) == 14 and all(item.answer for item in train)
    assert not {i.id for i in train} & {i.id for i in evaluated}
    assert (split.eval_dir / "test_short_nejm.json").read_text() == (source / "test_short_nejm.json").read_text()
    assert split.counts == {"removed_from_eval.medqa": 6, "eval_questions.medqa": 14, "stage2_items": 6}
    cut = split_stage2_data(SplitConfig(benchmarks_dir=str(source), train_size=6, eval_size=4, seed=3), tmp_path / "cut")
    # eval_size keeps the first held-out questions in file order, the same train part
    assert [i.id for i in read_reference_benchmark(cut.eval_dir / "test_short_medqa.json").records] == [i.id for i in evaluated[:4]]
    assert cut.train_path.read_text() == split.train_path.read_text() and cut.counts["eval_questions.medqa"] == 4
    with pytest.raises(ValueError, match="eval_size: test_short_medqa.json has 14 held-out questions, fewer than 15"):
        split_stage2_data(SplitConfig(benchmarks_dir=str(source), train_size=6, eval_size=15, seed=3), tmp_path / "short")
    again = split_stage2_data(SplitConfig(benchmarks_dir=str(source), split_benchmark="medqa", train_size=6, seed=3), tmp_path / "again")
    assert again.train_path.read_text() == split.train_path.read_text()  # synthesis seeds use the same split

    given = tmp_path / "given.jsonl"
    given.write_text("\n".join(line for line in split.train_path.read_text().splitlines()[:2]) + "\n")
    nejm_item = read_reference_benchmark(source / "test_short_nejm.json").records[0]
    with given.open("a") as handle:  # same stem as a NEJM question under another id: still removed
        handle.write(json.dumps({**nejm_item.model_dump(), "id": "renamed"}) + "\n")
    result = split_stage2_data(SplitConfig(benchmarks_dir=str(source), stage2_data=str(given)), tmp_path / "given-out")
    assert result.counts == {"removed_from_eval.medqa": 2, "removed_from_eval.nejm": 1, "stage2_items": 3}
    with pytest.raises(ValueError, match="leaves no eval questions"):
        split_stage2_data(SplitConfig(benchmarks_dir=str(source), train_size=20), tmp_path / "all")
    with pytest.raises(ValueError, match=r"prepare: stage 2 \(train-supervised\) has 0 .*raise split.train_size"):
        split_stage2_data(SplitConfig(benchmarks_dir=str(source), train_size=0), tmp_path / "none")
