"""The Kubernetes adapter: the Cluster port over the `kubernetes` client, and leader election on a Lease.

`KubeCluster` finds burst nodes by the contract's labels (DESIGN.md section 7), cordons them (marking
their pods to go first when replicas drop), drains them through the Eviction API so PodDisruptionBudgets
hold, and scales the burst Deployments through their scale subresource. `LeaseElector` lets one of several
controller replicas act, through a `coordination.k8s.io/v1` Lease. Every call goes through the typed
client, so tests against an API emulator send the requests a real cluster gets. Nothing here decides
anything; client and network failures become `KubeError` with a message saying what failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation

import kubernetes.client
import kubernetes.config
import kubernetes.utils
import urllib3.exceptions
from kubernetes.client import exceptions as k8s_errors

from controller import ports
from controller.core import model
from controller.runtime import errors, logs

log = logs.get("kube")

LABEL_PLACEMENT = "gpuburst.io/placement"
LABEL_POOL = "gpuburst.io/pool"
LABEL_NODE = "gpuburst.io/node"
BURST_SELECTOR = f"{LABEL_PLACEMENT}=burst"
GPU_RESOURCE = "nvidia.com/gpu"

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
# One list of the pods that hold a node, server-side filtered: bound and not finished.
_HOLDING_PODS = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"

_REFUSED = "refused by a disruption budget"

DEFAULT_NAMESPACE = "face-compare"
DEFAULT_DEPLOYMENT = "{workload}-burst-{pool}"


class KubeError(Exception):
    """A Kubernetes API call failed; the message names the call, the object and the cause."""


def api_client(
    *, host: str | None = None, kubeconfig: str | None = None, context: str | None = None
) -> kubernetes.client.ApiClient:
    """A client for `host` (tests, `kubectl proxy`), a kubeconfig, or the pod's service account.

    Without a host or kubeconfig, the service account is used inside a pod (KUBERNETES_SERVICE_HOST is
    set) and ~/.kube/config elsewhere.
    """
    config = kubernetes.client.Configuration()
    if host:
        config.host = host.rstrip("/")
        return kubernetes.client.ApiClient(config)
    in_cluster = kubeconfig is None and context is None and "KUBERNETES_SERVICE_HOST" in os.environ
    where = "in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig or '~/.kube/config'}"
    try:
        if in_cluster:
            kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        else:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=config, persist_config=False
            )
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        raise errors.UserError(f"Kubernetes access ({where}): {exc}") from exc
    return kubernetes.client.ApiClient(config)


def _describe(exc: Exception, host: str) -> str:
    """One line for an API failure: the status and the server's own message, or why it is unreachable."""
    if isinstance(exc, k8s_errors.ApiException):
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = str(json.loads(exc.body or "{}").get("message", ""))
        return f"HTTP {exc.status} {exc.reason or ''}".rstrip() + (f": {message}" if message else "")
    reason = getattr(exc, "reason", None) or exc
    return f"Kubernetes API at {host} unreachable ({type(reason).__name__}: {reason})"


class _Api:
    """The typed API groups on one client, and the mapping of their errors."""

    def __init__(self, client: kubernetes.client.ApiClient, timeout_s: float) -> None:
        self.host = str(client.configuration.host)
        self.timeout_s = timeout_s
        self.core = kubernetes.client.CoreV1Api(client)
        self.apps = kubernetes.client.AppsV1Api(client)
        self.coordination = kubernetes.client.CoordinationV1Api(client)

    @contextlib.contextmanager
    def call(self, what: str) -> Iterator[None]:
        try:
            yield
        except (k8s_errors.ApiException, urllib3.exceptions.HTTPError) as exc:
            raise KubeError(f"{what}: {_describe(exc, self.host)}") from exc


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
    ) -> None:
        self.api = _Api(client, timeout_s)
        self.namespace = namespace
        self.deployment_name = deployment_name
        self.scale_attempts = scale_attempts

    # -- reads ----------------------------------------------------------------------------------------
    def burst_nodes(self) -> Mapping[str, model.ClusterNode]:
        """Two list calls whatever the cluster's size: the burst nodes, then every pod that holds a node."""
        t = self.api.timeout_s
        with self.api.call(f"list nodes {BURST_SELECTOR}"):
            nodes = self.api.core.list_node(label_selector=BURST_SELECTOR, _request_timeout=t).items
        with self.api.call("list pods on nodes"):
            pods = self.api.core.list_pod_for_all_namespaces(field_selector=_HOLDING_PODS, _request_timeout=t)
        held: dict[str, int] = {}
        for pod in pods.items:
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
            return f"evict pod {where}: {_describe(exc, self.api.host)}"
        except urllib3.exceptions.HTTPError as exc:
            raise KubeError(f"evict pod {where}: {_describe(exc, self.api.host)}") from exc
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
        """The burst nodes the controller calls `node`: by label, or by node name for unlabelled ones."""
        t = self.api.timeout_s
        with self.api.call(f"find node {node}"):
            by_label = f"{BURST_SELECTOR},{LABEL_NODE}={node}"
            items = self.api.core.list_node(label_selector=by_label, _request_timeout=t).items
            if not items:
                items = self.api.core.list_node(
                    label_selector=f"{BURST_SELECTOR},!{LABEL_NODE}",
                    field_selector=f"metadata.name={node}",
                    _request_timeout=t,
                ).items
        return items

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


