"""Admission into the running batch: requests join at the next decode step, not after the batch ends.

Prompts wait in a bounded queue; one thread drives the :class:`~medssr.generation.step_decoder.StepDecoder`
and, before every step, admits waiting prompts while the batch has room (``max_prompts`` prompts,
the decoder's row limit). Each step's text goes back to the event loop, where every prompt's
:class:`Ticket` yields it (the streaming routes send it on as it comes). A ticket cancelled while it
waits never reaches the model; one cancelled while it decodes stops before the next step. A full
queue refuses new work at once (``QueueFull``) instead of letting latency grow without bound. A step
that raises fails the prompts of that batch and the thread goes on; should the thread itself die, every
waiting and decoding prompt fails with ``DecoderStopped``, so does every later submit, and the server
reports itself not ready: no request waits on a thread that is gone.

``admission="batch"`` is the earlier policy, kept to measure against (``bench/serving.py``): prompts
are admitted only into an empty batch, gathered for up to ``max_wait_ms``, and the batch then runs
until its last row ends while newcomers wait.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from typing import Literal

from medssr.generation.step_decoder import DecodeJob, Delta, StepDecoder
from medssr.serving.engine import DecodeFailed, DecoderStopped, QueueFull, StepFailed, Ticket
from medssr.serving.metrics import (
    ABANDONED,
    ADMITTED,
    CANCELLED_ROWS,
    DECODING_ROWS,
    GENERATED_TOKENS,
    QUEUE_DEPTH,
    QUEUE_WAIT,
    STEP_ROWS,
)

Admission = Literal["step", "batch"]
logger = logging.getLogger(__name__)


class DecodeScheduler:
    """The bounded queue in front of one decoder and the thread that steps it (an
    :class:`~medssr.serving.engine.Engine`)."""

    def __init__(self, decoder: StepDecoder, max_prompts: int, max_queue: int, admission: Admission = "step",
                 max_wait_ms: float = 0.0):
        if admission not in ("step", "batch"):
            raise ValueError(f"admission must be 'step' or 'batch', got {admission!r}")
        self.decoder = decoder
        self.max_prompts = max_prompts
        self.max_queue = max_queue
        self.admission = admission
        self.max_wait_s = max_wait_ms / 1000.0
        self._keys = itertools.count()
        self._waiting: deque[Ticket] = deque()
        self._running: dict[int, Ticket] = {}
        self._cancelled: list[Ticket] = []
        self._lock = threading.Condition()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free_since = time.monotonic()  # when the batch last emptied (admission="batch")
        self.failure: DecoderStopped | None = None  # set once the decode thread has ended
        self._thread = threading.Thread(target=self._work, name="medssr-decode", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return sum(1 for ticket in self._waiting if not ticket.cancelled)

    def new_key(self) -> int:
        return next(self._keys)

    def submit(self, jobs: list[DecodeJob], events: asyncio.Queue) -> list[Ticket]:
        """Queue jobs (all or none), from the event loop; their deltas go to ``events``. Raises
        ``QueueFull`` when there is no room."""
        self._loop = asyncio.get_running_loop()
        with self._lock:
            if self.failure is not None:
                raise self.failure
            if self.depth + len(jobs) > self.max_queue:
                raise QueueFull(f"queue is full ({self.depth} prompts waiting, limit {self.max_queue})")
            tickets = [Ticket(job, events) for job in jobs]
            self._waiting.extend(tickets)
            QUEUE_DEPTH.set(self.depth)
            self._lock.notify()
        return tickets

    def cancel(self, tickets: list[Ticket]) -> None:
        """The client went away: waiting prompts are dropped, decoding ones stop before the next step."""
        with self._lock:
            for ticket in tickets:
                if not ticket.cancelled:
                    ticket.cancelled = True
                    self._cancelled.append(ticket)
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()

    # ---------------------------------------------------------------------------------- decoder thread

    def _work(self) -> None:
        try:
            self._serve()
            stopped = DecoderStopped("the server is shutting down")
        except BaseException as exc:  # noqa: BLE001 - whatever ended the thread, no caller may wait on it
            logger.exception("the decode thread stopped")
            stopped = DecoderStopped(f"the decode thread stopped: {type(exc).__name__}: {exc}")
            stopped.__cause__ = exc
        with self._lock:
            self.failure = stopped
            waiting, self._waiting = list(self._waiting), deque()
        self._fail([*self._running.values(), *waiting], stopped)

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._cancelled and not self.decoder.rows and not self.depth:
                    self._lock.wait()
                if self._closed:
                    return
                cancelled, self._cancelled = self._cancelled, []
                self._drop_abandoned()
                admitted = self._choose()
            try:
                for ticket in cancelled:
                    if ticket.admitted and self._running.pop(ticket.job.key, None) is not None:
                        CANCELLED_ROWS.inc(self.decoder.cancel(ticket.job.key))
                if admitted:
                    self.decoder.admit([ticket.job for ticket in admitted])
                    ADMITTED.observe(len(admitted))
                    now = time.monotonic()
                    for ticket in admitted:
                        QUEUE_WAIT.observe(now - ticket.enqueued)
                        self._running[ticket.job.key] = ticket
                rows = self.decoder.rows
                deltas = self.decoder.step()
            except Exception as exc:  # every prompt in the batch learns the failure; the thread lives on
                logger.exception("a decode step failed")
                failed = StepFailed(f"the decode step failed: {type(exc).__name__}: {exc}")
                failed.__cause__ = exc
                self._fail([*self._running.values(), *admitted], failed)
                continue
            if rows:
                STEP_ROWS.observe(rows)
            DECODING_ROWS.set(self.decoder.rows)
            GENERATED_TOKENS.inc(len(deltas))
            if not self.decoder.rows:
                self._free_since = time.monotonic()
            self._deliver(deltas)

    def _choose(self) -> list[Ticket]:
        """The waiting prompts that join before this step (called holding the lock)."""
        if self.admission == "batch":
            if self.decoder.jobs or not self._waiting:
                return []
            self._gather()
            self._drop_abandoned()
        chosen: list[Ticket] = []
        rows = self.decoder.rows
        while self._waiting and self.decoder.jobs + len(chosen) < self.max_prompts and self.decoder.can_join():
            ticket = self._waiting[0]
            if rows + ticket.job.samples > self.decoder.max_rows:
                break
            self._waiting.popleft()
            ticket.admitted = True
            chosen.append(ticket)
            rows += ticket.job.samples
        if chosen:
            QUEUE_DEPTH.set(self.depth)
        return chosen

    def _gather(self) -> None:
        """Whole-batch admission: wait up to ``max_wait_s`` for a full batch. A fresh prompt waits out the
        rest of its own wait; one that waited through the previous batch gets a full wait from when the
        batch emptied, so the clients just answered can send their next requests into this one."""
        oldest = self._waiting[0]
        start = oldest.enqueued if oldest.enqueued >= self._free_since else self._free_since
        deadline = start + self.max_wait_s
        while self.depth < self.max_prompts and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._lock.wait(remaining)

    def _drop_abandoned(self) -> None:
        gone = [ticket for ticket in self._waiting if ticket.cancelled]
        if gone:
            ABANDONED.inc(len(gone))
            self._waiting = deque(ticket for ticket in self._waiting if not ticket.cancelled)
            QUEUE_DEPTH.set(self.depth)

    def _deliver(self, deltas: list[Delta]) -> None:
        sends = []
        for delta in deltas:
            ticket = self._running.get(delta.key)
            if ticket is None:
                continue
            sends.append((ticket, delta))
        for key in {delta.key for delta in deltas}:
            if not self.decoder.decoding(key):
                self._running.pop(key, None)
        if sends and self._loop is not None:
            self._loop.call_soon_threadsafe(_put_all, sends)

    def _fail(self, tickets: list[Ticket], exc: DecodeFailed) -> None:
        self.decoder.reset()
        self._running.clear()
        if tickets and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_put_all, [(ticket, exc) for ticket in tickets])


def _put_all(sends) -> None:
    for ticket, event in sends:
        ticket.events.put_nowait(event)
