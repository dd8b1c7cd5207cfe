"""Every exposed metric name passes `promtool check metrics` and is in base units."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from prometheus_client import parser

from contract import metrics as contract
from controller.runtime import telemetry
from tests.controller.runtime.test_telemetry import _world
from tests.dashboards import promtool
from workloads.face_compare.metrics import WorkloadMetrics

NON_BASE_UNIT = re.compile(
    r"_(ms|milliseconds?|microseconds?|us|minutes?|hours?|days?|rps|qps|percent|kb|mb|gb|kib|mib|gib)(_|$)"
)
"""Unit words Prometheus' naming guide rules out: seconds, bytes, ratios and per-second rates instead."""
QUOTED_PER_HOUR = {telemetry.COST_USD_PER_HOUR, telemetry.BUDGET_USD_PER_HOUR}
"""Cloud prices and the policy's budget are quoted per hour; these two gauges keep that unit."""


def _controller_exposition(tmp_path: Path) -> str:
    w, t = _world(tmp_path / "gpuburst.db")  # with a ledger, so the cost counters appear too
    w.metrics.set("face", 200.0)
    w.run(0)
    w.run(30)
    return t.exposition().decode()


def _workload_exposition() -> str:
    m = WorkloadMetrics(placement="burst", pool="spot")
    m.observe_request(endpoint="/compare", tier="interactive", code=200, seconds=0.04)
    return m.exposition().decode()


def _check(text: str) -> subprocess.CompletedProcess[str]:
    if not Path(promtool.PROMTOOL).is_file():
        promtool.run()  # fails the test with the install hint
    return subprocess.run(
        [promtool.PROMTOOL, "check", "metrics"],
        check=False,
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_controller_metrics_pass_promtool(tmp_path: Path) -> None:
    text = _controller_exposition(tmp_path)
    result = _check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gpuburst_cost_usd_total" in text and "gpuburst_build_info" in text


def test_workload_metrics_pass_promtool() -> None:
    result = _check(_workload_exposition())
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_name_is_in_base_units(tmp_path: Path) -> None:
    names = {
        f.name
        for text in (_controller_exposition(tmp_path), _workload_exposition())
        for f in parser.text_string_to_metric_families(text)
    }
    assert len(names) > 20
    bad = sorted(n for n in names - QUOTED_PER_HOUR if NON_BASE_UNIT.search(n))
    assert not bad, bad
    assert contract.REQUEST_DURATION_SECONDS in names


def test_build_info_is_one_and_names_the_release(tmp_path: Path) -> None:
    [family] = [
        f
        for f in parser.text_string_to_metric_families(_controller_exposition(tmp_path))
        if f.name == telemetry.BUILD_INFO
    ]
    [sample] = family.samples
    assert sample.value == 1.0
    assert sample.labels["version"] == telemetry.version() and sample.labels["python"]
