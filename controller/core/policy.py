"""decide: how many cloud nodes each pool should have, now and for the next node boot.

Pure: `decide(inputs, state, policy) -> (Decision, new_state)`. The live controller and the simulator
call this same function; the state it returns is all it remembers between ticks.

Per workload it estimates demand now (a trend through recent samples, corrected for the rate window's
lag, and, while a queue stands, the arrivals its growth or the rate's climb imply), forecasts the
highest demand before a node launched now could serve (the trend, and daily or weekly seasonality once
learned and proven), adds headroom sized from its own past forecast errors and the observed variability,
and catch-up capacity for any backlog. The trend's fit to the latest few samples (which shows an accelerating
ramp first) is used only while its forecasts have recently been closer than the plain trend's: a rate
window turns every step of noisy demand into a short, clean ramp that carried forward buys nodes for
nothing.
On a surge tick (brought forward because the replicas themselves showed a step the scrape has not yet:
`surging`), their own arrival count is the demand now, and the nodes bought are sized for the backlog
they will meet when they join, held like any recommendation.
Releases wait until the lower target has held for the stabilization window (shorter once demand has
been falling beyond its noise), never happen while demand rises, keep what the workload's own forecast
errors say may be needed before a relaunch could serve, and are not undone within the window unless
demand rose beyond what was planned at the release.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from controller.core import capacity, forecast, limits, model


@dataclass(frozen=True, slots=True)
class BurstPolicy:
    """The knobs of a burst policy (loaded from `policies/burst/*.yaml` at the edge)."""

    name: str = "default"
    target_utilization: float = 0.97
    """Fraction of a replica's sustained rate it is planned to carry at the forecast demand."""
    forecast_quantile: float = 0.84
    """Headroom covers this quantile of the workload's own past forecast errors at the boot horizon."""
    error_half_life_s: float = 6 * 3600.0
    """How fast old forecast errors fade from the headroom estimate."""
    headroom_sigmas: float = 2.0
    """At least this many standard deviations of short-term variability are kept spare."""
    trend_window_s: float = 300.0
    """How much recent demand the trend is fitted to."""
    fast_samples: int = 8
    """The latest samples fitted again, so an accelerating ramp shows before the whole window sees it."""
    horizon_extra_s: float = 30.0
    """Added to the boot time: the wait for the next tick and the next scrape."""
    seasonality: bool = True
    seasonal_max_error: float = 0.15
    """A learned daily or weekly profile is trusted only while its recent relative error is below this."""
    release_quantile: float = 0.98
    """A release keeps capacity for this quantile of past forecast errors, up to the highest demand of the
    last fall window: what goes must not be needed again before a relaunch could serve."""
    scale_down_stabilization_s: float = 300.0
    """A release needs the lower target to have held this long (the highest recent target wins)."""
    fall_stabilization_s: float = 120.0
    """The same wait once demand has been falling beyond its noise (the peak has passed)."""
    fall_window_s: float = 900.0
    """How long a decline must have lasted to count as falling."""
    backlog_drain_s: float = 30.0
    """A queue that built up gets extra capacity sized to clear it within this time."""
    surge_drain_s: float = 5.0
    """Nodes bought at a surge are sized to clear, within this time of joining, the backlog that will
    have built up by then: until it clears, every new request waits behind it past the SLO."""
    burst_tiers: frozenset[str] = frozenset(model.TIERS)
    """Tiers whose demand may buy cloud capacity; the others are served on what exists."""
    budget_usd_per_hour: float | None = None
    boot_timeout_s: float = 900.0
    drain_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Memory:
    """What decide remembers about one workload's demand."""

    samples: tuple[tuple[float, float], ...] = ()
    """(time, burstable demand) over the trend window."""
    queue: tuple[float, float] | None = None
    """(time, queue depth) at the previous tick."""
    daily: forecast.Seasonal | None = None
    weekly: forecast.Seasonal | None = None
    pending: tuple[tuple[float, float], ...] = ()
    """(due time, forecast demand) of forecasts not yet checked against what came."""
    errors: forecast.ErrorHistogram | None = None
    surge: tuple[float, float] | None = None
    """(time, arrivals) of the last surge tick: a step already measured."""
    rivals: tuple[tuple[float, float, float], ...] = ()
    """(due time, trend forecast with the fast fit, without it), not yet checked against what came."""
    rival_errors: tuple[float, float] = (0.0, 0.0)
    """Decayed sums of the absolute relative errors of those two forecasts."""


