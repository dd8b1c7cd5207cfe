"""The one place where per-pool limits and the money budget are enforced.

Every target node count passes through `enforce` before plan turns it into launches. Nodes that are
leaving (draining, releasing, failed) still bill and still sit in the stack, so they count against both
the pool's `max_nodes` and the budget: the burn rate never exceeds the budget, even mid-release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.core import capacity, model


@dataclass(frozen=True, slots=True)
class Limited:
    target: dict[str, int]
    reasons: tuple[str, ...]
    budget_binding: bool
    cause: model.Cause | None = None
    """The most binding limit that changed the target, if any."""


def ceiling_of(pool: model.PoolSpec, *, active: int, leaving: int) -> int:
    """Active nodes a pool may have: leaving nodes count against `max_nodes` for launches, but never
    push out an active node the cap allows (else a cut to 1 drains all and relaunches one)."""
    return max(0, pool.max_nodes - leaving, min(active, pool.max_nodes))


def enforce(
    target: Mapping[str, int],
    pools: Sequence[model.PoolSpec],
    *,
    leaving: Mapping[str, int],
    active: Mapping[str, int],
    budget_usd_per_hour: float | None,
) -> Limited:
    """Clamp active-node targets to `[min_nodes, ceiling(...)]` per pool and to the budget.

    The budget wins over `min_nodes`: it is a hard cap on spending (configs where they conflict are
    rejected when loaded, so this only matters after a live budget override).
    """
    reasons: list[str] = []
    causes: set[model.Cause] = set()
    out: dict[str, int] = {}
    for pool in pools:
        want = max(0, int(target.get(pool.name, 0)))
        ceiling = ceiling_of(pool, active=active.get(pool.name, 0), leaving=leaving.get(pool.name, 0))
        clamped = min(max(want, pool.min_nodes), ceiling)
        if clamped < want:
            reasons.append(f"{pool.name}: capped at {clamped} nodes (max_nodes {pool.max_nodes})")
            causes.add(model.Cause.MAX_NODES)
        elif clamped > want:
            reasons.append(f"{pool.name}: held at min_nodes {pool.min_nodes}")
            causes.add(model.Cause.MIN_NODES)
        out[pool.name] = clamped
    binding = False
    if budget_usd_per_hour is not None:
        leaving_cost = sum(leaving.get(p.name, 0) * p.price_per_hour for p in pools)
        cost = leaving_cost + sum(out[p.name] * p.price_per_hour for p in pools)
        for pool in reversed(capacity.by_price(pools)):
            while out[pool.name] > 0 and cost > budget_usd_per_hour + 1e-9:
                out[pool.name] -= 1
                cost -= pool.price_per_hour
                binding = True
        if binding:
            causes.add(model.Cause.BUDGET)
            reasons.append(
                f"budget binds: {cost:.2f} of {budget_usd_per_hour:.2f} USD/h "
                f"({leaving_cost:.2f} on nodes already leaving)"
            )
    cause = min(causes, key=list(model.Cause).index) if causes else None
    return Limited(target=out, reasons=tuple(reasons), budget_binding=binding, cause=cause)


def usd_per_hour(counts: Mapping[str, int], pools: Sequence[model.PoolSpec]) -> float:
    return sum(counts.get(p.name, 0) * p.price_per_hour for p in pools)
