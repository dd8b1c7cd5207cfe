"""The controller's own Prometheus metrics and their names (base units: seconds, requests per second).

`Telemetry.observe` is a reconciler observer: each TickReport sets demand, targets, node counts, cost
burn, decisions and tick duration. The adapters feed the rest through hooks: `MeteredMetricSource`
wraps any MetricSource to measure staleness, `apply_finished` takes an apply's duration and result,
`set_leader` and `set_orphans` come from the jobs. The cost totals are read from the ledger at scrape
time, so they survive restarts and never double count.

Dashboards and alert rules refer to the names below; a renamed metric breaks them.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence

import prometheus_client
from prometheus_client import core as prom_core

from controller import ports
from controller.core import model
from controller.runtime import logs

log = logs.get("telemetry")

BUILD_INFO = "gpuburst_build_info"
"""Gauge {version, python}: always 1; joins any series to the release that produced it."""
DEMAND_RPS = "gpuburst_demand_requests_per_second"
"""Gauge {workload}: requests per second observed at the last synced tick."""
FORECAST_RPS = "gpuburst_forecast_requests_per_second"
"""Gauge {workload}: the demand the decision planned for."""
TARGET_GPUS = "gpuburst_target_gpus"
"""Gauge {workload}: GPUs wanted, private included."""
TARGET_NODES = "gpuburst_target_nodes"
"""Gauge {pool}: active nodes wanted."""
NODES = "gpuburst_nodes"
"""Gauge {pool, status}: node records per lifecycle status (released excluded)."""
TICK_FAILURES = "gpuburst_tick_failures_total"
"""Counter {reason}: ticks that raised before completing (`store`: the SQLite file; `internal`)."""
TICK_FAILURE_REASONS = ("store", "internal")
DECISIONS = "gpuburst_decisions_total"
"""Counter {action, reason}: one per tick; `reason` is the one that shaped it (see REASONS)."""
TRANSITIONS = "gpuburst_node_transitions_total"
"""Counter {pool, status}: transitions into `status`."""
APPLY_DURATION = "gpuburst_apply_duration_seconds"
"""Histogram {pool, result}: one pool stack apply, `result` = succeeded | failed."""
COST_USD_PER_HOUR = "gpuburst_cost_usd_per_hour"
"""Gauge {pool}: burn rate of the nodes that may bill (every status but released)."""
COST_USD = "gpuburst_cost_usd_total"
"""Counter {pool}: USD accrued in the ledger since the store was created."""
NODE_SECONDS = "gpuburst_node_seconds_total"
"""Counter {pool}: node-seconds accrued in the ledger."""
BUDGET_USD_PER_HOUR = "gpuburst_budget_usd_per_hour"
"""Gauge: the budget in force (policy and overrides); NaN when there is none."""
BUDGET_BINDING = "gpuburst_budget_binding"
"""Gauge: 1 when the last decision was cut by the budget."""
METRICS_STALENESS = "gpuburst_metrics_staleness_seconds"
"""Gauge {workload}: seconds since the workload's metrics were last known (+Inf: never)."""
SAMPLE_AGE = "gpuburst_metrics_sample_age_seconds"
"""Gauge {workload}: age of the newest sample Prometheus held at the last read (NaN: none), when the
metric source reports it."""
TICK_DURATION = "gpuburst_tick_duration_seconds"
"""Histogram: wall time of one reconcile tick."""
LAST_TICK = "gpuburst_last_tick_timestamp_seconds"
"""Gauge: controller-clock time of the last tick."""
SYNCED = "gpuburst_synced"
"""Gauge: 1 when the last tick read every part of the world."""
ERRORS = "gpuburst_errors_total"
"""Counter {part}: failed reads and actions (`metrics`, `cluster`, `capacity`, `commit`, `drain`, ...)."""
LEADER = "gpuburst_leader"
"""Gauge: 1 while this replica holds the Lease and acts."""
ORPHANS = "gpuburst_orphan_nodes"
"""Gauge {kind}: `cloud_not_in_cluster` | `cluster_not_in_stack`, from the orphan audit."""

CONTENT_TYPE = str(prometheus_client.CONTENT_TYPE_LATEST)
"""The exposition format's media type, for the API's /metrics."""

REASONS = tuple(c.value for c in model.Cause)
"""Decision causes (`model.Cause`), most binding first: the `reason` label of the decisions counter."""

_TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_APPLY_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)


def version() -> str:
    """The installed gpuburst's version; `unknown` when running from a tree that was never installed."""
    from importlib import metadata

    try:
        return metadata.version("gpuburst")
    except metadata.PackageNotFoundError:
        return "unknown"


def reason(decision: model.Decision) -> str:
    """The bounded reason label of a decision: its typed cause (the free-text reasons stay in the store)."""
    return decision.cause.value