@dataclass(frozen=True, slots=True)
class PolicyState:
    memory: Mapping[str, Memory] = field(default_factory=dict)
    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, burst GPUs recommended) over the stabilization window."""
    released: tuple[float, float, int] | None = None
    """The last release: (time, demand planned for then, burst GPUs kept)."""


@dataclass(frozen=True, slots=True)
class DecisionInputs:
    at: float
    synced: bool
    workloads: Sequence[model.WorkloadSpec]
    metrics: Mapping[str, model.WorkloadMetrics]
    pools: Sequence[model.PoolSpec]
    active: Mapping[str, int]
    """Active nodes per pool: requested, provisioning or ready."""
    leaving: Mapping[str, int]
    """Nodes per pool that still bill but are on their way out (draining, releasing, failed)."""
    ready: Mapping[str, int] = field(default_factory=dict)
    """Ready nodes per pool (serving, or about to)."""
    unavailable: frozenset[str] = frozenset()
    """Pools that refused capacity recently."""
    problems: tuple[str, ...] = ()


def burstable_share(metrics: model.WorkloadMetrics, tiers: frozenset[str]) -> float:
    """The fraction of the demand allowed to buy cloud capacity (1 when tiers are not reported)."""
    if tiers >= frozenset(model.TIERS) or not metrics.tier_rps:
        return 1.0
    total = sum(metrics.tier_rps.values())
    if total <= 0:
        return 1.0
    return sum(v for t, v in metrics.tier_rps.items() if t in tiers) / total


@dataclass(frozen=True, slots=True)
class _Need:
    gpus: int
    keep: int
    """GPUs below which a release would likely be undone before a relaunch could serve."""
    demand_rps: float
    """The demand sized for: the forecast peak, or more when a queue says so."""
    forecast: forecast.Forecast
    rivals: tuple[float, float]
    reason: str


def _time(sample: tuple[float, float]) -> float:
    return sample[0]


_MIN_ERRORS = 20.0
"""Forecast errors (decayed weight) needed before they, rather than the variability, size headroom."""


def _remember(mem: Memory, at: float, demand: float, policy: BurstPolicy) -> Memory:
    start = at - max(policy.trend_window_s, policy.fall_window_s)
    samples = (*mem.samples[bisect.bisect_right(mem.samples, start, key=_time) :], (at, demand))
    errors = mem.errors or forecast.ErrorHistogram.empty()
    # Past errors fade once per tick, by the time since the previous one.
    fade = 0.5 ** ((at - samples[-2][0] if len(samples) > 1 else 0.0) / policy.error_half_life_s)
    pending = mem.pending
    if pending and pending[0][0] <= at:
        decay = fade
        while pending and pending[0][0] <= at:
            _, predicted = pending[0]
            pending = pending[1:]
            errors = forecast.record_error(errors, (demand - predicted) / max(predicted, 1.0), decay=decay)
            decay = 1.0
    rivals, rival_errors = mem.rivals, mem.rival_errors
    if rivals and rivals[0][0] <= at:
        with_fast, without = rival_errors[0] * fade, rival_errors[1] * fade
        while rivals and rivals[0][0] <= at:
            _, fast, plain = rivals[0]
            rivals = rivals[1:]
            with_fast += abs(demand - fast) / max(fast, 1.0)
            without += abs(demand - plain) / max(plain, 1.0)
        rival_errors = (with_fast, without)
    daily, weekly = mem.daily, mem.weekly
    if policy.seasonality:
        daily = forecast.observe(daily or forecast.Seasonal.empty(forecast.DAY_S, 600.0), at, demand)
        weekly = forecast.observe(weekly or forecast.Seasonal.empty(forecast.WEEK_S, 3600.0), at, demand)
    return replace(
        mem,
        samples=samples,
        daily=daily,
        weekly=weekly,
        pending=pending,
        errors=errors,
        rivals=rivals,
        rival_errors=rival_errors,
    )


def _sure_slope(fit: forecast.Trend) -> float:
    """The upward slope, shrunk by how sure it is: a slope within its own noise barely counts."""
    if fit.slope <= 0:
        return 0.0
    spread = fit.slope**2 + fit.slope_sigma**2
    return fit.slope * fit.slope**2 / spread if spread > 0 else fit.slope


def _forecast(
    mem: Memory, at: float, *, lag_s: float, horizon_s: float, policy: BurstPolicy
) -> tuple[forecast.Forecast, tuple[float, float]]:
    """The demand now and the highest it may reach by the horizon, with the spread to plan for; and the
    trend's forecasts with and without the fast fit, to score which has been closer."""
    latest = mem.samples[-1][1]
    recent = mem.samples[bisect.bisect_right(mem.samples, at - policy.trend_window_s, key=_time) :]
    fit, late = forecast.trends(recent, suffix=policy.fast_samples, noise=True)
    if fit is None:
        spread = math.sqrt(max(latest, 1.0))
        flat = forecast.Forecast(
            now_rps=latest,
            peak_rps=latest,
            sigma_rps=spread,
            noise_rps=spread,
            recent_max_rps=latest,
            sigma_horizon_rps=spread,
            source="latest",
            confidence=0.0,
        )
        return flat, (latest, latest)
    now = max(0.0, fit.level + fit.slope * lag_s)
    # A rise is carried to the horizon, shrunk by how sure it is (a slope within its noise barely
    # counts); a fall takes nothing away before it shows in the demand itself.
    plain = _sure_slope(fit)
    # An accelerating ramp shows first in the last few samples; noise that a rate window smooths into
    # short ramps shows there too, so the fast fit counts only while it has forecast better.
    fast = max(plain, _sure_slope(late)) if late is not None else plain
    rivals = (now + fast * horizon_s, now + plain * horizon_s)
    with_fast, without = mem.rival_errors
    rise = fast if with_fast <= without else plain
    peak = now + rise * horizon_s
    source, confidence = "trend", 1.0 / (1.0 + fit.sigma / max(now, 1.0))
    for season in (mem.weekly, mem.daily):
        if season is None or not season.complete(at) or season.error > policy.seasonal_max_error:
            continue
        base = season.values[season.index(at)]
        if base <= 0:
            continue
        # The profile's shape, at today's level.
        ratio = min(2.0, max(0.5, now / base))
        # A profile that has proven itself pre-warms for what the trend cannot see coming yet.
        ahead = forecast.profile_peak(season, at, at + horizon_s) * ratio
        if ahead > peak:
            peak, source = ahead, "weekly" if season is mem.weekly else "daily"
        confidence = 1.0 - season.error
        break
    # Falling means a sustained decline: down beyond its noise both lately and over the longer window,
    # which on/off bursts are not. Samples closer together than the rate window share most of it, so a
    # slope's standard error from them is too small by the square root of how many share (per-minute
    # noise through a 60 s rate would otherwise pass for a fall, and a fall releases sooner).
    spacing = (recent[-1][0] - recent[0][0]) / (len(recent) - 1)  # > 0: the fit needs distinct times
    sigmas = policy.headroom_sigmas * math.sqrt(max(1.0, 2 * lag_s / spacing))
    falling = source == "trend" and fit.slope + sigmas * fit.slope_sigma < 0
    if falling:  # the longer fit is asked only when the short one already points down
        longer = forecast.trend(mem.samples)
        falling = longer is not None and longer.slope + sigmas * longer.slope_sigma < 0
    rising = fit.slope - fit.slope_sigma > 0
    spread = math.sqrt(fit.sigma**2 + (fit.slope_sigma * horizon_s) ** 2)
    top = max(v for _, v in recent)
    fc = forecast.Forecast(
        now_rps=now,
        peak_rps=max(now, peak),
        sigma_rps=fit.sigma,
        noise_rps=fit.noise,
        recent_max_rps=top,
        sigma_horizon_rps=spread,
        source=source,
        confidence=confidence,
        falling=falling,
        rising=rising,
    )
    return fc, rivals


