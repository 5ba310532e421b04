"""vLLM's ``AsyncLLM`` in the server's process behind the engine contract (:mod:`medssr.serving.engine`).

vLLM schedules and batches on its own (continuous batching, its paged cache); each job is one
``generate`` call with ``n`` = its samples and outputs as deltas, turned into one
:class:`~medssr.generation.step_decoder.Delta` per sampled token (a delta's text on its last token). What
stays ours: the admission policy (at most ``max_batch_size + max_queue`` prompts in flight, else 429), the
limits and the vote, which the predictor applies before and after. Its log-probabilities are vLLM's raw
ones (the model's distribution before penalties and temperature), as the transformers engine reports them.
A cancelled ticket cancels its ``generate`` call, which aborts the request in the engine. Once vLLM's engine
core is dead every prompt in flight fails with ``DecoderStopped`` and so does every later submit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import uuid

from medssr.generation.step_decoder import DecodeJob, Delta, TokenLogprob
from medssr.serving.config import ServeConfig
from medssr.serving.engine import DecoderStopped, QueueFull, StepFailed, Ticket
from medssr.serving.metrics import CANCELLED_ROWS, DECODING_ROWS, GENERATED_TOKENS

logger = logging.getLogger(__name__)
# vLLM's CPU build holds its KV cache in this many GiB of host memory (its own default is sized for servers).
CPU_KV_CACHE_GIB = "2"


class VLLMEngine:
    """An :class:`~medssr.serving.engine.Engine` on vLLM's AsyncLLM, serving the model folder at ``path``."""

    def __init__(self, config: ServeConfig, path: str):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        args = AsyncEngineArgs(
            model=path, served_model_name=[config.name], dtype=config.dtype, max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization, max_num_seqs=config.max_rows,
            trust_remote_code=config.trust_remote_code, disable_log_stats=True, seed=0,
        )
        self.llm = AsyncLLM.from_engine_args(args)
        self.max_prompts = config.max_batch_size + config.max_queue
        self._keys = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self._running: dict[Ticket, asyncio.Task] = {}
        self._unfinished: dict[Ticket, int] = {}  # samples still decoding
        self._failure: DecoderStopped | None = None

    @property
    def failure(self) -> DecoderStopped | None:
        if self._failure is None and self.llm.errored:
            self._failure = DecoderStopped("vLLM's engine core stopped")
        return self._failure

    def new_key(self) -> int:
        return next(self._keys)

    def submit(self, jobs: list[DecodeJob], events: asyncio.Queue) -> list[Ticket]:
        if self.failure is not None:
            raise self.failure
        if len(self._running) + len(jobs) > self.max_prompts:
            raise QueueFull(f"{len(self._running)} prompts in flight, limit {self.max_prompts}")
        tickets = [Ticket(job, events, admitted=True) for job in jobs]
        for ticket in tickets:
            self._unfinished[ticket] = ticket.job.samples
            self._running[ticket] = asyncio.get_running_loop().create_task(self._decode(ticket))
        return tickets

    def cancel(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            task = self._running.get(ticket)
            if task is not None and not ticket.cancelled:
                ticket.cancelled = True
                CANCELLED_ROWS.inc(self._unfinished.get(ticket, 0))
                task.cancel()  # generate() aborts the request in the engine

    def close(self) -> None:
        self._failure = self._failure or DecoderStopped("the server is shutting down")
        self.llm.shutdown()

    async def _decode(self, ticket: Ticket) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        job, made = ticket.job, [0] * ticket.job.samples
        try:
            outputs = self.llm.generate({"prompt_token_ids": job.prompt_ids}, self._sampling(job), f"{self._prefix}-{job.key}")
            first = True
            async for output in outputs:
                prompt_scores = _scores(output.prompt_logprobs, job.prompt_ids, job.prompt_logprobs) if first else None
                first = False
                for completion in output.outputs:
                    for delta in self._deltas(ticket, completion, made):
                        if prompt_scores is not None and delta.sample == 0:
                            delta.prompt_logprobs, prompt_scores = prompt_scores, None
                        ticket.events.put_nowait(delta)
                DECODING_ROWS.set(sum(self._unfinished.values()))
        except asyncio.CancelledError:
            raise
        except EngineDeadError as exc:
            self._failure = DecoderStopped(f"vLLM's engine core stopped: {exc}")
            ticket.events.put_nowait(self._failure)
        except Exception as exc:  # noqa: BLE001 - the request fails with the reason; the engine goes on
            logger.exception("a vLLM request failed")
            ticket.events.put_nowait(StepFailed(f"generation failed: {type(exc).__name__}: {exc.__cause__ or exc}"))
        finally:
            self._running.pop(ticket, None)
            self._unfinished.pop(ticket, None)
            DECODING_ROWS.set(sum(self._unfinished.values()))

    def _deltas(self, ticket: Ticket, completion, made: list[int]) -> list[Delta]:
        """One delta per token vLLM added to sample ``completion.index`` (its text on the last)."""
        job, sample, ids = ticket.job, completion.index, list(completion.token_ids)
        finish = completion.finish_reason if completion.finish_reason in ("stop", "length") else None
        GENERATED_TOKENS.inc(len(ids))
        deltas = []
        for index, token in enumerate(ids):
            made[sample] += 1
            last = index == len(ids) - 1
            score = None
            if job.logprobs is not None and completion.logprobs is not None:
                score = _token_logprob(completion.logprobs[index], token, job.logprobs)
            deltas.append(Delta(key=job.key, sample=sample, text=completion.text if last else "", tokens=made[sample],
                                finish_reason=finish if last else None, token=token, logprob=score))
        if not ids and finish:  # a stop string ended it without a new token
            deltas.append(Delta(key=job.key, sample=sample, text=completion.text, tokens=made[sample], finish_reason=finish))
        if finish and ticket in self._unfinished:
            self._unfinished[ticket] -= 1
        return deltas

    @staticmethod
    def _sampling(job: DecodeJob):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = job.sampling
        return SamplingParams(
            n=job.samples, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or -1,
            max_tokens=sampling.max_tokens, min_tokens=job.min_tokens, seed=sampling.seed, stop=list(job.stop) or None,
            logit_bias=job.logit_bias or None, presence_penalty=job.presence_penalty,
            frequency_penalty=job.frequency_penalty, logprobs=job.logprobs, prompt_logprobs=job.prompt_logprobs,
            output_kind=RequestOutputKind.DELTA,
        )


def _token_logprob(position: dict, token: int, top: int) -> TokenLogprob:
    """vLLM's ``{token: Logprob(logprob, rank)}`` of one position: the token's value, the ``top`` ranked first."""
    ranked = sorted((lp.rank, t, lp.logprob) for t, lp in position.items() if lp.rank is not None and lp.rank <= top)
    return TokenLogprob(token, position[token].logprob, tuple((t, value) for _, t, value in ranked))


def _scores(prompt_logprobs, ids: list[int], top: int | None) -> list[TokenLogprob | None] | None:
    if top is None or prompt_logprobs is None:
        return None
    return [None] + [_token_logprob(position, token, top) for position, token in zip(prompt_logprobs[1:], ids[1:])]
