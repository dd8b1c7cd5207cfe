"""`gpuburst simulate` and `gpuburst bench-sim`: replay a scenario through the contenders."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from controller.core import model
from controller.runtime import errors, policy_file
from controller.sim import compiled, contenders, engine, plot, report, scenario


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate", help="replay a traffic scenario through gpuburst, the baselines and the oracle"
    )
    p.add_argument(
        "--scenario", required=True, help="a shipped scenario name (e.g. flash-crowd) or a YAML path"
    )
    p.add_argument("--policies", help=f"comma-separated subset of: {','.join(contenders.KNOWN)}")
    p.add_argument("--policy-file", type=Path, default=policy_file.DEFAULT, help="burst policy for gpuburst")
    p.add_argument("--json", type=errors.output_path, dest="json_out", help="write the results as JSON")
    p.add_argument("--timeseries", type=Path, help="write one per-second CSV per contender into this folder")
    p.add_argument(
        "--plot", type=errors.output_path, help="write a PNG of demand, capacity, misses, nodes and cost"
    )
    p.add_argument(
        "--decisions",
        type=errors.output_path,
        help="write gpuburst's decision at every tick as JSON lines (cause, targets, figures, reasons)",
    )
    p.set_defaults(func=simulate)

    b = sub.add_parser("bench-sim", help="benchmark: simulated seconds per wall second, per contender")
    b.add_argument("--scenario", default="worldcup98")
    b.add_argument("--policies", help="comma-separated subset (default: all)")
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--json", type=errors.output_path, dest="json_out")
    b.set_defaults(func=bench)


def run_all(
    sc: scenario.Scenario,
    names: tuple[str, ...],
    *,
    policy_path: Path,
    quiet: bool = False,
    oracle_cost: float | None = None,
    progress: Callable[[float], None] | None = None,
    on_decision: Callable[[model.Decision], None] | None = None,
) -> tuple[list[engine.Run], float | None]:
    """The runs of `names` in that order, and the oracle's cost (given, run, or computed here).

    `progress`, if given, hears the fraction done over all runs (0..1), beside the terminal's bar;
    `on_decision` each of gpuburst's decisions."""
    burst_policy = policy_file.load(policy_path)
    runs = []
    # The oracle first: every other cost is reported against it.
    ordered = sorted(names, key=lambda n: n != "oracle")
    for i, name in enumerate(ordered):
        with tqdm(
            total=sc.duration_s,
            desc=f"{name:>15}",
            unit="s",
            unit_scale=True,
            leave=False,
            disable=quiet or None,
            file=sys.stderr,
        ) as bar:
            done = [0]

            def step(t: int, bar: Any = bar, done: list[int] = done, i: int = i) -> None:
                bar.update(t - done[0])
                done[0] = t
                if progress is not None:
                    progress((i + t / max(1, sc.duration_s)) / len(ordered))

            run = contenders.run(sc, name, burst_policy=burst_policy, progress=step, on_decision=on_decision)
        if name == "oracle":
            oracle_cost = run.cost_usd
        runs.append(run)
    runs.sort(key=lambda r: names.index(r.contender))
    if oracle_cost is None and "oracle" not in names:
        from controller.sim import oracle

        oracle_cost = oracle.run(sc).cost_usd
    return runs, oracle_cost


def simulate(args: argparse.Namespace) -> int:
    sc = scenario.load(args.scenario)
    names = contenders.parse_names(args.policies)
    if args.decisions and "gpuburst" not in names:
        raise errors.UserError("--decisions logs gpuburst's decisions: add gpuburst to --policies")
    with contextlib.ExitStack() as stack:
        log = None
        if args.decisions:
            args.decisions.parent.mkdir(parents=True, exist_ok=True)
            log = report.DecisionLog(stack.enter_context(args.decisions.open("w", encoding="utf-8")))
        runs, oracle_cost = run_all(sc, names, policy_path=args.policy_file, on_decision=log)
    doc = report.document(sc, runs, oracle_cost=oracle_cost)
    print(report.table(doc))
    if log is not None:
        print(f"wrote {log.count:,} decisions to {args.decisions}")
    if args.json_out:
        report.write_json(doc, args.json_out)
        print(f"wrote {args.json_out}")
    if args.timeseries:
        report.write_timeseries(runs, args.timeseries)
        print(f"wrote {len(runs)} timeseries to {args.timeseries}/")
    if args.plot:
        plot.plot(sc, runs, args.plot)
        print(f"wrote {args.plot}")
    return 0


def bench(args: argparse.Namespace) -> int:
    sc = scenario.load(args.scenario)
    names = contenders.parse_names(args.policies)
    burst_policy = policy_file.load()
    rows = []
    is_compiled = compiled.active()
    core = "compiled (mypyc)" if is_compiled else "Python (`make bench` compiles it)"
    print(
        f"{sc.name}: {sc.duration_s:,} simulated seconds, {args.repeat} runs per contender (median); "
        f"core: {core}"
    )
    for name in names:
        walls, cpus = [], []
        for _ in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            contenders.run(sc, name, burst_policy=burst_policy)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
        # CPU time as well: on a shared machine the wall clock also counts other jobs' turns.
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        speed, cpu_speed = sc.duration_s / wall, sc.duration_s / cpu
        rows.append(
            {
                "policy": name,
                "median_wall_s": round(wall, 3),
                "sim_s_per_wall_s": round(speed),
                "median_cpu_s": round(cpu, 3),
                "sim_s_per_cpu_s": round(cpu_speed),
            }
        )
        print(
            f"  {name:>15}: {wall:7.2f} s wall, {speed:>12,.0f}x real time; "
            f"{cpu:7.2f} s CPU, {cpu_speed:>12,.0f}x per CPU second"
        )
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "scenario": sc.name,
                    "duration_s": sc.duration_s,
                    "compiled": is_compiled,
                    "results": rows,
                },
                indent=2,
            )
            + "\n"
        )
    return 0
