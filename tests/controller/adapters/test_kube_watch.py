"""KubeCluster's watch caches and its Events, over real HTTP against the kmock-based emulator."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from controller.adapters import kube as kube_adapter
from controller.core import model
from controller.ports import clock as clock_mod
from tests.support import kube_emulator
from tests.support.kube_emulator import Kube

WORKLOAD, POOL = "face-compare", "aws-g5-spot"
POD_LABELS = {"app.kubernetes.io/name": WORKLOAD, "gpuburst.io/placement": "burst", "gpuburst.io/pool": POOL}


@pytest.fixture
def kube() -> Iterator[Kube]:
    with kube_emulator.running() as k:
        yield k


class Seconds:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_thousand_pods_elsewhere_cost_no_list_call_per_tick(kube: Kube) -> None:
    kube.add_node("gpu-a")
    kube.add_pod("web-1", node="gpu-a", labels=POD_LABELS)
    kube.add_node("private-1", pool=None)
    for i in range(1000):  # another team's pods, some on the private node
        kube.add_pod(f"batch-{i}", node="private-1" if i % 2 else None, namespace=f"team-{i % 10}")
    cluster = kube_adapter.KubeCluster(kube.api_client, "face-compare")
    try:
        per_tick = []
        for tick in range(10):
            before = len(kube.lists())
            nodes = cluster.burst_nodes()
            per_tick.append(len(kube.lists()) - before)
            pods = 1 if tick <= 4 else 2
            assert nodes == {"gpu-a": model.ClusterNode("gpu-a", POOL, ready=True, pods=pods)}, tick
            if tick == 4:  # the cluster moves: the watch brings it in
                kube.add_pod("web-2", node="gpu-a", labels=POD_LABELS)
                kube.add_pod(f"batch-{1000}", node="gpu-a", namespace="team-0")
                kube.delete("pods", "web-1")
                kube.add_pod("web-1b", node="gpu-a", labels=POD_LABELS)
                assert cluster.wait_for(kube.version())
                assert cluster.burst_nodes()["gpu-a"].pods == 2
        assert per_tick == [2] + [0] * 9  # the first read lists nodes and burst pods; then none
        watched = [r.split("?")[0] for r in kube.requests("GET") if "watch=true" in r]
        assert watched == ["GET /api/v1/nodes", "GET /api/v1/namespaces/face-compare/pods"]  # one each, held
        assert all("team-" not in r for r in kube.requests())
    finally:
        cluster.close()


def test_a_watch_that_expires_lists_again_and_resumes(kube: Kube) -> None:
    kube.add_node("gpu-a")
    cluster = kube_adapter.KubeCluster(kube.api_client, "face-compare")
    try:
        assert set(cluster.burst_nodes()) == {"gpu-a"}
        kube.expire_watches()  # 410 Gone on the open watches: the history they resume from is compacted
        kube.add_node("gpu-b")
        assert cluster.wait_for(kube.version())
        assert set(cluster.burst_nodes()) == {"gpu-a", "gpu-b"}
        assert cluster.nodes.lists == cluster.pods.lists == 2
        nodes = [r for r in kube.lists() if r.startswith("GET /api/v1/nodes")]
        assert len(nodes) == 2
    finally:
        cluster.close()


def test_a_cache_whose_watch_is_down_too_long_is_a_failed_read_never_empty(kube: Kube) -> None:
    seconds = Seconds()
    kube.add_node("gpu-a")
    cluster = kube_adapter.KubeCluster(kube.api_client, "face-compare", stale_after_s=30, clock=seconds)
    cluster.nodes._retry_s = cluster.pods._retry_s = 0.05
    try:
        assert set(cluster.burst_nodes()) == {"gpu-a"}
        kube.fail(r"^/api/v1/nodes", 503, times=None)  # lists and watches of nodes fail from now on
        kube.expire_watches()
        _until(lambda: cluster.nodes._failing_since is not None)
        seconds.t = 20.0
        assert set(cluster.burst_nodes()) == {"gpu-a"}  # within the bound: the last known state
        seconds.t = 31.0
        with pytest.raises(
            kube_adapter.KubeError, match=r"watch nodes gpuburst.io/placement=burst down for 31s"
        ):
            cluster.burst_nodes()

        kube.run(lambda e: e.faults.clear())  # the API is back: the next list brings the cache back
        _until(lambda: cluster.nodes._failing_since is None)
        assert set(cluster.burst_nodes()) == {"gpu-a"}
    finally:
        cluster.close()


def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- Events ---------------------------------------------------------------------------------------------
def _report(*transitions: model.Transition, cause: model.Cause) -> model.TickReport:
    decision = model.Decision(
        at=100.0,
        action=model.Action.SCALE_UP,
        target_nodes={POOL: 1},
        target_gpus={},
        demand_rps={},
        forecast_rps={},
        reasons=(),
        cause=cause,
    )
    return model.TickReport(
        at=100.0, synced=True, decision=decision, nodes={}, transitions=transitions, acted=(), errors=()
    )


def test_launch_and_release_are_events_on_the_node_and_the_deployment_with_the_cause(kube: Kube) -> None:
    S = model.NodeStatus
    kube.add_burst_deployment(WORKLOAD, POOL)
    cluster = kube_adapter.KubeCluster(kube.api_client, "face-compare")
    recorder = kube_adapter.EventRecorder(
        kube.api_client,
        "face-compare",
        workloads=[WORKLOAD],
        clock=clock_mod.FakeClock(1_700_000_000.0),
        locate=cluster.kube_names,
    )
    try:
        launch = model.Transition(100.0, "spot-1", POOL, None, S.REQUESTED, "demand above the bound")
        recorder.observe(_report(launch, cause=model.Cause.DEMAND))
        kube.add_node("ip-10-0-1-23", record="spot-1")  # joins under the kubelet's name
        assert cluster.wait_for(kube.version())
        release = model.Transition(200.0, "spot-1", POOL, S.DRAINING, S.RELEASING, "drained")
        recorder.observe(_report(release, cause=model.Cause.STABILIZATION))

        events = {
            (e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"]): e
            for e in kube.items("events")
        }
        deployment = f"{WORKLOAD}-burst-{POOL}"
        assert set(events) == {
            ("Deployment", deployment, "BurstLaunch"),
            ("Deployment", deployment, "BurstRelease"),
            ("Node", "ip-10-0-1-23", "BurstRelease"),  # not yet a Node at launch
        }
        assert "cause demand" in events["Deployment", deployment, "BurstLaunch"]["message"]
        node_event = events["Node", "ip-10-0-1-23", "BurstRelease"]
        assert "cause stabilization" in node_event["message"]
        assert node_event["metadata"]["namespace"] == "default"
        assert node_event["involvedObject"]["uid"] == "ip-10-0-1-23"  # what kubectl describe node matches
        uid = kube.get("deployments", deployment)["metadata"]["uid"]  # type: ignore[index]
        assert events["Deployment", deployment, "BurstLaunch"]["involvedObject"]["uid"] == uid
        assert node_event["source"]["component"] == "gpuburst"
    finally:
        cluster.close()


def test_an_event_that_cannot_be_recorded_is_logged_and_the_tick_goes_on(
    kube: Kube, caplog: pytest.LogCaptureFixture
) -> None:
    kube.add_burst_deployment(WORKLOAD, POOL)
    kube.fail(r"/events$", 403, times=None)  # no RBAC for events
    recorder = kube_adapter.EventRecorder(
        kube.api_client, "face-compare", workloads=[WORKLOAD], clock=clock_mod.FakeClock()
    )
    launch = model.Transition(1.0, "spot-1", POOL, None, model.NodeStatus.REQUESTED, "demand")

    recorder.observe(_report(launch, cause=model.Cause.DEMAND))  # does not raise

    assert kube.items("events") == []
    assert "recording an Event failed" in caplog.text
