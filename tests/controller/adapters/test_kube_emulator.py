"""The test Kubernetes API itself: what the adapter tests and end-to-end tests rely on it to do."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client import exceptions as k8s_errors

from tests.support import kube_emulator
from tests.support.kube_emulator import Kube


@pytest.fixture
def kube() -> Iterator[Kube]:
    with kube_emulator.running() as k:
        yield k


def where(kube: Kube) -> dict[str, str | None]:
    return {p["metadata"]["name"]: p["spec"].get("nodeName") for p in kube.items("pods")}


def test_step_schedules_replicas_only_where_they_fit(kube: Kube) -> None:
    kube.add_node("spot-1")
    kube.add_node("spot-2", gpus=2)
    kube.add_node("other-pool", pool="aws-g5-ondemand")
    kube.add_node("not-ready", ready=False)
    kube.add_node("cordoned", unschedulable=True)
    kube.add_node("no-gpu", gpus=0)
    kube.add_node(
        "untainted", pool=None, labels={"gpuburst.io/placement": "burst", "gpuburst.io/pool": "aws-g5-spot"}
    )
    kube.add_node("spot-3", taints=[{"key": "gpuburst.io/interruption", "effect": "NoExecute"}])
    kube.add_burst_deployment("face-compare", "aws-g5-spot", replicas=5)

    kube.step()

    placed = sorted(n or "-" for n in where(kube).values())
    assert placed == ["-", "spot-1", "spot-2", "spot-2", "untainted"]  # one left pending
    deployment = kube.get("deployments", "face-compare-burst-aws-g5-spot")
    assert deployment is not None
    assert deployment["status"] == {
        "observedGeneration": 1,
        "replicas": 5,
        "updatedReplicas": 5,
        "readyReplicas": 4,
        "availableReplicas": 4,
    }

    kube.patch("deployments", "face-compare-burst-aws-g5-spot", {"spec": {"replicas": 4}})
    kube.step()
    assert "-" not in [n or "-" for n in where(kube).values()]  # the pending pod goes first


def test_scale_down_prefers_the_lowest_deletion_cost_then_the_newest(kube: Kube) -> None:
    kube.add_node("spot-1", gpus=3)
    kube.add_burst_deployment("face-compare", "aws-g5-spot", replicas=3)
    kube.step()
    oldest, middle, _newest = sorted(where(kube))
    kube.patch("pods", middle, {"metadata": {"annotations": {kube_emulator.DELETION_COST: "-1000"}}})

    kube.patch("deployments", "face-compare-burst-aws-g5-spot", {"spec": {"replicas": 1}})
    kube.step()
    kube.step()

    assert sorted(where(kube)) == [oldest]


def test_pods_on_a_vanished_node_are_collected(kube: Kube) -> None:
    kube.add_node("spot-1")
    kube.add_pod("web-1", node="spot-1")
    kube.delete("nodes", "spot-1")
    kube.step()
    assert where(kube) == {}


def test_selectors_are_applied_and_unsupported_fields_refused(kube: Kube) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client)
    kube.add_node("spot-1")
    kube.add_node("od-1", pool="aws-g5-ondemand")
    kube.add_node("private-1", pool=None)

    def names(**kw: Any) -> list[str]:
        return [str(n.metadata.name) for n in core.list_node(**kw).items if n.metadata is not None]

    assert names(label_selector="gpuburst.io/pool in (aws-g5-spot, aws-g5-ondemand)") == ["od-1", "spot-1"]
    assert names(label_selector="gpuburst.io/pool notin (aws-g5-spot),gpuburst.io/placement") == ["od-1"]
    assert names(label_selector="!gpuburst.io/pool") == ["private-1"]
    assert names(label_selector="gpuburst.io/pool!=aws-g5-spot") == ["od-1", "private-1"]
    assert names(field_selector="metadata.name=spot-1") == ["spot-1"]
    with pytest.raises(k8s_errors.ApiException) as err:
        core.list_node(field_selector="status.phase=Running")
    assert err.value.status == 400 and "field label not supported" in str(err.value.body)


def test_a_replace_with_a_stale_resource_version_conflicts(kube: Kube) -> None:
    apps = kubernetes.client.AppsV1Api(kube.api_client)
    kube.add_burst_deployment("face-compare", "aws-g5-spot")
    mine = apps.read_namespaced_deployment("face-compare-burst-aws-g5-spot", "face-compare")
    kube.patch("deployments", "face-compare-burst-aws-g5-spot", {"metadata": {"labels": {"edited": "yes"}}})

    assert mine.spec is not None
    mine.spec.replicas = 7
    with pytest.raises(k8s_errors.ApiException) as err:
        apps.replace_namespaced_deployment("face-compare-burst-aws-g5-spot", "face-compare", mine)
    assert err.value.status == 409

    fresh = apps.read_namespaced_deployment("face-compare-burst-aws-g5-spot", "face-compare")
    assert fresh.spec is not None and fresh.metadata is not None
    fresh.spec.replicas = 7
    done = apps.replace_namespaced_deployment("face-compare-burst-aws-g5-spot", "face-compare", fresh)
    assert done.spec is not None and done.spec.replicas == 7
    assert done.metadata is not None and int(done.metadata.resource_version or 0) > int(
        fresh.metadata.resource_version or 0
    )


def test_a_tests_own_kmock_reaction_takes_precedence(kube: Kube) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client)
    kube.add_node("spot-1")
    kube.run(lambda e: e["get /api/v1/nodes"] << 418)

    with pytest.raises(k8s_errors.ApiException) as err:
        core.list_node()
    assert err.value.status == 418
    assert core.read_node("spot-1").metadata is not None  # other requests still reach the emulator
