"""The lagged oracle: the oracle's nodes, each serving one boot later and billed from its launch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.runtime import policy_file
from controller.sim import contenders, families, oracle, scenario
from tests.controller.sim import helpers

POOLS = [
    {"name": "spot", "gpus_per_node": 1, "price_per_hour": 0.36, "boot_s": 30, "max_nodes": 1, "spot": True},
    {"name": "ondemand", "gpus_per_node": 1, "price_per_hour": 0.72, "boot_s": 30, "max_nodes": 5},
]


def _trace() -> list[float]:
    a = [10.0] * 1000
    a[100:200] = [35.0] * 100
    a[230:300] = [25.0] * 70
    a[500] = 35.0
    return a


def test_lagged_oracle_by_hand(tmp_path: Path) -> None:
    sc = helpers.build(tmp_path, _trace(), pools=POOLS)
    lag = oracle.lagged(sc)
    exact = oracle.run(sc)
    assert lag.contender == "lagged-oracle"
    # The same runs, 30 s later: slot 1 serves [130, 330) billed from 100 (its launch), the spike's
    # node serves [530, 531) billed the 60 s minimum from 500; slot 2 serves [130, 230).
    assert lag.cost_usd == pytest.approx((230 + 60) * 0.36 / 3600 + (130 + 60) * 0.72 / 3600)
    assert lag.cost_usd == pytest.approx(exact.cost_usd)
    assert lag.launches == exact.launches == 4
    assert lag.ready_gpus[129] == 2 and lag.ready_gpus[130] == 4 and lag.ready_gpus[240] == 3
    assert lag.billed_nodes[100] == 2 and lag.billed_nodes[99] == 0
    # Demand outran capacity for the first boot of each burst.
    assert lag.slo_attainment < exact.slo_attainment == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [1, 2])
def test_lagged_oracle_on_a_generated_ramp(tmp_path: Path, seed: int) -> None:
    sc = scenario.load(str(families.write(families.generate("ramp", seed), tmp_path)))
    boot = int(sc.pools[0].spec.boot_s)
    lag = oracle.lagged(sc)
    exact = oracle.run(sc)
    assert lag.slo_attainment < exact.slo_attainment
    # ready(t) = the oracle's ready(t - boot); before one boot only the private GPUs serve.
    assert np.array_equal(lag.ready_gpus[boot:], exact.ready_gpus[:-boot])
    assert (lag.ready_gpus[:boot] == sc.private_gpus).all()
    # Each node bills from its launch, boot before it serves: the oracle's bill, one boot later.
    assert np.array_equal(lag.billed_nodes[boot:], exact.billed_nodes[:-boot])
    assert lag.launches == exact.launches and lag.max_burst_nodes == exact.max_burst_nodes


def test_lagged_oracle_runs_through_the_policy_factory(tmp_path: Path) -> None:
    sc = helpers.build(tmp_path, _trace(), pools=POOLS)
    assert contenders.parse_names("gpuburst,lagged-oracle") == ("gpuburst", "lagged-oracle")
    assert "lagged-oracle" not in contenders.parse_names(None)
    run = contenders.run(sc, "lagged-oracle", burst_policy=policy_file.load())
    assert run.contender == "lagged-oracle" and run.cost_usd == pytest.approx(oracle.lagged(sc).cost_usd)
