"""A replay as a picture: demand against each policy's serving capacity, cloud nodes, cumulative cost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from controller.sim import engine, scenario

COLORS = {
    "gpuburst": "#d62728",
    "oracle": "#2ca02c",
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


def plot(sc: scenario.Scenario, runs: Sequence[engine.Run], path: Path) -> Path:
    n = sc.duration_s
    # About 1,500 points across the plot, whatever the trace length.
    width = max(1, n // 1500)
    hours = np.arange(n // width if n >= width else n) * width / 3600.0
    fig, (ax_demand, ax_nodes, ax_cost) = plt.subplots(
        3, 1, figsize=(13, 10), sharex=True, gridspec_kw={"height_ratios": [3, 2, 2]}
    )
    demand = _bucket(sc.arrivals, width)
    ax_demand.fill_between(hours, demand, color="#cccccc", label="demand (req/s)", step="mid")
    ax_demand.axhline(
        sc.private_gpus * sc.workload.gpu_rps, color="black", ls=":", lw=1, label="private capacity"
    )
    for run in runs:
        lw = 2.0 if run.policy in ("gpuburst", "oracle") else 1.0
        color = COLORS.get(run.policy)
        cap = _bucket(run.ready_gpus * sc.workload.gpu_rps, width, "mean")
        ax_demand.plot(hours, cap, lw=lw, color=color, label=f"{run.policy} capacity")
        ax_nodes.plot(hours, _bucket(run.billed_nodes, width, "mean"), lw=lw, color=color, label=run.policy)
        cost = np.cumsum(run.usd_per_hour) / 3600.0
        ax_cost.plot(hours, cost[width - 1 :: width][: len(hours)], lw=lw, color=color, label=run.policy)
    ax_demand.set_ylabel("requests / s")
    ax_demand.set_title(f"{sc.name}: demand and serving capacity (bucket {width} s)")
    ax_demand.legend(loc="upper left", fontsize=8, ncol=2)
    ax_nodes.set_ylabel("cloud nodes billed")
    ax_cost.set_ylabel("cumulative cost (USD)")
    ax_cost.set_xlabel("hours")
    ax_cost.legend(loc="upper left", fontsize=8, ncol=2)
    for ax in (ax_demand, ax_nodes, ax_cost):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
