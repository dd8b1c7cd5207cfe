"""PrometheusSource against a real Prometheus scraping real targets: values, and every way to be unknown.

One Prometheus and one set of targets serve the whole module (target changes take Prometheus about 5 s
to pick up). Each case has its own target, found by the target label `case`, so the tests do not
depend on their order.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import prometheus_client
import pydantic
import pytest

from controller.adapters import prometheus
from controller.core import model
from controller.ports import clock as clock_mod
from tests.support import prom
from workloads.face_compare import metrics as contract

prometheus_server = prom.prometheus

WINDOW_S = 4
FACE = model.WorkloadSpec("face", gpu_rps=25, service_time_s=0.06, slo_s=0.5, private_gpus=2)
GHOST = model.WorkloadSpec("ghost", gpu_rps=25, service_time_s=0.06, slo_s=0.5, private_gpus=0)
# 90 % of requests take 0.12 s (bucket 0.1-0.15), 10 % take 0.35 s (bucket 0.3-0.4): the 0.99 quantile
# lies 90 % into the 0.3-0.4 bucket, 0.39 s after histogram_quantile's linear interpolation; the median
# lies 5/9 into the 0.1-0.15 bucket.
LATENCIES = {0.12: 0.9, 0.35: 0.1}
P99_S = 0.3 + 0.1 * (0.99 - 0.9) / 0.1
P50_S = 0.1 + 0.05 * 0.5 / 0.9


@dataclass
class World:
    server: prom.PrometheusServer
    targets: dict[str, prom.MetricsTarget]
    clock: clock_mod.SystemClock

    def source(
        self,
        case: str,
        *,
        max_age_s: float = 5.0,
        url: str | None = None,
        queries: Mapping[str, object] | None = None,
    ) -> prometheus.PrometheusSource:
        """A source reading workload `face` as the targets labelled `case`; `queries` overrides config."""
        config = prometheus.PrometheusConfig(
            url=url or self.server.url,
            timeout_s=2.0,
            max_age_s=max_age_s,
            workloads={
                "face": prometheus.WorkloadQueries.model_validate(
                    {"selector": f'case="{case}"', "window": f"{WINDOW_S}s", **(queries or {})}
                )
            },
        )
        return prometheus.PrometheusSource(config)

    def read(self, case: str, *, at: float | None = None, **queries: object) -> model.WorkloadMetrics:
        at = self.clock.now() if at is None else at
        return self.source(case, queries=queries).read([FACE], at=at)["face"]


@pytest.fixture(scope="module")
def world(prometheus_server: prom.PrometheusServer) -> Iterator[World]:
    private = prom.MetricsTarget(placement="private", pool="private")
    private.set_traffic(tier="vip", rps=1.0, latencies=LATENCIES)
    private.set_traffic(tier="normal", rps=4.0, latencies=LATENCIES)
    private.set_traffic(tier="normal", rps=1.0, latencies=LATENCIES, code=429)
    private.set_traffic(tier="free", rps=1.0, latencies=LATENCIES, endpoint=contract.ENDPOINT_EMBED)
    private.queue_depth = 3
    burst = prom.MetricsTarget(placement="burst", pool="spot")
    burst.set_traffic(tier="normal", rps=3.0, latencies=LATENCIES)
    burst.set_traffic(tier="vip", rps=1.0, latencies=LATENCIES)
    burst.queue_depth = 2
    warming = prom.MetricsTarget(placement="burst", pool="spot")
    warming.ready = 0

    idle = prom.MetricsTarget()
    idle.set_traffic(tier="normal", rps=0.0)
    nan = prom.MetricsTarget()
    nan.set_traffic(tier="normal", rps=2.0)
    nan.queue_depth = float("nan")
    down = prom.MetricsTarget()
    down.set_traffic(tier="normal", rps=2.0)
    removed = prom.MetricsTarget()
    removed.set_traffic(tier="normal", rps=2.0)
    history = prom.MetricsTarget()
    history.set_traffic(tier="normal", rps=2.0)
    history.queue_depth = 2

    by_case = {
        "steady": [private, burst, warming],
        "idle": [idle],
        "nan": [nan],
        "down": [down],
        "removed": [removed],
        "history": [history],
    }
    targets: dict[str, prom.MetricsTarget] = {}
    for case, group in by_case.items():
        for i, target in enumerate(group):
            targets[case if i == 0 else f"{case}-{i}"] = target.start()
    # The workload's own collectors, to show the default queries read what the service really exports.
    workload = contract.WorkloadMetrics(placement="burst", pool="spot")
    workload.ready.set(1)
    workload.queue_depth.set(4)
    workload.observe_request(endpoint=contract.ENDPOINT_VERIFY, tier="vip", code=200, seconds=0.2)
    server, _thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=workload.registry)
    contract_target = prom.Target(f"127.0.0.1:{server.server_port}", {"case": "contract"})

    try:
        prometheus_server.set_targets(
            prom.JOB,
            [
                *(t.target(case=case) for case, group in by_case.items() for t in group),
                contract_target,
            ],
        )
        # A rate over the window is exact once the window holds samples from end to end.
        prometheus_server.wait_samples('case=~".+"', WINDOW_S + 2)
        yield World(prometheus_server, targets, clock_mod.SystemClock())
    finally:
        for target in targets.values():
            target.stop()
        server.shutdown()
        server.server_close()


# -- values -----------------------------------------------------------------------------------------


def test_demand_is_the_request_rate_summed_over_targets_tiers_and_codes(world: World) -> None:
    m = world.read("steady")
    # private 1 + 4 + 1 (429s are demand too) + 1, burst 3 + 1
    assert m.rate_rps == pytest.approx(11.0, rel=0.02)
    assert m.known
    assert m.problems == ()


def test_demand_per_tier(world: World) -> None:
    m = world.read("steady")
    assert m.tier_rps.keys() == {"vip", "normal", "free"}
    assert m.tier_rps["vip"] == pytest.approx(2.0, rel=0.02)
    assert m.tier_rps["normal"] == pytest.approx(8.0, rel=0.02)
    assert m.tier_rps["free"] == pytest.approx(1.0, rel=0.02)


def test_latency_quantile_from_the_histogram(world: World) -> None:
    assert world.read("steady").latency_p99_s == pytest.approx(P99_S, abs=1e-3)
    assert world.read("steady", quantile=0.5).latency_p99_s == pytest.approx(P50_S, abs=1e-3)


def test_queue_depth_and_ready_replicas_by_placement(world: World) -> None:
    m = world.read("steady")
    assert m.queue_depth == pytest.approx(5.0)
    # The second burst replica is still warming up (ready 0).
    assert m.ready_replicas == {"private": 1, "burst": 1}


def test_sample_age_is_kept_for_telemetry(world: World) -> None:
    source = world.source("steady")
    source.read([FACE], at=world.clock.now())
    age = source.sample_age_s["face"]
    assert age is not None
    assert 0.0 <= age <= 5.0


def test_an_idle_workload_reads_zero_demand_and_no_latency_and_is_known(world: World) -> None:
    m = world.read("idle")
    assert m.rate_rps == 0.0
    assert m.tier_rps == {"normal": 0.0}
    # histogram_quantile over no requests is NaN: latency is optional, so unknown without a problem.
    assert m.latency_p99_s is None
    assert m.known


def test_default_queries_read_the_workloads_own_collectors(world: World) -> None:
    m = world.read("contract")
    assert m.queue_depth == 4.0
    assert m.ready_replicas == {"burst": 1}
    # One request before the first scrape: the counter exists and has not moved since.
    assert m.rate_rps == 0.0
    assert m.known


def test_evaluation_at_a_past_time_returns_the_value_then(world: World) -> None:
    history = world.targets["history"]
    query = 'sum(facecompare_queue_depth{case="history"})'
    world.server.wait_value(query, lambda v: v == 2.0)
    # The time of a sample known to hold 2 (a scrape in flight while the value changes could not be).
    before = world.server.value('timestamp(facecompare_queue_depth{case="history"})')
    assert before is not None
    history.queue_depth = 7
    world.server.wait_value(query, lambda v: v == 7.0)
    assert world.read("history", at=before).queue_depth == 2.0
    assert world.read("history").queue_depth == 7.0
    # Before the target existed nothing matches: unknown, not zero.
    long_ago = world.read("history", at=before - 3600)
    assert not long_ago.known
    assert long_ago.rate_rps is None
    assert long_ago.problems[0].startswith("freshness: no series")


# -- unknown ----------------------------------------------------------------------------------------


def test_prometheus_down_makes_every_workload_unknown(world: World) -> None:
    source = world.source("steady", url=f"http://127.0.0.1:{prom.free_port()}")
    out = source.read([FACE, GHOST], at=world.clock.now())
    for m in out.values():
        assert (m.rate_rps, m.queue_depth, m.known) == (None, None, False)
        assert "unreachable" in m.problems[0]
        # The problem names the query that failed.
        assert m.problems[0].startswith("up query failed")
    assert source.sample_age_s == {"face": None, "ghost": None}


def test_prometheus_not_answering_in_time_is_unknown(world: World) -> None:
    with socket.socket() as silent:
        # Listening but never accepting: the kernel completes the connection, nobody ever answers.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = prometheus.PrometheusConfig(url=url, timeout_s=0.2, retries=0)
        m = prometheus.PrometheusSource(config).read([FACE], at=world.clock.now())["face"]
    assert not m.known
    assert m.rate_rps is None
    assert "timed out" in m.problems[0]


def test_a_rejected_query_is_unknown_and_named(world: World) -> None:
    m = world.read("steady", queue="sum(facecompare_queue_depth{$selector}")
    assert (m.rate_rps, m.queue_depth, m.known) == (None, None, False)
    assert m.problems[0].startswith("queue query failed: HTTP 400:")
    assert "parse error" in m.problems[0]


def test_a_selector_matching_nothing_is_unknown_not_zero(world: World) -> None:
    source = world.source("steady")
    out = source.read([FACE, GHOST], at=world.clock.now())
    assert out["face"].known
    ghost = out["ghost"]  # selected by the default job="ghost": no such job
    assert (ghost.rate_rps, ghost.queue_depth, ghost.known) == (None, None, False)
    assert ghost.problems == ('freshness: no series [max(timestamp(facecompare_ready{job="ghost"}))]',)


def test_an_empty_demand_query_is_unknown_even_when_the_workload_is_fresh(world: World) -> None:
    # The warming replica serves no requests yet: its ready series is fresh, its request counter absent.
    warming = world.targets["steady-2"]
    m = world.read("steady", selector=f'case="steady", instance="{warming.address}"')
    assert m.rate_rps is None
    assert m.queue_depth == 0.0
    assert not m.known
    assert m.problems[0].startswith("rate: no series")


def test_nan_is_unknown(world: World) -> None:
    m = world.read("nan")
    assert m.rate_rps == pytest.approx(2.0, rel=0.02)
    assert m.queue_depth is None
    assert not m.known
    assert m.problems[0].startswith("queue: nan")


def test_a_target_that_stops_answering_is_down_and_unknown(world: World) -> None:
    assert world.read("down").known
    world.targets["down"].stop()
    world.server.wait_value('max(up{case="down"})', lambda v: v == 0.0)
    m = world.read("down")
    assert (m.rate_rps, m.queue_depth, m.known) == (None, None, False)
    assert m.problems[0].startswith("target down: up == 0 for all 1 targets")


def test_a_target_removed_from_discovery_goes_stale_and_is_unknown(world: World) -> None:
    assert world.read("removed").known
    remaining = [t for t in world.server.targets[prom.JOB] if t.labels.get("case") != "removed"]
    world.server.set_targets(prom.JOB, remaining)
    # Prometheus writes staleness markers for a removed target's series: they vanish at once.
    world.server.wait_value('count(up{case="removed"})', lambda v: v is None)
    m = world.read("removed")
    assert (m.rate_rps, m.queue_depth, m.known) == (None, None, False)
    assert m.problems[0].startswith("freshness: no series")


def test_data_older_than_max_age_is_stale(world: World) -> None:
    # Evaluated 60 s after the newest sample (as when scraping or ingestion stops without staleness
    # markers), Prometheus still answers with the last value within its 5 min lookback...
    later = world.clock.now() + 60
    assert world.server.value('sum(facecompare_queue_depth{case="idle"})', at=later) == 0.0
    # ...which the max-age check turns into unknown.
    m = world.read("idle", at=later)
    assert (m.rate_rps, m.queue_depth, m.known) == (None, None, False)
    assert re.fullmatch(r"stale: last sample 6\d s old \(max 5 s\)", m.problems[0])


# -- health -----------------------------------------------------------------------------------------


def test_health_reports_version_when_up_and_the_error_when_down(world: World) -> None:
    health = world.source("steady").health()
    assert health.reachable and health.ready
    assert health.version is not None and health.version[0].isdigit()
    down = world.source("steady", url=f"http://127.0.0.1:{prom.free_port()}").health()
    assert (down.reachable, down.ready, down.version) == (False, False, None)
    assert down.error


# -- config -----------------------------------------------------------------------------------------


def test_default_queries_follow_the_workload_metric_contract() -> None:
    q = prometheus.WorkloadQueries(selector='job="face-compare"', window="2m").render()
    assert q["rate"] == 'sum(rate(facecompare_requests_total{job="face-compare"}[2m]))'
    assert q["tier_rate"] == 'sum by (tier) (rate(facecompare_requests_total{job="face-compare"}[2m]))'
    assert q["queue"] == 'sum(facecompare_queue_depth{job="face-compare"})'
    assert q["latency"] == (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(facecompare_request_duration_seconds_bucket{job="face-compare"}[2m])))'
    )
    assert q["ready"] == 'sum by (placement) (facecompare_ready{job="face-compare"})'


def test_an_unlisted_workload_is_selected_by_its_job() -> None:
    config = prometheus.PrometheusConfig(url="http://prometheus:9090/")
    assert config.url == "http://prometheus:9090"
    assert config.queries("face").selector == 'job="face"'


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("queue", "sum(facecompare_queue_depth)", "lacks $selector"),
        ("latency", "histogram_quantile(0.9, x{$selector}[$window])", "lacks $quantile"),
        ("rate", "sum(rate(x{$selector}[$windows]))", "unknown placeholder $windows"),
        ("rate", "sum(rate(x{$selector}[$window])) $", "a `$` that starts no placeholder"),
        ("selector", "face-compare", "is not a list of PromQL label matchers"),
        ("window", "1 minute", "is not a PromQL duration"),
        ("quantile", 1.5, "less than 1"),
    ],
)
def test_bad_query_config_is_a_clear_error_naming_the_field(field: str, value: object, message: str) -> None:
    raw = {"url": "http://prometheus:9090", "workloads": {"face": {"selector": 'app="face"', field: value}}}
    with pytest.raises(pydantic.ValidationError) as err:
        prometheus.PrometheusConfig.model_validate(raw)
    text = str(err.value)
    assert f"workloads.face.{field}" in text
    assert message in text


def test_a_url_that_is_not_http_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="is not an http"):
        prometheus.PrometheusConfig(url="prometheus:9090")
