"""The error budget: which misses it counts, how a surplus is spent first, how far it widens a bound."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from controller.core import budget, forecast, policy
from controller.runtime import codec
from tests.controller.core import helpers

SLO = 0.995
WINDOW_S = 28 * 86400.0
TICK_S = 15.0


def _run(
    b: budget.Budget,
    seconds: float,
    *,
    demand: float,
    bound: float,
    flooded: bool,
    start: float = 0.0,
    arrived: float = 0.0,
) -> budget.Budget:
    """Ticks where the forecast planned `bound` for every time, demand stood at `demand`."""
    t = start
    while t < start + seconds:
        b = budget.spend(
            b, t, demand=demand, arrived=arrived, flooded=flooded, slo_target=SLO, window_s=WINDOW_S,
            half_life_s=6 * 3600.0, reach=0.25, eps=1.0,
        )  # fmt: skip
        b = budget.plan(b, t + 300.0, bound=bound)
        t += TICK_S
    return b


def test_misses_a_wider_bound_would_have_served_overspend_the_budget() -> None:
    # Six hours within the bound, then an hour at 10 % above it with a flooded queue: one in 42 of
    # the requests missed against the 0.5 % the SLO allows.
    b = _run(budget.Budget(), 6 * 3600.0, demand=100.0, bound=120.0, flooded=False)
    assert budget.shrink(b, slo_target=SLO) == 0.0
    b = _run(b, 3600.0, demand=132.0, bound=120.0, flooded=True, start=6 * 3600.0)
    assert b.overspent > 0
    # Overspent, in days' worth of the budget at the recent demand.
    usual = b.requests / b.seconds
    assert budget.shrink(b, slo_target=SLO) == pytest.approx(b.overspent / (0.005 * usual * 86400.0))
    assert budget.shrink(b, slo_target=SLO) > 1.0


@pytest.mark.parametrize(
    ("demand", "bound", "why"),
    [
        (500.0, 100.0, "demand five times the bound: a step no margin covers"),
        (90.0, 100.0, "demand within the bound: the capacity was not there (a boot, a cap, a burst)"),
    ],
)
def test_misses_a_wider_bound_would_not_have_served_do_not_count(
    demand: float, bound: float, why: str
) -> None:
    b = _run(budget.Budget(), 3600.0, demand=demand, bound=bound, flooded=True)
    assert b.overspent < 0, why
    assert budget.shrink(b, slo_target=SLO) == 0.0, why


def test_what_a_growing_queue_says_arrived_is_what_is_judged_against_the_bound() -> None:
    # The windowed rate (100) is within the bound; the queue's growth says 130 arrived: above it.
    b = _run(budget.Budget(), 3600.0, demand=100.0, arrived=130.0, bound=120.0, flooded=True)
    assert budget.shrink(b, slo_target=SLO) > 0


def test_a_surplus_banked_earlier_is_spent_before_the_bound_widens() -> None:
    calm = _run(budget.Budget(), 2 * 86400.0, demand=100.0, bound=120.0, flooded=False)
    assert calm.overspent < 0
    # 10 minutes of misses against a bound planned below them (66,000 requests): fewer than two
    # days' 0.5 % (86,400). Plans come due a horizon (300 s) after they are made.
    b = _run(calm, 900.0, demand=110.0, bound=100.0, flooded=True, start=2 * 86400.0)
    assert budget.shrink(b, slo_target=SLO) == 0.0
    # The same misses without the surplus widen it.
    fresh = _run(budget.Budget(), 900.0, demand=110.0, bound=100.0, flooded=True)
    assert budget.shrink(fresh, slo_target=SLO) > 0


def test_misses_fade_over_the_slo_window() -> None:
    b = _run(budget.Budget(), 3600.0, demand=110.0, bound=100.0, flooded=True)
    later = budget.spend(
        b, (b.at or 0.0) + WINDOW_S, demand=0.0, arrived=0.0, flooded=False, slo_target=SLO,
        window_s=WINDOW_S, half_life_s=6 * 3600.0, reach=0.25, eps=1.0,
    )  # fmt: skip
    assert later.overspent == pytest.approx(b.overspent / math.e)
    assert later.planned == (), "the plans for times passed are dropped"


SETTINGS = dataclasses.replace(helpers.SETTINGS, peak_margin=3.0)  # no ceiling within this test


def test_an_overspent_budget_carries_the_bound_past_its_coverage_quantile_at_the_tails_slope() -> None:
    # Every forecaster's errors: 100 blocks spread evenly over 0 .. 0.99 (log). The 96 % quantile is
    # about 0.96, the 92 % one about 0.92 (within the 0.05-wide bins): about 0.04 per halving of the tail.
    def judged() -> forecast.Errors:
        e = forecast.Errors()
        for i in range(100):
            e = forecast.record(e, 0.0, i / 100, block=i / 100, half_life_s=SETTINGS.half_life_s)
        return e

    m = forecast.Model()
    for i in range(40):
        m = forecast.remember(m, i * 15.0, 100.0, block_s=285.0, settings=SETTINGS, seasonal=False)
    errors = tuple(judged() for _ in range(forecast.REGIMES) for _ in forecast.SOURCES)
    m = dataclasses.replace(m, errors=errors, tails=(), pending=())
    at = 39 * 15.0
    plain, _ = forecast.forecast(m, at, horizon_s=285.0, settings=SETTINGS)
    wide, _ = forecast.forecast(m, at, horizon_s=285.0, settings=SETTINGS, shrink=2.0)
    assert wide.source is plain.source
    slope = (forecast.quantile(errors[0], 0.96) - forecast.quantile(errors[0], 0.92)) / math.log(2)
    assert 0.03 / math.log(2) < slope < 0.06 / math.log(2)
    assert wide.margin == pytest.approx(plain.margin + 2.0 * slope)
    assert (wide.bound_rps + 25) / (plain.bound_rps + 25) == pytest.approx(math.exp(2.0 * slope))


def test_the_budget_each_workload_spent_survives_the_store() -> None:
    state = policy.PolicyState(
        budgets={
            "face": budget.Budget(
                at=90.0, seconds=90.0, requests=9e3, overspent=-45.0, planned=((375.0, 120.0),)
            )
        }
    )
    text = json.dumps(codec.encode(state), allow_nan=False)
    assert codec.decode(policy.PolicyState, json.loads(text)) == state
    # A state stored before budgets were kept loads with none spent.
    assert codec.decode(policy.PolicyState, {"recommendations": [[1.0, 2]]}).budgets == {}
