"""Scenario files: a traffic trace, the service it loads, private capacity and the cloud pools.

The format is fixed (`data/scenarios/README.md`). Loading validates everything and turns the trace into
per-second arrivals; every error names the file and the field or line.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import yaml

from controller.core import model
from controller.runtime import errors, pool_schema

DATA = Path(str(resources.files("controller.sim") / "data"))
"""The shipped scenarios and traces, package data of `controller.sim`."""
SCENARIOS = DATA / "scenarios"


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class _Window(_Strict):
    start_s: float = pydantic.Field(0.0, ge=0)
    end_s: float | None = None


class _Rescale(_Strict):
    peak_rps: float = pydantic.Field(gt=0)
    window_s: int = pydantic.Field(60, ge=1)


class _Service(_Strict):
    gpu_rps: float = pydantic.Field(gt=0)
    service_time_ms: float = pydantic.Field(gt=0)
    slo_ms: float = pydantic.Field(gt=0)
    timeout_s: float = pydantic.Field(gt=0)


class _Private(_Strict):
    gpus: int = pydantic.Field(ge=0)


class _Pool(pool_schema.PoolFields):
    """A cloud pool and how often its nodes are taken away (spot interruptions)."""

    interruptions_per_hour: float = pydantic.Field(0.0, ge=0)


class _Billing(_Strict):
    granularity_s: int = pydantic.Field(1, ge=1)
    minimum_s: float = pydantic.Field(0.0, ge=0)


class _Metrics(_Strict):
    scrape_interval_s: int = pydantic.Field(15, ge=1)
    rate_window_s: int = pydantic.Field(60, ge=1)


class _Budget(_Strict):
    usd_per_hour: float | None = pydantic.Field(None, ge=0)


class _Scenario(_Strict):
    name: str = pydantic.Field(min_length=1)
    trace: str
    window: _Window = _Window()
    rescale: _Rescale | None = None
    service: _Service
    private: _Private
    pools: list[_Pool] = pydantic.Field(min_length=1)
    billing: _Billing = _Billing()
    metrics: _Metrics = _Metrics()
    budget: _Budget = _Budget()
    seed: int = 0

    @pydantic.model_validator(mode="after")
    def _checks(self) -> _Scenario:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pools: duplicate pool name(s) {dupes}")
        if self.service.service_time_ms > self.service.slo_ms:
            raise ValueError("service.service_time_ms exceeds service.slo_ms: no request could meet the SLO")
        if self.window.end_s is not None and self.window.end_s <= self.window.start_s:
            raise ValueError("window.end_s must be after window.start_s")
        if self.metrics.rate_window_s < self.metrics.scrape_interval_s:
            raise ValueError("metrics.rate_window_s must be at least one scrape_interval_s")
        return self


@dataclass(frozen=True)
class Pool:
    spec: model.PoolSpec
    interruptions_per_hour: float


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    arrivals: np.ndarray
    """Requests arriving in each second [t, t+1), after window and rescale (floats)."""
    workload: model.WorkloadSpec
    timeout_s: float
    pools: tuple[Pool, ...]
    billing_granularity_s: int
    billing_minimum_s: float
    scrape_interval_s: int
    rate_window_s: int
    budget_usd_per_hour: float | None
    seed: int

    @property
    def duration_s(self) -> int:
        return len(self.arrivals)

    @property
    def private_gpus(self) -> int:
        return self.workload.private_gpus

    @property
    def pool_specs(self) -> tuple[model.PoolSpec, ...]:
        return tuple(p.spec for p in self.pools)


def resolve(name_or_path: str) -> Path:
    """A scenario by path, by shipped file stem (`flash-crowd`) or by its `name:` field."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise errors.UserError(f"{path}: scenario file not found")
        return path
    shipped = sorted(SCENARIOS.glob("*.yaml"))
    for candidate in shipped:
        if candidate.stem == name_or_path:
            return candidate
    for candidate in shipped:
        with candidate.open() as f:
            data = yaml.safe_load(f)
        if isinstance(data, dict) and data.get("name") == name_or_path:
            return candidate
    names = ", ".join(p.stem for p in shipped)
    raise errors.UserError(f"unknown scenario {name_or_path!r}: give a YAML path or one of: {names}")


def load(name_or_path: str) -> Scenario:
    path = resolve(name_or_path)
    return parse(errors.read_yaml(path, what="scenario"), path=path)


