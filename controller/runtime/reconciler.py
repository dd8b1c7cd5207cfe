"""One reconcile tick: observe -> sync -> decide -> plan -> commit -> act -> report.

The reconciler owns the order of side effects and nothing else: every judgement is in `controller.core`,
every I/O behind a port. Intent is committed before any action, and every action is idempotent, so a
crash anywhere is repaired by the next tick redoing what the store says.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from controller import ports
from controller.core import lifecycle, limits, model, policy
from controller.ports import clock as clock_mod

log = logging.getLogger("gpuburst.reconciler")

REPLICAS_RESYNC_S = 300.0
"""Replica counts are written when they change, and at least this often."""


@dataclass(frozen=True, slots=True)
class Setup:
    """What one controller manages, and by which policy."""

    workloads: tuple[model.WorkloadSpec, ...]
    pools: tuple[model.PoolSpec, ...]
    policy: policy.BurstPolicy = field(default_factory=policy.BurstPolicy)

    @property
    def timeouts(self) -> lifecycle.Timeouts:
        return lifecycle.Timeouts(boot_s=self.policy.boot_timeout_s, drain_s=self.policy.drain_timeout_s)


class Reconciler:
    def __init__(
        self,
        setup: Setup,
        *,
        clock: ports.Clock,
        metrics: ports.MetricSource,
        cluster: ports.Cluster,
        capacity: ports.Capacity,
        store: ports.Store,
        observers: Sequence[Callable[[model.TickReport], None]] = (),
        dry_run: bool = False,
    ) -> None:
        self.setup = setup
        self.clock = clock
        self.metrics = metrics
        self.cluster = cluster
        self.capacity = capacity
        self.store = store
        self.observers = list(observers)
        self.dry_run = dry_run
        self._replicas_set: dict[tuple[str, str], tuple[int, float]] = {}
        """(workload, pool) -> (replicas last set, when): skips a write per pool per tick."""
        self.last_report: model.TickReport | None = None

    # -- observe ------------------------------------------------------------------------------------
    def observe(self, at: float) -> model.Observation:
        """Read everything; a failed read leaves its part None (or its metrics unknown), never empty."""
        errors: list[str] = []
        try:
            metrics = dict(self.metrics.read(self.setup.workloads, at=at))
        except Exception as exc:  # any adapter failure must become "unknown", not a crash
            errors.append(f"metrics: {exc}")
            unknown = model.WorkloadMetrics(rate_rps=None, queue_depth=None, problems=(str(exc),))
            metrics = {w.name: unknown for w in self.setup.workloads}
        for name, m in metrics.items():
            for problem in m.problems:
                errors.append(f"metrics {name}: {problem}")
        cluster: Mapping[str, model.ClusterNode] | None
        try:
            cluster = self.cluster.burst_nodes()
        except Exception as exc:
            errors.append(f"cluster: {exc}")
            cluster = None
        pools: dict[str, model.PoolState] | None
        try:
            pools = {p.name: self.capacity.state(p.name) for p in self.setup.pools}
        except Exception as exc:
            errors.append(f"capacity: {exc}")
            pools = None
        return model.Observation(at, metrics, cluster, pools, tuple(errors))

    # -- the tick -----------------------------------------------------------------------------------
    def tick(self) -> model.TickReport:
        """One tick."""
        watch = clock_mod.Stopwatch()
        now = self.clock.now()
        obs = self.observe(now)
        snap = self.store.load()
        setup = overridden(self.setup, snap.overrides)
        records, transitions = lifecycle.sync(snap.records, obs, timeouts=setup.timeouts)
        records, drained = lifecycle.drain_named(records, snap.overrides.drain, at=now)
        transitions += drained
        synced_tally = lifecycle.tally(records.values())
        hold = ("operator hold" + (f": {snap.overrides.reason}" if snap.overrides.reason else ""),)

        inputs = policy.DecisionInputs(
            at=now,
            synced=obs.synced and not snap.overrides.hold,
            workloads=setup.workloads,
            metrics=obs.metrics,
            pools=setup.pools,
            active=lifecycle.of(synced_tally, model.ACTIVE),
            leaving=lifecycle.of(synced_tally, lifecycle.LEAVING),
            ready=lifecycle.of(synced_tally, frozenset({model.NodeStatus.READY})),
            unavailable=frozenset(
                name
                for name, st in (obs.pools or {}).items()
                if st.unavailable_until is not None and st.unavailable_until > now
            ),
            problems=obs.errors + (hold if snap.overrides.hold else ()),
            operator_hold=snap.overrides.hold,
        )
        decision, policy_state = policy.decide(inputs, snap.policy_state, setup.policy)
        decision = paused(decision, snap.overrides.paused, active=inputs.active)
        plan = lifecycle.plan(
            records, decision, workloads=setup.workloads, pools=setup.pools, cluster=obs.cluster
        )
        all_transitions = transitions + plan.transitions
        errors = list(obs.errors)
        acted: list[str] = []
        if not self.dry_run:
            intent = ports.Intent(
                at=now,
                records=plan.records,
                transitions=all_transitions,
                decision=decision,
                inputs=_inputs_summary(inputs),
                policy_state=policy_state,
                desired=plan.desired,
                cost=self._accrue(lifecycle.tally(snap.records.values()), since=snap.accrued_until, now=now),
            )
            try:
                self.store.commit(intent, expected_version=snap.version)
            except Exception as exc:  # no intent on record: acting now could leak a node
                errors.append(f"commit: {exc}")
                log.warning("commit failed, not acting", extra={"error": str(exc)})
            else:
                acted = self._act(plan, obs, errors)
        planned = lifecycle.tally(plan.records.values())
        report = model.TickReport(
            at=now,
            synced=obs.synced,
            decision=decision,
            nodes={
                pool: {st.value: n for st, n in by.items() if st is not model.NodeStatus.RELEASED}
                for pool, by in planned.items()
            },
            transitions=all_transitions,
            acted=tuple(acted),
            errors=tuple(errors),
            duration_s=watch.elapsed(),
            usd_per_hour=limits.usd_per_hour(lifecycle.of(planned, model.BILLING), setup.pools),
        )
        self.last_report = report
        for observer in self.observers:
            observer(report)
        return report

    def _accrue(
        self, tallied: Mapping[str, Mapping[model.NodeStatus, int]], *, since: float | None, now: float
    ) -> dict[str, tuple[float, float]]:
        """Node-seconds and USD per pool since the last commit, for the cost ledger.

        `since` comes from the store, so the time a restart or a leader change took is billed once, at
        the node counts last committed, instead of being lost or counted twice.
        """
        if since is None:
            return {}
        dt = max(0.0, now - since)
        billing = lifecycle.of(tallied, model.BILLING)
        prices = {p.name: p.price_per_hour for p in self.setup.pools}
        return {pool: (n * dt, n * dt * prices.get(pool, 0.0) / 3600.0) for pool, n in billing.items() if n}

    # -- act ----------------------------------------------------------------------------------------
    def _act(self, plan: model.Plan, obs: model.Observation, errors: list[str]) -> list[str]:
        """Cordon, scale, evict, then hand changed node sets to the stacks. Each step is idempotent."""
        acted: list[str] = []

        def attempt(what: str, fn: Callable[..., object], *args: object) -> None:
            try:
                fn(*args)
            except Exception as exc:  # the next tick retries from the committed intent
                errors.append(f"{what}: {exc}")
                log.warning("action failed", extra={"action": what, "error": str(exc)})
            else:
                acted.append(what)

        for node in plan.cordon:
            attempt(f"cordon {node}", self.cluster.cordon, node)
        for (workload, pool), n in sorted(plan.replicas.items()):
            last = self._replicas_set.get((workload, pool))
            # Re-assert now and then: someone may have scaled the Deployment by hand since.
            if last is None or last[0] != n or obs.at - last[1] >= REPLICAS_RESYNC_S:
                attempt(f"replicas {workload}/{pool}={n}", self._scale, workload, pool, n, obs.at)
        for node in plan.drain:
            attempt(f"drain {node}", self.cluster.drain, node)
        for pool, nodes in sorted(plan.desired.items()):
            state = obs.pools.get(pool) if obs.pools is not None else None
            if state is None or state.submitted != nodes:
                attempt(f"submit {pool} [{len(nodes)} nodes]", self.capacity.submit, pool, nodes)
        return acted

    def _scale(self, workload: str, pool: str, replicas: int, at: float) -> None:
        self.cluster.set_replicas(workload, pool, replicas)
        self._replicas_set[(workload, pool)] = (replicas, at)


NO_OVERRIDES = ports.Overrides()


def overridden(setup: Setup, overrides: ports.Overrides) -> Setup:
    """The setup with the operator's overrides applied; they only ever lower a limit."""
    if overrides == NO_OVERRIDES:
        return setup
    pools = tuple(
        dataclasses.replace(p, max_nodes=min(p.max_nodes, overrides.max_nodes[p.name]))
        if p.name in overrides.max_nodes
        else p
        for p in setup.pools
    )
    budget = setup.policy.budget_usd_per_hour
    if overrides.budget_usd_per_hour is not None:
        budget = min(overrides.budget_usd_per_hour, budget if budget is not None else math.inf)
    return dataclasses.replace(
        setup, pools=pools, policy=dataclasses.replace(setup.policy, budget_usd_per_hour=budget)
    )


