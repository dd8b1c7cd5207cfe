"""Every PromQL expression in the dashboards and the rules parses (promtool), names only series the code
exports, with labels and label values the code produces, and returns data on the real collectors' output.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import build, rules
from tests.dashboards import catalog, promtool
from tests.dashboards import promql_lex as lex

GRAFANA_MACROS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
"""Grafana's interval macros with values Grafana could give them, so promtool reads plain PromQL."""
_VARIABLE = re.compile(r'"\$\{?\w+\}?"')
_LABEL_VALUES = re.compile(r"^label_values\((?P<metric>\w+),\s*(?P<label>\w+)\)$")

SERIES = catalog.series()
RECORDED = {r.record for g in rules.groups() for r in g.rules if isinstance(r, rules.Record)}
VALUES = catalog.label_values()


def _walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        title = node.get("title") or node.get("name") or ""
        here = f"{where} / {title}" if title else where
        if isinstance(node.get("expr"), str):
            yield here, node["expr"]
        for value in node.values():
            yield from _walk(value, here)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value, where)


def dashboard_exprs() -> list[tuple[str, str]]:
    return [pair for path, model in build.dashboards().items() for pair in _walk(model, path)]


def rule_exprs() -> list[tuple[str, str]]:
    return [
        (f"rules / {getattr(r, 'alert', None) or getattr(r, 'record', '')}", r.expr)
        for g in rules.groups()
        for r in g.rules
    ]


ALL = dashboard_exprs() + rule_exprs()


def plain(expr: str) -> str:
    """The expression as Grafana sends it with every variable at All (`.*`)."""
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    return _VARIABLE.sub('".*"', expr)


def problems(expr: str) -> list[str]:
    """What in `expr` the code does not export: metric names, labels, closed-set values, buckets."""
    refs = lex.references(plain(expr))
    out: list[str] = []
    known_labels: set[str] = set(catalog.TARGET_LABELS)
    for metric in sorted(refs.metrics):
        if metric in RECORDED:
            continue
        series = SERIES.get(metric)
        if series is None:
            out.append(f"unknown metric {metric}")
        else:
            known_labels |= series.labels
    for m in refs.matchers:
        series = SERIES.get(m.metric)
        if series is None:
            continue
        if m.label not in series.labels:
            out.append(f"{m.metric} has no label {m.label}")
            continue
        if m.label == "le" and m.value not in series.buckets:
            out.append(f'{m.metric} has no bucket le="{m.value}"')
        allowed = VALUES.get(m.label)
        if allowed is not None and m.value != ".*":
            for value in m.value.split("|") if m.op == "=~" else [m.value]:
                if value not in allowed:
                    out.append(f'{m.metric}{{{m.label}="{value}"}}: the code never sets {value!r}')
    for label in sorted(refs.grouping - known_labels - {"le"}):
        out.append(f"grouping by {label}, a label of none of the metrics")
    return out


