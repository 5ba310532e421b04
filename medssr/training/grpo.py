"""One GRPO stage on TRL: data -> GRPOTrainer with the medssr rewards -> a Hugging Face model folder + metrics.

Runs as a plain process, or once per rank under torchrun (a PyTorchJob's or a local one): the Trainer
picks up the distributed environment, CPU runs use the gloo backend, rank 0 alone writes the results.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from medssr.training.config import TrainingConfig

log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    model_dir: Path
    metrics: dict
    history_path: Path


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def launched_distributed() -> bool:
    """True under torchrun (or a PyTorchJob's launcher) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rollout_backend(config: TrainingConfig) -> str:
    """vLLM colocate when asked for (its CUDA or its CPU build: :mod:`medssr.training.vllm_colocate`); otherwise
    medssr's generator or TRL's model.generate."""
    if config.use_vllm:
        return "vllm-colocate"
    return "medssr-generator" if config.generation_backend == "medssr" else "trl-generate"


def rollout_function(config: TrainingConfig):
    """The ``rollout_func`` GRPOTrainer gets for ``config``: ours, or None for TRL's own rollout."""
    if rollout_backend(config) != "medssr-generator":
        return None
    from medssr.training.rollout import generator_rollout

    return generator_rollout


def trainer_class(config: TrainingConfig):
    """TRL's GRPOTrainer, or its subclass that computes each prompt once per forward/backward."""
    if config.shared_prompt_forward:
        from medssr.training.shared_prompt import SharedPromptGRPOTrainer

        return SharedPromptGRPOTrainer
    from trl import GRPOTrainer

    return GRPOTrainer


def build_grpo_config(config: TrainingConfig, checkpoints_dir: Path):
    """The GRPOConfig for ``config``; the benchmark builds plain TRL runs from the same function."""
    import torch
    from trl import GRPOConfig

    from medssr.cpu import cpu_prefers_bf16

    on_gpu = cuda_available()
    bf16 = config.bf16 if config.bf16 is not None else (torch.cuda.is_bf16_supported() if on_gpu else cpu_prefers_bf16())
    use_vllm = rollout_backend(config) == "vllm-colocate"
    return GRPOConfig(
        output_dir=str(checkpoints_dir),
        learning_rate=config.learning_rate,
        num_generations=config.num_generations,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        beta=config.beta,
        loss_type=config.loss_type,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        max_steps=config.max_steps,
        num_train_epochs=config.num_train_epochs,
        save_strategy="steps",
        save_steps=config.save_steps,
        # Pruning happens in CompleteCheckpointCallback, after the newer checkpoint is marked complete:
        # the Trainer's own rotation would run before the marker and could leave no complete checkpoint.
        save_total_limit=None,
        logging_steps=config.logging_steps,
        seed=config.seed,
        reward_weights=[1.0, config.format_reward_weight],
        use_vllm=use_vllm,
        vllm_mode=config.vllm_mode,
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=config.vllm_tensor_parallel_size,
        bf16=bool(bf16),
        gradient_checkpointing=config.gradient_checkpointing,
        trust_remote_code=config.trust_remote_code,
        # On a GPU bf16 trains bf16 weights, as TRL does; on a CPU it is autocast over float32 weights (a
        # bf16 weight keeps about 3 significant digits and would round most Adam steps of 1e-5 away).
        model_init_kwargs={"dtype": torch.bfloat16 if bf16 and on_gpu else torch.float32},
        # Explicit gloo for CPU ranks under torchrun; a lone process must not ask for a process group.
        ddp_backend="gloo" if launched_distributed() and not on_gpu else None,
        use_cpu=not on_gpu,
        report_to="none",
        disable_tqdm=False,
    )


def build_reward_functions(config: TrainingConfig | None = None):
    """Correctness and format rewards (weights in build_grpo_config); the format reward's partial credit from ``config``."""
    import functools

    from medssr.answers import correctness_reward, format_reward

    partial_credit = config.format_partial_credit if config is not None else 0.0
    return [correctness_reward, functools.partial(format_reward, partial_credit=partial_credit) if partial_credit else format_reward]


def build_trainer(config: TrainingConfig, model: str, tokenizer, rows: list[dict], grpo_config, callbacks: Sequence = ()):
    """The GRPO trainer of ``config`` on ``rows``; with use_vllm, its colocated engine started and adapted to
    the vLLM build (:mod:`medssr.training.vllm_colocate`)."""
    import contextlib

    from datasets import Dataset

    from medssr.training import vllm_colocate

    colocated = rollout_backend(config) == "vllm-colocate"
    cpu = vllm_colocate.require_vllm() if colocated else False
    with warnings.catch_warnings(), vllm_colocate.engine_environment(config, grpo_config.bf16, cpu) if colocated else contextlib.nullcontext():
        # rollout_func is chosen on purpose; TRL's notice that it is experimental says nothing new.
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'", category=UserWarning)
        trainer = trainer_class(config)(
            model=model,
            reward_funcs=build_reward_functions(config),
            args=grpo_config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            rollout_func=rollout_function(config),
            callbacks=list(callbacks),
        )
    if colocated:
        vllm_colocate.adapt(trainer, cpu)
    return trainer


def load_tokenizer(model_path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left", trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def run_training(config: TrainingConfig, callbacks: Sequence = ()) -> TrainingResult:
    """Train one GRPO stage, resuming from the newest complete checkpoint when one exists.

    ``callbacks``: extra transformers ``TrainerCallback`` objects (metric loggers, timers).
    """
    from accelerate import PartialState
    from transformers import TrainerState

    from medssr.models import resolve_model
    from medssr.training import checkpoints, vllm_colocate
    from medssr.prompt_limit import PromptLimit
    from medssr.training.dataset import load_training_rows
    from medssr.training.signal import learning_signal

    config.validate_paths()
    output_dir = Path(config.output_dir)
    checkpoints_dir = output_dir / "checkpoints"
    grpo_config = build_grpo_config(config, checkpoints_dir)  # also sets up the distributed state
    state = PartialState()
    with state.local_main_process_first():  # one download per machine; the other ranks find it cached
        model_path = str(resolve_model(config.model))
        data_path = local_copy(config.data, output_dir / "data")
    tokenizer = load_tokenizer(model_path, config.trust_remote_code)
    data = load_training_rows(data_path, config.stage, PromptLimit(tokenizer, config.max_prompt_tokens),
                              balance_letters_seed=config.seed if config.balance_answer_letters else None)
    backend = rollout_backend(config)
    if state.is_main_process:
        log.info("stage %s: %d training records (%d rejected), rollouts: %s, world size %d",
                 config.stage, len(data.rows), data.rejected, backend, state.num_processes)

    if config.overwrite:
        if state.is_main_process and checkpoints_dir.exists():
            log.warning("overwrite: deleting %s", checkpoints_dir)
            shutil.rmtree(checkpoints_dir)
        state.wait_for_everyone()
    resume_from = None if config.overwrite else _choose_checkpoint(state, checkpoints_dir, config.checkpoint_dir)
    run = checkpoints.provenance(config, data_path)
    if resume_from:
        checkpoints.check_provenance(Path(resume_from), run)
    # A run killed after its last checkpoint but before the end: the Trainer, resumed at max_steps,
    # would train one step too many, so the last checkpoint's weights are the result as they are.
    finished = resume_from is not None and _reached_the_end(Path(resume_from), config)
    if resume_from and state.is_main_process:
        log.info("%s %s", "training already finished at" if finished else "resuming from", resume_from)

    trainer = build_trainer(
        config, resume_from if finished else model_path, tokenizer, data.rows, grpo_config,
        callbacks=[checkpoints.CompleteCheckpointCallback(checkpoints_dir, config.checkpoint_dir, config.save_total_limit, run), *callbacks],
    )
    if finished:
        trainer.state = TrainerState.load_from_json(str(Path(resume_from) / "trainer_state.json"))
        train_metrics = {}
    else:
        train_metrics = trainer.train(resume_from_checkpoint=resume_from).metrics
    ranks = _gather_rank_reports(trainer)
    trainer.save_model(str(output_dir))  # rank 0 writes; weights as safetensors, tokenizer beside them
    if state.is_main_process:
        # The Trainer pickles its arguments beside the model; a model folder carries no pickles.
        (output_dir / "training_args.bin").unlink(missing_ok=True)

    history_path = output_dir / "log_history.jsonl"
    signal = learning_signal(trainer.state.log_history, model_path, output_dir) if state.is_main_process else None
    if signal is not None:
        (log.info if signal.learned else log.warning)("stage %s: %s", config.stage, signal.describe())
    metrics = {
        **train_metrics,
        "stage": config.stage,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "world_size": state.num_processes,
        "ranks": ranks,
        "resumed_from": str(resume_from) if resume_from else None,
        "resumed_from_step": checkpoints.checkpoint_step(Path(resume_from).name) if resume_from else None,
        "records": len(data.rows),
        "records_rejected": data.rejected,
        # what a letter-preferring policy could earn on these targets (after balance_answer_letters, if on)
        "target_letters": dict(sorted(Counter(row["target"] for row in data.rows).items())),
        "rollout_backend": backend,
        "vllm_engine": vllm_colocate.engine_settings(trainer) if backend == "vllm-colocate" else None,
        **_reward_summary(trainer.state.log_history),
        "learning_signal": signal.to_dict() if signal is not None else None,
        "config": asdict(config),
    }
    if state.is_main_process:
        from medssr.data import write_jsonl
        from medssr.storage import write_text

        write_jsonl(history_path, trainer.state.log_history)
        # Written last: a metrics.json beside the model means the run finished and the folder is whole.
        write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2, default=str))
        log.info("saved model to %s (step %d)", output_dir, trainer.state.global_step)
    state.wait_for_everyone()
    return TrainingResult(model_dir=output_dir, metrics=metrics, history_path=history_path)


