"""Leader election on a `coordination.k8s.io/v1` Lease, so that one of several controller replicas acts."""

from __future__ import annotations

import datetime
import socket
import uuid

import kubernetes.client
from kubernetes.client import exceptions as k8s_errors

from controller import ports
from controller.adapters.kube.api import DEFAULT_NAMESPACE, Api
from controller.runtime import logs

log = logs.get("kube")


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
        self.api = Api(client, timeout_s)
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
