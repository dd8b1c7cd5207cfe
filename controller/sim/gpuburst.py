"""The `gpuburst` contender in the simulator: the real Reconciler, ticking on the simulated clock, with
the in-package fakes for its cloud, cluster and store, and the simulated Prometheus as its metric
source. What is simulated here is what runs live."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from controller.core import model, policy
from controller.ports import fakes
from controller.runtime import reconciler
from controller.sim import world as world_mod

TICK_S = 15.0
"""The live controller's default tick (`tick_interval_s`)."""


class Gpuburst:
    name = "gpuburst"
    needs_concurrency = False

    def __init__(
        self,
        w: world_mod.World,
        burst_policy: policy.BurstPolicy,
        on_decision: Callable[[model.Decision], None] | None = None,
        *,
        tick_s: float = TICK_S,
    ) -> None:
        sc = w.scenario
        self.w = w
        if sc.budget_usd_per_hour is not None:
            budget = sc.budget_usd_per_hour
            if burst_policy.budget_usd_per_hour is not None:
                budget = min(budget, burst_policy.budget_usd_per_hour)
            burst_policy = dataclasses.replace(burst_policy, budget_usd_per_hour=budget)
        self.workload = sc.workload.name
        self.tick_s = max(tick_s, sc.scrape_interval_s)  # a tick between scrapes would see nothing new
        self.reconciler = reconciler.Reconciler(
            reconciler.Setup((sc.workload,), sc.pool_specs, burst_policy),
            clock=w.clock,
            metrics=self,
            cluster=fakes.FakeCluster(w.infra),
            capacity=fakes.FakeCapacity(w.infra),
            store=fakes.MemoryStore(keep_intents=0),
        )
        self.on_decision = on_decision
        self.next_wake = 0.0
        self.next_tick = 0.0

    def read(
        self, workloads: Sequence[model.WorkloadSpec], *, at: float
    ) -> Mapping[str, model.WorkloadMetrics]:
        """The MetricSource port over the simulated Prometheus (the scenario has one workload)."""
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

    def wake(self, t: int) -> None:
        if t >= self.next_tick:
            self.next_tick = self.next_wake = float(t + self.tick_s)
            report = self.reconciler.tick()
            if self.on_decision is not None:
                self.on_decision(report.decision)

    def serving_gpus(self) -> int:
        return self.w.scenario.private_gpus + self.w.infra.serving_gpus()
