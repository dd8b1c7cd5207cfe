"""Time: the only module that reads the system clock."""

from __future__ import annotations

import time


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to: sleeping advances it at once."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.t += seconds

    def set(self, t: float) -> None:
        if t < self.t:
            raise ValueError("a clock does not go back")
        self.t = float(t)


class Stopwatch:
    """Elapsed wall time of a piece of work (tick duration, apply duration), whatever the Clock says."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
