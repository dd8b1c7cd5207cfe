"""decide: how many cloud nodes each pool should have, now and for the next node boot.

Pure: `decide(inputs, state, policy) -> (Decision, new_state)`. The live controller and the simulator
call this same function; the state it returns is all it remembers between ticks.

One model, three steps:
- forecast (`forecast.py`): per workload, the demand one horizon ahead (the boot, the next tick, the
  rate window's lag) and a bound that covers `slo_target` of this workload's own forecast surprises,
  carried further into their tail where the error budget is overspent (`budget.py`);
- plan (`sizing.py`): GPUs that carry that bound, plus what a standing queue needs to drain;
- release (`release.py`): idle burst GPUs are kept until keeping them has cost a relaunch (while
  demand declines steadily, only for a rate window), and those bought ahead of a growth (a cold
  start's flash crowd) for a rate window after it stops;
then the limits (`limits.py`) and the spread over pools (`capacity.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.core import budget, capacity, forecast, limits, model, release, sizing


@dataclass(frozen=True, slots=True)
class BurstPolicy:
    """The knobs of a burst policy (loaded from `policies/burst/*.yaml` at the edge)."""

    name: str = "default"
    slo_target: float = 0.995
    """Share of requests to serve within the SLO: the forecast bound covers this share of surprises."""
    block_miss_share: float = 0.125
    """The share of a horizon's requests missed when demand exceeds its bound (a surprise is partly
    absorbed by the queue and the next tick's launches): bounds cover `1 - (1 - slo_target) / this` of
    the horizons."""
    target_utilization: float = 0.97
    """Fraction of a replica's sustained rate it is planned to carry at the bound."""
    trend_window_s: float = 300.0
    """How much recent demand the trend forecasters are fitted to."""
    level_window_s: float = 120.0
    """How much recent demand the robust level is the median of."""
    base_window_s: float = 900.0
    """How much recent demand the base level is the median of."""
    error_half_life_s: float = 6 * 3600.0
    """How fast old forecast errors fade."""
    slo_window_s: float = 28 * 86400.0
    """The window the SLO is judged over: misses older than this fade from the error budget."""
    min_errors: float = 5.0
    """Horizons of errors (decayed count) a forecaster needs before it is trusted."""
    cold_margin: float = 0.25
    """Log headroom over the highest simple forecast while no forecaster has enough errors."""
    peak_window_s: float = 3600.0
    """How long the highest demand is remembered."""
    peak_margin: float = 0.1
    """A bound goes at most this far (log) above the higher of its prediction and that peak."""
    horizon_extra_s: float = 15.0
    """Added to the boot time: the wait for the next tick."""
    seasonality: bool = True
    keep_factor: float = 1.0
    """Idle burst capacity is kept this many boots before it goes (1: the ski-rental break-even)."""
    backlog_drain_s: float = 30.0
    """A queue that built up gets extra capacity sized to clear it within this time."""
    burst_tiers: frozenset[str] = frozenset(model.TIERS)
    """Tiers whose demand may buy cloud capacity; the others are served on what exists."""
    budget_usd_per_hour: float | None = None
    boot_timeout_s: float = 900.0
    drain_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class PolicyState:
    models: Mapping[str, forecast.Model] = field(default_factory=dict)
    budgets: Mapping[str, budget.Budget] = field(default_factory=dict)
    """Per workload: the error budget spent (`budget.py`)."""
    recommendations: tuple[tuple[float, int], ...] = ()
    """(seen seconds, burst GPUs wanted) over the keep window."""
    clock: release.Clock | None = None
    growth: tuple[tuple[float, int], ...] = ()
    """(seen seconds, burst GPUs wanted with those bought ahead of a growth) over the last rate window:
    capacity ordered for a growth goes soon after the growth stops, but not on a single flat sample."""


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
    operator_hold: bool = False


def burstable_share(metrics: model.WorkloadMetrics, tiers: frozenset[str]) -> float:
    """The fraction of the demand allowed to buy cloud capacity (1 when tiers are not reported)."""
    if tiers >= frozenset(model.TIERS) or not metrics.tier_rps:
        return 1.0
    total = sum(metrics.tier_rps.values())
    if total <= 0:
        return 1.0
    return sum(v for t, v in metrics.tier_rps.items() if t in tiers) / total


def settings(policy: BurstPolicy, w: model.WorkloadSpec, *, window_s: float) -> forecast.Settings:
    return forecast.Settings(
        trend_window_s=policy.trend_window_s,
        level_window_s=policy.level_window_s,
        base_window_s=policy.base_window_s,
        half_life_s=policy.error_half_life_s,
        coverage=max(0.5, 1.0 - (1.0 - policy.slo_target) / policy.block_miss_share),
        min_errors=policy.min_errors,
        cold_margin=policy.cold_margin,
        peak_window_s=policy.peak_window_s,
        peak_margin=policy.peak_margin,
        floor_rps=w.gpu_rps,
        rate_window_s=window_s,
    )


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
        cause=model.Cause.OPERATOR_HOLD if inputs.operator_hold else model.Cause.UNSYNCED,
    )
    return decision, state


