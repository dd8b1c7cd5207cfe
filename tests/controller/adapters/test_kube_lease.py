"""LeaseElector: two controller replicas on one coordination.k8s.io/v1 Lease, timed by a FakeClock."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from controller.adapters import kube as kube_adapter
from controller.ports.clock import FakeClock
from tests.support import kube_emulator
from tests.support.kube_emulator import Kube

LEASE = "gpuburst-controller"
NS = "gpuburst"
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|\+00:00)$")


@pytest.fixture
def kube() -> Iterator[Kube]:
    with kube_emulator.running() as k:
        yield k


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)  # a whole second: the MicroTime fraction must still be written


def elector(kube: Kube, identity: str, clock: FakeClock, **kw: Any) -> kube_adapter.LeaseElector:
    return kube_adapter.LeaseElector(kube.api_client, identity, clock=clock, namespace=NS, **kw)


def lease(kube: Kube) -> kube_emulator.Obj:
    obj = kube.get("leases", LEASE, namespace=NS)
    assert obj is not None
    return obj


def test_the_first_candidate_creates_the_lease_and_leads(kube: Kube, clock: FakeClock) -> None:
    a = elector(kube, "a", clock)
    assert not a.is_leader()

    assert a.acquire_or_renew()

    assert a.is_leader() and a.holder == "a"
    spec = lease(kube)["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert MICRO_TIME.match(spec["acquireTime"]) and MICRO_TIME.match(spec["renewTime"])
    assert spec["acquireTime"].startswith("2027-01-15T08:00:00.000001")


def test_the_holder_renews_and_nobody_steals_an_unexpired_lease(kube: Kube, clock: FakeClock) -> None:
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    assert a.acquire_or_renew()
    acquired = lease(kube)["spec"]["acquireTime"]

    for _ in range(30):  # a minute of rounds every 2 s
        clock.advance(2)
        assert a.acquire_or_renew()
        assert not b.acquire_or_renew()
        assert a.is_leader() and not b.is_leader()
        assert b.holder == "a"

    spec = lease(kube)["spec"]
    assert spec["acquireTime"] == acquired
    assert spec["renewTime"].startswith("2027-01-15T08:01:00.000001")
    assert spec["leaseTransitions"] == 0


def test_failover_within_one_lease_duration_and_never_two_leaders(kube: Kube, clock: FakeClock) -> None:
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    assert a.acquire_or_renew()
    assert not b.acquire_or_renew()
    clock.advance(2)
    assert a.acquire_or_renew()  # a's last renewal
    last_renewal = clock.now()

    took_over = None
    while took_over is None:
        clock.advance(1)
        assert not (a.is_leader() and b.is_leader())
        if b.acquire_or_renew():
            took_over = clock.now()
        assert not (a.is_leader() and b.is_leader())

    assert took_over - last_renewal <= 15 + 1  # one lease duration, plus at most one polling interval
    assert not a.is_leader()  # it stopped acting at its renew deadline, 10 s after its last renewal
    assert lease(kube)["spec"]["holderIdentity"] == "b"
    assert lease(kube)["spec"]["leaseTransitions"] == 1

    # The old holder comes back: the lease is b's and fresh.
    assert not a.acquire_or_renew()
    assert a.holder == "b" and not a.is_leader()


def test_expiry_is_measured_on_the_candidates_own_clock(kube: Kube, clock: FakeClock) -> None:
    a = elector(kube, "a", clock)
    assert a.acquire_or_renew()
    clock.advance(3600)  # the holder died long ago, by the lease's timestamps
    late = elector(kube, "b", clock)

    assert not late.acquire_or_renew()  # b cannot trust another host's clock: it waits a full duration
    clock.advance(14.9)
    assert not late.acquire_or_renew()
    clock.advance(0.1)
    assert late.acquire_or_renew()


def test_a_lost_race_is_a_409_and_not_leadership(kube: Kube, clock: FakeClock) -> None:
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    assert a.acquire_or_renew()
    assert not b.acquire_or_renew()
    clock.advance(20)

    def c_takes_it(obj: kube_emulator.Obj) -> None:  # between b's read and b's write
        obj["spec"].update(holderIdentity="c", leaseTransitions=1)

    kube.interfere("leases", LEASE, c_takes_it, namespace=NS)
    assert not b.acquire_or_renew()
    assert not b.is_leader()
    assert lease(kube)["spec"]["holderIdentity"] == "c"
    assert [r.split()[0] for r in kube.requests()][-2:] == ["GET", "PUT"]


def test_a_lost_creation_race_is_not_leadership(kube: Kube, clock: FakeClock) -> None:
    b = elector(kube, "b", clock)
    kube.fail(r"/leases$", 409, method="POST")  # AlreadyExists: another candidate created it first

    assert not b.acquire_or_renew()
    assert not b.is_leader()


def test_the_holder_stops_leading_when_its_renewals_conflict(kube: Kube, clock: FakeClock) -> None:
    a = elector(kube, "a", clock)
    assert a.acquire_or_renew()
    kube.interfere("leases", LEASE, lambda o: o["spec"].update(holderIdentity="b"), namespace=NS)
    clock.advance(2)

    assert not a.acquire_or_renew()
    assert not a.is_leader()


def test_release_hands_over_at_the_next_round(kube: Kube, clock: FakeClock) -> None:
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    assert a.acquire_or_renew()
    assert not b.acquire_or_renew()

    a.release()

    assert not a.is_leader()
    assert b.acquire_or_renew()
    assert lease(kube)["spec"]["leaseTransitions"] == 1
    a.release()  # not the holder: nothing to give up
    assert lease(kube)["spec"]["holderIdentity"] == "b"


def test_leadership_lapses_when_the_api_is_unreachable(clock: FakeClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with kube_emulator.running() as kube:
        a = elector(kube, "a", clock)
        assert a.acquire_or_renew()
        kube.api_client.configuration.host = f"http://127.0.0.1:{port}"
        kube.api_client.configuration.retries = 0

        clock.advance(2)
        with pytest.raises(kube_adapter.KubeError, match=rf"renew|read Lease {NS}/{LEASE}: .*unreachable"):
            a.acquire_or_renew()
        assert a.is_leader()  # still inside its renew deadline
        clock.advance(8)
        assert not a.is_leader()


def test_the_renew_deadline_must_leave_room_before_expiry(kube: Kube, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="renew_deadline_s"):
        elector(kube, "a", clock, lease_duration_s=10, renew_deadline_s=10)
    with pytest.raises(ValueError, match="identity"):
        elector(kube, "", clock)
    assert kube_adapter.default_identity() != kube_adapter.default_identity()
