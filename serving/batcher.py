"""Dynamic batching: concurrent requests become one batched generate call.

Requests wait in a bounded queue. A single worker takes the oldest waiting prompt and gathers the
waiting prompts that sample the same way (same ``n`` and sampling settings) until the batch is full
or ``max_wait_ms`` has passed (counted from the oldest's arrival, or from the moment the worker became
free if the oldest waited through the previous batch); the batch then runs in a dedicated thread so the event loop
keeps answering (health checks, 429s) while the model computes. A full queue refuses new work at
once (``QueueFull``) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from medssr.serving.metrics import ABANDONED, BATCH_SIZE, QUEUE_DEPTH, QUEUE_WAIT

BatchFunction = Callable[[list[Any], Hashable], list[Any]]
"""Runs one batch: (prompts, group key) -> one result per prompt, in order."""


class QueueFull(Exception):
    """The waiting queue is at capacity: the caller should answer 429 and the client retry later."""


@dataclass
class _Waiting:
    prompt: Any
    group: Hashable
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Gathers prompts with the same group key into batches of up to ``max_batch_size``."""

    def __init__(self, run_batch: BatchFunction, max_batch_size: int, max_wait_ms: float, max_queue: int):
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._waiting: deque[_Waiting] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # One thread: batches run one after another, which is what a single model instance can do.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medssr-batch")

    @property
    def depth(self) -> int:
        return len(self._waiting)

    async def submit(self, prompts: Sequence[Any], group: Hashable) -> list[Any]:
        """Queue prompts (all or none) and wait for their results; raises ``QueueFull`` when no room."""
        if len(self._waiting) + len(prompts) > self.max_queue:
            raise QueueFull(f"queue is full ({len(self._waiting)} prompts waiting, limit {self.max_queue})")
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        entries = [_Waiting(prompt, group, loop.create_future()) for prompt in prompts]
        self._waiting.extend(entries)
        QUEUE_DEPTH.set(len(self._waiting))
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(entry.future for entry in entries)))
        except asyncio.CancelledError:
            # The client went away: its prompts are skipped when the next batch is formed.
            for entry in entries:
                entry.future.cancel()
            raise

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="medssr-batcher")

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            BATCH_SIZE.observe(len(batch))
            now = time.monotonic()
            for entry in batch:
                QUEUE_WAIT.observe(now - entry.enqueued)
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [entry.prompt for entry in batch], batch[0].group
                )
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} prompts")
            except Exception as exc:  # every waiting request learns the failure; the worker lives on
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                continue
            for entry, result in zip(batch, results):
                if not entry.future.done():
                    entry.future.set_result(result)

    async def _next_batch(self) -> list[_Waiting]:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if self._waiting:
                break
            self._arrived.clear()
            await self._arrived.wait()
        oldest = self._waiting[0]
        age = time.monotonic() - oldest.enqueued
        # A fresh request waits out the rest of its max_wait. One that already waited through the previous
        # batch gets a full max_wait from now: the clients that batch just answered are sending their next
        # requests, and without this window they would form a half-size batch of their own, for good.
        deadline = loop.time() + (self.max_wait_s - age if age < self.max_wait_s else self.max_wait_s)
        while self._count(oldest.group) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch, kept = [], deque()
        for entry in self._waiting:
            if entry.future.done():
                ABANDONED.inc()
                continue
            if entry.group == oldest.group and len(batch) < self.max_batch_size:
                batch.append(entry)
            else:
                kept.append(entry)
        self._waiting = kept
        QUEUE_DEPTH.set(len(kept))
        return batch

    def _count(self, group: Hashable) -> int:
        return sum(1 for entry in self._waiting if entry.group == group and not entry.future.done())

    def _drop_abandoned(self) -> None:
        abandoned = sum(1 for entry in self._waiting if entry.future.done())
        if abandoned:
            ABANDONED.inc(abandoned)
            self._waiting = deque(entry for entry in self._waiting if not entry.future.done())
            QUEUE_DEPTH.set(len(self._waiting))
