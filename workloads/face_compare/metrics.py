"""The face-compare side of the metric contract (docs/architecture.md, contracts): the collectors behind
its names.

The names and labels live in `contract.metrics`, which the controller reads too; they are re-exported
here for the dashboards and alert rules. Every series carries ``placement`` and ``pool``; nothing else is
exported (no process or platform collectors, no ``_created`` series), so the scrape holds exactly the
contract.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from contract.metrics import (
    ALL_METRICS,
    BATCH_SIZE,
    CODE,
    ENDPOINT,
    INFERENCE_SECONDS,
    INFLIGHT_REQUESTS,
    PLACEMENT,
    POOL,
    QUEUE_DEPTH,
    READY,
    REQUEST_DURATION_SECONDS,
    REQUESTS_TOTAL,
    TIER,
)

__all__ = [
    "ALL_METRICS",
    "BATCH_SIZE",
    "CODE",
    "ENDPOINT",
    "INFERENCE_SECONDS",
    "INFLIGHT_REQUESTS",
    "PLACEMENT",
    "POOL",
    "QUEUE_DEPTH",
    "READY",
    "REQUESTS_TOTAL",
    "REQUEST_DURATION_SECONDS",
    "TIER",
    "WorkloadMetrics",
]

# Values of the endpoint label, one per API route.
ENDPOINT_EMBED: Final = "embed"
ENDPOINT_VERIFY: Final = "verify"
ENDPOINT_IDENTIFY: Final = "identify"
ENDPOINT_GALLERY_ENROL: Final = "gallery_enrol"
ENDPOINT_GALLERY_DELETE: Final = "gallery_delete"
ENDPOINT_GALLERY_LIST: Final = "gallery_list"
# The inference routes and traffic tiers whose series exist at 0 from start.
SERVED_ENDPOINTS: Final = (ENDPOINT_EMBED, ENDPOINT_VERIFY, ENDPOINT_IDENTIFY)
SERVED_TIERS: Final = ("vip", "normal", "free")
# Tier label of a request whose X-Tier header is not a known tier (bounded cardinality).
TIER_INVALID: Final = "invalid"

# Buckets: request latency around the 500 ms SLO of the scenarios; batch sizes up to 1024.
LATENCY_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
INFERENCE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _WithoutCreated(Collector):
    """prometheus-client adds a ``<name>_created`` series per counter and histogram; the contract has
    none, and turning them off with ``disable_created_metrics()`` would change the whole process."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        for family in self._source.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class WorkloadMetrics:
    """The collectors of one service instance, bound to its placement and pool, on its own registry."""

    def __init__(self, *, placement: str, pool: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.placement = placement
        self.pool = pool
        where = (PLACEMENT, POOL)
        self._requests = Counter(
            REQUESTS_TOTAL.removesuffix("_total"),
            "API requests answered, by endpoint, traffic tier and HTTP status code.",
            (*where, ENDPOINT, TIER, CODE),
            registry=self.registry,
        )
        self._duration = Histogram(
            REQUEST_DURATION_SECONDS,
            "Time from receiving an API request to answering it.",
            (*where, ENDPOINT, TIER),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            QUEUE_DEPTH, "Images waiting for a batch.", where, registry=self.registry
        ).labels(placement, pool)
        self.inflight = Gauge(
            INFLIGHT_REQUESTS, "API requests received and not yet answered.", where, registry=self.registry
        ).labels(placement, pool)
        self.batch_size = Histogram(
            BATCH_SIZE, "Images per executed batch.", where, buckets=BATCH_BUCKETS, registry=self.registry
        ).labels(placement, pool)
        self.inference_seconds = Histogram(
            INFERENCE_SECONDS,
            "Model execution time of one batch.",
            where,
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        ).labels(placement, pool)
        self.ready = Gauge(
            READY,
            "1 once warmed up and accepting requests, 0 while starting or draining.",
            where,
            registry=self.registry,
        ).labels(placement, pool)
        self.ready.set(0)
        # Every series from the first scrape: an idle replica reads 0 requests per second (the controller
        # releases idle burst nodes), where an absent series reads "unknown" (and it holds).
        for endpoint in SERVED_ENDPOINTS:
            for tier in SERVED_TIERS:
                self._requests.labels(placement, pool, endpoint, tier, "200")
                self._duration.labels(placement, pool, endpoint, tier)

    def exposition(self) -> bytes:
        """The Prometheus text format of this instance's series."""
        view = CollectorRegistry(auto_describe=False)
        view.register(_WithoutCreated(self.registry))
        return generate_latest(view)

    def observe_request(self, *, endpoint: str, tier: str, code: int, seconds: float) -> None:
        self._requests.labels(self.placement, self.pool, endpoint, tier, str(code)).inc()
        self._duration.labels(self.placement, self.pool, endpoint, tier).observe(seconds)
