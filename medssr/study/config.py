"""The one typed configuration of a study: which arms, trained how, evaluated on what.

Defaults are the SmolLM2-135M study on a 2-core CPU, sized to finish in about 3 hours of wall time in
parts (README, "Study"); the GPU-cluster settings for a model like Qwen3-8B-Base are options of the
same command. Fields marked ``per_part`` choose what one invocation does (which arms, where the
report goes) and may change between the parts of one study; every other field is part of the
study's identity, and a rerun with a different value is refused instead of mixing two studies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from medssr.tracking import config_hash

ARMS = ("base", "prior", "rl-real", "self", "medssr", "oracle")
"""base: the base model; rl-real: stage 2 only; self: stage 1 only; medssr: stage 1 then stage 2;
oracle: stage 1 rewarded by the knowledge-base key, then stage 2; prior: no model, the most common
answer letter of the training data per question type."""

PAIRED_COMPARISONS = (("medssr", "rl-real"), ("medssr", "base"), ("self", "base"), ("oracle", "medssr"), ("medssr", "prior"))
"""(candidate, reference) pairs the report shows as paired deltas."""


def _per_part(help_text: str) -> dict:
    return {"help": help_text, "per_part": True}


@dataclass
class StudyConfig:
    """A MedSSR study: every arm from the same base model, evaluated on the same questions."""

    out_dir: str = field(default=".medssr/study/smollm2", metadata=_per_part(
        "Folder of the study's state (data, models, per-arm results and completion markers); a rerun resumes from it."))
    arms: str = field(default="all", metadata=_per_part(
        f"Comma-separated arms to run in this part ({', '.join(ARMS)}), or 'all'. Arms a chosen one builds on "
        "(medssr on self's stage 1) are trained as needed."))
    report: str = field(default="docs/results/study-smollm2.md", metadata=_per_part(
        "Markdown report, written once every arm is finished; figures go in the folder of the same name without .md."))
    command: str = field(default="", metadata=_per_part("The command line that ran the study, quoted in the report (the CLI sets it)."))
    base_model: str = field(default="smollm2", metadata={"help": "Base model of every arm: smollm2 (built once), tiny (random, tests), a folder, hub id or s3:// URI."})
    benchmarks_dir: str = field(default="", metadata={"help": "Benchmark files in the reference format; empty: MEDSSR_BENCHMARKS_DIR, else the shared folder beside the repository."})
    split_benchmark: str = field(default="medqa", metadata={"help": "Benchmark split by question id into stage-2 training data and its held-out evaluation part."})
    stage2_size: int = field(default=200, metadata={"help": "Questions of split_benchmark that are stage 2's human-annotated training data (and the seed pool of synthesis)."})
    split_eval_size: int = field(default=200, metadata={"help": "Held-out questions of split_benchmark evaluated (the first ones of its evaluation part)."})
    heldout_size: int = field(default=300, metadata={"help": "Questions of raredis_heldout (about knowledge-base diseases synthesis never sees)."})
    extra_benchmarks: str = field(default="", metadata={"help": "Comma-separated other local benchmarks evaluated too, at extra_limit questions each."})
    extra_limit: int = field(default=50, metadata={"help": "Questions per extra benchmark."})
    synth_n: int = field(default=128, metadata={"help": "Synthesised stage-1 questions before pseudo-labelling."})
    rare_ratio: float = field(default=0.5, metadata={"help": "Share of knowledge-grounded rare-disease questions in synthesis (the rest are from the seed pool)."})
    options_per_item: int = field(default=5, metadata={"help": "Options of a synthesised knowledge question (raredis_heldout has 5)."})
    label_samples: int = field(default=4, metadata={"help": "Votes sampled per synthesised question."})
    min_agreement: float = field(default=0.5, metadata={"help": "Keep a pseudo-label whose majority has at least this share of the votes."})
    max_agreement: float = field(default=1.0, metadata={"help": "... and at most this share."})
    min_parsed: int = field(default=2, metadata={"help": "Drop a question with fewer readable votes than this."})
    label_max_tokens: int = field(default=96, metadata={"help": "New tokens per vote (samples stating no answer get the letter-constrained second turn)."})
    label_recovery: bool = field(default=True, metadata={"help": "Ask votes that state no answer once more, constrained to the question's letters."})
    stage1_max_steps: int = field(default=16, metadata={"help": "GRPO steps of stage 1 (self and oracle)."})
    stage2_max_steps: int = field(default=16, metadata={"help": "GRPO steps of stage 2 (rl-real, and after stage 1 in medssr and oracle)."})
    num_generations: int = field(default=4, metadata={"help": "Completions per prompt (the GRPO group)."})
    train_batch_size: int = field(default=4, metadata={"help": "Completions per device per step (a multiple of num_generations; 4 = one question per step)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of both stages."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient against the start policy."})
    max_completion_length: int = field(default=96, metadata={"help": "Most tokens per rollout (SmolLM2 seldom states an answer within 48: every reward 0, no gradient)."})
    train_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    save_steps: int = field(default=8, metadata={"help": "Checkpoint every K steps (a killed training run resumes from the last)."})
    nproc_per_node: int = field(default=1, metadata={"help": "Training processes (torchrun) per run; 1 trains in-process."})
    use_vllm: bool = field(default=False, metadata={"help": "vLLM colocate rollouts (GPU only)."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per colocated vLLM engine."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "GPU memory share of the colocated vLLM engine."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory in training (large models)."})
    eval_samples: int = field(default=4, metadata={"help": "Samples per evaluated question (accuracy is their mean)."})
    eval_max_tokens: int = field(default=48, metadata={"help": "New tokens per evaluation sample (the paper: 2048)."})
    eval_temperature: float = field(default=0.6, metadata={"help": "Evaluation sampling temperature (the paper's 0.6)."})
    eval_top_p: float = field(default=0.95, metadata={"help": "Evaluation nucleus mass (the paper's 0.95)."})
    eval_top_k: int = field(default=20, metadata={"help": "Evaluation top-k (the paper's 20)."})
    prompt_style: str = field(default="chat", metadata={"help": "chat (chat-template models) or text (base models) prompts in labelling and evaluation."})
    generation_backend: str = field(default="transformers", metadata={"help": "Labelling and evaluation backend: transformers (CPU/GPU) or vllm (GPU)."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N] for labelling and evaluation."})
    generation_batch_size: int = field(default=64, metadata={"help": "Sequences per forward pass of the generator."})
    bootstrap_samples: int = field(default=2000, metadata={"help": "Bootstrap resamples of every interval."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, synthesis, training, sampling and the bootstrap."})
    tracking_uri: str = field(default="", metadata=_per_part("MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else sqlite under ./.medssr."))
    experiment: str = field(default="medssr-study", metadata=_per_part("MLflow experiment of the study's parent run."))

    def __post_init__(self) -> None:
        self.selected_arms()  # validates the names
        for name in ("stage2_size", "split_eval_size", "heldout_size", "extra_limit", "synth_n", "label_samples", "stage1_max_steps",
                     "stage2_max_steps", "train_batch_size", "max_completion_length", "save_steps", "nproc_per_node",
                     "eval_samples", "eval_max_tokens", "generation_batch_size", "bootstrap_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.num_generations < 2 or self.train_batch_size % self.num_generations:
            raise ValueError(f"train_batch_size ({self.train_batch_size}) must be a multiple of num_generations ({self.num_generations}, at least 2)")
        if self.min_parsed > self.label_samples:
            raise ValueError(f"min_parsed ({self.min_parsed}) cannot exceed label_samples ({self.label_samples})")
        if self.prompt_style not in ("chat", "text"):
            raise ValueError(f"prompt_style: must be chat or text, not {self.prompt_style!r}")
        if self.generation_backend not in ("transformers", "vllm"):
            raise ValueError(f"generation_backend: must be transformers or vllm, not {self.generation_backend!r}")
        if not self.report.endswith(".md"):
            raise ValueError(f"report: must be a .md file, not {self.report!r}")

    def selected_arms(self) -> list[str]:
        """The arms of this part, in the study's order."""
        names = [part.strip() for part in self.arms.split(",") if part.strip()]
        if not names or "all" in names:
            return list(ARMS)
        unknown = [name for name in names if name not in ARMS]
        if unknown:
            raise ValueError(f"arms: unknown {', '.join(unknown)}; known: {', '.join(ARMS)} or all")
        return [arm for arm in ARMS if arm in names]

    def identity(self) -> dict:
        """The settings that make the study what it is (every field not marked per_part)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("per_part")}

    def identity_hash(self) -> str:
        return config_hash(self.identity())
