"""The contract every serving engine implements, and what its prompts end with when they cannot decode.

An engine takes :class:`~medssr.generation.step_decoder.DecodeJob` s (token ids, samples, sampling, stop
sequences, logit bias, penalties, log-probabilities asked) and sends each job's
:class:`~medssr.generation.step_decoder.Delta` s, one per sampled token, to the ``asyncio.Queue`` given at
submission, or the :class:`DecodeFailed` that ended them. Two implement it:
:class:`medssr.serving.scheduler.DecodeScheduler` (medssr's step decoder on torch, ``engine=transformers``)
and :class:`medssr.serving.vllm_engine.VLLMEngine` (vLLM's AsyncLLM, ``engine=vllm``). The predictor, its
routes, the vote extension and the limits see only this.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from medssr.generation.step_decoder import DecodeJob


class QueueFull(Exception):
    """The waiting queue is at capacity: the caller should answer 429 and the client retry later."""


class DecodeFailed(RuntimeError):
    """What a prompt's events end with when it cannot be decoded to its end."""


class StepFailed(DecodeFailed):
    """Decoding raised for the prompts of one batch (or one request); the engine goes on with the next."""


class DecoderStopped(DecodeFailed):
    """The engine is gone (it died on an error, or the server is closing): no prompt will decode."""


@dataclass(eq=False)
class Ticket:
    """One prompt's place: its job, and the queue its deltas (or the exception that failed it) go to."""

    job: DecodeJob
    events: asyncio.Queue
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    admitted: bool = False


class Engine(Protocol):
    failure: DecoderStopped | None
    """Set once the engine has stopped for good: the server is then not ready."""

    def new_key(self) -> int:
        """A key no other job of this engine has."""

    def submit(self, jobs: list[DecodeJob], events: asyncio.Queue) -> list[Ticket]:
        """Queue every job (all or none), from the event loop. Raises ``QueueFull`` when there is no room,
        ``DecoderStopped`` once the engine is gone."""

    def cancel(self, tickets: list[Ticket]) -> None:
        """The client went away: stop these prompts, waiting or decoding."""

    def close(self) -> None:
        """Stop serving (the server is shutting down)."""
