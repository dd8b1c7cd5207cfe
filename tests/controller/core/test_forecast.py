"""Forecasting pieces on cases whose answer is known."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from controller.core import forecast
from tests.controller.core.helpers import SETTINGS


def test_errors_record_quantile_and_count() -> None:
    e = forecast.Errors()
    assert forecast.count(e, 0.0, half_life_s=3600) == 0.0
    assert forecast.quantile(e, 0.9) == 0.0
    for _i in range(90):
        e = forecast.record(e, 0.0, 0.01, block=0.01, half_life_s=3600)
    for _i in range(10):
        e = forecast.record(e, 0.0, 0.62, block=0.62, half_life_s=3600)
    assert forecast.count(e, 0.0, half_life_s=3600) == pytest.approx(100)
    # Interpolated within its bin: 45 of the 90 errors in [0, 0.05) ...
    assert forecast.quantile(e, 0.45) == pytest.approx(0.025)
    # ... and the 95th percentile halfway into the [0.6, 0.65) bin that holds the last 10.
    assert forecast.quantile(e, 0.95) == pytest.approx(0.625)
    assert forecast.bias(e) == pytest.approx((90 * 0.01 + 10 * 0.62) / 100)
    # A tick error without a closed block counts in the bias only.
    e = forecast.record(e, 0.0, -1.0, block=None, half_life_s=3600)
    assert forecast.count(e, 0.0, half_life_s=3600) == pytest.approx(100)
    assert forecast.bias(e) == pytest.approx((90 * 0.01 + 10 * 0.62 - 1.0) / 101)


def test_errors_clip_to_the_edge_bins() -> None:
    e = forecast.record(forecast.Errors(), 0.0, 99.0, block=99.0, half_life_s=3600)
    assert forecast.quantile(e, 1.0) == pytest.approx(
        forecast.ERROR_LOW + forecast.ERROR_BINS * forecast.ERROR_BIN
    )
    e = forecast.record(forecast.Errors(), 0.0, -99.0, block=-99.0, half_life_s=3600)
    assert forecast.quantile(e, 0.0 + 1e-9) == pytest.approx(forecast.ERROR_LOW, abs=1e-6)


def test_errors_forget_with_the_half_life() -> None:
    hl = 3600.0
    e = forecast.Errors()
    for _ in range(10):
        e = forecast.record(e, 0.0, 0.5, block=0.5, half_life_s=hl)
    assert forecast.count(e, hl, half_life_s=hl) == pytest.approx(5)
    assert forecast.count(e, 3 * hl, half_life_s=hl) == pytest.approx(1.25)
    # Ten calm errors three half-lives later outweigh the old surprises eight to one.
    for _ in range(10):
        e = forecast.record(e, 3 * hl, 0.0, block=0.0, half_life_s=hl)
    assert forecast.quantile(e, 0.85) < 0.05
    assert forecast.quantile(e, 0.99) > 0.45
    # Weights are rebased long after the origin instead of overflowing; the count still decays right.
    late = 100 * hl
    e = forecast.record(e, late, 0.0, block=0.0, half_life_s=hl)
    assert e.origin == late and all(math.isfinite(w) for w in e.weights)
    assert forecast.count(e, late, half_life_s=hl) == pytest.approx(1.0, abs=1e-6)


def _feed(
    demand: list[float],
    *,
    step_s: float = 15.0,
    horizon_s: float = 60.0,
    settings: forecast.Settings = SETTINGS,
) -> tuple[forecast.Model, forecast.Forecast]:
    m = forecast.Model()
    fc = None
    for i, v in enumerate(demand):
        t = i * step_s
        m = forecast.remember(m, t, v, block_s=horizon_s, settings=settings, seasonal=False)
        fc, m = forecast.forecast(m, t, horizon_s=horizon_s, settings=settings)
    assert fc is not None
    return m, fc


def test_a_single_step_counts_once_in_the_errors() -> None:
    # 100 req/s, then 200 from t = 600 on: four forecasts (made 60 s ahead, a tick apart) miss it, all due
    # within one horizon-long block. Judged per block, the step is one surprise, not four.
    demand = [100.0] * 40 + [200.0] * 40
    m, _ = _feed(demand)
    last = m.errors[forecast.SOURCES.index(forecast.Source.LAST)]
    step = math.log(225 / 125)
    high = int((step - forecast.ERROR_LOW) / forecast.ERROR_BIN)
    assert last.weights[high] == pytest.approx(1.0)
    assert sum(last.weights[high - 1 :]) == pytest.approx(1.0)
    assert last.total == pytest.approx(sum(last.weights))


def test_the_bound_stays_near_the_recent_peak_once_the_spikes_have_stopped() -> None:
    # Two hours of 100 req/s with 2-minute spikes to 600 every 10 minutes teach the latest-level
    # forecaster a 4x tail; then an hour and a half without one.
    spiky = [600.0 if i % 40 < 8 else 100.0 for i in range(480)]
    calm = [100.0] * 360
    _, during = _feed(spiky[:-4])
    assert during.bound_rps > 3 * 100, "while spikes come, the bound keeps room for one"
    _, after = _feed(spiky + calm)
    assert after.bound_rps <= (100 + 25) * math.exp(SETTINGS.peak_margin) - 25 + 1e-9
    # With the peak window longer than the calm, the bound still covers the last spike's height.
    long_memory = dataclasses.replace(SETTINGS, peak_window_s=3 * 3600.0)
    _, remembered = _feed(spiky + calm, settings=long_memory)
    assert remembered.bound_rps > 3 * 100


def test_cold_start_plans_the_higher_of_last_and_level_with_the_cold_margin() -> None:
    _, fc = _feed([300.0, 300.0, 300.0, 200.0])
    assert fc.source is None
    assert fc.expected_rps == pytest.approx(300.0)  # the level (median) beats the latest sample
    assert fc.margin == SETTINGS.cold_margin
    assert fc.bound_rps == pytest.approx(325 * math.exp(0.25) - 25)


def test_growth_extrapolates_an_exponential_that_a_line_undershoots() -> None:
    # 50 e^(t/600): over 5 minutes a line lags the curve; the log-line follows it.
    samples = tuple((t, 50 * math.exp(t / 600)) for t in range(0, 1200, 15))
    m = forecast.Model(samples=samples)
    at, horizon = samples[-1][0], 285.0
    p = dict(
        zip(forecast.SOURCES, forecast.predictions(m, at, horizon_s=horizon, settings=SETTINGS), strict=True)
    )
    truth = 50 * math.exp((at + horizon) / 600)
    assert p[forecast.Source.GROWTH] == pytest.approx(truth, rel=0.05)
    assert p[forecast.Source.TREND] < 0.9 * truth
    assert p[forecast.Source.LAST] < 0.7 * truth


COLD = dataclasses.replace(SETTINGS, min_errors=1e9, rate_window_s=60.0)
"""No forecaster is ever judged: every forecast is a cold start."""


def test_a_cold_start_carries_a_ramp_but_not_the_climb_a_step_leaves_in_a_windowed_rate() -> None:
    # A step from 100 to 500 req/s reaches a 60 s rate as a one-window climb. Half a window after it
    # stopped, the lines through the last window and the last five minutes still climb (to ~1,500 and
    # ~740 req/s by +285 s); the cold start plans for what is there.
    step = [100.0] * 20 + [200.0, 300.0, 400.0, 500.0]
    for flat in (2, 8):
        m, fc = _feed(step + [500.0] * flat, horizon_s=285.0, settings=COLD)
        at = (len(step) + flat - 1) * 15.0
        trend = forecast.predictions(m, at, horizon_s=285.0, settings=COLD)[
            forecast.SOURCES.index(forecast.Source.TREND)
        ]
        assert fc.source is None and trend > 700
        assert fc.expected_rps == pytest.approx(500.0)
    # A ramp of 1 req/s per second that goes on climbing grows in every recent window: its latest growth,
    # carried as an exponential, reaches the line at the horizon and goes a little past it.
    ramp = [100.0 + 15.0 * i for i in range(40)]
    _, fc = _feed(ramp, horizon_s=285.0, settings=COLD)
    assert ramp[-1] + 285.0 <= fc.expected_rps <= 1.1 * (ramp[-1] + 285.0)


def test_a_cold_start_carries_a_flash_crowd_but_holds_nothing_bought_ahead_of_it() -> None:
    doubling = [40.0 * 2 ** (15.0 * i / 200) for i in range(41)]  # ten minutes, doubling every 200 s
    _, fc = _feed(doubling, horizon_s=245.0, settings=COLD)
    assert fc.source is None
    assert fc.bound_rps >= 40.0 * 2 ** ((600 + 245) / 200)
    # Held against release: the latest level with the cold margin, none of the growth.
    lift = math.exp(COLD.cold_margin)
    assert fc.held_rps == pytest.approx((doubling[-1] + COLD.floor_rps) * lift - COLD.floor_rps)
    # After a step nothing is bought ahead: all the bound is held.
    _, fc = _feed([100.0] * 20 + [200.0, 300.0, 400.0, 500.0] + [500.0] * 8, horizon_s=285.0, settings=COLD)
    assert fc.held == fc.bound_rps


def test_the_ceiling_opens_to_a_growth_every_recent_window_showed_not_to_a_line() -> None:
    # The same step: the line through the last five minutes still climbs past 700 req/s, demand does
    # not; the ceiling a judged margin is held under stays at the plateau (x e^peak_margin).
    step = [100.0] * 20 + [200.0, 300.0, 400.0, 500.0] + [500.0] * 8
    m, _ = _feed(step, horizon_s=285.0, settings=COLD)
    at = (len(step) - 1) * 15.0
    predicted = forecast.predictions(m, at, horizon_s=285.0, settings=COLD)
    assert predicted[forecast.SOURCES.index(forecast.Source.TREND)] > 700
    assert forecast._highest(m, predicted, at, 285.0, COLD) == pytest.approx(500.0)
    # Per-minute noise (+-22 %): a line through the last five minutes climbs past the highest level on
    # a third of the ticks; the ceiling does not follow it there. Three minutes that happen to climb in
    # a row read as a steady climb and open it on a few ticks (4 of these 130, by up to 33 %; a line
    # carried as far as the last window climbed opened it on 14, by up to 31 %).
    rng = random.Random(11)
    noisy = [v for _ in range(40) for v in [400.0 * rng.uniform(0.78, 1.22)] * 4]
    lifted = 0
    opened: list[float] = []
    for end in range(30, len(noisy)):
        m, _ = _feed(noisy[:end], horizon_s=285.0, settings=COLD)
        at = (end - 1) * 15.0
        predicted = forecast.predictions(m, at, horizon_s=285.0, settings=COLD)
        rest = max(predicted[: forecast.SOURCES.index(forecast.Source.TREND)])
        lifted += predicted[forecast.SOURCES.index(forecast.Source.TREND)] > rest
        high = forecast._highest(m, predicted, at, 285.0, COLD)
        assert high >= rest
        if high > rest * (1 + 1e-9):
            opened.append(high / rest)
    assert lifted > 30
    assert len(opened) <= 5
    assert max(opened, default=1.0) < 1.4
    # On a ramp that goes on climbing, its growth is what the ceiling opens to.
    ramp = [100.0 + 15.0 * i for i in range(40)]
    m, _ = _feed(ramp, horizon_s=285.0, settings=COLD)
    at = (len(ramp) - 1) * 15.0
    predicted = forecast.predictions(m, at, horizon_s=285.0, settings=COLD)
    assert forecast._highest(m, predicted, at, 285.0, COLD) >= ramp[-1] + 285.0


def test_a_judged_line_is_held_under_the_ceiling_too() -> None:
    # A trend whose errors have been the smallest is chosen on the plateau after a step, where its line
    # through the step still climbs to twice the plateau: its own prediction does not open the ceiling,
    # which stays at the plateau (x e^peak_margin), as it does for another forecaster's line.
    step = [100.0] * 20 + [200.0, 300.0, 400.0, 500.0] + [500.0] * 8
    m, _ = _feed(step, horizon_s=285.0, settings=COLD)

    def judged(error: float) -> forecast.Errors:
        e = forecast.Errors()
        for _ in range(60):
            e = forecast.record(e, 0.0, error, block=error, half_life_s=SETTINGS.half_life_s)
        return e

    errors = tuple(
        judged(0.0 if s is forecast.Source.TREND else 0.6)
        for _ in range(forecast.REGIMES)
        for s in forecast.SOURCES
    )
    m = dataclasses.replace(m, errors=errors, tails=())
    fc, _ = forecast.forecast(m, (len(step) - 1) * 15.0, horizon_s=285.0, settings=SETTINGS)
    assert fc.source is forecast.Source.TREND and fc.expected_rps > 1000
    assert fc.bound_rps == pytest.approx((500 + 25) * math.exp(SETTINGS.peak_margin) - 25)


def test_the_recent_forecaster_predicts_the_highest_sample_of_the_last_horizon() -> None:
    # On/off bursts: the burst 4 minutes ago is within a 285 s horizon, the one 6 minutes ago is not.
    samples = ((0.0, 900.0), (60.0, 50.0), (120.0, 700.0), (180.0, 50.0), (240.0, 50.0), (360.0, 50.0))
    m = forecast.Model(samples=samples)
    p = forecast.predictions(m, 360.0, horizon_s=285.0, settings=SETTINGS)
    assert p[forecast.SOURCES.index(forecast.Source.RECENT)] == 700.0


def test_errors_stored_for_other_forecasters_start_them_cold_instead_of_misplacing_them() -> None:
    m, _ = _feed([100.0] * 40)
    short = len(forecast.SOURCES) - 1
    stored = dataclasses.replace(
        m,
        errors=m.errors[: forecast.REGIMES * short],
        pending=tuple((due, p[:short], r) for due, p, r in m.pending),
    )
    again = forecast.remember(stored, 600.0, 100.0, block_s=60.0, settings=SETTINGS, seasonal=False)
    assert again.errors == () and again.pending == ()
    assert again.samples[-1] == (600.0, 100.0)
    fc, _ = forecast.forecast(again, 600.0, horizon_s=60.0, settings=SETTINGS)
    assert fc.source is None


def test_forecasts_are_judged_against_what_arrived_where_a_queue_showed_more_than_the_rate() -> None:
    # A steady 100 req/s rate; in every fourth horizon-long block a growing queue showed 130 arriving.
    roomy = dataclasses.replace(SETTINGS, peak_margin=0.5)  # a ceiling that does not bind here

    def learn(arrived: float, settings: forecast.Settings) -> forecast.Forecast:
        m, fc = forecast.Model(), None
        for i in range(400):
            t = i * 15.0
            extra = arrived if i % 16 == 8 else 0.0
            m = forecast.remember(m, t, 100.0, block_s=60.0, settings=settings, seasonal=False, arrived=extra)
            fc, m = forecast.forecast(m, t, horizon_s=60.0, settings=settings)
        assert fc is not None
        return fc

    calm, queued = learn(0.0, roomy), learn(130.0, roomy)
    assert calm.margin < 0.05
    assert queued.margin >= math.log((130 + 25) / (100 + 25)) - forecast.ERROR_BIN
    assert queued.bound_rps >= 130 - 2
    # The ceiling still holds: a bound goes at most x e^peak_margin above the rate's recent peak.
    assert learn(130.0, SETTINGS).bound_rps == pytest.approx((100 + 25) * math.exp(0.1) - 25)
