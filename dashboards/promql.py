"""Small PromQL builders shared by the dashboards and the alert rules.

They exist so that the few idioms that are easy to get subtly wrong are written once: keeping only the
leading controller replica's gauges, counting events on counters that appear with their first event, and
quantiles from histogram buckets. Metric names always come from the code's constants, never a literal.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.runtime import telemetry

TARGET_LABELS = ("job", "instance")
"""Labels Prometheus adds to every scraped series; together they name one controller replica."""

LEADING = f"({telemetry.LEADER} == 1)"
"""The replicas that hold the Lease (one, normally)."""


def selector(metric: str, *matchers: str) -> str:
    """`metric{a="x", b=~"y"}`, or the bare name without matchers."""
    wanted = [m for m in matchers if m]
    return f"{metric}{{{', '.join(wanted)}}}" if wanted else metric


def by(labels: Iterable[str]) -> str:
    """` by (a, b)`, or nothing for no labels (the aggregation keeps none)."""
    names = list(labels)
    return f" by ({', '.join(names)})" if names else ""


def aggregate(op: str, expr: str, group: Iterable[str] = ()) -> str:
    """`sum by (a) (expr)`, or `sum(expr)` without grouping labels."""
    g = by(group)
    return f"{op}{g} ({expr})" if g else f"{op}({expr})"


def leader_only(expr: str) -> str:
    """`expr` restricted to the leading replica's series.

    A standby replica does not tick: its gauges keep their initial values (staleness +Inf, budget 0, last
    tick 0) or, after it lost the Lease, the values of its last tick, and its ledger totals are its own
    store's. Summing or taking the max over replicas would mix those in; the leader's series are the truth.
    """
    return f"(({expr}) and on ({', '.join(TARGET_LABELS)}) {LEADING})"


def quantile(
    q: float, histogram: str, *, window: str, group: Iterable[str] = (), matchers: Iterable[str] = ()
) -> str:
    """The `q` quantile of a histogram over `window`, per `group` (the bucket boundaries interpolated)."""
    buckets = selector(f"{histogram}_bucket", *matchers)
    return f"histogram_quantile({q:g}, {aggregate('sum', f'rate({buckets}[{window}])', ['le', *group])})"


def mean(histogram: str, *, window: str, group: Iterable[str] = (), matchers: Iterable[str] = ()) -> str:
    """The mean observation of a histogram over `window`, per `group` (NaN while nothing was observed)."""
    groups = list(group)
    total = aggregate("sum", f"rate({selector(f'{histogram}_sum', *matchers)}[{window}])", groups)
    count = aggregate("sum", f"rate({selector(f'{histogram}_count', *matchers)}[{window}])", groups)
    return f"{total} / {count}"


def events(counter_selector: str, *, window: str) -> str:
    """How much a counter grew over `window`, counting series that appeared within it.

    prometheus_client creates a labelled child at its first increment, so a series is born at 1 (a first
    failed apply, a first node becoming ready). `increase()` needs two samples and misses that first event;
    a series absent `window` ago contributes its whole value instead.
    """
    fresh = f"{counter_selector} unless {counter_selector} offset {window}"
    return f"(({fresh}) or increase({counter_selector}[{window}]))"
