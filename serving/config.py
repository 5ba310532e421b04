"""Typed settings of the local model server (``medssr serve``) and its request limits."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServeConfig:
    """What to serve, where, and the limits that keep latency and memory bounded."""

    model: str = field(
        default="",
        metadata={"help": "Model folder, s3:// URI, hub id, models:/NAME@ALIAS or NAME@ALIAS (MLflow registry)."},
    )
    name: str = field(default="medssr", metadata={"help": "Served model name (URL path and OpenAI `model` field)."})
    host: str = field(
        default="127.0.0.1", metadata={"help": "Interface to bind; 0.0.0.0 only inside a container or cluster."}
    )
    port: int = field(default=8080, metadata={"help": "HTTP port."})
    engine: str = field(
        default="transformers",
        metadata={"help": "transformers: medssr's step decoder on torch (CPU or one GPU; per-step admission, the fused CPU "
                          "decode step); vllm: vLLM's AsyncLLM in this process (its CUDA build on GPUs, its CPU build here)."},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Never on unless you trust the model repo."})
    torch_threads: int = field(
        default=0, metadata={"help": "CPU threads for torch (0 keeps torch's default); 1 suits very small models."}
    )
    max_batch_size: int = field(
        default=16,
        metadata={"help": "Prompts decoding together in the running batch, each with one row per sample (1: one at a time)."},
    )
    admission: str = field(
        default="step",
        metadata={"help": "step: a request joins the running batch at the next decode step; batch: only an empty "
                          "batch takes requests, gathered for max_wait_ms, and runs until its last row ends "
                          "(the earlier policy, kept for comparison)."},
    )
    max_wait_ms: float = field(
        default=10.0, metadata={"help": "admission=batch: how long an empty batch waits for more requests before it runs."}
    )
    max_queue: int = field(
        default=64,
        metadata={"help": "Prompts allowed to wait; beyond this a request is refused with 429 at once."},
    )
    max_prompt_tokens: int = field(default=4096, metadata={"help": "Longest prompt accepted, in tokens."})
    max_tokens_limit: int = field(default=2048, metadata={"help": "Largest max_tokens a request may ask for."})
    default_max_tokens: int = field(default=512, metadata={"help": "max_tokens when a request names none."})
    max_n: int = field(default=8, metadata={"help": "Largest n (completions per prompt) a request may ask for."})
    temperature: float = field(default=0.6, metadata={"help": "Default temperature (paper protocol)."})
    top_p: float = field(default=0.95, metadata={"help": "Default top_p (paper protocol)."})
    top_k: int = field(default=20, metadata={"help": "Default top_k (paper protocol); 0 disables."})
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "Largest request body accepted, in bytes."})
    max_model_len: int = field(default=4096, metadata={"help": "engine=vllm: context length (prompt + completion) it plans for."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "engine=vllm on a GPU: share of its memory vLLM may use."})

    def __post_init__(self):
        if not self.model:
            raise ValueError("model: a model folder, s3:// URI, hub id or NAME@ALIAS is required")
        positive = ("port", "max_batch_size", "max_queue", "max_prompt_tokens", "max_tokens_limit", "max_n")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.engine not in ("transformers", "vllm"):
            raise ValueError(f"engine must be 'transformers' or 'vllm', got {self.engine!r}")
        if self.admission not in ("step", "batch"):
            raise ValueError(f"admission must be 'step' or 'batch', got {self.admission!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError("default_max_tokens must be between 1 and max_tokens_limit")

    @property
    def max_rows(self) -> int:
        """Rows the running batch holds: every prompt with its largest ``n``."""
        return self.max_batch_size * self.max_n
