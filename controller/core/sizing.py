"""Plan: the GPUs one workload needs for its forecast bound, and for a queue that built up.

Capacity bought now serves only after a boot, so it is sized for the bound one horizon ahead. A
standing queue also tells what arrives now better than a rate averaged over a window: while it grows,
arrivals are what was served plus its growth. Capacity to drain a backlog is wanted only while the
backlog lasts, so it is kept apart from the bound and never held; capacity bought ahead of a growth
the forecast carries (`Forecast.held_rps`) is kept apart too, and held only briefly. While demand
declines steadily (`trends.sure_decline`), the GPUs the latest demand needs with the forecast's margin
are what idle capacity is released down to without waiting for a return (`Need.settled`). Each tick
also accounts the workload's error budget (`budget.py`), which widens the forecast's bound where misses
a wider bound would have served overspend it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace

from controller.core import budget, capacity, forecast, model, trends


@dataclass(frozen=True, slots=True)
class Need:
    gpus: int
    """GPUs for the bound and the backlog, private included."""
    burst_gpus: int
    """Burst GPUs for the bound (what is held against release)."""
    ahead_gpus: int
    """Burst GPUs beyond that, bought ahead of a growth (held only while the growth lasts)."""
    backlog_gpus: int
    """Burst GPUs beyond those, to drain a standing queue (not held)."""
    forecast: forecast.Forecast
    reason: str
    settled: int | None = None
    """While demand declines steadily: the burst GPUs the latest demand needs with the forecast's
    margin (idle capacity above them need not wait a boot for demand to come back). None otherwise."""


def _jump(mem: forecast.Model, window_s: float) -> float:
    """The arrival rate a sudden jump implies: a rate averaged over a window climbs by 1/window of the
    jump per second, so the rate one window ago plus the latest climb times the window is the rate now.
    Asked only while a flooded queue says the lagging average sizes too little."""
    if len(mem.samples) < 2:
        return 0.0
    (t1, r1), (t2, r2) = mem.samples[-2], mem.samples[-1]
    if t2 <= t1 or r2 <= r1:
        return 0.0
    before = max(0, bisect.bisect_right(mem.samples, t2 - window_s, key=lambda s: s[0]) - 1)
    return mem.samples[before][1] + window_s * (r2 - r1) / (t2 - t1)


def _floods(queue: float, *, capacity_rps: float, slo_s: float) -> bool:
    """A queue holding more than the SLO's worth of work: every new request misses until it drains."""
    return queue > capacity_rps * slo_s  # capacity is never negative: an empty queue never floods


def held_flood(fc: forecast.Forecast, arrivals: float) -> forecast.Forecast:
    """The forecast with what a flooded queue says arrives now, times its margin, planned and held;
    held whatever else the bound carries: capacity bought ahead of a growth goes when the growth stops,
    and must not take with it the capacity for what already arrives."""
    lifted = arrivals * math.exp(fc.margin)
    return replace(
        fc, expected_rps=max(fc.expected_rps, arrivals), bound_rps=max(fc.bound_rps, lifted), held_rps=lifted
    )


def queue_arrivals(
    mem: forecast.Model, at: float, queue: float, *, capacity_rps: float, slo_s: float
) -> float:
    """What arrives now where a queue holding more than the SLO's worth of work grows: what is served
    plus the growth. A rate averaged over its window hides arrivals that exceed capacity for less than
    the window (a noisy minute, a burst); the queue does not. 0 where nothing says more than the rate."""
    t0, q0 = mem.queue
    if not _floods(queue, capacity_rps=capacity_rps, slo_s=slo_s) or at <= t0 or queue <= q0:
        return 0.0
    return capacity_rps + (queue - q0) / (at - t0)


def _settled(
    w: model.WorkloadSpec,
    mem: forecast.Model,
    *,
    fc: forecast.Forecast,
    at: float,
    demand: float,
    window_s: float,
    horizon_s: float,
    settings: forecast.Settings,
    utilization: float,
) -> int | None:
    """The burst GPUs the latest demand needs with the forecast's margin, where demand declines
    steadily; not the chosen forecast's own bound: a line through a fall goes on falling where demand
    levels out, and capacity released for it would be bought back."""
    eps = settings.floor_rps
    if not trends.sure_decline(
        mem.samples, at, window_s=window_s, trend_window_s=settings.trend_window_s, eps=eps,
        horizon_s=horizon_s, margin=fc.margin,
    ):  # fmt: skip
        return None
    now = (demand + eps) * math.exp(fc.margin) - eps
    return max(0, capacity.gpus_for(now, w, utilization=utilization) - w.private_gpus)


