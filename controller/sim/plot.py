"""A replay as a picture: demand against each contender's serving capacity, the requests each missed,
cloud nodes, cumulative cost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from controller.sim import engine, scenario

REFERENCES = ("oracle", "lagged-oracle")

COLORS = {
    "gpuburst": "#d62728",
    "oracle": "#2ca02c",
    "lagged-oracle": "#98df8a",
    "hpa+ca": "#1f77b4",
    "keda+karpenter": "#9467bd",
    "kpa+karpenter": "#8c564b",
    "skyserve": "#e377c2",
    "static-peak": "#7f7f7f",
    "private-only": "#bcbd22",
}


def _bucket(values: np.ndarray, width: int, how: str = "mean") -> np.ndarray:
    n = len(values) // width * width
    if n == 0:
        return values.astype(float)
    shaped = values[:n].reshape(-1, width)
    return np.asarray(shaped.max(axis=1) if how == "max" else shaped.mean(axis=1))


def best_baseline(runs: Sequence[engine.Run]) -> str | None:
    """The peer with the highest SLO attainment, the cheaper one on a tie (static-peak and
    private-only are reference points, not peers)."""
    peers = [r for r in runs if r.contender not in ("gpuburst", "static-peak", "private-only", *REFERENCES)]
    if not peers:
        return None
    return max(peers, key=lambda r: (round(r.slo_attainment, 4), -r.cost_usd)).contender


def plot(sc: scenario.Scenario, runs: Sequence[engine.Run], path: Path) -> Path:
    n = sc.duration_s
    # About 1,500 points across the plot, whatever the trace length.
    width = max(1, n // 1500)
    hours = np.arange(n // width if n >= width else n) * width / 3600.0
    fig, (ax_demand, ax_missed, ax_nodes, ax_cost) = plt.subplots(
        4, 1, figsize=(13, 12), sharex=True, gridspec_kw={"height_ratios": [3, 1.5, 2, 2]}
    )
    demand = _bucket(sc.arrivals, width)
    ax_demand.fill_between(hours, demand, color="#cccccc", label="demand (req/s)", step="mid")
    ax_demand.axhline(
        sc.private_gpus * sc.workload.gpu_rps, color="black", ls=":", lw=1, label="private capacity"
    )
    best = best_baseline(runs)
    bold = {"gpuburst", "oracle", best}
    for run in runs:
        # gpuburst, the oracle and the best baseline stand out; the rest stay for context.
        lw, alpha = (2.0, 1.0) if run.contender in bold else (0.8, 0.35)
        color = COLORS.get(run.contender)
        cap = _bucket(run.ready_gpus * sc.workload.gpu_rps, width, "mean")
        label = f"{run.contender} (best baseline)" if run.contender == best else run.contender
        ax_demand.plot(hours, cap, lw=lw, alpha=alpha, color=color, label=f"{label} capacity")
        # Capacity above demand can still miss while a queue drains: the misses show where.
        ax_missed.plot(hours, _bucket(run.missed, width, "mean"), lw=lw, alpha=alpha, color=color)
        nodes = _bucket(run.billed_nodes, width, "mean")
        ax_nodes.plot(hours, nodes, lw=lw, alpha=alpha, color=color, label=label)
        cost = (np.cumsum(run.usd_per_hour) / 3600.0)[width - 1 :: width][: len(hours)]
        ax_cost.plot(hours, cost, lw=lw, alpha=alpha, color=color, label=label)
    ax_demand.set_ylabel("requests / s")
    ax_demand.set_title(f"{sc.name}: demand and serving capacity (bucket {width} s)")
    ax_demand.legend(loc="upper left", fontsize=8, ncol=2)
    ax_missed.set_ylabel("missing the SLO\n(req/s)")
    ax_nodes.set_ylabel("cloud nodes billed")
    ax_cost.set_ylabel("cumulative cost (USD)")
    ax_cost.set_xlabel("hours")
    ax_cost.legend(loc="upper left", fontsize=8, ncol=2)
    for ax in (ax_demand, ax_missed, ax_nodes, ax_cost):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
