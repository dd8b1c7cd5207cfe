"""`gpuburst bench-tick` (also `python -m controller.app.bench_tick`): what one reconcile tick costs.

The real reconciler over the in-package fakes (FakeInfra cloud + cluster, a metric source, and the
in-memory or the SQLite store) with 100 workloads and 10 pools by default, on a FakeClock advanced one
tick interval per tick. Demand rises and falls in a slow wave, so ticks include launches, joins, drains
and releases, not only steady state. Reported: the wall time of each tick as the reconciler
measures it (median, p90, p99, max, in ms), after a warm-up, and the node counts it handled.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller import ports
from controller.core import model
from controller.ports import clock, fakes
from controller.runtime import errors, reconciler, store

TICK_S = 15.0


def setup(workloads: int, pools: int) -> reconciler.Setup:
    ws = tuple(
        model.WorkloadSpec(f"w{i:03d}", gpu_rps=25.0, service_time_s=0.06, slo_s=0.5, private_gpus=2)
        for i in range(workloads)
    )
    ps = tuple(
        model.PoolSpec(
            f"pool{j:02d}",
            gpus_per_node=1 + j % 4,
            price_per_hour=0.4 + 0.15 * j,
            boot_s=120.0 + 30 * (j % 3),
            max_nodes=80,
            spot=j % 2 == 0,
        )
        for j in range(pools)
    )
    return reconciler.Setup(ws, ps)


def demand(workloads: int) -> Any:
    """Requests per second of each workload at time t: one 20-minute wave, each workload a little out of
    phase (spread over a sixth of the period), so the total rises and falls and the pools follow it."""

    def at(t: float) -> Mapping[str, model.WorkloadMetrics]:
        return {
            f"w{i:03d}": model.WorkloadMetrics(
                rate_rps=max(0.0, 30.0 + 25.0 * math.sin(2 * math.pi * (t / 1200.0 + i / (6 * workloads)))),
                queue_depth=0.0,
            )
            for i in range(workloads)
        }

    return at


def run(*, workloads: int, pools: int, ticks: int, warmup: int, sqlite: Path | None) -> dict[str, Any]:
    s = setup(workloads, pools)
    fake = clock.FakeClock(1_700_000_000.0)
    infra = fakes.FakeInfra(fake, s.pools)
    db: ports.Store = store.SqliteStore(sqlite) if sqlite is not None else fakes.MemoryStore(keep_intents=0)
    rec = reconciler.Reconciler(
        s,
        clock=fake,
        metrics=fakes.FakeMetricSource(provider=demand(workloads)),
        cluster=fakes.FakeCluster(infra),
        capacity=fakes.FakeCapacity(infra),
        store=db,
    )
    durations: list[float] = []
    peak_nodes = 0
    actions: dict[str, int] = {}
    for i in range(warmup + ticks):
        report = rec.tick()
        fake.advance(TICK_S)
        if i < warmup:
            continue
        durations.append(report.duration_s * 1000.0)
        actions[report.decision.action.value] = actions.get(report.decision.action.value, 0) + 1
        peak_nodes = max(peak_nodes, sum(sum(c.values()) for c in report.nodes.values()))
        if report.errors:
            raise RuntimeError(f"tick {i} failed: {report.errors}")
    if isinstance(db, store.SqliteStore):
        db.close()
    ordered = sorted(durations)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {
        "workloads": workloads,
        "pools": pools,
        "store": "sqlite" if sqlite is not None else "memory",
        "ticks": ticks,
        "warmup_ticks": warmup,
        "median_ms": round(statistics.median(durations), 3),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(max(durations), 3),
        "peak_nodes": peak_nodes,
        "actions": actions,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main(args: argparse.Namespace) -> int:
    results = []
    for kind in args.store:
        if kind == "sqlite":
            with tempfile.TemporaryDirectory(prefix="gpuburst-bench-") as tmp:
                results.append(
                    run(
                        workloads=args.workloads,
                        pools=args.pools,
                        ticks=args.ticks,
                        warmup=args.warmup,
                        sqlite=Path(tmp) / "bench.db",
                    )
                )
        else:
            results.append(
                run(
                    workloads=args.workloads,
                    pools=args.pools,
                    ticks=args.ticks,
                    warmup=args.warmup,
                    sqlite=None,
                )
            )
    for r in results:
        print(
            f"{r['workloads']} workloads x {r['pools']} pools, {r['store']} store, {r['ticks']} ticks: "
            f"median {r['median_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
            f"max {r['max_ms']:.2f} ms per tick (peak {r['peak_nodes']} nodes; {r['actions']})"
        )
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workloads", type=int, default=100)
    p.add_argument("--pools", type=int, default=10)
    p.add_argument("--ticks", type=int, default=300, help="measured ticks (after the warm-up)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument(
        "--store",
        type=lambda v: [x for x in v.split(",") if x],
        default=["memory", "sqlite"],
        help="memory, sqlite or both (comma-separated)",
    )
    p.add_argument(
        "--json", dest="json_out", type=errors.output_path, default=None, help="write the figures here"
    )
    p.set_defaults(func=main)


def register(sub: Any) -> None:
    p = sub.add_parser("bench-tick", help="median cost of one reconcile tick (100 workloads x 10 pools)")
    _add_arguments(p)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m controller.app.bench_tick", description=__doc__)
    _add_arguments(parser)
    sys.exit(main(parser.parse_args()))
