"""The vocabulary of the control plane: frozen values shared by decide, sync, plan and every port.

Everything here is data. Time is a float of seconds on the controller's clock (Unix time live, trace
time in the simulator); nothing in the core reads a clock itself.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

TIERS: tuple[str, ...] = ("vip", "normal", "free")
"""Traffic tiers of the workload contract, most important first."""


class NodeStatus(enum.StrEnum):
    """Where a cloud node is in its life (docs/architecture.md, node lifecycle)."""

    REQUESTED = "requested"
    PROVISIONING = "provisioning"
    READY = "ready"
    DRAINING = "draining"
    RELEASING = "releasing"
    RELEASED = "released"
    FAILED = "failed"


ACTIVE: frozenset[NodeStatus] = frozenset({NodeStatus.REQUESTED, NodeStatus.PROVISIONING, NodeStatus.READY})
"""Nodes that count as capacity now or soon."""

BILLING: frozenset[NodeStatus] = frozenset(NodeStatus) - {NodeStatus.RELEASED}
"""Nodes that may still cost money: every status until the instance is confirmed gone."""

IN_STACK: frozenset[NodeStatus] = BILLING - {NodeStatus.RELEASING}
"""Nodes that stay in their pool's desired node set: a node leaves it only in `releasing`."""


class ApplyState(enum.StrEnum):
    """The last known outcome of applying a pool's node set."""

    IDLE = "idle"
    BUSY = "busy"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A cloud pool: one Pulumi stack of identical GPU nodes."""

    name: str
    gpus_per_node: int
    price_per_hour: float
    boot_s: float
    max_nodes: int
    min_nodes: int = 0
    spot: bool = False

    @property
    def price_per_gpu_hour(self) -> float:
        return self.price_per_hour / self.gpus_per_node


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """A GPU service the controller keeps within its latency SLO."""

    name: str
    gpu_rps: float
    """Requests per second one GPU replica sustains at 100 % busy (measured by the workload's bench)."""
    service_time_s: float
    slo_s: float
    private_gpus: int
    """GPU replicas the private cluster always runs for this workload (no cloud cost)."""
    timeout_s: float = 30.0
    """How long a request waits before the service gives up on it: a flooded queue holds at most this
    many seconds of work."""


@dataclass(frozen=True, slots=True)
class WorkloadMetrics:
    """What Prometheus says about one workload at one instant. None means unknown, never zero."""

    rate_rps: float | None
    queue_depth: float | None = 0.0
    window_s: float = 60.0
    """The window the rate is averaged over: in a ramp it lags the demand by half of it."""
    latency_p99_s: float | None = None
    tier_rps: Mapping[str, float] = field(default_factory=dict)
    ready_replicas: Mapping[str, int] = field(default_factory=dict)
    """Ready replicas by placement (`private`, `burst`)."""
    problems: tuple[str, ...] = ()
    """Why a value is unknown (query failed, empty, NaN, stale), for the decision's reasons."""

    @property
    def known(self) -> bool:
        """Demand and queue both read, finite and non-negative: anything else is unknown, not zero."""
        return (
            not self.problems
            and self.rate_rps is not None
            and self.queue_depth is not None
            and math.isfinite(self.rate_rps)
            and math.isfinite(self.queue_depth)
            and self.rate_rps >= 0
            and self.queue_depth >= 0
        )


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """A burst node as the Kubernetes API shows it (found by the contract's labels)."""

    name: str
    pool: str
    ready: bool
    """Ready condition true and `nvidia.com/gpu` allocatable."""
    cordoned: bool = False
    pods: int = 0
    """Workload pods still bound to the node (DaemonSets excluded)."""
    interrupting: bool = False
    """The cloud announced the node's end (spot interruption notice)."""


@dataclass(frozen=True, slots=True)
class PoolState:
    """A pool stack as its outputs and the apply worker show it."""

    pool: str
    instances: Mapping[str, str]
    """Node name -> instance state (`pending`, `running`, ...) from the stack's `nodes` output."""
    submitted: tuple[str, ...] | None = None
    """The node set last handed to the apply worker (sorted), None when none was since start."""
    apply: ApplyState = ApplyState.IDLE
    message: str = ""
    unavailable_until: float | None = None
    """The cloud refused capacity (insufficient capacity, quota); try other pools until then."""


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything one tick read. `cluster` or `pools` is None when that read failed."""

    at: float
    metrics: Mapping[str, WorkloadMetrics]
    cluster: Mapping[str, ClusterNode] | None
    pools: Mapping[str, PoolState] | None
    errors: tuple[str, ...] = ()

    @property
    def synced(self) -> bool:
        return (
            not self.errors
            and self.cluster is not None
            and self.pools is not None
            and all(m.known for m in self.metrics.values())
        )


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One row of the lifecycle table: the controller's memory of a node it created."""

    name: str
    pool: str
    status: NodeStatus
    since: float
    requested_at: float
    ready_at: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Transition:
    """A recorded change of a node's status, with why."""

    at: float
    node: str
    pool: str
    before: NodeStatus | None
    after: NodeStatus
    reason: str


class Cause(enum.StrEnum):
    """What shaped a decision, most binding first: telemetry, the API and dashboards read this, never
    the free-text reasons."""

    OPERATOR_HOLD = "operator_hold"
    UNSYNCED = "unsynced"
    BUDGET = "budget"
    MAX_NODES = "max_nodes"
    CAPACITY_REFUSED = "capacity_refused"
    STABILIZATION = "stabilization"
    """Idle burst capacity kept: releasing it now would cost more than keeping it (its relaunch)."""
    MIN_NODES = "min_nodes"
    BACKLOG = "backlog"
    """Extra capacity to drain a queue that built up."""
    GROWTH = "growth"
    """Capacity bought ahead of a growth every recent rate window showed, wanted only while it lasts."""
    DEMAND = "demand"
    """The forecast demand's bound, as planned."""


class Action(enum.StrEnum):
    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    STEADY = "steady"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Decision:
    """What decide concluded, with the inputs it leaned on and human-readable reasons."""

    at: float
    action: Action
    target_nodes: Mapping[str, int]
    """Active nodes wanted per pool (requested, provisioning or ready)."""
    target_gpus: Mapping[str, int]
    """GPUs wanted per workload, private included."""
    demand_rps: Mapping[str, float]
    forecast_rps: Mapping[str, float]
    reasons: tuple[str, ...]
    budget_binding: bool = False
    cause: Cause = Cause.DEMAND
    figures: Mapping[str, float] = field(default_factory=dict)
    """The numbers behind the cause (demand, bound, margin, GPUs wanted and kept, ...)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The side effects one tick wants, derived purely from the records and the decision."""

    records: Mapping[str, NodeRecord]
    transitions: tuple[Transition, ...]
    desired: Mapping[str, tuple[str, ...]]
    """Sorted node names per pool: the `gpuburst:nodes` config of each pool stack."""
    cordon: tuple[str, ...]
    drain: tuple[str, ...]
    replicas: Mapping[tuple[str, str], int]
    """Burst replicas per (workload, pool)."""


@dataclass(frozen=True, slots=True)
class TickReport:
    """One tick, as the API, the telemetry and the simulator see it."""

    at: float
    synced: bool
    decision: Decision
    nodes: Mapping[str, Mapping[str, int]]
    """Node counts per pool and status after the tick."""
    transitions: tuple[Transition, ...]
    acted: tuple[str, ...]
    errors: tuple[str, ...]
    duration_s: float = 0.0
    usd_per_hour: float = 0.0
