"""Seasonal profiles on cases whose answer is known."""

from __future__ import annotations

import pytest

from controller.core import profiles


def test_a_spike_seen_once_is_not_forecast_but_one_that_recurs_is() -> None:
    period, bin_s, reach = 3600.0, 60.0, 300.0
    p = profiles.Profile.empty(period, bin_s)

    def run(p: profiles.Profile, start: float, spike_at: float | None) -> profiles.Profile:
        for t in range(int(start), int(start + period), 15):
            spike = spike_at is not None and spike_at <= t < spike_at + 120
            p = profiles.observe(p, t, 900.0 if spike else 100.0)
        return p

    p = run(p, 0.0, None)  # first hour: calm
    p = run(p, period, period + 1800.0)  # second hour: a spike at :30
    assert p.complete(2 * period + bin_s)
    assert profiles.peak_around(p, 2 * period + 1800, reach, 100.0) == pytest.approx(100.0), "seen once"
    p = run(p, 2 * period, 2 * period + 1860.0)  # third hour: the spike again, a minute late
    # Both of the last two periods reached it within reach: forecast (from a few minutes before).
    assert profiles.peak_around(p, 3 * period + 1680, reach, 100.0) == pytest.approx(900.0)
    assert profiles.peak_around(p, 3 * period + 600, reach, 100.0) == pytest.approx(100.0)


def test_a_dip_seen_once_is_not_forecast_but_one_that_recurs_is() -> None:
    # An outage (20 minutes at 10 req/s) in one hour of 100 req/s must not forecast the next hour's
    # demand at that time to be low: capacity released for it would come back a boot late.
    period, bin_s, reach = 3600.0, 60.0, 300.0
    p = profiles.Profile.empty(period, bin_s)
    for hour, dip in enumerate((False, True, True)):
        for t in range(int(hour * period), int((hour + 1) * period), 15):
            p = profiles.observe(p, t, 10.0 if dip and 1200 <= t % period < 2400 else 100.0)
        if hour == 1:
            assert profiles.peak_around(p, 2 * period + 1800, reach, 100.0) == pytest.approx(100.0)
    assert profiles.peak_around(p, 3 * period + 1800, reach, 100.0) == pytest.approx(10.0)


def test_a_profile_forecasts_only_after_two_whole_periods() -> None:
    p = profiles.Profile.empty(3600.0, 60.0)
    assert not p.complete(0.0)
    p = profiles.observe(p, 0.0, 1.0)
    assert not p.complete(2 * 3600.0)
    assert p.complete(2 * 3600.0 + 60.0)
