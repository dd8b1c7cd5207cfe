"""Scenario families: seeded generators of scenarios (YAML + trace CSV) in the shipped format.

A burst policy tuned on five shipped traces can overfit them; the families draw both the traffic shape
and the environment (boot time, metrics pipeline, private capacity, node size, pools, prices, SLO) from
wide ranges, so a policy can be chosen on one set of seeds (train) and judged on another (validation).
Generation is pure: a numpy Generator seeded by (family, seed), so the same pair gives byte-identical
files. `gpuburst scenarios generate --family F --seed N --out DIR` writes one scenario.
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from controller.runtime import errors

FAMILIES: tuple[str, ...] = ("ramp", "spike", "recurring", "diurnal", "bursty", "outage")
SPLITS: dict[str, int] = {"train": 0, "validation": 10000}
"""Seed offsets: split `s` with N scenarios per family uses seeds offset+1 .. offset+N."""
MAX_SEED = 2**31 - 1

# The environment's ranges (inclusive); tests check every draw against them.
BOOT_S = (60, 400)
SCRAPE_INTERVAL_S = (5, 30)
RATE_WINDOW_S = (30, 120)
PRIVATE_GPUS = (2, 32)
GPUS_PER_NODE = (1, 2, 4, 8)
GPU_RPS = (10, 60)
SLO_MS = (200, 1000)
PEAK_OVER_PRIVATE = (2.0, 20.0)
"""Peak (highest 60 s-average) demand over what the private GPUs serve."""
ON_DEMAND_USD_PER_GPU_HOUR = (0.8, 4.0)
SPOT_DISCOUNT = (0.3, 0.5)
"""Spot price as a fraction of on-demand."""
SPOT_INTERRUPTIONS_PER_HOUR = (0.0, 0.05)
PEAK_WINDOW_S = 60


@dataclass(frozen=True)
class Environment:
    """Everything of a scenario except its traffic."""

    boot_s: int
    scrape_interval_s: int
    rate_window_s: int
    private_gpus: int
    gpus_per_node: int
    gpu_rps: int
    slo_ms: int
    service_time_ms: int
    on_demand_price: float
    spot_price: float
    spot_max_nodes: int
    on_demand_max_nodes: int
    interruptions_per_hour: float
    peak_rps: float
    nodes_at_peak: int
    """Cloud nodes the peak needs beyond the private GPUs (the pools' caps are drawn around it)."""


@dataclass(frozen=True)
class Generated:
    """One generated scenario: its environment, the noiseless rate and the trace counts."""

    family: str
    seed: int
    env: Environment
    bucket_s: int
    rate: np.ndarray
    """Noiseless demand in requests/s, one value per second."""
    counts: np.ndarray
    """Requests per trace bucket (integers): what the CSV holds."""
    params: dict[str, Any] = field(default_factory=dict)
    """The drawn shape parameters (times in seconds from the trace start)."""

    @property
    def name(self) -> str:
        return f"{self.family}-{self.seed}"

    def document(self, trace: str) -> dict[str, Any]:
        """The scenario YAML as a mapping (format: `data/scenarios/README.md`)."""
        e = self.env
        pools = [
            {
                "name": "cloud-spot",
                "gpus_per_node": e.gpus_per_node,
                "price_per_hour": e.spot_price,
                "boot_s": e.boot_s,
                "max_nodes": e.spot_max_nodes,
                "spot": True,
                "interruptions_per_hour": e.interruptions_per_hour,
            },
            {
                "name": "cloud-ondemand",
                "gpus_per_node": e.gpus_per_node,
                "price_per_hour": e.on_demand_price,
                "boot_s": e.boot_s,
                "max_nodes": e.on_demand_max_nodes,
                "spot": False,
            },
        ]
        return {
            "name": self.name,
            "trace": trace,
            "service": {
                "gpu_rps": e.gpu_rps,
                "service_time_ms": e.service_time_ms,
                "slo_ms": e.slo_ms,
                "timeout_s": 30,
            },
            "private": {"gpus": e.private_gpus},
            "pools": pools,
            "billing": {"granularity_s": 1, "minimum_s": 60},
            "metrics": {"scrape_interval_s": e.scrape_interval_s, "rate_window_s": e.rate_window_s},
            "seed": self.seed,
        }


def rng_for(family: str, seed: int) -> np.random.Generator:
    """The generator of one (family, seed): stable across runs and platforms."""
    return np.random.default_rng([zlib.crc32(family.encode()), seed])


def seeds(split: str, n: int) -> list[int]:
    """The seeds of a split: train and validation never share one."""
    if split not in SPLITS:
        raise errors.UserError(f"unknown split {split!r}; splits are: {', '.join(SPLITS)}")
    return [SPLITS[split] + i for i in range(1, n + 1)]


def check(family: str, seed: int) -> None:
    if family not in FAMILIES:
        raise errors.UserError(f"unknown family {family!r}; families are: {', '.join(FAMILIES)}")
    if not 0 <= seed <= MAX_SEED:
        raise errors.UserError(f"seed {seed} out of range: a whole number from 0 to {MAX_SEED}")


def generate(family: str, seed: int) -> Generated:
    check(family, seed)
    rng = rng_for(family, seed)
    env = environment(rng)
    shape, bucket_s, params, noisy = _SHAPES[family](rng, env)
    unit = _unit_rps(shape, env.peak_rps)
    rate = shape * unit
    params = {"unit_rps": round(unit, 6), **params}
    counts = noisy(rng, rate) if noisy is not None else _poisson(rng, rate, bucket_s)
    return Generated(family, seed, env, bucket_s, rate, counts, params)


def write(gen: Generated, out: Path) -> Path:
    """`<out>/<family>-<seed>.yaml` and its trace `<family>-<seed>.csv`; returns the YAML path."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{gen.name}.csv"
    yaml_path = out / f"{gen.name}.yaml"
    rows = "".join(f"{i * gen.bucket_s},{int(c)}\n" for i, c in enumerate(gen.counts.tolist()))
    csv_path.write_text("t_seconds,requests\n" + rows)
    header = (
        f"# Generated: gpuburst scenarios generate --family {gen.family} --seed {gen.seed}\n"
        f"# params: {json.dumps(gen.params, sort_keys=True)}\n"
    )
    body = yaml.safe_dump(gen.document(csv_path.name), sort_keys=False, default_flow_style=None, width=200)
    yaml_path.write_text(header + body)
    return yaml_path


# --- the environment ---------------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def environment(rng: np.random.Generator) -> Environment:
    boot_s = _int(rng, *BOOT_S)
    scrape = _int(rng, *SCRAPE_INTERVAL_S)
    # A rate window covers at least two scrapes (Prometheus' rate() needs two samples) within the range.
    windows = [m * scrape for m in range(2, RATE_WINDOW_S[1] // scrape + 1) if m * scrape >= RATE_WINDOW_S[0]]
    rate_window = int(windows[int(rng.integers(len(windows)))])
    private = _int(rng, *PRIVATE_GPUS)
    gpn = int(GPUS_PER_NODE[int(rng.integers(len(GPUS_PER_NODE)))])
    gpu_rps = _int(rng, *GPU_RPS)
    slo_ms = 10 * _int(rng, SLO_MS[0] // 10, SLO_MS[1] // 10)
    service_ms = round(slo_ms * _uniform(rng, 0.1, 0.4))
    on_demand = round(_uniform(rng, *ON_DEMAND_USD_PER_GPU_HOUR) * gpn, 4)
    spot = round(on_demand * _uniform(rng, *SPOT_DISCOUNT), 4)
    peak_rps = round(private * gpu_rps * _log_uniform(rng, *PEAK_OVER_PRIVATE), 3)
    nodes_at_peak = max(1, math.ceil((peak_rps / gpu_rps - private) / gpn))
    # Caps around the peak's need: the spot cap often binds (on-demand takes the rest), both together
    # sometimes do.
    spot_max = max(1, round(nodes_at_peak * _uniform(rng, 0.3, 1.5)))
    on_demand_max = max(1, round(nodes_at_peak * _uniform(rng, 0.5, 2.0)))
    interruptions = round(_uniform(rng, *SPOT_INTERRUPTIONS_PER_HOUR), 4)
    return Environment(
        boot_s=boot_s,
        scrape_interval_s=scrape,
        rate_window_s=rate_window,
        private_gpus=private,
        gpus_per_node=gpn,
        gpu_rps=gpu_rps,
        slo_ms=slo_ms,
        service_time_ms=service_ms,
        on_demand_price=on_demand,
        spot_price=spot,
        spot_max_nodes=spot_max,
        on_demand_max_nodes=on_demand_max,
        interruptions_per_hour=interruptions,
        peak_rps=peak_rps,
        nodes_at_peak=nodes_at_peak,
    )


# --- traffic shapes: relative demand per second; scaled so the peak 60 s average is env.peak_rps ------

Noisy = Callable[[np.random.Generator, np.ndarray], np.ndarray]
Shape = tuple[np.ndarray, int, dict[str, Any], Noisy | None]


def _unit_rps(shape: np.ndarray, peak_rps: float) -> float:
    """Requests/s of shape value 1 (the base level): the highest 60 s average becomes peak_rps."""
    c = np.concatenate(([0.0], np.cumsum(shape)))
    w = min(PEAK_WINDOW_S, len(shape))
    return peak_rps / float((c[w:] - c[:-w]).max() / w)


def _poisson(rng: np.random.Generator, rate: np.ndarray, bucket_s: int) -> np.ndarray:
    """Poisson arrivals per bucket around the noiseless rate."""
    n = len(rate) // bucket_s * bucket_s
    expected = rate[:n].reshape(-1, bucket_s).sum(axis=1)
    return np.asarray(rng.poisson(expected), dtype=np.int64)


def _minutes(rng: np.random.Generator, lo: float, hi: float) -> int:
    return round(60 * _uniform(rng, lo, hi))


def _ramp(rng: np.random.Generator, env: Environment) -> Shape:
    """Base, a linear or exponential rise by `height`, a hold at the peak, the way back, base again."""
    kind = "exponential" if rng.random() < 0.5 else "linear"
    height = round(_log_uniform(rng, 5.0, 30.0), 3)
    pre = _minutes(rng, 20, 50)
    hold = _minutes(rng, 20, 60)
    tail = _minutes(rng, 20, 40)
    params: dict[str, Any] = {"kind": kind, "height": height, "start_s": pre, "hold_s": hold}
    if kind == "exponential":
        doubling = round(_uniform(rng, 60, 600))
        halving = round(_uniform(rng, 60, 600))
        up_s = math.ceil(doubling * math.log2(height))
        down_s = math.ceil(halving * math.log2(height))
        up = np.minimum(height, 2.0 ** (np.arange(up_s) / doubling))
        down = np.maximum(1.0, height * 0.5 ** (np.arange(1, down_s + 1) / halving))
        params |= {"doubling_s": doubling, "halving_s": halving}
    else:
        up_s = _minutes(rng, 10, 60)
        down_s = _minutes(rng, 10, 60)
        up = 1.0 + (height - 1.0) * np.arange(up_s) / up_s
        down = height - (height - 1.0) * np.arange(1, down_s + 1) / down_s
    params |= {"up_s": up_s, "down_s": down_s}
    shape = np.concatenate((np.ones(pre), up, np.full(hold, height), down, np.ones(tail)))
    return shape, 1, params, None


SPIKE_KINDS = {"short": (0.2, 0.6), "about": (0.8, 1.25), "long": (2.0, 5.0)}
"""Spike duration over boot_s, per kind: over before a node could boot, about one boot, several."""


def _spike(rng: np.random.Generator, env: Environment) -> Shape:
    """Rectangular spikes 2-8x the base, at least one of each duration kind relative to boot_s."""
    n = _int(rng, 3, 6)
    kinds = [*SPIKE_KINDS, *(list(SPIKE_KINDS)[int(i)] for i in rng.integers(3, size=n - 3))]
    kinds = [kinds[int(i)] for i in rng.permutation(n)]
    t = _minutes(rng, 20, 40)
    spikes: list[dict[str, Any]] = []
    for kind in kinds:
        lo, hi = SPIKE_KINDS[kind]
        duration = max(1, round(env.boot_s * _uniform(rng, lo, hi)))
        height = round(_uniform(rng, 2.0, 8.0), 3)
        spikes.append({"kind": kind, "start_s": t, "duration_s": duration, "height": height})
        t += duration + _minutes(rng, 10, 30)
    shape = np.ones(t + _minutes(rng, 10, 20))
    for s in spikes:
        shape[s["start_s"] : s["start_s"] + s["duration_s"]] = s["height"]
    return shape, 1, {"spikes": spikes}, None


RECURRING_BUCKET_S = 10


def _recurring(rng: np.random.Generator, env: Environment) -> Shape:
    """Scheduled spikes (hourly, two-hourly or daily), each start jittered by up to a few minutes."""
    period = int((3600, 7200, 86400)[int(rng.integers(3))])
    days = _int(rng, 2, 3) if period == 86400 else _int(rng, 1, 3)
    n = days * 86400
    height = round(_uniform(rng, 3.0, 8.0), 3)
    b = RECURRING_BUCKET_S
    duration = b * round(_uniform(rng, 300, 900) / b)
    jitter = b * round(_uniform(rng, 60, 300) / b)
    first = b * round(_uniform(rng, 0.2, 0.7) * period / b)
    # A mild daily swing of the base, so "a spike" is relative to a moving level.
    swing = _uniform(rng, 0.0, 0.3)
    phase = _uniform(rng, 0.0, 2 * math.pi)
    shape = 1.0 + swing * np.sin(2 * math.pi * np.arange(n) / 86400 + phase)
    starts = []
    for nominal in range(first, n, period):
        start = nominal + b * int(rng.integers(-jitter // b, jitter // b + 1))
        if start >= 0 and start + duration <= n:
            starts.append(start)
            shape[start : start + duration] = height
    params = {
        "period_s": period,
        "days": days,
        "height": height,
        "duration_s": duration,
        "jitter_s": jitter,
        "first_s": first,
        "starts_s": starts,
        "swing": round(swing, 4),
    }
    return shape, b, params, None


DIURNAL_BUCKET_S = 60
NOISE = (0.0, 0.3)


def _diurnal(rng: np.random.Generator, env: Environment) -> Shape:
    """Daily curves (sharper or flatter peaks, quieter weekends) with multiplicative per-minute noise."""
    days = _int(rng, 2, 7)
    n = days * 86400
    trough = _uniform(rng, 0.1, 0.5)
    sharpness = _uniform(rng, 1.0, 3.0)
    peak_hour = _uniform(rng, 10.0, 20.0)
    first_weekday = _int(rng, 0, 6)
    weekend = _uniform(rng, 0.4, 0.9)
    sigma = round(_uniform(rng, *NOISE), 4)
    t = np.arange(n)
    day = 0.5 + 0.5 * np.cos(2 * math.pi * (t / 3600.0 - peak_hour) / 24.0)
    level = trough + (1.0 - trough) * day**sharpness
    day_factor = rng.uniform(0.85, 1.15, size=days)
    weekday = (first_weekday + t // 86400) % 7
    level = level * day_factor[t // 86400] * np.where(weekday >= 5, weekend, 1.0)
    params = {
        "days": days,
        "trough": round(trough, 4),
        "sharpness": round(sharpness, 4),
        "peak_hour": round(peak_hour, 3),
        "first_weekday": first_weekday,
        "weekend": round(weekend, 4),
        "noise": sigma,
    }

    def noisy(rng: np.random.Generator, rate: np.ndarray) -> np.ndarray:
        # Per-minute multiplicative noise of relative standard deviation `sigma`, no Poisson on top.
        expected = rate.reshape(-1, DIURNAL_BUCKET_S).sum(axis=1)
        factor = np.maximum(0.0, 1.0 + sigma * rng.standard_normal(len(expected)))
        return np.asarray(np.rint(expected * factor), dtype=np.int64)

    return level, DIURNAL_BUCKET_S, params, noisy


def _bursty(rng: np.random.Generator, env: Environment) -> Shape:
    """An hour of LLM-like on/off bursts: Pareto gaps, lognormal lengths, Pareto sizes."""
    n = 3600
    background = 1.0
    gap_alpha = _uniform(rng, 1.2, 2.0)
    gap_min = _uniform(rng, 10.0, 60.0)
    on_median = _uniform(rng, 5.0, 60.0)
    on_sigma = _uniform(rng, 0.5, 1.2)
    size_alpha = _uniform(rng, 1.1, 2.5)
    size_scale = _uniform(rng, 2.0, 6.0)
    shape = np.full(n, background)
    bursts = []
    t = float(gap_min * (1.0 + rng.pareto(gap_alpha)))
    while t < n:
        length = max(1, round(on_median * math.exp(on_sigma * float(rng.standard_normal()))))
        size = min(40.0, size_scale * (1.0 + float(rng.pareto(size_alpha))))
        start = int(t)
        shape[start : start + length] += size
        bursts.append([start, length, round(size, 3)])
        t += length + gap_min * (1.0 + float(rng.pareto(gap_alpha)))
    params = {
        "gap_alpha": round(gap_alpha, 4),
        "gap_min_s": round(gap_min, 3),
        "on_median_s": round(on_median, 3),
        "size_alpha": round(size_alpha, 4),
        "bursts": bursts,
    }
    return shape, 1, params, None


def _outage(rng: np.random.Generator, env: Environment) -> Shape:
    """A few hours of steady demand with outages (0-40 % of normal), recoveries and catch-up surges."""
    n = round(_uniform(rng, 3.0, 6.0) * 3600)
    t = np.arange(n)
    drift = _uniform(rng, 0.0, 0.15)
    normal = 1.0 + drift * np.sin(2 * math.pi * t / _uniform(rng, 7200, 21600) + _uniform(rng, 0, 6.3))
    shape = normal.copy()
    count = _int(rng, 1, 3)
    slot = n // count
    dips = []
    for i in range(count):
        duration = _minutes(rng, 2, 30)
        start = i * slot + _int(rng, slot // 5, max(slot // 5, slot - duration - 1800))
        level = round(_uniform(rng, 0.0, 0.4), 4)
        recovery = _int(rng, 0, 300)
        end = min(n, start + duration)
        shape[start:end] = normal[start:end] * level
        r_end = min(n, end + recovery)
        ramp = level + (1.0 - level) * (np.arange(r_end - end) + 1) / (recovery + 1)
        shape[end:r_end] = normal[end:r_end] * ramp
        dip: dict[str, Any] = {
            "start_s": start,
            "duration_s": duration,
            "level": level,
            "recovery_s": recovery,
        }
        if rng.random() < 0.6:
            # Clients retry: a share of what was missed comes back after recovery, at a capped extra rate.
            missed = float((normal[start:r_end] - shape[start:r_end]).sum())
            share = _uniform(rng, 0.3, 1.0)
            cap = _uniform(rng, 0.5, 2.0)
            surge_s = max(_minutes(rng, 2, 10), math.ceil(missed * share / cap))
            # Over before the next outage can start.
            surge_s = min(surge_s, min(n, (i + 1) * slot + slot // 5) - r_end)
            if surge_s > 0:
                shape[r_end : r_end + surge_s] += missed * share / surge_s
                dip |= {"surge_s": surge_s, "surge_extra": round(missed * share / surge_s, 4)}
        dips.append(dip)
    return shape, 1, {"drift": round(drift, 4), "dips": dips}, None


_SHAPES: dict[str, Callable[[np.random.Generator, Environment], Shape]] = {
    "ramp": _ramp,
    "spike": _spike,
    "recurring": _recurring,
    "diurnal": _diurnal,
    "bursty": _bursty,
    "outage": _outage,
}


# --- CLI ---------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser("scenarios", help="generate evaluation scenarios from seeded families")
    ssub = p.add_subparsers(dest="scenarios_command", required=True, metavar="ACTION")
    g = ssub.add_parser("generate", help="write one scenario YAML and its trace CSV")
    g.add_argument("--family", required=True, help=f"one of: {', '.join(FAMILIES)}")
    g.add_argument("--seed", required=True, help="a whole number; the same seed gives the same files")
    g.add_argument("--out", type=Path, required=True, help="folder for <family>-<seed>.yaml and .csv")
    g.set_defaults(func=_generate_command)


def parse_seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise errors.UserError(f"--seed: not a whole number: {text!r}") from None
    return seed


def _generate_command(args: argparse.Namespace) -> int:
    gen = generate(args.family, parse_seed(args.seed))
    path = write(gen, args.out)
    e = gen.env
    print(
        f"wrote {path} ({len(gen.rate)} s, peak {e.peak_rps:g} req/s, {e.private_gpus} private GPUs, "
        f"boot {e.boot_s} s, {e.gpus_per_node} GPUs/node)"
    )
    return 0
