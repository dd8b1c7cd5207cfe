"""The oracle on traces whose cost is computed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.sim import oracle
from tests.controller.sim import helpers

# gpu_rps 10, 2 private GPUs, 1-GPU nodes; spot 0.36 USD/h with room for one node, then on-demand 0.72.
POOLS = [
    {"name": "spot", "gpus_per_node": 1, "price_per_hour": 0.36, "boot_s": 30, "max_nodes": 1, "spot": True},
    {"name": "ondemand", "gpus_per_node": 1, "price_per_hour": 0.72, "boot_s": 30, "max_nodes": 5},
]


def _trace() -> list[float]:
    a = [10.0] * 1000  # 1 GPU: private covers it
    a[100:200] = [35.0] * 100  # 4 GPUs: slots 1 and 2
    a[230:300] = [25.0] * 70  # 3 GPUs: slot 1, 30 s after the first run: merged (gap <= boot_s)
    a[500] = 35.0  # a one-second spike: both slots again, billed the 60 s minimum
    return a


def test_oracle_cost_by_hand(tmp_path: Path) -> None:
    sc = helpers.build(tmp_path, _trace(), pools=POOLS)
    run = oracle.run(sc)
    # Slot 1 (spot): [100, 300) merged, billed from 70 = 230 s; the spike: [470, 501) -> 60 s minimum.
    # Slot 2 (on-demand): [100, 200) billed from 70 = 130 s; the spike: 60 s.
    expected = (230 + 60) * 0.36 / 3600 + (130 + 60) * 0.72 / 3600
    assert run.cost_usd == pytest.approx(expected)
    assert run.launches == 4
    assert run.slo_attainment == pytest.approx(1.0)
    assert run.max_burst_nodes == 2
    # Serving: both slots during [100, 200), slot 1 through the 30 s gap, then nothing until the spike.
    assert run.ready_gpus[150] == 4 and run.ready_gpus[215] == 3 and run.ready_gpus[400] == 2
    assert run.billed_nodes[75] == 2 and run.billed_nodes[250] == 1 and run.billed_nodes[529] == 2


def test_runs_merge_only_across_gaps_up_to_boot_time() -> None:
    need = np.array([0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1])
    assert oracle.slot_runs(need, 1, boot_s=3) == [(1, 7), (12, 13)]
    assert oracle.slot_runs(need, 1, boot_s=2) == [(1, 3), (6, 7), (12, 13)]
    assert oracle.slot_runs(need, 2, boot_s=3) == []


def test_oracle_never_falls_behind_demand(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = rng.poisson(rng.uniform(5, 60, size=600)).astype(float).tolist()
    roomy = [POOLS[0], {**POOLS[1], "max_nodes": 20}]
    sc = helpers.build(tmp_path, a, pools=roomy)
    run = oracle.run(sc)
    assert np.all(run.ready_gpus * 10 >= np.asarray(a))
    assert run.slo_attainment == pytest.approx(1.0)
