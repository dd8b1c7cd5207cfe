"""How the peers' clusters turn replicas into nodes: the pod model, Cluster Autoscaler and Karpenter.

Constants are the projects' defaults (`docs/baselines.md`). Pods fill the private GPUs first, then cloud nodes
oldest first; on scale-down the ReplicaSet deletes the newest pods first, so the newest cloud nodes
empty out (the reading that helps the baselines: it frees cloud nodes, not private GPUs). A node under
a spot interruption notice is treated as gone for provisioning, so its replacement launches at the
notice, and serves until it really goes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from controller.ports import fakes
from controller.sim import world as world_mod


class PodWorld:
    """One Deployment over private GPUs and cloud nodes, as the peers' clusters run it."""

    def __init__(self, w: world_mod.World) -> None:
        self.w = w
        self.infra = w.infra
        self.private = w.scenario.private_gpus
        self.replicas = self.private
        self._names = 0

    # -- nodes --------------------------------------------------------------------------------------
    def nodes(self) -> list[fakes.FakeInstance]:
        return sorted(self.infra.instances.values(), key=lambda i: (i.launched_at, i.name))

    def doomed(self, inst: fakes.FakeInstance) -> bool:
        return inst.notice_at is not None and inst.notice_at <= self.w.clock.t

    def ready(self, inst: fakes.FakeInstance) -> bool:
        return inst.ready_at <= self.w.clock.t

    def launch(self, pool: str) -> None:
        self._names += 1
        self.infra.launch(pool, f"{pool}-{self._names}")

    def terminate(self, inst: fakes.FakeInstance) -> None:
        self.infra.terminate(inst.name)

    def room(self, pool: str) -> int:
        spec = self.infra.pools[pool]
        return spec.max_nodes - sum(1 for i in self.infra.instances.values() if i.pool == pool)

    # -- pods ---------------------------------------------------------------------------------------
    def cloud_pods(self) -> int:
        return max(0, self.replicas - self.private)

    def serving_gpus(self) -> int:
        ready = sum(i.gpus for i in self.infra.instances.values() if self.ready(i))
        return min(self.replicas, self.private) + min(self.cloud_pods(), ready)

    def unplanned(self) -> int:
        """Pods with no node for them, running or booting (what a provisioner must launch for)."""
        planned = sum(i.gpus for i in self.infra.instances.values() if not self.doomed(i))
        return max(0, self.cloud_pods() - planned)

    def pods_by_node(self) -> Iterator[tuple[fakes.FakeInstance, int]]:
        """Ready nodes with their pods: healthy nodes oldest first, then nodes under notice."""
        left = self.cloud_pods()
        ready = [i for i in self.nodes() if self.ready(i)]
        for inst in sorted(ready, key=self.doomed):
            pods = min(inst.gpus, left)
            left -= pods
            yield inst, pods

    def empty_nodes(self) -> list[fakes.FakeInstance]:
        return [inst for inst, pods in self.pods_by_node() if pods == 0]


def _by_listing(pw: PodWorld) -> list[str]:
    return list(pw.infra.pools)


def _by_price(pw: PodWorld) -> list[str]:
    return [p.name for p in sorted(pw.infra.pools.values(), key=lambda p: (p.price_per_gpu_hour, not p.spot))]


def _launch_for(pw: PodWorld, pods: int, order: list[str]) -> int:
    launched = 0
    for pool in order:
        gpn = pw.infra.pools[pool].gpus_per_node
        while pods > 0 and pw.room(pool) > 0:
            pw.launch(pool)
            pods -= gpn
            launched += 1
    return launched


class ClusterAutoscaler:
    """Kubernetes Cluster Autoscaler: 10 s scans, least-waste expander, 600 s unneeded and delay-after-add.

    With identical 1-GPU nodes the least-waste expander ties, and the first pool listed with room wins.
    A node is unneeded when its GPU request utilization is under 0.5 and its pods fit elsewhere; with
    pods packed oldest-node-first that means empty. Up to 10 empty nodes go at once.
    """

    scan_s = 10
    unneeded_s = 600
    delay_after_add_s = 600
    max_empty_bulk = 10

    def __init__(self, pw: PodWorld) -> None:
        self.pw = pw
        self.next_due = 0.0
        self.last_scale_up = -math.inf
        self.unneeded_since: dict[str, float] = {}

    def wake(self, t: int) -> None:
        if t < self.next_due:
            return
        self.next_due = t + self.scan_s
        pw = self.pw
        if pw.unplanned() > 0 and _launch_for(pw, pw.unplanned(), _by_listing(pw)):
            self.last_scale_up = t
        empty = {i.name: i for i in pw.empty_nodes()}
        self.unneeded_since = {n: self.unneeded_since.get(n, t) for n in empty}
        if t - self.last_scale_up < self.delay_after_add_s:
            return
        ripe = [empty[n] for n, since in self.unneeded_since.items() if t - since >= self.unneeded_s]
        for inst in ripe[: self.max_empty_bulk]:
            pw.terminate(inst)
            del self.unneeded_since[inst.name]


class Karpenter:
    """Karpenter: pending pods batch for 1 s idle / 10 s max, cheapest offering first (spot before
    on-demand); consolidation every 10 s removes empty nodes at once within a 10 % node budget."""

    idle_s = 1
    max_batch_s = 10
    disruption_s = 10
    budget = 0.10

    def __init__(self, pw: PodWorld) -> None:
        self.pw = pw
        self.batch_first: int | None = None
        self.batch_last = 0
        self.last_unplanned = 0
        self.next_disruption = 0.0

    @property
    def next_due(self) -> float:
        due = self.next_disruption
        if self.batch_first is not None:
            due = min(due, self.batch_first + self.max_batch_s, self.batch_last + self.idle_s)
        return due

    def wake(self, t: int) -> None:
        pw = self.pw
        unplanned = pw.unplanned()
        if unplanned > self.last_unplanned:
            if self.batch_first is None:
                self.batch_first = t
            self.batch_last = t
        self.last_unplanned = unplanned
        if self.batch_first is not None and t >= min(
            self.batch_first + self.max_batch_s, self.batch_last + self.idle_s
        ):
            self.batch_first = None
            _launch_for(pw, unplanned, _by_price(pw))
            self.last_unplanned = pw.unplanned()
        if t >= self.next_disruption:
            self.next_disruption = t + self.disruption_s
            self._consolidate()

    def _consolidate(self) -> None:
        pw = self.pw
        empty = pw.empty_nodes()
        price = {p: s.price_per_gpu_hour for p, s in pw.infra.pools.items()}
        # The dearest empty nodes first; within a pool, the newest.
        empty.sort(key=lambda i: (-price[i.pool], -i.launched_at))
        for pool in pw.infra.pools:
            in_pool = sum(1 for i in pw.infra.instances.values() if i.pool == pool)
            allowed = math.ceil(self.budget * in_pool)
            for inst in [i for i in empty if i.pool == pool][:allowed]:
                pw.terminate(inst)
