"""A controller over the in-package fakes and a chosen store, restartable like a real process."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from controller import ports
from controller.core import model, policy
from controller.ports import clock, fakes
from controller.runtime import api, auth, reconciler, store, telemetry

SPOT = model.PoolSpec("spot", gpus_per_node=1, price_per_hour=0.4, boot_s=240, max_nodes=10, spot=True)
ONDEMAND = model.PoolSpec("ondemand", gpus_per_node=1, price_per_hour=1.0, boot_s=240, max_nodes=10)
FACE = model.WorkloadSpec("face", gpu_rps=25, service_time_s=0.06, slo_s=0.5, private_gpus=2)


class World:
    """One cloud + cluster (FakeInfra), one metric source and one store file, and the controller.

    `restart()` drops the Reconciler and its store connection and builds new ones over the same world
    and database: what a crashed and restarted controller process sees.
    """

    def __init__(
        self,
        db: Path | None = None,
        *,
        pools: Sequence[model.PoolSpec] = (SPOT, ONDEMAND),
        workloads: Sequence[model.WorkloadSpec] = (FACE,),
        burst_policy: policy.BurstPolicy | None = None,
        apply_delay_s: float = 0.0,
        start: float = 1000.0,
        observers: Sequence[Callable[[model.TickReport], None]] = (),
    ) -> None:
        self.clock = clock.FakeClock(start)
        self.infra = fakes.FakeInfra(self.clock, pools, apply_delay_s=apply_delay_s)
        self.metrics = fakes.FakeMetricSource()
        self.cluster: ports.Cluster = fakes.FakeCluster(self.infra)
        self.capacity: ports.Capacity = fakes.FakeCapacity(self.infra)
        self.setup = reconciler.Setup(tuple(workloads), tuple(pools), burst_policy or policy.BurstPolicy())
        self.db = db
        self.observers = list(observers)
        self.reports: list[model.TickReport] = []
        self.store: ports.Store = fakes.MemoryStore()
        self.rec = self.restart()

    def restart(self, *, metrics: ports.MetricSource | None = None) -> reconciler.Reconciler:
        if isinstance(self.store, store.SqliteStore):
            self.store.close()
        if self.db is not None:
            self.store = store.SqliteStore(self.db)
        self.rec = reconciler.Reconciler(
            self.setup,
            clock=self.clock,
            metrics=metrics or self.metrics,
            cluster=self.cluster,
            capacity=self.capacity,
            store=self.store,
            observers=[self.reports.append, *self.observers],
        )
        return self.rec

    def run(self, seconds: float, *, every: float = 15.0) -> model.TickReport:
        """Tick now, then every `every` seconds while within `seconds`."""
        end = self.clock.now() + seconds
        report = self.rec.tick()
        while self.clock.now() + every <= end:
            self.clock.advance(every)
            report = self.rec.tick()
        return report

    def billed_node_seconds(self, pool: str) -> float:
        """Node-seconds the ledger should hold, from the reports: between two committed ticks, the nodes
        the earlier one left billing (every status but released), downtime between them included."""
        return sum(
            sum(a.nodes.get(pool, {}).values()) * (b.at - a.at) for a, b in itertools.pairwise(self.reports)
        )

    def statuses(self) -> dict[str, str]:
        return {n: r.status.value for n, r in self.store.load().records.items()}

    def close(self) -> None:
        if isinstance(self.store, store.SqliteStore):
            self.store.close()


PLAIN = policy.BurstPolicy(
    target_utilization=0.8,
    trend_window_s=0.0,
    level_window_s=0.0,
    base_window_s=0.0,
    min_errors=math.inf,
    cold_margin=0.0,
    seasonality=False,
)
"""Sizing without forecasting or headroom, so a test pins the reconcile loop rather than the policy: no
forecaster is ever trusted (min_errors unreachable), the cold forecast is the latest sample (windows of 0
keep only it) and its margin is 0. 200 req/s -> ceil(200 / (25 x 0.8)) = 10 GPUs, whatever the history."""


def api_context(
    w: World, *, tokens: auth.Tokens, tel: telemetry.Telemetry | None = None, **extra: Any
) -> api.Context:
    """The admin API's context over a fake world: its store, clock, pools, last report and tick."""
    return api.Context(
        store=w.store,  # type: ignore[arg-type]
        telemetry=tel or telemetry.Telemetry(workloads=w.setup.workloads, pools=w.setup.pools),
        clock=w.clock,
        pools={p.name: p.max_nodes for p in w.setup.pools},
        tick_interval_s=15.0,
        last_report=lambda: w.rec.last_report,
        tokens=tokens,
        reconcile_now=w.rec.tick,
        **extra,
    )
