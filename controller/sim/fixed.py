"""Policies that do not decide: the private cluster alone, and cloud nodes bought for the peak."""

from __future__ import annotations

import math

from controller.core import capacity
from controller.sim import scenario
from controller.sim import world as world_mod


class PrivateOnly:
    name = "private-only"
    needs_concurrency = False
    next_wake = math.inf

    def __init__(self, w: world_mod.World) -> None:
        self.gpus = w.scenario.private_gpus

    def wake(self, t: int) -> None:
        return

    def serving_gpus(self) -> int:
        return self.gpus


def peak_nodes(sc: scenario.Scenario) -> dict[str, int]:
    """Nodes per pool, cheapest first, for the trace's highest 60 s-average rate at gpu_rps per GPU."""
    peak = scenario.peak_window_rate(sc.arrivals, 60)
    need = max(0, math.ceil(peak / sc.workload.gpu_rps - 1e-9) - sc.private_gpus)
    out: dict[str, int] = {}
    for spec in capacity.by_price(sc.pool_specs):
        n = min(spec.max_nodes, math.ceil(need / spec.gpus_per_node))
        if n > 0:
            out[spec.name] = n
            need -= n * spec.gpus_per_node
        if need <= 0:
            break
    return out


class StaticPeak:
    """Cloud nodes for the peak, billed and ready for the whole trace (no interruptions)."""

    name = "static-peak"
    needs_concurrency = False
    next_wake = math.inf

    def __init__(self, w: world_mod.World) -> None:
        self.private = w.scenario.private_gpus
        self.cloud = 0
        for pool, n in peak_nodes(w.scenario).items():
            for i in range(n):
                inst = w.infra.launch(pool, f"{pool}-{i}", now=0.0, boot_s=0.0, interruptible=False)
                self.cloud += inst.gpus

    def wake(self, t: int) -> None:
        return

    def serving_gpus(self) -> int:
        return self.private + self.cloud
