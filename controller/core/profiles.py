"""Seasonal profiles: the peak demand per time-of-period bin over the last two periods.

The forecast ensemble (`forecast.py`) keeps one per period (hour, two hours, day, week); each forecasts
a time by what both of the last two periods reached within minutes of it. Pure: a profile is a frozen
value, and observing a sample returns a new one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Profile:
    """The peak demand per time-of-period bin over the last two periods.

    A time is forecast by what both periods reached near it: a spike or a dip seen once is not forecast
    again, one that recurs at about the same time is."""

    period_s: float
    bin_s: float
    values: tuple[float, ...]
    """The last period's peak per bin."""
    before: tuple[float, ...]
    """The period before's peak per bin."""
    started_at: float | None = None
    bin_index: int = -1
    bin_peak: float = 0.0

    @staticmethod
    def empty(period_s: float, bin_s: float) -> Profile:
        n = int(period_s // bin_s)
        return Profile(period_s, bin_s, (0.0,) * n, (0.0,) * n)

    def index(self, t: float) -> int:
        return int((t % self.period_s) // self.bin_s) % len(self.values)

    def complete(self, t: float) -> bool:
        return self.started_at is not None and t - self.started_at >= 2 * self.period_s + self.bin_s


def observe(p: Profile, t: float, value: float) -> Profile:
    idx = p.index(t)
    if idx == p.bin_index:
        if value <= p.bin_peak:
            return p
        return Profile(p.period_s, p.bin_s, p.values, p.before, p.started_at, idx, value)
    values, before = p.values, p.before
    if p.bin_index >= 0:
        i = p.bin_index
        before = (*before[:i], values[i], *before[i + 1 :])
        values = (*values[:i], p.bin_peak, *values[i + 1 :])
    started = t if p.started_at is None else p.started_at
    return Profile(p.period_s, p.bin_s, values, before, started, idx, value)


def peak_around(p: Profile, t: float, reach_s: float, now: float) -> float:
    """What both periods reached within `reach_s` of t (recurring spikes come minutes early or late),
    where both lie the same side of `now`: a spike or a dip that only one period saw is not forecast
    again, and where the periods disagree the forecast is `now`."""
    n = len(p.values)
    centre = p.index(t)
    k = min(int(reach_s // p.bin_s), (n - 1) // 2)
    lo, hi = centre - k, centre + k + 1
    if lo >= 0 and hi <= n:  # slices, not a walk over indices: this runs every tick per profile
        last, before = max(p.values[lo:hi]), max(p.before[lo:hi])
    else:
        lo %= n
        hi %= n
        last, before = max(*p.values[lo:], *p.values[:hi]), max(*p.before[lo:], *p.before[:hi])
    return max(min(last, before), min(max(last, before), now))  # the median of the three
