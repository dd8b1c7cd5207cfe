"""The service model: a FIFO fluid queue stepped every second.

Capacity is `gpu_rps` per serving GPU. A request's latency is the service time plus the work ahead of it
divided by the capacity of that moment; it meets the SLO when that latency is within `slo`. A request
whose wait would exceed the timeout is dropped on arrival (a miss) and adds no work. Within a second the
capacity and the arrival rate are constant, so the work ahead is piecewise linear and every quantity
below is exact for the model, not sampled.
"""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-12


class FluidQueue:
    def __init__(self, *, service_s: float, slo_s: float, timeout_s: float, bin_s: float = 0.01) -> None:
        self.service_s = service_s
        self.wait_slo_s = slo_s - service_s
        self.timeout_s = timeout_s
        self.bin_s = bin_s
        self.backlog = 0.0
        """Requests admitted and not yet served (the queue depth a scrape sees)."""
        self.arrived = 0.0
        self.met = 0.0
        self.dropped = 0.0
        self.hist = np.zeros(math.ceil((service_s + timeout_s) / bin_s) + 2)
        """Requests per latency bin; the service-time bin's own count lives in `_at_service`."""
        self._service_bin = int(service_s / bin_s)
        self._at_service = 0.0
        """The service-time bin, where every unqueued second lands: a float add, not a numpy item's."""
        self.last_concurrency = 0.0
        """Mean requests in the system during the last second (Knative's concurrency metric)."""

    def step(self, arrivals: float, capacity_rps: float) -> None:
        """Advance one second with `arrivals` requests spread uniformly over it."""
        self.arrived += arrivals
        q = self.backlog
        if q <= _EPS and arrivals <= capacity_rps:
            # Nothing waits: the common second, kept cheap.
            self.met += arrivals
            self._at_service += arrivals
            self.backlog = 0.0
            self.last_concurrency = arrivals * self.service_s
            return
        if capacity_rps <= 0:
            self.dropped += arrivals
            # With nothing to serve them, arrivals wait at the front door (Knative's activator holds
            # them while it asks for a replica): that is the concurrency a scale-from-zero sees.
            self.last_concurrency = q + arrivals
            return
        self._slow_step(arrivals, capacity_rps)

    def step_missed(self, arrivals: float, capacity_rps: float) -> float:
        """`step`, returning how many of the second's arrivals miss the SLO (late or dropped)."""
        met = self.met
        self.step(arrivals, capacity_rps)
        return max(0.0, arrivals - (self.met - met))

    def _slow_step(self, a: float, c: float) -> None:
        q = self.backlog
        q_slo = self.wait_slo_s * c
        q_max = self.timeout_s * c
        x = 0.0
        area = 0.0
        admitted = 0.0
        while x < 1.0 - _EPS:
            left = 1.0 - x
            if q > q_max + 1e-9:
                # Waits beyond the timeout: every arrival is dropped while the excess drains.
                dur = min(left, (q - q_max) / c)
                self.dropped += a * dur
                area += (q - c * dur / 2) * dur
                q -= c * dur
            elif a > c:
                if q >= q_max - 1e-9:
                    # At the timeout: the queue admits what it serves and drops the rest.
                    dur = left
                    self._segment(q, q, c * dur, c, q_slo)
                    admitted += c * dur
                    self.dropped += (a - c) * dur
                    area += q * dur
                    q = q_max
                else:
                    dur = min(left, (q_max - q) / (a - c))
                    q1 = q + (a - c) * dur
                    self._segment(q, q1, a * dur, c, q_slo)
                    admitted += a * dur
                    area += (q + q1) / 2 * dur
                    q = q1
            elif q <= _EPS:
                dur = left
                self._segment(0.0, 0.0, a * dur, c, q_slo)
                admitted += a * dur
                q = 0.0
            else:
                dur = left if c <= a else min(left, q / (c - a))
                q1 = max(0.0, q - (c - a) * dur)
                self._segment(q, q1, a * dur, c, q_slo)
                admitted += a * dur
                area += (q + q1) / 2 * dur
                q = q1
            x += dur
        self.backlog = q
        self.last_concurrency = area + min(admitted, c) * self.service_s

    def _segment(self, q0: float, q1: float, n: float, c: float, q_slo: float) -> None:
        """`n` requests arriving while the work ahead moves linearly from q0 to q1."""
        if n <= 0:
            return
        lo, hi = (q0, q1) if q0 <= q1 else (q1, q0)
        if hi <= q_slo:
            self.met += n
        elif lo < q_slo:
            self.met += n * (q_slo - lo) / (hi - lo)
        l0 = self.service_s + lo / c
        l1 = self.service_s + hi / c
        b0 = min(int(l0 / self.bin_s), len(self.hist) - 1)
        b1 = min(int(l1 / self.bin_s), len(self.hist) - 1)
        if b0 == b1:
            if b0 == self._service_bin:
                self._at_service += n
            else:
                self.hist[b0] += n
        else:
            # Spread uniformly over the latency range, bin by bin.
            edges = np.clip(np.arange(b0, b1 + 2) * self.bin_s, l0, l1)
            self.hist[self._service_bin] = self._at_service
            self.hist[b0 : b1 + 1] += n * np.diff(edges) / (l1 - l0)
            self._at_service = float(self.hist[self._service_bin])

    def quantile(self, q: float) -> float:
        """Latency quantile in seconds (upper edge of its histogram bin); a dropped request counts as
        one that waited out the timeout."""
        hist = self.hist.copy()
        hist[self._service_bin] = self._at_service
        hist[-1] += self.dropped
        total = hist.sum()
        if total <= 0:
            return 0.0
        idx = int(np.searchsorted(np.cumsum(hist), q * total))
        return min((idx + 1) * self.bin_s, self.service_s + self.timeout_s)
