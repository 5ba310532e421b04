"""Batched generation with Hugging Face transformers, on CPU or one GPU, with continuous batching.

Decoding is our own loop over one running batch of at most ``batch_size`` rows (a row is one sample
of one prompt), not ``model.generate``:

- Prompts are admitted shortest first (rows decoding together then have similar lengths, so little
  left padding), a prompt with its ``n`` sample rows (a prompt with more samples than
  ``batch_size`` is split over several admissions). Each admitted prompt is prefilled once, alone
  (no padding work), and its key/value cache is repeated for its samples and joined to the running
  batch, left-padded: the prompt is not recomputed per sample. The cache holds at most
  ``batch_size`` x (longest prompt + ``max_tokens``) positions.
- A row that ends (end token or ``max_tokens``) stops at once. Finished rows are dropped from the
  batch once they are an eighth of it, and their slots go to waiting prompts at the same moment, so
  the batch stays full instead of running a long tail of a few rows per prompt group.
- The cache is a :class:`~medssr.generation.kv_cache.GrowingLayer` per layer: a step writes its
  position in place.
- On CPU a decode step of a Llama, Qwen2 or Qwen3 model is computed by
  :class:`~medssr.generation.decode_step.FusedDecodeStep` (the same logits with a fraction of the
  operators; ``GeneratorConfig.fused_decode``), other models by their forward pass.
- The prefix all prompts of a call share (system prompt, chat template opening) is computed once.
- Sampling applies temperature, top-k, then top-p, as ``model.generate`` does, but reads top-p on the
  top-k survivors only instead of sorting the whole vocabulary for every row and step.
- :meth:`TransformersGenerator.generate_with_follow_up` continues a finished row's own cache with the
  follow-up turn's tokens, so a second question about a completion costs those few tokens instead of
  a new prefill of the prompt and completion.
- :meth:`TransformersGenerator.sample_ids` returns token ids with each token's log-probability, and
  :meth:`TransformersGenerator.on_model` runs a model already in memory: together they are the GRPO
  rollout on the trainer's own weights (:mod:`medssr.training.rollout`).

Greedy decoding (temperature 0) generates each prompt once and repeats the completion, since the
``n`` samples would be identical. With ``seed`` set, a call is reproducible for the same prompts,
``n`` and ``batch_size``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from medssr.generation.base import GeneratorConfig, Prompt, SamplingParams
from medssr.generation.follow_up import FollowUp, ask_follow_up

MIN_SHARED_PREFIX = 8
"""Tokens all prompts of a call must share before their common prefix is computed once for all."""
FOLLOW_UP_BATCH = 16
"""Finished rows waiting for their follow-up turn are run together once this many wait (or at the end)."""
PREFILL_TOKENS_PER_PASS = 4096
"""Most prompt tokens one fused prefill pass takes (its activations grow with them; a matmul of a few
hundred rows already runs at full speed)."""
_SENTINEL = "\u2063medssr-completion\u2063"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` on CPU is bfloat16 where the CPU computes it natively and float32 elsewhere (emulated bf16 is
    slower than float32: :mod:`medssr.cpu`); on GPU the checkpoint's dtype."""
    import torch

    from medssr.cpu import cpu_prefers_bf16

    if dtype == "auto":
        if device == "cpu":
            return torch.bfloat16 if cpu_prefers_bf16() else torch.float32
        return "auto"
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


