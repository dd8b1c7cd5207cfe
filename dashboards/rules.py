"""The Prometheus recording and alerting rules for the controller and the face-compare workload.

Thresholds derive from the code where the code has the number (histogram buckets, queue limits, node
timeouts); the SLO itself is the one the scenarios and `examples/aws.yaml` use (p99 under 500 ms). Every
alert carries `severity` (`critical` pages, `warning` opens a ticket) and `component`, a `summary` that
names what fired with its value, and a `description` that says what to look at and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import yaml

from controller.core import lifecycle, model
from controller.runtime import telemetry
from dashboards import promql
from workloads.face_compare import metrics as fc
from workloads.face_compare import settings as fc_settings

Severity = Literal["critical", "warning"]

LATENCY_SLO_S = 0.5
"""The latency objective: a request answered within this is good. Must be a bucket boundary."""
LATENCY_OBJECTIVE = 0.99
"""Share of requests that must meet LATENCY_SLO_S (so the p99 stays under it)."""
AVAILABILITY_OBJECTIVE = 0.999
"""Share of requests that must not be answered with a 5xx."""

if LATENCY_SLO_S not in fc.LATENCY_BUCKETS:  # the slow-request ratio reads the bucket at exactly the SLO
    raise AssertionError(f"LATENCY_SLO_S={LATENCY_SLO_S} is not a bucket of {fc.REQUEST_DURATION_SECONDS}")


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window burn-rate alert (Google SRE workbook, chapter 5): the error budget is being spent
    `factor` times faster than it lasts over both `long` and `short` (the short window resets it quickly)."""

    long: str
    short: str
    factor: float
    for_: str
    severity: Severity


BURN_WINDOWS = (
    BurnWindow(long="1h", short="5m", factor=14.4, for_="2m", severity="critical"),  # 2 % of budget in 1 h
    BurnWindow(long="6h", short="30m", factor=6.0, for_="15m", severity="warning"),  # 5 % in 6 h
)
SLI_WINDOWS = ("5m", "30m", "1h", "6h")

TICK_LATE_S = 180.0
"""A leader whose last tick is older than this is stuck (12 ticks at the default 15 s interval)."""
METRICS_STALE_S = 120.0
"""The controller holds while a workload's metrics are unknown; this long means it cannot scale."""
BUDGET_WARN_FRACTION = 0.9
ERRORS_PER_15M = 5
QUEUE_FULL_FRACTION = 0.8

_SETTINGS = fc_settings.Settings.model_fields
MAX_QUEUE_SIZE = int(_SETTINGS["max_queue_size"].default)
MAX_BATCH_SIZE = int(_SETTINGS["max_batch_size"].default)

_TIMEOUTS = lifecycle.Timeouts()
PROVISION_WINDOW = f"{round(2 * _TIMEOUTS.boot_s / 60)}m"
"""No node became ready for twice the boot timeout while some were on their way: the pool cannot boot."""
RELEASE_WINDOW = f"{round(2 * _TIMEOUTS.drain_s / 60)}m"
"""No node was released for twice the drain timeout while some were leaving: the release is stuck."""

RULES_FILE = "rules/gpuburst-rules.yaml"
"""Where the rules are written, relative to `dashboards/` (the stack publishes `**/*rules*.y*ml`)."""


@dataclass(frozen=True)
class Record:
    record: str
    expr: str


@dataclass(frozen=True)
class Alert:
    alert: str
    expr: str
    for_: str
    severity: Severity
    component: Literal["controller", "workload"]
    summary: str
    description: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    name: str
    rules: Sequence[Record | Alert]


def _status(*statuses: model.NodeStatus) -> str:
    return f'status=~"{"|".join(s.value for s in statuses)}"'


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _ratio_name(kind: str, window: str) -> str:
    return f"facecompare:request_{kind}:ratio_rate{window}"


P99_BY_TIER = "facecompare:request_duration_seconds:p99_rate5m"


