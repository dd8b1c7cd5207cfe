"""The orphan audit: nodes the cloud and the cluster disagree about, reported and never deleted.

Two kinds, each a way money or capacity leaks without the lifecycle noticing:
- `cloud_not_in_cluster`: an instance in a pool's stack that never joined (or left) the cluster past
  the grace time: it bills and serves nothing (a bad join token, a broken image, a kubelet that died).
- `cluster_not_in_stack`: a burst-labelled node that no managed stack holds: launched by hand, left
  behind by a stack that lost track, or a Node object whose instance is long gone.

Deleting either is a person's call (the instance may be someone's debugging session), so the audit
only reports: a gauge per kind, a log line and an audit row when one appears or clears.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller import ports
from controller.core import model
from controller.runtime import logs, telemetry

log = logs.get("orphans")

CLOUD_NOT_IN_CLUSTER = "cloud_not_in_cluster"
CLUSTER_NOT_IN_STACK = "cluster_not_in_stack"
KINDS = (CLOUD_NOT_IN_CLUSTER, CLUSTER_NOT_IN_STACK)

_ON_ITS_WAY_OUT = frozenset({model.NodeStatus.RELEASING, model.NodeStatus.RELEASED})


@dataclass(frozen=True, slots=True)
class Orphan:
    kind: str
    node: str
    pool: str
    detail: str


def find(
    *,
    cluster: Mapping[str, model.ClusterNode],
    pools: Mapping[str, model.PoolState],
    records: Mapping[str, model.NodeRecord],
    now: float,
    grace_s: float,
) -> tuple[Orphan, ...]:
    """Orphans in one consistent read of the stacks, the cluster and the lifecycle table.

    A pool whose apply is in flight is skipped: its instance list is about to change. A node without a
    record is left to the next tick, which adopts it and starts its grace time.
    """
    busy = {name for name, st in pools.items() if st.apply is model.ApplyState.BUSY}
    in_stack = {node: pool for pool, st in pools.items() for node in st.instances}
    out: list[Orphan] = []
    for node, pool in sorted(in_stack.items()):
        rec = records.get(node)
        if node in cluster or pool in busy or rec is None or rec.status in _ON_ITS_WAY_OUT:
            continue
        age = now - rec.requested_at
        if age < grace_s:
            continue
        state = pools[pool].instances[node]
        out.append(
            Orphan(
                CLOUD_NOT_IN_CLUSTER,
                node,
                pool,
                f"instance {state} in stack {pool} for {age:.0f} s (record {rec.status.value}), "
                "not in the cluster",
            )
        )
    for node, cn in sorted(cluster.items()):
        if node in in_stack or cn.pool in busy:
            continue
        rec = records.get(node)
        if rec is not None and rec.status in _ON_ITS_WAY_OUT and now - rec.since < grace_s:
            continue  # the Node object outlives its instance by a little
        if cn.pool not in pools:
            why = f"pool {cn.pool or '(no pool label)'} is not managed by this controller"
        else:
            why = f"not in stack {cn.pool}" + (f" (record {rec.status.value})" if rec is not None else "")
        out.append(Orphan(CLUSTER_NOT_IN_STACK, node, cn.pool, f"burst node in the cluster, {why}"))
    return tuple(out)


class OrphanAudit:
    """The audit job's body: read, compare, report changes."""

    def __init__(
        self,
        pools: Sequence[str],
        *,
        cluster: ports.Cluster,
        capacity: ports.Capacity,
        store: ports.Store,
        clock: ports.Clock,
        telemetry: telemetry.Telemetry | None = None,
        grace_s: float,
        record: Recorder | None = None,
    ) -> None:
        self.pools = tuple(pools)
        self.cluster = cluster
        self.capacity = capacity
        self.store = store
        self.clock = clock
        self.telemetry = telemetry
        self.grace_s = grace_s
        self.record = record
        self.current: dict[tuple[str, str], Orphan] = {}

    def run(self) -> tuple[Orphan, ...]:
        """One audit; raises when the cluster, a stack or the store cannot be read (nothing is concluded)."""
        now = self.clock.now()
        cluster = self.cluster.burst_nodes()
        pools = {p: self.capacity.state(p) for p in self.pools}
        records = self.store.load().records
        found = find(cluster=cluster, pools=pools, records=records, now=now, grace_s=self.grace_s)
        latest = {(o.kind, o.node): o for o in found}
        for key, o in sorted(latest.items()):
            if key not in self.current:
                log.warning(
                    "orphan node", extra={"kind": o.kind, "node": o.node, "pool": o.pool, "detail": o.detail}
                )
                if self.record is not None:
                    self.record(now, "orphan", [f"{o.kind}: {o.detail}"], node=o.node, pool=o.pool)
        for key, o in sorted(self.current.items()):
            if key not in latest:
                log.info("orphan resolved", extra={"kind": o.kind, "node": o.node, "pool": o.pool})
                if self.record is not None:
                    self.record(now, "orphan_resolved", [o.kind], node=o.node, pool=o.pool)
        self.current = latest
        if self.telemetry is not None:
            for kind in KINDS:
                self.telemetry.set_orphans(kind, sum(1 for o in found if o.kind == kind))
        return found


class Recorder(Protocol):
    """Where audit rows go: `SqliteStore.record`."""

    def __call__(
        self, at: float, kind: str, details: list[str], *, node: str | None = None, pool: str | None = None
    ) -> None: ...