def paused(decision: model.Decision, pools: Sequence[str], *, active: Mapping[str, int]) -> model.Decision:
    """The decision with each paused pool's target held at its active nodes: no launch, no release."""
    held = {p: active.get(p, 0) for p in pools if p in decision.target_nodes}
    if not held:
        return decision
    target = {**decision.target_nodes, **held}
    before, after = sum(active.values()), sum(target.values())
    action = decision.action
    if action is not model.Action.HOLD:
        steady = model.Action.STEADY
        action = (
            model.Action.SCALE_UP if after > before else model.Action.SCALE_DOWN if after < before else steady
        )
    reasons = decision.reasons + tuple(f"{p}: paused by the operator" for p in sorted(held))
    return dataclasses.replace(decision, target_nodes=target, action=action, reasons=reasons)


def _inputs_summary(inputs: policy.DecisionInputs) -> dict[str, object]:
    return {
        "synced": inputs.synced,
        "metrics": {
            name: {
                "rate_rps": m.rate_rps,
                "queue_depth": m.queue_depth,
                "latency_p99_s": m.latency_p99_s,
                "tier_rps": dict(m.tier_rps),
            }
            for name, m in inputs.metrics.items()
        },
        "active": dict(inputs.active),
        "leaving": dict(inputs.leaving),
        "unavailable": sorted(inputs.unavailable),
        "problems": list(inputs.problems),
    }
