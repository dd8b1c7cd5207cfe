"""Demand forecasting over the node boot horizon: a short-term trend, and daily and weekly seasonality
learned online once a whole period has been seen.

Pure and small on purpose: the state is a few tuples that decide carries from tick to tick, so the live
controller and the simulator forecast identically and a restart loses nothing (the store keeps it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

DAY_S = 86400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True, slots=True)
class Trend:
    """A least-squares line through recent demand samples."""

    level: float
    """The fitted demand at the newest sample's time."""
    slope: float
    """Requests per second, per second."""
    sigma: float
    """Standard deviation of the samples around the line: the short-term variability."""
    slope_sigma: float
    """Standard error of the slope."""
    n: int
    noise: float = 0.0
    """The demand's own short-term noise: a robust scale of its second differences, which a ramp or a
    single step (a burst starting or ending) does not inflate the way it inflates `sigma`."""


def trend(samples: Sequence[tuple[float, float]], *, noise: bool = False) -> Trend | None:
    """Fit `value = level + slope x (t - t_last)`; None with fewer than three samples.

    `noise` also estimates the robust noise scale (a sort per call: asked for only where used)."""
    return trends(samples, suffix=0, noise=noise)[0]


def trends(
    samples: Sequence[tuple[float, float]], *, suffix: int, noise: bool = False
) -> tuple[Trend | None, Trend | None]:
    """The fit through all samples and the fit through the last `suffix` of them, in one pass (this
    runs every tick for every workload)."""
    n = len(samples)
    if n < 3:
        return None, None
    t_last = samples[-1][0]
    sx = sy = sxx = sxy = syy = 0.0
    short: Trend | None = None
    for k in range(n):
        t, y = samples[n - 1 - k]
        x = t - t_last
        sx += x
        sy += y
        sxx += x * x
        sxy += x * y
        syy += y * y
        if k + 1 == suffix and suffix >= 3:
            short = _fit(suffix, (sx, sy, sxx, sxy, syy))
    full = _fit(n, (sx, sy, sxx, sxy, syy))
    if full is not None and noise:
        second = sorted(abs(samples[i][1] - 2 * samples[i - 1][1] + samples[i - 2][1]) for i in range(2, n))
        # For white noise the second difference has sd sigma x sqrt(6); 1.4826 x median is a robust sd.
        full = replace(full, noise=1.4826 * second[len(second) // 2] / math.sqrt(6.0))
    return full, short


def _fit(n: int, sums: tuple[float, float, float, float, float]) -> Trend | None:
    sx, sy, sxx, sxy, syy = sums
    cxx = sxx - sx * sx / n
    if cxx <= 0:
        return None
    cxy = sxy - sx * sy / n
    cyy = syy - sy * sy / n
    slope = cxy / cxx
    level = (sy - slope * sx) / n
    sigma = math.sqrt(max(0.0, cyy - slope * cxy) / (n - 2))
    return Trend(level, slope, sigma, sigma / math.sqrt(cxx), n)


@dataclass(frozen=True, slots=True)
class Seasonal:
    """Mean demand per time-of-period bin, learned online (an exponentially weighted average per bin).

    It forecasts only after a whole period has been seen, and only as well as it has recently predicted:
    `error` is the smoothed relative error of its own one-bin-ahead predictions.
    """

    period_s: float
    bin_s: float
    values: tuple[float, ...]
    seen: tuple[bool, ...]
    started_at: float | None = None
    bin_index: int = -1
    bin_sum: float = 0.0
    bin_count: int = 0
    error: float = 1.0
    """Smoothed |predicted - actual| / actual of the bins closed since the profile was complete."""

    @staticmethod
    def empty(period_s: float, bin_s: float = 300.0) -> Seasonal:
        n = int(period_s // bin_s)
        return Seasonal(period_s, bin_s, (0.0,) * n, (False,) * n)

    def index(self, t: float) -> int:
        return int((t % self.period_s) // self.bin_s) % len(self.values)

    def complete(self, t: float) -> bool:
        return self.started_at is not None and t - self.started_at >= self.period_s and all(self.seen)


def observe(s: Seasonal, t: float, value: float, *, alpha: float = 0.5) -> Seasonal:
    """Add a demand sample; closing a bin folds its mean into the profile and scores the profile."""
    idx = s.index(t)
    started = t if s.started_at is None else s.started_at
    if idx == s.bin_index:
        # The common case, every tick: built directly (dataclasses.replace costs a field walk).
        return Seasonal(
            s.period_s, s.bin_s, s.values, s.seen, started, idx, s.bin_sum + value, s.bin_count + 1, s.error
        )
    values, seen, error = s.values, s.seen, s.error
    if s.bin_index >= 0 and s.bin_count > 0:
        mean = s.bin_sum / s.bin_count
        old = values[s.bin_index]
        if seen[s.bin_index] and s.complete(t):
            rel = abs(old - mean) / max(mean, 1.0)
            error = (1 - alpha) * error + alpha * min(rel, 1.0)
        new = mean if not seen[s.bin_index] else (1 - alpha) * old + alpha * mean
        values = (*values[: s.bin_index], new, *values[s.bin_index + 1 :])
        seen = (*seen[: s.bin_index], True, *seen[s.bin_index + 1 :])
    return replace(
        s,
        values=values,
        seen=seen,
        started_at=started,
        bin_index=idx,
        bin_sum=value,
        bin_count=1,
        error=error,
    )


def profile_peak(s: Seasonal, start: float, end: float) -> float:
    """The highest profile value over the bins that [start, end] touches."""
    t = start
    peak = 0.0
    while t <= end:
        peak = max(peak, s.values[s.index(t)])
        t += s.bin_s
    return max(peak, s.values[s.index(end)])


@dataclass(frozen=True, slots=True)
class Forecast:
    now_rps: float
    """Demand now: the trend's level corrected for the rate window's lag."""
    peak_rps: float
    """The highest demand expected between now and the horizon."""
    sigma_rps: float
    """The demand's short-term variability around its trend (one standard deviation)."""
    noise_rps: float
    """The robust part of that variability: the noise a single step or a ramp does not inflate."""
    recent_max_rps: float
    """The highest demand sample over the trend window."""
    sigma_horizon_rps: float
    """How far the demand may be from the trend by the horizon (variability and slope uncertainty)."""
    source: str
    confidence: float
    """0..1: how far to trust the forecast beyond the current level (seasonal fit, or trend fit)."""
    falling: bool = False
    """The trend points down beyond its uncertainty: the peak has passed."""
    rising: bool = False
    """The trend points up beyond its uncertainty: what is released now would be needed again."""


@dataclass(frozen=True, slots=True)
class ErrorHistogram:
    """How far demand came in above past forecasts, as a fraction of the forecast, remembered with
    exponential forgetting: headroom taken from its quantile covers the errors this workload has really
    shown, wide where demand jumps and narrow where it is smooth (a conformal prediction bound)."""

    bin_width: float = 0.02
    weights: tuple[float, ...] = ()
    """weights[0]: errors <= 0 (over-forecasts); weights[i]: errors in ((i-1) w, i w]; the last is open."""
    total: float = 0.0

    @staticmethod
    def empty(bins: int = 51, bin_width: float = 0.02) -> ErrorHistogram:
        return ErrorHistogram(bin_width, (0.0,) * bins, 0.0)


def record_error(h: ErrorHistogram, error: float, *, decay: float) -> ErrorHistogram:
    """Add one relative error after fading every earlier one by `decay`."""
    n = len(h.weights)
    idx = 0 if error <= 0 else min(n - 1, 1 + int(error / h.bin_width))
    weights = [w * decay for w in h.weights]
    weights[idx] += 1.0
    return replace(h, weights=tuple(weights), total=h.total * decay + 1.0)


def error_quantile(h: ErrorHistogram, q: float) -> float:
    """The relative error not exceeded with probability q (interpolated within its bin); 0 if none."""
    if h.total <= 0:
        return 0.0
    need = q * h.total
    acc = 0.0
    for i, w in enumerate(h.weights):
        if acc + w >= need:
            if i == 0 or w <= 0:
                return i * h.bin_width
            # Linear within the bin, as Prometheus' histogram_quantile does: the bin's upper edge would
            # overstate the quantile by up to a whole bin.
            return (i - 1 + (need - acc) / w) * h.bin_width
        acc += w
    return (len(h.weights) - 1) * h.bin_width