def _jump(mem: Memory, window_s: float) -> float:
    """The arrival rate a sudden jump implies: a rate averaged over a window climbs by 1/window of the
    jump per second, so the rate one window ago (steady before the jump) plus the latest climb times the
    window is the rate now. Asked only while a queue stands, when the lagging average sizes too little."""
    if len(mem.samples) < 2:
        return 0.0
    (t1, r1), (t2, r2) = mem.samples[-2], mem.samples[-1]
    if t2 <= t1 or r2 <= r1:
        return 0.0
    before = bisect.bisect_right(mem.samples, t2 - window_s, key=_time) - 1
    return mem.samples[max(0, before)][1] + window_s * (r2 - r1) / (t2 - t1)


SURGE_WINDOW_S = 2
"""Seconds of arrivals a replica reading is averaged over: one busy second is not a surge."""
SURGE_FACTOR = 2.0
"""A surge: the replicas see this many times the arrivals the planned capacity serves (Knative's panic
threshold is the same 200 %)."""


def surging(w: model.WorkloadSpec, reading: model.PodReading, *, planned_gpus: int) -> bool:
    """Whether the replicas show a jump the next scrape has not: arrivals far beyond what the planned
    GPUs serve, and already a queue a new request would wait in past its SLO. Both, so that a single
    busy second or a standing queue alone does not buy nodes."""
    if reading.recent_rps is None or reading.replicas <= 0:
        return False
    served = reading.replicas * w.gpu_rps
    flooded = reading.in_system > served * w.slo_s
    return flooded and reading.recent_rps > SURGE_FACTOR * planned_gpus * w.gpu_rps


