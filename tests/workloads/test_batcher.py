"""The dynamic batcher: batch formation, tier priority, bounded queue, failures that do not stop it.

The model is a stand-in here (a function of its input that records each batch); the HTTP and engine
tests run the real one. Every wait is bounded by asyncio.wait_for so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest

from workloads.face_compare.batcher import (
    Batcher,
    ClosedError,
    InferenceError,
    OverloadedError,
    QueueFullError,
    QueueTimeoutError,
)
from workloads.face_compare.metrics import WorkloadMetrics

GUARD_S = 10.0


class Model:
    """Doubles its input; records batches; can be held at the gate to let a queue build up."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(GUARD_S)
        self.batches.append([float(v) for v in x[:, 0]])
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device lost")
        return x * 2


def items(*values: float) -> np.ndarray:
    return np.array([[v, v] for v in values], dtype=np.float32)


@pytest.fixture
async def held() -> AsyncIterator[tuple[Batcher, Model]]:
    """A batcher whose model is blocked inside its first batch until the test opens the gate."""
    model = Model()
    model.gate.clear()
    batcher = Batcher(
        model, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8, queue_timeout_s=GUARD_S
    )
    batcher.start()
    yield batcher, model
    model.gate.set()
    await batcher.stop()


async def occupy(batcher: Batcher, model: Model) -> asyncio.Task[np.ndarray]:
    """Submit one item and wait until the model is busy with it."""
    task = asyncio.create_task(batcher.submit(items(-1.0)))
    await asyncio.wait_for(asyncio.to_thread(model.entered.wait, GUARD_S), GUARD_S)
    return task


async def test_each_request_gets_its_own_rows_in_order() -> None:
    model = Model()
    batcher = Batcher(model, max_batch_size=8, max_queue_delay_s=0.01, max_queue_size=64)
    batcher.start()
    try:
        requests = [items(*(10 * r + i for i in range(r % 3 + 1))) for r in range(6)]
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(x) for x in requests)), GUARD_S)
        for x, out in zip(requests, results, strict=True):
            np.testing.assert_array_equal(out, x * 2)
    finally:
        await batcher.stop()


async def test_batches_never_exceed_max_batch_size_and_grow_under_load(held: tuple[Batcher, Model]) -> None:
    batcher, model = held
    first = await occupy(batcher, model)
    waiting = [asyncio.create_task(batcher.submit(items(float(i)))) for i in range(7)]
    await asyncio.sleep(0.05)
    assert batcher.depth == 7
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), GUARD_S)
    assert [len(b) for b in model.batches] == [1, 4, 3]


async def test_vip_is_served_before_normal_before_free(held: tuple[Batcher, Model]) -> None:
    batcher, model = held
    first = await occupy(batcher, model)
    order = [("free", 1.0), ("normal", 2.0), ("vip", 3.0), ("free", 4.0), ("vip", 5.0), ("normal", 6.0)]
    waiting = [asyncio.create_task(batcher.submit(items(v), tier)) for tier, v in order]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), GUARD_S)
    served = [v for batch in model.batches[1:] for v in batch]
    assert served == [3.0, 5.0, 2.0, 6.0, 1.0, 4.0]


async def test_a_full_queue_refuses_at_once_and_loses_nothing(held: tuple[Batcher, Model]) -> None:
    batcher, model = held
    first = await occupy(batcher, model)
    accepted = [asyncio.create_task(batcher.submit(items(float(i), float(i)))) for i in range(4)]
    await asyncio.sleep(0.05)
    assert batcher.depth == 8
    with pytest.raises(QueueFullError) as full:
        await asyncio.wait_for(batcher.submit(items(99.0)), GUARD_S)
    assert full.value.retry_after_s >= 1
    model.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *accepted), GUARD_S)
    assert [r[0, 0] for r in results[1:]] == [0.0, 2.0, 4.0, 6.0]
    assert 99.0 not in [v for batch in model.batches for v in batch]


async def test_a_request_whose_estimated_wait_is_over_budget_is_refused_unless_it_goes_first() -> None:
    """The wait counts only the images served before the request: a vip skips the queued free ones."""
    model = Model()

    def slow(x: np.ndarray) -> np.ndarray:  # at least 0.1 s per batch
        threading.Event().wait(0.1)
        return model(x)

    batcher = Batcher(slow, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8, max_queue_wait_s=0.1)
    batcher.start()
    try:
        assert batcher.service_rate is None and batcher.estimated_wait() == 0.0
        await asyncio.wait_for(batcher.submit(items(1.0, 2.0)), GUARD_S)
        rate = batcher.service_rate
        assert rate is not None and 0 < rate <= 20  # 2 images in >= 0.1 s
        model.gate.clear()
        first = await occupy(batcher, model)
        queued = asyncio.create_task(batcher.submit(items(3.0, 4.0, 5.0), tier="free"))
        await asyncio.sleep(0.05)
        assert batcher.estimated_wait("free") == pytest.approx(3 / rate)
        assert batcher.estimated_wait("vip") == 0.0
        with pytest.raises(OverloadedError) as over:
            await batcher.submit(items(6.0), tier="free")
        assert over.value.retry_after_s >= 1 and "over the budget of 0.1 s" in str(over.value)
        vip = asyncio.create_task(batcher.submit(items(7.0), tier="vip"))
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(first, queued, vip), GUARD_S)
        assert 6.0 not in [v for batch in model.batches for v in batch]
    finally:
        model.gate.set()
        await batcher.stop()


