"""What a replay reports: the terminal table, the JSON document and the per-second timeseries CSVs.

Shapes are fixed by `docs/baselines.md`; the timeseries columns are enough to recompute every contender's SLO
attainment and cost.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from controller.core import model
from controller.runtime import codec
from controller.sim import engine, scenario

TIMESERIES_COLUMNS = ("t_seconds", "arrivals", "ready_gpus", "billed_nodes", "usd_per_hour")


def result(run: engine.Run, *, oracle_cost: float | None) -> dict[str, Any]:
    cost = run.cost_usd
    vs_oracle = None if not oracle_cost else round(cost / oracle_cost, 4)
    return {
        "policy": run.contender,
        "slo_attainment": round(run.slo_attainment, 6),
        "dropped": round(run.dropped),
        "p99_latency_ms": round(run.p99_latency_s * 1000.0, 1),
        "cloud_cost_usd": round(cost, 4),
        "cost_vs_oracle": vs_oracle,
        "burst_gpu_hours": round(run.burst_gpu_hours, 3),
        "max_burst_nodes": run.max_burst_nodes,
        "launches": run.launches,
        "releases": run.releases,
        "interruptions": run.interruptions,
    }


def document(
    sc: scenario.Scenario, runs: Sequence[engine.Run], *, oracle_cost: float | None
) -> dict[str, Any]:
    return {
        "scenario": sc.name,
        "duration_s": sc.duration_s,
        "requests": round(float(sc.arrivals.sum())),
        "results": [result(r, oracle_cost=oracle_cost) for r in runs],
    }


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


class DecisionLog:
    """gpuburst's decisions as JSON lines (the fields of the API's decisions), each written as it is
    made: a long trace has millions of ticks, too many to hold."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.count = 0

    def __call__(self, decision: model.Decision) -> None:
        self.out.write(json.dumps(codec.encode(decision)) + "\n")
        self.count += 1


def write_timeseries(runs: Sequence[engine.Run], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for run in runs:
        path = directory / f"{run.contender}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(TIMESERIES_COLUMNS)
            arrivals = np.round(run.arrivals, 6).tolist()
            usd = np.round(run.usd_per_hour, 6).tolist()
            w.writerows(
                zip(
                    range(len(arrivals)),
                    arrivals,
                    run.ready_gpus.tolist(),
                    run.billed_nodes.tolist(),
                    usd,
                    strict=True,
                )
            )
        out.append(path)
    return out


def table(doc: dict[str, Any]) -> str:
    header = ("policy", "SLO", "cost USD", "vs oracle", "p99 ms", "GPU-h", "max nodes", "launches", "dropped")
    rows = [header]
    for r in doc["results"]:
        vs = "-" if r["cost_vs_oracle"] is None else f"{r['cost_vs_oracle']:.2f}x"
        rows.append(
            (
                r["policy"],
                f"{100 * r['slo_attainment']:.2f}%",
                f"{r['cloud_cost_usd']:.2f}",
                vs,
                f"{r['p99_latency_ms']:.0f}",
                f"{r['burst_gpu_hours']:.1f}",
                str(r["max_burst_nodes"]),
                str(r["launches"]),
                str(r["dropped"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"{doc['scenario']}: {doc['duration_s']} s, {doc['requests']:,} requests",
    ]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(widths[j]) for j, c in enumerate(row) if j > 0]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
