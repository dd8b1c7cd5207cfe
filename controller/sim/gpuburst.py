"""The `gpuburst` policy in the simulator: the real Reconciler, ticking on the simulated clock, with
the in-package fakes for its ports. What is simulated here is what runs live."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from controller.core import model, policy
from controller.ports import fakes
from controller.runtime import reconciler
from controller.sim import world as world_mod

TICK_S = 15
"""The controller ticks once per scrape: a tick between scrapes would see nothing new."""
SURGE_CHECK_S = 1
"""Between ticks the replicas are read this often (the live controller's `surge_interval_s`)."""


class Gpuburst:
    name = "gpuburst"
    needs_concurrency = False

    def __init__(self, w: world_mod.World, burst_policy: policy.BurstPolicy) -> None:
        sc = w.scenario
        self.w = w
        if sc.budget_usd_per_hour is not None:
            budget = sc.budget_usd_per_hour
            if burst_policy.budget_usd_per_hour is not None:
                budget = min(budget, burst_policy.budget_usd_per_hour)
            burst_policy = dataclasses.replace(burst_policy, budget_usd_per_hour=budget)
        self.workload = sc.workload.name
        self.tick_s = max(TICK_S, sc.scrape_interval_s)
        self.reconciler = reconciler.Reconciler(
            reconciler.Setup((sc.workload,), sc.pool_specs, burst_policy),
            clock=w.clock,
            metrics=fakes.FakeMetricSource(provider=self._metrics),
            cluster=fakes.FakeCluster(w.infra),
            capacity=fakes.FakeCapacity(w.infra),
            store=fakes.MemoryStore(keep_intents=0),
            pods=fakes.FakePodSource(provider=self._pods),
        )
        self.next_wake = 0.0
        self.next_tick = 0.0
        self.surges = 0
        self.serving = sc.private_gpus

    def _metrics(self, at: float) -> Mapping[str, model.WorkloadMetrics]:
        view = self.w.view
        rate = view.rate(at)
        if rate is None:
            return {self.workload: model.WorkloadMetrics(None, None, problems=("no samples yet",))}
        private = self.w.scenario.private_gpus
        serving = view.serving(at) or 0
        return {
            self.workload: model.WorkloadMetrics(
                rate_rps=rate,
                queue_depth=view.queue(at),
                window_s=view.window_s,
                ready_replicas={"private": min(private, serving), "burst": max(0, serving - private)},
            )
        }

    def _pods(self) -> Mapping[str, model.PodReading]:
        """What the replicas report, read every `SURGE_CHECK_S` as live: the arrivals they counted since
        the last `SURGE_WINDOW_S`, and the requests they hold now (queued, and in service)."""
        t = int(self.w.clock.now())
        w = policy.SURGE_WINDOW_S
        recent = self.w.view.count(t - w, t) / w if t >= w else None
        gpus = self.serving
        q = self.w.queue
        in_service = min(recent or 0.0, gpus * self.w.scenario.workload.gpu_rps) * q.service_s
        return {
            self.workload: model.PodReading(
                recent_rps=recent, in_system=q.backlog + in_service, replicas=gpus
            )
        }

    def wake(self, t: int) -> None:
        if t >= self.next_tick:
            self.next_tick = self.next_wake = t + self.tick_s
            self.reconciler.tick()

    def serving_gpus(self) -> int:
        # The engine asks after every wake and every cloud event; the replicas' reading reuses it.
        self.serving = self.w.scenario.private_gpus + self.w.infra.serving_gpus()
        return self.serving