def error_ratio(window: str, *matchers: str, group: Sequence[str] = ()) -> str:
    """The availability SLI's complement: the share of requests answered with a 5xx.

    Every series counts in the numerator (as 0 unless it is a 5xx), so the ratio reads 0, not "no data",
    while nothing failed; it is empty only when nothing was requested.
    """
    server_error = f'{fc.CODE}=~"5.."'
    errors = f"rate({promql.selector(fc.REQUESTS_TOTAL, *matchers, server_error)}[{window}])"
    everything = f"rate({promql.selector(fc.REQUESTS_TOTAL, *matchers)}[{window}])"
    failed = promql.aggregate("sum", f"{errors} or 0 * {everything}", group)
    return f"{failed} / {promql.aggregate('sum', everything, group)}"


def slow_ratio(window: str, *matchers: str) -> str:
    """The latency SLI's complement: the share of requests slower than LATENCY_SLO_S."""
    duration = fc.REQUEST_DURATION_SECONDS
    fast = promql.selector(f"{duration}_bucket", *matchers, f'le="{LATENCY_SLO_S:g}"')
    everything = promql.selector(f"{duration}_count", *matchers)
    return f"1 - (sum(rate({fast}[{window}])) / sum(rate({everything}[{window}])))"


def slo_records() -> list[Record]:
    """The SLIs over every window the burn-rate alerts read, recorded once instead of per evaluation."""
    rules: list[Record] = []
    for w in SLI_WINDOWS:
        rules.append(Record(_ratio_name("errors", w), error_ratio(w)))
        rules.append(Record(_ratio_name("slow", w), slow_ratio(w)))
    rules.append(
        Record(P99_BY_TIER, promql.quantile(0.99, fc.REQUEST_DURATION_SECONDS, window="5m", group=[fc.TIER]))
    )
    return rules


def _burn_alerts() -> list[Alert]:
    out: list[Alert] = []
    for kind, objective, what, name in (
        ("slow", LATENCY_OBJECTIVE, f"slower than {LATENCY_SLO_S:g} s", "Latency"),
        ("errors", AVAILABILITY_OBJECTIVE, "answered with a 5xx", "Availability"),
    ):
        budget = 1.0 - objective
        for bw in BURN_WINDOWS:
            threshold = f"{bw.factor * budget:g}"
            speed = "Fast" if bw.severity == "critical" else "Slow"
            out.append(
                Alert(
                    alert=f"FaceCompare{name}BudgetBurn{speed}",
                    expr=(
                        f"{_ratio_name(kind, bw.long)} > {threshold}\n"
                        f"and\n{_ratio_name(kind, bw.short)} > {threshold}"
                    ),
                    for_=bw.for_,
                    severity=bw.severity,
                    component="workload",
                    summary=(
                        f"{{{{ $value | humanizePercentage }}}} of face-compare requests {what} over the "
                        f"last {bw.long} (the SLO allows {_percent(budget)})"
                    ),
                    description=(
                        f"The {_percent(objective)} objective's error budget is being spent "
                        f"{bw.factor:g} times faster than it lasts, over both {bw.long} and {bw.short}. "
                        "Check the face-compare dashboard: if queue depth and in-flight requests are "
                        "high, capacity is short; see whether the controller is bursting (gpuburst "
                        "controller dashboard: decisions, budget binding, nodes provisioning). If latency "
                        "is high on burst replicas only, look at those nodes (GPU, network to the private "
                        "cluster)."
                    ),
                )
            )
    return out