def error_part(error: str) -> str:
    """`drain spot-1: refused` -> `drain`: the part of the tick that failed, a bounded label."""
    head = error.split(":", 1)[0].split(" ", 1)[0]
    return head if head.isidentifier() else "other"


class Telemetry:
    def __init__(
        self,
        *,
        workloads: Sequence[model.WorkloadSpec],
        pools: Sequence[model.PoolSpec],
        registry: prometheus_client.CollectorRegistry | None = None,
        ledger: Callable[[], Mapping[str, tuple[float, float]]] | None = None,
        budget: Callable[[], float | None] | None = None,
    ) -> None:
        """`ledger` (node-seconds, USD per pool) is read at scrape time; `budget` at each tick."""
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self.pools = {p.name: p for p in pools}
        self.workloads = [w.name for w in workloads]
        self._budget = budget
        r = self.registry
        prometheus_client.Gauge(
            BUILD_INFO, "The running gpuburst release (always 1)", ["version", "python"], registry=r
        ).labels(version(), platform.python_version()).set(1)
        self.demand = prometheus_client.Gauge(
            DEMAND_RPS, "Observed requests per second", ["workload"], registry=r
        )
        self.forecast = prometheus_client.Gauge(
            FORECAST_RPS, "Requests per second the decision planned for", ["workload"], registry=r
        )
        self.target_gpus = prometheus_client.Gauge(
            TARGET_GPUS, "GPUs wanted, private included", ["workload"], registry=r
        )
        self.target_nodes = prometheus_client.Gauge(TARGET_NODES, "Active nodes wanted", ["pool"], registry=r)
        self.nodes = prometheus_client.Gauge(
            NODES, "Node records by lifecycle status", ["pool", "status"], registry=r
        )
        self.decisions = prometheus_client.Counter(
            DECISIONS, "Decisions by action and reason", ["action", "reason"], registry=r
        )
        self.transitions = prometheus_client.Counter(
            TRANSITIONS, "Node status transitions", ["pool", "status"], registry=r
        )
        self.apply_duration = prometheus_client.Histogram(
            APPLY_DURATION,
            "Pool stack apply duration",
            ["pool", "result"],
            buckets=_APPLY_BUCKETS,
            registry=r,
        )
        self.burn = prometheus_client.Gauge(
            COST_USD_PER_HOUR, "Burn rate of billing nodes", ["pool"], registry=r
        )
        self.budget = prometheus_client.Gauge(BUDGET_USD_PER_HOUR, "Budget in force", registry=r)
        self.budget_binding = prometheus_client.Gauge(
            BUDGET_BINDING, "1 when the budget cut the last decision", registry=r
        )
        self.sample_age = prometheus_client.Gauge(
            SAMPLE_AGE, "Age of the newest sample at the last read", ["workload"], registry=r
        )
        self.staleness = prometheus_client.Gauge(
            METRICS_STALENESS, "Seconds since metrics were known", ["workload"], registry=r
        )
        self.tick_duration = prometheus_client.Histogram(
            TICK_DURATION, "Reconcile tick wall time", buckets=_TICK_BUCKETS, registry=r
        )
        self.last_tick = prometheus_client.Gauge(LAST_TICK, "Controller time of the last tick", registry=r)
        self.synced = prometheus_client.Gauge(SYNCED, "1 when the last tick read everything", registry=r)
        self.errors = prometheus_client.Counter(ERRORS, "Failed reads and actions", ["part"], registry=r)
        self.tick_failures = prometheus_client.Counter(
            TICK_FAILURES, "Ticks that did not complete", ["reason"], registry=r
        )
        self.leader = prometheus_client.Gauge(LEADER, "1 while this replica holds the Lease", registry=r)
        self.orphans = prometheus_client.Gauge(
            ORPHANS, "Orphan nodes found by the audit", ["kind"], registry=r
        )
        self._prime()
        self._known_at: dict[str, float] = {}
        if ledger is not None:
            self.registry.register(_LedgerCollector(ledger))

    def _prime(self) -> None:
        """Every known label set from the start: a zero is information, a missing series is not (and a
        rate() over a counter needs a first sample)."""
        for why in TICK_FAILURE_REASONS:
            self.tick_failures.labels(reason=why)
        for w in self.workloads:
            self.staleness.labels(w).set(math.inf)
        for p in self.pools:
            self.burn.labels(p)
            self.target_nodes.labels(p)
            for status in model.NodeStatus:
                if status is not model.NodeStatus.RELEASED:
                    self.nodes.labels(p, status.value)
        for kind in ("cloud_not_in_cluster", "cluster_not_in_stack"):
            self.orphans.labels(kind)

    # -- the reconciler observer --------------------------------------------------------------------
    def observe(self, report: model.TickReport) -> None:
        d = report.decision
        if d.action is not model.Action.HOLD:
            for w, rps in d.demand_rps.items():
                self.demand.labels(w).set(rps)
            for w, rps in d.forecast_rps.items():
                self.forecast.labels(w).set(rps)
            for w, gpus in d.target_gpus.items():
                self.target_gpus.labels(w).set(gpus)
        for pool, n in d.target_nodes.items():
            self.target_nodes.labels(pool).set(n)
        self.decisions.labels(d.action.value, reason(d)).inc()
        self.budget_binding.set(1 if d.budget_binding else 0)
        for pool in set(self.pools) | set(report.nodes):
            counts = report.nodes.get(pool, {})
            for status in model.NodeStatus:
                if status is not model.NodeStatus.RELEASED:
                    self.nodes.labels(pool, status.value).set(counts.get(status.value, 0))
            price = self.pools[pool].price_per_hour if pool in self.pools else 0.0
            self.burn.labels(pool).set(sum(counts.values()) * price)
        for t in report.transitions:
            self.transitions.labels(t.pool, t.after.value).inc()
        for e in report.errors:
            self.errors.labels(error_part(e)).inc()
        self.tick_duration.observe(report.duration_s)
        self.last_tick.set(report.at)
        self.synced.set(1 if report.synced else 0)
        for w, known_at in self._known_at.items():
            self.staleness.labels(w).set(max(0.0, report.at - known_at))
        if self._budget is not None:
            budget = self._budget()
            self.budget.set(math.nan if budget is None else budget)

    # -- hooks --------------------------------------------------------------------------------------
    def metrics_read(self, metrics: Mapping[str, model.WorkloadMetrics], *, at: float) -> None:
        """Record which workloads' metrics were known at `at` (the staleness clock restarts)."""
        for name, m in metrics.items():
            if m.known:
                self._known_at[name] = at
                self.staleness.labels(name).set(0.0)
            elif name in self._known_at:
                self.staleness.labels(name).set(max(0.0, at - self._known_at[name]))

    def sample_ages(self, ages: Mapping[str, float | None]) -> None:
        for name, age in ages.items():
            self.sample_age.labels(name).set(math.nan if age is None else age)

    def apply_finished(self, pool: str, *, duration_s: float, ok: bool) -> None:
        self.apply_duration.labels(pool, "succeeded" if ok else "failed").observe(duration_s)

    def tick_failed(self, reason: str) -> None:
        self.tick_failures.labels(reason=reason).inc()

    def set_leader(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)

    def set_orphans(self, kind: str, count: int) -> None:
        self.orphans.labels(kind).set(count)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class MeteredMetricSource:
    """A MetricSource that tells Telemetry what it read: staleness measured at the source."""

    def __init__(self, inner: ports.MetricSource, telemetry: Telemetry) -> None:
        self.inner = inner
        self.telemetry = telemetry

    def read(
        self, workloads: Sequence[model.WorkloadSpec], *, at: float
    ) -> Mapping[str, model.WorkloadMetrics]:
        try:
            out = self.inner.read(workloads, at=at)
        except Exception:
            self.telemetry.metrics_read({w.name: _UNKNOWN for w in workloads}, at=at)
            raise
        self.telemetry.metrics_read(out, at=at)
        ages = getattr(self.inner, "sample_age_s", None)  # the Prometheus source measures it
        if isinstance(ages, Mapping):
            self.telemetry.sample_ages(ages)
        return out


