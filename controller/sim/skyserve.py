"""SkyServe's request-rate autoscaler: replicas are cloud nodes it launches itself.

Every 20 s: rate = requests of the last 60 s / 60 (its load balancer counts them), target =
ceil(rate / (0.8 x gpu_rps)); a scale-up applies only after the target stayed higher for 300 s, a
scale-down after 1200 s lower. Spot first; on-demand only once spot has no room (no dynamic fallback).
The private GPUs always serve, so only the replicas beyond them are launched (the reading that helps).
"""

from __future__ import annotations

import math

from controller.ports import fakes
from controller.sim import world as world_mod


class SkyServe:
    name = "skyserve"
    needs_concurrency = False
    period_s = 20
    window_s = 60
    up_delay_s = 300
    down_delay_s = 1200

    def __init__(self, w: world_mod.World) -> None:
        self.w = w
        self.infra = w.infra
        sc = w.scenario
        self.private = sc.private_gpus
        self.target_qps = 0.8 * sc.workload.gpu_rps
        self.up_threshold = self.up_delay_s // self.period_s
        self.down_threshold = self.down_delay_s // self.period_s
        self.up_count = 0
        self.down_count = 0
        self.target = 0
        """Cloud replicas SkyServe keeps (it relaunches preempted ones)."""
        self.order = sorted(sc.pool_specs, key=lambda p: not p.spot)
        self.next_wake = 0.0
        self._names = 0

    def live(self) -> list[fakes.FakeInstance]:
        """Replicas that will stay: launched, not under an interruption notice."""
        t = self.w.clock.t
        return [i for i in self.infra.instances.values() if i.notice_at is None or i.notice_at > t]

    def wake(self, t: int) -> None:
        if t >= self.next_wake:
            self.next_wake = t + self.period_s
            rate = self.w.view.count(t - self.window_s, t) / self.window_s
            wanted = max(0, math.ceil(rate / self.target_qps - 1e-9) - self.private)
            if wanted > self.target:
                self.up_count += 1
                self.down_count = 0
                if self.up_count >= self.up_threshold:
                    self.target, self.up_count = wanted, 0
            elif wanted < self.target:
                self.down_count += 1
                self.up_count = 0
                if self.down_count >= self.down_threshold:
                    self.target, self.down_count = wanted, 0
            else:
                self.up_count = self.down_count = 0
        self._converge()

    def _converge(self) -> None:
        live = self.live()
        gpus = sum(i.gpus for i in live)
        for spec in self.order:
            while gpus < self.target and self._room(spec.name) > 0:
                self._names += 1
                self.infra.launch(spec.name, f"{spec.name}-{self._names}")
                gpus += spec.gpus_per_node
        # Scale down the newest on-demand replicas first, then the newest spot ones.
        for inst in sorted(live, key=lambda i: (self.infra.pools[i.pool].spot, -i.launched_at)):
            if gpus - inst.gpus < self.target:
                break
            self.infra.terminate(inst.name)
            gpus -= inst.gpus

    def _room(self, pool: str) -> int:
        spec = self.infra.pools[pool]
        return spec.max_nodes - sum(1 for i in self.infra.instances.values() if i.pool == pool)

    def serving_gpus(self) -> int:
        t = self.w.clock.t
        return self.private + sum(i.gpus for i in self.infra.instances.values() if i.ready_at <= t)