def workload_alerts() -> Group:
    ready = fc.READY
    # The records come first in the same group: a group evaluates its rules in order, so the alerts read
    # this evaluation's SLIs (across groups they would lag by an interval, or not, depending on timing).
    rules: list[Record | Alert] = [
        *slo_records(),
        *_burn_alerts(),
        Alert(
            alert="FaceCompareLatencyP99OverSLO",
            expr=f"{P99_BY_TIER} > {LATENCY_SLO_S:g}",
            for_="10m",
            severity="warning",
            component="workload",
            summary=(
                "face-compare p99 latency of tier {{ $labels.tier }} is {{ $value | humanizeDuration }} "
                f"(SLO {LATENCY_SLO_S:g} s)"
            ),
            description=(
                "The 99th percentile over 5 minutes has been above the SLO for 10 minutes. Compare the "
                "tiers: if only free or normal are slow, the batcher is shedding them in favour of vip as "
                "designed while capacity catches up; if every tier is slow, check queue depth, ready "
                "replicas and whether the controller is scaling up."
            ),
        ),
        Alert(
            alert="FaceCompareNoReadyReplicas",
            expr=f"(sum({ready}) or vector(0)) == 0",
            for_="5m",
            severity="critical",
            component="workload",
            summary="No face-compare replica is ready to accept requests",
            description=(
                f"No replica reports {ready} = 1 (or none is scraped at all), so every request fails. "
                "Check the private Deployment's pods (kubectl get pods, events, logs), the model load and "
                "warm-up, and Prometheus' scrape targets."
            ),
        ),
        Alert(
            alert="FaceCompareNoRequestSeries",
            expr=f"count({ready}) > 0\nunless\ncount({fc.REQUESTS_TOTAL})",
            for_="10m",
            severity="warning",
            component="workload",
            summary="face-compare replicas are scraped but export no request series",
            description=(
                f"Ready replicas are scraped but {fc.REQUESTS_TOTAL} is absent. An absent series is not "
                "zero: the controller reads the workload's demand as unknown and holds, so idle burst "
                "nodes keep billing. The workload should export its counters at 0 from start; check its "
                "version and the scrape's metric relabelling."
            ),
        ),
        *_queue_alerts(),
    ]
    return Group("facecompare", rules)


def _queue_alerts() -> list[Alert]:
    """Work piles up faster than the replicas serve it."""
    queue = fc.QUEUE_DEPTH
    where = f"{fc.PLACEMENT}, {fc.POOL}"
    return [
        Alert(
            alert="FaceCompareQueueBacklogGrowing",
            expr=(f"avg({queue}) > {MAX_BATCH_SIZE}\nand\nderiv(sum({queue})[10m:1m]) > 0"),
            for_="10m",
            severity="warning",
            component="workload",
            summary=(
                "face-compare queues hold {{ $value | humanize }} images per replica on average and keep "
                "growing"
            ),
            description=(
                f"More than a full batch ({MAX_BATCH_SIZE} images) waits per replica and the total has been "
                "growing for 10 minutes: requests arrive faster than the replicas serve them. The "
                "controller should be adding burst nodes; if it is not, check its decisions (budget, "
                "max_nodes, holds) on the gpuburst controller dashboard."
            ),
        ),
        Alert(
            alert="FaceCompareQueueNearlyFull",
            expr=f"max by ({where}) ({queue}) > {QUEUE_FULL_FRACTION * MAX_QUEUE_SIZE:g}",
            for_="5m",
            severity="critical",
            component="workload",
            summary=(
                "A face-compare replica in {{ $labels.placement }}/{{ $labels.pool }} has "
                f"{{{{ $value | humanize }}}} images queued (limit {MAX_QUEUE_SIZE})"
            ),
            description=(
                f"Over {QUEUE_FULL_FRACTION:.0%} of the queue limit: the replica will soon answer 503 "
                "queue_full. Find why the controller adds no capacity on the gpuburst controller "
                "dashboard (decisions by reason: hold, budget, max_nodes, unsynced) and lift that limit "
                "(GET /v1/overrides on the admin API shows an operator's; the policy file holds the rest)."
            ),
        ),
    ]


