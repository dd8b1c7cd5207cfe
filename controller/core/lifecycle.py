"""The node lifecycle table: `sync` moves records from what was observed, `plan` turns a decision into
the records, node sets, drains and replica counts the tick will act on.

```
requested -> provisioning -> ready -> draining -> releasing -> released
    └──────────┴──> failed -> releasing
```
A node leaves its pool's desired set only in `releasing`, after its pods are gone or the drain timeout
passed; a node the stack holds but the table does not is adopted, never dropped (dropping it from the
desired set would delete an instance that may serve).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from controller.core import model

S = model.NodeStatus


@dataclass(frozen=True, slots=True)
class Timeouts:
    boot_s: float = 900.0
    """A node not ready this long after its request failed (Cluster Autoscaler's max-node-provision-time)."""
    drain_s: float = 600.0
    """Pods still on a draining node after this long are left to the kubelet's own grace period."""


def _move(
    rec: model.NodeRecord, status: model.NodeStatus, at: float, reason: str, out: list[model.Transition]
) -> model.NodeRecord:
    out.append(model.Transition(at, rec.name, rec.pool, rec.status, status, reason))
    ready_at = at if status is S.READY else rec.ready_at
    return replace(rec, status=status, since=at, reason=reason, ready_at=ready_at)


def sync(
    records: Mapping[str, model.NodeRecord],
    obs: model.Observation,
    *,
    timeouts: Timeouts,
) -> tuple[dict[str, model.NodeRecord], tuple[model.Transition, ...]]:
    """Advance every record from the parts of the world this tick managed to read.

    A part that could not be read (cluster or stacks None) moves nothing: absence of evidence is not
    evidence that a node vanished. Records released on the previous tick leave the table.
    """
    now = obs.at
    out: list[model.Transition] = []
    new: dict[str, model.NodeRecord] = {}
    cluster, pools = obs.cluster, obs.pools
    for name, rec in records.items():
        if rec.status is S.RELEASED:
            continue  # released last tick: the instance is gone and the audit log holds its history
        pool = pools.get(rec.pool) if pools is not None else None
        node = cluster.get(name) if cluster is not None else None
        new[name] = _advance(
            rec, now, pool=pool, node=node, cluster_read=cluster is not None, timeouts=timeouts, out=out
        )
    if pools is not None:
        for pool_name, pool_state in pools.items():
            for name in pool_state.instances:
                if name not in new:
                    rec = model.NodeRecord(name, pool_name, S.PROVISIONING, now, now)
                    new[name] = _move_new(rec, "adopted: in the stack but not in the store", out)
    return new, tuple(out)


def _advance(
    rec: model.NodeRecord,
    now: float,
    *,
    pool: model.PoolState | None,
    node: model.ClusterNode | None,
    cluster_read: bool,
    timeouts: Timeouts,
    out: list[model.Transition],
) -> model.NodeRecord:
    """One record's next status; `pool`/`node` None with the read failed means: no evidence either way."""
    st = rec.status
    in_stack = None if pool is None else rec.name in pool.instances
    vanished = pool is not None and in_stack is False and pool.apply is not model.ApplyState.BUSY
    gone_from_cluster = cluster_read and node is None
    if st is S.REQUESTED or st is S.PROVISIONING:
        if node is not None and node.ready:
            return _move(rec, S.READY, now, "node joined and ready", out)
        if st is S.REQUESTED and in_stack:
            rec = _move(rec, S.PROVISIONING, now, "instance created", out)
        elif st is S.PROVISIONING and vanished:
            return _move(rec, S.FAILED, now, "instance vanished while provisioning", out)
        elif (
            st is S.REQUESTED
            and pool is not None
            and pool.apply is model.ApplyState.FAILED
            and pool.submitted is not None
            and rec.name in pool.submitted
            and not in_stack
        ):
            return _move(rec, S.FAILED, now, f"apply failed: {pool.message}", out)
        if now - rec.requested_at > timeouts.boot_s:
            return _move(rec, S.FAILED, now, f"not ready within {timeouts.boot_s:.0f} s", out)
        return rec
    if st is S.READY:
        if vanished:
            return _move(rec, S.FAILED, now, "instance vanished (interrupted or deleted)", out)
        if gone_from_cluster:
            return _move(rec, S.FAILED, now, "node left the cluster", out)
        if node is not None and node.interrupting:
            return _move(rec, S.DRAINING, now, "interruption notice", out)
        return rec
    if st is S.DRAINING:
        if gone_from_cluster or (node is not None and node.pods == 0):
            return _move(rec, S.RELEASING, now, "drained", out)
        if pool is not None and in_stack is False:
            return _move(rec, S.RELEASING, now, "instance gone while draining", out)
        if now - rec.since > timeouts.drain_s:
            return _move(rec, S.RELEASING, now, f"drain timeout {timeouts.drain_s:.0f} s", out)
        return rec
    if st is S.FAILED:
        return _move(rec, S.RELEASING, now, "failed node released", out)
    if st is S.RELEASING and pool is not None and not in_stack:
        submitted = pool.submitted
        if pool.apply is not model.ApplyState.BUSY and (submitted is None or rec.name not in submitted):
            return _move(rec, S.RELEASED, now, "instance gone", out)
    return rec


def _move_new(rec: model.NodeRecord, reason: str, out: list[model.Transition]) -> model.NodeRecord:
    out.append(model.Transition(rec.since, rec.name, rec.pool, None, rec.status, reason))
    return replace(rec, reason=reason)


def counts(records: Iterable[model.NodeRecord], statuses: frozenset[model.NodeStatus]) -> dict[str, int]:
    """Nodes per pool whose status is in `statuses`."""
    out: dict[str, int] = {}
    for rec in records:
        if rec.status in statuses:
            out[rec.pool] = out.get(rec.pool, 0) + 1
    return out


def tally(records: Iterable[model.NodeRecord]) -> dict[str, dict[model.NodeStatus, int]]:
    """Nodes per pool and status (released ones included), in one pass."""
    out: dict[str, dict[model.NodeStatus, int]] = {}
    for rec in records:
        by_status = out.setdefault(rec.pool, {})
        by_status[rec.status] = by_status.get(rec.status, 0) + 1
    return out


def of(
    tallied: Mapping[str, Mapping[model.NodeStatus, int]], statuses: frozenset[model.NodeStatus]
) -> dict[str, int]:
    """Per-pool totals over `statuses` from a tally."""
    return {pool: sum(n for st, n in by.items() if st in statuses) for pool, by in tallied.items()}


LEAVING = model.BILLING - model.ACTIVE


# Cancelling a node that is not serving yet costs nothing it has not already cost; a ready node goes last.
_RELEASE_ORDER = {S.REQUESTED: 0, S.PROVISIONING: 1, S.READY: 2}


def plan(
    records: Mapping[str, model.NodeRecord],
    decision: model.Decision,
    *,
    workloads: Sequence[model.WorkloadSpec],
    pools: Sequence[model.PoolSpec],
    cluster: Mapping[str, model.ClusterNode] | None,
) -> model.Plan:
    """Launch or release nodes to meet the decision's targets; derive node sets, drains and replicas."""
    now = decision.at
    out: list[model.Transition] = []
    new = dict(records)
    for pool in pools:
        active = [r for r in records.values() if r.pool == pool.name and r.status in model.ACTIVE]
        want = decision.target_nodes.get(pool.name, len(active))
        if want > len(active):
            for name in _fresh_names(pool.name, int(now), want - len(active), taken=new):
                rec = model.NodeRecord(name, pool.name, S.REQUESTED, now, now)
                new[name] = _move_new(rec, "scale up", out)
        elif want < len(active):
            victims = sorted(active, key=lambda r: (_RELEASE_ORDER[r.status], -r.since, r.name))
            for rec in victims[: len(active) - want]:
                status = S.DRAINING if rec.status is S.READY else S.RELEASING
                new[rec.name] = _move(rec, status, now, "scale down", out)

    hold = decision.action is model.Action.HOLD
    desired = {
        p.name: tuple(sorted(r.name for r in new.values() if r.pool == p.name and r.status in model.IN_STACK))
        for p in pools
    }
    draining = sorted(r.name for r in new.values() if r.status is S.DRAINING)
    cordon = tuple(n for n in draining if cluster is None or not _cordoned(cluster, n))
    drain = tuple(n for n in draining if cluster is None or _pods(cluster, n) > 0)
    return model.Plan(
        records=new,
        transitions=tuple(out),
        desired=desired,
        cordon=cordon,
        drain=drain,
        # Holding leaves replica counts as they are: the view that would justify new ones is missing.
        replicas={} if hold else replicas(new.values(), decision, workloads=workloads, pools=pools),
    )


def _fresh_names(pool: str, stamp: int, n: int, *, taken: Mapping[str, object]) -> list[str]:
    """Names unique in the table; the request time makes them unique across restarts too."""
    names: list[str] = []
    i = 0
    while len(names) < n:
        name = f"{pool}-{stamp}-{i}"
        if name not in taken:
            names.append(name)
        i += 1
    return names


def _cordoned(cluster: Mapping[str, model.ClusterNode], name: str) -> bool:
    node = cluster.get(name)
    return node is None or node.cordoned


def _pods(cluster: Mapping[str, model.ClusterNode], name: str) -> int:
    node = cluster.get(name)
    return 0 if node is None else node.pods


def replicas(
    records: Iterable[model.NodeRecord],
    decision: model.Decision,
    *,
    workloads: Sequence[model.WorkloadSpec],
    pools: Sequence[model.PoolSpec],
) -> dict[tuple[str, str], int]:
    """Burst replicas per (workload, pool): one per GPU of the pool's active nodes.

    Replicas for nodes still booting are pending pods pinned to their pool (the burst taint keeps anything
    else off), so they start the moment the node joins instead of a tick later. Draining nodes get none:
    their pods are the ones that leave. With several workloads, GPUs go to each in name order up to its
    burst need.
    """
    gpus = {p.name: 0 for p in pools}
    per_node = {p.name: p.gpus_per_node for p in pools}
    for rec in records:
        if rec.status in model.ACTIVE and rec.pool in gpus:
            gpus[rec.pool] += per_node[rec.pool]
    names = sorted(w.name for w in workloads)
    if len(names) == 1:
        return {(names[0], p): n for p, n in gpus.items()}
    specs = {w.name: w for w in workloads}
    out = {(w, p.name): 0 for w in names for p in pools}
    for w in names:
        need = max(0, decision.target_gpus.get(w, specs[w].private_gpus) - specs[w].private_gpus)
        for p in pools:
            take = min(need, gpus[p.name])
            out[(w, p.name)] += take
            gpus[p.name] -= take
            need -= take
    # GPUs kept through a stabilization window still serve: hand them round the workloads.
    for p in pools:
        for i in range(gpus[p.name]):
            out[(names[i % len(names)], p.name)] += 1
    return out