_UNKNOWN = model.WorkloadMetrics(rate_rps=None, queue_depth=None, problems=("read failed",))


class _LedgerCollector:
    """Cost totals straight from the ledger at scrape time: right after a restart, never twice."""

    def __init__(self, ledger: Callable[[], Mapping[str, tuple[float, float]]]) -> None:
        self.ledger = ledger

    def describe(self) -> Iterable[prom_core.Metric]:
        # Declared up front so the registry refuses a second collector of the same names.
        yield prom_core.CounterMetricFamily(COST_USD, "USD accrued", labels=["pool"])
        yield prom_core.CounterMetricFamily(NODE_SECONDS, "Node-seconds accrued", labels=["pool"])

    def collect(self) -> Iterable[prom_core.Metric]:
        usd = prom_core.CounterMetricFamily(COST_USD, "USD accrued", labels=["pool"])
        seconds = prom_core.CounterMetricFamily(NODE_SECONDS, "Node-seconds accrued", labels=["pool"])
        try:
            totals = self.ledger()
        except Exception as exc:  # a scrape must not fail because the store is busy
            log.warning("ledger unreadable for /metrics", extra={"error": str(exc)})
            totals = {}
        for pool, (node_s, dollars) in sorted(totals.items()):
            usd.add_metric([pool], dollars)
            seconds.add_metric([pool], node_s)
        yield usd
        yield seconds