def _need(
    w: model.WorkloadSpec,
    m: model.WorkloadMetrics,
    mem: Memory,
    *,
    inputs: DecisionInputs,
    policy: BurstPolicy,
    horizon_s: float,
) -> tuple[_Need, int]:
    """GPUs for the forecast demand with its headroom, and the extra GPUs a backlog needs."""
    share = burstable_share(m, policy.burst_tiers)
    fc, rivals = _forecast(mem, inputs.at, lag_s=m.window_s / 2, horizon_s=horizon_s, policy=policy)
    demand = fc.peak_rps
    queue = (m.queue_depth or 0.0) * share
    notes = [f"{w.name}: {fc.now_rps:.0f} req/s now, {fc.peak_rps:.0f} by +{horizon_s:.0f}s ({fc.source})"]
    if mem.surge is not None and inputs.at - mem.surge[0] < policy.trend_window_s:
        # After a step the replicas measured, the rate climbing through its window is that step showing,
        # not a ramp to carry forward: the forecast stops at the step (a queue can still raise it).
        step = max(mem.surge[1], mem.samples[-1][1])
        if demand > step:
            demand = step
            notes.append(f"the rate is still showing the {mem.surge[1]:.0f} req/s surge")
    serving = sum(m.ready_replicas.values()) if m.ready_replicas else None
    arrivals = fc.now_rps  # the best estimate of what arrives now: what a backlog drains against
    if mem.queue is not None and serving is not None and (queue > 0 or mem.queue[1] > 0):
        # While a queue stands, arrivals are what was served plus what the queue grew by.
        t0, q0 = mem.queue
        if inputs.at > t0:
            implied = serving * w.gpu_rps * share + (queue - q0) / (inputs.at - t0)
            arrivals = max(arrivals, implied)
            if implied > demand:
                demand = implied
                notes.append(f"queue implies {implied:.0f} req/s")
    surge = m.recent_rps is not None
    if surge and m.recent_rps is not None and m.recent_rps * share > arrivals:
        arrivals = m.recent_rps * share
        demand = max(demand, arrivals)
        notes.append(f"replicas report {arrivals:.0f} req/s")
    if queue > 0:
        jump = _jump(mem, m.window_s)
        if jump > arrivals:
            arrivals, demand = jump, max(demand, jump)
            notes.append(f"rate jump implies {jump:.0f} req/s")
    # Variability headroom reaches at most back to the recent high (plus the robust noise): a sharp
    # drop inflates the spread around the trend, and must not buy capacity above what was just needed.
    headroom = min(
        policy.headroom_sigmas * fc.sigma_rps,
        max(0.0, fc.recent_max_rps - demand) + policy.headroom_sigmas * fc.noise_rps,
    )
    errors = mem.errors
    # Forecast errors are surprises on the way up; during a sustained fall only the noise needs cover.
    if errors is not None and errors.total >= _MIN_ERRORS and not fc.falling:
        headroom = max(headroom, demand * forecast.error_quantile(errors, policy.forecast_quantile))
    notes.append(f"headroom {headroom:.0f} req/s")
    gpus = capacity.gpus_for(demand + headroom, w, utilization=policy.target_utilization)
    drain_s = policy.backlog_drain_s
    if surge and serving is not None:
        # Nodes bought now join after a boot, to the backlog that builds until then: at most what the
        # service holds before it times requests out.
        drain_s = policy.surge_drain_s
        served = serving * w.gpu_rps * share
        if arrivals > served:
            queue = max(queue, min(queue + (arrivals - served) * horizon_s, w.timeout_s * served))
            notes.append(f"surge: {queue:.0f} requests queued by the time new nodes join")
    # A backlog needs capacity above today's demand to drain; capacity bought for the forecast demand
    # already gives some, so only what it lacks is extra.
    drain = capacity.gpus_for(arrivals + queue / drain_s, w, utilization=policy.target_utilization)
    if surge:
        # Held like any recommendation (a catch-up is dropped once the queue empties): these nodes
        # must still be wanted when they join, after the boot.
        gpus = max(gpus, drain)
    catch_up = max(0, drain - gpus)
    if catch_up:
        notes.append(f"queue {queue:.0f}: +{catch_up} GPUs to drain it in {drain_s:.0f}s")
    notes.append(f"-> {gpus + catch_up} GPUs ({w.private_gpus} private)")
    # A release must leave room for one more standard deviation of where demand may go by the horizon,
    # and for the surprises this workload has shown within a boot (as high as demand has lately been:
    # the errors remember jumps from hours ago, the recent high what this stretch of demand reaches).
    upper = demand + max(headroom, (policy.headroom_sigmas + 1) * fc.sigma_horizon_rps)
    if errors is not None and errors.total >= _MIN_ERRORS:
        surprise = demand * (1.0 + forecast.error_quantile(errors, policy.release_quantile))
        upper = max(upper, min(surprise, max(v for _, v in mem.samples)))
    keep = capacity.gpus_for(upper, w, utilization=policy.target_utilization)
    return _Need(gpus, keep, demand, fc, rivals, ", ".join(notes)), catch_up