def _leadership_alerts() -> list[Alert]:
    """Exactly one replica leads, and its reconcile job keeps ticking."""
    t = telemetry
    lead = promql.leader_only
    return [
        Alert(
            alert="GpuburstNoLeader",
            expr=f"(sum({t.LEADER}) or vector(0)) < 1",
            for_="5m",
            severity="critical",
            component="controller",
            summary="No gpuburst controller replica holds the leader Lease",
            description=(
                "Nothing scales the burst pools or releases their nodes (cost keeps accruing). Check the "
                "controller pods and their logs for Lease errors (RBAC on coordination.k8s.io leases, API "
                "server reachability). A controller started with --dry-run reports leader 0 on purpose."
            ),
        ),
        Alert(
            alert="GpuburstSeveralLeaders",
            expr=f"sum({t.LEADER}) > 1",
            for_="2m",
            severity="critical",
            component="controller",
            summary="{{ $value }} gpuburst controller replicas act as leader at once",
            description=(
                "Two replicas apply pool stacks and scale Deployments concurrently, each from its own store. "
                "Scale the controller to one replica until the clocks and Lease settings are fixed "
                "(lease duration well above renew deadline), then compare the stacks with the node table "
                "(GET /v1/nodes and /v1/audit?kind=orphan on the admin API)."
            ),
        ),
        Alert(
            alert="GpuburstNotTicking",
            expr=f"time() - {lead(t.LAST_TICK)} > {TICK_LATE_S:g}",
            for_="2m",
            severity="critical",
            component="controller",
            summary="The gpuburst leader's last tick was {{ $value | humanizeDuration }} ago",
            description=(
                "The leader renews its Lease but its reconcile job stopped: a tick hangs (a Kubernetes or "
                "Pulumi call without a timeout) or the scheduler died. Read the controller's logs for the "
                "last tick, then restart the pod (it resumes from its store)."
            ),
        ),
    ]


def _read_alerts() -> list[Alert]:
    """The controller ticks and sees the world (metrics, cluster, stacks)."""
    t = telemetry
    lead = promql.leader_only
    events = promql.events
    return [
        Alert(
            alert="GpuburstTickFailures",
            expr=f"sum by (reason) ({events(t.TICK_FAILURES, window='5m')}) > 0",
            for_="1m",
            severity="critical",
            component="controller",
            summary="gpuburst ticks fail ({{ $labels.reason }}): {{ $value | humanize }} in 5 minutes",
            description=(
                "A tick that fails commits no intent and takes no action, so the controller neither "
                "launches nor releases. reason=store: the SQLite file was removed, corrupted, made "
                "read-only or filled its disk; /readyz names the problem and how to recover (a removed "
                "file is saved as <path>.recovered; `gpuburst store backup` makes copies). "
                "reason=internal: read the controller's logs for the traceback."
            ),
        ),
        Alert(
            alert="GpuburstNotSynced",
            expr=f"{lead(t.SYNCED)} == 0",
            for_="5m",
            severity="warning",
            component="controller",
            summary="The gpuburst controller has not read the whole world for 5 minutes and holds",
            description=(
                "While a read fails (metrics, cluster or pool stacks) the controller holds every pool as "
                f"it is. {t.ERRORS} by part says which read fails; fix that source (Prometheus, API "
                "server credentials, Pulumi backend)."
            ),
        ),
        Alert(
            alert="GpuburstMetricsStale",
            expr=f"{lead(t.METRICS_STALENESS)} > {METRICS_STALE_S:g}",
            for_="3m",
            severity="warning",
            component="controller",
            summary=(
                "gpuburst has had no usable metrics for workload {{ $labels.workload }} for "
                "{{ $value | humanizeDuration }}"
            ),
            description=(
                "The workload's request rate or queue depth is unknown (query failing, no series, targets "
                "down or samples older than max_age_s), so the controller cannot scale it. Check "
                "Prometheus' targets for the workload and the controller's prometheus settings (selector, "
                "window)."
            ),
        ),
    ]


