"""Local capacity: real worker processes as a pool's nodes, driven by the clock and the reconciler.

Process handling is tested with a tiny stand-in worker (an HTTP server with /readyz that drains on
SIGTERM) so it does not depend on the workload; one test runs the workload's real `serve` command.
Boot delays are on a FakeClock; real waits are only for processes to answer or exit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from controller.adapters import local
from controller.app import config
from controller.core import model
from controller.ports import fakes
from controller.ports.clock import FakeClock
from controller.runtime import reconciler
from tests.support import fake_world

WAIT_S = 20.0

STAND_IN = r"""
import http.server, os, signal, sys, threading, time

port = int(sys.argv[1])
ready_at = time.monotonic() + float(os.environ.get("STANDIN_READY_AFTER_S", "0"))
draining = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/readyz":
            ok = time.monotonic() >= ready_at and not draining.is_set()
            code, body = (200, b"ready") if ok else (503, b"not ready")
        elif self.path == "/env":
            code = 200
            keys = ("GPUBURST_PLACEMENT", "GPUBURST_POOL", "GPUBURST_NODE")
            body = " ".join(os.environ[k] for k in keys).encode()
        else:
            code, body = 404, b""
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


def on_term(signum, frame):
    if os.environ.get("STANDIN_IGNORE_TERM"):
        return
    draining.set()
    delay = float(os.environ.get("STANDIN_DRAIN_S", "0"))
    threading.Thread(target=lambda: (time.sleep(delay), server.shutdown())).start()


