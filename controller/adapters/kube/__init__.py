"""The Kubernetes adapter: the Cluster port over watch caches, Events for what the controller did, and
leader election on a Lease.

Layers, each importing only those below it: `cluster`, `events` and `lease` over `watch` (the
informer-style cache) over `api` (the client, the contract's labels, `KubeError`).
"""

from controller.adapters.kube.api import (
    BURST_SELECTOR,
    DEFAULT_DEPLOYMENT,
    DEFAULT_NAMESPACE,
    LABEL_NODE,
    LABEL_PLACEMENT,
    LABEL_POOL,
    KubeError,
    api_client,
)
from controller.adapters.kube.cluster import DELETION_COST, INTERRUPTION_TAINTS, KubeCluster
from controller.adapters.kube.events import EventRecorder
from controller.adapters.kube.lease import LeaseElector, default_identity
from controller.adapters.kube.watch import Reflector

__all__ = [
    "BURST_SELECTOR",
    "DEFAULT_DEPLOYMENT",
    "DEFAULT_NAMESPACE",
    "DELETION_COST",
    "INTERRUPTION_TAINTS",
    "LABEL_NODE",
    "LABEL_PLACEMENT",
    "LABEL_POOL",
    "EventRecorder",
    "KubeCluster",
    "KubeError",
    "LeaseElector",
    "Reflector",
    "api_client",
    "default_identity",
]
