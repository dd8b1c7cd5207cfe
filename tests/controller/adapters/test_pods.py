"""PodReader with the real `kubernetes` client against the emulator, reading the workload's real metrics
exposition over HTTP from loopback servers standing in for the pods."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from controller.adapters import pods as pods_adapter
from controller.core import model
from controller.ports import clock as clock_mod
from tests.support import kube_emulator
from tests.support.kube_emulator import Kube
from workloads.face_compare import metrics as contract

FACE = model.WorkloadSpec("face-compare", gpu_rps=25, service_time_s=0.06, slo_s=0.5, private_gpus=2)


class Replica:
    """One replica's metrics endpoint: the workload's own collectors, served on a free loopback port."""

    def __init__(self) -> None:
        self.metrics = contract.WorkloadMetrics(placement="burst", pool="spot")
        self.broken = False
        replica = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"# nothing here\n" if replica.broken else replica.metrics.exposition()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, n: int) -> None:
        for _ in range(n):
            self.metrics.observe_request(endpoint="verify", tier="normal", code=200, seconds=0.05)


@pytest.fixture
def kube() -> Iterator[Kube]:
    with kube_emulator.running() as k:
        yield k


@pytest.fixture
def replica() -> Iterator[Replica]:
    r = Replica()
    yield r
    r.server.shutdown()
    r.server.server_close()


def add_pod(kube: Kube, name: str, *, ip: str | None, app: str = "face-compare") -> None:
    kube.create(
        {
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "face-compare", "labels": {pods_adapter.APP_LABEL: app}},
            "spec": {"containers": [{"name": "main", "image": "example/main:1"}]},
            "status": {"phase": "Running", **({"podIP": ip} if ip else {})},
        }
    )


def test_arrivals_and_the_queue_come_from_the_replicas_own_counters(kube: Kube, replica: Replica) -> None:
    add_pod(kube, "face-1", ip="127.0.0.1")
    add_pod(kube, "face-2", ip=None)  # scheduled, no IP yet: nothing to read
    add_pod(kube, "other-1", ip="127.0.0.1", app="other")  # another workload's pod
    clock = clock_mod.FakeClock(100.0)
    scrapes = {"face-compare": pods_adapter.PodScrape(port=replica.port)}
    reader = pods_adapter.PodReader(kube.api_client, "face-compare", scrapes, clock=clock)
    try:
        replica.answer(10)
        replica.metrics.inflight.set(5)
        first = reader.read([FACE])["face-compare"]
        assert first == model.PodReading(recent_rps=None, in_system=5.0, replicas=1)

        clock.advance(2)
        replica.answer(300)  # 300 answered and 45 more received in 2 s: 172.5 req/s arrived
        replica.metrics.inflight.set(50)
        second = reader.read([FACE])["face-compare"]
        assert second.recent_rps == pytest.approx(345 / 2)
        assert second.in_system == 50.0

        clock.advance(1)
        replica.metrics.inflight.set(0)  # the pod restarted: its counters start again
        replica.metrics = contract.WorkloadMetrics(placement="burst", pool="spot")
        assert reader.read([FACE])["face-compare"].recent_rps is None, "a reset is not a negative rate"

        replica.broken = True  # answers, but without the contract's series: not a replica with no load
        assert reader.read([FACE]) == {}
    finally:
        reader.close()


def test_a_replica_that_does_not_answer_is_left_out(kube: Kube) -> None:
    add_pod(kube, "face-1", ip="127.0.0.1")
    reader = pods_adapter.PodReader(
        kube.api_client,
        "face-compare",
        {"face-compare": pods_adapter.PodScrape(port=9)},  # discard port: connection refused
        clock=clock_mod.FakeClock(0.0),
    )
    try:
        assert reader.read([FACE]) == {}
    finally:
        reader.close()


def test_parse_rejects_an_exposition_without_the_contract() -> None:
    with pytest.raises(ValueError, match=contract.INFLIGHT_REQUESTS):
        pods_adapter.parse("some_other_metric 1\n")