def need(
    w: model.WorkloadSpec,
    m: model.WorkloadMetrics,
    mem: forecast.Model,
    *,
    at: float,
    share: float,
    horizon_s: float,
    settings: forecast.Settings,
    seasonality: bool,
    utilization: float,
    drain_s: float,
    spent: budget.Budget,
    slo_target: float,
    slo_window_s: float,
) -> tuple[Need, forecast.Model, budget.Budget]:
    demand = (m.rate_rps or 0.0) * share
    queue = (m.queue_depth or 0.0) * share
    serving = sum(m.ready_replicas.values()) if m.ready_replicas else 0
    capacity_rps = serving * w.gpu_rps * share
    arrived = queue_arrivals(mem, at, queue, capacity_rps=capacity_rps, slo_s=w.slo_s)
    flooding = _floods(queue, capacity_rps=capacity_rps, slo_s=w.slo_s)
    spent = budget.spend(
        spent, at, demand=demand, arrived=arrived, flooded=flooding, slo_target=slo_target,
        window_s=slo_window_s, half_life_s=settings.half_life_s, reach=settings.cold_margin,
        eps=settings.floor_rps,
    )  # fmt: skip
    mem = forecast.remember(
        mem, at, demand, block_s=horizon_s, settings=settings, seasonal=seasonality,
        arrived=arrived, queue=queue,
    )  # fmt: skip
    fc, mem = forecast.forecast(
        mem, at, horizon_s=horizon_s, settings=settings, shrink=budget.shrink(spent, slo_target=slo_target)
    )
    spent = budget.plan(spent, at + horizon_s, bound=fc.bound_rps)
    # A queue holding more than the SLO's worth of work makes every new request miss until it drains,
    # and says that the rate, averaged over its window, lags what arrives now.
    # Chased only where this workload's steps have lasted: where its levels revert, a spike is over
    # before capacity bought for it could serve.
    flooded = fc.follows and flooding
    arrivals = max(demand, _jump(mem, m.window_s)) if flooded else demand
    if flooded and arrivals * math.exp(fc.margin) > fc.held:
        fc = held_flood(fc, arrivals)
    elif demand > fc.bound_rps:
        # Never planned below what arrives now.
        fc = replace(fc, bound_rps=demand, held_rps=demand)
    gpus = capacity.gpus_for(fc.bound_rps, w, utilization=utilization)
    drain = capacity.gpus_for(arrivals + queue / drain_s, w, utilization=utilization) if flooded else 0
    burst = max(0, capacity.gpus_for(max(demand, fc.held), w, utilization=utilization) - w.private_gpus)
    ahead = max(0, gpus - w.private_gpus - burst)
    backlog = max(0, max(gpus, drain) - w.private_gpus) - burst - ahead
    source = fc.source.value if fc.source is not None else "cold start"
    reason = (
        f"{w.name}: {demand:.0f} req/s now, {fc.expected_rps:.0f} expected by +{horizon_s:.0f}s ({source}), "
        f"bound {fc.bound_rps:.0f} (x{math.exp(fc.margin):.2f}) -> {gpus} GPUs ({w.private_gpus} private)"
    )
    if ahead:
        reason += f"; +{ahead} GPUs ahead of the growth, while it lasts"
    if backlog:
        reason += f"; queue {queue:.0f}: +{backlog} GPUs to drain it in {drain_s:.0f}s"
    settled = _settled(
        w, mem, fc=fc, at=at, demand=demand, window_s=m.window_s, horizon_s=horizon_s, settings=settings,
        utilization=utilization,
    )  # fmt: skip
    if settled is not None:
        reason += f"; falling in every window: idle burst GPUs above {settled} need not wait a boot"
    return Need(max(gpus, drain), burst, ahead, backlog, fc, reason, settled), mem, spent