# -- parsing ---------------------------------------------------------------------------------------------
def _check_file(exprs: Sequence[str], path: Path) -> subprocess.CompletedProcess[str]:
    doc = {
        "groups": [
            {
                "name": "check",
                "rules": [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return promtool.run("check", "rules", str(path))


def test_every_expression_parses(tmp_path: Path) -> None:
    assert len(ALL) > 60
    result = _check_file([plain(e) for _, e in ALL], tmp_path / "exprs.yaml")
    if result.returncode != 0:
        index = "\n".join(f"expr_{i}: {where}" for i, (where, _) in enumerate(ALL))
        pytest.fail(f"promtool refused an expression:\n{result.stdout}{result.stderr}\n{index}")


def test_the_parse_check_refuses_broken_promql(tmp_path: Path) -> None:
    assert _check_file(["sum(rate(facecompare_requests_total[5m])"], tmp_path / "bad.yaml").returncode != 0
    assert (
        _check_file(["rate(gpuburst_leader and gpuburst_synced [5m])"], tmp_path / "bad.yaml").returncode != 0
    )


def test_committed_rules_file_passes_promtool() -> None:
    result = promtool.run("check", "rules", str(build.HERE / rules.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g.rules) for g in rules.groups())} rules found" in result.stdout


# -- names, labels and values --------------------------------------------------------------------------
@pytest.mark.parametrize(("where", "expr"), ALL, ids=[w for w, _ in ALL])
def test_expression_refers_only_to_what_the_code_exports(where: str, expr: str) -> None:
    assert lex.references(plain(expr)).metrics, f"{where} reads no metric"
    assert problems(expr) == []


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(gpuburst_nodez)", "unknown metric gpuburst_nodez"),
        ("facecompare_requests", "unknown metric facecompare_requests"),  # the counter is _total
        ("facecompare_request_duration_seconds", "unknown metric facecompare_request_duration_seconds"),
        ('gpuburst_nodes{state="ready"}', "gpuburst_nodes has no label state"),
        ('gpuburst_nodes{status=~"ready|provisioned"}', "the code never sets 'provisioned'"),
        ('facecompare_request_duration_seconds_bucket{le="0.45"}', 'no bucket le="0.45"'),
        ("sum by (workload) (facecompare_ready)", "grouping by workload"),
        ('gpuburst_decisions_total{action="scale-up"}', "the code never sets 'scale-up'"),
    ],
)
def test_the_name_check_catches_mistakes(expr: str, problem: str) -> None:
    assert any(problem in p for p in problems(expr)), problems(expr)


def test_the_lexer_reads_what_each_identifier_is() -> None:
    refs = lex.references(
        'sum by (pool) ((a{x="1"} unless a{x="1"} offset 30m) or increase(b[5m])) > 0 '
        "unless on (pool) deriv(sum(c)[10m:1m]) > bool 0 and rec:name:rate5m "
        'and histogram_quantile(0.99, sum without (le) (rate(d_bucket{le="0.5", t=~"u|v"}[1h])))'
    )
    assert refs.metrics == {"a", "b", "c", "rec:name:rate5m", "d_bucket"}
    assert refs.grouping == {"pool", "le"}
    assert {"sum", "increase", "deriv", "histogram_quantile", "rate"} <= refs.functions
    assert lex.Matcher("d_bucket", "t", "=~", "u|v") in refs.matchers


@pytest.mark.parametrize("relative", sorted(build.dashboards()))
def test_variables_read_exported_labels(relative: str) -> None:
    for v in build.dashboards()[relative]["templating"]["list"][1:]:
        m = _LABEL_VALUES.match(v["query"])
        assert m, v["query"]
        series = SERIES[m["metric"]]
        assert m["label"] in series.labels


def test_every_exported_metric_is_on_a_dashboard() -> None:
    """A metric nobody looks at is either missing a panel or not worth exporting."""
    used: set[str] = set()
    for _, expr in dashboard_exprs():
        used |= lex.references(plain(expr)).metrics
    families = catalog.controller()[1] | catalog.workload()[1]
    unused = {f for f in families if not any(u == f or u.startswith(f"{f}_") for u in used)}
    assert unused == set()


def test_the_catalog_exercised_every_registered_metric() -> None:
    """Otherwise a metric's labels would be unknown here and every check on it vacuous."""
    for exported, registered in (catalog.controller(), catalog.workload()):
        assert registered <= {s.family for s in exported.values()}


# -- evaluation on the real exposition ------------------------------------------------------------------
def _input_series(minutes: int) -> list[dict[str, str]]:
    out = []
    for s in catalog.samples():
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        step = s.value if s.value > 0 else 0
        values = f"{s.value:g}+{step:g}x{minutes}" if s.cumulative else f"{s.value:g}x{minutes}"
        out.append({"series": f"{s.name}{{{labels}}}", "values": values})
    return out


def test_every_query_returns_data_from_the_real_collectors(tmp_path: Path) -> None:
    """Run against what the controller and the workload really export (one scrape a minute for an
    hour), each dashboard query and recording rule returns at least one series: a wrong label value, a
    join that matches nothing or a misspelt name would leave a panel empty."""
    exprs = [(w, plain(e)) for w, e in dashboard_exprs()] + [(f"record {r}", r) for r in sorted(RECORDED)]
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(build.outputs()[rules.RULES_FILE])
    test = {
        "rule_files": [str(rules_path)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _input_series(60),
                "promql_expr_test": [
                    {
                        "expr": f"count({e}) > bool 0",
                        "eval_time": "60m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    }
                    for _, e in exprs
                ],
            }
        ],
    }
    path = tmp_path / "returns_data_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    result = promtool.run("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
