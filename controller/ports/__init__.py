"""The boundaries of the control plane, one Protocol each: Clock, MetricSource, Cluster, Capacity,
Store.

The reconciler talks only to these. Real adapters live in `controller.adapters`, fakes for tests and
the simulator in `controller.ports.fakes`; both are checked against these Protocols by mypy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controller.core import model, policy


class Clock(Protocol):
    def now(self) -> float:
        """Seconds; Unix time live, trace time in the simulator."""
        ...

    def sleep(self, seconds: float) -> None: ...


class MetricSource(Protocol):
    def read(
        self, workloads: Sequence[model.WorkloadSpec], *, at: float
    ) -> Mapping[str, model.WorkloadMetrics]:
        """Metrics of every workload evaluated at `at`. Unknown values are None with a problem, not 0."""
        ...


class Cluster(Protocol):
    def burst_nodes(self) -> Mapping[str, model.ClusterNode]:
        """Every node carrying the burst labels. Raises when the API cannot be read."""
        ...

    def cordon(self, node: str) -> None:
        """Mark unschedulable; idempotent."""
        ...

    def drain(self, node: str) -> int:
        """Evict the node's workload pods through the Eviction API; returns how many remain.

        A PodDisruptionBudget refusal is not an error: the pod stays and the next tick asks again.
        """
        ...

    def set_replicas(self, workload: str, pool: str, replicas: int) -> None:
        """Scale the workload's burst Deployment for `pool`; idempotent."""
        ...


class Capacity(Protocol):
    def state(self, pool: str) -> model.PoolState:
        """The pool stack's instances and the outcome of the latest apply (never blocks on one)."""
        ...

    def submit(self, pool: str, nodes: tuple[str, ...]) -> None:
        """Ask for this sorted node set; applies run in the background and the latest set wins."""
        ...


@dataclass(frozen=True, slots=True)
class Overrides:
    """What an operator set through the admin API; the next tick reads it with the snapshot.

    Overrides only tighten: the config and the CrossGuard pack hold the same limits on every apply, so
    loosening them here could never take effect anyway.
    """

    hold: bool = False
    """Pause bursting: decide holds (no launch, no release, replicas as they are)."""
    budget_usd_per_hour: float | None = None
    """Lowers the policy's budget (the lower of the two binds)."""
    max_nodes: Mapping[str, int] = field(default_factory=dict)
    """Per pool: lowers the pool's `max_nodes`; 0 releases the pool."""
    reason: str = ""
    drain: tuple[str, ...] = ()
    """Nodes to drain and release (the API lowers their pool's `max_nodes` with each, so that demand does
    not relaunch them)."""
    paused: tuple[str, ...] = ()
    """Pools that neither launch nor release (failed nodes still go)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The store's state as of one version."""

    version: int
    records: Mapping[str, model.NodeRecord]
    policy_state: policy.PolicyState
    accrued_until: float | None = None
    """The tick time the cost ledger has been written up to (the last commit), across restarts."""
    overrides: Overrides = field(default_factory=Overrides)


@dataclass(frozen=True, slots=True)
class Intent:
    """What a tick commits before it acts: enough to redo every action after a crash."""

    at: float
    records: Mapping[str, model.NodeRecord]
    transitions: tuple[model.Transition, ...]
    decision: model.Decision
    inputs: Mapping[str, object]
    """The decision's inputs as observed (metrics per workload, node counts), for the audit trail."""
    policy_state: policy.PolicyState
    desired: Mapping[str, tuple[str, ...]]
    cost: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """Per pool: node-seconds and USD accrued since the previous tick (the cost ledger)."""


class ConflictError(Exception):
    """Another writer committed since this snapshot was loaded (optimistic versioning)."""


class Store(Protocol):
    def load(self) -> Snapshot: ...

    def commit(self, intent: Intent, *, expected_version: int) -> int:
        """Write the intent atomically; raises ConflictError if the version moved. Returns the new version."""
        ...
