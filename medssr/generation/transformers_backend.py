"""Batched generation with Hugging Face transformers, on CPU or one GPU.

Prompts are sorted by length and packed into batches of at most ``batch_size`` rows, each prompt
with its ``n`` sample rows (a prompt with more samples than ``batch_size`` is split over several
batches); results are put back in prompt order. Each distinct prompt of a batch is prefilled once,
alone (no padding work); the key/value caches are stacked left-padded and repeated for the ``n``
samples, which then decode together: the prompt is not recomputed per sample. Decoding is our own
loop over that cache, not ``model.generate``: a row that ends (end-of-turn token) leaves the batch
at once, so later steps only compute the rows still running instead of carrying finished ones to
the longest completion. Greedy decoding (temperature 0) generates each prompt once and repeats the
completion, since the ``n`` samples would be identical. With ``seed`` set, a call is reproducible
for the same prompts, ``n`` and ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

from medssr.generation.base import GeneratorConfig, Prompt, SamplingParams


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` is float32 on CPU (half precision is slow there) and the checkpoint's dtype on GPU."""
    import torch

    if dtype == "auto":
        return torch.float32 if device == "cpu" else "auto"
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"dtype: unknown torch dtype {dtype!r}")
    return getattr(torch, dtype)


def letter_token_ids(tokenizer, letters: Sequence[str]) -> dict[int, str]:
    """Token id -> letter for each letter, bare ("B") and space-prefixed (" B") where that is one token."""
    ids: dict[int, str] = {}
    for letter in letters:
        bare = tokenizer.encode(letter, add_special_tokens=False)
        if len(bare) != 1:
            raise ValueError(f"allowed_letters: {letter!r} is not a single token for this tokenizer")
        ids[bare[0]] = letter
        spaced = tokenizer.encode(f" {letter}", add_special_tokens=False)
        if len(spaced) == 1:
            ids.setdefault(spaced[0], letter)
    return ids


class AllowOnlyTokens:
    """Logits processor: every token outside ``token_ids`` gets -inf, so only those can be picked."""

    def __init__(self, token_ids: Sequence[int]):
        self.token_ids = list(token_ids)

    def __call__(self, input_ids, scores):
        import torch

        mask = torch.full_like(scores, float("-inf"))
        mask[:, self.token_ids] = 0.0
        return scores + mask


