"""Forecasting pieces on cases whose answer is known."""

from __future__ import annotations

import random

import pytest

from controller.core import forecast


def test_trend_recovers_a_noisy_line() -> None:
    rng = random.Random(1)
    samples = [(t * 15.0, 100 + 0.5 * t * 15 + rng.gauss(0, 5)) for t in range(40)]
    fit = forecast.trend(samples)
    assert fit is not None
    assert fit.slope == pytest.approx(0.5, abs=0.02)
    assert fit.level == pytest.approx(100 + 0.5 * 39 * 15, abs=5)
    assert fit.sigma == pytest.approx(5, rel=0.4)
    assert 0 < fit.slope_sigma < 0.02


def test_trend_needs_three_samples_and_time() -> None:
    assert forecast.trend([(0, 1), (15, 2)]) is None
    assert forecast.trend([(5, 1), (5, 2), (5, 3)]) is None


def test_a_seasonal_profile_forecasts_only_after_a_whole_period() -> None:
    period, bin_s = 3600.0, 600.0
    s = forecast.Seasonal.empty(period, bin_s)

    def shape(t: float) -> float:
        return 100.0 if (t % period) < 1800 else 300.0

    t = 0.0
    while t < period:
        s = forecast.observe(s, t, shape(t))
        t += 15
    assert not s.complete(t - 15)
    while t < 2 * period + 600:
        s = forecast.observe(s, t, shape(t))
        t += 15
    assert s.complete(t)
    assert s.values[s.index(0)] == pytest.approx(100) and s.values[s.index(2000)] == pytest.approx(300)
    assert s.error < 0.05, "a profile that repeats exactly predicts itself"
    assert forecast.profile_peak(s, 1500, 1900) == pytest.approx(300)


def test_a_profile_that_does_not_repeat_scores_badly() -> None:
    s = forecast.Seasonal.empty(3600.0, 600.0)
    rng = random.Random(2)
    level = 100.0
    for i in range(int(4 * 3600 / 15)):
        if i % 40 == 0:  # a new level every 10 minutes, unrelated to the time of the period
            level = rng.uniform(50, 500)
        s = forecast.observe(s, i * 15.0, level)
    assert s.complete(4 * 3600.0) and s.error > 0.15


def test_error_quantile_follows_the_recorded_errors_and_forgets() -> None:
    h = forecast.ErrorHistogram.empty()
    for e in [0.01] * 90 + [0.30] * 10:
        h = forecast.record_error(h, e, decay=1.0)
    # Interpolated within the bin, not its upper edge: 80 of the 90 errors in (0, 2 %] ...
    assert forecast.error_quantile(h, 0.8) == pytest.approx(0.02 * 80 / 90)
    # ... and the 95th percentile halfway into the (30 %, 32 %] bin that holds the last 10.
    assert forecast.error_quantile(h, 0.95) == pytest.approx(0.31)
    for _ in range(200):  # a calm spell: old surprises fade
        h = forecast.record_error(h, -0.01, decay=0.97)
    assert forecast.error_quantile(h, 0.95) == 0.0
