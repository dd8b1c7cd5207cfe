"""The error budget: the share of requests the SLO lets miss, and how far one workload has overspent it.

The forecast's bound covers a fixed share of its surprises (`BurstPolicy.block_miss_share`); what an
uncovered surprise costs depends on the workload: a noisy minute leaves a queue that takes minutes to
drain. So the budget counts what a wider bound would have served: requests that met a flooded queue
while demand stood above the bound planned for that time, but within `cold_margin` of it. Misses a
wider bound cannot serve do not count: demand far above any bound (a step no boot catches), capacity
not there yet (a boot, a cap), bursts within the rate window. Widening the bound for them would spend
without serving.

While those misses run over the SLO's share (a surplus banked earlier is spent first), the forecast
carries its bound further into its tail (`shrink`): one e-fold of tail probability per day's worth of
budget (at the recent demand) overspent. Misses and the surplus fade over the SLO window.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from operator import itemgetter

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Budget:
    at: float | None = None
    seconds: float = 0.0
    """Time seen, with the forecast errors' half-life."""
    requests: float = 0.0
    """Requests seen, faded the same way: over `seconds`, the recent demand."""
    overspent: float = 0.0
    """Requests a wider bound would have served, less the SLO's share of all (negative: a surplus),
    faded over the SLO window."""
    planned: tuple[tuple[float, float], ...] = ()
    """(time, bound planned for it), for the times not yet come."""


def spend(
    b: Budget,
    at: float,
    *,
    demand: float,
    arrived: float,
    flooded: bool,
    slo_target: float,
    window_s: float,
    half_life_s: float,
    reach: float,
    eps: float,
) -> Budget:
    """Account the time since the last sample, at `demand` (the rate), which met a flooded queue or not.
    What `arrived` (more than the rate where a growing queue says so) is judged against the bound
    planned for now: a wider bound is the fix where it stood above it, by at most `reach` (log).
    `window_s` is the SLO's window, `half_life_s` how recent the demand the budget is sized by."""
    i = bisect.bisect_right(b.planned, at, key=itemgetter(0))
    bound = b.planned[i - 1][1] if i else None
    dt = at - b.at if b.at is not None else 0.0
    fade, recent = math.exp(-dt / window_s), math.pow(2.0, -dt / half_life_s)
    came = max(demand, arrived)
    served = bound is not None and bound < came <= (bound + eps) * math.exp(reach)
    missed = demand * dt if flooded and served else 0.0
    return Budget(
        at,
        b.seconds * recent + dt,
        b.requests * recent + demand * dt,
        b.overspent * fade + missed - (1.0 - slo_target) * demand * dt,
        b.planned[i:],
    )


def plan(b: Budget, due: float, *, bound: float) -> Budget:
    """Remember the bound planned for `due`: when that time comes, misses are judged against it."""
    return Budget(b.at, b.seconds, b.requests, b.overspent, (*b.planned, (due, bound)))


def shrink(b: Budget, *, slo_target: float) -> float:
    """How far (log) to shrink the tail the bound leaves uncovered: the budget overspent, in days' worth
    of it at the recent demand (0 while it is not overspent)."""
    if b.overspent <= 0 or b.requests <= 0:
        return 0.0
    return b.overspent / ((1.0 - slo_target) * b.requests / b.seconds * DAY_S)
