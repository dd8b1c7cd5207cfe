"""The workload metric contract (docs/architecture.md, contracts): the series a workload exposes and
their labels.

The controller's adapters read these names and the workload's collectors export them, so a rename happens
here once. Every series carries ``placement`` and ``pool``. Histograms add _bucket/_sum/_count; the
counter is exposed with its _total suffix.
"""

from __future__ import annotations

from typing import Final

REQUESTS_TOTAL: Final = "facecompare_requests_total"
REQUEST_DURATION_SECONDS: Final = "facecompare_request_duration_seconds"
QUEUE_DEPTH: Final = "facecompare_queue_depth"
INFLIGHT_REQUESTS: Final = "facecompare_inflight_requests"
BATCH_SIZE: Final = "facecompare_batch_size"
INFERENCE_SECONDS: Final = "facecompare_inference_seconds"
READY: Final = "facecompare_ready"

ALL_METRICS: Final = (
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    QUEUE_DEPTH,
    INFLIGHT_REQUESTS,
    BATCH_SIZE,
    INFERENCE_SECONDS,
    READY,
)

# Labels.
PLACEMENT: Final = "placement"
POOL: Final = "pool"
ENDPOINT: Final = "endpoint"
TIER: Final = "tier"
CODE: Final = "code"
