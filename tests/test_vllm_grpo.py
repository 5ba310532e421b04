"""GRPO with ``use_vllm`` on vLLM's CPU build: TRL's colocated engine makes the rollouts of both stages through
``medssr train`` (under torchrun, as a pipeline's local launcher runs it, and in-process), runs the settings it
was given, and holds the trainer's weights after each sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (`make vllm`)")

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def expected_engine() -> dict:
    """What the colocated engine must run with: float32 as the trainer, the settings given; the key/value cache
    size is the CPU build's only (vllm_kv_cache_gib)."""
    from medssr.generation.vllm_backend import on_cpu

    cpu = on_cpu()
    return {"device": "cpu" if cpu else "cuda", "dtype": "float32", "tensor_parallel_size": 1, "gpu_memory_utilization": 0.05,
            "kv_cache_memory_bytes": 1 << 30 if cpu else None}


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """The tiny model with head size 32 (vLLM's CPU attention has no kernel for 16), taught to end with "The answer is X."."""
    from medssr.data import LabeledItem, read_jsonl
    from medssr.models import build_tiny_model, teach_answer_format

    tiny = build_tiny_model(tmp_path_factory.mktemp("tiny-vllm"), attention_heads=2)
    items = read_jsonl(DATA / "train_self.jsonl", LabeledItem, on_error="skip").records
    return teach_answer_format(tiny, items, tmp_path_factory.mktemp("policy"), steps=100, rows_per_step=4)


def environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def train(stage: str, model: Path, out: Path, *extra: str) -> dict:
    command = [
        sys.executable, "-m", "medssr.cli", "train", "--stage", stage, "--model", str(model),
        "--data", str(DATA / ("train_self.jsonl" if stage == "self" else "train_supervised.jsonl")), "--out", str(out),
        "--use-vllm", "true", "--vllm-gpu-memory-utilization", "0.05", "--vllm-kv-cache-gib", "1", "--bf16", "false",
        "--max-steps", "2", "--save-steps", "2", "--num-generations", "4", "--per-device-train-batch-size", "16",
        "--max-completion-length", "8", "--learning-rate", "1e-3", *extra,
    ]
    run = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return json.loads((out / "metrics.json").read_text())


def test_both_stages_train_with_colocated_vllm_rollouts_on_the_trainers_weights(policy, tmp_path):
    from safetensors.torch import load_file

    stage1 = train("self", policy, tmp_path / "stage1", "--nproc-per-node", "1")
    stage2 = train("supervised", tmp_path / "stage1", tmp_path / "stage2")
    for metrics, start, out in ((stage1, policy, tmp_path / "stage1"), (stage2, tmp_path / "stage1", tmp_path / "stage2")):
        assert (metrics["rollout_backend"], metrics["global_step"]) == ("vllm-colocate", 2)
        assert metrics["vllm_engine"] == expected_engine(), "the engine runs the settings it was given (read back from its config)"
        before, after = load_file(start / "model.safetensors"), load_file(out / "model.safetensors")
        assert any(not before[name].equal(after[name]) for name in before), "two steps changed no weight"
        steps = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines() if '"reward"' in line]
        assert [s["step"] for s in steps] == [1, 2]
        # TRL compares the engine's log-probabilities of what it sampled with the trainer's: the second step's
        # rollouts came from the weights the first step made, synced into the engine (float32 on both sides).
        assert all(s["sampling/sampling_logp_difference/max"] < 1e-3 for s in steps), steps


def test_a_sync_puts_the_trained_weights_into_the_engine(policy, tmp_path):
    run = subprocess.run([sys.executable, "-m", "tests.vllm_weight_sync", str(policy), str(DATA / "train_supervised.jsonl"),
                          str(tmp_path / "out")], env=environment(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    before, stale, synced, trained = seen["before"], seen["stale"], seen["synced"], seen["trained"]
    # The first step's reward variance moves the weights in both steps (Adam's momentum carries into the second).
    assert seen["steps"] == 2 and seen["reward_std"][0] > 0, "no reward variance in the first step: nothing learned to sync"
    assert synced["tokens"] == trained["tokens"], "after the sync the engine answers as the trained model does"
    assert max(abs(a - b) for a, b in zip(synced["logprobs"], trained["logprobs"])) < 1e-4
    assert synced != stale != before, "each sync changed what the engine answers"
