"""The Cluster port over the `kubernetes` client.

`KubeCluster` finds burst nodes by the contract's labels (docs/architecture.md), cordons them (marking
their pods to go first when replicas drop), drains them through the Eviction API so PodDisruptionBudgets
hold, and scales the burst Deployments through their scale subresource. Its reads come from two watch
caches (`watch.Reflector`): the burst nodes (cluster-scoped, by label) and the burst pods of its
namespace, so a tick costs the API server nothing however many pods the cluster runs. Nothing here
decides anything.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation

import kubernetes.client
import kubernetes.utils
import urllib3.exceptions
from kubernetes.client import exceptions as k8s_errors

from controller.adapters.kube.api import (
    BURST_SELECTOR,
    DEFAULT_DEPLOYMENT,
    DEFAULT_NAMESPACE,
    GPU_RESOURCE,
    LABEL_NODE,
    LABEL_POOL,
    Api,
    KubeError,
    describe,
)
from controller.adapters.kube.watch import Reflector
from controller.core import model
from controller.runtime import logs

log = logs.get("kube")

INTERRUPTION_TAINTS = frozenset(
    {
        "aws-node-termination-handler/spot-itn",  # AWS Node Termination Handler, spot interruption notice
        "karpenter.sh/disrupted",  # Karpenter, about to disrupt the node (interruption included)
        "gpuburst.io/interruption",  # our own, for clouds or tools that only tell us
    }
)
"""Taint keys that announce the node's end: the controller replaces it before the cloud takes it."""

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
DRAIN_FIRST_COST = "-1000"
"""Pods of a cordoned node are the ones the ReplicaSet removes when the replicas drop next."""

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
FINISHED_PHASES = ("Succeeded", "Failed")
_REFUSED = "refused by a disruption budget"