def parse(data: Any, *, path: Path) -> Scenario:
    sc = errors.validated(_Scenario, data, where=path, what="a scenario")
    trace_path = (path.parent / sc.trace).resolve()
    times, counts = read_trace(trace_path)
    arrivals = per_second(times, counts, where=trace_path)
    start = int(sc.window.start_s)
    end = len(arrivals) if sc.window.end_s is None else int(sc.window.end_s)
    if start >= len(arrivals):
        raise errors.UserError(
            f"{path}: window.start_s {start} is past the end of the trace ({len(arrivals)} s)"
        )
    arrivals = arrivals[start:end]
    if sc.rescale is not None:
        arrivals = rescale(arrivals, peak_rps=sc.rescale.peak_rps, window_s=sc.rescale.window_s)
    workload = model.WorkloadSpec(
        name=sc.name,
        gpu_rps=sc.service.gpu_rps,
        service_time_s=sc.service.service_time_ms / 1000.0,
        slo_s=sc.service.slo_ms / 1000.0,
        private_gpus=sc.private.gpus,
        timeout_s=sc.service.timeout_s,
    )
    pools = tuple(Pool(p.spec(), interruptions_per_hour=p.interruptions_per_hour) for p in sc.pools)
    return Scenario(
        name=sc.name,
        path=path,
        arrivals=arrivals,
        workload=workload,
        timeout_s=sc.service.timeout_s,
        pools=pools,
        billing_granularity_s=sc.billing.granularity_s,
        billing_minimum_s=sc.billing.minimum_s,
        scrape_interval_s=sc.metrics.scrape_interval_s,
        rate_window_s=sc.metrics.rate_window_s,
        budget_usd_per_hour=sc.budget.usd_per_hour,
        seed=sc.seed,
    )


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`t_seconds,requests` rows; errors name the file and line."""
    try:
        f = path.open(newline="")
    except OSError as exc:
        raise errors.UserError(f"{path}: cannot read trace: {exc.strerror}") from None
    try:
        with f:
            return _trace_rows(path, csv.reader(f))
    except UnicodeDecodeError as exc:
        raise errors.UserError(f"{path}: the trace is not UTF-8 text (byte {exc.start})") from None


def parse_trace(text: str, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    """`t_seconds,requests` rows from text (an upload); errors name `where` and the line."""
    return _trace_rows(where, csv.reader(io.StringIO(text, newline="")))


def _trace_rows(path: Path | str, reader: Any) -> tuple[np.ndarray, np.ndarray]:
    times: list[float] = []
    counts: list[float] = []
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != ["t_seconds", "requests"]:
        raise errors.UserError(f"{path}:1: header must be 't_seconds,requests', got {header!r}")
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise errors.UserError(f"{path}:{line}: expected 2 columns, got {len(row)}: {row!r}")
        try:
            t, n = float(row[0]), float(row[1])
        except ValueError:
            raise errors.UserError(f"{path}:{line}: not numbers: {','.join(row)!r}") from None
        if not (math.isfinite(t) and math.isfinite(n)):
            raise errors.UserError(f"{path}:{line}: not a finite number: {','.join(row)!r}")
        if n < 0:
            raise errors.UserError(f"{path}:{line}: negative request count {n:g}")
        if times and t <= times[-1]:
            raise errors.UserError(f"{path}:{line}: t_seconds {t:g} does not increase")
        times.append(t)
        counts.append(n)
    if not times:
        raise errors.UserError(f"{path}: the trace has no rows")
    return np.asarray(times), np.asarray(counts)


def per_second(times: np.ndarray, counts: np.ndarray, *, where: Path | str) -> np.ndarray:
    """Spread each bucket's arrivals uniformly over its seconds (the bucket is the step between rows)."""
    if len(times) == 1:
        step = 1.0
    else:
        steps = np.diff(times)
        step = float(steps[0])
        if not np.allclose(steps, step) or step < 1 or step != int(step):
            raise errors.UserError(
                f"{where}: buckets must be a whole number of seconds (>= 1) and evenly spaced"
            )
    width = int(step)
    return np.repeat(counts / width, width).astype(np.float64)


def rescale(arrivals: np.ndarray, *, peak_rps: float, window_s: int) -> np.ndarray:
    """Scale counts so the highest `window_s`-average rate is `peak_rps`; shape and noise are kept."""
    peak = peak_window_rate(arrivals, window_s)
    if peak <= 0:
        raise errors.UserError("rescale: the trace has no requests to scale")
    return np.asarray(arrivals * (peak_rps / peak))


def peak_window_rate(arrivals: np.ndarray, window_s: int) -> float:
    """The highest average rate over any `window_s` consecutive seconds."""
    if len(arrivals) <= window_s:
        return float(arrivals.sum() / max(1, len(arrivals)))
    c = np.concatenate(([0.0], np.cumsum(arrivals)))
    return float((c[window_s:] - c[:-window_s]).max() / window_s)