def _action_alerts() -> list[Alert]:
    """What the controller does keeps failing."""
    t = telemetry
    events = promql.events
    failed_applies = events(promql.selector(f"{t.APPLY_DURATION}_count", 'result="failed"'), window="30m")
    return [
        Alert(
            alert="GpuburstErrors",
            expr=f"sum by (part) ({events(t.ERRORS, window='15m')}) > {ERRORS_PER_15M}",
            for_="5m",
            severity="warning",
            component="controller",
            summary="gpuburst {{ $labels.part }} failed {{ $value | humanize }} times in 15 minutes",
            description=(
                "Reads or actions of this part keep failing (metrics, cluster, capacity, commit, drain, "
                "...). The controller retries every tick; its logs carry each error. Persistent drain "
                "errors leave nodes billing; commit errors mean the store is contended or unwritable."
            ),
        ),
        Alert(
            alert="GpuburstApplyFailures",
            expr=f"sum by (pool) ({failed_applies}) > 0",
            for_="1m",
            severity="warning",
            component="controller",
            summary="{{ $value | humanize }} Pulumi applies of pool {{ $labels.pool }} failed in 30 minutes",
            description=(
                "The pool's stack could not converge on the node set the controller wants, so burst "
                "capacity may be missing or nodes may outlive their release. Read the apply's error in "
                "the controller's logs (and `pulumi stack history` of the pool's stack); for capacity "
                "errors the controller tries other pools, for credential or quota errors fix them and the "
                "next tick retries."
            ),
        ),
    ]


def _budget_alerts() -> list[Alert]:
    """The budget is near or capping scale-up."""
    t = telemetry
    lead = promql.leader_only
    return [
        Alert(
            alert="GpuburstBudgetNearlyExhausted",
            expr=(
                f"sum({lead(t.COST_USD_PER_HOUR)})\n>= {BUDGET_WARN_FRACTION:g} * "
                f"max({lead(t.BUDGET_USD_PER_HOUR)})"
            ),
            for_="15m",
            severity="warning",
            component="controller",
            summary="Burst nodes burn {{ $value | humanize }} USD/h, near the budget",
            description=(
                f"The burn rate has been above {BUDGET_WARN_FRACTION:.0%} of the budget for 15 minutes; "
                "the next scale-up will be cut. If the demand is real, raise the budget in the policy file "
                "(or delete an operator override that lowered it: /v1/overrides on the admin API); "
                "otherwise look for nodes that should have been released."
            ),
        ),
        Alert(
            alert="GpuburstBudgetBinding",
            expr=f"max({lead(t.BUDGET_BINDING)}) == 1",
            for_="15m",
            severity="warning",
            component="controller",
            summary="The budget has capped gpuburst's scale-up for 15 minutes",
            description=(
                "The controller wants more burst nodes than the budget pays for, so the workload runs "
                "short of capacity and may miss its latency SLO. Raise the budget in the policy file (or "
                "delete an override that lowered it) or accept the degraded latency; decisions with "
                "reason=budget show how often it binds."
            ),
        ),
    ]


