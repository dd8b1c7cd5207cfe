"""Controller metrics as Prometheus scrapes them, fed by the real reconciler over the fakes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import parser

from controller import ports
from controller.core import model, policy
from controller.runtime import telemetry
from tests.support import fake_world


def _samples(t: telemetry.Telemetry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = t.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(t: telemetry.Telemetry, name: str, **labels: str) -> float:
    return _samples(t)[(name, frozenset(labels.items()))]


def _world(db: Path | None = None, **kw: object) -> tuple[fake_world.World, telemetry.Telemetry]:
    w = fake_world.World(db, **kw)  # type: ignore[arg-type]
    t = telemetry.Telemetry(
        workloads=w.setup.workloads,
        pools=w.setup.pools,
        ledger=getattr(w.store, "ledger", None) if db is not None else None,
        budget=lambda: w.setup.policy.budget_usd_per_hour,
    )
    w.observers.append(t.observe)
    w.restart(metrics=telemetry.MeteredMetricSource(w.metrics, t))
    return w, t


def test_every_contract_metric_is_exposed_with_the_prefix() -> None:
    _, t = _world()
    names = {f.name for f in parser.text_string_to_metric_families(t.exposition().decode())}
    constants = {
        v
        for k, v in vars(telemetry).items()
        if k.isupper() and isinstance(v, str) and v.startswith("gpuburst")
    }
    # The parser reports counters without `_total`; the ledger counters need a ledger to appear.
    exposed = {n.removesuffix("_total") for n in constants} - {"gpuburst_cost_usd", "gpuburst_node_seconds"}
    assert exposed <= names
    assert all(n.startswith("gpuburst_") for n in names)


def test_a_burst_tick_sets_demand_targets_nodes_burn_and_counts_the_decision() -> None:
    w, t = _world()
    w.metrics.set("face", 200.0)  # far beyond the 2 private GPUs
    report = w.run(0)
    n = report.decision.target_nodes["spot"]
    assert n > 0 and report.decision.target_nodes["ondemand"] == 0
    assert _get(t, telemetry.DEMAND_RPS, workload="face") == 200.0
    assert _get(t, telemetry.FORECAST_RPS, workload="face") == report.decision.forecast_rps["face"]
    assert _get(t, telemetry.TARGET_GPUS, workload="face") == report.decision.target_gpus["face"]
    assert _get(t, telemetry.TARGET_NODES, pool="spot") == n
    assert _get(t, telemetry.TARGET_NODES, pool="ondemand") == 0
    assert _get(t, telemetry.NODES, pool="spot", status="requested") == n
    assert _get(t, telemetry.NODES, pool="spot", status="ready") == 0
    assert _get(t, telemetry.COST_USD_PER_HOUR, pool="spot") == pytest.approx(n * 0.4)
    assert _get(t, telemetry.DECISIONS, action="scale_up", reason="demand") == 1
    assert _get(t, telemetry.TRANSITIONS, pool="spot", status="requested") == n
    assert _get(t, telemetry.SYNCED) == 1
    assert _get(t, telemetry.LAST_TICK) == 1000.0
    assert _get(t, telemetry.TICK_DURATION + "_count") == 1
    assert _get(t, telemetry.METRICS_STALENESS, workload="face") == 0
    assert math.isnan(_get(t, telemetry.BUDGET_USD_PER_HOUR))

    report = w.run(240)
    ready = report.nodes["spot"].get("ready", 0)
    assert ready >= n
    assert _get(t, telemetry.NODES, pool="spot", status="ready") == ready
    assert _get(t, telemetry.NODES, pool="spot", status="requested") == report.nodes["spot"].get(
        "requested", 0
    )


def test_missing_metrics_hold_keep_the_last_demand_and_age_it() -> None:
    w, t = _world()
    w.metrics.set("face", 200.0)
    w.run(30)
    w.metrics.values["face"] = model.WorkloadMetrics(None, None, problems=("no samples in the last 2m",))
    w.run(60)  # unknown from t=1030 (known at the first tick of 1030) to 1090
    assert _get(t, telemetry.DEMAND_RPS, workload="face") == 200.0, "unknown must not read as zero"
    assert _get(t, telemetry.METRICS_STALENESS, workload="face") == 60.0
    assert _get(t, telemetry.DECISIONS, action="hold", reason="unsynced") == 5
    assert _get(t, telemetry.SYNCED) == 0
    assert _get(t, telemetry.ERRORS, part="metrics") == 5
    w.metrics.fail = True
    w.clock.advance(15)
    w.rec.tick()
    assert _get(t, telemetry.METRICS_STALENESS, workload="face") == 75.0


def test_staleness_is_infinite_until_metrics_were_ever_known() -> None:
    w, t = _world()
    w.run(30)
    assert _get(t, telemetry.METRICS_STALENESS, workload="face") == math.inf


def test_an_operator_hold_is_its_own_reason() -> None:
    w, t = _world()
    w.store.overrides = ports.Overrides(hold=True, reason="maintenance")  # type: ignore[attr-defined]
    w.metrics.set("face", 200.0)
    w.run(0)
    assert _get(t, telemetry.DECISIONS, action="hold", reason="operator_hold") == 1


def test_a_binding_budget_is_the_reason_and_the_gauge_shows_it() -> None:
    w, t = _world(burst_policy=policy.BurstPolicy(budget_usd_per_hour=2.0))
    w.metrics.set("face", 200.0)
    w.run(0)
    assert _get(t, telemetry.DECISIONS, action="scale_up", reason="budget") == 1
    assert _get(t, telemetry.BUDGET_BINDING) == 1
    assert _get(t, telemetry.BUDGET_USD_PER_HOUR) == 2.0
    assert _get(t, telemetry.COST_USD_PER_HOUR, pool="spot") <= 2.0


def test_reason_labels_stay_bounded() -> None:
    """The `reason` label is the decision's typed cause, whatever its free text says: one label per cause."""
    assert tuple(c.value for c in model.Cause) == telemetry.REASONS
    assert len(set(telemetry.REASONS)) == len(model.Cause)
    t = telemetry.Telemetry(workloads=(fake_world.FACE,), pools=(fake_world.SPOT, fake_world.ONDEMAND))
    misleading = ("spot: capped at 3 nodes (max_nodes 3)", "scale-down stabilization: keeping 4 burst GPUs")
    for cause in model.Cause:
        d = model.Decision(0.0, model.Action.STEADY, {}, {}, {}, {}, misleading, cause=cause)
        assert telemetry.reason(d) == cause.value
        t.observe(model.TickReport(0.0, True, d, {}, (), (), ()))
    for cause in model.Cause:
        assert _get(t, telemetry.DECISIONS, action="steady", reason=cause.value) == 1, cause
    labels = {lb for (name, lb), _ in _samples(t).items() if name == telemetry.DECISIONS}
    assert {dict(lb)["reason"] for lb in labels} == set(telemetry.REASONS)


