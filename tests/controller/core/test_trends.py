"""The one-pass trend and growth lines against two plain least-squares fits, to the last bit."""

from __future__ import annotations

import math
import random

from controller.core import trends


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    n = len(points)
    if n < 3:
        return None
    t_last = points[-1][0]
    sx = sy = sxx = sxy = 0.0
    for t, y in points:
        x = t - t_last
        sx += x
        sy += y
        sxx += x * x
        sxy += x * y
    cxx = sxx - sx * sx / n
    if cxx <= 0:
        return None
    slope = (sxy - sx * sy / n) / cxx
    return (sy - slope * sx) / n, slope


def test_one_pass_equals_a_fit_of_the_values_and_one_of_their_logs() -> None:
    rng = random.Random(13)
    for _ in range(500):
        n = rng.randint(0, 25)
        start = rng.uniform(0, 1e6)
        points = [(start + 15.0 * i, rng.choice((0.0, rng.uniform(0, 5e4)))) for i in range(n)]
        eps = rng.uniform(0.5, 20.0)
        lines = trends.lines(points, eps)
        plain = _fit(points)
        logs = _fit([(t, math.log(v + eps)) for t, v in points])
        if plain is None:
            assert lines is None and logs is None
        else:
            assert lines == (plain, logs)


def test_samples_at_one_time_have_no_line() -> None:
    assert trends.lines([(5.0, 1.0)] * 4, 1.0) is None
