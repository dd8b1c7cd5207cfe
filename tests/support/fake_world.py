"""A controller over the in-package fakes and a chosen store, restartable like a real process."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

from controller import ports
from controller.core import model, policy
from controller.ports import clock, fakes
from controller.runtime import reconciler, store

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
