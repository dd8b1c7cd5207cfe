"""In-memory fakes for every port, faithful enough to run the real reconciler against.

`FakeInfra` is one world shared by `FakeCapacity` (the pool stacks) and `FakeCluster` (the Kubernetes
API): an instance launched by an apply joins the cluster `boot_s` later, runs the replicas scheduled on
it, and bills until it is gone. Tests script it; the simulator drives it second by second.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from controller import ports
from controller.core import model, policy

INTERRUPTION_NOTICE_S = 120.0


@dataclass
class FakeInstance:
    name: str
    pool: str
    gpus: int
    launched_at: float
    ready_at: float
    gone_at: float | None = None
    notice_at: float | None = None
    cordoned: bool = False
    pods: int = 0
    joins: bool = True
    """False makes the instance boot but never join the cluster (a broken AMI, a bad join token)."""
    ended: str = ""
    """Why it is gone: `released`, `interrupted` or `vanished`."""


@dataclass
class _PendingApply:
    due: float
    nodes: tuple[str, ...]


class FakeInfra:
    """Cloud pools and a cluster in one consistent, clock-driven state."""

    def __init__(
        self,
        clock: ports.Clock,
        pools: Sequence[model.PoolSpec],
        *,
        apply_delay_s: float = 0.0,
        lifetime: Callable[[str, int], float | None] | None = None,
    ) -> None:
        self.clock = clock
        self.pools = {p.name: p for p in pools}
        self.apply_delay_s = apply_delay_s
        self.lifetime = lifetime
        """(pool, launch ordinal in that pool) -> seconds until a spot interruption, or None."""
        self.instances: dict[str, FakeInstance] = {}
        self.submitted: dict[str, tuple[str, ...]] = {}
        self.applying: dict[str, _PendingApply] = {}
        self.apply_state: dict[str, model.ApplyState] = {p: model.ApplyState.IDLE for p in self.pools}
        self.apply_message: dict[str, str] = {}
        self.unavailable_until: dict[str, float] = {}
        self.refuse_capacity: set[str] = set()
        """Pools whose next launch fails with insufficient capacity."""
        self.replicas: dict[tuple[str, str], int] = {}
        self.pdb_refusals: dict[str, int] = {}
        """Node -> evictions to refuse before letting pods go (a PodDisruptionBudget at its limit)."""
        self.launched: dict[str, int] = {p: 0 for p in self.pools}
        self.applies: list[tuple[float, str, tuple[str, ...]]] = []
        self.events: list[tuple[float, str, str]] = []
        """(time, event, node): launch, ready, notice, gone."""
        self._timers: list[tuple[float, int, str, str]] = []
        self._seq = 0
        self.version = 0
        """Bumped by every change the cluster can see; caches what cluster_nodes builds."""
        self._nodes_cache: tuple[int, dict[str, model.ClusterNode]] | None = None
        self.gone: list[FakeInstance] = []

    # -- time ---------------------------------------------------------------------------------------
    def next_event_at(self) -> float | None:
        """When the world changes by itself next (a node joining, a notice, an interruption)."""
        due = [a.due for a in self.applying.values()]
        if self._timers:
            due.append(self._timers[0][0])
        return min(due) if due else None

    def advance(self) -> bool:
        """Apply everything due by now; True when anything changed."""
        now = self.clock.now()
        changed = False
        for pool, pending in list(self.applying.items()):
            if pending.due <= now:
                del self.applying[pool]
                self._apply(pool, pending.nodes, now)
                changed = True
        while self._timers and self._timers[0][0] <= now:
            at, _, kind, name = heapq.heappop(self._timers)
            inst = self.instances.get(name)
            if inst is None or inst.gone_at is not None:
                continue
            changed = True
            self.version += 1
            if kind == "ready":
                self.events.append((at, "ready", name))
                self._place(inst.pool)
            elif kind == "notice":
                self.events.append((at, "notice", name))
            elif kind == "gone":
                self._remove(inst, at, "interrupted")
        return changed

    def _timer(self, at: float, kind: str, name: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, kind, name))

    # -- capacity -----------------------------------------------------------------------------------
    def submit(self, pool: str, nodes: tuple[str, ...]) -> None:
        if pool not in self.pools:
            raise KeyError(f"unknown pool {pool!r}")
        self.submitted[pool] = nodes
        self.applies.append((self.clock.now(), pool, nodes))
        self.apply_state[pool] = model.ApplyState.BUSY
        self.applying[pool] = _PendingApply(self.clock.now() + self.apply_delay_s, nodes)
        if self.apply_delay_s <= 0:
            self.advance()

    def _apply(self, pool: str, nodes: tuple[str, ...], now: float) -> None:
        want = set(nodes)
        for inst in [i for i in self.instances.values() if i.pool == pool and i.name not in want]:
            self._remove(inst, now, "released")
        new = [n for n in nodes if n not in self.instances]
        if new and (pool in self.refuse_capacity or self.unavailable_until.get(pool, -1.0) > now):
            self.refuse_capacity.discard(pool)
            self.unavailable_until[pool] = now + 180.0
            self.apply_state[pool] = model.ApplyState.FAILED
            self.apply_message[pool] = "InsufficientInstanceCapacity: no capacity in the zone"
            return
        for name in new:
            self.launch(pool, name, now=now)
        self.apply_state[pool] = model.ApplyState.IDLE
        self.apply_message[pool] = ""

    def launch(
        self,
        pool: str,
        name: str,
        *,
        now: float | None = None,
        boot_s: float | None = None,
        interruptible: bool = True,
    ) -> FakeInstance:
        """Start an instance; it joins the cluster `boot_s` (the pool's by default) later."""
        now = self.clock.now() if now is None else now
        spec = self.pools[pool]
        boot = spec.boot_s if boot_s is None else boot_s
        inst = FakeInstance(name, pool, spec.gpus_per_node, now, now + boot)
        self.instances[name] = inst
        self.version += 1
        self.events.append((now, "launch", name))
        self._timer(inst.ready_at, "ready", name)
        life = self.lifetime(pool, self.launched[pool]) if self.lifetime and interruptible else None
        self.launched[pool] += 1
        if life is not None:
            inst.notice_at = now + max(0.0, life - INTERRUPTION_NOTICE_S)
            self._timer(inst.notice_at, "notice", name)
            self._timer(now + life, "gone", name)
        return inst

    def terminate(self, name: str) -> None:
        inst = self.instances.get(name)
        if inst is not None:
            self._remove(inst, self.clock.now(), "released")

    def _remove(self, inst: FakeInstance, at: float, why: str) -> None:
        inst.gone_at = at
        inst.ended = why
        self.version += 1
        inst.pods = 0
        del self.instances[inst.name]
        self.gone.append(inst)
        self.events.append((at, "gone", inst.name))
        self._place(inst.pool)

    def vanish(self, name: str) -> None:
        """Someone deleted the instance behind the controller's back (or the cloud took it)."""
        inst = self.instances[name]
        self._remove(inst, self.clock.now(), "vanished")

    def pool_state(self, pool: str) -> model.PoolState:
        self.advance()
        now = self.clock.now()
        instances = {
            i.name: ("running" if i.ready_at <= now else "pending")
            for i in self.instances.values()
            if i.pool == pool
        }
        until = self.unavailable_until.get(pool)
        return model.PoolState(
            pool=pool,
            instances=instances,
            submitted=self.submitted.get(pool),
            apply=self.apply_state[pool],
            message=self.apply_message.get(pool, ""),
            unavailable_until=until if until is not None and until > now else None,
        )

    # -- cluster ------------------------------------------------------------------------------------
    def joined(self, inst: FakeInstance) -> bool:
        return inst.joins and inst.ready_at <= self.clock.now()

    def cluster_nodes(self) -> dict[str, model.ClusterNode]:
        self.advance()
        if self._nodes_cache is not None and self._nodes_cache[0] == self.version:
            return self._nodes_cache[1]
        now = self.clock.now()
        nodes = {
            i.name: model.ClusterNode(
                name=i.name,
                pool=i.pool,
                ready=True,
                cordoned=i.cordoned,
                pods=i.pods,
                interrupting=i.notice_at is not None and i.notice_at <= now,
            )
            for i in self.instances.values()
            if self.joined(i)
        }
        self._nodes_cache = (self.version, nodes)
        return nodes

    def set_replicas(self, workload: str, pool: str, replicas: int) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.replicas[(workload, pool)] = replicas
        self._place(pool)

    def cordon(self, name: str) -> None:
        inst = self.instances.get(name)
        if inst is not None and not inst.cordoned:
            inst.cordoned = True
            self.version += 1
            self._place(inst.pool)

    def evict(self, name: str) -> int:
        inst = self.instances.get(name)
        if inst is None:
            return 0
        refusals = self.pdb_refusals.get(name, 0)
        if refusals > 0 and inst.pods > 0:
            self.pdb_refusals[name] = refusals - 1
            return inst.pods
        inst.pods = 0
        self._place(inst.pool, evicted=name)
        return inst.pods

    def _place(self, pool: str, *, evicted: str | None = None) -> None:
        """Schedule the pool's replicas the way the scheduler and the ReplicaSet controller would.

        Scale-down removes pods from cordoned nodes first (the pod-deletion-cost the cluster adapter
        sets), evicted pods are rescheduled on schedulable nodes, and pods beyond the schedulable GPUs
        stay pending.
        """
        self.version += 1
        want = sum(n for (_, p), n in self.replicas.items() if p == pool)
        joined = sorted(
            (i for i in self.instances.values() if i.pool == pool and self.joined(i)),
            key=lambda i: (i.launched_at, i.name),
        )
        keep = want
        for inst in joined:
            if inst.cordoned:
                inst.pods = 0 if inst.name == evicted else min(inst.pods, keep)
                keep -= inst.pods
        for inst in joined:
            if not inst.cordoned:
                inst.pods = min(inst.gpus, max(0, keep))
                keep -= inst.pods

    def serving_gpus(self, pool: str | None = None) -> int:
        """Replicas running on joined nodes (a cordoned node's pods serve until they are evicted)."""
        return sum(
            i.pods for i in self.instances.values() if (pool is None or i.pool == pool) and self.joined(i)
        )


class FakeCapacity:
    """The pool stacks of a FakeInfra, as the Capacity port."""

    def __init__(self, infra: FakeInfra) -> None:
        self.infra = infra

    def state(self, pool: str) -> model.PoolState:
        return self.infra.pool_state(pool)

    def submit(self, pool: str, nodes: tuple[str, ...]) -> None:
        self.infra.submit(pool, nodes)


class FakeCluster:
    """The Kubernetes API of a FakeInfra, as the Cluster port."""

    def __init__(self, infra: FakeInfra) -> None:
        self.infra = infra
        self.fail_reads = False

    def burst_nodes(self) -> Mapping[str, model.ClusterNode]:
        if self.fail_reads:
            raise ConnectionError("kube-apiserver unreachable")
        return self.infra.cluster_nodes()

    def cordon(self, node: str) -> None:
        self.infra.cordon(node)

    def drain(self, node: str) -> int:
        return self.infra.evict(node)

    def set_replicas(self, workload: str, pool: str, replicas: int) -> None:
        self.infra.set_replicas(workload, pool, replicas)


@dataclass
class FakeMetricSource:
    """Metrics set by the test (or computed by a callable, for the simulator)."""

    values: dict[str, model.WorkloadMetrics] = field(default_factory=dict)
    provider: Callable[[float], Mapping[str, model.WorkloadMetrics]] | None = None
    fail: bool = False

    def set(self, workload: str, rate_rps: float | None, *, queue_depth: float | None = 0.0) -> None:
        self.values[workload] = model.WorkloadMetrics(rate_rps=rate_rps, queue_depth=queue_depth)

    def read(
        self, workloads: Sequence[model.WorkloadSpec], *, at: float
    ) -> Mapping[str, model.WorkloadMetrics]:
        if self.fail:
            raise ConnectionError("prometheus unreachable")
        values = self.provider(at) if self.provider is not None else self.values
        unknown = model.WorkloadMetrics(rate_rps=None, queue_depth=None, problems=("no series",))
        return {w.name: values.get(w.name, unknown) for w in workloads}


class MemoryStore:
    """The Store port in memory, with the same optimistic versioning as the SQLite store."""

    def __init__(self, *, keep_intents: int = 1000) -> None:
        self.version = 0
        self.records: dict[str, model.NodeRecord] = {}
        self.policy_state = policy.PolicyState()
        self.intents: list[ports.Intent] = []
        self.keep_intents = keep_intents
        self.ledger: dict[str, tuple[float, float]] = {}
        self.accrued_until: float | None = None
        self.overrides = ports.Overrides()
        self.fail_commits = False

    def load(self) -> ports.Snapshot:
        return ports.Snapshot(
            self.version, self.records, self.policy_state, self.accrued_until, self.overrides
        )

    def commit(self, intent: ports.Intent, *, expected_version: int) -> int:
        if self.fail_commits:
            raise OSError("store unavailable")
        if expected_version != self.version:
            raise ports.ConflictError(f"store at version {self.version}, expected {expected_version}")
        self.records = dict(intent.records)
        self.policy_state = intent.policy_state
        self.accrued_until = intent.at
        for pool, (seconds, usd) in intent.cost.items():
            s0, u0 = self.ledger.get(pool, (0.0, 0.0))
            self.ledger[pool] = (s0 + seconds, u0 + usd)
        if self.keep_intents:
            self.intents.append(intent)
            if len(self.intents) > self.keep_intents:
                del self.intents[: len(self.intents) - self.keep_intents]
        self.version += 1
        return self.version
