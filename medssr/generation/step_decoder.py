"""Open-ended continuous batching on the transformers backend: one decode step at a time, for a server.

:class:`TransformersGenerator` decodes a fixed set of prompts in one call. A server never has a fixed
set: requests arrive while others decode. :class:`StepDecoder` keeps the running batch between calls
(the same :class:`~medssr.generation.transformers_backend._Running` rows and prefill), so the caller can
admit a job before any step and cancel one at any time. Each job samples with its own settings
(temperature, top-p, top-k, seed, ``min_tokens``) and ends at its own stop sequences; each step returns
the text each row added, held back only where it could still turn into a stop sequence or is an
unfinished UTF-8 character. Not thread-safe: one thread drives it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from medssr.generation.base import SamplingParams
from medssr.generation.transformers_backend import TransformersGenerator, _Running, sample_tokens

_UNFINISHED_CHARACTER = "\ufffd"  # what a partial multi-byte character decodes to


@dataclass
class DecodeJob:
    """One prompt to continue ``samples`` times."""

    key: Hashable
    prompt_ids: list[int]
    samples: int
    sampling: SamplingParams
    min_tokens: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class Delta:
    """Text one sample added in a step; ``finish_reason`` ("stop" or "length") once it has ended."""

    key: Hashable
    sample: int
    text: str
    tokens: int
    finish_reason: str | None = None


@dataclass
class _Sample:
    ids: list[int] = field(default_factory=list)
    sent: str = ""


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
        """Prefill ``jobs`` (each prompt once, its cache repeated per sample) and join their rows."""
        if not jobs:
            return
        torch = self._torch
        if sum(job.samples for job in jobs) + self.rows > self.max_rows:
            raise ValueError(f"admitting {len(jobs)} jobs would exceed {self.max_rows} rows")
        if self._running is not None and len(self._running) + sum(job.samples for job in jobs) > self.max_rows:
            self._compact()
        with torch.inference_mode():
            cache, mask, positions, logits = self.generator._prefill([job.prompt_ids for job in jobs])
            repeats = torch.tensor([job.samples for job in jobs], device=self.generator.device)
            for layer in cache.layers:
                layer.batch_select_indices(torch.arange(len(jobs), device=self.generator.device).repeat_interleave(repeats))
            mask, positions, logits = (t.repeat_interleave(repeats, dim=0) for t in (mask, positions, logits))
        owners = [(job.key, sample) for job in jobs for sample in range(job.samples)]
        made = torch.zeros(len(owners), dtype=torch.long, device=self.generator.device)
        admitted = _Running(cache, mask, positions, logits, owners, made)
        for job in jobs:
            self._jobs[job.key] = job
            if job.sampling.seed is not None:
                self._rngs[job.key] = torch.Generator(device=self.generator.device).manual_seed(job.sampling.seed)
            for sample in range(job.samples):
                self._samples[job.key, sample] = _Sample()
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

    def step(self) -> list[Delta]:
        """Sample one token for every decoding row, then run the batch's forward pass over them."""
        running = self._running
        if running is None or not self.rows:
            return []
        torch = self._torch
        with torch.inference_mode():
            alive = running.alive.nonzero().squeeze(1).tolist()
            by_job: dict[Hashable, list[int]] = {}
            for row in alive:
                by_job.setdefault(running.owners[row][0], []).append(row)
            next_tokens = torch.zeros(len(running), dtype=torch.long, device=self.generator.device)
            for key, rows in by_job.items():
                job, index = self._jobs[key], torch.tensor(rows, device=self.generator.device)
                logits = running.logits[index]
                if job.min_tokens:
                    early = (running.made[index] < job.min_tokens).nonzero().squeeze(1)
                    logits[early[:, None], self._eos] = float("-inf")
                next_tokens[index] = sample_tokens(logits, job.sampling, self._rngs.get(key))
            running.made[alive] += 1
            ended_by_eos = torch.isin(next_tokens, self._eos).tolist()
            made = running.made.tolist()
            deltas = []
            for row in alive:
                key, sample = running.owners[row]
                delta = self._advance(key, sample, int(next_tokens[row]), ended_by_eos[row], made[row])
                deltas.append(delta)
                if delta.finish_reason is not None:
                    running.alive[row] = False
            for key in {delta.key for delta in deltas if delta.finish_reason is not None}:
                if all(self._samples.get((key, s)) is None for s in range(self._jobs[key].samples)):
                    self._forget(key)
            finished = len(running) - self.rows
            if finished and finished * 8 >= len(running):
                kept = self._compact()
                next_tokens = next_tokens[kept]
            if self.rows:
                self._running.feed(self.generator.model, next_tokens)
        return deltas

    def _advance(self, key, sample: int, token: int, by_eos: bool, made: int) -> Delta:
        """Add ``token`` to a sample: the text it releases, and whether the sample has ended."""
        job, state = self._jobs[key], self._samples[key, sample]
        state.ids.append(token)
        text = self.generator.tokenizer.decode(state.ids, skip_special_tokens=True)
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

    def _forget(self, key) -> None:
        job = self._jobs.pop(key)
        self._rngs.pop(key, None)
        for sample in range(job.samples):
            self._samples.pop((key, sample), None)

    def _compact(self):
        """Drop finished rows from the batch (copies the cache: done once an eighth of it is finished)."""
        kept = self._running.alive.nonzero().squeeze(1)
        self._running.keep(kept)
        return kept
