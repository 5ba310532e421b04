"""The generation contract every backend implements, and its typed settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence, Union

ChatMessage = dict[str, str]
Prompt = Union[str, list[ChatMessage]]
"""Plain text (completion style) or a list of chat messages ``{"role", "content"}``."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Defaults are the paper's evaluation protocol."""

    temperature: float = field(default=0.6, metadata={"help": "0 means greedy decoding."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=20, metadata={"help": "Sample among the k most likely tokens; 0 disables."})
    max_tokens: int = field(default=2048, metadata={"help": "New tokens per completion."})
    seed: int | None = field(default=None, metadata={"help": "Seed for reproducible sampling."})
    allowed_letters: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "If set, the completion is one token constrained to these answer letters."},
    )

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")


@dataclass
class GeneratorConfig:
    """Which backend generates, from which model, and how."""

    backend: Literal["transformers", "vllm", "openai"] = field(
        default="transformers", metadata={"help": "transformers (CPU/GPU), vllm (its CPU build from `make vllm`, or its CUDA build) or openai (HTTP endpoint)."}
    )
    model: str = field(default="", metadata={"help": "Model folder, hub id, s3:// URI, or served model name (openai)."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward batch (transformers)."})
    fused_decode: bool = field(
        default=True,
        metadata={"help": "Decode Llama, Qwen2 and Qwen3 models on CPU in bf16/fp16 (weights or autocast) with medssr's "
                          "fused step (same logits, fewer operators per token; holds a copy of the q/k/v and gate/up "
                          "weights); off, or in float32: the model's own forward pass (transformers)."},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Never on unless you trust the model repo."})
    base_url: str = field(default="", metadata={"help": "OpenAI-compatible base URL, e.g. http://host/openai/v1."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Env var holding the API key (never the key)."})
    timeout_s: float = field(
        default=120.0, metadata={"help": "Seconds one completion request may take, generation included (openai)."}
    )
    connect_timeout_s: float = field(default=5.0, metadata={"help": "Seconds to open a connection to the endpoint (openai)."})
    health_timeout_s: float = field(
        default=10.0,
        metadata={"help": "Seconds the check before the first request waits for any answer (openai): with the retries, "
                          "a silent endpoint is reported after (max_retries + 1) x this."},
    )
    max_retries: int = field(
        default=3,
        metadata={"help": "Retries of a request that found no server, timed out or got 408/409/429/5xx (openai): the "
                          "openai client's own, with its backoff (0.5 s doubling) or the server's Retry-After."},
    )
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once (openai)."})
    gpu_memory_utilization: float = field(
        default=0.85,
        metadata={"help": "Share of GPU memory vLLM may use; with its CPU build, the share of RAM it reserves, which must be free "
                          "when it starts (unless kv_cache_gib is set) (vllm)."},
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs vLLM splits the model over (vllm)."})
    kv_cache_gib: float = field(
        default=0.0,
        metadata={"help": "GiB vLLM gives its key/value cache; 0: what gpu_memory_utilization leaves (vllm)."},
    )
    enforce_eager: bool = field(
        default=False,
        metadata={"help": "vLLM runs the model eagerly, without torch.compile or CUDA graphs: it starts in less than half "
                          "the time, and may decode slower (vllm)."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar over batches/requests."})
    tokenizer: str = field(
        default="", metadata={"help": "Tokenizer folder of the served model (openai: enables logit_bias for letters)."}
    )
    max_prompt_tokens: int = field(
        default=4096,
        metadata={"help": "Longest prompt (chat template included) in tokens; a longer record is rejected and counted, named by file and line."},
    )


class Generator(Protocol):
    """Turns prompts into ``n`` completions each. Returns one list of ``n`` strings per prompt, in order."""

    def generate(self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams = SamplingParams()) -> list[list[str]]: ...
