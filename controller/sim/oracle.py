"""The clairvoyant oracle: the cost floor of keeping every request within the SLO (`docs/baselines.md`).

Per second it needs r(t) = ceil(a(t) / gpu_rps) GPUs; cloud node slot k is needed wherever
b(t) = ceil(max(0, r(t) - private) / gpus_per_node) >= k. Each slot's runs are merged across gaps of at
most boot_s (an idle node is cheaper than a relaunch), billed from boot_s before the run to its end, at
least the billing minimum, at the price of the cheapest pool with room for slot k. Spot interruptions
are ignored. Billing that would start before the trace starts at t = 0, so the timeseries columns
reproduce the cost.

The lagged oracle (`lagged-oracle`) is an informed contender one boot late: it knows the true per-second
demand as it happens, not before, and a node it launches serves boot_s later and bills from that
launch. It keeps, for each second, the highest need of the boot before the need could be met
(ready(t) = max of need over [t - 2 boot_s, t - boot_s]): what it saw within a boot may come back
before a relaunch could serve. Its attainment says where an SLO is reachable by seeing demand
perfectly but late; above it, a contender is forecasting.
"""

from __future__ import annotations

import math

import numpy as np

from controller.core import capacity
from controller.sim import engine, queue, scenario


def slot_runs(needed: np.ndarray, k: int, *, boot_s: float) -> list[tuple[int, int]]:
    """[start, end) runs of the seconds where `needed >= k`, merged across gaps of at most boot_s."""
    on = np.concatenate(([False], needed >= k, [False]))
    edges = np.flatnonzero(on[1:] != on[:-1])
    starts, ends = edges[0::2], edges[1::2]
    runs: list[tuple[int, int]] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if runs and s - runs[-1][1] <= boot_s:
            runs[-1] = (runs[-1][0], e)
        else:
            runs.append((s, e))
    return runs


def lagged(sc: scenario.Scenario) -> engine.Run:
    """The informed contender lagged by one boot (see the module docstring)."""
    return run(sc, lag=True)


def _rolling_max(a: np.ndarray, window: int) -> np.ndarray:
    """max(a[i - window + 1 .. i]) for every i, by doubling spans (O(n log window))."""
    out = a.copy()
    span = 1
    while span < window:
        step = min(span, window - span)
        out[step:] = np.maximum(out[step:], out[:-step])
        span += step
    return out


def _shifted(needed: np.ndarray, lag_s: int) -> np.ndarray:
    out = np.zeros_like(needed)
    if lag_s < len(needed):
        out[lag_s:] = needed[: len(needed) - lag_s]
    return out


def run(sc: scenario.Scenario, *, lag: bool = False) -> engine.Run:
    n = sc.duration_s
    w = sc.workload
    gpus_needed = np.ceil(sc.arrivals / w.gpu_rps - 1e-9).astype(np.int64)
    pools = capacity.by_price(sc.pool_specs)
    gpn = pools[0].gpus_per_node
    if any(p.gpus_per_node != gpn for p in pools):
        raise ValueError("the oracle assumes one node size across pools")
    nodes_needed = -(-np.maximum(0, gpus_needed - w.private_gpus) // gpn)
    # Slot k goes to the cheapest pool that still has room for it.
    slot_pool: list[tuple[str, float, float]] = []
    for p in pools:
        slot_pool.extend([(p.name, p.price_per_hour, p.boot_s)] * p.max_nodes)
    top = int(nodes_needed.max(initial=0))
    ready_nodes = np.zeros(n + 1, dtype=np.int64)
    billed = np.zeros(n + 1, dtype=np.int64)
    usd = np.zeros(n, dtype=np.float64)
    launches = 0
    max_alive = 0
    for k in range(1, min(top, len(slot_pool)) + 1):
        _pool, price, boot_s = slot_pool[k - 1]
        per_slot = np.zeros(n + 1, dtype=np.int64)
        lag_s = math.ceil(boot_s)
        needed = _shifted(_rolling_max(nodes_needed, max(1, lag_s)), lag_s) if lag else nodes_needed
        # The lagged policy cannot know a gap will be short: it bridges only what its hold covers.
        for start, end in slot_runs(needed, k, boot_s=0 if lag else boot_s):
            launches += 1
            ready_nodes[start] += 1
            ready_nodes[end] -= 1
            bill_from = max(0, int(start - boot_s))
            bill_to = min(n, bill_from + max(end - bill_from, math.ceil(sc.billing_minimum_s)))
            g = sc.billing_granularity_s
            bill_to = min(n, bill_from + math.ceil((bill_to - bill_from) / g) * g)
            per_slot[bill_from] += 1
            per_slot[bill_to] -= 1
        slot_billed = np.cumsum(per_slot)[:n]
        billed[:n] += slot_billed
        usd += slot_billed * price
        max_alive = k
    ready = w.private_gpus + np.cumsum(ready_nodes)[:n] * gpn
    q = queue.FluidQueue(service_s=w.service_time_s, slo_s=w.slo_s, timeout_s=sc.timeout_s)
    missed = [
        q.step_missed(a, g_ * w.gpu_rps) for a, g_ in zip(sc.arrivals.tolist(), ready.tolist(), strict=True)
    ]
    return engine.Run(
        contender="lagged-oracle" if lag else "oracle",
        arrivals=sc.arrivals,
        ready_gpus=ready,
        billed_nodes=billed[:n],
        usd_per_hour=usd,
        billed_gpus=billed[:n] * gpn,
        missed=np.asarray(missed),
        arrived=q.arrived,
        met=q.met,
        dropped=q.dropped,
        p99_latency_s=q.quantile(0.99),
        launches=launches,
        releases=launches,
        interruptions=0,
        max_burst_nodes=max_alive,
    )
