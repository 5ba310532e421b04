"""GRPO training on the tiny model: both stages learn, SIGKILL + restart resumes exactly, torchrun DDP, S3 mirror."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from medssr.training import TrainingConfig, run_training
from medssr.training.checkpoints import MARKER
from medssr.training.dataset import balance_letters, load_training_rows

DATA = Path(__file__).parent / "data"
SELF_DATA = DATA / "train_self.jsonl"
SUPERVISED_DATA = DATA / "train_supervised.jsonl"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine this is several times faster for the tiny model."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def answer_format_model(tiny_model, tmp_path_factory, one_thread) -> Path:
    """The tiny model taught to end with "The answer is X." (X random), so GRPO rewards vary."""
    from medssr.data import LabeledItem, read_jsonl
    from medssr.models import teach_answer_format

    items = read_jsonl(SELF_DATA, LabeledItem, on_error="skip").records
    return teach_answer_format(tiny_model, items, tmp_path_factory.mktemp("format-model"), steps=40, rows_per_step=4)


def tiny_config(model: Path, out: Path, stage: str = "self", **overrides) -> TrainingConfig:
    settings = dict(
        stage=stage,
        model=str(model),
        data=str(SELF_DATA if stage == "self" else SUPERVISED_DATA),
        output_dir=str(out),
        learning_rate=1e-3,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=8,
        max_steps=3,
        save_steps=2,
        logging_steps=1,
    )
    settings.update(overrides)
    return TrainingConfig(**settings)


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --- configuration and data --------------------------------------------------------------------------


def test_config_from_yaml_with_overrides_and_errors(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"stage": "supervised", "model": "m", "data": "d.jsonl", "output_dir": "o", "beta": 0.04, "num-generations": 4}))
    config = TrainingConfig.from_yaml(path, learning_rate=2e-6)
    assert (config.stage, config.beta, config.num_generations, config.learning_rate) == ("supervised", 0.04, 4, 2e-6)
    path.write_text(yaml.safe_dump({"stage": "self", "lerning_rate": 1.0}))
    with pytest.raises(ValueError, match="unknown training setting.*lerning_rate"):
        TrainingConfig.from_yaml(path)
    with pytest.raises(ValueError, match="stage"):
        TrainingConfig(stage="sft")
    with pytest.raises(ValueError, match="num_generations"):
        TrainingConfig(num_generations=1)
    with pytest.raises(ValueError, match="model: required"):
        TrainingConfig(data="d", output_dir="o").validate_paths()


def test_cli_options_override_the_yaml(tmp_path):
    from medssr.cli import build_parser
    from medssr.configs import from_args
    from medssr.training.config import TrainingConfig

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"learning_rate": 5e-7, "use_vllm": True, "save_steps": 7}))
    args = build_parser().parse_args(
        ["train", "--stage", "self", "--model", "M", "--data", "D", "--out", "O", "--config", str(path), "--max-steps", "9", "--use-vllm", "false"]
    )
    config = from_args(TrainingConfig, args, output_dir=args.output_dir)
    assert (config.output_dir, config.max_steps, config.learning_rate, config.save_steps, config.use_vllm) == ("O", 9, 5e-7, 7, False)


def test_balanced_letters_spread_the_targets_over_every_letter_and_move_each_text_with_its_letter():
    from medssr.data import LabeledItem, MCQItem

    four = [MCQItem(id=f"q{i}", stem=f"Question {i}?", options={L: f"option {L} of {i}" for L in "ABCD"}, answer="A") for i in range(10)]
    five = [LabeledItem(id=f"s{i}", stem=f"Synthesised {i}?", options={L: f"choice {L} of {i}" for L in "ABCDE"}, answer="C",
                        label="B", agreement=0.75) for i in range(5)]
    targets = ["A"] * 10 + ["B"] * 5
    balanced = balance_letters(four + five, targets, seed=3)
    assert sorted(Counter(t for _, t in balanced[:10]).values()) == [2, 2, 3, 3]  # 10 targets over 4 letters
    assert Counter(t for _, t in balanced[10:]) == Counter("ABCDE")
    for (old, target), (new, goal) in zip(zip(four + five, targets), balanced):
        assert new.options[goal] == old.options[target]  # the target's text is at its new letter
        assert sorted(new.options.values()) == sorted(old.options.values()) and new.letters == old.letters
        assert new.options[new.answer] == old.options[old.answer]
        others = [text for letter, text in old.options.items() if letter != target]
        assert [text for letter, text in new.options.items() if letter != goal] == others  # the rest keep their order
    assert all(new.label == goal for new, goal in balanced[10:])
    assert balance_letters(four + five, targets, seed=3) == balanced != balance_letters(four + five, targets, seed=4)
    # a training stage's rows: the prompts show the reordered options
    rows = load_training_rows(SELF_DATA, "self", balance_letters_seed=0).rows
    plain = load_training_rows(SELF_DATA, "self").rows
    assert max(Counter(row["target"] for row in rows).values()) == 2 and len(rows) == len(plain) == 8
    assert rows != plain


def test_training_rows_use_label_or_answer_and_report_rejects():
    self_rows = load_training_rows(SELF_DATA, "self")
    assert len(self_rows.rows) == 8 and self_rows.rejected == 1
    assert (self_rows.errors[0].line, self_rows.errors[0].field) == (5, "label")
    first = json.loads(SELF_DATA.read_text().splitlines()[0])
    assert self_rows.rows[0]["target"] == first["label"] and self_rows.rows[0]["letters"] == "ABCD"
    assert [m["role"] for m in self_rows.rows[0]["prompt"]] == ["system", "user"]

    supervised = load_training_rows(SUPERVISED_DATA, "supervised")
    assert len(supervised.rows) == 8 and supervised.rejected == 1
    assert (supervised.errors[0].line, supervised.errors[0].field) == (7, "answer")
    assert supervised.rows[0]["target"] == json.loads(SUPERVISED_DATA.read_text().splitlines()[0])["answer"]


def test_over_long_prompts_are_rejected_by_file_line_and_field_and_the_rest_kept(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from medssr.prompt_limit import PromptLimit

    lines = SUPERVISED_DATA.read_text().splitlines()
    long_option = {**json.loads(lines[0]), "id": "long-option"}
    long_option["options"]["C"] = "hypotonia " * 400  # over the limit, short enough to be tokenized
    huge_stem = {**json.loads(lines[1]), "id": "huge", "stem": "seizures " * 1_200_000}  # ~10 MB
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([*lines, json.dumps(long_option), json.dumps(huge_stem)]) + "\n")
    limit = PromptLimit(AutoTokenizer.from_pretrained(tiny_model), max_tokens=512)

    rows = load_training_rows(path, "supervised", limit)
    assert len(rows.rows) == 8, "the good records continue"
    located = [(e.path, e.line, e.field) for e in rows.errors]
    assert located == [(str(path), 7, "answer"), (str(path), 10, "options.C"), (str(path), 11, "stem")]
    assert re.fullmatch(r"the prompt has \d+ tokens; the limit is 512 \(max_prompt_tokens\)", rows.errors[1].message)
    # The 10 MB stem is refused by its length, without being tokenized.
    assert re.fullmatch(r"the prompt has 108\d{5} characters, over 512 tokens \(max_prompt_tokens\)", rows.errors[2].message)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        TrainingConfig(max_prompt_tokens=0)


@pytest.mark.slow  # imports TRL
def test_use_vllm_means_colocated_vllm_rollouts_on_any_device_and_cpu_settings(tmp_path):
    import torch

    from medssr.training import grpo

    config = TrainingConfig(model="m", data="d", output_dir=str(tmp_path), use_vllm=True, num_generations=2, per_device_train_batch_size=2)
    assert grpo.rollout_backend(config) == "vllm-colocate"  # vLLM's CPU build on a CPU (tests/test_vllm_grpo.py)
    args = grpo.build_grpo_config(config, tmp_path / "checkpoints")
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "colocate", 0.3)
    if not grpo.cuda_available():
        from medssr.cpu import cpu_prefers_bf16

        # bf16 left unset is on where this CPU computes it natively, as autocast over float32 weights
        assert (args.bf16, args.gradient_checkpointing, args.report_to) == (cpu_prefers_bf16(), False, [])
        assert args.model_init_kwargs["dtype"] == torch.float32
        assert args.reward_weights == [1.0, config.format_reward_weight]
    assert grpo.rollout_backend(TrainingConfig(use_vllm=False)) == "medssr-generator"
    assert grpo.rollout_backend(TrainingConfig(use_vllm=False, generation_backend="trl")) == "trl-generate"
    assert grpo.rollout_function(TrainingConfig(generation_backend="trl")) is None
    with pytest.raises(ValueError, match="vllm_kv_cache_gib: must not be negative"):
        TrainingConfig(vllm_kv_cache_gib=-1)


# --- training ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "balanced"), [("self", False), ("supervised", False), ("supervised", True)])
def test_stage_trains_and_changes_the_weights(stage, balanced, answer_format_model, tmp_path):
    out = tmp_path / "out"
    result = run_training(tiny_config(answer_format_model, out, stage=stage, balance_answer_letters=balanced))

    assert result.model_dir == out
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json", "log_history.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")), "the model folder carries no pickles"
    before, after = load_weights(answer_format_model), load_weights(out)
    changed = [name for name in before if not before[name].equal(after[name])]
    assert changed, "GRPO steps left every weight unchanged"

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and metrics["stage"] == stage
    assert (metrics["records"], metrics["records_rejected"]) == (8, 1)
    targets = Counter(row["target"] for row in load_training_rows(SELF_DATA if stage == "self" else SUPERVISED_DATA, stage).rows)
    assert metrics["target_letters"] == ({"A": 2, "B": 2, "C": 2, "D": 2} if balanced else dict(sorted(targets.items())))
    assert metrics["rollout_backend"] == "medssr-generator"
    rewards = [json.loads(line) for line in result.history_path.read_text().splitlines()]
    assert [h["step"] for h in rewards if "reward" in h] == [1, 2, 3]
    assert any(h["reward_std"] > 0 for h in rewards if "reward" in h), "no reward variance: nothing to learn from"
    assert all(f"rewards/{f}/mean" in rewards[0] for f in ("correctness_reward", "format_reward"))
    signal = metrics["learning_signal"]
    assert signal["learned"] and signal["weights_changed"] and signal["steps"] == 3 and signal["steps_with_variance"] >= 1


@pytest.mark.slow
def test_a_stage_whose_reward_is_constant_is_flagged_as_having_learned_nothing(tiny_model, one_thread, tmp_path):
    """The random tiny model never states an answer, so every completion earns 0 (correctness and format):
    no group has reward variance, GRPO has no gradient, and the stage must say it learned nothing."""
    out = tmp_path / "out"
    result = run_training(tiny_config(tiny_model, out, max_steps=2))
    signal = result.metrics["learning_signal"]
    assert (signal["steps"], signal["steps_with_variance"], signal["groups_with_variance"]) == (2, 0, 0.0)
    assert signal["max_weight_change"] == 0.0 and signal["weights_changed"] is False
    assert signal["learned"] is False and "no reward variance in any of its 2 steps" in signal["reason"]
    assert json.loads((out / "metrics.json").read_text())["learning_signal"] == signal


def test_learning_signal_counts_steps_with_reward_variance_and_compares_the_weights(tmp_path):
    import torch
    from safetensors.torch import save_file

    from medssr.training.signal import LearningSignal, learning_signal, max_weight_change, reward_variance

    history = [{"step": 1, "frac_reward_zero_std": 1.0}, {"step": 2, "frac_reward_zero_std": 0.5}, {"step": 3, "frac_reward_zero_std": 0.0},
               {"train_runtime": 3.0}]
    assert reward_variance(history) == (3, 2, 0.5)
    assert reward_variance([{"train_runtime": 1.0}]) == (0, 0, None)
    start, same, moved = tmp_path / "start", tmp_path / "same", tmp_path / "moved"
    weights = {"a": torch.zeros(2, 3, dtype=torch.bfloat16), "b": torch.ones(4)}
    for folder, changes in ((start, {}), (same, {"a": torch.zeros(2, 3)}), (moved, {"b": torch.tensor([1.0, 1.0, 1.25, 1.0])})):
        folder.mkdir()
        save_file({**weights, **changes}, str(folder / "model.safetensors"))
    assert max_weight_change(start, same) == 0.0, "a weight saved in another dtype with the same value is unchanged"
    assert max_weight_change(start, moved) == 0.25
    assert max_weight_change(start, tmp_path / "empty") is None
    assert learning_signal(history, start, moved).learned
    unchanged = learning_signal(history, start, same)
    assert not unchanged.learned and unchanged.reason() == "its weights are the ones it started from"
    assert "2 of 3 steps with reward variance (67%), weights unchanged: LEARNED NOTHING" in unchanged.describe()
    flat = LearningSignal(6, 0, 0.0, None)
    assert not flat.learned and flat.reason() == "no reward variance in any of its 6 steps" and flat.weights_changed is None
    assert LearningSignal.from_dict(unchanged.to_dict()) == unchanged


@pytest.mark.slow
def test_sigkill_then_restart_resumes_from_the_last_complete_checkpoint(answer_format_model, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(answer_format_model, out, max_steps=10, save_steps=1, save_total_limit=20)
    config_path = tmp_path / "cfg.yaml"
    config.to_yaml(config_path)
    command = [sys.executable, "-m", "medssr.training", "--config", str(config_path)]
    checkpoints = out / "checkpoints"

    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (checkpoints / "checkpoint-2" / MARKER).is_file():
        assert process.poll() is None, f"training exited early: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no complete checkpoint-2 within 120 s"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists(), "killed before the end"

    complete = sorted(int(p.parent.name.split("-")[1]) for p in checkpoints.glob(f"checkpoint-*/{MARKER}"))
    last = complete[-1]
    assert 2 <= last < 10
    # A half-written checkpoint beyond it, as a kill during a save leaves: its files but no marker.
    planted = checkpoints / f"checkpoint-{last + 1}"
    if not planted.exists():
        shutil.copytree(checkpoints / f"checkpoint-{last}", planted)
        (planted / MARKER).unlink()
        (planted / "model.safetensors").write_bytes(b"truncated")

    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == last
    assert metrics["global_step"] == 10
    assert (planted / "model.safetensors").read_bytes() != b"truncated", "the incomplete checkpoint was left behind"
    history = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "reward" in h] == list(range(1, 11)), "log history of both runs, each step once"

    # Optimizer, scheduler and RNG state came back: the result equals an uninterrupted run bit for bit.
    reference = run_training(tiny_config(answer_format_model, tmp_path / "reference", max_steps=10, save_steps=100))
    resumed, uninterrupted = load_weights(out), load_weights(reference.model_dir)
    assert all(resumed[name].equal(uninterrupted[name]) for name in uninterrupted)


@pytest.mark.slow
def test_a_finished_run_is_not_resumed_under_another_config(answer_format_model, tmp_path, capsys):
    from medssr.cli import main

    out = tmp_path / "run"
    common = ["--model", str(answer_format_model), "--out", str(out), "--max-steps", "1", "--save-steps", "1",
              "--num-generations", "4", "--per-device-train-batch-size", "4", "--max-completion-length", "8"]
    assert main(["train", "--stage", "supervised", "--data", str(SUPERVISED_DATA), "--learning-rate", "1e-3", *common]) == 0
    weights, metrics = load_weights(out), (out / "metrics.json").read_text()
    capsys.readouterr()

    status = main(["train", "--stage", "self", "--data", str(SELF_DATA), "--learning-rate", "0.1", *common])
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1, error
    assert "other settings" in error
    for difference in ("stage: 'supervised' in the checkpoint, 'self' now", "learning_rate: 0.001 in the checkpoint, 0.1 now", "data_sha256"):
        assert difference in error
    assert "beta" not in error and "max_steps" not in error
    assert (out / "metrics.json").read_text() == metrics, "metrics.json claims settings it was not trained with"
    assert all(weights[name].equal(tensor) for name, tensor in load_weights(out).items())

    assert main(["train", "--stage", "self", "--data", str(SELF_DATA), "--learning-rate", "0.1", "--overwrite", *common]) == 0
    retrained = json.loads((out / "metrics.json").read_text())
    assert retrained["config"]["stage"] == "self" and retrained["config"]["learning_rate"] == 0.1
    assert not all(weights[name].equal(tensor) for name, tensor in load_weights(out).items()), "--overwrite kept the old weights"


@pytest.mark.slow
def test_torchrun_two_processes_train_data_parallel(answer_format_model, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "medssr.cli", "train", "--stage", "supervised", "--model", str(answer_format_model),
        "--data", str(SUPERVISED_DATA), "--out", str(out), "--max-steps", "2", "--nproc-per-node", "2",
        "--num-generations", "4", "--per-device-train-batch-size", "2", "--max-completion-length", "8",
        "--save-steps", "1", "--learning-rate", "1e-3",
    ]
    run = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["global_step"] == 2

    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(r["rank"] for r in metrics["ranks"]) == [0, 1]
    assert all(r["global_step"] == 2 for r in metrics["ranks"])
    assert run.stderr.count("saved model to") == 1, "rank 0 alone saves the result"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert (checkpoint / MARKER).is_file()
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}


@pytest.mark.slow
def test_checkpoints_mirror_to_s3_and_a_fresh_machine_resumes_from_there(answer_format_model, tmp_path, s3_endpoint):
    bucket = s3_endpoint.create_bucket("medssr-ckpt")
    mirror = f"s3://{bucket}/runs/stage1"
    s3_endpoint.client().upload_file(str(SELF_DATA), bucket, "data/labelled.jsonl")
    first = run_training(
        tiny_config(answer_format_model, tmp_path / "a", max_steps=2, save_steps=1, checkpoint_dir=mirror, data=f"s3://{bucket}/data/labelled.jsonl")
    )
    assert first.metrics["records"] == 8
    keys = s3_endpoint.keys(bucket, "runs/stage1/")
    for step in (1, 2):
        assert f"runs/stage1/checkpoint-{step}/{MARKER}" in keys
        assert f"runs/stage1/checkpoint-{step}/model.safetensors" in keys
        assert f"runs/stage1/checkpoint-{step}/optimizer.pt" in keys
    # A half-uploaded newer checkpoint (no marker) must not be chosen.
    s3_endpoint.client().put_object(Bucket=bucket, Key="runs/stage1/checkpoint-3/trainer_state.json", Body=b"{}")

    # Another machine: an empty local folder, the same mirror, one more step to go.
    second_config = tiny_config(answer_format_model, tmp_path / "b", max_steps=3, save_steps=1, checkpoint_dir=mirror)
    second = run_training(second_config)
    assert second.metrics["resumed_from_step"] == 2 and second.metrics["global_step"] == 3
    assert first.metrics["global_step"] == 2
    assert f"runs/stage1/checkpoint-3/{MARKER}" in s3_endpoint.keys(bucket, "runs/stage1/checkpoint-3/")

    # Killed after the last checkpoint, before the end: the restart trains no extra step.
    trained = load_weights(second.model_dir)
    (second.model_dir / "metrics.json").unlink()
    (second.model_dir / "model.safetensors").unlink()
    again = run_training(second_config)
    assert again.metrics["resumed_from_step"] == 3 and again.metrics["global_step"] == 3
    assert all(trained[name].equal(tensor) for name, tensor in load_weights(again.model_dir).items())
