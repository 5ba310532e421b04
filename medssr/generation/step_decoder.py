"""Open-ended continuous batching on the transformers backend: one decode step at a time, for a server.

:class:`TransformersGenerator` decodes a fixed set of prompts in one call. A server never has a fixed
set: requests arrive while others decode. :class:`StepDecoder` keeps the running batch between calls
(the same :class:`~medssr.generation.transformers_backend._Running` rows and prefill), so the caller can
admit a job before any step and cancel one at any time. Each job samples with its own settings
(temperature, top-p, top-k, seed, ``min_tokens``, a logit bias, presence and frequency penalties) and
ends at its own stop sequences; each step returns the text each row added, held back only where it could
still turn into a stop sequence or is an unfinished UTF-8 character, with the token it sampled and, when
asked, that token's log-probability and the most likely alternatives (from the model's own logits,
before bias, penalties and temperature, as vLLM reports them). A job may also ask for the log-probability
of each of its prompt's tokens (what a loglikelihood evaluation scores). Not thread-safe: one thread
drives it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from medssr.generation.base import SamplingParams
from medssr.generation.transformers_backend import TransformersGenerator, _Running, sample_tokens

_UNFINISHED_CHARACTER = "\ufffd"  # what a partial multi-byte character decodes to


PROMPT_LOGPROBS_CHUNK = 512
"""Prompt positions whose logits one pass computes when a job asks for its prompt's log-probabilities
(the logits of a 4096-token prompt at once would take 4096 x vocabulary floats)."""


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model, and the ``top`` most likely tokens at its position
    (``(token, logprob)``, most likely first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class DecodeJob:
    """One prompt to continue ``samples`` times. ``logprobs``: report each sampled token's log-probability
    with that many alternatives (None: none); ``prompt_logprobs`` the same for the prompt's tokens.
    ``logit_bias`` is added to the logits of its tokens; the penalties are subtracted from the logits of
    tokens the sample has generated (presence once, frequency per occurrence), as OpenAI and vLLM do."""

    key: Hashable
    prompt_ids: list[int]
    samples: int
    sampling: SamplingParams
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None


@dataclass
class Delta:
    """Text one sample added in a step; ``finish_reason`` ("stop" or "length") once it has ended. ``token``
    is the id it sampled (with its ``logprob`` when the job asked; the end token too, though its text is not
    part of the completion, as vLLM reports it); a sample's first delta carries the prompt's
    log-probabilities when the job asked (None for the first prompt token)."""

    key: Hashable
    sample: int
    text: str
    tokens: int
    finish_reason: str | None = None
    token: int | None = None
    logprob: TokenLogprob | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class _Sample:
    ids: list[int] = field(default_factory=list)
    sent: str = ""  # text released so far
    text: str = ""  # the text of ids[:read]
    prefix: int = 0  # where the last decoded window began (its first tokens are context)
    read: int = 0  # tokens whose text is in `text`
    counts: object = None  # generated tokens per vocabulary entry (a tensor), for the penalties


class StepDecoder:
    """The running batch of a :class:`TransformersGenerator`, advanced one token per row per :meth:`step`."""

    def __init__(self, generator: TransformersGenerator, max_rows: int):
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.generator = generator
        self.max_rows = max_rows
        self._torch = generator._torch
        self._eos = self._torch.tensor(generator.eos_token_ids, device=generator.device, dtype=self._torch.long)
        self._running: _Running | None = None
        self._jobs: dict[Hashable, DecodeJob] = {}
        self._rngs: dict[Hashable, object] = {}
        self._samples: dict[tuple[Hashable, int], _Sample] = {}
        self._bias: dict[Hashable, tuple[object, object]] = {}  # job -> (token ids, biases) as tensors
        self._prompt_logprobs: dict[Hashable, list[TokenLogprob | None]] = {}  # until each sample's first delta

    @property
    def rows(self) -> int:
        """Rows still decoding (a cancelled or finished row no longer counts)."""
        return int(self._running.alive.sum()) if self._running is not None else 0

    @property
    def jobs(self) -> int:
        return len(self._jobs)

    def decoding(self, key: Hashable) -> bool:
        """Whether job ``key`` has a sample still decoding."""
        return key in self._jobs

    def fits(self, job: DecodeJob) -> bool:
        return self.rows + job.samples <= self.max_rows

    def can_join(self) -> bool:
        """Whether rows may join a batch that is decoding (a sliding-window cache cannot take them)."""
        return self.generator._stackable_cache or self.rows == 0

    def admit(self, jobs: list[DecodeJob]) -> None:
        """Prefill ``jobs`` (each prompt once) and join their rows: into the places of finished rows where
        the prompt fits (no copy of the batch), the rest appended."""
        if not jobs:
            return
        torch = self._torch
        if sum(job.samples for job in jobs) + self.rows > self.max_rows:
            raise ValueError(f"admitting {len(jobs)} jobs would exceed {self.max_rows} rows")
        rows = [(index, sample) for index, job in enumerate(jobs) for sample in range(job.samples)]
        owners = [(jobs[index].key, sample) for index, sample in rows]
        with torch.inference_mode():
            prefilled = self.generator._prefill([job.prompt_ids for job in jobs])
            placed = self._reuse_finished_rows(jobs, rows, owners, *prefilled)
            if placed < len(rows):
                self._append(rows[placed:], owners[placed:], *prefilled)
        device = self.generator.device
        for job in jobs:
            self._jobs[job.key] = job
            if job.sampling.seed is not None:
                self._rngs[job.key] = torch.Generator(device=device).manual_seed(job.sampling.seed)
            if job.logit_bias:
                self._bias[job.key] = (torch.tensor(list(job.logit_bias), device=device),
                                       torch.tensor(list(job.logit_bias.values()), device=device))
            if job.prompt_logprobs is not None:
                self._prompt_logprobs[job.key] = self.prompt_logprobs(job.prompt_ids, job.prompt_logprobs)
            for sample in range(job.samples):
                self._samples[job.key, sample] = _Sample()

    def prompt_logprobs(self, ids: list[int], top: int) -> list[TokenLogprob | None]:
        """Each prompt token's log-probability given the tokens before it (None for the first), with the
        ``top`` most likely tokens at its position: the model's forward pass over the prompt, in chunks of
        positions on its own cache (this pass is separate from the prefill, which keeps the last logits only)."""
        from transformers import DynamicCache

        torch, model = self._torch, self.generator.model
        scores: list[TokenLogprob | None] = [None]
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            for start in range(0, len(ids) - 1, PROMPT_LOGPROBS_CHUNK):
                chunk = ids[start:min(start + PROMPT_LOGPROBS_CHUNK, len(ids) - 1)]
                out = model(input_ids=torch.tensor([chunk], device=self.generator.device), cache=cache, use_cache=True,
                            position_ids=torch.arange(start, start + len(chunk), device=self.generator.device)[None])
                cache = out.cache
                logprobs = out.logits[0].float().log_softmax(-1)
                targets = ids[start + 1:start + 1 + len(chunk)]
                scores += _token_logprobs(logprobs, targets, top)
        return scores

    def _reuse_finished_rows(self, jobs, rows, owners, cache, mask, positions, logits) -> int:
        """Write new rows into finished rows' places, in order while the prompt fits the batch's width;
        returns how many were placed."""
        running = self._running
        if running is None or not self.rows or not all(hasattr(layer, "write_row") for layer in running.cache.layers):
            return 0
        free = (~running.alive).nonzero().squeeze(1).tolist()
        width, prompt_width = running.mask.shape[1], mask.shape[1]
        placed = 0
        for (index, _), slot in zip(rows, free):
            length = len(jobs[index].prompt_ids)
            if length > width:
                break
            for mine, theirs in zip(running.cache.layers, cache.layers):
                mine.write_row(slot, theirs.keys[index, :, prompt_width - length:], theirs.values[index, :, prompt_width - length:])
            running.mask[slot] = 0
            running.mask[slot, width - length:] = 1
            running.positions[slot], running.logits[slot] = positions[index], logits[index]
            running.owners[slot] = owners[placed]
            running.made[slot], running.alive[slot] = 0, True
            placed += 1
        return placed

    def _append(self, rows, owners, cache, mask, positions, logits) -> None:
        """Join new rows after the batch's (a copy of its cache), compacting it first if they would not fit."""
        torch = self._torch
        if self._running is not None and len(self._running) + len(rows) > self.max_rows:
            self._compact()
        index = torch.tensor([prompt for prompt, _ in rows], device=self.generator.device)
        for layer in cache.layers:
            layer.batch_select_indices(index)
        made = torch.zeros(len(rows), dtype=torch.long, device=self.generator.device)
        admitted = _Running(cache, mask[index], positions[index], logits[index], owners, made)
        if self._running is None or not self.rows:
            self._running = admitted
        else:
            self._running.extend(admitted)

    def cancel(self, key: Hashable) -> int:
        """Stop every row of job ``key`` now; returns how many were still decoding."""
        if key not in self._jobs:
            return 0
        rows = [row for row, owner in enumerate(self._running.owners) if owner[0] == key]
        stopped = int(self._running.alive[rows].sum()) if rows else 0
        if rows:
            with self._torch.inference_mode():  # the batch's tensors were made in inference mode; writing them needs it too
                self._running.alive[rows] = False
        self._forget(key)
        return stopped

    def reset(self) -> None:
        """Drop every job (after a failed step the batch's state cannot be trusted)."""
        self._running = None
        self._jobs.clear()
        self._rngs.clear()
        self._samples.clear()
        self._bias.clear()
        self._prompt_logprobs.clear()

    def step(self) -> list[Delta]:
        """Sample one token for every decoding row, then run the batch's forward pass over them. Rows that
        ended in the previous step are dropped only now, once an admission has had the chance to reuse
        their places."""
        if self._running is None or not self.rows:
            return []
        torch = self._torch
        with torch.inference_mode():
            finished = len(self._running) - self.rows
            if finished and finished * 8 >= len(self._running):
                self._compact()
            else:
                self._running.drop_shared_padding()
            running = self._running
            alive = running.alive.nonzero().squeeze(1)
            rows = alive.tolist()
            jobs = [self._jobs[running.owners[row][0]] for row in rows]
            scored = [row for row, job in zip(rows, jobs) if job.logprobs is not None]
            # The model's own distribution, before the end-token floor, bias and penalties change the logits.
            raw = running.logits[scored].log_softmax(-1) if scored else None
            floor = torch.tensor([job.min_tokens for job in jobs], device=self.generator.device)
            early = alive[running.made[alive] < floor]
            if len(early):
                running.logits[early[:, None], self._eos] = float("-inf")
            self._bias_and_penalise(running, rows, jobs)
            next_tokens = torch.zeros(len(running), dtype=torch.long, device=self.generator.device)
            for sampling, key, group in self._sampling_groups(rows, jobs):
                index = torch.tensor(group, device=self.generator.device)
                next_tokens[index] = sample_tokens(running.logits[index], sampling, self._rngs.get(key))
            running.made[alive] += 1
            ended_by_eos = torch.isin(next_tokens, self._eos).tolist()
            made = running.made.tolist()
            tokens = next_tokens.tolist()
            logprobs = {}
            if scored:
                top = max(self._jobs[running.owners[row][0]].logprobs for row in scored)
                for row, score in zip(scored, _token_logprobs(raw, [tokens[row] for row in scored], top)):
                    wanted = self._jobs[running.owners[row][0]].logprobs
                    logprobs[row] = TokenLogprob(score.token, score.logprob, score.top[:wanted])
            deltas = []
            for row in rows:
                key, sample = running.owners[row]
                first = self._samples[key, sample].ids == []
                delta = self._advance(key, sample, tokens[row], ended_by_eos[row], made[row])
                delta.token, delta.logprob = tokens[row], logprobs.get(row)
                if first and key in self._prompt_logprobs:
                    delta.prompt_logprobs = self._prompt_logprobs[key]
                deltas.append(delta)
                if delta.finish_reason is not None:
                    running.alive[row] = False
            for key in {delta.key for delta in deltas if delta.finish_reason is not None}:
                if all(self._samples.get((key, s)) is None for s in range(self._jobs[key].samples)):
                    self._forget(key)
            if self.rows:
                running.feed(self.generator.step, next_tokens)
        return deltas

    def _bias_and_penalise(self, running, rows: list[int], jobs: list[DecodeJob]) -> None:
        """Add each job's logit bias and subtract its penalties from its rows' logits (in place: the step
        consumes them)."""
        for row, job in zip(rows, jobs):
            bias = self._bias.get(job.key)
            if bias is not None:
                running.logits[row, bias[0]] += bias[1]
            if job.presence_penalty or job.frequency_penalty:
                counts = self._samples[running.owners[row]].counts
                if counts is not None:
                    running.logits[row] -= job.frequency_penalty * counts + job.presence_penalty * (counts > 0)

    @staticmethod
    def _sampling_groups(rows: list[int], jobs: list[DecodeJob]) -> list[tuple[SamplingParams, Hashable, list[int]]]:
        """(settings, seeded job's key or None, rows) sampled by one call: a seeded job's rows on their own
        (its generator's draws are its own), every unseeded row with the same settings together."""
        groups: dict[tuple, tuple[SamplingParams, Hashable, list[int]]] = {}
        for row, job in zip(rows, jobs):
            sampling = job.sampling
            seeded = job.key if sampling.seed is not None and sampling.temperature > 0 else None
            settings = (0.0,) if sampling.temperature == 0 else (sampling.temperature, sampling.top_p, sampling.top_k)
            groups.setdefault((settings, seeded is not None, seeded), (sampling, seeded, []))[2].append(row)
        return list(groups.values())

    def _advance(self, key, sample: int, token: int, by_eos: bool, made: int) -> Delta:
        """Add ``token`` to a sample: the text it releases, and whether the sample has ended."""
        job, state = self._jobs[key], self._samples[key, sample]
        state.ids.append(token)
        if job.presence_penalty or job.frequency_penalty:
            if state.counts is None:
                state.counts = self._running.logits.new_zeros(self._running.logits.shape[-1])
            state.counts[token] += 1
        text = self._text(state)
        cuts = [at for at in (text.find(stop, len(state.sent)) for stop in job.stop) if at >= 0]
        finish = None
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        elif by_eos:
            finish = "stop"
        elif made >= job.sampling.max_tokens:
            finish = "length"
        if finish is None:
            # Held back: what a stop sequence could still begin with, and a character still incomplete.
            hold = max(map(len, job.stop), default=1) - 1
            safe = len(text) - hold
            while safe > len(state.sent) and text[safe - 1] == _UNFINISHED_CHARACTER:
                safe -= 1
            text = text[:safe]
        added = text[len(state.sent):] if len(text) > len(state.sent) else ""
        state.sent += added
        if finish is not None:
            del self._samples[key, sample]
        return Delta(key=key, sample=sample, text=added, tokens=made, finish_reason=finish)

    def _text(self, state: _Sample) -> str:
        """The text of a sample's ids, decoding only the tokens since the last complete character, after
        the few before them (a token's text can depend on the one before it: a leading space). Decoding
        every id at every step cost a serving step more than its sampling."""
        decode = self.generator.tokenizer.decode
        head = decode(state.ids[state.prefix:state.read], skip_special_tokens=True)
        window = decode(state.ids[state.prefix:], skip_special_tokens=True)
        if window.startswith(head):
            added = window[len(head):]
            if added.endswith(_UNFINISHED_CHARACTER):  # the next token may complete it
                return state.text + added
            state.text += added
            state.prefix, state.read = state.read, len(state.ids)
            return state.text
        text = decode(state.ids, skip_special_tokens=True)  # a tokenizer whose text does not add up here
        if not text.endswith(_UNFINISHED_CHARACTER):
            state.text, state.prefix, state.read = text, len(state.ids) - 1, len(state.ids)
        return text

    def _forget(self, key) -> None:
        job = self._jobs.pop(key)
        self._rngs.pop(key, None)
        self._bias.pop(key, None)
        self._prompt_logprobs.pop(key, None)
        for sample in range(job.samples):
            self._samples.pop((key, sample), None)

    def _compact(self) -> None:
        """Drop finished rows from the batch (copies the cache: done once an eighth of it is finished)."""
        self._running.keep(self._running.alive.nonzero().squeeze(1))


def _token_logprobs(logprobs, targets: list[int], top: int) -> list[TokenLogprob]:
    """For each row of ``logprobs`` (``[rows, vocab]`` log-probabilities), the target token's value and the
    ``top`` most likely tokens."""
    import torch

    index = torch.tensor(targets, device=logprobs.device)
    chosen = logprobs.gather(1, index[:, None]).squeeze(1).tolist()
    if not top:
        return [TokenLogprob(token, value) for token, value in zip(targets, chosen)]
    values, ids = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
    return [
        TokenLogprob(token, value, tuple(zip(row_ids, row_values)))
        for token, value, row_ids, row_values in zip(targets, chosen, ids.tolist(), values.tolist())
    ]
