"""Properties of decide that must hold for every input, checked with hypothesis."""

from __future__ import annotations

import math
from collections.abc import Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.core import lifecycle, model, policy

FACE = model.WorkloadSpec("face", gpu_rps=25, service_time_s=0.06, slo_s=0.5, private_gpus=4)

pools = st.lists(
    st.builds(
        model.PoolSpec,
        name=st.sampled_from(["a", "b", "c"]),
        gpus_per_node=st.integers(1, 4),
        price_per_hour=st.floats(0.05, 10),
        boot_s=st.floats(0, 600),
        max_nodes=st.integers(0, 30),
        min_nodes=st.just(0),
        spot=st.booleans(),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda p: p.name,
)
rates = st.one_of(st.none(), st.floats(0, 5000), st.just(math.nan), st.just(math.inf), st.just(-1.0))
settings_ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _metrics(rate: float | None, queue: float) -> model.WorkloadMetrics:
    if rate is None:
        return model.WorkloadMetrics(rate_rps=None, queue_depth=None, problems=("no series",))
    # NaN, inf and negative rates must read as unknown too.
    return model.WorkloadMetrics(
        rate_rps=rate, queue_depth=queue, ready_replicas={"private": FACE.private_gpus}
    )


Step = tuple[float | None, float]
Run = tuple[list[model.PoolSpec], list[Step], policy.BurstPolicy, dict[str, int]]


@st.composite
def runs(draw: st.DrawFn) -> Run:
    ps = draw(pools)
    steps = draw(st.lists(st.tuples(rates, st.floats(0, 20000)), min_size=1, max_size=40))
    budget = draw(st.one_of(st.none(), st.floats(0, 50)))
    leaving = {p.name: draw(st.integers(0, 5)) for p in ps}
    return ps, steps, policy.BurstPolicy(budget_usd_per_hour=budget), leaving


def _drive(
    ps: list[model.PoolSpec],
    steps: list[Step],
    bp: policy.BurstPolicy,
    leaving: dict[str, int],
) -> Iterator[tuple[policy.DecisionInputs, model.Decision]]:
    """Tick through the steps; nodes come and go at once; yield (inputs, decision)."""
    state = policy.PolicyState()
    active = {p.name: 0 for p in ps}
    for i, (rate, queue) in enumerate(steps):
        m = _metrics(rate, queue)
        inputs = policy.DecisionInputs(
            at=15.0 * i,
            synced=m.known,
            workloads=(FACE,),
            metrics={"face": m},
            pools=tuple(ps),
            active=dict(active),
            leaving=leaving,
            ready=dict(active),
            problems=m.problems,
        )
        decision, state = policy.decide(inputs, state, bp)
        yield inputs, decision
        active = dict(decision.target_nodes)


@settings_
@given(runs())
def test_never_above_max_nodes_or_the_budget(run: Run) -> None:
    ps, steps, bp, leaving = run
    for _, d in _drive(ps, steps, bp, leaving):
        if d.action is model.Action.HOLD:
            continue
        for p in ps:
            assert 0 <= d.target_nodes[p.name] <= max(0, p.max_nodes - leaving[p.name])
        if bp.budget_usd_per_hour is not None:
            burn = sum((d.target_nodes[p.name] + leaving[p.name]) * p.price_per_hour for p in ps)
            leaving_burn = sum(leaving[p.name] * p.price_per_hour for p in ps)
            # Nodes already leaving may alone exceed a budget just lowered; nothing is added then.
            assert burn <= max(bp.budget_usd_per_hour, leaving_burn) + 1e-6


@settings_
@given(runs())
def test_no_release_while_metrics_are_missing(run: Run) -> None:
    ps, steps, bp, leaving = run
    for inputs, d in _drive(ps, steps, bp, leaving):
        if not inputs.metrics["face"].known:
            assert d.action is model.Action.HOLD
            assert dict(d.target_nodes) == dict(inputs.active)


@settings_
@given(runs())
def test_identical_inputs_give_identical_decisions(run: Run) -> None:
    ps, steps, bp, leaving = run
    state = policy.PolicyState()
    for inputs, _ in _drive(ps, steps, bp, leaving):
        a = policy.decide(inputs, state, bp)
        b = policy.decide(inputs, state, bp)
        assert a == b
        state = a[1]


def test_plan_never_launches_beyond_what_decide_allowed() -> None:
    spot = model.PoolSpec("spot", 1, 0.4, boot_s=240, max_nodes=3, spot=True)
    records = {
        "spot-1-0": model.NodeRecord("spot-1-0", "spot", model.NodeStatus.DRAINING, 0, 0),
        "spot-1-1": model.NodeRecord("spot-1-1", "spot", model.NodeStatus.READY, 0, 0),
    }
    d = model.Decision(10, model.Action.SCALE_UP, {"spot": 2}, {}, {}, {}, ())
    plan = lifecycle.plan(records, d, workloads=(FACE,), pools=(spot,), cluster={})
    in_stack = [r for r in plan.records.values() if r.status in model.IN_STACK]
    assert len(in_stack) == 3 == spot.max_nodes