signal.signal(signal.SIGTERM, on_term)
print("serving", port, flush=True)
server.serve_forever(poll_interval=0.05)
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> tuple[str, ...]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return (sys.executable, str(script), "{port}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def make_pool(
    tmp_path: Path, clock: FakeClock, stand_in: tuple[str, ...]
) -> Iterator[Callable[..., local.LocalPool]]:
    made: list[local.LocalPool] = []

    def make(**kwargs: object) -> local.LocalPool:
        options: dict[str, object] = {
            "clock": clock,
            "boot_delay_s": 30.0,
            "command": stand_in,
            "targets_file": tmp_path / "sd" / "burst.json",
            "log_dir": tmp_path / "logs",
        }
        options.update(kwargs)
        pool = local.LocalPool(**options)  # type: ignore[arg-type]
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def until(predicate: Callable[[], object], what: str) -> None:
    """Poll a real-world condition (a process answering or exiting) with a bound."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def targets(pool: local.LocalPool) -> list[dict[str, object]]:
    assert pool.targets_file is not None
    return json.loads(pool.targets_file.read_text())


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def ready(pool: local.LocalPool, node: str) -> bool:
    found = pool.burst_nodes().get(node)
    return found is not None and found.ready


def gone(pid: int) -> bool:
    """Reaped: no process and no zombie left."""
    return not Path(f"/proc/{pid}").exists()


# -- capacity ---------------------------------------------------------------------------------------
def test_a_node_starts_after_the_boot_delay_and_is_ready_when_readyz_answers(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool()
    pool.submit("local", ("n1", "n2"))
    state = pool.state("local")
    assert state.instances == {"n1": "pending", "n2": "pending"}
    assert state.submitted == ("n1", "n2") and state.apply is model.ApplyState.IDLE
    assert pool.processes() == {} and pool.burst_nodes() == {}
    clock.advance(29.0)
    assert pool.state("local").instances == {"n1": "pending", "n2": "pending"}
    clock.advance(1.0)
    assert pool.state("local").instances == {"n1": "running", "n2": "running"}
    assert set(pool.processes()) == {"n1", "n2"}
    until(lambda: all(n.ready for n in pool.burst_nodes().values()), "workers ready")
    nodes = pool.burst_nodes()
    assert nodes["n1"] == model.ClusterNode("n1", "local", ready=True, cordoned=False, pods=1)
    url = pool.endpoints()["n2"]
    assert httpx.get(f"{url}/env").text == "burst local n2"


def test_a_node_is_not_ready_until_readyz_says_so(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool(boot_delay_s=0.0, env={"STANDIN_READY_AFTER_S": "0.5"})
    pool.submit("local", ("n1",))
    until(lambda: answers(f"{pool.endpoints()['n1']}/env"), "listening")
    assert pool.burst_nodes()["n1"].ready is False
    until(lambda: ready(pool, "n1"), "readyz 200")


def test_the_target_file_lists_live_workers_with_their_labels(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool(pools=("local", "edge"))
    assert targets(pool) == []
    pool.submit("local", ("n1",))
    pool.submit("edge", ("e1",))
    assert targets(pool) == [], "booting workers are not scraped"
    clock.advance(30.0)
    pool.state("local")  # every call brings the table (and the file) up to date; a tick makes one
    listed = targets(pool)
    ports = {name: url.rsplit(":", 1)[1] for name, url in pool.endpoints().items()}
    assert listed == [
        {
            "targets": [f"127.0.0.1:{ports['e1']}"],
            "labels": {"placement": "burst", "pool": "edge", "node": "e1"},
        },
        {
            "targets": [f"127.0.0.1:{ports['n1']}"],
            "labels": {"placement": "burst", "pool": "local", "node": "n1"},
        },
    ]
    pool.submit("local", ())
    assert [g["labels"]["node"] for g in targets(pool)] == ["e1"]  # type: ignore[index]
    assert pool.targets_file is not None
    assert sorted(p.name for p in pool.targets_file.parent.iterdir()) == ["burst.json"], "no temp files left"


def test_a_dropped_node_gets_sigterm_and_is_reaped_while_the_pool_is_busy(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool(boot_delay_s=0.0, env={"STANDIN_DRAIN_S": "0.3"})
    pool.submit("local", ("n1", "n2"))
    pid = pool.processes()["n1"].pid
    until(lambda: ready(pool, "n1"), "n1 ready")  # its SIGTERM handler is installed
    pool.submit("local", ("n2",))
    state = pool.state("local")
    assert state.instances == {"n2": "running"}
    assert state.apply is model.ApplyState.BUSY, "n1 is still stopping"
    assert "n1" not in pool.burst_nodes()
    until(lambda: pool.state("local").apply is model.ApplyState.IDLE, "n1 reaped")
    assert gone(pid)


def test_a_node_dropped_while_booting_never_starts(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool()
    pool.submit("local", ("n1",))
    pool.submit("local", ())
    clock.advance(60.0)
    state = pool.state("local")
    assert state.instances == {} and state.apply is model.ApplyState.IDLE
    assert pool.processes() == {}


def test_a_worker_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool(boot_delay_s=0.0, stop_timeout_s=30.0, env={"STANDIN_IGNORE_TERM": "1"})
    pool.submit("local", ("n1",))
    proc = pool.processes()["n1"]
    until(lambda: ready(pool, "n1"), "ready")
    pool.submit("local", ())
    time.sleep(0.2)
    assert pool.state("local").apply is model.ApplyState.BUSY and proc.poll() is None
    clock.advance(30.0)
    until(lambda: pool.state("local").apply is model.ApplyState.IDLE, "killed and reaped")
    assert proc.returncode == -signal.SIGKILL
    assert gone(proc.pid)


def test_a_worker_that_dies_unasked_counts_as_a_vanished_instance(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool(boot_delay_s=0.0)
    pool.submit("local", ("n1", "n2"))
    victim = pool.processes()["n1"]
    victim.kill()
    until(lambda: "n1" not in pool.state("local").instances, "n1 vanished")
    assert pool.state("local").instances == {"n2": "running"}
    assert "n1" not in pool.burst_nodes()
    assert gone(victim.pid)
    pool.submit("local", ("n1", "n2"))
    assert "n1" not in pool.state("local").instances, "a vanished node is not restarted under its name"


def test_a_worker_outlives_the_thread_that_happened_to_start_it(
    make_pool: Callable[..., local.LocalPool],
) -> None:
    # Workers start from whichever thread asks first (a tick, an API request's worker thread); a thread
    # that ends must not take them along (Linux's parent-death signal follows the forking thread).
    pool = make_pool(boot_delay_s=0.0)
    caller = threading.Thread(target=pool.submit, args=("local", ("n1",)))
    caller.start()
    caller.join()
    until(lambda: ready(pool, "n1"), "n1 ready after the thread that started it ended")
    assert pool.state("local").instances == {"n1": "running"}


def test_a_worker_that_cannot_start_fails_the_apply_naming_it(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock, tmp_path: Path
) -> None:
    pool = make_pool(boot_delay_s=0.0, command=(str(tmp_path / "no-such-worker"), "{port}"))
    pool.submit("local", ("n1",))
    state = pool.state("local")
    assert state.apply is model.ApplyState.FAILED
    assert "node n1" in state.message and "no-such-worker" in state.message
    assert state.instances == {}


def test_bad_node_sets_are_refused(make_pool: Callable[..., local.LocalPool]) -> None:
    pool = make_pool(pools=("local", "edge"))
    with pytest.raises(ValueError, match="sorted and unique"):
        pool.submit("local", ("b", "a"))
    with pytest.raises(KeyError, match="unknown pool 'gpu'"):
        pool.submit("gpu", ())
    pool.submit("local", ("n1",))
    with pytest.raises(ValueError, match="already belongs to pool 'local'"):
        pool.submit("edge", ("n1",))


# -- cluster ----------------------------------------------------------------------------------------
def test_drain_sends_sigterm_once_and_reports_the_pod_until_the_worker_exits(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool(boot_delay_s=0.0, env={"STANDIN_DRAIN_S": "0.3"})
    pool.submit("local", ("n1",))
    until(lambda: ready(pool, "n1"), "ready")
    pool.cordon("n1")
    assert pool.burst_nodes()["n1"].cordoned
    assert pool.drain("n1") == 1, "still draining"
    assert pool.drain("n1") == 1
    until(lambda: pool.drain("n1") == 0, "drained")
    # The "machine" stays until it leaves the node set: a drained node is not a vanished one.
    assert pool.state("local").instances == {"n1": "running"}
    assert pool.burst_nodes()["n1"] == model.ClusterNode("n1", "local", ready=True, cordoned=True, pods=0)
    assert pool.targets_file is not None and targets(pool) == []
    pool.submit("local", ())
    assert pool.state("local") == model.PoolState("local", instances={}, submitted=())


def test_a_drained_worker_keeps_serving_out_of_the_load_balancer_until_its_deregistration_delay(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool(boot_delay_s=0.0, deregister_s=10.0)
    pool.submit("local", ("n1",))
    until(lambda: ready(pool, "n1"), "ready")
    url = pool.endpoints()["n1"]
    assert pool.drain("n1") == 1
    assert pool.burst_nodes()["n1"].cordoned, "out of the load balancer at once"
    time.sleep(0.3)
    assert answers(f"{url}/readyz"), "no SIGTERM before the deregistration delay"
    clock.advance(10.0)
    until(lambda: pool.drain("n1") == 0, "stopped after the delay")
    assert not answers(f"{url}/readyz")


def test_unknown_nodes_are_a_no_op_for_cordon_and_drain(make_pool: Callable[..., local.LocalPool]) -> None:
    pool = make_pool()
    pool.cordon("ghost")
    assert pool.drain("ghost") == 0
    pool.set_replicas("face", "local", 3)
    assert pool.replicas == {("face", "local"): 3}
    with pytest.raises(ValueError, match=">= 0"):
        pool.set_replicas("face", "local", -1)


def test_close_stops_and_reaps_every_worker(make_pool: Callable[..., local.LocalPool]) -> None:
    pool = make_pool(boot_delay_s=0.0, env={"STANDIN_IGNORE_TERM": "1"})
    pool.submit("local", ("n1", "n2"))
    procs = list(pool.processes().values())
    until(lambda: all(n.ready for n in pool.burst_nodes().values()), "ready")
    pool.close(timeout_s=0.3)
    assert all(gone(p.pid) for p in procs)
    assert pool.processes() == {} and targets(pool) == []
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("local", ("n1",))


# -- the reconcile loop -----------------------------------------------------------------------------
LOCAL = model.PoolSpec("local", gpus_per_node=1, price_per_hour=0.0, boot_s=30.0, max_nodes=4)
FACE = model.WorkloadSpec("face", gpu_rps=25, service_time_s=0.06, slo_s=0.5, private_gpus=1)
PLAIN = fake_world.PLAIN
KEEP_S = PLAIN.keep_factor * LOCAL.boot_s + PLAIN.horizon_extra_s
"""Idle burst capacity is kept this long (seen time): a boot, and the next tick (45 s)."""


def test_the_reconcile_loop_bursts_onto_real_workers_and_releases_them(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool(env={"STANDIN_DRAIN_S": "0.2"})
    metrics = fakes.FakeMetricSource()
    store = fakes.MemoryStore()
    rec = reconciler.Reconciler(
        # Plain sizing (no forecast, no headroom): 60 / (25 x 0.8) = 3 GPUs.
        reconciler.Setup((FACE,), (LOCAL,), PLAIN),
        clock=clock,
        metrics=metrics,
        cluster=pool,
        capacity=pool,
        store=store,
    )

    def statuses() -> set[str]:
        return {r.status.value for r in store.records.values()}

    metrics.set("face", 60.0)  # 60 / (25 * 0.8) = 3 GPUs, 1 private -> 2 local workers
    report = rec.tick()
    assert report.decision.target_nodes == {"local": 2}, report.decision.reasons
    assert statuses() == {"requested"} and pool.processes() == {}
    clock.advance(15.0)
    rec.tick()
    assert statuses() == {"provisioning"}, "in the pool, still booting"
    clock.advance(15.0)
    rec.tick()  # the boot delay is over: processes start
    assert len(pool.processes()) == 2

    def tick_until(want: set[str], *, step: float = 0.0) -> None:
        def done() -> bool:
            clock.advance(step)
            rec.tick()
            return statuses() == want

        until(done, f"statuses {want}")

    tick_until({"ready"})
    workers = dict(pool.processes())
    for url in pool.endpoints().values():
        assert httpx.get(f"{url}/readyz").status_code == 200
    assert len(targets(pool)) == 2
    assert pool.replicas[("face", "local")] == 2

    metrics.set("face", 10.0)  # private is enough
    for _ in range(int(KEEP_S // 15.0) - 1):  # inside the keep window nothing leaves
        clock.advance(15.0)
        report = rec.tick()
    assert statuses() == {"ready"}
    assert report.decision.cause is model.Cause.STABILIZATION, report.decision.reasons
    tick_until({"released"}, step=15.0)
    assert all(gone(p.pid) for p in workers.values())
    assert pool.processes() == {} and targets(pool) == []
    assert pool.state("local").submitted == ()
    walked = [t.after.value for i in store.intents for t in i.transitions]
    assert walked.count("draining") == 2 and walked.count("released") == 2


# -- the real workload ------------------------------------------------------------------------------
@pytest.mark.skipif(
    not (local.IMPORT_ROOT / "workloads" / "face_compare" / "cli.py").exists(),
    reason="the face-compare workload is not in this checkout",
)
def test_the_real_workload_serves_as_a_local_node_and_drains_on_sigterm(
    make_pool: Callable[..., local.LocalPool], clock: FakeClock
) -> None:
    pool = make_pool(boot_delay_s=0.0, command=config.WORKER_COMMAND)
    pool.submit("local", ("n1",))
    proc = pool.processes()["n1"]
    until(lambda: ready(pool, "n1") or proc.poll() is not None, "the workload ready")
    assert proc.poll() is None, (pool.log_dir / "n1.log").read_text()[-2000:]
    url = pool.endpoints()["n1"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'facecompare_ready{placement="burst",pool="local"} 1.0' in metrics
    assert pool.drain("n1") == 1
    until(lambda: pool.drain("n1") == 0, "the workload drained")
    assert proc.returncode == 0, "a clean drain exits 0"
    pool.submit("local", ())
    assert pool.state("local").instances == {}
    assert gone(proc.pid)


def test_default_command_is_the_workload_serve_contract() -> None:
    argv = [part.format(host="127.0.0.1", port="8001", pool="p", node="n") for part in config.WORKER_COMMAND]
    assert argv[1:] == [
        "-m", "workloads.face_compare", "serve", "--host", "127.0.0.1", "--port", "8001", "--device", "cpu",
    ]  # fmt: skip
    assert os.path.isabs(argv[0]), "the controller's own interpreter, whatever PATH says"
