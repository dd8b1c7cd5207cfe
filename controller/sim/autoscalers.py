"""The peers' replica controllers with their default constants: HPA, KEDA over HPA, Knative's KPA.

Each is a `step(t) -> replicas` over a PodWorld, due every `period_s`. HPA and KEDA read demand through
the Prometheus-like view; KPA reads per-second concurrency the way Knative's autoscaler scrapes its
queue-proxies.
"""

from __future__ import annotations

import math
from collections import deque

from controller.sim import provisioners
from controller.sim import world as world_mod


class HPA:
    """autoscaling/v2 HPA on an External AverageValue metric, default behavior.

    desired = ceil(value / target) unless within the 10 % tolerance; scale-up unstabilized, at most
    max(+4, +100 %) per 15 s; scale-down to the highest recommendation of the last 300 s, up to 100 %
    per 15 s; a failed metric query freezes the scale.
    """

    period_s = 15
    tolerance = 0.1
    down_window_s = 300

    def __init__(
        self,
        pw: provisioners.PodWorld,
        *,
        target: float,
        min_replicas: int = 1,
        max_replicas: int,
        null_is_zero: bool = False,
    ) -> None:
        self.pw = pw
        self.view = pw.w.view
        self.target = target
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.null_is_zero = null_is_zero
        self.recommendations: deque[tuple[int, int]] = deque()
        self.seeded = False

    def desired(self, value: float, current: int) -> int:
        if current > 0 and abs(value / (self.target * current) - 1.0) <= self.tolerance:
            return current
        return math.ceil(value / self.target - 1e-9)

    def step(self, t: int) -> None:
        value = self.view.rate(t)
        if value is None:
            if not self.null_is_zero:
                return  # the HPA freezes when its metric cannot be read
            value = 0.0
        current = self.pw.replicas
        if current == 0:
            return  # a scale of zero is KEDA's business, the HPA leaves it alone
        if not self.seeded:
            # A new HPA seeds its history with the current scale, so it cannot scale down at once.
            self.recommendations.append((t, current))
            self.seeded = True
        proposal = self.desired(value, current)
        while self.recommendations and self.recommendations[0][0] <= t - self.down_window_s:
            self.recommendations.popleft()
        down = max([proposal] + [r for _, r in self.recommendations])
        self.recommendations.append((t, proposal))
        rec = current
        rec = max(rec, proposal)  # scale-up stabilization window 0: the proposal itself
        rec = min(rec, down)
        up_limit = max(current + 4, 2 * current)
        rec = min(rec, up_limit, self.max_replicas)
        self.pw.replicas = max(rec, self.min_replicas)


class KEDA:
    """KEDA's Prometheus scaler over its generated HPA: polling 30 s, cooldown 300 s, min 0, max 100,
    activation threshold 0, an empty result read as 0 (ignoreNullValues)."""

    polling_s = 30
    cooldown_s = 300
    max_replicas = 100

    def __init__(self, pw: provisioners.PodWorld, *, target: float) -> None:
        self.pw = pw
        self.view = pw.w.view
        self.hpa = HPA(pw, target=target, min_replicas=1, max_replicas=self.max_replicas, null_is_zero=True)
        self.last_active = 0
        self.next_poll = 0
        self.next_hpa = 0

    @property
    def next_due(self) -> float:
        return min(self.next_poll, self.next_hpa)

    def step(self, t: int) -> None:
        if t >= self.next_poll:
            self.next_poll = t + self.polling_s
            value = self.view.rate(t) or 0.0
            if value > 0:
                self.last_active = t
                if self.pw.replicas == 0:
                    self.pw.replicas = 1
            elif self.pw.replicas > 0 and t - self.last_active > self.cooldown_s:
                self.pw.replicas = 0  # N -> 0 directly, bypassing the HPA's behavior
        if t >= self.next_hpa:
            self.next_hpa = t + HPA.period_s
            self.hpa.step(t)


