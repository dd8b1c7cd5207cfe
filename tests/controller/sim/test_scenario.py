"""Scenario files: the shipped ones load; bad input gets one clear line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from controller.app import cli
from controller.runtime import errors
from controller.sim import scenario
from tests.controller.sim import helpers

SHIPPED = sorted(p.stem for p in scenario.SCENARIOS.glob("*.yaml"))


def test_every_shipped_scenario_loads_with_its_trace() -> None:
    assert SHIPPED == ["azure-llm-code", "diurnal-week", "flash-crowd", "step-spike", "worldcup98"]
    for name in SHIPPED:
        sc = scenario.load(name)
        assert sc.duration_s > 3000 and sc.arrivals.min() >= 0
        assert [p.spec.name for p in sc.pools] == ["aws-g5-spot", "aws-g5-ondemand"]


def test_the_held_out_scenarios_in_docs_load_as_the_readme_describes() -> None:
    heldout = Path(__file__).resolve().parents[3] / "docs" / "heldout"
    names = sorted(p.stem for p in heldout.glob("*.yaml"))
    assert names == [
        "diurnal-30s",
        "flash-fast",
        "flash-slowboot",
        "step-fastboot",
        "wc-early",
        "wc-final-fastboot",
        "weblog-month",
    ]
    early = scenario.load(str(heldout / "wc-early.yaml"))
    assert early.duration_s == 20 * 86400 and early.private_gpus == 8
    assert scenario.peak_window_rate(early.arrivals, 60) == pytest.approx(600.0)
    flash = scenario.load(str(heldout / "flash-fast.yaml"))
    assert flash.duration_s == 3 * 3600 and {p.spec.boot_s for p in flash.pools} == {200}
    assert scenario.peak_window_rate(flash.arrivals, 60) == pytest.approx(900.0, rel=0.02)
    fast = scenario.load(str(heldout / "wc-final-fastboot.yaml"))
    assert (fast.scrape_interval_s, fast.rate_window_s) == (30, 120)
    assert {p.spec.boot_s for p in fast.pools} == {120}
    weblog = scenario.load(str(heldout / "weblog-month.yaml"))
    assert weblog.duration_s == 30 * 86400 and {p.spec.boot_s for p in weblog.pools} == {240}
    minutes = weblog.arrivals.reshape(-1, 60).sum(axis=1)
    assert minutes.max() / 60 == pytest.approx(700.0, rel=0.02)
    steps = np.abs(np.diff(np.log(minutes + 1.0)))
    assert np.median(steps) == pytest.approx(0.21, abs=0.02)  # about 22 % minute-to-minute noise


def test_window_and_rescale_follow_the_format() -> None:
    sc = scenario.load("worldcup98")
    assert sc.name == "worldcup98-tournament"
    assert sc.duration_s == 6393600 - 3456000
    assert scenario.peak_window_rate(sc.arrivals, 60) == pytest.approx(1200.0)
    assert scenario.load("worldcup98-tournament").duration_s == sc.duration_s  # by its name: too


def test_buckets_are_spread_uniformly_over_their_seconds(tmp_path: Path) -> None:
    sc = helpers.build(tmp_path, [60, 120], step=60)
    assert sc.duration_s == 120
    assert np.allclose(sc.arrivals[:60], 1.0) and np.allclose(sc.arrivals[60:], 2.0)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["simulate", "--scenario", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml" in err and "not found" in err


def test_malformed_csv_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = helpers.write(tmp_path, [1, 2, 3])
    trace = tmp_path / "trace.csv"
    trace.write_text(trace.read_text() + "3,four\n")
    err = _fails(["simulate", "--scenario", str(path)], capsys)
    assert "trace.csv:5" in err and "not numbers" in err


def test_negative_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = helpers.write(tmp_path, [1, -2, 3])
    err = _fails(["simulate", "--scenario", str(path)], capsys)
    assert "trace.csv:3" in err and "negative" in err


def test_unknown_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = helpers.write(
        tmp_path,
        [1, 2],
        service={"gpu_rps": 1, "service_time_ms": 1, "slo_ms": 9, "timeout_s": 1, "gpu_rsp": 2},
    )
    err = _fails(["simulate", "--scenario", str(path)], capsys)
    assert "scenario.yaml" in err and "service.gpu_rsp: unknown field" in err


def test_pool_without_price(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = helpers.write(
        tmp_path, [1, 2], pools=[{"name": "p", "gpus_per_node": 1, "boot_s": 1, "max_nodes": 1}]
    )
    err = _fails(["simulate", "--scenario", str(path)], capsys)
    assert "pools.0.price_per_hour: Field required" in err


def test_unknown_policy_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = helpers.write(tmp_path, [1, 2])
    err = _fails(["simulate", "--scenario", str(path), "--policies", "gpuburst,hpa"], capsys)
    assert "'hpa'" in err and "keda+karpenter" in err


def test_a_decision_log_without_gpuburst_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = helpers.write(tmp_path, [1, 2])
    log = tmp_path / "decisions.jsonl"
    argv = ["simulate", "--scenario", str(path), "--policies", "hpa+ca", "--decisions", str(log)]
    err = _fails(argv, capsys)
    assert "add gpuburst to --policies" in err and not log.exists()


def test_unknown_scenario_name_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["simulate", "--scenario", "flash"], capsys)
    assert "flash-crowd" in err and "step-spike" in err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("t_seconds,requests\n", "no rows"),
        ("time,requests\n0,1\n", "header"),
        ("t_seconds,requests\n0,1\n0,2\n", "does not increase"),
        ("t_seconds,requests\n0,1\n1,2,3\n", "expected 2 columns"),
        ("t_seconds,requests\n0,1\n1,nan\n", "finite"),
    ],
)
def test_trace_errors(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(errors.UserError, match=needle):
        scenario.read_trace(tmp_path / "t.csv")


def test_slo_below_service_time_is_rejected(tmp_path: Path) -> None:
    path = helpers.write(
        tmp_path, [1], service={"gpu_rps": 1, "service_time_ms": 600, "slo_ms": 500, "timeout_s": 1}
    )
    with pytest.raises(errors.UserError, match="service_time_ms exceeds"):
        scenario.load(str(path))


def test_shipped_scenarios_reference_only_existing_traces() -> None:
    for path in scenario.SCENARIOS.glob("*.yaml"):
        trace = path.parent / yaml.safe_load(path.read_text())["trace"]
        assert trace.exists(), path