def sample_tokens(logits, sampling: SamplingParams, generator=None):
    """One token per row: argmax at temperature 0; else temperature, top-k, top-p (the order of
    ``model.generate``), then a draw (from ``generator``, a ``torch.Generator``, when given). Top-p keeps
    the most likely tokens until the mass of those before a token reaches ``top_p`` (at least one),
    computed among the top-k when top-k is set."""

    if sampling.temperature == 0:
        return logits.argmax(-1)
    scaled = logits / sampling.temperature
    if not sampling.top_k and sampling.top_p >= 1.0:  # the full distribution: no sort of the vocabulary needed
        return _draw(scaled.softmax(-1), generator)
    if sampling.top_k:
        values, indices = scaled.topk(min(sampling.top_k, scaled.shape[-1]), dim=-1)
    else:
        values, indices = scaled.sort(dim=-1, descending=True)
    probs = values.softmax(-1)
    if sampling.top_p < 1.0:
        mass_before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(mass_before >= sampling.top_p, 0.0)
    return indices.gather(-1, _draw(probs, generator)[:, None]).squeeze(-1)


def _draw(probs, generator=None):
    """One index per row with the rows' (unnormalised) probabilities, by inverting the cumulative sum at
    one uniform draw per row: the same distribution as ``torch.multinomial``, which on CPU draws an
    exponential variate per vocabulary entry (a tenth of a SmolLM2 decode step)."""
    import torch

    cumulative = probs.cumsum(-1)
    point = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cumulative.dtype) * cumulative[:, -1:]
    # right=True: the first entry whose cumulative mass exceeds the point, so a zero-probability entry is never
    # drawn; a point rounded up to the total mass gets the last entry with mass (where the cumulative sum peaks).
    return torch.minimum(torch.searchsorted(cumulative, point, right=True).squeeze(-1), cumulative.argmax(-1))


def _groups_of_tokens(prompts: list[list[int]], limit: int) -> list[list[list[int]]]:
    """Consecutive groups of ``prompts`` of at most ``limit`` tokens each (a longer prompt alone)."""
    groups: list[list[list[int]]] = []
    tokens = 0
    for ids in prompts:
        if not groups or tokens + len(ids) > limit:
            groups.append([])
            tokens = 0
        groups[-1].append(ids)
        tokens += len(ids)
    return groups


@dataclass
class SampledIds:
    """One completion as token ids, with each token's log-probability under the model."""

    ids: list[int]
    logprobs: list[float]


