"""`gpuburst simulate` end to end: the JSON agrees with the per-second timeseries it wrote, and so do
gpuburst's decisions."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest

from controller.app import cli
from controller.core import model
from controller.runtime import policy_file
from controller.sim import contenders, engine, scenario, world
from tests.controller.sim import helpers


def _replay(
    rows: list[dict[str, str]], *, gpu_rps: float, wait_slo: float, timeout: float
) -> tuple[float, list[float]]:
    """An independent replay of the service model, the fluid queue in 100 sub-steps per second: the
    attainment, and the requests missed in each second."""
    steps = 100
    backlog = met = total = 0.0
    missed = []
    for row in rows:
        a = float(row["arrivals"]) / steps
        c = int(row["ready_gpus"]) * gpu_rps
        met_before = met
        for _ in range(steps):
            total += a
            wait = backlog / c if c > 0 else math.inf
            if wait <= timeout:
                backlog += a
                if wait <= wait_slo:
                    met += a
            backlog = max(0.0, backlog - c / steps)
        missed.append(a * steps - (met - met_before))
    return met / total, missed


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("sim")
    arrivals = [15.0] * 300 + [60.0] * 300 + [15.0] * 600
    path = helpers.write(tmp, arrivals)
    assert (
        cli.main(
            [
                "simulate",
                "--scenario",
                str(path),
                "--json",
                str(tmp / "out.json"),
                "--timeseries",
                str(tmp / "ts"),
                "--plot",
                str(tmp / "plot.png"),
                "--decisions",
                str(tmp / "decisions.jsonl"),
            ]
        )
        == 0
    )
    return json.loads((tmp / "out.json").read_text()), tmp


def test_json_shape(simulated: tuple[dict, Path]) -> None:
    doc, tmp = simulated
    assert doc["scenario"] == "test" and doc["duration_s"] == 1200
    assert doc["requests"] == 15 * 900 + 60 * 300
    assert [r["policy"] for r in doc["results"]] == list(contenders.NAMES)
    keys = {
        "policy",
        "slo_attainment",
        "dropped",
        "p99_latency_ms",
        "cloud_cost_usd",
        "cost_vs_oracle",
        "burst_gpu_hours",
        "max_burst_nodes",
        "launches",
        "releases",
        "interruptions",
    }
    assert all(set(r) == keys for r in doc["results"])
    assert (tmp / "plot.png").stat().st_size > 20_000


def test_timeseries_reproduce_the_json(simulated: tuple[dict, Path]) -> None:
    doc, tmp = simulated
    attainments = set()
    for result in doc["results"]:
        with (tmp / "ts" / f"{result['policy']}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["t_seconds", "arrivals", "ready_gpus", "billed_nodes", "usd_per_hour"]
        assert len(rows) == doc["duration_s"]
        cost = sum(float(r["usd_per_hour"]) for r in rows) / 3600
        assert cost == pytest.approx(result["cloud_cost_usd"], abs=1e-4), result["policy"]
        gpu_hours = sum(int(r["billed_nodes"]) for r in rows) / 3600
        assert gpu_hours == pytest.approx(result["burst_gpu_hours"], abs=1e-3)
        slo, _ = _replay(rows, gpu_rps=10, wait_slo=0.4, timeout=30)
        assert slo == pytest.approx(result["slo_attainment"], abs=2e-3), result["policy"]
        attainments.add(round(result["slo_attainment"], 3))
    assert len(attainments) >= 3, "the scenario should separate the policies"


def test_the_plotted_misses_are_where_the_attainment_was_lost(simulated: tuple[dict, Path]) -> None:
    """A run's per-second misses (the plot's panel): they add up to the attainment, second by second as
    the independent replay of its timeseries has them."""
    doc, tmp = simulated
    sc = scenario.load(str(tmp / "scenario.yaml"))
    burst_policy = policy_file.load(policy_file.DEFAULT)
    for result in doc["results"]:
        run = contenders.run(sc, result["policy"], burst_policy=burst_policy)
        with (tmp / "ts" / f"{result['policy']}.csv").open() as f:
            _, missed = _replay(list(csv.DictReader(f)), gpu_rps=10, wait_slo=0.4, timeout=30)
        recorded = run.missed.tolist()
        assert sum(recorded) == pytest.approx(doc["requests"] * (1 - result["slo_attainment"]), abs=0.05)
        # (100 sub-steps per second put the replay's queue within a few requests of the exact one)
        assert all(abs(x - y) <= 3.0 for x, y in zip(recorded, missed, strict=True)), result["policy"]


def test_decisions_are_logged_every_tick_and_order_what_was_billed(simulated: tuple[dict, Path]) -> None:
    _, tmp = simulated
    decisions = [json.loads(line) for line in (tmp / "decisions.jsonl").read_text().splitlines()]
    # One per tick: the controller ticks once per 15 s scrape over the 1,200 s trace.
    assert [d["at"] for d in decisions] == [15.0 * i for i in range(1200 // 15)]
    assert {d["cause"] for d in decisions} <= {c.value for c in model.Cause}
    assert decisions[0]["cause"] == "unsynced", "no samples yet at t = 0: a hold, not zero load"
    with (tmp / "ts" / "gpuburst.csv").open() as f:
        billed = [int(r["billed_nodes"]) for r in csv.DictReader(f)]
    ups = [d for d in decisions if d["action"] == "scale_up"]
    assert any(300 <= d["at"] < 400 for d in ups), "the step to 60 req/s at 300 s buys capacity"
    for d in ups:  # a node bills from the tick that ordered it
        assert billed[int(d["at"])] == sum(d["target_nodes"].values()), d
        assert "wanted_burst_gpus" in d["figures"] and d["reasons"]


def test_a_node_drained_on_its_interruption_notice_counts_as_interrupted(tmp_path: Path) -> None:
    """gpuburst drains a spot node on its notice and releases it before the deadline: the cloud still
    took it, so the run reports an interruption, not a release."""
    spot = {"name": "spot", "gpus_per_node": 1, "price_per_hour": 0.36, "boot_s": 60, "max_nodes": 20,
            "spot": True, "interruptions_per_hour": 3.0}  # fmt: skip
    sc = helpers.build(tmp_path, [60.0] * 7200, pools=[spot])
    box: list[world.World] = []
    make = contenders.factory("gpuburst", policy_file.load(policy_file.DEFAULT))

    def keep(w: world.World) -> engine.Contender:
        box.append(w)
        return make(w)

    run = engine.run(sc, keep)
    infra = box[0].infra
    end = sc.duration_s - 1
    noticed = [
        i for i in [*infra.gone, *infra.instances.values()]
        if i.notice_at is not None and i.notice_at <= (end if i.gone_at is None else i.gone_at)
    ]  # fmt: skip
    drained = [i for i in noticed if i.ended == "released"]
    assert drained, "the case needs nodes the policy released on their notice"
    assert run.interruptions == len(noticed)
    unnoticed_alive = sum(1 for i in infra.instances.values() if i not in noticed)
    assert run.releases + run.interruptions + unnoticed_alive == run.launches


@pytest.mark.parametrize(("tick_s", "every_s"), [(None, 15), (5.0, 5), (2.0, 5)])
def test_gpuburst_ticks_at_the_controllers_tick_never_faster_than_the_scrape(
    tmp_path: Path, tick_s: float | None, every_s: int
) -> None:
    """The replay decides as often as the live controller it stands for (`tick_interval_s`, 15 s by
    default), and never between two scrapes (5 s here): such a tick would see nothing new."""
    sc = helpers.build(tmp_path, [30.0] * 300, metrics={"scrape_interval_s": 5, "rate_window_s": 20})
    at: list[float] = []
    kw = {} if tick_s is None else {"tick_s": tick_s}
    heard = at.append
    contenders.run(sc, "gpuburst", burst_policy=policy_file.load(), on_decision=lambda d: heard(d.at), **kw)
    assert len(at) == 300 // every_s
    assert {b - a for a, b in itertools.pairwise(at)} == {every_s}
