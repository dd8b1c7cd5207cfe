"""Lines through recent demand: the one-pass fits against plain least squares, and the growth carried
to the horizon on shapes whose answer is known (an exponential ramp, a step, per-minute noise)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from controller.core import trends


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    n = len(points)
    if n < 3:
        return None
    t_last = points[-1][0]
    sx = sy = sxx = sxy = 0.0
    for t, y in points:
        x = t - t_last
        sx += x
        sy += y
        sxx += x * x
        sxy += x * y
    cxx = sxx - sx * sx / n
    if cxx <= 0:
        return None
    slope = (sxy - sx * sy / n) / cxx
    return (sy - slope * sx) / n, slope


def test_one_pass_equals_a_fit_of_the_values_and_one_of_their_logs() -> None:
    rng = random.Random(13)
    for _ in range(500):
        n = rng.randint(0, 25)
        start = rng.uniform(0, 1e6)
        points = [(start + 15.0 * i, rng.choice((0.0, rng.uniform(0, 5e4)))) for i in range(n)]
        eps = rng.uniform(0.5, 20.0)
        lines = trends.lines(points, eps)
        plain = _fit(points)
        logs = _fit([(t, math.log(v + eps)) for t, v in points])
        if plain is None:
            assert lines is None and logs is None
        else:
            assert lines == (plain, logs)


def test_samples_at_one_time_have_no_line() -> None:
    assert trends.lines([(5.0, 1.0)] * 4, 1.0) is None


def _windowed(arrivals: Callable[[float], float], t: float, window_s: float = 60.0) -> float:
    """The rate a window of `window_s` shows at t (arrivals integrated per second)."""
    return sum(arrivals(t - window_s + s + 0.5) for s in range(int(window_s))) / window_s


def _samples(
    arrivals: Callable[[float], float], until: float, window_s: float = 60.0
) -> list[tuple[float, float]]:
    return [(t, _windowed(arrivals, t, window_s)) for t in range(0, int(until) + 1, 15)]


def _sure(samples: list[tuple[float, float]], horizon_s: float = 245.0, window_s: float = 60.0) -> float:
    at = samples[-1][0]
    return trends.sure_growth(samples, at, horizon_s, window_s=window_s, trend_window_s=300.0, eps=25.0)


def test_an_exponential_ramp_is_carried_to_the_horizon_by_its_growth() -> None:
    doubling = lambda t: 40.0 * 2 ** (t / 200)  # noqa: E731 - a flash crowd: doubling every 200 s
    samples = _samples(doubling, 600)
    latest = samples[-1][1]
    # Carried by the growth the earliest window showed (eps weighs most there): a little under
    # the 2^(245/200) = 2.34x the ramp reaches, far above what a line would carry it to.
    assert 2.0 * latest < _sure(samples) <= latest * 2 ** (245 / 200)


def test_a_fast_ramp_is_carried_three_windows_after_it_starts() -> None:
    """40 req/s, then from t = 600 doubling every 100 s: every sample climbs, so the ramp is carried once
    three rate windows have seen it, before the five-minute trend window is full of it."""
    ramp = lambda t: 40.0 if t < 600 else 40.0 * 2 ** ((t - 600) / 100)  # noqa: E731
    first = next(u for u in range(600, 1200, 15) if _sure(_samples(ramp, u)) > _samples(ramp, u)[-1][1])
    assert first <= 600 + 3 * 60 + 15


def test_bursts_that_climb_in_every_window_and_fall_back_are_not_carried() -> None:
    """100 req/s, then from t = 600 a burst in every minute that climbs through it and falls back:
    each rate window grows, but a sample falls, and the trend window's oldest window is flat."""
    bursts = lambda t: 100.0 if t < 600 else 100.0 + 4.0 * ((t - 600) % 60)  # noqa: E731
    for until in range(600, 600 + 4 * 60, 15):
        samples = _samples(bursts, until, window_s=20.0)
        assert _sure(samples, window_s=60.0) == samples[-1][1], until


@pytest.mark.parametrize("window_s", [60.0, 120.0])
def test_a_step_through_a_rate_window_is_never_carried(window_s: float) -> None:
    # A 120 s window fits twice in the five-minute trend window: a climb straddling both is still a step.
    step = lambda t: 100.0 if t < 600 else 500.0  # noqa: E731
    for until in range(600, 1200, 15):
        samples = _samples(step, until, window_s)
        assert _sure(samples, window_s=window_s) == samples[-1][1], until


def test_per_minute_noise_is_rarely_carried_and_never_far() -> None:
    rng = random.Random(7)
    minutes = [200.0 * math.exp(rng.gauss(0.0, 0.22)) for _ in range(24 * 60)]
    samples = _samples(lambda t: minutes[int(t // 60) % len(minutes)], 6 * 3600)
    carried = [
        _sure(samples[: i + 1]) / samples[i][1]
        for i in range(20, len(samples))
        if _sure(samples[: i + 1]) > samples[i][1]
    ]
    assert len(carried) < 0.05 * len(samples)
    assert max(carried, default=1.0) < 2.0


def _falls(samples: list[tuple[float, float]], margin: float, horizon_s: float = 245.0) -> bool:
    at = samples[-1][0]
    return trends.sure_decline(
        samples, at, window_s=60.0, trend_window_s=300.0, eps=25.0, horizon_s=horizon_s, margin=margin
    )


def _decay(t: float) -> float:
    """800 req/s, then from t = 600 an exponential fall towards 90 (a 15-minute time constant)."""
    return 800.0 if t < 600 else 90.0 + 710.0 * math.exp(-(t - 600) / 900)


def test_a_steady_decline_is_sure_once_every_window_shows_it() -> None:
    sure = [u for u in range(600, 1500, 15) if _falls(_samples(_decay, u), margin=0.05)]
    # From when the fall reaches into the oldest of the trend window's five rate windows, at every tick.
    assert sure == list(range(sure[0], 1500, 15))
    assert 600 + 4 * 60 <= sure[0] <= 600 + 5 * 60


def test_a_decline_within_the_forecasts_margin_is_not_sure() -> None:
    # Over a 245 s horizon the fall is about 25 % (log 0.25): a forecast whose surprises reach 50 %
    # cannot tell it from them.
    assert not any(_falls(_samples(_decay, u), margin=0.5) for u in range(600, 1500, 15))


def test_a_step_down_is_never_a_sure_decline() -> None:
    step = lambda t: 500.0 if t < 600 else 100.0  # noqa: E731 - falls through one rate window, then flat
    assert not any(_falls(_samples(step, u), margin=0.0) for u in range(300, 1500, 15))


def test_per_minute_noise_is_rarely_a_sure_decline() -> None:
    rng = random.Random(7)
    minutes = [200.0 * math.exp(rng.gauss(0.0, 0.22)) for _ in range(24 * 60)]
    samples = _samples(lambda t: minutes[int(t // 60) % len(minutes)], 6 * 3600)
    sure = sum(_falls(samples[: i + 1], margin=0.1) for i in range(20, len(samples)))
    assert sure < 0.01 * len(samples)
