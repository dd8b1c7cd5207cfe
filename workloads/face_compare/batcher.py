"""Dynamic batching with TF-Serving / Triton semantics, a bounded priority queue and tier priority.

Work is queued per image. A model instance that is free takes up to ``max_batch_size`` images, highest
tier first and oldest first within a tier; if fewer are waiting, it waits until the oldest waiting image
has been queued for ``max_queue_delay`` (Triton's ``max_queue_delay_microseconds``, TF-Serving's
``batch_timeout_micros``) or the batch fills, whichever is first. While every instance is busy, images
accumulate, so batches grow with load by themselves. The queue is bounded: a request that does not fit
is refused at once (the API answers 503 with Retry-After) instead of waiting without bound. Before
the queue is full, a request whose estimated wait (the images served before it over the measured
service rate) exceeds ``max_queue_wait`` is refused the same way: under overload the requests that are
accepted still finish within the latency SLO, and only the excess is turned away. An image still waiting
after ``queue_timeout`` is answered with a timeout, so a low tier starved by a high one learns it
instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from workloads.face_compare import logs
from workloads.face_compare.metrics import WorkloadMetrics

TIERS: Final = ("vip", "normal", "free")
DEFAULT_TIER: Final = "normal"
_RANK: Final = {tier: rank for rank, tier in enumerate(TIERS)}
# Weight of the newest batch in the smoothed service rate: follows a change within ~10 batches.
_RATE_WEIGHT: Final = 0.2

log = logs.get("batcher")


class QueueFullError(Exception):
    """The queue has no room for the request; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int, message: str = "queue full") -> None:
        super().__init__(f"{message}; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class OverloadedError(QueueFullError):
    """The request would wait in the queue longer than the wait budget allows."""

    def __init__(self, wait_s: float, budget_s: float) -> None:
        super().__init__(
            max(1, math.ceil(wait_s - budget_s)),
            f"estimated queue wait {wait_s:.2f} s is over the budget of {budget_s:g} s",
        )


class ClosedError(Exception):
    """The batcher takes no new work (the service is draining or stopped)."""


class QueueTimeoutError(Exception):
    """An image waited longer than the queue timeout without being scheduled."""


class InferenceError(Exception):
    """The model run of a batch raised; every request in the batch gets this."""


@dataclass(order=True)
class _Item:
    rank: int
    seq: int
    enqueued: float = field(compare=False)
    tensor: np.ndarray = field(compare=False, repr=False)
    future: asyncio.Future[np.ndarray] = field(compare=False, repr=False)


class Batcher:
    """Queues images from many requests and runs them through ``run`` in batches.

    ``run`` is called on a worker thread (one per instance) with an (n, ...) array and must return n rows.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        queue_timeout_s: float = 10.0,
        max_queue_wait_s: float | None = None,
        instances: int = 1,
        metrics: WorkloadMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self._max_batch = max_batch_size
        self._max_delay = max_queue_delay_s
        self._max_queue = max_queue_size
        self._queue_timeout = queue_timeout_s
        self._max_wait = max_queue_wait_s
        self._rate: float | None = None  # images per second of one instance, smoothed over batches
        self._instances = instances
        self._metrics = metrics
        self._clock = clock
        self._heap: list[_Item] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._runners: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self.batches_run = 0

    @property
    def depth(self) -> int:
        """Images waiting (not yet taken into a batch)."""
        return len(self._heap)

    @property
    def service_rate(self) -> float | None:
        """Images per second all instances serve, as measured on the recent batches (None before one)."""
        return None if self._rate is None else self._rate * self._instances

    def estimated_wait(self, tier: str = DEFAULT_TIER) -> float:
        """Seconds a request of `tier` queued now would wait: the images served before it (its tier and
        higher) over the measured service rate; 0 before any batch has been measured."""
        rate = self.service_rate
        if not rate:
            return 0.0
        rank = _RANK[tier]
        return sum(1 for item in self._heap if item.rank <= rank) / rate

    def admit(self, count: int, tier: str = DEFAULT_TIER) -> None:
        """Raise unless `count` images of `tier` may queue now: room left, and a wait within budget.

        Cheap: the service asks before decoding a request's images, and `submit` again before queueing."""
        if self._closed:
            raise ClosedError("not accepting requests")
        if len(self._heap) + count > self._max_queue:
            raise QueueFullError(retry_after_s=1)
        if self._max_wait is not None:
            wait = self.estimated_wait(tier)
            if wait > self._max_wait:
                raise OverloadedError(wait, self._max_wait)

    @property
    def running(self) -> bool:
        """Whether every runner task is alive; /healthz fails when one has died."""
        return bool(self._runners) and not any(task.done() for task in self._runners)

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self._instances, thread_name_prefix="inference")
        self._runners = [
            asyncio.create_task(self._runner(), name=f"batcher-{i}") for i in range(self._instances)
        ]

    def close(self) -> None:
        """Refuse new work; what is queued still runs."""
        self._closed = True

    async def stop(self) -> None:
        """Stop the runners; anything still queued is answered with ClosedError."""
        self._closed = True
        for task in self._runners:
            task.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        for item in self._heap:
            if not item.future.done():
                item.future.set_exception(ClosedError("service stopped"))
        self._heap.clear()
        self._set_depth()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, tensors: np.ndarray, tier: str = DEFAULT_TIER) -> np.ndarray:
        """Queue every image of one request (all or none) and wait for their rows, in order."""
        count = len(tensors)
        self.admit(count, tier)
        loop = asyncio.get_running_loop()
        now = self._clock()
        rank = _RANK[tier]
        futures: list[asyncio.Future[np.ndarray]] = []
        for tensor in tensors:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._seq += 1
            heapq.heappush(self._heap, _Item(rank, self._seq, now, tensor, future))
            futures.append(future)
        self._set_depth()
        self._wake.set()
        try:
            rows = await asyncio.gather(*futures)
        except BaseException:
            # Cancelled (client gone) or one image failed: the others need not run any more.
            for future in futures:
                future.cancel()
            raise
        return np.stack(rows)

    async def _runner(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            inputs = np.stack([item.tensor for item in batch])
            started = self._clock()
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, inputs)
            except Exception as e:
                log.exception("batch failed", extra={"batch_size": len(batch)})
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(InferenceError(f"{type(e).__name__}: {e}"))
                continue
            self.batches_run += 1
            self._measure(len(batch), self._clock() - started)
            if self._metrics is not None:
                self._metrics.inference_seconds.observe(self._clock() - started)
                self._metrics.batch_size.observe(len(batch))
            for item, row in zip(batch, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(row)

    async def _next_batch(self) -> list[_Item]:
        """Wait for a batch: full, or its oldest image queued ``max_queue_delay`` ago."""
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._heap) >= self._max_batch:
                return self._take()
            oldest = min(item.enqueued for item in self._heap)
            remaining = oldest + self._max_delay - self._clock()
            if remaining <= 0:
                return self._take()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    def _take(self) -> list[_Item]:
        now = self._clock()
        self._expire(now)
        batch: list[_Item] = []
        while self._heap and len(batch) < self._max_batch:
            item = heapq.heappop(self._heap)
            if not item.future.done():  # done: cancelled by a client that went away
                batch.append(item)
        self._set_depth()
        return batch

    def _expire(self, now: float) -> None:
        limit = now - self._queue_timeout
        if not any(item.enqueued < limit for item in self._heap):
            return
        kept = []
        for item in self._heap:
            if item.enqueued < limit:
                if not item.future.done():
                    item.future.set_exception(
                        QueueTimeoutError(f"not scheduled within {self._queue_timeout:g} s")
                    )
            else:
                kept.append(item)
        heapq.heapify(kept)
        self._heap = kept

    def _measure(self, images: int, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = images / seconds
        self._rate = rate if self._rate is None else self._rate + _RATE_WEIGHT * (rate - self._rate)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(len(self._heap))
