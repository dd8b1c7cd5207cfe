"""What the shape of recent demand says about the horizon: lines through it, and whether it still grows.

A windowed rate turns a step in arrivals into a climb one rate window long, and then stops; a ramp goes
on climbing, and an exponential ramp (a flash crowd) climbs by the same factor in every window. Growth
seen in every recent window tells a ramp from a step with the samples alone, so that a cold start
carries a ramp to the horizon without buying capacity for a step that has already ended. A fall seen
in every window, and larger than the forecast's margin, tells a steady decline from a dip that may
come back, so that idle capacity need not wait a boot for a return that is not coming.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from operator import itemgetter

_time = itemgetter(0)

MAX_GROWTH = math.log(8.0)
"""An exponential fit carried to the horizon multiplies demand by at most 8."""


def lines(
    points: Sequence[tuple[float, float]], eps: float
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(value at the newest point, slope) of the least-squares lines through the points and through
    `log(value + eps)`, in one pass (the trend and growth forecasters); None below three points."""
    n = len(points)
    if n < 3:
        return None
    t_last = points[-1][0]
    log = math.log
    sx = sy = sxx = sxy = sl = sxl = 0.0
    for t, y in points:
        x = t - t_last
        v = log(y + eps)
        sx += x
        sy += y
        sxx += x * x
        sxy += x * y
        sl += v
        sxl += x * v
    cxx = sxx - sx * sx / n
    if cxx <= 0:
        return None
    slope = (sxy - sx * sy / n) / cxx
    log_slope = (sxl - sx * sl / n) / cxx
    return ((sy - slope * sx) / n, slope), ((sl - log_slope * sx) / n, log_slope)


GROWTH_WINDOWS = 3
"""Rate windows in a row that must each show growth: a step's climb spans two at most."""


def _count(window_s: float, trend_window_s: float) -> int:
    """Rate windows judged: as many as the trend window holds, three at least."""
    return max(GROWTH_WINDOWS, int(trend_window_s // window_s))


def _windows(
    samples: Sequence[tuple[float, float]], at: float, *, window_s: float, count: int
) -> Iterator[Sequence[tuple[float, float]]]:
    """The samples of each of the last `count` rate windows, newest first."""
    for k in range(count):
        start = bisect.bisect_left(samples, at - (k + 1) * window_s, key=_time)
        yield samples[start : bisect.bisect_right(samples, at - k * window_s, key=_time)]


def _slowest_growth(
    samples: Sequence[tuple[float, float]],
    at: float,
    *,
    window_s: float,
    count: int,
    eps: float,
    steady: bool,
) -> float:
    """The slowest growth (log per second) each of the last `count` rate windows showed; 0 where one did
    not grow or, `steady`, where any sample fell below the one before it."""
    slowest = later = math.inf
    for window in _windows(samples, at, window_s=window_s, count=count):
        fit = lines(window, eps)
        if fit is None or fit[1][1] <= 0:
            return 0.0
        if steady:
            values = [v for _, v in window]
            if any(b < a for a, b in zip(values, [*values[1:], later], strict=True)):
                return 0.0
            later = values[0]
        slowest = min(slowest, fit[1][1])
    return slowest


def sure_growth(
    samples: Sequence[tuple[float, float]],
    at: float,
    horizon_s: float,
    *,
    window_s: float,
    trend_window_s: float,
    eps: float,
) -> float:
    """The latest demand carried to the horizon by the slowest growth (in log terms) that each of the
    last rate windows showed: every window the trend window holds (three at least), or three in which
    no sample fell. An exponential ramp grows alike in every one; a step climbs through one window (two
    where it straddles them) and noise rarely climbs in all of them, so neither is carried. A fast ramp
    climbs steadily, and is carried three windows after it starts rather than once it fills the trend
    window (a doubling or two later); bursts climb in a window and fall back, and are not."""
    latest = samples[-1][1]
    slowest = max(
        _slowest_growth(
            samples, at, window_s=window_s, count=_count(window_s, trend_window_s), eps=eps, steady=False
        ),
        _slowest_growth(samples, at, window_s=window_s, count=GROWTH_WINDOWS, eps=eps, steady=True),
    )
    if slowest <= 0 or horizon_s <= 0:
        return latest
    return (latest + eps) * math.exp(min(MAX_GROWTH, slowest * horizon_s)) - eps


def sure_decline(
    samples: Sequence[tuple[float, float]],
    at: float,
    *,
    window_s: float,
    trend_window_s: float,
    eps: float,
    horizon_s: float,
    margin: float,
) -> bool:
    """Demand fell in each of the last rate windows (three at least, or as many as the trend window
    holds), and the fall through the trend window, carried over the horizon, is larger than the
    forecast's margin (log): a steady decline, not a dip that may come back within a boot (a step down
    falls through one window), nor noise (it does not fall in every window, nor by more than the
    surprises the margin covers)."""
    fit = lines(samples[bisect.bisect_left(samples, at - trend_window_s, key=_time) :], eps)
    if fit is None or -fit[1][1] * horizon_s <= margin:
        return False
    for window in _windows(samples, at, window_s=window_s, count=_count(window_s, trend_window_s)):
        fit = lines(window, eps)
        # A flat window's fitted slope is rounding, either side of zero: its ends say it did not fall.
        if fit is None or fit[1][1] >= 0 or window[-1][1] >= window[0][1]:
            return False
    return True
