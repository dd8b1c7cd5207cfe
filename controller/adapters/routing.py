"""Routing: one port over several per-pool adapters, for controllers whose pools differ in adapter settings.

`PoolRouter` is the Capacity port over the adapters that each own some pools; `ClusterRouter` is the
Cluster port over per-pool clusters whose nodes are each known to one of them (the local workers' tables).
"""

from __future__ import annotations

from collections.abc import Mapping

from controller import ports
from controller.core import model


class PoolRouter:
    """The Capacity port over adapters that each own some pools (pools grouped by adapter settings)."""

    def __init__(self, by_pool: Mapping[str, ports.Capacity]) -> None:
        self.by_pool = dict(by_pool)

    def state(self, pool: str) -> model.PoolState:
        return self._of(pool).state(pool)

    def submit(self, pool: str, nodes: tuple[str, ...]) -> None:
        self._of(pool).submit(pool, nodes)

    def _of(self, pool: str) -> ports.Capacity:
        try:
            return self.by_pool[pool]
        except KeyError:
            raise KeyError(f"unknown pool {pool!r} (pools: {sorted(self.by_pool)})") from None


class ClusterRouter:
    """The Cluster port over per-pool clusters (an adapter shared by pools counts once)."""

    def __init__(self, by_pool: Mapping[str, ports.Cluster]) -> None:
        self.by_pool = dict(by_pool)
        self.adapters = list({id(a): a for a in by_pool.values()}.values())

    def burst_nodes(self) -> Mapping[str, model.ClusterNode]:
        out: dict[str, model.ClusterNode] = {}
        for adapter in self.adapters:
            out.update(adapter.burst_nodes())
        return out

    def cordon(self, node: str) -> None:
        for adapter in self.adapters:  # a node unknown to an adapter is a no-op there
            adapter.cordon(node)

    def drain(self, node: str) -> int:
        return sum(adapter.drain(node) for adapter in self.adapters)

    def set_replicas(self, workload: str, pool: str, replicas: int) -> None:
        self.by_pool[pool].set_replicas(workload, pool, replicas)