class KPA:
    """Knative's Pod Autoscaler: 2 s ticks; stable 60 s and panic 6 s windows over per-second total
    concurrency; target 0.7 x containerConcurrency per replica; panic at 200 % and no scale-down while
    panicking; at most 1000x up and halving per tick; scale to zero after 60 s idle plus 30 s grace."""

    period_s = 2
    stable_s = 60
    panic_s = 6
    panic_threshold = 2.0
    utilization = 0.70
    max_up_rate = 1000.0
    max_down_rate = 2.0
    zero_grace_s = 30

    def __init__(self, pw: provisioners.PodWorld) -> None:
        self.pw = pw
        w = pw.w.scenario.workload
        # containerConcurrency: the requests one replica holds while it keeps up with its rate, by
        # Little's law gpu_rps x service time (1 in the shipped scenarios). The other reading,
        # gpu_rps x slo (12), targets a standing queue that the fluid model turns into panic cycles:
        # on flash-crowd it measured 93.1 % SLO at 4.99x the oracle, dominated by this one (100 %, 2.27x).
        self.container_concurrency = max(1, math.floor(w.gpu_rps * w.service_time_s))
        self.target = self.utilization * self.container_concurrency
        self.panic_time: int | None = None
        self.max_panic_pods = 0
        self.last_request = 0

    def step(self, t: int) -> None:
        conc = self.pw.w.concurrency
        if not conc:
            return
        stable = _mean_tail(conc, self.stable_s)
        panic = _mean_tail(conc, self.panic_s)
        if panic > 0:
            self.last_request = t
        ready = max(1.0, float(self.pw.serving_gpus()))
        max_up = math.ceil(self.max_up_rate * ready)
        max_down = math.floor(ready / self.max_down_rate)
        dspc = math.ceil(stable / self.target)
        dppc = math.ceil(panic / self.target)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))
        over = dppc / ready >= self.panic_threshold
        if over:
            self.panic_time = t
        elif self.panic_time is not None and self.panic_time + self.stable_s < t:
            self.panic_time = None
            self.max_panic_pods = 0
        desired = desired_stable
        if self.panic_time is not None:
            desired = max(desired, desired_panic)
            if desired > self.max_panic_pods:
                self.max_panic_pods = desired
            else:
                desired = self.max_panic_pods
        if desired == 0 and t - self.last_request < self.stable_s + self.zero_grace_s:
            desired = 1  # scale to zero waits out the idle window and its grace
        self.pw.replicas = desired


def _mean_tail(values: list[float], n: int) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail)


class ReplicaBaseline:
    """A replica controller plus a node provisioner: how a peer stack bursts."""

    needs_concurrency = False

    def __init__(
        self,
        name: str,
        w: world_mod.World,
        *,
        controller: str,
        provisioner: str,
    ) -> None:
        self.name = name
        self.pw = provisioners.PodWorld(w)
        sc = w.scenario
        target = 0.8 * sc.workload.gpu_rps
        max_replicas = sc.private_gpus + sum(p.spec.max_nodes * p.spec.gpus_per_node for p in sc.pools)
        self.controller: HPA | KEDA | KPA
        self.period_s: float
        if controller == "hpa":
            self.controller = HPA(self.pw, target=target, max_replicas=max_replicas)
            self.period_s = HPA.period_s
        elif controller == "keda":
            self.controller = KEDA(self.pw, target=target)
            self.period_s = 1  # KEDA keeps its own two clocks (poll and HPA)
        elif controller == "kpa":
            self.controller = KPA(self.pw)
            self.period_s = KPA.period_s
            self.needs_concurrency = True
        else:
            raise ValueError(f"unknown replica controller {controller!r}")
        self.provisioner: provisioners.ClusterAutoscaler | provisioners.Karpenter
        if provisioner == "ca":
            self.provisioner = provisioners.ClusterAutoscaler(self.pw)
        elif provisioner == "karpenter":
            self.provisioner = provisioners.Karpenter(self.pw)
        else:
            raise ValueError(f"unknown node provisioner {provisioner!r}")
        self.next_controller = 0.0
        self.next_wake = 0.0

    def wake(self, t: int) -> None:
        if t >= self.next_controller:
            if isinstance(self.controller, KEDA):
                self.controller.step(t)
                self.next_controller = self.controller.next_due
            else:
                self.controller.step(t)
                self.next_controller = t + self.period_s
        self.provisioner.wake(t)
        self.next_wake = min(self.next_controller, self.provisioner.next_due)

    def serving_gpus(self) -> int:
        return self.pw.serving_gpus()
