"""The typed configuration of one GRPO stage: the paper-level knobs, loadable from YAML."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

STAGES = ("self", "supervised")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo")


@dataclass
class TrainingConfig:
    """One GRPO stage: stage 1 ("self") rewards the majority pseudo-label, stage 2 ("supervised") the gold answer."""

    stage: Literal["self", "supervised"] = field(
        default="self",
        metadata={"help": "'self': LabeledItem JSONL, reward against item.label; 'supervised': MCQItem JSONL, reward against item.answer."},
    )
    model: str = field(default="", metadata={"help": "Policy to start from: a local folder, s3:// URI or hub id (resolved by medssr.models.resolve_model)."})
    data: str = field(default="", metadata={"help": "Training JSONL, local or s3:// (LabeledItem for stage 'self', MCQItem with answers for 'supervised')."})
    output_dir: str = field(
        default="",
        metadata={"help": "Where the trained Hugging Face folder, metrics.json and log_history.jsonl go; local checkpoints under "
                           "output_dir/checkpoints."},
    )
    checkpoint_dir: str | None = field(
        default=None,
        metadata={"help": "Optional mirror of every complete checkpoint (local folder or s3://); a restart resumes from the newest "
                           "complete one here or locally."},
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (the paper's GRPO runs use 1e-6)."})
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (the GRPO group size)."})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Completions per device per micro-step; times world size it must be divisible by num_generations."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-steps per optimizer step."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient against the frozen start policy (0 = no reference model, TRL's default)."})
    loss_type: str = field(default="dapo", metadata={"help": f"GRPO loss normalisation, one of {', '.join(LOSS_TYPES)}."})
    max_completion_length: int = field(default=512, metadata={"help": "Most tokens generated per completion."})
    max_prompt_tokens: int = field(
        default=4096,
        metadata={"help": "Longest prompt (chat template included) in tokens; a longer record is rejected and counted, named by file and line."},
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold of the rollouts (applied after top_k)."})
    top_k: int = field(default=0, metadata={"help": "Rollouts sample among the k most likely tokens (applied after temperature); 0 disables."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps to train; -1 means use num_train_epochs."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the data when max_steps is -1."})
    save_steps: int = field(default=50, metadata={"help": "Save (and mirror) a checkpoint every K optimizer steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Complete checkpoints kept locally (older ones are deleted after a newer one is complete)."})
    logging_steps: int = field(default=1, metadata={"help": "Log loss, rewards and KL every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed of data order, sampling and initialisation."})
    format_reward_weight: float = field(default=0.1, metadata={"help": "Weight of the format reward beside the correctness reward (weight 1.0)."})
    format_partial_credit: float = field(default=0.0, metadata={"help": (
        "Format reward of a completion with no strict 'The answer is X' whose answer lenient extraction reads ('Answer: B'), "
        "against 1.0 for a strict statement: more groups with reward variance for a policy that seldom states its answer.")})
    balance_answer_letters: bool = field(
        default=False,
        metadata={
            "help": "Reorder each question's options (seeded) so that the reward targets fall on every letter equally often: "
            "a policy that always answers one letter then earns the correctness reward on 1 in k questions. Off by default; "
            "do not use with options that name other letters ('Both A and C')."
        },
    )
    generation_backend: Literal["medssr", "trl"] = field(
        default="medssr",
        metadata={
            "help": "Rollouts when vLLM is not used (use_vllm off): 'medssr' = medssr's continuous-batching generator "
            "on the trainer's current weights (TRL's rollout_func); 'trl' = TRL's own model.generate."
        },
    )
    shared_prompt_forward: bool = field(
        default=True,
        metadata={
            "help": "Forward/backward runs each distinct prompt once for all its completions (its key/value states shared, no "
            "padding) instead of once per completion: the same loss and gradients on fewer positions. Single process, no "
            "gradient checkpointing; elsewhere TRL's own forward."
        },
    )
    use_vllm: bool = field(
        default=False,
        metadata={"help": "Rollouts by vLLM in colocate mode: its CUDA build on GPUs, its CPU build (`make vllm`) on a CPU; "
                          "an error naming how to install it when it is absent."},
    )
    vllm_mode: Literal["colocate"] = field(
        default="colocate",
        metadata={"help": "vLLM mode; only 'colocate' (vLLM inside the training processes) is supported."},
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={"help": "GPU memory fraction vLLM may take in colocate mode; with its CPU build, the share of RAM it reserves "
                          "(which must be free when it starts) unless vllm_kv_cache_gib is set."},
    )
    vllm_kv_cache_gib: int = field(
        default=0,
        metadata={"help": "With vLLM's CPU build: GiB of RAM its key/value cache takes (VLLM_CPU_KVCACHE_SPACE); 0: "
                          "vllm_gpu_memory_utilization decides."},
    )
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={"help": "GPUs (consecutive ranks of one node) each colocated vLLM engine is split over; must divide the processes per node."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bfloat16 training (on a GPU bf16 weights; on a CPU bf16 autocast over float32 weights); None = on with a CUDA "
                           "GPU that supports bf16, and on a CPU with native bf16 (AVX-512 BF16 or AMX: medssr.cpu), where it pays."},
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory on large models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model folder (off by default)."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Start afresh: delete output_dir's checkpoints and resume from none (not even the mirror's) "
                          "instead of refusing a folder trained with other settings. A restart with it still set starts over again."},
    )

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage: must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type: must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}")
        if self.vllm_mode != "colocate":
            raise ValueError(f"vllm_mode: only 'colocate' is supported, not {self.vllm_mode!r}")
        if self.generation_backend not in ("medssr", "trl"):
            raise ValueError(f"generation_backend: must be 'medssr' or 'trl', not {self.generation_backend!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k: must be >= 0, got {self.top_k}")
        if not 0.0 <= self.format_partial_credit <= 1.0:
            raise ValueError(f"format_partial_credit: must be in [0, 1], got {self.format_partial_credit}")
        if self.num_generations < 2:
            raise ValueError("num_generations: GRPO needs at least 2 completions per prompt")
        if self.vllm_kv_cache_gib < 0:
            raise ValueError(f"vllm_kv_cache_gib: must not be negative, got {self.vllm_kv_cache_gib}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length", "max_prompt_tokens",
                     "save_steps", "logging_steps", "save_total_limit", "vllm_tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps: must be positive or -1, got {self.max_steps}")

    def validate_paths(self) -> None:
        """The fields a run cannot start without."""
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> TrainingConfig:
        """Read a YAML mapping of field names from a file or s3:// (unknown keys are an error); ``overrides`` win."""
        from medssr.storage import read_text

        text = read_text(path)
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a YAML mapping of training settings")
        data = {key.replace("-", "_"): value for key, value in data.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown training setting(s): {', '.join(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def to_yaml(self, path: str | os.PathLike) -> None:
        from medssr.storage import write_text

        write_text(path, yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))