def _hold(inputs: DecisionInputs, state: PolicyState) -> tuple[model.Decision, PolicyState]:
    why = "; ".join(inputs.problems) or "view not synced"
    decision = model.Decision(
        at=inputs.at,
        action=model.Action.HOLD,
        target_nodes=dict(inputs.active),
        target_gpus={},
        demand_rps={},
        forecast_rps={},
        reasons=(f"hold: {why}",),
    )
    return decision, state


def decide(
    inputs: DecisionInputs, state: PolicyState, policy: BurstPolicy
) -> tuple[model.Decision, PolicyState]:
    if not inputs.synced:
        return _hold(inputs, state)
    available = [p for p in inputs.pools if p.name not in inputs.unavailable]
    boot = min((p.boot_s for p in available or inputs.pools), default=0.0)
    horizon = boot + policy.horizon_extra_s
    reasons: list[str] = []
    memory: dict[str, Memory] = dict(state.memory)
    demand: dict[str, float] = {}
    predicted: dict[str, float] = {}
    target_gpus: dict[str, int] = {}
    recommended = 0
    keep = 0
    planned = 0.0
    transient = 0
    falling = bool(inputs.workloads)
    rising = False
    for w in inputs.workloads:
        m = inputs.metrics[w.name]
        share = burstable_share(m, policy.burst_tiers)
        mem = _remember(memory.get(w.name, Memory()), inputs.at, (m.rate_rps or 0.0) * share, policy)
        need, catch_up = _need(w, m, mem, inputs=inputs, policy=policy, horizon_s=horizon)
        memory[w.name] = replace(
            mem,
            surge=(inputs.at, need.demand_rps) if m.recent_rps is not None else mem.surge,
            queue=(inputs.at, (m.queue_depth or 0.0) * share),
            pending=(*mem.pending, (inputs.at + horizon, need.forecast.peak_rps)),
            rivals=(*mem.rivals, (inputs.at + horizon, *need.rivals)),
        )
        demand[w.name] = m.rate_rps or 0.0
        predicted[w.name] = need.forecast.peak_rps
        target_gpus[w.name] = max(need.gpus + catch_up, w.private_gpus)
        base = max(0, need.gpus - w.private_gpus)
        recommended += base
        planned += need.demand_rps
        keep += max(0, need.keep - w.private_gpus)
        # Catch-up GPUs fill what private capacity has left over first, and are not stabilized: they
        # are wanted only while the backlog lasts.
        transient += max(0, need.gpus + catch_up - w.private_gpus) - base
        reasons.append(need.reason)
        falling = falling and need.forecast.falling
        rising = rising or need.forecast.rising

    keep_s = max(policy.scale_down_stabilization_s, policy.fall_stabilization_s)
    history = (*(r for r in state.recommendations if r[0] > inputs.at - keep_s), (inputs.at, recommended))
    have = sum(inputs.active.get(p.name, 0) * p.gpus_per_node for p in inputs.pools)
    burst = recommended
    if recommended + transient < have and rising:
        burst = have - transient
        reasons.append("demand rising: releasing nothing")
    elif recommended < have:
        # Once demand falls beyond its noise the peak has passed: a shorter wait suffices.
        window = policy.fall_stabilization_s if falling else policy.scale_down_stabilization_s
        held = max(r for t, r in history if t > inputs.at - window)
        burst = min(have, max(keep, held))
        if burst > max(recommended, held):
            reasons.append(
                f"scale-down stabilization: keeping {burst} burst GPUs: demand may need them again "
                "before a relaunch could serve (its variability and past forecast errors)"
            )
        elif burst > recommended:
            reasons.append(
                f"scale-down stabilization: keeping {burst} burst GPUs (highest of the last {window:.0f} s"
                + (", demand falling)" if falling else ")")
            )

    released = state.released
    if (
        released is not None
        and burst > released[2]
        and inputs.at - released[0] < policy.scale_down_stabilization_s
        and planned <= released[1]
    ):
        # Relaunching what was just released would pay a boot for nothing: only a demand above what
        # was planned for at the release (or lost nodes to replace) justifies it.
        burst = max(released[2], min(burst, have))
        reasons.append(
            f"not relaunching within {policy.scale_down_stabilization_s:.0f} s of a release: "
            f"{planned:.0f} req/s is within the {released[1]:.0f} planned for then"
        )
    if burst < have:
        released = (inputs.at, planned, burst)
    burst += transient
    room = {p.name: p.max_nodes - inputs.leaving.get(p.name, 0) for p in inputs.pools}
    for name in sorted(inputs.unavailable):
        reasons.append(f"{name}: unavailable (capacity refused), falling back")
    wanted = capacity.spread(
        burst,
        inputs.pools,
        active=inputs.active,
        ready=inputs.ready,
        available={p.name: p.name not in inputs.unavailable for p in inputs.pools},
        room=room,
    )
    limited = limits.enforce(
        wanted, inputs.pools, leaving=inputs.leaving, budget_usd_per_hour=policy.budget_usd_per_hour
    )
    reasons.extend(limited.reasons)

    before = sum(inputs.active.values())
    after = sum(limited.target.values())
    action = (
        model.Action.SCALE_UP
        if after > before
        else model.Action.SCALE_DOWN
        if after < before
        else model.Action.STEADY
    )
    decision = model.Decision(
        at=inputs.at,
        action=action,
        target_nodes=limited.target,
        target_gpus=target_gpus,
        demand_rps=demand,
        forecast_rps=predicted,
        reasons=tuple(reasons),
        budget_binding=limited.budget_binding,
    )
    return decision, PolicyState(memory=memory, recommendations=history, released=released)
