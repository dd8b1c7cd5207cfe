"""Kubernetes Events for what the controller did, so `kubectl describe node|deployment` shows it.

`EventRecorder.observe` is a reconciler observer: each node transition of a tick (launch, join, drain,
release, failure) becomes a core/v1 Event on the Node (once it has joined) and on the pool's burst
Deployments, carrying the decision's cause (`model.Cause`). Recording is best effort: a failure is
logged and never fails the tick.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Sequence

import kubernetes.client
import urllib3.exceptions
from kubernetes.client import exceptions as k8s_errors

from controller import ports
from controller.adapters.kube.api import DEFAULT_DEPLOYMENT, Api, KubeError
from controller.core import model
from controller.runtime import logs

log = logs.get("kube")

COMPONENT = "gpuburst"
NODE_EVENT_NAMESPACE = "default"
"""Where the kubelet records a Node's Events; `kubectl describe node` finds them by the node's name."""

S = model.NodeStatus
REASONS: dict[model.NodeStatus, tuple[str, str]] = {
    S.REQUESTED: ("BurstLaunch", "Normal"),
    S.READY: ("BurstJoin", "Normal"),
    S.DRAINING: ("BurstDrain", "Normal"),
    S.RELEASING: ("BurstRelease", "Normal"),
    S.RELEASED: ("BurstReleased", "Normal"),
    S.FAILED: ("BurstFailed", "Warning"),
}
"""The Event reason and type of each transition worth telling; provisioning is the cloud's business."""


class EventRecorder:
    """Records a tick's node transitions as Events on the Node and on the burst Deployments."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        namespace: str,
        *,
        workloads: Sequence[str],
        clock: ports.Clock,
        locate: Callable[[str], Sequence[str]] = lambda _node: (),
        deployment_name: str = DEFAULT_DEPLOYMENT,
        timeout_s: float = 5.0,
    ) -> None:
        self.api = Api(client, timeout_s)
        self.namespace = namespace
        self.workloads = tuple(workloads)
        self.clock = clock
        self.locate = locate
        self.deployment_name = deployment_name
        self._uids: dict[str, str] = {}

    def observe(self, report: model.TickReport) -> None:
        """Record the report's transitions; stops at the first unreachable API (one timeout per tick)."""
        cause = report.decision.cause.value
        for t in report.transitions:
            if t.after not in REASONS:
                continue
            reason, kind = REASONS[t.after]
            before = t.before.value if t.before is not None else "new"
            message = f"{t.node} ({t.pool}): {before} -> {t.after.value}, cause {cause}: {t.reason}"
            try:
                for target in self._targets(t):
                    self._emit(target, reason, kind, message[:1024])
            except KubeError as exc:
                log.warning("recording an Event failed", extra={"node": t.node, "error": str(exc)})
                if isinstance(exc.__cause__, urllib3.exceptions.HTTPError):
                    return

    def _targets(self, t: model.Transition) -> list[kubernetes.client.V1ObjectReference]:
        refs = []
        try:
            names = list(self.locate(t.node))
        except KubeError:  # the cache is not synced: the Deployment still gets the Event
            names = []
        for name in names:  # the kubelet's convention: a Node's uid in its Events is its name
            refs.append(
                kubernetes.client.V1ObjectReference(api_version="v1", kind="Node", name=name, uid=name)
            )
        for workload in self.workloads:
            name = self.deployment_name.format(workload=workload, pool=t.pool)
            uid = self._deployment_uid(name)
            if uid is not None:
                refs.append(
                    kubernetes.client.V1ObjectReference(
                        api_version="apps/v1", kind="Deployment", name=name, namespace=self.namespace, uid=uid
                    )
                )
        return refs

    def _deployment_uid(self, name: str) -> str | None:
        """The Deployment's uid (read once), which `kubectl describe` matches; None when it is absent."""
        if name not in self._uids:
            with self.api.call(f"read Deployment {self.namespace}/{name}"):
                try:
                    found = self.api.apps.read_namespaced_deployment(
                        name, self.namespace, _request_timeout=self.api.timeout_s
                    )
                except k8s_errors.ApiException as exc:
                    if exc.status == 404:
                        return None
                    raise
            self._uids[name] = str(found.metadata.uid if found.metadata is not None else "")
        return self._uids[name]

    def _emit(self, ref: kubernetes.client.V1ObjectReference, reason: str, kind: str, message: str) -> None:
        namespace = ref.namespace or NODE_EVENT_NAMESPACE
        now = datetime.datetime.fromtimestamp(self.clock.now(), tz=datetime.UTC)
        event = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(
                name=f"{ref.name}.{uuid.uuid4().hex[:16]}", namespace=namespace
            ),
            involved_object=ref,
            reason=reason,
            message=message,
            type=kind,
            count=1,
            first_timestamp=now,
            last_timestamp=now,
            source=kubernetes.client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
        )
        with self.api.call(f"record Event {reason} on {ref.kind} {ref.name}"):
            self.api.core.create_namespaced_event(namespace, event, _request_timeout=self.api.timeout_s)
