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


def _expected_ready(sc: scenario.Scenario, boot: int) -> np.ndarray:
    """By the definition, second by second: private GPUs plus the most nodes needed over
    [t - 2 boot + 1, t - boot], at most the pools' node caps."""
    need = [
        max(0, -(-max(0, int(np.ceil(a / sc.workload.gpu_rps - 1e-9)) - sc.private_gpus) // 1))
        for a in sc.arrivals.tolist()
    ]
    cap = sum(p.spec.max_nodes for p in sc.pools)
    out = []
    for t in range(sc.duration_s):
        seen = need[max(0, t - 2 * boot + 1) : t - boot + 1] if t >= boot else []
        out.append(sc.private_gpus + min(cap, max(seen, default=0)))
    return np.asarray(out)


def test_lagged_oracle_by_hand(tmp_path: Path) -> None:
    sc = helpers.build(tmp_path, _trace(), pools=POOLS)
    lag = oracle.lagged(sc)
    exact = oracle.run(sc)
    assert lag.contender == "lagged-oracle"
    assert np.array_equal(lag.ready_gpus, _expected_ready(sc, 30))
    # The single-second spike at 500 is held for a boot, 30 s after it: too late to serve it.
    assert lag.ready_gpus[530] > lag.ready_gpus[529] and lag.ready_gpus[559] == lag.ready_gpus[530]
    assert lag.cost_usd > exact.cost_usd
    # Demand outran capacity for the first boot of each burst.
    assert lag.slo_attainment < exact.slo_attainment == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [1, 2])
def test_lagged_oracle_on_a_generated_ramp(tmp_path: Path, seed: int) -> None:
    sc = scenario.load(str(families.write(families.generate("ramp", seed), tmp_path)))
    boot = int(sc.pools[0].spec.boot_s)
    lag = oracle.lagged(sc)
    exact = oracle.run(sc)
    assert lag.slo_attainment < exact.slo_attainment
    # It holds at least what the oracle had one boot earlier, and before one boot only private GPUs serve.
    assert (lag.ready_gpus[boot:] >= exact.ready_gpus[:-boot]).all()
    assert (lag.ready_gpus[:boot] == sc.private_gpus).all()


def test_lagged_oracle_runs_through_the_policy_factory(tmp_path: Path) -> None:
    sc = helpers.build(tmp_path, _trace(), pools=POOLS)
    assert contenders.parse_names("gpuburst,lagged-oracle") == ("gpuburst", "lagged-oracle")
    assert "lagged-oracle" not in contenders.parse_names(None)
    run = contenders.run(sc, "lagged-oracle", burst_policy=policy_file.load())
    assert run.contender == "lagged-oracle" and run.cost_usd == pytest.approx(oracle.lagged(sc).cost_usd)
