"""Local capacity: pools whose "nodes" are face-compare worker processes on this machine.

Owns the process table behind the embedded demo. `LocalPool` is both the `Capacity` port (a pool's
node set becomes worker processes, each started after a simulated boot delay and stopped with SIGTERM
when its name leaves the set) and the `Cluster` port (each process is a node with one GPU, ready once
its /readyz answers 200, drained by SIGTERM), and it keeps a Prometheus file_sd target file listing the
live workers. It is what lets the whole loop run on a laptop, with no cloud and no cluster.

Nothing here runs in the background: every call first brings the table up to date (starts workers
whose boot delay has passed on the Clock, reaps exits, escalates slow stops), so the reconcile tick
drives it and a FakeClock makes boot delays instant in tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

import httpx

from controller import ports
from controller.core import model

log = logging.getLogger("gpuburst.local")

IMPORT_ROOT = Path(str(resources.files("controller"))).parent
"""Where the controller package is imported from (a checkout's root, or site-packages): the workers'
default cwd, so a worker started as `python -m <package>` finds a package installed beside it."""


@dataclass(eq=False)
class _Worker:
    name: str
    pool: str
    start_at: float
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    ready: bool = False
    cordoned: bool = False
    draining: bool = False
    """Drained: out of the load balancer, its exit is expected and the "machine" stays until released."""
    term_at: float | None = None
    """When a drained worker gets its SIGTERM (once the load balancer has stopped sending it work)."""
    released_at: float | None = None
    """Left the node set: SIGTERM sent, waiting to reap it."""
    killed: bool = False
    exit_code: int | None = None
    vanished: str = ""
    """Why the worker is gone without being asked (it crashed, or could not start)."""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.exit_code is None

    def instance_state(self) -> str | None:
        """The state the pool's "stack" reports, None once the worker no longer counts as an instance."""
        if self.vanished or self.released_at is not None:
            return None
        return "pending" if self.process is None else "running"


class LocalPool:
    """Worker processes as the `Capacity` and `Cluster` ports of one or more local pools.

    `command` is the argv template of a worker (`{host}`, `{port}`, `{pool}` and `{node}` are filled in
    per worker): the config names the workload's; tests pass a small stand-in. `boot_delay_s` is measured
    on `clock` and simulates a node booting; `stop_timeout_s` (also on `clock`) is how long a SIGTERM may
    take before SIGKILL. `deregister_s` (on `clock`) is how long a drained worker, cordoned and so out
    of the load balancer, keeps serving before its SIGTERM: requests routed to it a moment before the
    cordon still find it accepting (a load balancer's deregistration delay, a pod's preStop sleep).
    """

    def __init__(
        self,
        pools: Sequence[str] = ("local",),
        *,
        clock: ports.Clock,
        boot_delay_s: float = 5.0,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        targets_file: str | Path | None = None,
        log_dir: str | Path | None = None,
        cwd: str | Path = IMPORT_ROOT,
        stop_timeout_s: float = 30.0,
        deregister_s: float = 0.0,
        probe_timeout_s: float = 0.5,
    ) -> None:
        if not pools:
            raise ValueError("local capacity: no pools")
        if boot_delay_s < 0:
            raise ValueError(f"local capacity: boot_delay_s must be >= 0, got {boot_delay_s}")
        self.pools = tuple(pools)
        self.clock = clock
        self.boot_delay_s = boot_delay_s
        self.command = tuple(command)
        self.env = dict(env or {})
        self.host = host
        self.targets_file = Path(targets_file) if targets_file is not None else None
        self.log_dir = (
            Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="gpuburst-local-"))
        )
        self.cwd = Path(cwd)
        self.stop_timeout_s = stop_timeout_s
        self.deregister_s = deregister_s
        self.probe_timeout_s = probe_timeout_s
        self.replicas: dict[tuple[str, str], int] = {}
        self._lock = threading.RLock()
        self._workers: dict[str, _Worker] = {}
        self._stopping: list[_Worker] = []
        self._submitted: dict[str, tuple[str, ...]] = {}
        self._failures: dict[str, str] = {}
        self._targets_written: str | None = None
        self._closed = False
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuburst-local-spawn")
        """Forks every worker and lives as long as the pool (the parent-death signal follows the forking
        thread, and the threads asking for a start, a tick or an API request's, may end at any time)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftovers()
        self._write_targets()

    # -- Capacity -----------------------------------------------------------------------------------
    def submit(self, pool: str, nodes: tuple[str, ...]) -> None:
        """Start the new names (after the boot delay) and stop the dropped ones; returns at once."""
        self._check_pool(pool)
        nodes = tuple(nodes)
        if list(nodes) != sorted(set(nodes)):
            raise ValueError(f"pool {pool!r}: node names must be sorted and unique, got {list(nodes)}")
        with self._lock:
            if self._closed:
                raise RuntimeError("local capacity closed")
            now = self.clock.now()
            want = set(nodes)
            for worker in [w for w in self._workers.values() if w.pool == pool and w.name not in want]:
                self._release(worker, now)
            for name in nodes:
                owner = self._workers.get(name)
                if owner is not None and owner.pool != pool:
                    raise ValueError(f"node {name!r} already belongs to pool {owner.pool!r}")
                if owner is None:
                    self._workers[name] = _Worker(name, pool, start_at=now + self.boot_delay_s)
            self._submitted[pool] = nodes
            self._failures.pop(pool, None)
            self._advance()

    def state(self, pool: str) -> model.PoolState:
        self._check_pool(pool)
        with self._lock:
            self._advance()
            instances = {}
            for w in self._workers.values():
                state = w.instance_state() if w.pool == pool else None
                if state is not None:
                    instances[w.name] = state
            failure = self._failures.get(pool, "")
            stopping = any(w.pool == pool for w in self._stopping)
            return model.PoolState(
                pool=pool,
                instances=instances,
                submitted=self._submitted.get(pool),
                # Busy until every dropped worker is reaped: "not listed" must mean "gone".
                apply=model.ApplyState.BUSY
                if stopping
                else (model.ApplyState.FAILED if failure else model.ApplyState.IDLE),
                message=failure,
            )

    # -- Cluster ------------------------------------------------------------------------------------
    def burst_nodes(self) -> Mapping[str, model.ClusterNode]:
        with self._lock:
            self._advance()
            booting = [w for w in self._workers.values() if w.alive and not w.ready and not w.draining]
        for worker in booting:  # outside the lock: a probe may take up to its timeout
            if self._probe(worker):
                with self._lock:
                    worker.ready = True
                log.info(
                    "worker ready", extra={"node": worker.name, "pool": worker.pool, "port": worker.port}
                )
        with self._lock:
            return {
                w.name: model.ClusterNode(
                    name=w.name,
                    pool=w.pool,
                    ready=w.ready,
                    cordoned=w.cordoned,
                    pods=1 if w.alive else 0,
                )
                for w in self._workers.values()
                if w.process is not None and w.instance_state() is not None
            }

    def cordon(self, node: str) -> None:
        with self._lock:
            worker = self._workers.get(node)
            if worker is not None:
                worker.cordoned = True

    def drain(self, node: str) -> int:
        """Cordon the worker and, `deregister_s` later, SIGTERM it (once) so it finishes what it has and
        exits; later calls report whether it is gone."""
        with self._lock:
            self._advance()
            worker = self._workers.get(node)
            if worker is None or not worker.alive:
                return 0
            if not worker.draining:
                worker.draining = True
                worker.cordoned = True
                worker.term_at = self.clock.now() + self.deregister_s
                log.info("worker draining", extra={"node": node, "pool": worker.pool})
                self._advance()
            self._reap(worker)
            return 1 if worker.alive else 0

    def set_replicas(self, workload: str, pool: str, replicas: int) -> None:
        """Recorded only: here a worker is both the node and its one replica."""
        self._check_pool(pool)
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        with self._lock:
            self.replicas[(workload, pool)] = replicas

    # -- for the demo and tests ---------------------------------------------------------------------
    def endpoints(self) -> dict[str, str]:
        """Node -> base URL of every live worker."""
        with self._lock:
            self._advance()
            return {w.name: f"http://{self.host}:{w.port}" for w in self._workers.values() if w.alive}

    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """Every worker process not yet reaped, released ones included."""
        with self._lock:
            workers = [*self._workers.values(), *self._stopping]
            return {w.name: w.process for w in workers if w.process is not None and w.exit_code is None}

    def close(self, *, timeout_s: float = 10.0) -> None:
        """Stop every worker: SIGTERM, then SIGKILL after `timeout_s` of real time; all are reaped."""
        with self._lock:
            self._closed = True
            workers = [w for w in [*self._workers.values(), *self._stopping] if w.alive]
            for worker in workers:
                self._signal(worker, signal.SIGTERM)
            for worker in workers:
                assert worker.process is not None
                try:
                    worker.exit_code = worker.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.exit_code = worker.process.wait()
            self._workers.clear()
            self._stopping.clear()
            self._write_targets()
        self._spawner.shutdown(wait=True)

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the table ----------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Bring the table up to date with the clock and the processes (caller holds the lock)."""
        if self._closed:
            return
        now = self.clock.now()
        for worker in self._workers.values():
            if worker.process is None and not worker.vanished and worker.start_at <= now:
                self._start(worker)
            elif worker.alive:
                if worker.term_at is not None and worker.term_at <= now:
                    worker.term_at = None
                    self._signal(worker, signal.SIGTERM)
                self._reap(worker)
                if not worker.alive and not worker.draining:
                    # Nobody asked it to stop: to the controller this is an instance that vanished.
                    worker.vanished = f"exited with status {worker.exit_code}"
                    log.warning(
                        "worker exited unexpectedly",
                        extra={
                            "node": worker.name,
                            "pool": worker.pool,
                            "status": worker.exit_code,
                            "log": str(worker.log_path),
                            "tail": _tail(worker.log_path),
                        },
                    )
        for worker in list(self._stopping):
            self._reap(worker)
            if not worker.alive:
                self._stopping.remove(worker)
            elif (
                not worker.killed
                and worker.released_at is not None
                and now - worker.released_at >= self.stop_timeout_s
            ):
                worker.killed = True
                self._signal(worker, signal.SIGKILL)
                log.warning("worker did not stop in time: killed", extra={"node": worker.name})
        self._write_targets()

    def _start(self, worker: _Worker) -> None:
        port = _free_port(self.host)
        fields = {"host": self.host, "port": str(port), "pool": worker.pool, "node": worker.name}
        argv = [part.format(**fields) for part in self.command]
        env = {
            **os.environ,
            "GPUBURST_PLACEMENT": "burst",
            "GPUBURST_POOL": worker.pool,
            "GPUBURST_NODE": worker.name,
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        worker.port = port
        worker.log_path = self.log_dir / f"{worker.name}.log"
        logfile: IO[bytes] = worker.log_path.open("ab")
        try:
            # Its own process group (signals reach what it starts; a Ctrl-C meant for the controller
            # does not), and on Linux a SIGTERM when the controller dies, even by SIGKILL.
            worker.process = self._spawner.submit(
                subprocess.Popen,
                argv,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,  # one syscall in the child
            ).result()
            self._pidfile(worker).write_text(f"{worker.process.pid} {_start_time(worker.process.pid)}\n")
        except OSError as exc:
            worker.vanished = f"could not start: {exc}"
            self._failures[worker.pool] = f"node {worker.name}: could not start {argv[0]}: {exc}"
            log.error("worker could not start", extra={"node": worker.name, "argv": argv, "error": str(exc)})
        else:
            log.info(
                "worker started",
                extra={"node": worker.name, "pool": worker.pool, "port": port, "pid": worker.process.pid},
            )
        finally:
            logfile.close()  # the child holds its own descriptor

    def _release(self, worker: _Worker, now: float) -> None:
        del self._workers[worker.name]
        worker.released_at = now
        if worker.alive:
            if not worker.draining:
                self._signal(worker, signal.SIGTERM)
            self._stopping.append(worker)
        log.info("worker released", extra={"node": worker.name, "pool": worker.pool})

    def _reap(self, worker: _Worker) -> None:
        if worker.process is not None and worker.exit_code is None:
            worker.exit_code = worker.process.poll()
            if worker.exit_code is not None:
                self._pidfile(worker).unlink(missing_ok=True)

    def _signal(self, worker: _Worker, sig: signal.Signals) -> None:
        if worker.process is not None and worker.exit_code is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.process.pid, sig)

    def _pidfile(self, worker: _Worker) -> Path:
        return self.log_dir / f"{worker.name}.pid"

    def _stop_leftovers(self) -> None:
        """Stop the workers an earlier controller on this log_dir left running (it was killed, and its
        workers outlived it: no parent-death signal off Linux, or one ignored). The store still lists
        their nodes; with no instance behind them they count as vanished and are replaced at most once,
        so none is leaked and none doubled."""
        leftovers: list[tuple[int, Path]] = []
        for pidfile in sorted(self.log_dir.glob("*.pid")):
            try:
                pid_text, started = pidfile.read_text().split()
                pid = int(pid_text)
            except (OSError, ValueError):
                pidfile.unlink(missing_ok=True)
                continue
            if _start_time(pid) == started:  # the same process, not a recycled pid
                leftovers.append((pid, pidfile))
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
            else:
                pidfile.unlink(missing_ok=True)
        deadline = time.monotonic() + min(self.stop_timeout_s, LEFTOVER_STOP_S)
        for pid, pidfile in leftovers:
            while _start_time(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            if _start_time(pid) is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                killed_by = time.monotonic() + 5.0
                while _start_time(pid) is not None and time.monotonic() < killed_by:
                    time.sleep(0.02)
            pidfile.unlink(missing_ok=True)
            log.warning(
                "stopped a worker left by an earlier controller", extra={"pid": pid, "pidfile": str(pidfile)}
            )

    def _probe(self, worker: _Worker) -> bool:
        try:
            response = httpx.get(f"http://{self.host}:{worker.port}/readyz", timeout=self.probe_timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _write_targets(self) -> None:
        """The Prometheus file_sd list of live workers, replaced atomically and only when it changed."""
        if self.targets_file is None:
            return
        groups = [
            {
                "targets": [f"{self.host}:{w.port}"],
                "labels": {"placement": "burst", "pool": w.pool, "node": w.name},
            }
            for w in sorted(self._workers.values(), key=lambda w: w.name)
            if w.alive and w.instance_state() is not None
        ]
        text = json.dumps(groups, indent=2) + "\n"
        if text == self._targets_written:
            return
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.targets_file.parent, prefix=f".{self.targets_file.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            # Prometheus watches the directory: a rename is seen whole, never half-written.
            os.replace(tmp, self.targets_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._targets_written = text

    def _check_pool(self, pool: str) -> None:
        if pool not in self.pools:
            raise KeyError(f"unknown pool {pool!r} (local pools: {list(self.pools)})")


LEFTOVER_STOP_S = 10.0
"""Real seconds a leftover worker gets to stop on SIGTERM at start before SIGKILL."""
PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
"""Resolved once here, so the forked child only makes the call."""


def _die_with_parent() -> None:
    """In the forked child, before exec: SIGTERM when the parent dies; if it already has, exit.

    Linux ties the signal to the thread that forked: workers are forked from the pool's spawner thread,
    which lives as long as the controller, and `_stop_leftovers` covers whatever still outlives it.
    """
    assert _PRCTL is not None
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:
        os._exit(1)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), None when it is gone or a zombie;
    with the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path | None, lines: int = 5) -> str:
    if path is None or not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
