"""The node lifecycle: one transition table, `TABLE[(status, event)] -> Row(after, reason, action)`.

`sync` names the event each record's observation shows and moves it by the table; `plan` does the same for
the decision's scale ups and downs, then derives the node sets, drains and replica counts the tick acts on.
A move the table lacks is a bug and raises KeyError.

```
requested -> provisioning -> ready -> draining -> releasing -> released
    └──────────┴──> failed -> releasing
```
A node leaves its pool's desired set only in `releasing`, after its pods are gone or the drain timeout
passed; a node the stack holds but the table does not is adopted, never dropped (dropping it from the
desired set would delete an instance that may serve).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from controller.core import model

S = model.NodeStatus


@dataclass(frozen=True, slots=True)
class Timeouts:
    boot_s: float = 900.0
    """A node not ready this long after its request failed (Cluster Autoscaler's max-node-provision-time)."""
    drain_s: float = 600.0
    """Pods still on a draining node after this long are left to the kubelet's own grace period."""


class Event(enum.Enum):
    """What a tick saw, or decided, about one node."""

    SCALE_UP = "scale_up"
    """The decision wants more nodes in the pool than it has active."""
    ADOPTED = "adopted"
    """The pool's stack holds an instance the table does not know."""
    CREATED = "created"
    """The instance is in the pool's stack."""
    JOINED = "joined"
    """The node is in the cluster and ready."""
    APPLY_FAILED = "apply_failed"
    """The apply that was to create the instance failed."""
    BOOT_TIMEOUT = "boot_timeout"
    """Not ready within `Timeouts.boot_s` of the request."""
    VANISHED = "vanished"
    """The instance left the stack while no apply ran (interrupted, or deleted behind the stack's back)."""
    LEFT_CLUSTER = "left_cluster"
    """The cluster was read and the node is not in it."""
    INTERRUPTED = "interrupted"
    """The node carries an interruption taint."""
    SCALE_DOWN = "scale_down"
    """The decision wants fewer active nodes; this one goes (not-yet-serving ones first)."""
    OPERATOR_DRAIN = "operator_drain"
    """An operator asked to drain and release this node."""
    DRAINED = "drained"
    """No pods left on the node, or the node left the cluster."""
    DRAIN_TIMEOUT = "drain_timeout"
    """Pods still on the node after `Timeouts.drain_s`."""
    NEXT_TICK = "next_tick"
    """A tick passed: a failed node is released."""
    GONE = "gone"
    """The instance is out of the stack and out of the last submitted node set."""


@dataclass(frozen=True, slots=True)
class Row:
    after: model.NodeStatus
    reason: str
    """The audit log's reason; `{message}`, `{boot_s}` and `{drain_s}` are filled in."""
    action: str
    """What the tick does about the node from here on."""


_LAUNCH = "in the pool's desired set: the next apply launches it"
_SERVE = "in the desired set; gets replicas"
_DRAIN = "cordoned, its pods evicted; still in the desired set"
_RELEASE = "leaves the pool's desired set: the next apply deletes it"
_FORGET = "leaves the table on the next tick; the audit log keeps its history"

TABLE: Final[Mapping[tuple[model.NodeStatus | None, Event], Row]] = {
    (None, Event.SCALE_UP): Row(S.REQUESTED, "scale up", _LAUNCH),
    (None, Event.ADOPTED): Row(S.PROVISIONING, "adopted: in the stack but not in the store", _LAUNCH),
    (S.REQUESTED, Event.CREATED): Row(S.PROVISIONING, "instance created", _LAUNCH),
    (S.REQUESTED, Event.JOINED): Row(S.READY, "node joined and ready", _SERVE),
    (S.PROVISIONING, Event.JOINED): Row(S.READY, "node joined and ready", _SERVE),
    (S.REQUESTED, Event.APPLY_FAILED): Row(S.FAILED, "apply failed: {message}", _RELEASE),
    (S.REQUESTED, Event.BOOT_TIMEOUT): Row(S.FAILED, "not ready within {boot_s:.0f} s", _RELEASE),
    (S.PROVISIONING, Event.BOOT_TIMEOUT): Row(S.FAILED, "not ready within {boot_s:.0f} s", _RELEASE),
    (S.PROVISIONING, Event.VANISHED): Row(S.FAILED, "instance vanished while provisioning", _RELEASE),
    (S.READY, Event.VANISHED): Row(S.FAILED, "instance vanished (interrupted or deleted)", _RELEASE),
    (S.READY, Event.LEFT_CLUSTER): Row(S.FAILED, "node left the cluster", _RELEASE),
    (S.READY, Event.INTERRUPTED): Row(S.DRAINING, "interruption notice", _DRAIN),
    (S.READY, Event.SCALE_DOWN): Row(S.DRAINING, "scale down", _DRAIN),
    (S.REQUESTED, Event.SCALE_DOWN): Row(S.RELEASING, "scale down", _RELEASE),
    (S.PROVISIONING, Event.SCALE_DOWN): Row(S.RELEASING, "scale down", _RELEASE),
    (S.READY, Event.OPERATOR_DRAIN): Row(S.DRAINING, "operator drain", _DRAIN),
    (S.REQUESTED, Event.OPERATOR_DRAIN): Row(S.RELEASING, "operator drain", _RELEASE),
    (S.PROVISIONING, Event.OPERATOR_DRAIN): Row(S.RELEASING, "operator drain", _RELEASE),
    (S.DRAINING, Event.DRAINED): Row(S.RELEASING, "drained", _RELEASE),
    (S.DRAINING, Event.VANISHED): Row(S.RELEASING, "instance gone while draining", _RELEASE),
    (S.DRAINING, Event.DRAIN_TIMEOUT): Row(S.RELEASING, "drain timeout {drain_s:.0f} s", _RELEASE),
    (S.FAILED, Event.NEXT_TICK): Row(S.RELEASING, "failed node released", _RELEASE),
    (S.RELEASING, Event.GONE): Row(S.RELEASED, "instance gone", _FORGET),
}
"""Every move a node record makes; `None` is a node the table does not know yet."""


def _move(
    rec: model.NodeRecord, event: Event, at: float, out: list[model.Transition], **details: object
) -> model.NodeRecord:
    row = TABLE[(rec.status, event)]
    reason = row.reason.format(**details)
    out.append(model.Transition(at, rec.name, rec.pool, rec.status, row.after, reason))
    ready_at = at if row.after is S.READY else rec.ready_at
    return replace(rec, status=row.after, since=at, reason=reason, ready_at=ready_at)


def _enter(name: str, pool: str, event: Event, at: float, out: list[model.Transition]) -> model.NodeRecord:
    """A record for a node the table did not know."""
    row = TABLE[(None, event)]
    out.append(model.Transition(at, name, pool, None, row.after, row.reason))
    return model.NodeRecord(name, pool, row.after, at, at, reason=row.reason)


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
                    new[name] = _enter(name, pool_name, Event.ADOPTED, now, out)
    return new, tuple(out)


@dataclass(frozen=True, slots=True)
class _Evidence:
    """What one tick's reads say about one record's node."""

    pool: model.PoolState | None
    node: model.ClusterNode | None
    in_stack: bool | None
    """None when the stack could not be read."""
    vanished: bool
    """The stack no longer has it and no apply is under way."""
    gone_from_cluster: bool


_Step = tuple[Event, dict[str, object]] | None
"""The event a record meets this tick (with the reason's figures), or None."""


def _booting(rec: model.NodeRecord, now: float, ev: _Evidence, timeouts: Timeouts) -> _Step:
    pool = ev.pool
    if rec.status is S.PROVISIONING and ev.vanished:
        return Event.VANISHED, {}
    if (
        rec.status is S.REQUESTED
        and pool is not None
        and pool.apply is model.ApplyState.FAILED
        and pool.submitted is not None
        and rec.name in pool.submitted
        and not ev.in_stack
    ):
        return Event.APPLY_FAILED, {"message": pool.message}
    if now - rec.requested_at > timeouts.boot_s:
        return Event.BOOT_TIMEOUT, {"boot_s": timeouts.boot_s}
    return None


def _ready(ev: _Evidence) -> _Step:
    if ev.vanished:
        return Event.VANISHED, {}
    if ev.gone_from_cluster:
        return Event.LEFT_CLUSTER, {}
    if ev.node is not None and ev.node.interrupting:
        return Event.INTERRUPTED, {}
    return None


def _draining(rec: model.NodeRecord, now: float, ev: _Evidence, timeouts: Timeouts) -> _Step:
    if ev.gone_from_cluster or (ev.node is not None and ev.node.pods == 0):
        return Event.DRAINED, {}
    if ev.pool is not None and ev.in_stack is False:
        return Event.VANISHED, {}
    if now - rec.since > timeouts.drain_s:
        return Event.DRAIN_TIMEOUT, {"drain_s": timeouts.drain_s}
    return None


def _releasing(rec: model.NodeRecord, ev: _Evidence) -> _Step:
    pool = ev.pool
    if pool is None or ev.in_stack or pool.apply is model.ApplyState.BUSY:
        return None
    return None if pool.submitted is not None and rec.name in pool.submitted else (Event.GONE, {})


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
    in_stack = None if pool is None else rec.name in pool.instances
    ev = _Evidence(
        pool,
        node,
        in_stack,
        vanished=pool is not None and in_stack is False and pool.apply is not model.ApplyState.BUSY,
        gone_from_cluster=cluster_read and node is None,
    )
    st = rec.status
    step: _Step = None
    if st is S.REQUESTED or st is S.PROVISIONING:
        if node is not None and node.ready:
            return _move(rec, Event.JOINED, now, out)
        if st is S.REQUESTED and in_stack:
            rec = _move(rec, Event.CREATED, now, out)  # and it may time out in the same tick
            step = _booting(rec, now, replace(ev, vanished=False), timeouts)
        else:
            step = _booting(rec, now, ev, timeouts)
    elif st is S.READY:
        step = _ready(ev)
    elif st is S.DRAINING:
        step = _draining(rec, now, ev, timeouts)
    elif st is S.FAILED:
        step = Event.NEXT_TICK, {}
    elif st is S.RELEASING:
        step = _releasing(rec, ev)
    if step is None:
        return rec
    event, figures = step
    return _move(rec, event, now, out, **figures)


def drain_named(
    records: Mapping[str, model.NodeRecord], names: Iterable[str], *, at: float
) -> tuple[dict[str, model.NodeRecord], tuple[model.Transition, ...]]:
    """Move the named nodes that are still active out of service; names already leaving, or unknown,
    are left alone (the request was honoured earlier, or the node is gone)."""
    out: list[model.Transition] = []
    new = dict(records)
    for name in names:
        rec = new.get(name)
        if rec is not None and rec.status in model.ACTIVE:
            new[name] = _move(rec, Event.OPERATOR_DRAIN, at, out)
    return new, tuple(out)


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
                new[name] = _enter(name, pool.name, Event.SCALE_UP, now, out)
        elif want < len(active):
            victims = sorted(active, key=lambda r: (_RELEASE_ORDER[r.status], -r.since, r.name))
            for rec in victims[: len(active) - want]:
                new[rec.name] = _move(rec, Event.SCALE_DOWN, now, out)

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
