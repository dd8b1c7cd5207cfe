"""Scenario families: reproducible files in the shipped format whose traffic has the drawn shape."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from controller.app import cli
from controller.runtime import errors
from controller.sim import families, scenario


def _load(tmp: Path, family: str, seed: int) -> tuple[families.Generated, scenario.Scenario]:
    gen = families.generate(family, seed)
    return gen, scenario.load(str(families.write(gen, tmp)))


def _first(family: str, want: object = None, key: str = "kind") -> families.Generated:
    """The first seed whose draw has params[key] == want (any seed when want is None)."""
    for seed in range(1, 200):
        gen = families.generate(family, seed)
        if want is None or gen.params.get(key) == want:
            return gen
    raise AssertionError(f"no {family} seed with {key}={want}")


def _mean(a: np.ndarray, start: int, end: int) -> float:
    return float(a[start:end].mean())


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path: Path) -> None:
    for family in families.FAMILIES:
        a = families.write(families.generate(family, 5), tmp_path / "a")
        b = families.write(families.generate(family, 5), tmp_path / "b")
        c = families.write(families.generate(family, 6), tmp_path / "c")
        assert a.read_bytes() == b.read_bytes()
        assert a.with_suffix(".csv").read_bytes() == b.with_suffix(".csv").read_bytes()
        assert a.with_suffix(".csv").read_bytes() != c.with_suffix(".csv").read_bytes()
        assert a.read_text().replace("5", "") != c.read_text().replace("6", "")


@pytest.mark.parametrize("family", families.FAMILIES)
def test_every_family_loads_and_peaks_beyond_private(tmp_path: Path, family: str) -> None:
    gen, sc = _load(tmp_path, family, 10001)
    assert sc.name == f"{family}-10001"
    assert sc.duration_s == len(gen.rate)
    assert sc.arrivals.sum() == pytest.approx(gen.counts.sum())
    e = gen.env
    # The noiseless peak 60 s average is the drawn peak, which needs cloud GPUs beyond the private ones.
    c = np.concatenate(([0.0], np.cumsum(gen.rate)))
    assert float((c[60:] - c[:-60]).max() / 60) == pytest.approx(e.peak_rps)
    assert e.peak_rps / e.gpu_rps >= 1.99 * e.private_gpus
    assert {p.spec.gpus_per_node for p in sc.pools} == {e.gpus_per_node}
    assert {p.spec.boot_s for p in sc.pools} == {e.boot_s}
    assert [p.spec.spot for p in sc.pools] == [True, False]


def test_environment_draws_stay_in_their_ranges_and_caps_sometimes_bind() -> None:
    spot_binds = total_binds = 0
    for seed in range(300):
        e = families.environment(families.rng_for("ramp", seed))
        assert families.BOOT_S[0] <= e.boot_s <= families.BOOT_S[1]
        assert families.SCRAPE_INTERVAL_S[0] <= e.scrape_interval_s <= families.SCRAPE_INTERVAL_S[1]
        assert families.RATE_WINDOW_S[0] <= e.rate_window_s <= families.RATE_WINDOW_S[1]
        assert e.rate_window_s % e.scrape_interval_s == 0 and e.rate_window_s >= 2 * e.scrape_interval_s
        assert families.PRIVATE_GPUS[0] <= e.private_gpus <= families.PRIVATE_GPUS[1]
        assert e.gpus_per_node in families.GPUS_PER_NODE
        assert families.GPU_RPS[0] <= e.gpu_rps <= families.GPU_RPS[1]
        assert families.SLO_MS[0] <= e.slo_ms <= families.SLO_MS[1]
        assert 0 < e.service_time_ms < e.slo_ms
        per_gpu = e.on_demand_price / e.gpus_per_node
        assert (
            families.ON_DEMAND_USD_PER_GPU_HOUR[0] - 1e-3
            <= per_gpu
            <= families.ON_DEMAND_USD_PER_GPU_HOUR[1] + 1e-3
        )
        assert 0.3 - 1e-3 <= e.spot_price / e.on_demand_price <= 0.5 + 1e-3
        lo, hi = families.PEAK_OVER_PRIVATE
        assert lo - 1e-3 <= e.peak_rps / (e.private_gpus * e.gpu_rps) <= hi + 1e-3
        spot_binds += e.spot_max_nodes < e.nodes_at_peak
        total_binds += e.spot_max_nodes + e.on_demand_max_nodes < e.nodes_at_peak
    assert 0 < total_binds < spot_binds < 300


def test_exponential_ramp_doubles_each_doubling_time_and_grows_by_its_height(tmp_path: Path) -> None:
    gen = _first("ramp", "exponential")
    sc = scenario.load(str(families.write(gen, tmp_path)))
    p = gen.params
    start, doubling, up = p["start_s"], p["doubling_s"], p["up_s"]
    assert 60 <= doubling <= 600 and 5 <= p["height"] <= 30
    assert gen.rate[start + doubling] == pytest.approx(2 * gen.rate[start])
    assert gen.rate[start + 2 * doubling] == pytest.approx(4 * gen.rate[start])
    # The replayed trace: the hold runs at `height` times the level before the ramp.
    hold = _mean(sc.arrivals, start + up, start + up + p["hold_s"])
    before = _mean(sc.arrivals, 0, start)
    assert hold / before == pytest.approx(p["height"], rel=0.05)
    # ... and comes back down to it.
    assert _mean(sc.arrivals, sc.duration_s - 600, sc.duration_s) == pytest.approx(before, rel=0.1)


def test_linear_ramp_rises_evenly(tmp_path: Path) -> None:
    gen = _first("ramp", "linear")
    p = gen.params
    start, up, h = p["start_s"], p["up_s"], p["height"]
    mid = gen.rate[start + up // 2] / gen.rate[0]
    assert mid == pytest.approx(1 + (h - 1) * (up // 2) / up)
    assert gen.rate[start + up] == pytest.approx(h * gen.rate[0])


def test_spikes_last_their_drawn_share_of_a_boot(tmp_path: Path) -> None:
    gen, sc = _load(tmp_path, "spike", 3)
    spikes = gen.params["spikes"]
    assert 3 <= len(spikes) <= 6 and {s["kind"] for s in spikes} == set(families.SPIKE_KINDS)
    base = gen.params["unit_rps"]
    for s in spikes:
        lo, hi = families.SPIKE_KINDS[s["kind"]]
        assert lo - 0.01 <= s["duration_s"] / gen.env.boot_s <= hi + 0.01
        start, end = s["start_s"], s["start_s"] + s["duration_s"]
        assert 2 <= s["height"] <= 8
        # Exactly the drawn seconds are raised.
        assert gen.rate[start - 1] == pytest.approx(base) and gen.rate[end] == pytest.approx(base)
        assert np.allclose(gen.rate[start:end], s["height"] * base)
        assert _mean(sc.arrivals, start, end) == pytest.approx(s["height"] * base, rel=0.1)


def test_recurring_spikes_recur_at_the_jittered_times(tmp_path: Path) -> None:
    gen, sc = _load(tmp_path, "recurring", 3)
    p = gen.params
    assert p["period_s"] in (3600, 7200, 86400) and 1 <= p["days"] <= 3
    assert 300 <= p["duration_s"] <= 900 and 3 <= p["height"] <= 8
    starts = p["starts_s"]
    assert len(starts) >= 2
    nominal = [p["first_s"] + k * p["period_s"] for k in range(len(starts))]
    offsets = [s - n for s, n in zip(starts, nominal, strict=True)]
    assert all(abs(o) <= p["jitter_s"] for o in offsets)
    assert len(set(offsets)) > 1, "the starts are jittered, not exactly periodic"
    base = p["unit_rps"]
    for s in starts:
        during = _mean(sc.arrivals, s, s + p["duration_s"])
        assert during == pytest.approx(p["height"] * base, rel=0.1)
        # Quiet in the ten minutes before each start.
        assert _mean(sc.arrivals, s - 600, s) <= (1 + p["swing"]) * base * 1.1


def test_diurnal_noise_is_per_minute_and_as_large_as_drawn(tmp_path: Path) -> None:
    for seed in (1, 2, 3, 4):
        gen, sc = _load(tmp_path, "diurnal", seed)
        p = gen.params
        assert 2 <= p["days"] <= 7 and sc.duration_s == p["days"] * 86400
        assert gen.bucket_s == 60
        assert families.NOISE[0] <= p["noise"] <= families.NOISE[1]
        expected = gen.rate.reshape(-1, 60).sum(axis=1)
        relative = gen.counts / expected - 1.0
        assert float(relative.std()) == pytest.approx(p["noise"], rel=0.06, abs=0.005)
        # The replayed arrivals are flat within each minute.
        assert sc.arrivals[0] == sc.arrivals[59] == gen.counts[0] / 60


def test_bursty_is_an_hour_of_heavy_tailed_seconds(tmp_path: Path) -> None:
    gen, sc = _load(tmp_path, "bursty", 2)
    assert sc.duration_s == 3600 and len(gen.params["bursts"]) >= 5
    a = sc.arrivals
    assert a.max() >= 3 * np.median(a)
    assert scenario.peak_window_rate(a, 60) == pytest.approx(gen.env.peak_rps, rel=0.1)


def test_outages_dip_to_their_level_then_recover(tmp_path: Path) -> None:
    surged = False
    for seed in (1, 2, 3):
        gen, sc = _load(tmp_path, "outage", seed)
        base = gen.params["unit_rps"]
        drift = gen.params["drift"]
        assert 3 * 3600 <= sc.duration_s <= 6 * 3600
        for d in gen.params["dips"]:
            assert 0 <= d["level"] <= 0.4 and 120 <= d["duration_s"] <= 1800
            start, end = d["start_s"], d["start_s"] + d["duration_s"]
            level = _mean(gen.rate, start, end) / base
            assert d["level"] * (1 - drift) - 1e-9 <= level <= d["level"] * (1 + drift) + 1e-9
            after = end + d["recovery_s"]
            if "surge_s" in d:
                surged = True
                assert _mean(sc.arrivals, after, after + d["surge_s"]) > _mean(
                    sc.arrivals, start - 600, start
                )
            else:
                assert _mean(gen.rate, after, after + 60) == pytest.approx(base, rel=drift + 0.01)
    assert surged


def test_bad_family_or_seed_is_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(errors.UserError, match="unknown family"):
        families.generate("tsunami", 1)
    with pytest.raises(errors.UserError, match="seed"):
        families.generate("ramp", -1)
    out = str(tmp_path)
    assert cli.main(["scenarios", "generate", "--family", "nope", "--seed", "1", "--out", out]) == 2
    assert cli.main(["scenarios", "generate", "--family", "ramp", "--seed", "x1", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("gpuburst: error:") for line in err)


def test_generate_command_writes_a_loadable_scenario(tmp_path: Path) -> None:
    assert (
        cli.main(["scenarios", "generate", "--family", "spike", "--seed", "4", "--out", str(tmp_path)]) == 0
    )
    sc = scenario.load(str(tmp_path / "spike-4.yaml"))
    assert sc.duration_s > 0 and math.isfinite(float(sc.arrivals.sum()))
