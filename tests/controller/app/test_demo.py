"""The demo's parts that run in seconds: the compressed trace and Prometheus with the project's rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controller.app import demo, demo_load


def test_the_trace_is_squeezed_into_one_rate_per_second_with_the_asked_peak() -> None:
    rates = demo_load.trace_rates("flash-crowd", 180, 15.0)
    assert rates.shape == (180,)
    assert np.isclose(rates.max(), 15.0)
    # A flash crowd: quiet, a peak in the middle, quiet again.
    assert rates[:10].max() < 1.0 and rates[-10:].max() < 1.0
    assert 60 < int(rates.argmax()) < 120


def test_prometheus_loads_the_projects_recording_and_alert_rules(tmp_path: Path) -> None:
    ps = demo.Processes(tmp_path)
    (tmp_path / "targets").mkdir()
    try:
        url = demo.start_prometheus(
            ps, port=demo._free_port(), targets_dir=tmp_path / "targets", controller="127.0.0.1:1"
        )
        counts = demo._rule_counts(url)
    finally:
        ps.stop()
    recording, alerts = (int(part.split()[0]) for part in counts.split(", "))
    assert recording > 0 and alerts > 0, counts
