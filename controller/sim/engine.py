"""The replay loop: one contender over one scenario, second by second, and what it cost.

Each second: the cloud's own events (nodes joining, spot notices, interruptions), a metrics scrape on
scrape boundaries, the contender when it is due or when the world changed, then one step of the fluid
queue at the capacity that serves in that second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from controller.ports import fakes
from controller.sim import queue, scenario, world


class Contender(Protocol):
    name: str
    next_wake: float
    needs_concurrency: bool

    def wake(self, t: int) -> None:
        """Act at second t: called when due and whenever the cloud changed by itself."""
        ...

    def serving_gpus(self) -> int:
        """GPUs serving in the current second, private included."""
        ...


@dataclass
class Run:
    """One contender's replay: the per-second series and the totals the report shows."""

    contender: str
    arrivals: np.ndarray
    ready_gpus: np.ndarray
    billed_nodes: np.ndarray
    usd_per_hour: np.ndarray
    arrived: float
    met: float
    dropped: float
    p99_latency_s: float
    launches: int
    releases: int
    interruptions: int
    max_burst_nodes: int
    billed_gpus: np.ndarray
    missed: np.ndarray
    """Requests per second that missed the SLO (served late or dropped): where the attainment was lost."""

    @property
    def slo_attainment(self) -> float:
        return self.met / self.arrived if self.arrived > 0 else 1.0

    @property
    def cost_usd(self) -> float:
        return float(self.usd_per_hour.sum() / 3600.0)

    @property
    def burst_gpu_hours(self) -> float:
        return float(self.billed_gpus.sum() / 3600.0)


Progress = Callable[[int], None]


def run(
    sc: scenario.Scenario,
    make: Callable[[world.World], Contender],
    *,
    progress: Progress | None = None,
) -> Run:
    w = world.World(sc)
    contender = make(w)
    n = sc.duration_s
    arrivals = sc.arrivals.tolist()
    ready = [0] * n
    missed = [0.0] * n
    q = w.queue
    infra = w.infra
    clock = w.clock
    view = w.view
    conc = w.concurrency
    track = contender.needs_concurrency
    scrape = sc.scrape_interval_s
    gpu_rps = sc.workload.gpu_rps
    next_event = infra.next_event_at()
    gpus = 0
    capacity = 0.0
    dirty = True
    report_every = max(1, n // 200) if progress is not None else n
    t = 0
    while t < n:
        clock.t = float(t)
        changed = False
        if next_event is not None and next_event <= t:
            changed = infra.advance()
            next_event = infra.next_event_at()
        if t % scrape == 0:
            view.scrape(t, backlog=q.backlog, serving_gpus=gpus)
        if changed or t >= contender.next_wake:
            contender.wake(t)
            next_event = infra.next_event_at()
            dirty = True
        if dirty:
            gpus = contender.serving_gpus()
            capacity = gpus * gpu_rps
            dirty = False
        if progress is not None and t % report_every == 0:
            progress(t)
        # Up to the next second where anything but the queue happens, only the queue steps.
        stop = min(n, t - t % scrape + scrape, t - t % report_every + report_every)
        stop = _next_due(t, stop, contender.next_wake, next_event)
        ready[t:stop] = [gpus] * (stop - t)
        _steady(q, arrivals[t:stop], capacity, conc if track else None, missed=missed, start=t)
        t = stop
    clock.t = float(max(0, n - 1))
    if progress is not None:
        progress(n)
    instances = list(infra.gone) + list(infra.instances.values())
    bill = billing(
        instances,
        duration_s=n,
        granularity_s=sc.billing_granularity_s,
        minimum_s=sc.billing_minimum_s,
        prices={p.spec.name: p.spec.price_per_hour for p in sc.pools},
    )
    return Run(
        contender=contender.name,
        arrivals=sc.arrivals,
        ready_gpus=np.asarray(ready, dtype=np.int64),
        billed_nodes=bill.nodes,
        usd_per_hour=bill.usd_per_hour,
        billed_gpus=bill.gpus,
        missed=np.asarray(missed),
        arrived=q.arrived,
        met=q.met,
        dropped=q.dropped,
        p99_latency_s=q.quantile(0.99),
        launches=len(instances),
        releases=sum(1 for i in instances if i.ended == "released" and not _noticed(i, end=n - 1)),
        interruptions=sum(1 for i in instances if _noticed(i, end=n - 1)),
        max_burst_nodes=bill.max_alive,
    )


def _noticed(inst: fakes.FakeInstance, *, end: float) -> bool:
    """The cloud announced the node's end while it was still there: an interruption took it, whether it
    went at the deadline or a policy drained and released it on the notice."""
    gone = inst.gone_at if inst.gone_at is not None else end
    return inst.notice_at is not None and inst.notice_at <= gone


def _next_due(t: int, stop: int, *dues: float | None) -> int:
    """The first second after t and before `stop` at which one of `dues` has come, else `stop`."""
    for due in dues:
        if due is not None and due < stop:
            stop = max(t + 1, math.ceil(due))
    return stop


def _steady(
    q: queue.FluidQueue,
    arrivals: list[float],
    capacity: float,
    conc: list[float] | None,
    *,
    missed: list[float],
    start: int,
) -> None:
    """Seconds in which only the queue moves, at one capacity; their misses go into `missed` from `start`."""
    if conc is None and q.backlog <= 0.0 and max(arrivals) <= capacity:
        step = q.step
        for a in arrivals:  # nothing waits and nothing will: every request is met (the common case)
            step(a, capacity)
        return
    step_missed = q.step_missed
    for i, a in enumerate(arrivals):
        missed[start + i] = step_missed(a, capacity)
        if conc is not None:
            conc.append(q.last_concurrency)


@dataclass
class Billing:
    nodes: np.ndarray
    gpus: np.ndarray
    usd_per_hour: np.ndarray
    max_alive: int


def billing(
    instances: Iterable[fakes.FakeInstance],
    *,
    duration_s: int,
    granularity_s: int,
    minimum_s: float,
    prices: dict[str, float],
) -> Billing:
    """Per-second billed nodes and burn rate: a node bills from its launch request until it is gone,
    at least `minimum_s`, rounded up to the billing granularity (and never past the end of the trace)."""
    # Integer node counts per pool, priced at the end: sums of +price/-price would drift.
    per_pool = {pool: np.zeros(duration_s + 1, dtype=np.int64) for pool in prices}
    gpus = np.zeros(duration_s + 1, dtype=np.int64)
    alive = np.zeros(duration_s + 1, dtype=np.int64)
    for inst in instances:
        start = int(inst.launched_at)
        end = duration_s if inst.gone_at is None else math.ceil(inst.gone_at)
        lasted = max(end - start, minimum_s)
        billed = int(math.ceil(lasted / granularity_s) * granularity_s)
        stop = min(duration_s, start + billed)
        per_pool[inst.pool][start] += 1
        per_pool[inst.pool][stop] -= 1
        gpus[start] += inst.gpus
        gpus[stop] -= inst.gpus
        alive[start] += 1
        alive[min(duration_s, end)] -= 1
    counts = {pool: np.cumsum(d)[:duration_s] for pool, d in per_pool.items()}
    nodes = sum(counts.values(), np.zeros(duration_s, dtype=np.int64))
    usd = sum((c * prices[pool] for pool, c in counts.items()), np.zeros(duration_s))
    return Billing(
        nodes=nodes,
        gpus=np.cumsum(gpus)[:duration_s],
        usd_per_hour=usd,
        max_alive=int(np.cumsum(alive)[:duration_s].max(initial=0)),
    )