class KubeCluster:
    """The Cluster port on a Kubernetes API server.

    Nodes are known to the controller by their `gpuburst.io/node` label (the name in the pool's stack),
    which the kubelet's node name need not match (EC2 nodes register as ip-10-0-1-23.ec2.internal).
    """

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        deployment_name: str = DEFAULT_DEPLOYMENT,
        timeout_s: float = 10.0,
        scale_attempts: int = 5,
        stale_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = Api(client, timeout_s)
        self.namespace = namespace
        self.deployment_name = deployment_name
        self.scale_attempts = scale_attempts
        self.nodes = Reflector(
            f"nodes {BURST_SELECTOR}",
            self.api.core.list_node,
            api=self.api,
            stale_after_s=stale_after_s,
            clock=clock,
            label_selector=BURST_SELECTOR,
        )
        self.pods = Reflector(
            f"pods {BURST_SELECTOR} in {namespace}",
            self.api.core.list_namespaced_pod,
            namespace,
            api=self.api,
            stale_after_s=stale_after_s,
            clock=clock,
            label_selector=BURST_SELECTOR,
        )

    def close(self) -> None:
        """Stop the watches."""
        self.nodes.stop()
        self.pods.stop()

    def wait_for(self, version: str, timeout_s: float = 10.0) -> bool:
        """Block until both caches have seen `version`: a caller that must read its own writes."""
        return self.nodes.wait_for(version, timeout_s) and self.pods.wait_for(version, timeout_s)

    def kube_names(self, node: str) -> list[str]:
        """The Kubernetes names of the node the controller calls `node` (none before it joins)."""
        return [_name(n) for n in self._find(node)]

    # -- reads ----------------------------------------------------------------------------------------
    def burst_nodes(self) -> Mapping[str, model.ClusterNode]:
        """From the watch caches: no API call once they are synced. The pods counted are the burst
        Deployments' (label `gpuburst.io/placement=burst` in the namespace), bound and not finished."""
        nodes = self.nodes.items()
        held: dict[str, int] = {}
        for pod in self.pods.items():
            if _counts(pod) and pod.spec is not None and pod.spec.node_name:
                held[pod.spec.node_name] = held.get(pod.spec.node_name, 0) + 1
        out: dict[str, model.ClusterNode] = {}
        for node in nodes:
            meta, spec = node.metadata, node.spec
            if meta is None or meta.name is None:
                continue
            labels = meta.labels or {}
            name = labels.get(LABEL_NODE) or meta.name
            if not labels.get(LABEL_POOL):
                log.warning("burst node without a pool label", extra={"kube_node": meta.name})
            taints = (spec.taints if spec is not None else None) or []
            seen = model.ClusterNode(
                name=name,
                pool=labels.get(LABEL_POOL, ""),
                ready=_ready(node),
                cordoned=bool(spec is not None and spec.unschedulable),
                pods=held.get(meta.name, 0),
                interrupting=any(t.key in INTERRUPTION_TAINTS for t in taints),
            )
            other = out.get(name)
            if other is not None:  # re-registered under a new node name while the old one lingers
                log.warning("two nodes carry one name", extra={"node": name, "kube_node": meta.name})
                seen = dataclasses.replace(
                    seen,
                    ready=seen.ready or other.ready,
                    cordoned=seen.cordoned and other.cordoned,
                    pods=seen.pods + other.pods,  # release waits for the pods of both
                    interrupting=seen.interrupting or other.interrupting,
                )
            out[name] = seen
        return out

    # -- actions --------------------------------------------------------------------------------------
    def cordon(self, node: str) -> None:
        """Mark the node unschedulable and its ReplicaSet pods first to go; no write when already so."""
        for found in self._find(node):  # none when gone from the cluster: nothing can land there
            kube_name = _name(found)
            if not (found.spec is not None and found.spec.unschedulable):
                with self.api.call(f"cordon node {kube_name}"):
                    self.api.core.patch_node(
                        kube_name, {"spec": {"unschedulable": True}}, _request_timeout=self.api.timeout_s
                    )
                log.info("cordoned", extra={"node": node, "kube_node": kube_name})
            for pod in self._pods_on(kube_name):
                meta = pod.metadata
                if meta is None or not _owned_by(pod, "ReplicaSet"):
                    continue
                if (meta.annotations or {}).get(DELETION_COST) == DRAIN_FIRST_COST:
                    continue
                with self.api.call(f"annotate pod {meta.namespace}/{meta.name} with {DELETION_COST}"):
                    try:
                        self.api.core.patch_namespaced_pod(
                            str(meta.name),
                            str(meta.namespace),
                            {"metadata": {"annotations": {DELETION_COST: DRAIN_FIRST_COST}}},
                            _request_timeout=self.api.timeout_s,
                        )
                    except k8s_errors.ApiException as exc:
                        if exc.status != 404:  # gone already: nothing to mark
                            raise

    def drain(self, node: str) -> int:
        """Evict the node's pods. DaemonSet and mirror pods stay, as with kubectl drain; pods without a
        controller go too (kubectl would want --force), since the node is going away either way.

        Returns how many still need an eviction: those a PodDisruptionBudget refused now (never forced;
        the next tick asks again) or that failed. Pods already terminating are on their way out and not
        counted here, but `burst_nodes()` counts them until the kubelet is done, so release waits.
        """
        remaining, failures = 0, []
        for found in self._find(node):
            for pod in self._pods_on(_name(found)):
                meta = pod.metadata
                if meta is None or meta.deletion_timestamp is not None:
                    continue
                outcome = self._evict(str(meta.name), str(meta.namespace), node)
                if outcome is not None:
                    remaining += 1
                    if outcome is not _REFUSED:
                        failures.append(outcome)
        if failures:  # the other pods were still evicted: the next tick retries only these
            raise KubeError(f"drain {node}: " + "; ".join(failures))
        return remaining

    def _evict(self, pod: str, namespace: str, node: str) -> str | None:
        """None when the pod is gone or going, `_REFUSED` when a disruption budget said no, else why not."""
        where = f"{namespace}/{pod}"
        body = kubernetes.client.V1Eviction(
            metadata=kubernetes.client.V1ObjectMeta(name=pod, namespace=namespace)
        )
        try:
            self.api.core.create_namespaced_pod_eviction(
                pod, namespace, body, _request_timeout=self.api.timeout_s
            )
        except k8s_errors.ApiException as exc:
            if exc.status == 404:
                return None  # gone already
            if exc.status == 429:
                log.info("eviction refused by a disruption budget", extra={"pod": where, "node": node})
                return _REFUSED
            return f"evict pod {where}: {describe(exc, self.api.host)}"
        except urllib3.exceptions.HTTPError as exc:
            raise KubeError(f"evict pod {where}: {describe(exc, self.api.host)}") from exc
        log.info("evicted", extra={"pod": where, "node": node})
        return None

    def set_replicas(self, workload: str, pool: str, replicas: int) -> None:
        """Write the Deployment's scale subresource under its resourceVersion; re-read on a conflict."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0; got {replicas} for {workload}/{pool}")
        name = self.deployment_name.format(workload=workload, pool=pool)
        where = f"Deployment {self.namespace}/{name}"
        t = self.api.timeout_s
        for attempt in range(1, self.scale_attempts + 1):
            with self.api.call(f"read scale of {where}"):
                try:
                    scale = self.api.apps.read_namespaced_deployment_scale(
                        name, self.namespace, _request_timeout=t
                    )
                except k8s_errors.ApiException as exc:
                    if exc.status == 404:
                        raise KubeError(
                            f"{where} not found: the burst Deployment of workload {workload!r} in pool "
                            f"{pool!r} must exist (deployed with the pool's workload objects)"
                        ) from exc
                    raise
            current = scale.spec.replicas if scale.spec is not None else None
            if current == replicas:
                return
            version = scale.metadata.resource_version if scale.metadata is not None else None
            body = kubernetes.client.V1Scale(
                metadata=kubernetes.client.V1ObjectMeta(
                    name=name, namespace=self.namespace, resource_version=version
                ),
                spec=kubernetes.client.V1ScaleSpec(replicas=replicas),
            )
            with self.api.call(f"scale {where} to {replicas}"):
                try:
                    self.api.apps.replace_namespaced_deployment_scale(
                        name, self.namespace, body, _request_timeout=t
                    )
                except k8s_errors.ApiException as exc:
                    if exc.status == 409:  # someone wrote in between: read again and retry
                        log.info("scale conflict, re-reading", extra={"deployment": name, "attempt": attempt})
                        continue
                    raise
            log.info("scaled", extra={"deployment": name, "from": current, "to": replicas})
            return
        raise KubeError(
            f"scale {where} to {replicas}: still conflicting after {self.scale_attempts} attempts"
        )

    # -- helpers --------------------------------------------------------------------------------------
    def _find(self, node: str) -> list[kubernetes.client.V1Node]:
        """The burst nodes the controller calls `node`, from the cache: by label, or by node name for
        unlabelled ones."""
        nodes = self.nodes.items()
        labelled = [n for n in nodes if (n.metadata.labels or {}).get(LABEL_NODE) == node]
        return labelled or [
            n for n in nodes if n.metadata.name == node and LABEL_NODE not in (n.metadata.labels or {})
        ]

    def _pods_on(self, kube_name: str) -> list[kubernetes.client.V1Pod]:
        """The pods that hold the node: bound to it, not finished, not DaemonSet or mirror pods."""
        selector = f"spec.nodeName={kube_name},status.phase!=Succeeded,status.phase!=Failed"
        with self.api.call(f"list pods on node {kube_name}"):
            pods = self.api.core.list_pod_for_all_namespaces(
                field_selector=selector, _request_timeout=self.api.timeout_s
            )
        return [p for p in pods.items if _counts(p)]


def _name(node: kubernetes.client.V1Node) -> str:
    assert node.metadata is not None and node.metadata.name is not None  # the API always sets it
    return node.metadata.name


def _ready(node: kubernetes.client.V1Node) -> bool:
    """Ready condition true and at least one GPU allocatable (the device plugin has registered)."""
    status = node.status
    if status is None:
        return False
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    try:
        quantity = (status.allocatable or {}).get(GPU_RESOURCE, "0")
        gpus = Decimal(kubernetes.utils.parse_quantity(quantity))  # type: ignore[no-untyped-call]
    except (ValueError, InvalidOperation):
        gpus = Decimal(0)
    return ready and gpus > 0


def _owned_by(pod: kubernetes.client.V1Pod, kind: str) -> bool:
    refs = (pod.metadata.owner_references if pod.metadata is not None else None) or []
    return any(ref.kind == kind for ref in refs)


def _counts(pod: kubernetes.client.V1Pod) -> bool:
    """A pod that keeps its node busy: not a DaemonSet's or a mirror pod, not finished."""
    annotations = (pod.metadata.annotations if pod.metadata is not None else None) or {}
    phase = pod.status.phase if pod.status is not None else None
    return (
        not _owned_by(pod, "DaemonSet")
        and MIRROR_ANNOTATION not in annotations
        and phase not in FINISHED_PHASES
    )
