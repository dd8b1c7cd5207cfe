"""The demo's load: a shipped trace compressed in time, sent open-loop to the ready workers, and what
the run saw tick by tick."""

from __future__ import annotations

import base64
import concurrent.futures
import math
import threading
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from controller.core import model
from controller.ports import clock as clock_mod
from controller.runtime import errors

SCRAPE_S = 2.0
"""How often the demo's Prometheus scrapes (and evaluates its rules)."""


def trace_rates(name: str, seconds: int, peak_rps: float) -> np.ndarray:
    """A shipped scenario's trace squeezed into `seconds` one-second rates, its peak second `peak_rps`."""
    from controller.sim import scenario

    arrivals = scenario.load(name).arrivals
    if len(arrivals) < seconds:
        raise errors.UserError(f"demo: trace {name!r} is shorter ({len(arrivals)} s) than the run")
    rates = np.asarray([chunk.mean() for chunk in np.array_split(arrivals, seconds)])
    return np.asarray(rates * (peak_rps / rates.max()))


class Load:
    """Open-loop verify requests, round robin over the ready workers: the first rate until `begin()`,
    then one rate per second of `rates`; done when they run out."""

    def __init__(self, *, endpoints: Callable[[], list[str]], rates: np.ndarray) -> None:
        from workloads.face_compare import bench as fc_bench  # the workers this demo starts

        faces = [base64.b64encode(f).decode() for f in fc_bench.synthetic_faces(8)]
        self.bodies = [
            {"image_a": faces[i], "image_b": faces[(i + 1) % len(faces)]} for i in range(len(faces))
        ]
        self.endpoints = endpoints
        self.rates = [float(r) for r in rates]
        self.clock = clock_mod.SystemClock()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.began: float | None = None
        self.targets: list[str] = []
        self.sent = 0
        self.codes: dict[str, int] = {}
        self.results: list[tuple[float, float, str]] = []
        """(seconds into the trace when sent, latency, status code or error) of every request."""
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="demo-load")
        self.http = httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=64))
        self.thread = threading.Thread(target=self._run, name="demo-load", daemon=True)

    def begin(self) -> None:
        self.began = self.clock.now()

    def rate(self, now: float) -> float | None:
        if self.began is None:
            return self.rates[0]
        second = int(now - self.began)
        return self.rates[second] if second < len(self.rates) else None

    def _run(self) -> None:
        due = self.clock.now()
        refreshed = -math.inf
        i = 0
        while not self.stop.is_set():
            now = self.clock.now()
            rate = self.rate(now)
            if rate is None:
                return
            if now - refreshed >= 0.5:
                targets, refreshed = list(self.endpoints()), now
                with self.lock:
                    self.targets = targets
            if now < due:
                self.stop.wait(min(due - now, 0.1))
                continue
            due = max(due, now - 1.0) + 1.0 / max(rate, 0.05)
            self.pool.submit(self._send, i)
            i += 1

    def _send(self, i: int) -> None:
        # The worker is picked when the request goes out, not when it was queued: a queued request
        # must not reach a worker that has left the rotation since.
        with self.lock:
            targets = self.targets
        if not targets:
            return
        url = targets[i % len(targets)]
        sent_at = self.clock.now() - self.began if self.began is not None else -1.0
        watch = clock_mod.Stopwatch()
        try:
            code = str(
                self.http.post(
                    f"{url}/v1/verify", json=self.bodies[i % len(self.bodies)], headers={"X-Tier": "normal"}
                ).status_code
            )
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        with self.lock:
            self.sent += 1
            self.codes[code] = self.codes.get(code, 0) + 1
            self.results.append((sent_at, watch.elapsed(), code))

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.pool.shutdown(wait=True)
        self.http.close()

    def status(self) -> str:
        with self.lock:
            failed = self.sent - self.codes.get("200", 0)
            return f"{self.sent} sent, {failed} failed"

    def summary(self, slo_s: float) -> dict[str, Any]:
        """Over the trace's requests (the warm-up before it is left out)."""
        with self.lock:
            results = [r for r in self.results if r[0] >= 0]
        ok = sorted(lat for _, lat, code in results if code == "200")
        codes: dict[str, int] = {}
        for _, _, code in results:
            codes[code] = codes.get(code, 0) + 1

        def q(p: float) -> float | None:
            return round(ok[min(len(ok) - 1, int(p * len(ok)))] * 1000, 1) if ok else None

        met = sum(1 for lat in ok if lat <= slo_s)
        return {
            "requests": len(results),
            "codes": codes,
            "failed": len(results) - len(ok),
            "slo_s": slo_s,
            "slo_attainment": round(met / len(results), 4) if results else None,
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
        }


class Progress:
    """One line per tick, and the reasons whenever the decision is not steady."""

    def __init__(self, out: Any, load: Load) -> None:
        self.out = out
        self.load = load
        self.clock = clock_mod.SystemClock()
        self.start = self.clock.now()
        self.peak_nodes = 0
        self.actions: dict[str, int] = {}
        self.timeline: list[tuple[float, int]] = []
        """(seconds into the trace, burst nodes) at each tick."""

    def __call__(self, report: model.TickReport) -> None:
        d = report.decision
        self.actions[d.action.value] = self.actions.get(d.action.value, 0) + 1
        counts = {p: dict(c) for p, c in report.nodes.items()}
        self.peak_nodes = max(self.peak_nodes, sum(sum(c.values()) for c in counts.values()))
        demand = ", ".join(f"{w} {rps:5.1f} req/s" for w, rps in d.demand_rps.items()) or "demand unknown"
        nodes = "; ".join(
            f"{p}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items())) for p, c in sorted(counts.items())
        )
        targets = ", ".join(f"{p}={n}" for p, n in d.target_nodes.items()) or "-"
        elapsed = self.clock.now() - self.start
        if self.load.began is not None:
            self.timeline.append(
                (self.clock.now() - self.load.began, sum(sum(c.values()) for c in counts.values()))
            )
        print(
            f"[{elapsed:5.0f}s] {demand} | target {targets} | {nodes or 'no burst nodes'} | "
            f"{d.action.value} | {report.usd_per_hour:.2f} USD/h | {self.load.status()}",
            file=self.out,
            flush=True,
        )
        if d.action is not model.Action.STEADY:
            for reason in d.reasons:
                print(f"         - {reason}", file=self.out, flush=True)
        for t in report.transitions:
            print(
                f"         * {t.node}: {t.before or 'new'} -> {t.after} ({t.reason})",
                file=self.out,
                flush=True,
            )
        for e in report.errors:
            print(f"         ! {e}", file=self.out, flush=True)