class _Running:
    """The rows being decoded: cache, attention mask, next position and next-token logits of each row,
    which (prompt, sample) it is, and how many tokens it has made."""

    def __init__(self, cache, mask, positions, logits, owners, made):
        self.cache, self.mask, self.positions, self.logits = cache, mask, positions, logits
        self.owners: list[tuple[int, int]] = owners
        self.made = made
        self.alive = made.new_ones(len(owners)).bool()

    def __len__(self) -> int:
        return len(self.owners)

    def extend(self, other: "_Running") -> None:
        """Append ``other``'s rows; both sides are left-padded to the wider one."""
        import torch

        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.join(theirs, width)
        pad = lambda mask: torch.nn.functional.pad(mask, (width - mask.shape[1], 0))  # noqa: E731
        self.mask = torch.cat([pad(self.mask), pad(other.mask)])
        self.positions = torch.cat([self.positions, other.positions])
        self.logits = torch.cat([self.logits, other.logits])
        self.owners = self.owners + other.owners
        self.made = torch.cat([self.made, other.made])
        self.alive = torch.cat([self.alive, other.alive])

    def feed(self, step, next_tokens) -> None:
        """One decode step (``step``: :meth:`TransformersGenerator.step`): every row takes its next token,
        and the logits for the one after come back."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        self.logits = step(next_tokens, self.mask, self.positions, self.cache)
        self.positions = self.positions + 1

    def keep(self, rows) -> None:
        """Only ``rows`` go on; the left padding they all share is cut off."""
        self.cache.batch_select_indices(rows)
        self.mask, self.positions, self.logits = self.mask[rows], self.positions[rows], self.logits[rows]
        self.made, self.alive = self.made[rows], self.alive[rows]
        self.owners = [self.owners[r] for r in rows.tolist()]
        self.drop_shared_padding()

    def drop_shared_padding(self) -> None:
        """Cut off the left padding every decoding row has (a finished row's state no longer matters)."""
        if not bool(self.alive.any()) or not all(hasattr(layer, "drop_front") for layer in self.cache.layers):
            return
        shared_padding = int((self.mask[self.alive].cumsum(-1) == 0).sum(-1).min())
        if shared_padding:
            for layer in self.cache.layers:
                layer.drop_front(shared_padding)
            self.mask = self.mask[:, shared_padding:]


class TransformersGenerator:
    """The ``transformers`` backend of :class:`medssr.generation.base.Generator`."""

    def __init__(self, config: GeneratorConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

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
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=resolve_dtype(config.dtype, self.device), trust_remote_code=config.trust_remote_code
        ).to(self.device)
        model.eval()
        self._attach(model, self.tokenizer, config.fused_decode)

    @classmethod
    def on_model(cls, model, tokenizer, batch_size: int, fused_decode: bool = True) -> "TransformersGenerator":
        """A generator on a model already in memory (a trainer's policy): its weights are used as they
        are at each call (the fused decode step's concatenated copies are re-made when they change).
        Neither the model's mode nor the tokenizer is changed."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        generator = cls.__new__(cls)
        generator.config = GeneratorConfig(
            model=getattr(model, "name_or_path", ""), batch_size=batch_size, progress=False, fused_decode=fused_decode
        )
        generator.device = str(model.device)
        generator._attach(model, tokenizer, fused_decode)
        # A trainer's policy may decode under its bf16 autocast; autocast keeps the bf16 copies of the
        # weights from one step to the next only outside inference mode (inside, it casts them anew at
        # every step, 1.9x slower on SmolLM2), and these weights only change between calls.
        generator._grad_off = generator._torch.no_grad
        return generator

    def _attach(self, model, tokenizer, fused_decode: bool) -> None:
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        from medssr.generation.decode_step import FusedDecodeStep

        self.model, self.tokenizer = model, tokenizer
        eos = model.generation_config.eos_token_id
        eos_ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(tokenizer.eos_token_id)
        # Only these end a completion; only SamplingParams decide how to sample (no checkpoint defaults).
        self.eos_token_ids = eos_ids
        # Plain (non-sliding-window) cache layers hold every position: per-prompt caches can be stacked,
        # rows admitted into a running batch and continued by a follow-up turn.
        self._stackable_cache = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
        self._torch = torch
        self._grad_off = torch.inference_mode
        self._fused_step = FusedDecodeStep.for_model(model) if fused_decode else None

    def step(self, tokens, mask, positions, cache):
        """Float32 next-token logits ``[rows, vocab]`` after feeding ``tokens`` ``[rows]`` at ``positions``
        ``[rows, 1]`` onto ``cache``, whose attention ``mask`` includes the new token: the fused decode
        step where it computes this model and cache, else the model's forward pass."""
        if self._fused_step is not None and self._fused_step.computes(cache):
            return self._fused_step(tokens, mask, positions, cache)
        out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        return out.logits[:, -1].float()

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        if not self.tokenizer.chat_template:
            raise ValueError(f"model {self.config.model!r} has no chat template; pass plain-text prompts")
        # The rendered template already holds its special tokens (e.g. a BOS); do not add them twice.
        text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _follow_up_suffix(self, prompt: Prompt, instruction: str) -> list[int] | None:
        """Tokens that take a conversation from the end of a completion to the follow-up reply: for chat
        prompts, the chat template's own end of the assistant turn, user turn and reply header. None
        when the template does not render the conversation so far as prompt + completion (then the
        follow-up cannot continue the cache)."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(f"\n{instruction}", add_special_tokens=False)
        before = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        after = self.tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": _SENTINEL}, {"role": "user", "content": instruction}],
            tokenize=False,
            add_generation_prompt=True,
        )
        head, found, tail = after.partition(_SENTINEL)
        if not found or head != before:
            return None
        return self.tokenizer.encode(tail, add_special_tokens=False)

    def _shared_prefix(self, encoded: list[list[int]]):
        """Key/value states of the prefix every prompt of a call starts with (a system prompt, the chat
        template's opening), computed once; None when there is no such prefix worth sharing."""
        if len(encoded) < 2 or not self._stackable_cache:
            return None
        if self._fused_step is not None and self._fused_step.prefills():
            # Whole prompts by the fused prefill beat the forward pass continuing a shared prefix (SmolLM2
            # bf16: a 99-token prompt by the forward pass took 121 ms whole, 154 ms after its 24-token
            # prefix; bench/decode_step.py: a 113-token prompt, fused 104 ms against forward 121 ms).
            return None
        length = 0
        shortest = min(map(len, encoded))
        while length < shortest - 1 and all(ids[length] == encoded[0][length] for ids in encoded):
            length += 1
        if length < MIN_SHARED_PREFIX:
            return None
        out = self.model(input_ids=self._torch.tensor([encoded[0][:length]], device=self.device), use_cache=True, logits_to_keep=1)
        return length, [(layer.keys, layer.values) for layer in out.cache.layers]

    def _prefill_one(self, ids: list[int], prefix):
        """One prompt's forward pass, continuing the shared prefix's cache when there is one."""
        torch = self._torch
        if prefix is None:
            return self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=1)
        from transformers import DynamicCache

        length, states = prefix
        cache = DynamicCache(config=self.model.config)
        for index, (keys, values) in enumerate(states):
            cache.update(keys, values, index)  # copies: the shared states stay as they are
        return self.model(
            input_ids=torch.tensor([ids[length:]], device=self.device),
            position_ids=torch.arange(length, len(ids), device=self.device)[None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )

    def _stacked(self, prompts: list[list[int]], states):
        """Prompts' per-layer key/value states and last-token logits (``FusedDecodeStep.forward``) as one
        left-padded batch: (cache, attention mask, next position of each row, last-token logits)."""
        from transformers import DynamicCache

        from medssr.generation.kv_cache import GrowingLayer

        torch = self._torch
        width = max(map(len, prompts))
        cache = DynamicCache(config=self.model.config)
        for index in range(len(cache.layers)):
            cache.layers[index] = GrowingLayer([layers[index][0] for layers, _ in states], [layers[index][1] for layers, _ in states], width)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        positions = torch.tensor([[len(ids)] for ids in prompts], device=self.device)
        return cache, mask, positions, torch.stack([logits for _, logits in states])

    def _prefill(self, prompts: list[list[int]], prefix=None):
        """Key/value cache of the prompts as one left-padded batch, attention mask, next position of each
        row, last-token logits. Each prompt is computed alone (after the ``prefix`` shared by the call's
        prompts) and the caches stacked, so padding to the longest prompt adds no work: by the fused step
        in one pass when it prefills (all prompts' tokens share its matmuls; it needs fewer operators
        than the forward pass), else by a forward pass per prompt. (Sliding-window caches cannot be
        stacked that way; those models prefill the padded batch.)"""
        torch = self._torch
        if prefix is None and self._stackable_cache and self._fused_step is not None and self._fused_step.prefills():
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            states = []
            for group in _groups_of_tokens(prompts, PREFILL_TOKENS_PER_PASS):
                states += self._fused_step.forward(empty, None, None, None, group)[1]
            return self._stacked(prompts, states)
        width = max(map(len, prompts))
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        if not self._stackable_cache:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            input_ids = torch.tensor([[self.tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in prompts], device=self.device)
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            return out.cache, mask, positions[:, -1:] + 1, out.logits[:, -1].float()
        from medssr.generation.kv_cache import GrowingLayer

        outputs = [self._prefill_one(ids, prefix) for ids in prompts]
        cache = outputs[0].cache
        for index in range(len(cache.layers)):
            cache.layers[index] = GrowingLayer.joined([out.cache.layers[index] for out in outputs], width)
        positions = torch.tensor([[len(ids)] for ids in prompts], device=self.device)
        return cache, mask, positions, torch.cat([out.logits[:, -1].float() for out in outputs])

    def _admit(self, running: _Running | None, units: list[tuple[int, int, int]], encoded: list[list[int]], prefix) -> _Running:
        """Prefill the prompts of ``units`` (prompt, first sample, rows) and join their rows to ``running``."""
        torch = self._torch
        cache, mask, positions, logits = self._prefill([encoded[p] for p, _, _ in units], prefix)
        repeats = torch.tensor([rows for _, _, rows in units], device=self.device)
        for layer in cache.layers:
            layer.batch_select_indices(torch.arange(len(units), device=self.device).repeat_interleave(repeats))
        mask, positions, logits = (t.repeat_interleave(repeats, dim=0) for t in (mask, positions, logits))
        owners = [(p, first + s) for p, first, rows in units for s in range(rows)]
        admitted = _Running(cache, mask, positions, logits, owners, torch.zeros(len(owners), dtype=torch.long, device=self.device))
        if running is None or not len(running):
            return admitted
        running.extend(admitted)
        return running

    def _answer_follow_ups(self, waiting: list[dict], suffixes, letter_ids) -> dict[tuple[int, int], str]:
        """Run the follow-up turn of finished rows on their own caches; the reply letter of each."""
        torch = self._torch
        from transformers import DynamicCache

        from medssr.generation.kv_cache import GrowingLayer

        width = max(group["mask"].shape[1] for group in waiting)
        layers = [
            GrowingLayer.joined([group["layers"][i] for group in waiting], width) for i in range(len(waiting[0]["layers"]))
        ]
        cache = DynamicCache(config=self.model.config)
        cache.layers = layers
        rows = [(owner, lead) for group in waiting for owner, lead in zip(group["owners"], group["leads"])]
        inputs = [([lead] if lead is not None else []) + suffixes[owner[0]] for owner, lead in rows]
        length = max(map(len, inputs))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (length - len(ids)) + ids for ids in inputs], device=self.device)
        input_mask = torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids in inputs], device=self.device)
        mask = torch.cat([torch.nn.functional.pad(group["mask"], (width - group["mask"].shape[1], 0)) for group in waiting])
        starts = torch.cat([group["positions"] for group in waiting])
        # Padding slots (masked, attended by nothing) take the first real token's position.
        offsets = (input_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids,
            attention_mask=torch.cat([mask, input_mask], dim=1),
            position_ids=starts + offsets,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1].float()
        answers = {}
        for row, (owner, _) in enumerate(rows):
            ids = letter_ids[owner[0]]
            allowed = list(ids)
            answers[owner] = ids[allowed[int(logits[row, allowed].argmax())]]
        return answers

    def _run(self, prompts, n, sampling, min_new_tokens=None, follow_up: FollowUp | None = None, suffixes=None):
        """Completions (and follow-up letters) of every prompt; see the module docstring."""
        if n < 1:
            raise ValueError("n must be >= 1")
        if not prompts:
            return [], []
        greedy = sampling.temperature == 0
        copies = 1 if greedy else n
        encoded = [self._encode(prompt) for prompt in prompts]
        tokens, _, answers = self._decode(encoded, [copies] * len(encoded), sampling, min_new_tokens, follow_up, suffixes)
        letters_by_id = letter_token_ids(self.tokenizer, sampling.allowed_letters) if sampling.allowed_letters else {}
        completions: list[list[str]] = [[""] * copies for _ in prompts]
        replies: list[list[str | None]] = [[None] * copies for _ in prompts]
        for (p, s), ids in tokens.items():
            if letters_by_id:
                completions[p][s] = letters_by_id[ids[0]]
            else:
                completions[p][s] = self.tokenizer.decode(ids, skip_special_tokens=True)
            replies[p][s] = answers.get((p, s))
        if greedy:
            return [c * n for c in completions], [r * n for r in replies]
        return completions, replies

    def sample_ids(self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int], sampling: SamplingParams) -> list[list[SampledIds]]:
        """``counts[p]`` completions of the tokenized prompt ``prompt_ids[p]``, as token ids (the end token
        included when one ended it) with the log-probability of each token: log-softmax of the logits
        divided by the temperature (1 when greedy), before top-k and top-p, which is the policy's
        probability a forward pass over prompt + completion gives (what GRPO's ratio is computed on)."""
        if any(count < 1 for count in counts) or len(counts) != len(prompt_ids):
            raise ValueError("counts: one count >= 1 per prompt")
        if sampling.allowed_letters:
            raise ValueError("sample_ids: allowed_letters is for generate()")
        greedy = sampling.temperature == 0
        copies = [1 if greedy else count for count in counts]
        tokens, logprobs, _ = self._decode([list(ids) for ids in prompt_ids], copies, sampling, with_logprobs=True)
        return [
            [SampledIds(list(tokens[p, 0 if greedy else s]), list(logprobs[p, 0 if greedy else s])) for s in range(count)]
            for p, count in enumerate(counts)
        ]

    def _decode(self, encoded, copies, sampling, min_new_tokens=None, follow_up: FollowUp | None = None, suffixes=None, with_logprobs=False):
        """The decode loop: tokens (and per-token log-probs, follow-up letters) by (prompt, sample), for
        ``copies[p]`` samples of each encoded prompt."""
        from tqdm.auto import tqdm

        torch = self._torch
        if not encoded:
            return {}, {}, {}
        max_new_tokens = 1 if sampling.allowed_letters else sampling.max_tokens
        min_new = min(min_new_tokens or 0, max_new_tokens)
        letters_by_id: dict[int, str] = {}
        if sampling.allowed_letters:
            letters_by_id = letter_token_ids(self.tokenizer, sampling.allowed_letters)
            allowed = torch.tensor(list(letters_by_id), device=self.device)
        letter_ids: dict[int, dict[int, str]] = {}  # prompt -> its follow-up's letter tokens
        by_letters: dict[tuple[str, ...], dict[int, str]] = {}
        for p, letters in enumerate(follow_up.letters if follow_up is not None else []):
            letters = tuple(letters)
            if letters not in by_letters:
                by_letters[letters] = letter_token_ids(self.tokenizer, letters)
            letter_ids[p] = by_letters[letters]
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)

        size = self.config.batch_size
        order = sorted(range(len(encoded)), key=lambda p: len(encoded[p]))
        queue = deque((p, first, min(size, copies[p] - first)) for p in order for first in range(0, copies[p], size))
        tokens: dict[tuple[int, int], list[int]] = {}
        logprobs: dict[tuple[int, int], list[float]] = {}
        temperature = sampling.temperature or 1.0
        answers: dict[tuple[int, int], str] = {}
        waiting: list[dict] = []
        eos = torch.tensor(self.eos_token_ids, device=self.device, dtype=torch.long)
        running: _Running | None = None
        progress = tqdm(total=sum(copies), desc="generate", unit="sample", disable=not self.config.progress)
        with self._grad_off():
            prefix = self._shared_prefix(encoded)
            while queue or (running is not None and running.alive.any()):
                units = []
                free = size - (len(running) if running is not None else 0)
                # A sliding-window cache cannot take rows into a running batch: it waits to empty.
                if running is None or not len(running) or self._stackable_cache:
                    while queue and queue[0][2] <= free:
                        units.append(queue.popleft())
                        free -= units[-1][2]
                if units:
                    running = self._admit(running, units, encoded, prefix)
                logits = running.logits
                if min_new:
                    logits = logits.clone()
                    logits[(running.made < min_new).nonzero().squeeze(1)[:, None], eos] = float("-inf")
                if letters_by_id:
                    logits = torch.full_like(logits, float("-inf")).index_copy_(1, allowed, logits.index_select(1, allowed))
                next_tokens = sample_tokens(logits, sampling)
                alive = running.alive.nonzero().squeeze(1)
                for row, token in zip(alive.tolist(), next_tokens[alive].tolist()):
                    tokens.setdefault(running.owners[row], []).append(token)
                if with_logprobs:
                    # The policy's own logits (no end-token or letter constraint applied).
                    chosen = (running.logits[alive] / temperature).log_softmax(-1).gather(1, next_tokens[alive, None]).squeeze(1)
                    for row, value in zip(alive.tolist(), chosen.tolist()):
                        logprobs.setdefault(running.owners[row], []).append(value)
                running.made[alive] += 1
                ended = running.alive & (torch.isin(next_tokens, eos) | (running.made >= max_new_tokens))
                if ended.any():
                    done = ended.nonzero().squeeze(1)
                    running.alive[done] = False
                    progress.update(len(done))
                    if follow_up is not None:
                        waiting += self._park(running, done, next_tokens, tokens, follow_up, eos)
                # Dropping rows copies the cache: wait until an eighth of the batch is finished, or
                # until the finished rows free room for a waiting prompt (then one copy admits it).
                finished = len(running) - int(running.alive.sum())
                room = size - len(running) + finished
                if finished and (finished * 8 >= len(running) or (queue and room >= queue[0][2] and room * 8 >= size)):
                    kept = running.alive.nonzero().squeeze(1)
                    running.keep(kept)
                    next_tokens = next_tokens[kept]
                if waiting and (sum(len(group["owners"]) for group in waiting) >= FOLLOW_UP_BATCH or not (queue or running.alive.any())):
                    answers.update(self._answer_follow_ups(waiting, suffixes, letter_ids))
                    waiting = []
                if not running.alive.any():
                    continue
                running.feed(self.step, next_tokens)
        progress.close()
        return tokens, logprobs, answers

    def _park(self, running: _Running, done, next_tokens, tokens, follow_up: FollowUp, eos) -> list[dict]:
        """Copy out the caches of just-finished rows whose completion needs the follow-up turn. A row cut
        off by ``max_tokens`` (not by an end token) first feeds the token it has not fed yet."""
        chosen = [
            row
            for row in done.tolist()
            if follow_up.needed(*running.owners[row], self.tokenizer.decode(tokens[running.owners[row]], skip_special_tokens=True))
        ]
        if not chosen:
            return []
        rows = self._torch.tensor(chosen, device=self.device)
        ended_by_eos = self._torch.isin(next_tokens[rows], eos).tolist()
        return [
            {
                "layers": [layer.selected(rows) for layer in running.cache.layers],
                "mask": running.mask[rows],
                "positions": running.positions[rows],
                "owners": [running.owners[row] for row in chosen],
                "leads": [None if by_eos else int(next_tokens[row]) for row, by_eos in zip(chosen, ended_by_eos)],
            }
        ]

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        sampling: SamplingParams = SamplingParams(),
        min_new_tokens: int | None = None,
    ) -> list[list[str]]:
        """``n`` completions per prompt. ``min_new_tokens`` (benchmarks) forbids stopping earlier."""
        return self._run(prompts, n, sampling, min_new_tokens)[0]

    def generate_with_follow_up(
        self, prompts: Sequence[Prompt], n: int, sampling: SamplingParams, follow_up: FollowUp
    ) -> tuple[list[list[str]], list[list[str | None]]]:
        """Completions, and the follow-up letter of those ``follow_up.needed`` picks (see :mod:`follow_up`),
        read by continuing each finished row's cache."""
        suffixes = [self._follow_up_suffix(prompt, follow_up.instruction) for prompt in prompts] if prompts else []
        if not self._stackable_cache or any(suffix is None for suffix in suffixes):
            completions = self.generate(prompts, n=n, sampling=sampling)
            return completions, ask_follow_up(self, prompts, completions, follow_up)
        return self._run(prompts, n, sampling, None, follow_up, suffixes)
