"""`gpuburst evaluate`: the suite, the per-family summary, dominance, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.app import cli
from controller.runtime import errors, policy_file
from controller.sim import command, evaluate, families, report, scenario


def _r(slo: float, cost: float, launches: int = 1, vs: float | None = None) -> dict[str, Any]:
    return {"slo_attainment": slo, "cloud_cost_usd": cost, "cost_vs_oracle": vs, "launches": launches}


def test_dominated_means_at_least_as_good_on_slo_and_strictly_cheaper() -> None:
    results = {
        "gpuburst": _r(0.99, 10.0),
        "hpa+ca": _r(0.99, 9.0),  # same SLO, cheaper: dominates
        "keda+karpenter": _r(0.995, 9.99),  # better and cheaper: dominates
        "kpa+karpenter": _r(0.999, 10.0),  # better, same cost: does not
        "skyserve": _r(0.98, 1.0),  # cheaper, worse: does not
        "private-only": _r(0.5, 0.0),
        "oracle": _r(1.0, 5.0),  # a reference, never a dominating peer
        "lagged-oracle": _r(0.995, 5.0),
    }
    assert evaluate.dominated_by(results) == ["hpa+ca", "keda+karpenter"]
    results["hpa+ca"] = _r(0.98999, 9.0)
    assert evaluate.dominated_by(results) == ["keda+karpenter"]


def test_summary_medians_worsts_launch_ratios_and_dominance_counts() -> None:
    def row(name: str, g: dict[str, Any], h: dict[str, Any]) -> dict[str, Any]:
        res = {"gpuburst": g, "hpa+ca": h, "oracle": _r(1.0, 4.0, launches=2, vs=1.0)}
        return {"name": name, "family": "ramp", "results": res, "dominated_by": evaluate.dominated_by(res)}

    rows = [
        row("a", _r(0.99, 8.0, 4, 2.0), _r(0.99, 6.0, 2, 1.5)),  # dominated by hpa+ca
        row("b", _r(0.999, 6.0, 2, 1.5), _r(0.9, 4.0, 6, 1.0)),
        row("c", _r(0.97, 5.0, 3, 1.25), _r(0.97, 5.0, 2, 1.25)),  # same cost: not dominated
    ]
    s = evaluate.summarize(rows)
    assert list(s) == ["ramp"]
    g = s["ramp"]["policies"]["gpuburst"]
    assert g["slo_median"] == 0.99 and g["slo_worst"] == 0.97
    assert g["cost_vs_oracle_median"] == 1.5 and g["cost_vs_oracle_worst"] == 2.0
    assert g["launches_vs_oracle_median"] == 1.5 and g["launches_vs_oracle_max"] == 2.0
    assert s["ramp"]["gpuburst_dominated"] == {"dominated": True, "scenarios": 1, "by": {"hpa+ca": 1}}
    assert s["ramp"]["reachable_slo_median"] is None  # no lagged-oracle in these rows


def test_splits_never_share_seeds() -> None:
    train, validation = families.seeds("train", 50), families.seeds("validation", 50)
    assert train[:2] == [1, 2] and validation[:2] == [10001, 10002]
    assert not set(train) & set(validation)
    with pytest.raises(errors.UserError):
        families.seeds("test", 1)


def _run(tmp: Path, *extra: str) -> dict[str, Any]:
    out = tmp / "eval.json"
    argv = ["evaluate", "--families", "bursty", "--per-family", "1", "--no-shipped", "--json", str(out)]
    assert cli.main([*argv, *extra]) == 0
    return json.loads(out.read_text())


def test_evaluate_end_to_end_writes_rows_summary_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "eval.png"
    doc = _run(tmp_path, "--jobs", "1", "--plot", str(png))
    assert png.stat().st_size > 0
    assert doc["split"] == "validation" and doc["policies"] == list(evaluate.CONTENDERS)
    [row] = doc["scenarios"]
    assert (row["name"], row["family"], row["seed"]) == ("bursty-10001", "bursty", 10001)
    assert list(row["results"]) == list(evaluate.CONTENDERS)
    for r in row["results"].values():
        assert {"slo_attainment", "cloud_cost_usd", "cost_vs_oracle", "launches"} <= set(r)
    assert row["results"]["oracle"]["slo_attainment"] == pytest.approx(1.0)
    assert row["results"]["lagged-oracle"]["slo_attainment"] <= row["results"]["oracle"]["slo_attainment"]
    # The flags follow the rule on the rows themselves.
    g = row["results"]["gpuburst"]
    expected = [
        b
        for b in ("hpa+ca", "keda+karpenter", "kpa+karpenter", "skyserve", "static-peak", "private-only")
        if row["results"][b]["slo_attainment"] >= g["slo_attainment"]
        and row["results"][b]["cloud_cost_usd"] < g["cloud_cost_usd"]
    ]
    assert row["dominated_by"] == expected
    summary = doc["families"]["bursty"]
    assert summary["scenarios"] == 1
    assert summary["gpuburst_dominated"]["dominated"] == bool(expected)
    assert summary["reachable_slo_median"] == row["results"]["lagged-oracle"]["slo_attainment"]
    # gpuburst's row is what `simulate` reports for the same file.
    path = families.write(families.generate("bursty", 10001), tmp_path / "again")
    runs, oracle_cost = command.run_all(
        scenario.load(str(path)), ("gpuburst",), policy_path=policy_file.DEFAULT, quiet=True
    )
    assert report.result(runs[0], oracle_cost=oracle_cost) == g


def test_worker_processes_and_another_policy_file(tmp_path: Path) -> None:
    serial = _run(tmp_path, "--jobs", "1")
    parallel = _run(tmp_path, "--jobs", "2")
    assert parallel["scenarios"] == serial["scenarios"]
    eager = tmp_path / "eager.yaml"
    eager.write_text("name: eager\ntarget_utilization: 0.4\n")
    tuned = _run(tmp_path, "--jobs", "1", "--policy-file", str(eager))
    before, after = serial["scenarios"][0]["results"], tuned["scenarios"][0]["results"]
    assert after["gpuburst"] != before["gpuburst"]
    assert {k: v for k, v in after.items() if k != "gpuburst"} == {
        k: v for k, v in before.items() if k != "gpuburst"
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["--families", "nope"],
        ["--per-family", "-1", "--families", "ramp"],
        ["--per-family", "0", "--no-shipped"],
        ["--jobs", "0", "--families", "ramp"],
    ],
)
def test_bad_evaluate_input_is_a_one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", "--no-shipped", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpuburst: error:")
