"""Small scenarios built in a temp folder, so baseline rules can be checked on hand-computed cases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from controller.sim import scenario


def write(
    tmp: Path,
    arrivals: Sequence[float],
    *,
    step: int = 1,
    private: int = 2,
    pools: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Path:
    trace = tmp / "trace.csv"
    trace.write_text("t_seconds,requests\n" + "".join(f"{i * step},{n}\n" for i, n in enumerate(arrivals)))
    doc: dict[str, Any] = {
        "name": "test",
        "trace": "trace.csv",
        "service": {"gpu_rps": 10, "service_time_ms": 100, "slo_ms": 500, "timeout_s": 30},
        "private": {"gpus": private},
        "pools": pools
        or [
            {
                "name": "spot",
                "gpus_per_node": 1,
                "price_per_hour": 0.36,
                "boot_s": 60,
                "max_nodes": 20,
                "spot": True,
            },
            {"name": "ondemand", "gpus_per_node": 1, "price_per_hour": 0.72, "boot_s": 60, "max_nodes": 20},
        ],
        "billing": {"granularity_s": 1, "minimum_s": 60},
        "metrics": {"scrape_interval_s": 15, "rate_window_s": 60},
        "seed": 1,
    }
    doc.update(extra)
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def build(tmp: Path, arrivals: Sequence[float], **kw: Any) -> scenario.Scenario:
    return scenario.load(str(write(tmp, arrivals, **kw)))
