"""The fluid queue on cases worked out by hand."""

from __future__ import annotations

import pytest

from controller.sim import queue


def _q() -> queue.FluidQueue:
    # 100 ms service, 500 ms SLO: a request may wait 0.4 s; timeout 2 s.
    return queue.FluidQueue(service_s=0.1, slo_s=0.5, timeout_s=2.0)


def test_no_wait_when_capacity_covers_arrivals() -> None:
    q = _q()
    q.step(10.0, 10.0)
    assert q.met == 10.0 and q.backlog == 0.0
    assert q.quantile(0.99) == pytest.approx(0.11)  # the 100 ms bin's upper edge


def test_overload_builds_a_backlog_and_misses_past_the_slo() -> None:
    q = _q()
    q.step(20.0, 10.0)  # work ahead grows 0 -> 10; wait = Q/10 <= 0.4 while Q <= 4: first 40 %
    assert q.backlog == pytest.approx(10.0)
    assert q.met == pytest.approx(8.0)
    q.step(0.0, 10.0)  # drains exactly
    assert q.backlog == pytest.approx(0.0)


def test_requests_that_would_wait_past_the_timeout_are_dropped() -> None:
    q = _q()
    q.step(40.0, 10.0)  # Q rises at 30/s to the 20-request cap (2 s x 10/s) at x = 2/3
    assert q.backlog == pytest.approx(20.0)
    # Admitted: 40 x 2/3 while rising + 10 x 1/3 at the cap; dropped: 30 x 1/3.
    assert q.dropped == pytest.approx(10.0)
    assert q.met == pytest.approx(40 * (4 / 30))  # only while Q <= 4: x <= 4/30


def test_lost_capacity_drops_arrivals_until_the_excess_drains() -> None:
    q = _q()
    q.step(40.0, 10.0)
    q.step(10.0, 5.0)  # cap now 10: 10 excess drain at 5/s for the whole second, all arrivals dropped
    assert q.backlog == pytest.approx(15.0)
    assert q.dropped == pytest.approx(20.0)


def test_no_capacity_drops_everything() -> None:
    q = _q()
    q.step(5.0, 0.0)
    assert q.dropped == 5.0 and q.met == 0.0


def test_step_missed_counts_the_late_and_the_dropped_of_each_second() -> None:
    q = _q()
    assert q.step_missed(10.0, 10.0) == 0.0
    assert q.step_missed(20.0, 10.0) == pytest.approx(12.0)  # 8 of 20 within the SLO, as above
    assert q.step_missed(0.0, 10.0) == 0.0  # the backlog drains; nobody arrives to miss
    assert q.step_missed(5.0, 0.0) == 5.0  # nothing serves: all dropped
    assert q.arrived - q.met == pytest.approx(17.0)
