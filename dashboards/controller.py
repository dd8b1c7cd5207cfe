"""The "gpuburst controller" dashboard: what the controller sees, decides, runs and spends.

Gauges are read from the leading replica only (`promql.leader_only`); counters only grow on the leader,
so they are summed over replicas as they are.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash_b

from controller.core import model
from controller.runtime import telemetry as t
from dashboards import panels, promql, rules
from dashboards.panels import Override, Query
from workloads.face_compare import metrics as fc

UID = "gpuburst-controller"
FILE = "grafana/gpuburst-controller.json"

W = 'workload=~"$workload"'
P = 'pool=~"$pool"'
ACTIVE = f'status=~"{"|".join(sorted(s.value for s in model.ACTIVE))}"'
"""Nodes that count as capacity now or soon (requested, provisioning, ready)."""


def _lead(metric: str, *matchers: str) -> str:
    return promql.leader_only(promql.selector(metric, *matchers))


def build() -> dash_b.Dashboard:
    d = panels.dashboard(
        uid=UID,
        title="gpuburst controller",
        description="Demand, decisions, burst nodes, cost and health of the gpuburst controller.",
        tags=["gpuburst"],
    )
    d.with_variable(
        panels.label_variable(
            "workload",
            "Workload",
            metric=t.METRICS_STALENESS,  # set for every configured workload from the start
            description="Workloads the controller scales",
        )
    )
    d.with_variable(
        panels.label_variable(
            "pool", "Pool", metric=t.NODES, description="Cloud GPU pools (one Pulumi stack each)"
        )
    )
    scale_up = promql.selector(t.DECISIONS, f'action="{model.Action.SCALE_UP.value}"')
    scale_down = promql.selector(t.DECISIONS, f'action="{model.Action.SCALE_DOWN.value}"')
    for name, expr, color in (
        ("Scale up", f"sum(increase({scale_up}[2m])) > 0", "green"),
        ("Scale down", f"sum(increase({scale_down}[2m])) > 0", "orange"),
    ):
        d.annotation(
            dash_b.AnnotationQuery()
            .name(name)
            .datasource(panels.DATASOURCE)
            .expr(expr)
            .enable(True)
            .icon_color(color)
        )
    b = panels.Board(d)
    _overview(b)
    _demand(b)
    _nodes(b)
    _decisions(b)
    _cost(b)
    _health(b)
    return d


def _overview(b: panels.Board) -> None:
    b.row("Overview")
    b.add(
        panels.stat(
            "Leaders",
            "Replicas holding the leader Lease. Exactly one acts; 0 means nothing scales, 2 means two "
            "replicas act at once.",
            Query(f"sum({t.LEADER})"),
            unit="none",
            thresholds=((None, panels.RED), (1, panels.GREEN), (2, panels.RED)),
            mappings={"0": ("no leader", panels.RED)},
            no_value="no controller",
        ),
        panels.stat(
            "Synced",
            "Whether the leader's last tick read metrics, cluster and every pool stack. While not synced "
            "it holds every pool as it is.",
            Query(f"max({_lead(t.SYNCED)})"),
            unit="none",
            thresholds=((None, panels.RED), (1, panels.GREEN)),
            mappings={"0": ("holding", panels.RED), "1": ("synced", panels.GREEN)},
        ),
        panels.stat(
            "Last tick",
            "Seconds since the leader's last reconcile tick (one every tick interval, 15 s by default).",
            Query(f"time() - max({_lead(t.LAST_TICK)})"),
            unit="s",
            thresholds=((None, panels.GREEN), (60, panels.YELLOW), (rules.TICK_LATE_S, panels.RED)),
        ),
        panels.stat(
            "Burn rate",
            "USD per hour of the burst nodes that may bill now (every status but released).",
            Query(f"sum({_lead(t.COST_USD_PER_HOUR)})"),
            unit="currencyUSD",
        ),
        panels.stat(
            "Budget",
            "The hourly budget in force (policy file and overrides); empty when there is none.",
            Query(f"max({_lead(t.BUDGET_USD_PER_HOUR)})"),
            unit="currencyUSD",
            no_value="no budget",
        ),
        panels.stat(
            "Spend in range",
            "USD the burst nodes accrued over the dashboard's time range, from the controller's ledger.",
            Query(f"sum({promql.leader_only(f'increase({t.COST_USD}[$__range])')})"),
            unit="currencyUSD",
        ),
    )


def _demand(b: panels.Board) -> None:
    b.row("Demand and capacity")
    b.add(
        panels.timeseries(
            "Demand vs forecast",
            "Observed requests per second (what the last synced tick read) against the forecast the "
            "decision planned for (demand over the boot horizon plus headroom), with the GPUs it wanted "
            "on the right axis. The forecast leads the demand in a ramp by the nodes' boot time.",
            [
                Query(_lead(t.DEMAND_RPS, W), panels.legend("workload", suffix="demand")),
                Query(_lead(t.FORECAST_RPS, W), panels.legend("workload", suffix="forecast")),
                Query(_lead(t.TARGET_GPUS, W), panels.legend("workload", suffix="target GPUs")),
            ],
            unit="reqps",
            overrides=[Override("/target GPUs$/", panels.right_axis("none", "GPUs"))],
        ),
        panels.timeseries(
            "Serving capacity: ready replicas vs target GPUs",
            "Replicas of face-compare that accept requests, by placement (private and burst, stacked), "
            "against the GPUs the controller wants for all workloads. A gap that persists means nodes "
            "or pods do not come up.",
            [
                Query(
                    f"sum by ({fc.PLACEMENT}) ({fc.READY})",
                    panels.legend(fc.PLACEMENT, suffix="ready"),
                ),
                Query(f"sum({_lead(t.TARGET_GPUS, W)})", "target GPUs"),
            ],
            unit="none",
            stacked=True,
            overrides=[Override("/^target GPUs$/", panels.dashed_line(panels.BLUE))],
        ),
        panels.timeseries(
            "Metrics staleness",
            "Seconds since each workload's metrics were last usable (0 while fresh), and the age of the "
            "newest sample Prometheus held at the last read. The controller holds while metrics are "
            f"unknown; the alert fires above {rules.METRICS_STALE_S:g} s.",
            [
                Query(_lead(t.METRICS_STALENESS, W), panels.legend("workload", suffix="staleness")),
                Query(_lead(t.SAMPLE_AGE, W), panels.legend("workload", suffix="sample age")),
            ],
            unit="s",
            width=24,
            limits=[(rules.METRICS_STALE_S, panels.RED)],
        ),
    )


def _nodes(b: panels.Board) -> None:
    b.row("Burst nodes")
    b.add(
        panels.timeseries(
            "Nodes by status",
            "Node records per pool and lifecycle status (requested, provisioning, ready, draining, "
            "releasing, failed), stacked. Only ready nodes carry burst replicas.",
            [Query(f"sum by (pool, status) ({_lead(t.NODES, P)}) > 0", panels.legend("pool", "status"))],
            unit="none",
            stacked=True,
        ),
        panels.timeseries(
            "Target vs active nodes",
            "Active nodes (requested, provisioning or ready) against the number the decision wants per "
            "pool. Active above target is a release in progress; below is a boot in progress.",
            [
                Query(_lead(t.TARGET_NODES, P), panels.legend("pool", suffix="target")),
                Query(
                    f"sum by (pool) ({_lead(t.NODES, P, ACTIVE)})",
                    panels.legend("pool", suffix="active"),
                ),
            ],
            unit="none",
            overrides=[Override("/target$/", panels.dashed_line(panels.BLUE))],
        ),
        panels.timeseries(
            "Node transitions",
            "Nodes entering each status per pool, per hour. A steady stream into failed means nodes "
            "do not boot or get interrupted.",
            [
                Query(
                    f"sum by (pool, status) (increase({promql.selector(t.TRANSITIONS, P)}[1h]))",
                    panels.legend("pool", suffix="-> {{status}}"),
                )
            ],
            unit="none",
            width=24,
        ),
    )


def _decisions(b: panels.Board) -> None:
    _applies = promql.selector(f"{t.APPLY_DURATION}_count", P)
    b.row("Decisions and applies")
    b.add(
        panels.timeseries(
            "Decisions by action",
            "Ticks per minute by what they decided: scale_up, scale_down, steady, or hold (not synced or "
            "operator hold).",
            [Query(f"sum by (action) (rate({t.DECISIONS}[$__rate_interval])) * 60", panels.legend("action"))],
            unit="none",
            stacked=True,
        ),
        panels.timeseries(
            "Decisions by reason",
            "Ticks per minute by the reason that shaped the decision, most binding first: "
            f"{', '.join(t.REASONS)}.",
            [Query(f"sum by (reason) (rate({t.DECISIONS}[$__rate_interval])) * 60", panels.legend("reason"))],
            unit="none",
            stacked=True,
        ),
        panels.timeseries(
            "Apply duration",
            "Median and 95th percentile of Pulumi stack applies per pool over the last hour (applies "
            "are minutes apart, so shorter windows are mostly empty).",
            [
                Query(
                    promql.quantile(0.5, t.APPLY_DURATION, window="1h", group=["pool"], matchers=[P]),
                    panels.legend("pool", suffix="p50"),
                ),
                Query(
                    promql.quantile(0.95, t.APPLY_DURATION, window="1h", group=["pool"], matchers=[P]),
                    panels.legend("pool", suffix="p95"),
                ),
            ],
            unit="s",
        ),
        panels.timeseries(
            "Applies by result",
            "Pulumi applies per pool over the last hour, succeeded and failed. Any failure raises "
            "GpuburstApplyFailures.",
            [
                Query(
                    f"sum by (pool, result) (increase({_applies}[1h]))",
                    panels.legend("pool", "result"),
                )
            ],
            unit="none",
            overrides=[Override("/failed$/", {"color": {"mode": "fixed", "fixedColor": panels.RED}})],
        ),
    )


def _cost(b: panels.Board) -> None:
    _node_seconds = promql.selector(t.NODE_SECONDS, P)
    b.row("Cost")
    b.add(
        panels.timeseries(
            "Burn rate vs budget",
            "USD per hour per pool (stacked) against the budget in force. The policy never plans above "
            "the budget; the alert fires at "
            f"{rules.BUDGET_WARN_FRACTION:.0%} of it.",
            [
                Query(f"sum by (pool) ({_lead(t.COST_USD_PER_HOUR, P)})", panels.legend("pool")),
                Query(f"max({_lead(t.BUDGET_USD_PER_HOUR)})", "budget"),
            ],
            unit="currencyUSD",
            stacked=True,
            overrides=[Override("/^budget$/", panels.dashed_line(panels.RED))],
        ),
        panels.timeseries(
            "Cumulative cost",
            "USD accrued per pool since the controller's store was created (its ledger; survives restarts).",
            [Query(f"sum by (pool) ({_lead(t.COST_USD, P)})", panels.legend("pool"))],
            unit="currencyUSD",
            stacked=True,
        ),
        panels.timeseries(
            "Node hours",
            "Node-hours accrued per pool per hour: how many burst nodes billed on average.",
            [
                Query(
                    f"sum by (pool) ({promql.leader_only(f'increase({_node_seconds}[1h])')}) / 3600",
                    panels.legend("pool"),
                )
            ],
            unit="none",
            width=24,
        ),
    )


def _health(b: panels.Board) -> None:
    b.row("Controller health")
    b.add(
        panels.timeseries(
            "Tick duration",
            "Median and 99th percentile wall time of one reconcile tick over 5 minutes. Ticks never "
            "overlap: one longer than the interval delays the next.",
            [
                Query(promql.quantile(0.5, t.TICK_DURATION, window="5m"), "p50"),
                Query(promql.quantile(0.99, t.TICK_DURATION, window="5m"), "p99"),
            ],
            unit="s",
            width=8,
        ),
        panels.timeseries(
            "Errors by part",
            "Failed reads and actions per minute by part (metrics, cluster, capacity, commit, drain...), "
            "and failed ticks by reason (store: the SQLite file).",
            [
                Query(f"sum by (part) (rate({t.ERRORS}[$__rate_interval])) * 60", panels.legend("part")),
                Query(
                    f"sum by (reason) (rate({t.TICK_FAILURES}[$__rate_interval])) * 60",
                    panels.legend("reason", suffix="failed ticks"),
                ),
            ],
            unit="none",
            width=8,
        ),
        panels.timeseries(
            "Leader, synced and budget binding",
            "Per replica: 1 while it holds the Lease; for the leader, 1 while synced and 1 while the "
            "budget cuts its decisions.",
            [
                Query(t.LEADER, panels.legend("instance", suffix="leader")),
                Query(_lead(t.SYNCED), "synced"),
                Query(_lead(t.BUDGET_BINDING), "budget binding"),
            ],
            unit="none",
            width=8,
        ),
        panels.timeseries(
            "Orphan nodes",
            "From the periodic orphan audit: cloud_not_in_cluster (instances the stacks hold that never "
            "joined) and cluster_not_in_stack (labelled nodes no stack owns).",
            [Query(_lead(t.ORPHANS), panels.legend("kind"))],
            unit="none",
            width=16,
        ),
        panels.timeseries(
            "Releases running",
            "Controller replicas per gpuburst version: two lines during a rollout, one otherwise.",
            [Query(f"count by (version) ({t.BUILD_INFO})", panels.legend("version"))],
            unit="none",
            width=8,
        ),
    )
