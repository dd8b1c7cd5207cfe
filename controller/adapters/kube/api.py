"""What every part of the Kubernetes adapter shares: the client, the contract's labels, one error type.

Every call goes through the typed client, so tests against an API emulator send the requests a real
cluster gets; client and network failures become `KubeError` with a message saying what failed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client import exceptions as k8s_errors

from controller.runtime import errors

LABEL_PLACEMENT = "gpuburst.io/placement"
LABEL_POOL = "gpuburst.io/pool"
LABEL_NODE = "gpuburst.io/node"
BURST_SELECTOR = f"{LABEL_PLACEMENT}=burst"
GPU_RESOURCE = "nvidia.com/gpu"

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


def describe(exc: Exception, host: str) -> str:
    """One line for an API failure: the status and the server's own message, or why it is unreachable."""
    if isinstance(exc, k8s_errors.ApiException):
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = str(json.loads(exc.body or "{}").get("message", ""))
        return f"HTTP {exc.status} {exc.reason or ''}".rstrip() + (f": {message}" if message else "")
    reason = getattr(exc, "reason", None) or exc
    return f"Kubernetes API at {host} unreachable ({type(reason).__name__}: {reason})"


class Api:
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
            raise KubeError(f"{what}: {describe(exc, self.host)}") from exc
