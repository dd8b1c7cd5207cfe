"""What every contender in a replay shares: the clock, the cloud, the metrics pipeline, spot interruptions.

Policies differ only in their decisions; they see demand through `MetricsView` (Prometheus-like: samples
every scrape interval, `rate()` over the rate window) and change capacity only through `FakeInfra`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from controller.ports import fakes
from controller.ports.clock import FakeClock
from controller.sim import queue, scenario


class MetricsView:
    """Prometheus as a contender would query it at time t: the newest scrape at or before t."""

    def __init__(self, arrivals: np.ndarray, *, scrape_s: int, window_s: int) -> None:
        self.cum: list[float] = np.concatenate(([0.0], np.cumsum(arrivals))).tolist()
        self.scrape_s = scrape_s
        self.window_s = window_s
        self.queue_samples: dict[int, float] = {}
        self.serving_samples: dict[int, int] = {}

    def last_scrape(self, t: float) -> int:
        return int(t) - int(t) % self.scrape_s

    def rate(self, t: float) -> float | None:
        """Requests/s over the rate window ending at the last scrape; None until two samples exist."""
        s = self.last_scrape(t)
        if s < self.scrape_s:
            return None
        w = min(self.window_s, s)
        w -= w % self.scrape_s
        return (self.cum[s] - self.cum[s - w]) / w

    def scrape(self, s: int, *, backlog: float, serving_gpus: int) -> None:
        """The gauges at a scrape: queue depth and GPU replicas serving."""
        self.queue_samples[s] = backlog
        self.serving_samples[s] = serving_gpus

    def queue(self, t: float) -> float | None:
        return self.queue_samples.get(self.last_scrape(t))

    def serving(self, t: float) -> int | None:
        return self.serving_samples.get(self.last_scrape(t))

    def count(self, start: int, end: int) -> float:
        """Requests that arrived in [start, end), as a load balancer counting them would know."""
        start = max(0, start)
        end = min(len(self.cum) - 1, end)
        return self.cum[end] - self.cum[start] if end > start else 0.0


def lifetimes(sc: scenario.Scenario) -> Callable[[str, int], float | None]:
    """Seconds until the spot interruption of the n-th node launched in a pool, from the seed.

    Keyed by (seed, pool, n), so the n-th node of a pool meets the same fate under every contender.
    """
    rates = {p.spec.name: p.interruptions_per_hour for p in sc.pools if p.spec.spot}

    def lifetime(pool: str, n: int) -> float | None:
        rate = rates.get(pool, 0.0)
        if rate <= 0:
            return None
        return random.Random(f"{sc.seed}/{pool}/{n}").expovariate(rate / 3600.0)

    return lifetime


class World:
    def __init__(self, sc: scenario.Scenario) -> None:
        self.scenario = sc
        self.clock = FakeClock(0.0)
        self.infra = fakes.FakeInfra(self.clock, sc.pool_specs, lifetime=lifetimes(sc))
        self.view = MetricsView(sc.arrivals, scrape_s=sc.scrape_interval_s, window_s=sc.rate_window_s)
        self.queue = queue.FluidQueue(
            service_s=sc.workload.service_time_s, slo_s=sc.workload.slo_s, timeout_s=sc.timeout_s
        )
        self.concurrency: list[float] = []
        """Mean requests in the system per second so far (what Knative's queue-proxies report)."""