def local_copy(uri: str, folder: Path) -> Path:
    """A local path for ``uri``: local files as they are, s3:// objects downloaded once into ``folder``."""
    from medssr import storage

    if not storage.is_s3(uri):
        return Path(uri)
    target = folder / Path(storage.split_s3(uri)[1]).name
    if not target.is_file():
        storage.write_text(target, storage.read_text(uri))
    return target


def _choose_checkpoint(state, checkpoints_dir: Path, mirror: str | None) -> str | None:
    """The newest complete checkpoint, the same on every rank.

    Rank 0 alone removes half-written checkpoints and fetches a newer one from the mirror; then the first
    process of every other machine fetches it too when its disk is its own (on a shared volume it is
    already there). Ranks that still see different checkpoints stop with an error instead of hanging.
    """
    from medssr.training import checkpoints

    if state.is_main_process:
        removed = checkpoints.remove_incomplete(checkpoints_dir)
        if removed:
            log.warning("removed incomplete checkpoint(s): %s", ", ".join(removed))
        checkpoints.latest_checkpoint(checkpoints_dir, mirror)
    state.wait_for_everyone()
    if state.is_local_main_process and not state.is_main_process:
        checkpoints.latest_checkpoint(checkpoints_dir, mirror)
    state.wait_for_everyone()
    complete = checkpoints.complete_checkpoints(checkpoints_dir)
    step = complete[-1][0] if complete else None
    seen = _all_ranks(step)
    if len(set(seen)) > 1:
        raise ValueError(
            f"ranks see different latest checkpoints in {checkpoints_dir} ({seen}); "
            "give checkpoint_dir an s3:// mirror or put output_dir on a volume all nodes share"
        )
    return complete[-1][1] if complete else None


def _all_ranks(value) -> list:
    """``value`` from every rank (just ``[value]`` without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered
    return [value]


def _reached_the_end(checkpoint: Path, config: TrainingConfig) -> bool:
    saved = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    target = config.max_steps if config.max_steps > 0 else saved.get("max_steps", 0)
    return saved["global_step"] >= target > 0


def _gather_rank_reports(trainer) -> list[dict]:
    """Every rank's own view at the end, collected on all ranks: proof that each one trained."""
    return _all_ranks({"rank": trainer.args.process_index, "global_step": trainer.state.global_step})


def _reward_summary(history: list[dict], window: int = 3) -> dict:
    """Mean reward over the first and last few logged steps (the learning signal at a glance)."""
    rewards = [entry["reward"] for entry in history if "reward" in entry]
    if not rewards:
        return {}
    window = min(window, len(rewards))
    return {
        "reward_first": statistics.fmean(rewards[:window]),
        "reward_last": statistics.fmean(rewards[-window:]),
        "reward_steps_logged": len(rewards),
    }
