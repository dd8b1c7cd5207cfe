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
    ready: Mapping[str, int],
    available: Mapping[str, bool],
    room: Mapping[str, int],
) -> dict[str, int]:
    """Active nodes per pool that give `burst_gpus` from the cheapest pools that can take them.

    A pool that refuses capacity keeps what it has but does not grow, so the gap goes to the next pool
    (spot falls back to on-demand). When a cheaper pool can take nodes again, the work moves back to it,
    make-before-break: a dearer pool keeps the nodes that the cheaper pools' ready nodes cannot yet cover.
    """
    order = by_price(pools)
    ideal: dict[str, int] = {}
    left = burst_gpus
    for pool in order:
        want = math.ceil(max(0, left) / pool.gpus_per_node)
        cap = (
            room.get(pool.name, pool.max_nodes)
            if available.get(pool.name, True)
            else active.get(pool.name, 0)
        )
        ideal[pool.name] = max(0, min(want, cap))
        left -= ideal[pool.name] * pool.gpus_per_node
    target: dict[str, int] = {}
    covered = 0
    for pool in order:
        keep = min(active.get(pool.name, 0), math.ceil(max(0, burst_gpus - covered) / pool.gpus_per_node))
        target[pool.name] = max(ideal[pool.name], keep)
        covered += ready.get(pool.name, 0) * pool.gpus_per_node
    return {p.name: target[p.name] for p in pools}
