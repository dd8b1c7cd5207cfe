"""Turning demand into GPUs, and GPUs into nodes per pool.

The sizing rule is the seed formula `instances = ceil(peak_rps x latency / per-instance concurrency)`:
by Little's law a replica that holds `concurrency` requests at once, each for `latency` seconds, serves
`concurrency / latency` requests per second, so the formula is the same as `ceil(rps / replica_rps)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from controller.core import model

_EPS = 1e-9


def instances_for(peak_rps: float, *, latency_s: float, concurrency: float) -> int:
    """The seed formula: replicas that keep `peak_rps` flowing when each holds `concurrency` requests."""
    if peak_rps <= 0:
        return 0
    if latency_s <= 0 or concurrency <= 0:
        raise ValueError("latency_s and concurrency must be positive")
    # The epsilon keeps 100.0000000001 (float noise) from buying a whole extra GPU.
    return math.ceil(peak_rps * latency_s / concurrency - _EPS)


def gpus_for(rps: float, workload: model.WorkloadSpec, *, utilization: float) -> int:
    """GPU replicas that carry `rps` while each runs at `utilization` of its sustained rate."""
    per_replica_concurrency = workload.gpu_rps * utilization * workload.service_time_s
    return instances_for(rps, latency_s=workload.service_time_s, concurrency=per_replica_concurrency)


def by_price(pools: Sequence[model.PoolSpec]) -> list[model.PoolSpec]:
    """Cheapest GPU first; spot before on-demand at equal price; then the order given."""
    return sorted(pools, key=lambda p: (p.price_per_gpu_hour, not p.spot))


def spread(
    burst_gpus: int,
    pools: Sequence[model.PoolSpec],
    *,
    active: Mapping[str, int],
    available: Mapping[str, bool],
    room: Mapping[str, int],
) -> dict[str, int]:
    """Active nodes per pool that give `burst_gpus`, moving as few nodes as possible.

    Growth goes to the cheapest available pool with room; shrinking takes from the dearest pool first,
    so on-demand leaves before spot. Existing nodes are never moved between pools.
    """
    target = {p.name: active.get(p.name, 0) for p in pools}
    have = sum(target[p.name] * p.gpus_per_node for p in pools)
    if burst_gpus > have:
        for pool in by_price(pools):
            if not available.get(pool.name, True):
                continue
            free = room.get(pool.name, pool.max_nodes) - target[pool.name]
            if free <= 0:
                continue
            add = min(free, math.ceil((burst_gpus - have) / pool.gpus_per_node))
            target[pool.name] += add
            have += add * pool.gpus_per_node
            if have >= burst_gpus:
                break
    elif burst_gpus < have:
        for pool in reversed(by_price(pools)):
            while target[pool.name] > 0 and have - pool.gpus_per_node >= burst_gpus:
                target[pool.name] -= 1
                have -= pool.gpus_per_node
    return target
