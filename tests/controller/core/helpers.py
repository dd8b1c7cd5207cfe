"""What the core's tests share: the forecast settings they plan with."""

from __future__ import annotations

from controller.core import forecast

SETTINGS = forecast.Settings(
    trend_window_s=300.0,
    level_window_s=120.0,
    base_window_s=900.0,
    half_life_s=1e12,  # nothing fades within a test unless asked
    coverage=0.96,
    min_errors=5.0,
    cold_margin=0.25,
    peak_window_s=3600.0,
    peak_margin=0.1,
    floor_rps=25.0,
)
