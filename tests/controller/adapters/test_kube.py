"""KubeCluster with the real `kubernetes` client over HTTP against the extended kmock emulator."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from controller.adapters import kube as kube_adapter
from controller.core import model
from tests.support import kube_emulator
from tests.support.kube_emulator import Kube

WORKLOAD, POOL = "face-compare", "aws-g5-spot"
DEPLOYMENT = f"{WORKLOAD}-burst-{POOL}"
POD_LABELS = {"app.kubernetes.io/name": WORKLOAD, "gpuburst.io/placement": "burst", "gpuburst.io/pool": POOL}


@pytest.fixture
def kube() -> Iterator[Kube]:
    with kube_emulator.running() as k:
        yield k


@pytest.fixture
def cluster(kube: Kube) -> Iterator[kube_adapter.KubeCluster]:
    cluster = kube_adapter.KubeCluster(kube.api_client, "face-compare")
    yield cluster
    cluster.close()


def fresh(kube: Kube, cluster: kube_adapter.KubeCluster) -> dict[str, model.ClusterNode]:
    """burst_nodes() once the watch caches have seen every write so far (they follow in milliseconds)."""
    assert cluster.wait_for(kube.version())
    return dict(cluster.burst_nodes())


def running_pods(kube: Kube, node: str) -> list[str]:
    return sorted(
        p["metadata"]["name"]
        for p in kube.items("pods")
        if p["spec"].get("nodeName") == node and not p["metadata"].get("deletionTimestamp")
    )


# -- burst_nodes ----------------------------------------------------------------------------------------
def test_burst_nodes_are_found_by_label_with_the_readiness_rules(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_node("ip-10-0-1-23.ec2.internal", record="aws-g5-spot-100-0")
    kube.add_node("booting", gpus=0)  # kubelet Ready, device plugin not registered yet
    kube.add_node("not-ready", ready=False)
    kube.add_node("cordoned", unschedulable=True, pool="aws-g5-ondemand")
    kube.add_node(
        "noticed", taints=[{"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}]
    )
    kube.add_node("disrupted", taints=[{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}])
    kube.add_node("private-gpu", pool=None)  # the private cluster's own GPU node: not ours
    kube.add_node("labelled-private", pool=None, labels={"gpuburst.io/placement": "private"})

    nodes = fresh(kube, cluster)

    assert nodes == {
        "aws-g5-spot-100-0": model.ClusterNode("aws-g5-spot-100-0", POOL, ready=True),
        "booting": model.ClusterNode("booting", POOL, ready=False),
        "not-ready": model.ClusterNode("not-ready", POOL, ready=False),
        "cordoned": model.ClusterNode("cordoned", "aws-g5-ondemand", ready=True, cordoned=True),
        "noticed": model.ClusterNode("noticed", POOL, ready=True, interrupting=True),
        "disrupted": model.ClusterNode("disrupted", POOL, ready=True, interrupting=True),
    }
    assert kube.lists() == [  # once; then the watches keep the caches current
        "GET /api/v1/nodes?labelSelector=gpuburst.io/placement=burst",
        "GET /api/v1/namespaces/face-compare/pods?labelSelector=gpuburst.io/placement=burst",
    ]


def test_pods_per_node_count_the_burst_pods_that_hold_the_node(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    for name in ("gpu-a", "gpu-b", "gpu-c"):
        kube.add_node(name)
    kube.add_node("private-gpu", pool=None)
    kube.add_pod("web-1", node="gpu-a", labels=POD_LABELS)
    kube.add_pod("web-2", node="gpu-a", labels=POD_LABELS)
    kube.add_pod("starting", node="gpu-a", phase="Pending", labels=POD_LABELS)  # pulling its image: holds it
    kube.add_pod("agent", node="gpu-a", namespace="monitoring", labels=POD_LABELS)  # not our namespace
    kube.add_pod("unlabelled", node="gpu-a")  # not a burst Deployment's pod
    kube.add_pod("dcgm-exporter", node="gpu-a", namespace="kube-system", owner=("DaemonSet", "dcgm"))
    kube.add_pod("done", node="gpu-a", phase="Succeeded")
    kube.add_pod("crashed", node="gpu-a", phase="Failed")
    kube.add_pod("static", node="gpu-a", owner=None, annotations={"kubernetes.io/config.mirror": "abc"})
    kube.add_pod("unscheduled", node=None, phase="Pending")
    kube.add_pod("web-3", node="gpu-b", labels=POD_LABELS)
    kube.add_pod("private-1", node="private-gpu")

    nodes = fresh(kube, cluster)

    assert {name: n.pods for name, n in nodes.items()} == {"gpu-a": 3, "gpu-b": 1, "gpu-c": 0}
    assert len(kube.lists()) == 2  # one node list, one pod list, whatever the number of nodes


def test_a_burst_node_without_its_controller_name_is_known_by_its_node_name(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_node("legacy")
    kube.patch("nodes", "legacy", {"metadata": {"labels": {"gpuburst.io/node": None}}})
    kube.add_pod("web-1", node="legacy", labels=POD_LABELS)

    assert fresh(kube, cluster) == {"legacy": model.ClusterNode("legacy", POOL, ready=True, pods=1)}
    assert cluster.drain("legacy") == 0
    assert running_pods(kube, "legacy") == []


def test_a_node_registered_twice_under_one_name_holds_the_pods_of_both(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_node("ip-10-0-1-23", record="spot-1", ready=False)  # the old registration, lingering
    kube.add_node("ip-10-0-1-24", record="spot-1")
    kube.add_pod("web-1", node="ip-10-0-1-23", labels=POD_LABELS)
    kube.add_pod("web-2", node="ip-10-0-1-24", labels=POD_LABELS)

    assert fresh(kube, cluster) == {"spot-1": model.ClusterNode("spot-1", POOL, ready=True, pods=2)}
    cluster.cordon("spot-1")
    assert fresh(kube, cluster)["spot-1"].cordoned  # both registrations
    assert cluster.drain("spot-1") == 0
    assert running_pods(kube, "ip-10-0-1-23") == running_pods(kube, "ip-10-0-1-24") == []


# -- cordon ---------------------------------------------------------------------------------------------
def test_cordon_marks_the_node_and_its_replicaset_pods_once(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_node("ip-10-0-1-23", record="spot-1")
    kube.add_pod("web-1", node="ip-10-0-1-23", labels=POD_LABELS)
    kube.add_pod("dcgm-exporter", node="ip-10-0-1-23", owner=("DaemonSet", "dcgm"))

    cluster.cordon("spot-1")

    node = kube.get("nodes", "ip-10-0-1-23")
    assert node is not None and node["spec"]["unschedulable"] is True
    web = kube.get("pods", "web-1")
    assert web is not None and web["metadata"]["annotations"][kube_adapter.DELETION_COST] == "-1000"
    dcgm = kube.get("pods", "dcgm-exporter")
    assert dcgm is not None and kube_adapter.DELETION_COST not in dcgm["metadata"]["annotations"]
    assert fresh(kube, cluster)["spot-1"].cordoned

    writes = len(kube.requests("PATCH"))
    cluster.cordon("spot-1")
    assert len(kube.requests("PATCH")) == writes == 2  # the node and one pod, the first time only


def test_cordon_of_a_node_gone_from_the_cluster_does_nothing(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    cluster.cordon("spot-9")
    assert cluster.drain("spot-9") == 0
    assert kube.requests("PATCH") == kube.requests("POST") == []


def test_after_cordon_a_lower_replica_count_removes_the_cordoned_nodes_pod(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_node("gpu-a")
    kube.add_node("gpu-b")
    kube.add_burst_deployment(WORKLOAD, POOL, replicas=2)
    kube.step()
    older, newer = running_pods(kube, "gpu-a"), running_pods(kube, "gpu-b")
    assert len(older) == len(newer) == 1  # the ReplicaSet alone would remove the newer pod first

    cluster.cordon("gpu-a")  # the reconciler's act order: cordon, set replicas, drain
    cluster.set_replicas(WORKLOAD, POOL, 1)
    kube.step(2)

    assert running_pods(kube, "gpu-a") == []
    assert running_pods(kube, "gpu-b") == newer
    assert fresh(kube, cluster)["gpu-a"].pods == 0


# -- drain ----------------------------------------------------------------------------------------------
def test_drain_waits_for_the_disruption_budget_and_never_forces(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_node("gpu-a")
    kube.add_node("gpu-b")
    kube.add_burst_deployment(WORKLOAD, POOL, replicas=2)
    kube.add_pdb(DEPLOYMENT, match_labels=POD_LABELS, min_available=2)
    kube.step()
    [pod] = running_pods(kube, "gpu-a")
    kube.add_pod("dcgm-exporter", node="gpu-a", owner=("DaemonSet", "dcgm"))

    cluster.cordon("gpu-a")
    assert cluster.drain("gpu-a") == 1  # 429: evicting would leave 1 of the 2 the budget wants
    assert running_pods(kube, "gpu-a") == ["dcgm-exporter", pod]
    assert kube.requests("DELETE") == []

    # The replacement comes up elsewhere; the next tick's drain goes through.
    kube.add_node("gpu-c")
    cluster.set_replicas(WORKLOAD, POOL, 3)
    kube.step()
    assert cluster.drain("gpu-a") == 0
    assert running_pods(kube, "gpu-a") == ["dcgm-exporter"]
    assert fresh(kube, cluster)["gpu-a"].pods == 1  # terminating: still holds the node
    kube.step()  # the kubelet finishes it
    assert fresh(kube, cluster)["gpu-a"].pods == 0
    assert kube.requests("DELETE") == []  # evictions only


def test_a_budget_with_max_unavailable_lets_one_pod_go_at_a_time(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_node("gpu-a", gpus=2)
    kube.add_burst_deployment(WORKLOAD, POOL, replicas=2)
    kube.add_pdb(DEPLOYMENT, match_labels=POD_LABELS, max_unavailable=1)
    kube.step()
    kube.add_node("gpu-b", gpus=2)
    cluster.cordon("gpu-a")

    assert cluster.drain("gpu-a") == 1  # the first goes; the second waits for its replacement
    kube.step()
    assert len(running_pods(kube, "gpu-b")) == 1
    assert cluster.drain("gpu-a") == 0
    kube.step()
    assert len(running_pods(kube, "gpu-b")) == 2


def test_drain_evicts_the_others_when_one_eviction_fails_and_names_it(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_node("gpu-a", gpus=3)
    for name in ("web-1", "web-2", "web-3"):
        kube.add_pod(name, node="gpu-a", labels=POD_LABELS)
    kube.fail(r"/pods/web-2/eviction$", 500)
    kube.fail(r"/pods/web-3/eviction$", 404)  # deleted since the list: gone is what we want

    with pytest.raises(kube_adapter.KubeError, match=r"drain gpu-a: evict pod face-compare/web-2: HTTP 500"):
        cluster.drain("gpu-a")
    assert running_pods(kube, "gpu-a") == ["web-2", "web-3"]

    assert cluster.drain("gpu-a") == 0
    assert running_pods(kube, "gpu-a") == []


# -- set_replicas ---------------------------------------------------------------------------------------
def test_set_replicas_writes_the_scale_subresource_only_when_it_changes(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_burst_deployment(WORKLOAD, POOL)
    scale = f"/apis/apps/v1/namespaces/face-compare/deployments/{DEPLOYMENT}/scale"

    cluster.set_replicas(WORKLOAD, POOL, 3)
    cluster.set_replicas(WORKLOAD, POOL, 3)

    deployment = kube.get("deployments", DEPLOYMENT)
    assert deployment is not None and deployment["spec"]["replicas"] == 3
    assert kube.requests() == [f"GET {scale}", f"PUT {scale}", f"GET {scale}"]


def test_a_scale_conflict_is_retried_with_a_fresh_read(kube: Kube, cluster: kube_adapter.KubeCluster) -> None:
    kube.add_burst_deployment(WORKLOAD, POOL)

    def another_writer(deployment: kube_emulator.Obj) -> None:
        deployment["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "2"

    kube.interfere("deployments", DEPLOYMENT, another_writer)
    cluster.set_replicas(WORKLOAD, POOL, 2)

    deployment = kube.get("deployments", DEPLOYMENT)
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert [r.split()[0] for r in kube.requests()] == ["GET", "PUT", "GET", "PUT"]


def test_a_conflict_that_already_set_the_count_needs_no_write(
    kube: Kube, cluster: kube_adapter.KubeCluster
) -> None:
    kube.add_burst_deployment(WORKLOAD, POOL)
    kube.interfere("deployments", DEPLOYMENT, lambda d: d["spec"].update(replicas=4))

    cluster.set_replicas(WORKLOAD, POOL, 4)

    assert [r.split()[0] for r in kube.requests()] == ["GET", "PUT", "GET"]


def test_endless_conflicts_give_up_with_a_clear_error(kube: Kube, cluster: kube_adapter.KubeCluster) -> None:
    kube.add_burst_deployment(WORKLOAD, POOL)
    kube.interfere(
        "deployments", DEPLOYMENT, lambda d: d["metadata"].update(labels={"churn": "yes"}), times=None
    )

    with pytest.raises(kube_adapter.KubeError, match=r"still conflicting after 5 attempts"):
        cluster.set_replicas(WORKLOAD, POOL, 1)
    assert len(kube.requests("PUT")) == 5
    deployment = kube.get("deployments", DEPLOYMENT)
    assert deployment is not None and deployment["spec"]["replicas"] == 0


def test_a_missing_deployment_is_named(cluster: kube_adapter.KubeCluster) -> None:
    with pytest.raises(
        kube_adapter.KubeError, match=r"Deployment face-compare/face-compare-burst-nope not found"
    ):
        cluster.set_replicas(WORKLOAD, "nope", 1)
    with pytest.raises(ValueError, match="replicas must be >= 0"):
        cluster.set_replicas(WORKLOAD, POOL, -1)


def test_a_custom_naming_convention_and_namespace(kube: Kube) -> None:
    kube.create(
        {
            "kind": "Deployment",
            "metadata": {"name": "fc-spot", "namespace": "inference"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "fc"}},
                "template": {"metadata": {"labels": {"app": "fc"}}, "spec": {"containers": [{"name": "c"}]}},
            },
        }
    )
    cluster = kube_adapter.KubeCluster(kube.api_client, "inference", deployment_name="fc-{pool}")

    cluster.set_replicas("face-compare", "spot", 2)

    deployment = kube.get("deployments", "fc-spot", namespace="inference")
    assert deployment is not None and deployment["spec"]["replicas"] == 2


# -- failures -------------------------------------------------------------------------------------------
def test_an_api_error_is_one_clear_line(kube: Kube, cluster: kube_adapter.KubeCluster) -> None:
    kube.fail(r"^/api/v1/nodes", 503)

    with pytest.raises(kube_adapter.KubeError) as err:
        cluster.burst_nodes()

    assert str(err.value) == (
        "list nodes gpuburst.io/placement=burst: HTTP 503 Service Unavailable: "
        "injected fault on GET /api/v1/nodes"
    )


def test_an_unreachable_api_server_raises_for_every_call() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = kube_adapter.api_client(host=f"http://127.0.0.1:{port}/")
    client.configuration.retries = 0
    cluster = kube_adapter.KubeCluster(client, timeout_s=2)

    for call in (cluster.burst_nodes, lambda: cluster.cordon("n"), lambda: cluster.drain("n")):
        with pytest.raises(
            kube_adapter.KubeError, match=rf"Kubernetes API at http://127.0.0.1:{port} unreachable"
        ):
            call()
    with pytest.raises(
        kube_adapter.KubeError, match=r"read scale of Deployment face-compare/face-compare-burst-p"
    ):
        cluster.set_replicas(WORKLOAD, "p", 1)
    cluster.close()
    client.close()  # type: ignore[no-untyped-call]


def test_a_missing_kubeconfig_is_a_user_error(tmp_path: pytest.TempPathFactory) -> None:
    from controller.runtime import errors

    missing = f"{tmp_path}/nope.yaml"
    with pytest.raises(errors.UserError, match=rf"Kubernetes access \(kubeconfig {missing}\)"):
        kube_adapter.api_client(kubeconfig=missing)
