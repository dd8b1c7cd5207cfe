"""The burst policy's behaviours, driven through decide on demand shapes whose right answer is known."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
from collections.abc import Callable

from controller.core import model, policy

SPOT = model.PoolSpec("spot", gpus_per_node=1, price_per_hour=0.4, boot_s=240, max_nodes=40, spot=True)
ONDEMAND = model.PoolSpec("ondemand", gpus_per_node=1, price_per_hour=1.0, boot_s=240, max_nodes=40)
FACE = model.WorkloadSpec("face", gpu_rps=25, service_time_s=0.06, slo_s=0.5, private_gpus=4)
DEFAULT = policy.BurstPolicy()


def metrics(
    rate: float, *, queue: float = 0.0, tiers: dict[str, float] | None = None
) -> model.WorkloadMetrics:
    return model.WorkloadMetrics(rate_rps=rate, queue_depth=queue, tier_rps=tiers or {})


def inputs(
    at: float,
    m: model.WorkloadMetrics,
    *,
    active: dict[str, int],
    ready: dict[str, int] | None = None,
    unavailable: frozenset[str] = frozenset(),
    leaving: dict[str, int] | None = None,
) -> policy.DecisionInputs:
    return policy.DecisionInputs(
        at=at,
        synced=True,
        workloads=(FACE,),
        metrics={"face": m},
        pools=(SPOT, ONDEMAND),
        active=active,
        leaving=leaving or {},
        ready=active if ready is None else ready,
        unavailable=unavailable,
    )


def drive(
    demand: Callable[[float], float],
    *,
    until: float,
    start: float = 0.0,
    burst_policy: policy.BurstPolicy = DEFAULT,
    state: policy.PolicyState | None = None,
) -> tuple[list[model.Decision], policy.PolicyState]:
    """Tick every 15 s; nodes appear at once (the horizon, not the world, is under test here)."""
    state = state or policy.PolicyState()
    active = {"spot": 0, "ondemand": 0}
    out = []
    t = start
    while t < until:
        d, state = policy.decide(inputs(t, metrics(demand(t)), active=active), state, burst_policy)
        active = dict(d.target_nodes)
        out.append(d)
        t += 15
    return out, state


def gpus(d: model.Decision) -> int:
    return FACE.private_gpus + sum(d.target_nodes.values())


def _minute_steps(level: float, spread: float, seed: int) -> Callable[[float], float]:
    """Per-minute arrivals that jump by noise each minute, as a 60 s rate sees them: every jump becomes
    a short, clean ramp."""
    rng = random.Random(seed)
    minutes = [level + rng.gauss(0, spread) for _ in range(24 * 60)]

    def rate(t: float) -> float:
        m, into = divmod(t, 60.0)
        now, before = minutes[int(m)], minutes[max(0, int(m) - 1)]
        return before + (now - before) * into / 60.0

    return rate


BIG_SPOT = dataclasses.replace(SPOT, max_nodes=1000)
BIG_ONDEMAND = dataclasses.replace(ONDEMAND, max_nodes=1000)


def drive_big(demand: Callable[[float], float], *, until: float) -> list[model.Decision]:
    """Like drive, on pools large enough that no limit binds."""
    state = policy.PolicyState()
    active = {"spot": 0, "ondemand": 0}
    out = []
    for t in range(0, int(until), 15):
        i = dataclasses.replace(inputs(t, metrics(demand(t)), active=active), pools=(BIG_SPOT, BIG_ONDEMAND))
        d, state = policy.decide(i, state, DEFAULT)
        active = dict(d.target_nodes)
        out.append(d)
    return out


def launches(decisions: list[model.Decision]) -> int:
    return sum(1 for a, b in itertools.pairwise(decisions) if gpus(b) > gpus(a))


def test_steady_demand_gets_a_small_margin_once_errors_are_learned() -> None:
    decisions, _state = drive(lambda t: 500.0, until=8 * 3600)
    first, hour = decisions[int(600 / 15)], decisions[int(3600 / 15)]
    assert "(x1.28)" in first.reasons[0], "no forecaster judged yet: the cold margin"
    # An hour in, errors have come but too few to tell the coverage asked: part of the cold margin.
    assert 500 < hour.forecast_rps["face"] < first.forecast_rps["face"], hour.reasons
    # 500 / 25 = 20 GPUs at 100 %: at the planned 97 % a noise-free demand needs no more than 21.
    assert gpus(decisions[-1]) == math.ceil(500 / (25 * DEFAULT.target_utilization)), decisions[-1].reasons
    assert decisions[-1].forecast_rps["face"] <= 500 * math.exp(0.05)


def test_a_linear_ramp_is_covered_at_the_boot_horizon_after_warm_up() -> None:
    ramp = lambda t: 50 + 0.5 * t  # noqa: E731 - 0.5 req/s per second, no noise
    decisions = drive_big(ramp, until=3 * 3600)
    for d in decisions[40:]:
        # What is launched now serves after boot: it must cover the demand of then.
        assert gpus(d) * FACE.gpu_rps >= ramp(d.at + SPOT.boot_s), d.reasons


def test_an_exponential_ramp_is_covered_at_the_boot_horizon() -> None:
    flash = lambda t: 20 * math.exp(t / 900)  # noqa: E731 - doubling every ten minutes
    decisions = drive_big(flash, until=4500)
    assert flash(4500) > 2000
    for d in decisions:
        assert gpus(d) * FACE.gpu_rps >= flash(d.at + SPOT.boot_s), d.reasons


def test_capacity_bought_ahead_of_a_flash_crowd_goes_within_a_rate_window_once_it_stops() -> None:
    grow = math.log(900 / 40) / 900  # 40 -> 900 req/s in 15 minutes from t = 1800, then a plateau

    def flash(t: float) -> float:
        return 40.0 if t < 1800 else min(900.0, 40.0 * math.exp(grow * (t - 1800)))

    decisions, _ = drive(flash, until=3600)
    ramp = [d for d in decisions if 1800 <= d.at <= 2700]
    assert any(d.cause is model.Cause.GROWTH and d.figures["ahead_gpus"] > 0 for d in ramp)
    peak = max(sum(d.target_nodes.values()) for d in ramp)
    stopped = next(d.at for d in decisions if d.at > 2700 and d.figures["ahead_gpus"] == 0)
    settled = next(
        d
        for d in decisions
        if d.at >= stopped and d.figures["kept_burst_gpus"] == d.figures["wanted_burst_gpus"]
    )
    # Within a rate window (and a tick or two) of the growth stopping, not a boot: what was bought for
    # the level demand reached stays.
    assert stopped <= 2700 + 2 * 60.0
    assert settled.at - stopped <= 60.0 + 2 * 15 < SPOT.boot_s
    assert sum(settled.target_nodes.values()) < peak
    assert gpus(settled) * FACE.gpu_rps >= 900.0


def test_per_minute_noise_does_not_churn_launches() -> None:
    noisy = _minute_steps(400.0, 40.0, seed=5)
    decisions = drive_big(noisy, until=4 * 3600)
    learned = decisions[len(decisions) // 4 :]
    rises = sum(1 for a, b in itertools.pairwise(learned) if noisy(b.at) > noisy(a.at))
    # A policy that followed the samples would launch at every rise; this one launches a few times an
    # hour, and never more than 2 GPUs' worth of noise away from its plan.
    assert launches(learned) < rises / 8
    assert max(gpus(d) for d in learned) - min(gpus(d) for d in learned) <= 8


def test_a_spike_recurring_every_hour_is_prewarmed_but_one_seen_once_is_not() -> None:
    def hourly(t: float) -> float:  # from the second hour on, 800 req/s at :30 for two minutes
        return 800.0 if t >= 3600 and 1800 <= t % 3600 < 1920 else 100.0

    decisions, _state = drive(hourly, until=3 * 3600 + 1800)
    by_at = {d.at: d for d in decisions}
    ahead = 1800 - SPOT.boot_s
    # Seen once (in the second hour), the spike is not planned for in the third ...
    assert gpus(by_at[2 * 3600 + ahead]) * 25 < 800, by_at[2 * 3600 + ahead].reasons
    # ... seen in two periods, it is ready a boot before it comes in the fourth.
    d = by_at[3 * 3600 + ahead]
    assert gpus(d) * 25 >= 800, d.reasons
    assert "(hourly)" in d.reasons[0] or "(bihourly)" in d.reasons[0]


def test_idle_capacity_is_released_after_a_boot_of_seen_time() -> None:
    decisions, state = drive(lambda t: 800.0, until=1800)
    peak = sum(decisions[-1].target_nodes.values())
    after, _ = drive(lambda t: 90.0, start=1800, until=2400, state=state)
    dropped = next(d.at for d in after if d.figures["wanted_burst_gpus"] < peak)
    kept = [d for d in after if d.at < dropped - 15 + SPOT.boot_s]
    assert all(sum(d.target_nodes.values()) == peak for d in kept)
    assert all(d.cause is model.Cause.STABILIZATION for d in kept if d.at >= dropped)
    assert sum(after[-1].target_nodes.values()) < peak
    gone = next(d.at for d in after if sum(d.target_nodes.values()) < peak)
    assert gone <= dropped - 15 + SPOT.boot_s + DEFAULT.horizon_extra_s + 15


def test_while_demand_declines_steadily_idle_capacity_goes_within_a_rate_window() -> None:
    def decline(t: float) -> float:  # 800 req/s, then from t = 1800 a fall towards 90 (10-minute constant)
        return 800.0 if t < 1800 else 90.0 + 710.0 * math.exp(-(t - 1800) / 600)

    decisions, _ = drive(decline, until=3600)
    falling = [d for d in decisions if "falling in every window" in d.reasons[0]]
    assert falling and all(1800 < d.at < 3600 for d in falling)
    wanted = {d.at: d.figures["wanted_burst_gpus"] for d in decisions}
    shortened = 0
    for d in falling:
        recent = max(wanted[t] for t in wanted if d.at - 60 <= t <= d.at)
        boot = max(wanted[t] for t in wanted if d.at - SPOT.boot_s - DEFAULT.horizon_extra_s <= t <= d.at)
        margin = float(re.search(r"\(x([0-9.]+)\)", d.reasons[0]).group(1))  # type: ignore[union-attr]
        eps = FACE.gpu_rps  # demand near zero is compared in absolute terms
        bound = (decline(d.at) + eps) * margin - eps
        # +1: the reason rounds the margin to two decimals.
        latest = math.ceil(bound / (FACE.gpu_rps * DEFAULT.target_utilization)) + 1
        kept = d.figures["kept_burst_gpus"]
        # Not what was wanted a boot ago (the fall is not coming back), but what was wanted within a
        # rate window, or what the latest demand needs with the forecast's margin.
        assert kept <= max(recent, latest - FACE.private_gpus)
        assert kept <= boot
        assert gpus(d) * FACE.gpu_rps >= decline(d.at)
        shortened += kept < boot
    assert shortened > len(falling) // 2


def test_a_metrics_outage_neither_counts_as_idle_time_nor_releases_after_it() -> None:
    decisions, state = drive(lambda t: 800.0, until=1800)
    active = dict(decisions[-1].target_nodes)
    peak = sum(active.values())
    for t in range(1800, 1860, 15):  # demand falls; the drop is seen for a minute
        d, state = policy.decide(inputs(t, metrics(90.0), active=active), state, DEFAULT)
        assert d.target_nodes == active
    for t in range(1860, 5460, 15):  # an hour without metrics: holds, nothing remembered
        blind = dataclasses.replace(inputs(t, metrics(90.0), active=active), synced=False)
        d, after = policy.decide(blind, state, DEFAULT)
        assert d.action is model.Action.HOLD and d.cause is model.Cause.UNSYNCED and after is state
    # The first sample after the outage counts a gap of at most a minute: still within a boot.
    d, state = policy.decide(inputs(5460, metrics(90.0), active=active), state, DEFAULT)
    assert sum(d.target_nodes.values()) == peak and d.cause is model.Cause.STABILIZATION
    t = 5475
    while sum(d.target_nodes.values()) == peak:
        d, state = policy.decide(inputs(t, metrics(90.0), active=active), state, DEFAULT)
        t += 15
    assert t - 5460 >= SPOT.boot_s - 60 - 60, "the seen minute before and the capped gap count"


def test_holds_say_why() -> None:
    i = dataclasses.replace(inputs(0, metrics(100.0), active={"spot": 2, "ondemand": 0}), synced=False)
    d, _ = policy.decide(i, policy.PolicyState(), DEFAULT)
    assert d.cause is model.Cause.UNSYNCED and d.target_nodes == {"spot": 2, "ondemand": 0}
    d, _ = policy.decide(dataclasses.replace(i, operator_hold=True), policy.PolicyState(), DEFAULT)
    assert d.cause is model.Cause.OPERATOR_HOLD and d.action is model.Action.HOLD


def test_a_binding_max_nodes_is_the_cause() -> None:
    small = dataclasses.replace(SPOT, max_nodes=3)
    state = policy.PolicyState()
    i = dataclasses.replace(inputs(0, metrics(1000.0), active={"spot": 0}), pools=(small,))
    d, _ = policy.decide(i, state, DEFAULT)
    assert d.target_nodes == {"spot": 3} and d.cause is model.Cause.MAX_NODES


def test_seasonality_can_be_turned_off() -> None:
    off = dataclasses.replace(DEFAULT, seasonality=False)
    decisions, state = drive(lambda t: 300.0, until=600, burst_policy=off)
    assert state.models["face"].profiles == ()
    assert gpus(decisions[-1]) * 25 >= 300


def test_spot_first_then_on_demand_when_spot_is_refused_and_back_make_before_break() -> None:
    state = policy.PolicyState()
    active = {"spot": 0, "ondemand": 0}
    # Spot refuses capacity: the gap goes to on-demand.
    for t in range(0, 300, 15):
        d, state = policy.decide(
            inputs(t, metrics(400.0), active=active, unavailable=frozenset({"spot"})), state, DEFAULT
        )
        active = dict(d.target_nodes)
    assert active["spot"] == 0 and active["ondemand"] >= 13
    assert any("unavailable" in r for r in d.reasons)
    on_demand = active["ondemand"]
    # Spot is back: spot nodes launch while on-demand keeps serving until they are ready.
    d, state = policy.decide(inputs(300, metrics(400.0), active=active, ready=dict(active)), state, DEFAULT)
    assert d.target_nodes["spot"] >= on_demand and d.target_nodes["ondemand"] == on_demand
    active = dict(d.target_nodes)
    ready = {"spot": active["spot"], "ondemand": on_demand}
    d, state = policy.decide(inputs(315, metrics(400.0), active=active, ready=ready), state, DEFAULT)
    assert d.target_nodes["ondemand"] == 0, "spot is ready: on-demand goes first"
    assert (FACE.private_gpus + d.target_nodes["spot"]) * 25 >= 400


def test_a_binding_budget_says_so_and_holds() -> None:
    tight = dataclasses.replace(DEFAULT, budget_usd_per_hour=3.0)
    decisions, _ = drive(lambda t: 1000.0, until=600, burst_policy=tight)
    d = decisions[-1]
    assert d.budget_binding and any("budget binds" in r for r in d.reasons)
    assert d.target_nodes["spot"] * 0.4 + d.target_nodes["ondemand"] * 1.0 <= 3.0


def test_only_the_declared_tiers_buy_capacity() -> None:
    vip_only = dataclasses.replace(DEFAULT, burst_tiers=frozenset({"vip"}))
    m = metrics(1000.0, tiers={"vip": 50.0, "normal": 150.0, "free": 800.0})
    state = policy.PolicyState()
    for t in range(0, 600, 15):
        d, state = policy.decide(inputs(t, m, active={"spot": 0, "ondemand": 0}), state, vip_only)
    assert sum(d.target_nodes.values()) == 0, "50 vip req/s fit the 4 private GPUs"
    state = policy.PolicyState()
    for t in range(0, 600, 15):
        d, state = policy.decide(inputs(t, m, active={"spot": 0, "ondemand": 0}), state, DEFAULT)
    assert sum(d.target_nodes.values()) >= 36


def test_a_backlog_gets_catch_up_capacity_and_says_why() -> None:
    state = policy.PolicyState()
    for t in range(0, 300, 15):
        d, state = policy.decide(inputs(t, metrics(200.0), active={"spot": 5, "ondemand": 0}), state, DEFAULT)
    calm = gpus(d)
    d, _ = policy.decide(inputs(300, metrics(200.0, queue=3000.0), active=d.target_nodes), state, DEFAULT)
    assert gpus(d) > calm and any("to drain it" in r for r in d.reasons)
    assert d.cause is model.Cause.BACKLOG


def test_reasons_tell_a_person_what_was_seen_and_decided() -> None:
    decisions, _ = drive(lambda t: 300.0, until=300)
    text = " ".join(decisions[-1].reasons)
    assert "req/s now" in text and "GPUs" in text and "private" in text


def test_a_jump_that_floods_the_queue_is_sized_in_full_at_the_first_tick() -> None:
    """80 -> 500 req/s at t=600: the 60 s rate shows 185 at 615, the queue 30 s of private capacity."""

    def rate(t: float) -> float:
        return 80.0 + 420.0 * min(1.0, max(0.0, t - 600) / 60)

    def first_tick(queue: float) -> model.Decision:
        state = policy.PolicyState()
        for t in range(0, 615, 15):
            m = dataclasses.replace(metrics(rate(t)), ready_replicas={"private": 4})
            _, state = policy.decide(inputs(t, m, active={"spot": 0, "ondemand": 0}), state, DEFAULT)
        m = dataclasses.replace(metrics(rate(615), queue=queue), ready_replicas={"private": 4})
        d, _ = policy.decide(inputs(615, m, active={"spot": 0, "ondemand": 0}), state, DEFAULT)
        return d

    flooded = first_tick(3000.0)
    # 500 req/s at 97 % of 25 per GPU, plus 3000 queued drained in 30 s: 25 GPUs, 21 of them cloud.
    assert sum(flooded.target_nodes.values()) >= 21
    # Without a standing queue the same rate reads as a ramp still to be confirmed.
    assert sum(first_tick(0.0).target_nodes.values()) < 17