def _node_alerts() -> list[Alert]:
    """Burst nodes move through their lifecycle: they boot, they leave, and none is orphaned."""
    t = telemetry
    s = model.NodeStatus
    lead = promql.leader_only
    events = promql.events
    arriving = lead(promql.selector(t.NODES, _status(s.REQUESTED, s.PROVISIONING)))
    became_ready = events(promql.selector(t.TRANSITIONS, 'status="ready"'), window=PROVISION_WINDOW)
    failed_nodes = events(promql.selector(t.TRANSITIONS, 'status="failed"'), window="1h")
    leaving = lead(promql.selector(t.NODES, _status(s.DRAINING, s.RELEASING, s.FAILED)))
    released = events(promql.selector(t.TRANSITIONS, 'status="released"'), window=RELEASE_WINDOW)
    return [
        Alert(
            alert="GpuburstOrphanNodes",
            expr=f"max by (kind) ({lead(t.ORPHANS)}) > 0",
            for_="15m",
            severity="warning",
            component="controller",
            summary="{{ $value }} orphan burst nodes ({{ $labels.kind }})",
            description=(
                "cloud_not_in_cluster: an instance the stacks hold never joined (or left) the cluster "
                "and bills for nothing; check its boot log and VPN, or remove it from the stack. "
                "cluster_not_in_stack: a node carries the burst labels but no stack owns it; drain and "
                "delete it by hand. The audit log names them: GET /v1/audit?kind=orphan on the admin API."
            ),
        ),
        Alert(
            alert="GpuburstNodesStuckProvisioning",
            expr=(
                f"(sum by (pool) ({arriving}) > 0)\nunless on (pool)\n(sum by (pool) ({became_ready}) > 0)"
            ),
            for_="5m",
            severity="warning",
            component="controller",
            summary="Burst nodes of pool {{ $labels.pool }} are on their way but none became ready in "
            + PROVISION_WINDOW,
            description=(
                "Instances are launched but do not join the cluster as ready GPU nodes (user-data, VPN, "
                "GPU driver or device plugin), or the cloud never starts them. The controller replaces "
                "nodes past the boot timeout, so this loops and bills. Look at one instance's console "
                "output and kubelet logs; meanwhile an override of max_nodes 0 for the pool (PUT "
                "/v1/overrides on the admin API) releases it."
            ),
        ),
        Alert(
            alert="GpuburstNodesFailing",
            expr=f"sum by (pool) ({failed_nodes}) > 0",
            for_="1m",
            severity="warning",
            component="controller",
            summary="{{ $value | humanize }} burst nodes of pool {{ $labels.pool }} failed in the last hour",
            description=(
                "Nodes failed to boot within the boot timeout or vanished (spot interruption, instance "
                "terminated outside Pulumi). The controller releases and replaces them; a steady rate "
                "means the pool is unreliable (spot capacity, bad AMI)."
            ),
        ),
        Alert(
            alert="GpuburstNodesStuckReleasing",
            expr=f"(sum by (pool) ({leaving}) > 0)\nunless on (pool)\n(sum by (pool) ({released}) > 0)",
            for_="5m",
            severity="warning",
            component="controller",
            summary="Burst nodes of pool {{ $labels.pool }} are leaving but none was released in "
            + RELEASE_WINDOW,
            description=(
                "Nodes wait in draining, releasing or failed and still bill. A drain that never ends "
                "(a PodDisruptionBudget that allows no eviction) or a failing apply of the pool's stack "
                "holds them; see the apply failures and the controller's drain errors."
            ),
        ),
    ]


def controller_alerts() -> Group:
    rules: list[Record | Alert] = [
        *_leadership_alerts(),
        *_read_alerts(),
        *_action_alerts(),
        *_budget_alerts(),
        *_node_alerts(),
    ]
    return Group("gpuburst-controller", rules)


def groups() -> tuple[Group, ...]:
    return (workload_alerts(), controller_alerts())


def alerts() -> list[Alert]:
    return [r for g in groups() for r in g.rules if isinstance(r, Alert)]


class _Dumper(yaml.SafeDumper):
    """Block scalars for PromQL that does not fit a line, so the file reads like hand-written rules."""


class _Block(str):
    __slots__ = ()


def _block(dumper: yaml.SafeDumper, value: _Block) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|")


_Dumper.add_representer(_Block, _block)


def _expr(expr: str) -> str:
    return _Block(expr) if "\n" in expr or len(expr) > 100 else expr


def _rule(rule: Record | Alert) -> dict[str, object]:
    if isinstance(rule, Record):
        return {"record": rule.record, "expr": _expr(rule.expr)}
    return {
        "alert": rule.alert,
        "expr": _expr(rule.expr),
        "for": rule.for_,
        "labels": {"severity": rule.severity, "component": rule.component, **rule.labels},
        "annotations": {"summary": rule.summary, "description": rule.description},
    }


def render() -> str:
    """The rules file's text (Prometheus `rule_files` format)."""
    doc = {"groups": [{"name": g.name, "rules": [_rule(r) for r in g.rules]} for g in groups()]}
    header = "# Generated by `python -m dashboards.build` from dashboards/rules.py: edit that, not this.\n"
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)