# -- leader election ----------------------------------------------------------------------------------
def default_identity() -> str:
    """Host name (the pod's name in a cluster) plus a random part, unique across restarts."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro_time(t: float) -> datetime.datetime:
    # The client writes datetimes with isoformat(), which drops a zero fraction, and the API server's
    # MicroTime needs one: keep the fraction non-zero (off by at most a microsecond).
    value = datetime.datetime.fromtimestamp(t, tz=datetime.UTC)
    return value if value.microsecond else value.replace(microsecond=1)


class LeaseElector:
    """Leader election on a `coordination.k8s.io/v1` Lease, timed by the injected Clock.

    The algorithm is client-go's: a candidate takes the Lease when it is absent, released, or unchanged
    for a whole lease duration as measured on the candidate's own clock (so clock skew between replicas
    does not matter), renews it while it holds it, and every write carries the resourceVersion it read,
    so of two candidates only one wins (the other gets 409). The holder stops acting `renew_deadline_s`
    after its last successful renewal, before anyone else may take over; when it stops renewing, another
    replica takes over one lease duration after it last saw a renewal. (`kubernetes.leaderelection`
    reads the wall clock and blocks in its own loop, so neither a FakeClock nor our jobs could drive it.)
    """

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        identity: str,
        *,
        clock: ports.Clock,
        name: str = "gpuburst-controller",
        namespace: str = DEFAULT_NAMESPACE,
        lease_duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        timeout_s: float = 5.0,
    ) -> None:
        if not identity:
            raise ValueError("a leader election identity must not be empty")
        if not 0 < renew_deadline_s < lease_duration_s:
            raise ValueError(
                f"renew_deadline_s ({renew_deadline_s}) must be positive and below lease_duration_s "
                f"({lease_duration_s}), or two replicas could act at once"
            )
        self.api = _Api(client, timeout_s)
        self.identity = identity
        self.clock = clock
        self.name = name
        self.namespace = namespace
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.holder: str | None = None
        """The holder as last seen, for the API and telemetry."""
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None

    def is_leader(self) -> bool:
        """True while the last renewal is recent enough that no other replica can have taken over."""
        return self._renewed_at is not None and self.clock.now() < self._renewed_at + self.renew_deadline_s

    def acquire_or_renew(self) -> bool:
        """One round: take or renew the Lease if that is allowed now. Returns whether this replica leads.

        Raises KubeError when the API cannot be reached; leadership then lapses at the renew deadline.
        """
        now = self.clock.now()
        where = f"Lease {self.namespace}/{self.name}"
        t = self.api.timeout_s
        with self.api.call(f"read {where}"):
            try:
                lease = self.api.coordination.read_namespaced_lease(
                    self.name, self.namespace, _request_timeout=t
                )
            except k8s_errors.ApiException as exc:
                if exc.status != 404:
                    raise
                return self._create(now, where)
        spec = lease.spec or kubernetes.client.V1LeaseSpec()
        record = (
            spec.holder_identity,
            spec.lease_duration_seconds,
            spec.acquire_time,
            spec.renew_time,
            spec.lease_transitions,
        )
        if record != self._observed:
            self._observed, self._observed_at = record, now
        self.holder = spec.holder_identity or None
        duration = spec.lease_duration_seconds or self.lease_duration_s
        ours = spec.holder_identity == self.identity
        if spec.holder_identity and not ours and now < self._observed_at + duration:
            self._renewed_at = None
            return False
        lease.spec = kubernetes.client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_duration_s,
            acquire_time=spec.acquire_time if ours and spec.acquire_time else _micro_time(now),
            renew_time=_micro_time(now),
            lease_transitions=(spec.lease_transitions or 0) + (0 if ours else 1),
        )
        with self.api.call(f"{'renew' if ours else 'take over'} {where}"):
            try:
                self.api.coordination.replace_namespaced_lease(
                    self.name, self.namespace, lease, _request_timeout=t
                )
            except k8s_errors.ApiException as exc:
                if exc.status != 409:
                    raise
                self._renewed_at = None  # another candidate wrote first: it leads
                return False
        if not ours:
            log.info(
                "leadership acquired", extra={"identity": self.identity, "previous": spec.holder_identity}
            )
        self._won(now, lease.spec)
        return True

    def release(self) -> None:
        """Give the Lease up on a clean shutdown, so that another replica takes over at its next round."""
        if not self.is_leader():
            return
        self._renewed_at = None
        where = f"Lease {self.namespace}/{self.name}"
        t = self.api.timeout_s
        with self.api.call(f"release {where}"):
            try:
                lease = self.api.coordination.read_namespaced_lease(
                    self.name, self.namespace, _request_timeout=t
                )
                if lease.spec is None or lease.spec.holder_identity != self.identity:
                    return
                lease.spec.holder_identity = None
                self.api.coordination.replace_namespaced_lease(
                    self.name, self.namespace, lease, _request_timeout=t
                )
            except k8s_errors.ApiException as exc:
                if exc.status not in (404, 409):  # gone, or someone else has it now
                    raise
        log.info("leadership released", extra={"identity": self.identity})

    def _create(self, now: float, where: str) -> bool:
        spec = kubernetes.client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_duration_s,
            acquire_time=_micro_time(now),
            renew_time=_micro_time(now),
            lease_transitions=0,
        )
        body = kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(name=self.name, namespace=self.namespace), spec=spec
        )
        with self.api.call(f"create {where}"):
            try:
                self.api.coordination.create_namespaced_lease(
                    self.namespace, body, _request_timeout=self.api.timeout_s
                )
            except k8s_errors.ApiException as exc:
                if exc.status != 409:
                    raise
                self._renewed_at = None  # another candidate created it first
                return False
        log.info("leadership acquired", extra={"identity": self.identity, "previous": None})
        self._won(now, spec)
        return True

    def _won(self, now: float, spec: kubernetes.client.V1LeaseSpec) -> None:
        self._renewed_at = now
        self.holder = self.identity
        self._observed = (
            spec.holder_identity,
            spec.lease_duration_seconds,
            spec.acquire_time,
            spec.renew_time,
            spec.lease_transitions,
        )
        self._observed_at = now