def _cause(
    limited: limits.Limited,
    inputs: DecisionInputs,
    *,
    kept: int,
    wanted: int,
    ahead: int,
    backlog: int,
    short: bool,
) -> model.Cause:
    if limited.cause is model.Cause.BUDGET:
        return limited.cause
    if inputs.unavailable:
        return model.Cause.CAPACITY_REFUSED
    if short or limited.cause is model.Cause.MAX_NODES:
        return model.Cause.MAX_NODES
    if kept > wanted + ahead:
        return model.Cause.STABILIZATION
    if limited.cause:
        return limited.cause
    return model.Cause.BACKLOG if backlog else model.Cause.GROWTH if ahead else model.Cause.DEMAND


def _needs(
    inputs: DecisionInputs, state: PolicyState, policy: BurstPolicy, *, boot_s: float
) -> tuple[list[sizing.Need], dict[str, forecast.Model], dict[str, budget.Budget]]:
    models, budgets = dict(state.models), dict(state.budgets)
    needs = []
    for w in inputs.workloads:
        m = inputs.metrics[w.name]
        need, models[w.name], budgets[w.name] = sizing.need(
            w, m, models.get(w.name, forecast.Model()), at=inputs.at,
            share=burstable_share(m, policy.burst_tiers),
            horizon_s=boot_s + policy.horizon_extra_s + m.window_s / 2,
            settings=settings(policy, w, window_s=m.window_s), seasonality=policy.seasonality,
            utilization=policy.target_utilization, drain_s=policy.backlog_drain_s,
            spent=budgets.get(w.name, budget.Budget()), slo_target=policy.slo_target,
            slo_window_s=policy.slo_window_s,
        )  # fmt: skip
        needs.append(need)
    return needs, models, budgets


def _action(before: int, after: int) -> model.Action:
    if after > before:
        return model.Action.SCALE_UP
    return model.Action.SCALE_DOWN if after < before else model.Action.STEADY


def decide(
    inputs: DecisionInputs, state: PolicyState, policy: BurstPolicy
) -> tuple[model.Decision, PolicyState]:
    if not inputs.synced:
        return _hold(inputs, state)
    available = [p for p in inputs.pools if p.name not in inputs.unavailable] or list(inputs.pools)
    boot = min((p.boot_s for p in available), default=0.0)
    needs, models, budgets = _needs(inputs, state, policy, boot_s=boot)
    wanted = sum(n.burst_gpus for n in needs)
    backlog = sum(n.backlog_gpus for n in needs)
    clock = release.advance(state.clock, inputs.at)
    have = sum(inputs.active.get(p.name, 0) * p.gpus_per_node for p in inputs.pools)
    keep_s = policy.keep_factor * boot + policy.horizon_extra_s
    window_s = max((inputs.metrics[w.name].window_s for w in inputs.workloads), default=0.0)
    held, history = release.hold(state.recommendations, clock, wanted=wanted, keep_s=keep_s)
    if needs and all(n.settled is not None for n in needs):
        settled = sum(n.settled or 0 for n in needs)
        held = release.settle(history, clock, held=held, settled=settled, window_s=window_s)
    ahead = sum(n.ahead_gpus for n in needs)
    growing, growth = release.hold(state.growth, clock, wanted=wanted + ahead, keep_s=window_s)
    kept = max(wanted, min(have, held), growing)
    reasons = [n.reason for n in needs]
    if kept > wanted + ahead:
        reasons.append(f"scale-down stabilization: keeping {kept} burst GPUs until idle for a boot")
    reasons.extend(f"{p}: unavailable (capacity refused), falling back" for p in sorted(inputs.unavailable))
    room = {
        p.name: limits.ceiling_of(
            p, active=inputs.active.get(p.name, 0), leaving=inputs.leaving.get(p.name, 0)
        )
        for p in inputs.pools
    }
    spread = capacity.spread(
        kept + backlog, inputs.pools, active=inputs.active, ready=inputs.ready,
        available={p.name: p.name not in inputs.unavailable for p in inputs.pools}, room=room,
    )  # fmt: skip
    short = sum(spread[p.name] * p.gpus_per_node for p in inputs.pools) < kept + backlog
    if short:
        reasons.append(f"max_nodes: the pools hold fewer than the {kept + backlog} burst GPUs wanted")
    limited = limits.enforce(
        spread, inputs.pools, leaving=inputs.leaving, active=inputs.active,
        budget_usd_per_hour=policy.budget_usd_per_hour,
    )  # fmt: skip
    reasons.extend(limited.reasons)
    by_name = dict(zip((w.name for w in inputs.workloads), needs, strict=True))
    decision = model.Decision(
        at=inputs.at,
        action=_action(sum(inputs.active.values()), sum(limited.target.values())),
        target_nodes=limited.target,
        target_gpus={name: n.gpus for name, n in by_name.items()},
        demand_rps={w.name: inputs.metrics[w.name].rate_rps or 0.0 for w in inputs.workloads},
        forecast_rps={name: n.forecast.bound_rps for name, n in by_name.items()},
        reasons=tuple(reasons),
        budget_binding=limited.budget_binding,
        cause=_cause(limited, inputs, kept=kept, wanted=wanted, ahead=ahead, backlog=backlog, short=short),
        figures={
            "wanted_burst_gpus": wanted,
            "ahead_gpus": ahead,
            "kept_burst_gpus": kept,
            "backlog_gpus": backlog,
        },
    )
    state = PolicyState(models=models, budgets=budgets, recommendations=history, clock=clock, growth=growth)
    return decision, state