async def test_a_request_is_queued_whole_or_not_at_all(held: tuple[Batcher, Model]) -> None:
    batcher, model = held
    first = await occupy(batcher, model)
    small = asyncio.create_task(batcher.submit(items(1.0, 2.0, 3.0, 4.0, 5.0)))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFullError):
        await batcher.submit(items(6.0, 7.0, 8.0, 9.0))  # 5 + 4 > 8
    assert batcher.depth == 5
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(first, small), GUARD_S)


async def test_a_failed_batch_fails_its_requests_and_the_next_batch_runs() -> None:
    model = Model()
    model.fail_next = True
    batcher = Batcher(model, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
    batcher.start()
    try:
        with pytest.raises(InferenceError, match="device lost"):
            await asyncio.wait_for(batcher.submit(items(1.0)), GUARD_S)
        out = await asyncio.wait_for(batcher.submit(items(2.0)), GUARD_S)
        assert out[0, 0] == 4.0 and batcher.running
    finally:
        await batcher.stop()


async def test_a_cancelled_request_is_skipped(held: tuple[Batcher, Model]) -> None:
    batcher, model = held
    first = await occupy(batcher, model)
    gone = asyncio.create_task(batcher.submit(items(7.0)))
    kept = asyncio.create_task(batcher.submit(items(8.0)))
    await asyncio.sleep(0.05)
    gone.cancel()
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(first, kept), GUARD_S)
    assert 7.0 not in [v for batch in model.batches for v in batch]


async def test_an_image_waiting_past_the_queue_timeout_is_answered() -> None:
    model = Model()
    model.gate.clear()
    batcher = Batcher(model, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=8, queue_timeout_s=0.05)
    batcher.start()
    try:
        first = await occupy(batcher, model)
        starved = asyncio.create_task(batcher.submit(items(1.0), "free"))
        await asyncio.sleep(0.2)
        model.gate.set()
        with pytest.raises(QueueTimeoutError):
            await asyncio.wait_for(starved, GUARD_S)
        await asyncio.wait_for(first, GUARD_S)
    finally:
        await batcher.stop()


async def test_after_close_new_work_is_refused_and_queued_work_finishes(held: tuple[Batcher, Model]) -> None:
    batcher, model = held
    first = await occupy(batcher, model)
    queued = asyncio.create_task(batcher.submit(items(3.0)))
    await asyncio.sleep(0.05)
    batcher.close()
    with pytest.raises(ClosedError):
        await batcher.submit(items(4.0))
    model.gate.set()
    out = await asyncio.wait_for(queued, GUARD_S)
    assert out[0, 0] == 6.0
    await asyncio.wait_for(first, GUARD_S)


async def test_a_lone_request_does_not_wait_for_a_full_batch() -> None:
    model = Model()
    batcher = Batcher(model, max_batch_size=32, max_queue_delay_s=0.001, max_queue_size=64)
    batcher.start()
    try:
        out = await asyncio.wait_for(batcher.submit(items(5.0)), GUARD_S)
        assert out[0, 0] == 10.0 and model.batches == [[5.0]]
    finally:
        await batcher.stop()


async def test_metrics_record_batches_and_queue_depth() -> None:
    model = Model()
    model.gate.clear()
    metrics = WorkloadMetrics(placement="burst", pool="p")
    batcher = Batcher(model, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8, metrics=metrics)
    batcher.start()

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"placement": "burst", "pool": "p"})

    try:
        first = await occupy(batcher, model)
        waiting = [asyncio.create_task(batcher.submit(items(float(i)))) for i in range(3)]
        await asyncio.sleep(0.05)
        assert sample("facecompare_queue_depth") == 3
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *waiting), GUARD_S)
        assert sample("facecompare_queue_depth") == 0
        assert (sample("facecompare_batch_size_count"), sample("facecompare_batch_size_sum")) == (2, 4)
        assert sample("facecompare_inference_seconds_count") == 2
    finally:
        model.gate.set()
        await batcher.stop()
