"""The demo's report: the real requests beside the simulator's figures for the same compressed trace,
and the plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from controller.app import live
from controller.app.demo_load import SCRAPE_S, Load, Progress


@dataclass
class Simulated:
    figures: dict[str, Any]
    burst_nodes: np.ndarray
    """Billed burst nodes in each second of the trace."""


def simulated(ctl: live.Controller, rates: np.ndarray, workdir: Path, *, window_s: float) -> Simulated:
    """The simulator's gpuburst on the same compressed trace, workload, pools, scrape, policy and tick."""
    from controller.sim import contenders, scenario

    workload = ctl.setup.workloads[0]
    trace = workdir / "trace.csv"
    trace.write_text("t_seconds,requests\n" + "".join(f"{t},{r:.4f}\n" for t, r in enumerate(rates)))
    data = {
        "name": f"demo-{workload.name}",
        "trace": trace.name,
        "service": {
            "gpu_rps": workload.gpu_rps,
            "service_time_ms": workload.service_time_s * 1000,
            "slo_ms": workload.slo_s * 1000,
            "timeout_s": workload.timeout_s,
        },
        "private": {"gpus": workload.private_gpus},
        "pools": [
            {
                "name": p.name,
                "gpus_per_node": p.gpus_per_node,
                "price_per_hour": p.price_per_hour,
                "boot_s": p.boot_s,
                "max_nodes": p.max_nodes,
                "spot": p.spot,
            }
            for p in ctl.setup.pools
        ],
        "metrics": {"scrape_interval_s": int(SCRAPE_S), "rate_window_s": max(int(window_s), int(SCRAPE_S))},
    }
    path = workdir / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    tick_s = ctl.loaded.config.tick_interval_s
    run = contenders.run(
        scenario.parse(data, path=path), "gpuburst", burst_policy=ctl.setup.policy, tick_s=tick_s
    )
    return Simulated(
        figures={
            "scenario": str(path),
            "tick_s": tick_s,
            "requests": round(run.arrived),
            "slo_attainment": round(run.slo_attainment, 4),
            "p99_ms": round(run.p99_latency_s * 1000, 1),
            "node_seconds": float(run.billed_nodes.sum()),
            "usd": round(run.cost_usd, 4),
            "peak_burst_nodes": run.max_burst_nodes,
        },
        burst_nodes=run.billed_nodes,
    )


def plot(
    path: Path, *, rates: np.ndarray, load: Load | None, progress: Progress, sim: Simulated, trace: str
) -> None:
    """Requests sent and failed against the trace; burst nodes live against the simulator's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_load, ax_nodes) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    t = np.arange(len(rates))
    ax_load.plot(t, rates, color="#999999", label=f"{trace} (compressed)")
    if load is not None:
        sent = np.zeros(len(rates))
        failed = np.zeros(len(rates))
        for sent_at, _, code in load.results:
            if 0 <= sent_at < len(rates):
                sent[int(sent_at)] += 1
                if code != "200":
                    failed[int(sent_at)] += 1
        ax_load.plot(t, sent, color="#1f77b4", lw=0.8, label="sent (req/s)")
        ax_load.plot(t, failed, color="#d62728", lw=0.8, label="failed (req/s)")
    ax_load.set_ylabel("requests / s")
    ax_load.legend(loc="upper right")
    ax_load.set_title("gpuburst demo: live loop on this machine")
    if progress.timeline:
        ticks = [at for at, _ in progress.timeline]
        nodes = [n for _, n in progress.timeline]
        ax_nodes.step(ticks, nodes, where="post", color="#d62728", label="live burst nodes")
    ax_nodes.step(t, sim.burst_nodes, where="post", color="#2ca02c", ls="--", label="simulated burst nodes")
    ax_nodes.set_ylabel("burst nodes")
    ax_nodes.set_xlabel("seconds into the trace")
    ax_nodes.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(ctl: live.Controller, load: Load, progress: Progress) -> dict[str, Any]:
    transitions = ctl.store.audit(kind="transition", limit=10_000)
    launched = sorted({a.node for a in transitions if a.after == "requested" and a.node})
    released = sorted({a.node for a in transitions if a.after == "released" and a.node})
    ledger = ctl.store.ledger()
    last = ctl.reconciler.last_report
    return {
        "load": load.summary(ctl.setup.workloads[0].slo_s),
        "decisions": progress.actions,
        "burst_nodes_launched": launched,
        "burst_nodes_released": released,
        "peak_burst_nodes": progress.peak_nodes,
        "still_running": {p: dict(c) for p, c in (last.nodes if last else {}).items()},
        "node_seconds": round(sum(s for s, _ in ledger.values()), 1),
        "usd": round(sum(u for _, u in ledger.values()), 4),
        "ledger": {p: {"node_seconds": round(s, 1), "usd": round(u, 4)} for p, (s, u) in ledger.items()},
    }


def print_summary(summary: dict[str, Any], out: Any) -> None:
    load, sim = summary["load"], summary["simulated"]
    slo = load["slo_attainment"]
    print("\nreport (the trace's requests; cost at the config's pretend price)", file=out)
    print(f"  requests     {load['requests']} sent, {load['failed']} failed, codes {load['codes']}", file=out)
    print(f"  decisions    {summary['decisions']}", file=out)
    print(
        f"  burst nodes  {len(summary['burst_nodes_launched'])} launched, "
        f"{len(summary['burst_nodes_released'])} released, peak {summary['peak_burst_nodes']} at once, "
        f"still running {summary['still_running'] or 'none'}",
        file=out,
    )
    print(f"  {'':14s}{'live':>12s}{'simulated':>12s}", file=out)
    rows = [
        (
            f"SLO <= {load['slo_s']:g} s",
            f"{slo:.2%}" if slo is not None else "-",
            f"{sim['slo_attainment']:.2%}",
        ),
        ("p99 latency", f"{load['p99_ms']} ms", f"{sim['p99_ms']} ms"),
        ("peak nodes", str(summary["peak_burst_nodes"]), str(sim["peak_burst_nodes"])),
        ("node-seconds", f"{summary['node_seconds']:g}", f"{sim['node_seconds']:g}"),
        ("cost", f"{summary['usd']:.4f} USD", f"{sim['usd']:.4f} USD"),
    ]
    for name, live_v, sim_v in rows:
        print(f"  {name:14s}{live_v:>12s}{sim_v:>12s}", file=out)