class TransformersGenerator:
    """The ``transformers`` backend of :class:`medssr.generation.base.Generator`."""

    def __init__(self, config: GeneratorConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
        from transformers.cache_utils import DynamicLayer

        from medssr.models import resolve_model

        if config.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.config = config
        self.device = resolve_device(config.device)
        path = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=resolve_dtype(config.dtype, self.device), trust_remote_code=config.trust_remote_code
        ).to(self.device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(self.tokenizer.eos_token_id)
        # Only these end a completion; only SamplingParams decide how to sample (no checkpoint defaults).
        self.eos_token_ids = eos_ids
        # Plain (non-sliding-window) cache layers hold every position: per-prompt caches can be stacked.
        self._stackable_cache = all(type(layer) is DynamicLayer for layer in DynamicCache(config=self.model.config).layers)
        self._torch = torch

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        if not self.tokenizer.chat_template:
            raise ValueError(f"model {self.config.model!r} has no chat template; pass plain-text prompts")
        # The rendered template already holds its special tokens (e.g. a BOS); do not add them twice.
        text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _plan(self, encoded: list[list[int]], copies: int) -> list[tuple[list[int], int, int]]:
        """Batches as (prompt indices, rows per prompt, index of the first sample), longest prompts first
        so the largest batch is met (and would fail) early."""
        order = sorted(range(len(encoded)), key=lambda p: -len(encoded[p]))
        size = self.config.batch_size
        if copies <= size:
            per_batch = size // copies
            return [(order[i : i + per_batch], copies, 0) for i in range(0, len(order), per_batch)]
        return [([p], min(size, copies - first), first) for p in order for first in range(0, copies, size)]

    def _prefill(self, prompts: list[list[int]]):
        """Key/value cache of the prompts as one left-padded batch, attention mask, next position of each
        row, last-token logits. Each prompt is computed alone and the caches stacked: prefill is
        compute-bound, so batching it gains nothing and padding to the longest prompt only adds work.
        (Sliding-window caches cannot be stacked that way; those models prefill the padded batch.)"""
        torch = self._torch
        width = max(map(len, prompts))
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        if not self._stackable_cache:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            input_ids = torch.tensor([[self.tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in prompts], device=self.device)
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            return out.cache, mask, positions[:, -1:] + 1, out.logits[:, -1].float()
        outputs = [self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=1) for ids in prompts]
        cache = outputs[0].cache
        for index, layer in enumerate(cache.layers):
            for name in ("keys", "values"):
                parts = [getattr(out.cache.layers[index], name) for out in outputs]
                setattr(layer, name, torch.cat([torch.nn.functional.pad(part, (0, 0, width - part.shape[2], 0)) for part in parts]))
        positions = torch.tensor([[len(ids)] for ids in prompts], device=self.device)
        return cache, mask, positions, torch.cat([out.logits[:, -1].float() for out in outputs])

    def _decode(self, prompts: list[list[int]], repeats: int, max_new_tokens: int, min_new_tokens: int, processors, greedy: bool):
        """New token ids of each row: every prompt ``repeats`` times, in order. The prompts are prefilled
        once and their cache repeated; a row leaves the batch when it emits an end token."""
        torch = self._torch
        cache, attention_mask, next_positions, logits = self._prefill(prompts)
        cache.batch_repeat_interleave(repeats)
        logits = logits.repeat_interleave(repeats, dim=0)
        attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
        next_positions = next_positions.repeat_interleave(repeats, dim=0)
        rows = torch.arange(logits.shape[0], device=logits.device)  # batch row of each running sequence
        tokens: list[list[int]] = [[] for _ in range(logits.shape[0])]
        eos = torch.tensor(self.eos_token_ids, device=logits.device, dtype=torch.long)
        for step in range(max_new_tokens):
            if step < min_new_tokens:
                logits[:, eos] = float("-inf")
            scores = processors(None, logits)
            next_tokens = scores.argmax(-1) if greedy else torch.multinomial(scores.softmax(-1), 1).squeeze(1)
            for row, token in zip(rows.tolist(), next_tokens.tolist()):
                tokens[row].append(token)
            running = ~torch.isin(next_tokens, eos)
            if step == max_new_tokens - 1 or not running.any():
                break
            if not running.all():
                keep = running.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, next_tokens = rows[keep], next_tokens[keep]
                attention_mask, next_positions = attention_mask[keep], next_positions[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
            out = self.model(
                input_ids=next_tokens[:, None], attention_mask=attention_mask, position_ids=next_positions, cache=cache, use_cache=True
            )
            cache, logits = out.cache, out.logits[:, -1].float()
            next_positions = next_positions + 1
        return tokens

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        sampling: SamplingParams = SamplingParams(),
        min_new_tokens: int | None = None,
    ) -> list[list[str]]:
        """``n`` completions per prompt. ``min_new_tokens`` (benchmarks) forbids stopping earlier."""
        from tqdm.auto import tqdm
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        if n < 1:
            raise ValueError("n must be >= 1")
        if not prompts:
            return []
        greedy = sampling.temperature == 0
        copies = 1 if greedy else n
        encoded = [self._encode(prompt) for prompt in prompts]

        max_new_tokens = sampling.max_tokens
        processors = LogitsProcessorList()
        letters_by_id: dict[int, str] = {}
        if sampling.allowed_letters:
            letters_by_id = letter_token_ids(self.tokenizer, sampling.allowed_letters)
            max_new_tokens = 1
            processors.append(AllowOnlyTokens(list(letters_by_id)))
        # The warpers and their order of ``model.generate``'s sampling.
        if not greedy and sampling.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
        if not greedy and sampling.top_k != 0:
            processors.append(TopKLogitsWarper(sampling.top_k))
        if not greedy and sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
        if sampling.seed is not None:
            self._torch.manual_seed(sampling.seed)

        results: list[list[str]] = [[""] * copies for _ in prompts]
        for batch, repeats, first_sample in tqdm(
            self._plan(encoded, copies), desc="generate", unit="batch", disable=not self.config.progress
        ):
            with self._torch.inference_mode():
                new_tokens = self._decode(
                    [encoded[p] for p in batch], repeats, max_new_tokens, min(min_new_tokens or 0, max_new_tokens), processors, greedy
                )
            if letters_by_id:
                texts = [letters_by_id[int(row[0])] for row in new_tokens]
            else:
                texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, text in enumerate(texts):
                results[batch[row // repeats]][first_sample + row % repeats] = text
        return [completions * n if greedy else completions for completions in results]
