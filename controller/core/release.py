"""When idle burst capacity goes: once keeping it has cost as much as relaunching it would.

A released node that is needed again costs a relaunch: a boot billed before it serves, and the misses
while it boots. Keeping an idle node costs its price per second. Releasing a GPU once it has been idle
for as long as a relaunch takes to pay for (a boot) never spends more than twice what hindsight would
(the ski-rental bound), and a gap shorter than a boot, which hindsight would bridge, is bridged.

A steady decline is the exception: demand that fell in every recent rate window, by more than the
forecast's margin, is not about to come back, so idle capacity goes down to what the latest demand
needs (and what was wanted over the last rate window) without waiting out the boot.

The idle time is counted on a clock that runs only while decisions are made from real metrics: a
metrics outage neither counts as, nor cuts short, the wait.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

MAX_STEP_S = 60.0
"""A gap between decisions counts as at most this much waiting (a tick or two; the rest was blind)."""


@dataclass(frozen=True, slots=True)
class Clock:
    """Seconds of decisions made from real metrics, and the wall time of the last one."""

    at: float
    seen_s: float


def advance(clock: Clock | None, at: float) -> Clock:
    if clock is None:
        return Clock(at, 0.0)
    return Clock(at, clock.seen_s + min(MAX_STEP_S, max(0.0, at - clock.at)))


def _first(entry: tuple[float, int]) -> float:
    return entry[0]


def hold(
    history: tuple[tuple[float, int], ...], clock: Clock, *, wanted: int, keep_s: float
) -> tuple[int, tuple[tuple[float, int], ...]]:
    """The burst GPUs to keep (the most wanted within `keep_s` of seen time, this tick's included), and
    the history to carry, on the seen clock."""
    start = bisect.bisect_right(history, clock.seen_s - keep_s, key=_first)
    history = (*history[start:], (clock.seen_s, wanted))
    return max([g for _, g in history]), history


def settle(
    history: tuple[tuple[float, int], ...], clock: Clock, *, held: int, settled: int, window_s: float
) -> int:
    """The burst GPUs to keep while demand declines steadily: the most wanted over the last rate window
    (`history` holds this tick's), or what the latest demand needs, whichever is more; never more than
    `held`."""
    recent = max(g for seen_s, g in history if seen_s >= clock.seen_s - window_s)
    return min(held, max(recent, settled))
