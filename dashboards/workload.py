"""The "face-compare workload" dashboard: traffic, latency against the SLO, queues, batching, replicas.

Every query filters on the `placement`, `pool` (and for requests `tier`) variables, so the same panels
compare private and burst replicas or look at one pool.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash_b

from controller.core import model
from controller.runtime import telemetry as t
from dashboards import panels, promql, rules
from dashboards.panels import Query
from workloads.face_compare import metrics as fc

UID = "face-compare"
FILE = "grafana/face-compare.json"

WHERE = (f'{fc.PLACEMENT}=~"$placement"', f'{fc.POOL}=~"$pool"')
TIER = f'{fc.TIER}=~"$tier"'
RATE = "$__rate_interval"


def _requests() -> str:
    return f"rate({promql.selector(fc.REQUESTS_TOTAL, *WHERE, TIER)}[{RATE}])"


def _gauge(metric: str) -> str:
    return promql.selector(metric, *WHERE)


def build() -> dash_b.Dashboard:
    d = panels.dashboard(
        uid=UID,
        title="face-compare workload",
        description="Traffic, latency, queues, batching and replicas of the face-compare service.",
        tags=["gpuburst", "face-compare"],
    )
    for name, label, metric, description in (
        (fc.PLACEMENT, "Placement", fc.READY, "private (always there) or burst (cloud nodes)"),
        (fc.POOL, "Pool", fc.READY, "private, or the cloud pool a burst replica runs in"),
        (fc.TIER, "Tier", fc.REQUESTS_TOTAL, "traffic tier from the X-Tier header"),
    ):
        d.with_variable(panels.label_variable(name, label, metric=metric, description=description))
    scale_up = promql.selector(t.DECISIONS, f'action="{model.Action.SCALE_UP.value}"')
    d.annotation(
        dash_b.AnnotationQuery()
        .name("Burst scale-up")
        .datasource(panels.DATASOURCE)
        .expr(f"sum(increase({scale_up}[2m])) > 0")
        .enable(True)
        .icon_color("green")
    )
    b = panels.Board(d)
    _overview(b)
    _traffic(b)
    _latency(b)
    _queues(b)
    _replicas(b)
    return d


def _overview(b: panels.Board) -> None:
    b.row("Overview")
    b.add(
        panels.stat(
            "Request rate",
            "Requests answered per second (all codes).",
            Query(f"sum({_requests()})"),
            unit="reqps",
        ),
        panels.stat(
            "5xx ratio",
            "Share of requests answered with a 5xx: 503 for queue full, queue timeout or not ready, 500 "
            f"for faults. The SLO allows {1 - rules.AVAILABILITY_OBJECTIVE:.1%}.",
            Query(rules.error_ratio(RATE, *WHERE, TIER)),
            unit="percentunit",
            thresholds=((None, panels.GREEN), (1 - rules.AVAILABILITY_OBJECTIVE, panels.RED)),
            no_value="no traffic",
        ),
        panels.stat(
            "p99 latency",
            f"99th percentile request latency over all selected tiers; the SLO is {rules.LATENCY_SLO_S:g} s.",
            Query(promql.quantile(0.99, fc.REQUEST_DURATION_SECONDS, window=RATE, matchers=[*WHERE, TIER])),
            unit="s",
            thresholds=((None, panels.GREEN), (rules.LATENCY_SLO_S, panels.RED)),
            no_value="no traffic",
        ),
        panels.stat(
            "Ready replicas",
            "Replicas warmed up and accepting requests.",
            Query(f"sum({_gauge(fc.READY)})"),
            unit="none",
            thresholds=((None, panels.RED), (1, panels.GREEN)),
        ),
        panels.stat(
            "Queued images",
            "Images waiting for a batch, all replicas.",
            Query(f"sum({_gauge(fc.QUEUE_DEPTH)})"),
            unit="none",
        ),
        panels.stat(
            "In flight",
            "Requests received and not yet answered, all replicas.",
            Query(f"sum({_gauge(fc.INFLIGHT_REQUESTS)})"),
            unit="none",
        ),
    )


def _traffic(b: panels.Board) -> None:
    b.row("Traffic")
    b.add(
        panels.timeseries(
            "Requests by tier",
            "Requests answered per second by traffic tier (vip, normal, free; invalid for an unknown "
            "X-Tier header), stacked.",
            [Query(f"sum by ({fc.TIER}) ({_requests()})", panels.legend(fc.TIER))],
            unit="reqps",
            stacked=True,
            width=8,
        ),
        panels.timeseries(
            "Requests by code",
            "Requests per second by HTTP status code, stacked. 503 is 'not now' (queue full, queue "
            "timeout, not ready), 4xx is bad input, 500 a fault of the service.",
            [Query(f"sum by ({fc.CODE}) ({_requests()})", panels.legend(fc.CODE))],
            unit="reqps",
            stacked=True,
            width=8,
        ),
        panels.timeseries(
            "Requests by placement and pool",
            "Requests answered per second by where they ran: how much of the load the burst pools carry.",
            [
                Query(
                    f"sum by ({fc.PLACEMENT}, {fc.POOL}) ({_requests()})",
                    panels.legend(fc.PLACEMENT, fc.POOL),
                )
            ],
            unit="reqps",
            stacked=True,
            width=8,
        ),
        panels.timeseries(
            "5xx ratio by tier",
            "Share of each tier's requests answered with a 5xx. Under overload the batcher sheds free "
            "and normal before vip.",
            [Query(rules.error_ratio(RATE, *WHERE, TIER, group=[fc.TIER]), panels.legend(fc.TIER))],
            unit="percentunit",
            limits=[(1 - rules.AVAILABILITY_OBJECTIVE, panels.RED)],
            width=12,
        ),
        panels.timeseries(
            "Requests by endpoint",
            "Requests per second by API route (embed, verify, identify, gallery_*).",
            [Query(f"sum by ({fc.ENDPOINT}) ({_requests()})", panels.legend(fc.ENDPOINT))],
            unit="reqps",
            stacked=True,
            width=12,
        ),
    )


def _latency(b: panels.Board) -> None:
    b.row("Latency")
    duration = fc.REQUEST_DURATION_SECONDS
    matchers = [*WHERE, TIER]
    slo = [(rules.LATENCY_SLO_S, panels.RED)]
    b.add(
        panels.timeseries(
            "Latency by tier",
            "Median and 99th percentile request latency per tier; the dashed line is the "
            f"{rules.LATENCY_SLO_S:g} s SLO on the p99.",
            [
                Query(
                    promql.quantile(0.5, duration, window=RATE, group=[fc.TIER], matchers=matchers),
                    panels.legend(fc.TIER, suffix="p50"),
                ),
                Query(
                    promql.quantile(0.99, duration, window=RATE, group=[fc.TIER], matchers=matchers),
                    panels.legend(fc.TIER, suffix="p99"),
                ),
            ],
            unit="s",
            limits=slo,
        ),
        panels.timeseries(
            "p99 latency by placement",
            "99th percentile latency of private and burst replicas: burst nodes should serve like private "
            "ones once warm.",
            [
                Query(
                    promql.quantile(
                        0.99, duration, window=RATE, group=[fc.PLACEMENT, fc.POOL], matchers=matchers
                    ),
                    panels.legend(fc.PLACEMENT, fc.POOL),
                )
            ],
            unit="s",
            limits=slo,
        ),
        panels.timeseries(
            "Requests over the SLO",
            f"Share of requests slower than {rules.LATENCY_SLO_S:g} s (the latency SLI), against the "
            f"{1 - rules.LATENCY_OBJECTIVE:.0%} the objective allows.",
            [Query(rules.slow_ratio(RATE, *matchers), "slower than SLO")],
            unit="percentunit",
            limits=[(1 - rules.LATENCY_OBJECTIVE, panels.RED)],
            width=24,
        ),
    )


def _queues(b: panels.Board) -> None:
    b.row("Queues and batching")
    where = f"{fc.PLACEMENT}, {fc.POOL}"
    b.add(
        panels.timeseries(
            "Queue depth",
            "Images waiting for a batch per placement and pool. A queue that keeps growing means demand "
            f"exceeds the replicas; each replica refuses new work at {rules.MAX_QUEUE_SIZE} images.",
            [Query(f"sum by ({where}) ({_gauge(fc.QUEUE_DEPTH)})", panels.legend(fc.PLACEMENT, fc.POOL))],
            unit="none",
            stacked=True,
        ),
        panels.timeseries(
            "In-flight requests",
            "Requests received and not yet answered per placement and pool (what Knative-style "
            "concurrency scaling would see).",
            [
                Query(
                    f"sum by ({where}) ({_gauge(fc.INFLIGHT_REQUESTS)})", panels.legend(fc.PLACEMENT, fc.POOL)
                )
            ],
            unit="none",
            stacked=True,
        ),
        panels.timeseries(
            "Batch size",
            "Mean and 99th percentile images per executed batch. Batches near the maximum "
            f"({rules.MAX_BATCH_SIZE}) mean the replicas run at capacity.",
            [
                Query(
                    promql.mean(fc.BATCH_SIZE, window=RATE, group=[fc.PLACEMENT], matchers=WHERE),
                    panels.legend(fc.PLACEMENT, suffix="mean"),
                ),
                Query(
                    promql.quantile(0.99, fc.BATCH_SIZE, window=RATE, group=[fc.PLACEMENT], matchers=WHERE),
                    panels.legend(fc.PLACEMENT, suffix="p99"),
                ),
            ],
            unit="none",
            width=8,
        ),
        panels.timeseries(
            "Inference time",
            "Median and 99th percentile model execution time of one batch, per placement (a different "
            "GPU type on burst nodes shows here).",
            [
                Query(
                    promql.quantile(
                        q, fc.INFERENCE_SECONDS, window=RATE, group=[fc.PLACEMENT], matchers=WHERE
                    ),
                    panels.legend(fc.PLACEMENT, suffix=f"p{q * 100:g}"),
                )
                for q in (0.5, 0.99)
            ],
            unit="s",
            width=8,
        ),
        panels.timeseries(
            "Batches per second",
            "Batches executed per second per placement and pool.",
            [
                Query(
                    f"sum by ({where}) (rate({promql.selector(f'{fc.BATCH_SIZE}_count', *WHERE)}[{RATE}]))",
                    panels.legend(fc.PLACEMENT, fc.POOL),
                )
            ],
            unit="none",
            width=8,
        ),
    )


def _replicas(b: panels.Board) -> None:
    b.row("Replicas")
    where = f"{fc.PLACEMENT}, {fc.POOL}"
    b.add(
        panels.timeseries(
            "Ready replicas by placement and pool",
            "Replicas accepting requests by placement and pool, stacked: private ones are always there, "
            "burst ones follow the controller's ready nodes.",
            [Query(f"sum by ({where}) ({_gauge(fc.READY)})", panels.legend(fc.PLACEMENT, fc.POOL))],
            unit="none",
            stacked=True,
        ),
        panels.timeseries(
            "Replicas not ready",
            "Replicas scraped but not accepting: warming up after start or draining before their node "
            "is released. Many for long means slow warm-up or stuck drains.",
            [
                Query(
                    f"count by ({where}) ({_gauge(fc.READY)} == 0)",
                    panels.legend(fc.PLACEMENT, fc.POOL),
                )
            ],
            unit="none",
            stacked=True,
        ),
    )
