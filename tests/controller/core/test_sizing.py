"""Sizing's reading of a queue: what arrives beyond the windowed rate."""

from __future__ import annotations

import math

import pytest

from controller.core import forecast, sizing


def test_a_growing_queue_past_the_slo_adds_its_growth_to_what_is_served() -> None:
    mem = forecast.Model(queue=(100.0, 200.0))
    # 1,000 req/s served, the queue grew by 3,000 in 15 s: 1,200 req/s arrived.
    assert sizing.queue_arrivals(mem, 115.0, 3200.0, capacity_rps=1000.0, slo_s=0.5) == pytest.approx(1200.0)


@pytest.mark.parametrize(
    ("before", "now", "why"),
    [
        (0.0, 400.0, "within the SLO's worth of work (500): nothing misses yet"),
        (3000.0, 2000.0, "draining: capacity exceeds what arrives"),
    ],
)
def test_a_queue_within_the_slo_or_draining_says_nothing_beyond_the_rate(
    before: float, now: float, why: str
) -> None:
    mem = forecast.Model(queue=(100.0, before))
    assert sizing.queue_arrivals(mem, 115.0, now, capacity_rps=1000.0, slo_s=0.5) == 0.0, why


def test_what_a_flooded_queue_says_arrives_is_held_under_a_growth_bet() -> None:
    """A cold start carrying a growth: 2,000 req/s expected, 1,280 held (the level with its margin), the
    rest bought ahead of the growth. The queue says 1,500 arrive now: that much, with the margin, is
    held even though the growth already expects more."""
    fc = forecast.Forecast(1000.0, 2000.0, 2560.0, None, 0.25, held_rps=1280.0)
    lifted = sizing.held_flood(fc, 1500.0)
    assert lifted.held == pytest.approx(1500.0 * math.exp(0.25))
    assert (lifted.expected_rps, lifted.bound_rps) == (2000.0, 2560.0)
    assert sizing.held_flood(fc, 2500.0).bound_rps == pytest.approx(2500.0 * math.exp(0.25))
