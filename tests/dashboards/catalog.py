"""What the code really exports: every series name, its family's type and labels, and the label values
the code can produce, read from the exposition of the real collectors after exercising each of them.

Reading the exposition, not the constants, is the point: a label renamed in a registration call, a
counter's `_total` or a histogram's `_bucket` all show up here exactly as Prometheus will store them.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass

import prometheus_client
from prometheus_client import parser

from controller.core import model
from controller.runtime import telemetry
from workloads.face_compare import batcher
from workloads.face_compare import metrics as fc
from workloads.face_compare import settings as fc_settings

TARGET_LABELS = frozenset({"job", "instance"})
"""Added by Prometheus to every scraped series."""
WORKLOAD = "face-compare"
POOL = "spot"


@dataclass(frozen=True)
class Series:
    name: str
    family: str
    type: str
    labels: frozenset[str]
    buckets: frozenset[str] = frozenset()
    """`le` values as the exposition writes them (`0.5`, `+Inf`), for a histogram's `_bucket`."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float
    cumulative: bool
    """A counter or histogram part: it only grows."""


def _telemetry() -> telemetry.Telemetry:
    """A leading controller after a scale-up and a scale-down tick, an apply of each result, a metrics
    read and an orphan audit."""
    pool = model.PoolSpec(POOL, gpus_per_node=1, price_per_hour=1.0, boot_s=60.0, max_nodes=3)
    spec = model.WorkloadSpec(WORKLOAD, gpu_rps=10.0, service_time_s=0.1, slo_s=0.5, private_gpus=1)
    tel = telemetry.Telemetry(
        workloads=[spec], pools=[pool], ledger=lambda: {POOL: (3600.0, 1.0)}, budget=lambda: 5.0
    )
    decision = model.Decision(
        at=10.0,
        action=model.Action.SCALE_UP,
        target_nodes={POOL: 1},
        target_gpus={WORKLOAD: 2},
        demand_rps={WORKLOAD: 12.0},
        forecast_rps={WORKLOAD: 15.0},
        reasons=("demand",),
    )
    tel.metrics_read({WORKLOAD: model.WorkloadMetrics(rate_rps=12.0)}, at=10.0)
    tel.sample_ages({WORKLOAD: 1.0})
    tel.observe(
        model.TickReport(
            at=10.0,
            synced=True,
            decision=decision,
            nodes={POOL: {"requested": 1}},
            transitions=(model.Transition(10.0, "n1", POOL, None, model.NodeStatus.REQUESTED, "scale up"),),
            acted=(),
            errors=("drain n0: refused",),
            duration_s=0.01,
        )
    )
    released = dataclasses.replace(decision, at=20.0, action=model.Action.SCALE_DOWN, reasons=("demand",))
    tel.observe(model.TickReport(20.0, True, released, {POOL: {"ready": 1}}, (), (), ()))
    tel.apply_finished(POOL, duration_s=30.0, ok=True)
    tel.apply_finished(POOL, duration_s=30.0, ok=False)
    tel.set_leader(True)
    tel.set_orphans("cloud_not_in_cluster", 1)
    return tel


def _serving() -> fc.WorkloadMetrics:
    """A ready burst replica that answered a request and ran a batch."""
    m = fc.WorkloadMetrics(placement="burst", pool=POOL)
    m.observe_request(endpoint=fc.ENDPOINT_EMBED, tier="vip", code=200, seconds=0.1)
    m.queue_depth.set(3)
    m.inflight.set(1)
    m.batch_size.observe(4)
    m.inference_seconds.observe(0.01)
    m.ready.set(1)
    return m


def _families(registry: prometheus_client.CollectorRegistry) -> set[str]:
    return {f.name for f in registry.collect()}


def _series(text: str) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            known = out.get(sample.name)
            labels = frozenset(sample.labels) | TARGET_LABELS | (known.labels if known else frozenset())
            buckets = known.buckets if known else frozenset()
            if "le" in sample.labels:
                buckets = buckets | {sample.labels["le"]}
            out[sample.name] = Series(sample.name, family.name, family.type, labels, buckets)
    return out


def controller() -> tuple[dict[str, Series], set[str]]:
    """The controller's exported series, and the names of every family it registers."""
    tel = _telemetry()
    return _series(tel.exposition().decode()), _families(tel.registry)


def workload() -> tuple[dict[str, Series], set[str]]:
    """The workload's exported series, and the names of every family it registers."""
    m = _serving()
    return _series(m.exposition().decode()), _families(m.registry)


def series() -> dict[str, Series]:
    """Every series name either component exports."""
    return {**controller()[0], **workload()[0]}


def label_values() -> Mapping[str, frozenset[str]]:
    """The values the code can give the labels whose values are a closed set."""
    endpoints = {v for k, v in vars(fc).items() if k.startswith("ENDPOINT_") and isinstance(v, str)}
    return {
        "status": frozenset(s.value for s in model.NodeStatus),
        "action": frozenset(a.value for a in model.Action),
        "reason": frozenset(telemetry.REASONS),
        "result": frozenset({"succeeded", "failed"}),
        "kind": frozenset({"cloud_not_in_cluster", "cluster_not_in_stack"}),
        fc.PLACEMENT: frozenset(typing.get_args(fc_settings.Placement)),
        fc.TIER: frozenset({*batcher.TIERS, fc.TIER_INVALID}),
        fc.ENDPOINT: frozenset(endpoints),
    }


def samples() -> list[Sample]:
    """What Prometheus scrapes from a leading controller, a ready burst replica that served a request and
    a private replica still warming up, each with its target's job and instance."""
    warming = fc.WorkloadMetrics(placement="private", pool="private")
    return [
        *_scrape(_telemetry().exposition().decode(), job="gpuburst-controller", instance="controller-0"),
        *_scrape(_serving().exposition().decode(), job="face-compare", instance="burst-0"),
        *_scrape(warming.exposition().decode(), job="face-compare", instance="private-0"),
    ]


def _scrape(text: str, *, job: str, instance: str) -> list[Sample]:
    out = []
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            cumulative = family.type in ("counter", "histogram") and not s.name.endswith("_created")
            out.append(Sample(s.name, {**s.labels, "job": job, "instance": instance}, s.value, cumulative))
    return out