def test_error_parts_are_bounded_labels() -> None:
    assert telemetry.error_part("drain spot-1: eviction refused") == "drain"
    assert telemetry.error_part("metrics face: no series") == "metrics"
    assert telemetry.error_part("submit spot [3 nodes]: boom") == "submit"
    assert telemetry.error_part("???") == "other"


def test_cost_totals_come_from_the_ledger_and_survive_a_restart(tmp_path: Path) -> None:
    w, t = _world(tmp_path / "db.sqlite")
    w.metrics.set("face", 100.0)  # a few spot nodes
    w.run(60)
    assert _get(t, telemetry.NODE_SECONDS, pool="spot") == pytest.approx(w.billed_node_seconds("spot"))
    before = _get(t, telemetry.NODE_SECONDS, pool="spot")
    assert before > 0
    w.clock.advance(15)
    w.restart(metrics=telemetry.MeteredMetricSource(w.metrics, t))
    w.rec.tick()
    seconds = _get(t, telemetry.NODE_SECONDS, pool="spot")
    assert seconds > before
    assert seconds == pytest.approx(w.billed_node_seconds("spot"))
    assert _get(t, telemetry.COST_USD, pool="spot") == pytest.approx(seconds * 0.4 / 3600)
    w.close()


def test_adapter_and_job_hooks() -> None:
    _, t = _world()
    t.apply_finished("spot", duration_s=42.0, ok=True)
    t.apply_finished("spot", duration_s=3.0, ok=False)
    t.set_leader(True)
    t.set_orphans("cluster_not_in_stack", 2)
    assert _get(t, telemetry.APPLY_DURATION + "_count", pool="spot", result="succeeded") == 1
    assert _get(t, telemetry.APPLY_DURATION + "_sum", pool="spot", result="succeeded") == 42.0
    assert _get(t, telemetry.APPLY_DURATION + "_count", pool="spot", result="failed") == 1
    assert _get(t, telemetry.LEADER) == 1
    assert _get(t, telemetry.ORPHANS, kind="cluster_not_in_stack") == 2
    assert _get(t, telemetry.ORPHANS, kind="cloud_not_in_cluster") == 0


def test_the_sample_age_the_source_measures_is_exported() -> None:
    w, t = _world()

    class Aged:
        def __init__(self, age: float | None) -> None:
            self.sample_age_s = {"face": age}

        def read(self, workloads: object, *, at: float) -> dict[str, model.WorkloadMetrics]:
            return {"face": model.WorkloadMetrics(rate_rps=1.0)}

    telemetry.MeteredMetricSource(Aged(3.5), t).read(w.setup.workloads, at=1.0)
    assert _get(t, telemetry.SAMPLE_AGE, workload="face") == 3.5
    telemetry.MeteredMetricSource(Aged(None), t).read(w.setup.workloads, at=2.0)
    assert math.isnan(_get(t, telemetry.SAMPLE_AGE, workload="face"))
