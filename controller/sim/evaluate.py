"""`gpuburst evaluate`: every contender over a suite of scenarios, summarized per family.

The suite is the shipped scenarios plus N generated per family (`families.py`) for one split: train
seeds to choose policy parameters on, validation seeds to report. Each (scenario, contender) replay is one
task for a process pool and goes through `command.run_all` and `report.result`, exactly as `simulate`;
the oracle of a scenario runs first, since every other cost is reported against it. Per family it
reports each contender's SLO attainment, cost and launches against the oracle, the lagged oracle's SLO
(whether the SLO is reachable at all by reacting), and whether a baseline dominates gpuburst (at least
as good on SLO and cheaper).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from controller.runtime import errors, policy_file
from controller.sim import command, contenders, families, plot, report, scenario

CONTENDERS: tuple[str, ...] = (*contenders.NAMES, "lagged-oracle")
SHIPPED = "shipped"
ALL = "all"


@dataclass(frozen=True)
class Case:
    """One scenario of the suite."""

    name: str
    family: str
    seed: int | None
    path: str
    duration_s: int


def register(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="run gpuburst, the baselines and the oracles over shipped and generated scenarios"
    )
    p.add_argument("--split", default="validation", choices=sorted(families.SPLITS))
    p.add_argument("--per-family", type=int, default=3, help="generated scenarios per family (default 3)")
    p.add_argument("--families", help=f"comma-separated subset of: {','.join(families.FAMILIES)}")
    p.add_argument("--policy-file", type=Path, default=policy_file.DEFAULT, help="burst policy for gpuburst")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: the usable cores)")
    p.add_argument(
        "--json", type=errors.output_path, dest="json_out", help="write the summary and per-scenario rows"
    )
    p.add_argument(
        "--plot", type=errors.output_path, help="write a PNG: median SLO against median cost, per family"
    )
    p.add_argument("--no-shipped", action="store_true", help="generated scenarios only")
    p.set_defaults(func=evaluate)


def parse_families(text: str | None) -> tuple[str, ...]:
    if not text:
        return families.FAMILIES
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        if n not in families.FAMILIES:
            raise errors.UserError(
                f"--families: unknown family {n!r}; families are: {', '.join(families.FAMILIES)}"
            )
    if not names:
        raise errors.UserError("--families: name at least one family")
    return names


def suite(
    *, split: str, per_family: int, family_names: Sequence[str], shipped: bool, out: Path
) -> list[Case]:
    """The shipped scenarios (if asked) and the generated ones, written into `out`."""
    if per_family < 0:
        raise errors.UserError(f"--per-family must be 0 or more, got {per_family}")
    cases = []
    if shipped:
        for path in sorted(scenario.SCENARIOS.glob("*.yaml")):
            sc = scenario.load(str(path))
            cases.append(Case(sc.name, SHIPPED, None, str(path), sc.duration_s))
    for family in family_names:
        for seed in families.seeds(split, per_family):
            gen = families.generate(family, seed)
            path = families.write(gen, out)
            cases.append(Case(gen.name, family, seed, str(path), len(gen.rate)))
    if not cases:
        raise errors.UserError("the suite is empty: ask for generated scenarios or drop --no-shipped")
    return cases


@functools.lru_cache(maxsize=2)
def _scenario(path: str) -> scenario.Scenario:
    return scenario.load(path)


def replay(
    path: str, policy: str, policy_path: str, oracle_cost: float | None
) -> tuple[dict[str, Any], float | None]:
    """One contender over one scenario, as `simulate` runs and reports it (a worker's task)."""
    runs, cost = command.run_all(
        _scenario(path), (policy,), policy_path=Path(policy_path), quiet=True, oracle_cost=oracle_cost
    )
    return report.result(runs[0], oracle_cost=cost), cost


def run_suite(
    cases: Sequence[Case], *, policy_path: Path, jobs: int, quiet: bool = False
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per scenario name, per contender: the report's result. Longest scenarios start first."""
    results: dict[str, dict[str, dict[str, Any]]] = {c.name: {} for c in cases}
    others = [p for p in CONTENDERS if p != "oracle"]
    ordered = sorted(cases, key=lambda c: -c.duration_s)
    pp = str(policy_path)
    with tqdm(
        total=len(cases) * len(CONTENDERS),
        desc="evaluate",
        unit="run",
        file=sys.stderr,
        disable=quiet or None,
    ) as bar:
        if jobs <= 1:
            for c in ordered:
                res, cost = replay(c.path, "oracle", pp, None)
                results[c.name]["oracle"] = res
                bar.update()
                for name in others:
                    results[c.name][name] = replay(c.path, name, pp, cost)[0]
                    bar.update()
            return results
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            pending: dict[Future[tuple[dict[str, Any], float | None]], tuple[Case, str]] = {
                pool.submit(replay, c.path, "oracle", pp, None): (c, "oracle") for c in ordered
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    c, name = pending.pop(fut)
                    res, cost = fut.result()
                    results[c.name][name] = res
                    bar.update()
                    if name == "oracle":
                        for other in others:
                            pending[pool.submit(replay, c.path, other, pp, cost)] = (c, other)
    return results


def dominated_by(results: dict[str, dict[str, Any]]) -> list[str]:
    """The baselines at least as good as gpuburst on SLO and cheaper, in the report's order."""
    g = results.get("gpuburst")
    if g is None:
        return []
    return [
        b
        for b in contenders.BASELINES
        if b in results
        and results[b]["slo_attainment"] >= g["slo_attainment"]
        and results[b]["cloud_cost_usd"] < g["cloud_cost_usd"]
    ]


def rows(cases: Sequence[Case], results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for c in cases:
        by_contender = {p: results[c.name][p] for p in CONTENDERS if p in results[c.name]}
        out.append(
            {
                "name": c.name,
                "family": c.family,
                "seed": c.seed,
                "duration_s": c.duration_s,
                "results": by_contender,
                "dominated_by": dominated_by(by_contender),
            }
        )
    return out


def _median(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return round(statistics.median(v), 6) if v else None


def _extreme(values: Iterable[float | None], pick: Any) -> float | None:
    v = [x for x in values if x is not None]
    return round(pick(v), 6) if v else None


def _launch_ratio(row: dict[str, Any], contender: str) -> float | None:
    base = row["results"].get("oracle", {}).get("launches")
    if not base:
        return None
    return float(row["results"][contender]["launches"] / base)


def summarize(scenario_rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per family (shipped first, then the generated families, then all together)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in scenario_rows:
        groups.setdefault(r["family"], []).append(r)
    if len(groups) > 1:
        groups[ALL] = list(scenario_rows)
    out = {}
    for family, members in groups.items():
        per_contender = {}
        for p in CONTENDERS:
            have = [r for r in members if p in r["results"]]
            if not have:
                continue
            slo = [r["results"][p]["slo_attainment"] for r in have]
            cost = [r["results"][p]["cost_vs_oracle"] for r in have]
            launches = [_launch_ratio(r, p) for r in have]
            per_contender[p] = {
                "slo_median": _median(slo),
                "slo_worst": _extreme(slo, min),
                "cost_vs_oracle_median": _median(cost),
                "cost_vs_oracle_worst": _extreme(cost, max),
                "launches_vs_oracle_median": _median(launches),
                "launches_vs_oracle_max": _extreme(launches, max),
            }
        by: dict[str, int] = {}
        for r in members:
            for b in r["dominated_by"]:
                by[b] = by.get(b, 0) + 1
        dominated = sum(1 for r in members if r["dominated_by"])
        out[family] = {
            "scenarios": len(members),
            "policies": per_contender,
            "reachable_slo_median": per_contender.get("lagged-oracle", {}).get("slo_median"),
            "gpuburst_dominated": {"dominated": dominated > 0, "scenarios": dominated, "by": by},
        }
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def table(summary: dict[str, dict[str, Any]]) -> str:
    header = ("policy", "SLO med", "SLO worst", "cost/oracle med", "worst", "launches/oracle med", "max")
    blocks = []
    for family, s in summary.items():
        d = s["gpuburst_dominated"]
        by = ", ".join(f"{b} x{n}" for b, n in sorted(d["by"].items()))
        reachable = _pct(s["reachable_slo_median"])
        title = (
            f"{family}: {s['scenarios']} scenario(s); lagged-oracle median SLO {reachable}; "
            f"gpuburst dominated in {d['scenarios']}" + (f" (by {by})" if by else "")
        )
        lines = [header]
        for p, v in s["policies"].items():
            lines.append(
                (
                    p,
                    _pct(v["slo_median"]),
                    _pct(v["slo_worst"]),
                    _times(v["cost_vs_oracle_median"]),
                    _times(v["cost_vs_oracle_worst"]),
                    _times(v["launches_vs_oracle_median"]),
                    _times(v["launches_vs_oracle_max"]),
                )
            )
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        text = [title]
        for i, row in enumerate(lines):
            text.append(
                "  ".join([row[0].ljust(widths[0])] + [c.rjust(widths[j]) for j, c in enumerate(row) if j])
            )
            if i == 0:
                text.append("  ".join("-" * w for w in widths))
        blocks.append("\n".join(text))
    return "\n\n".join(blocks)


def draw(summary: dict[str, dict[str, Any]], path: Path) -> Path:
    """One panel per family: each contender's median SLO against its median cost over the oracle's."""
    import matplotlib.pyplot as plt  # after `plot`, which selects the file-only backend
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    names = list(summary)
    cols = min(4, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, family in zip(axes.flat, names, strict=False):
        s = summary[family]
        for p, v in s["policies"].items():
            x, y = v["cost_vs_oracle_median"], v["slo_median"]
            if x is None or y is None or x <= 0:
                continue
            ax.scatter([x], [100 * y], color=plot.COLORS.get(p), label=p, s=40 if p == "gpuburst" else 18)
        ax.axhline(99.5, color="#999999", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FormatStrFormatter("%gx"))
        ax.set_title(f"{family} ({s['scenarios']})", fontsize=9)
        ax.set_xlabel("median cost / oracle", fontsize=8)
        ax.set_ylabel("median SLO attainment %", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    policy_file.load(args.policy_file)  # a bad file fails here, as one line, not in every worker
    jobs = args.jobs if args.jobs is not None else len(os.sched_getaffinity(0))
    if jobs < 1:
        raise errors.UserError(f"--jobs must be at least 1, got {jobs}")
    with tempfile.TemporaryDirectory(prefix="gpuburst-evaluate-") as tmp:
        cases = suite(
            split=args.split,
            per_family=args.per_family,
            family_names=parse_families(args.families),
            shipped=not args.no_shipped,
            out=Path(tmp),
        )
        results = run_suite(cases, policy_path=args.policy_file, jobs=jobs)
    scenario_rows = rows(cases, results)
    summary = summarize(scenario_rows)
    wall = time.perf_counter() - started
    print(table(summary))
    simulated = sum(c.duration_s for c in cases)
    print(
        f"\n{len(cases)} scenarios ({simulated:,} simulated s) x {len(CONTENDERS)} contenders "
        f"in {wall:.0f} s wall on {jobs} process(es); split {args.split}"
    )
    if args.json_out:
        doc = {
            "split": args.split,
            "per_family": args.per_family,
            "policy_file": str(args.policy_file),
            "policies": list(CONTENDERS),
            "families": summary,
            "scenarios": scenario_rows,
        }
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    if args.plot:
        draw(summary, args.plot)
        print(f"wrote {args.plot}")
    return 0
