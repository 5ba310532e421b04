"""Generation with vLLM on a GPU (the ``gpu`` extra; not installable in the CPU environment).

Prompts are tokenised here (chat prompts through the tokenizer's chat template) and handed to vLLM as
token ids, so both prompt kinds share one ``LLM.generate`` call and no special token is added twice.
vLLM schedules and batches on its own; ``n`` samples per prompt are one request with ``n`` outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from medssr.generation.base import GeneratorConfig, Prompt, SamplingParams
from medssr.generation.transformers_backend import letter_token_ids

INSTALL_HINT = "the vllm backend needs vLLM: install `medssr[gpu]` on a machine with an NVIDIA GPU"


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return vllm


class VLLMGenerator:
    """The ``vllm`` backend of :class:`medssr.generation.base.Generator`."""

    def __init__(self, config: GeneratorConfig):
        from medssr.models import resolve_model

        vllm = import_vllm()
        self.config = config
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=resolve_model(config.model),
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            gpu_memory_utilization=config.gpu_memory_utilization,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams = SamplingParams()) -> list[list[str]]:
        if n < 1:
            raise ValueError("n must be >= 1")
        if not prompts:
            return []
        options: dict = dict(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or -1,  # vLLM disables top-k with -1, not 0
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
        )
        letters_by_id: dict[int, str] = {}
        if sampling.allowed_letters:
            letters_by_id = letter_token_ids(self.tokenizer, sampling.allowed_letters)
            options.update(max_tokens=1, allowed_token_ids=list(letters_by_id))
        params = self._vllm.SamplingParams(**options)
        requests = [{"prompt_token_ids": self._encode(prompt)} for prompt in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=self.config.progress)
        if letters_by_id:
            return [[letters_by_id[sample.token_ids[0]] for sample in out.outputs] for out in outputs]
        return [[sample.text for sample in out.outputs] for out in outputs]
