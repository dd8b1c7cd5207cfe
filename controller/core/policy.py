"""decide: how many cloud nodes each pool should have, from what the metrics say.

Pure: `decide(inputs, state, policy) -> (Decision, new_state)`. The live controller and the simulator
call this same function; the state it returns is all it remembers between ticks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.core import capacity, limits, model


@dataclass(frozen=True, slots=True)
class BurstPolicy:
    """The knobs of a burst policy (loaded from `policies/burst/*.yaml` at the edge)."""

    name: str = "default"
    target_utilization: float = 0.8
    """Fraction of a replica's sustained rate it is planned to carry; the rest absorbs noise."""
    scale_down_stabilization_s: float = 300.0
    """A release needs the lower target to have held this long (the highest recent target wins)."""
    backlog_drain_s: float = 60.0
    """A queue that built up gets extra GPUs sized to clear it within this time."""
    burst_tiers: frozenset[str] = frozenset(model.TIERS)
    """Tiers whose demand may buy cloud capacity; the others are served on what exists."""
    budget_usd_per_hour: float | None = None
    boot_timeout_s: float = 900.0
    drain_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What decide remembers: recent burst-GPU recommendations for the scale-down window."""

    recommendations: tuple[tuple[float, int], ...] = ()


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
    unavailable: frozenset[str] = frozenset()
    """Pools that refused capacity recently."""
    problems: tuple[str, ...] = field(default=())


def demand_for_burst(metrics: model.WorkloadMetrics, tiers: frozenset[str]) -> float:
    """The part of the demand allowed to buy cloud capacity."""
    rate = metrics.rate_rps or 0.0
    if tiers >= frozenset(model.TIERS) or not metrics.tier_rps:
        return rate
    return sum(v for t, v in metrics.tier_rps.items() if t in tiers)


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
    """Target tracking on observed demand with time-based scale-down stabilization."""
    if not inputs.synced:
        return _hold(inputs, state)
    reasons: list[str] = []
    demand: dict[str, float] = {}
    target_gpus: dict[str, int] = {}
    recommended = 0
    for w in inputs.workloads:
        m = inputs.metrics[w.name]
        rate = demand_for_burst(m, policy.burst_tiers)
        backlog = m.queue_depth or 0.0
        gpus = capacity.gpus_for(rate, w, utilization=policy.target_utilization)
        if backlog > 0:
            gpus += math.ceil(backlog / (w.gpu_rps * policy.backlog_drain_s))
        demand[w.name] = m.rate_rps or 0.0
        target_gpus[w.name] = max(gpus, w.private_gpus)
        recommended += max(0, gpus - w.private_gpus)
        reasons.append(
            f"{w.name}: {rate:.1f} req/s, queue {backlog:.0f} -> {gpus} GPUs ({w.private_gpus} private)"
        )

    window_start = inputs.at - policy.scale_down_stabilization_s
    history = (*(r for r in state.recommendations if r[0] > window_start), (inputs.at, recommended))
    have = sum(inputs.active.get(p.name, 0) * p.gpus_per_node for p in inputs.pools)
    if recommended >= have:
        burst = recommended
    else:
        burst = min(have, max(r for _, r in history))
        if burst > recommended:
            reasons.append(
                f"scale-down stabilization: keeping {burst} burst GPUs "
                f"(highest of the last {policy.scale_down_stabilization_s:.0f} s)"
            )

    room = {p.name: p.max_nodes - inputs.leaving.get(p.name, 0) for p in inputs.pools}
    available = {p.name: p.name not in inputs.unavailable for p in inputs.pools}
    for name in sorted(inputs.unavailable):
        reasons.append(f"{name}: unavailable (capacity refused), falling back")
    wanted = capacity.spread(burst, inputs.pools, active=inputs.active, available=available, room=room)
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
        forecast_rps=dict(demand),
        reasons=tuple(reasons),
        budget_binding=limited.budget_binding,
    )
    return decision, PolicyState(recommendations=history)
