"""The fault matrix's process kills and read-only store: a real controller (`python -m controller run`),
a real Prometheus with steady demand for 2 burst nodes, real worker processes.

Each launch and release step gets a `kill -9` of the controller, then a restart on the same config,
store and worker `log_dir`, run to steady state; the figures counted:
- leaked: a worker running that no ready node row names, a ready row with no worker, or a worker of
  the killed controller still alive after the restart;
- doubled: a node name with two workers, or more active nodes (requested, provisioning, ready) than
  the target at any poll while the restart converges;
- wrongful releases: a node the controller chose to drain or release (`scale down`, `operator drain`)
  other than the one the operator named; demand never falls. Workers that exit because their
  controller died (parent-death signal) and are then replaced are not counted: the controller did
  not decide those;
- data lost: a decision, an audit row or ledger time committed before the kill and missing after.

Steps at a commit (the intent is on record, nothing acted on yet) use the `GPUBURST_FAULT_AT` test
hook, which SIGKILLs the controller right after that commit; steps inside the adapter (a worker
booting, a cordoned worker still serving its deregistration delay) are hit by polling the API, with
those windows stretched to 1.5 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from controller.app import fault_hook
from controller.runtime import errors, store
from tests.support import live_proc, prom

TICK_S = 0.5
WINDOW_S = 3
STEP_S = 1.5  # boot delay, readiness delay and deregistration delay: the windows the polls aim at
TARGET = 2  # 90 rps at 25 per GPU beyond 2 private GPUs: 2 burst nodes (the pool's max)
AFTER_DRAIN = 1  # an operator drain releases the node and lowers the pool's max by one
ACTIVE = {"requested", "provisioning", "ready"}
prometheus = prom.prometheus


@pytest.fixture(scope="module")
def demand(prometheus: prom.PrometheusServer) -> Iterator[prom.PrometheusServer]:
    """Prometheus scraping a steady 90 rps for the whole module."""
    target = prom.MetricsTarget(placement="private", pool="private").start()
    target.set_traffic(tier="normal", rps=90.0)
    prometheus.set_targets(prom.JOB, [target.target()])
    prometheus.wait_samples(f'job="{prom.JOB}"', WINDOW_S + 2)
    try:
        yield prometheus
    finally:
        target.stop()


def _config(tmp_path: Path, prometheus_url: str) -> tuple[Path, str]:
    path, url = live_proc.config(
        tmp_path,
        prometheus_url,
        tick_s=TICK_S,
        adapter={
            "boot_delay_s": STEP_S,
            "deregister_s": STEP_S,
            "stop_timeout_s": 2,
            "log_dir": str(tmp_path / "workers"),
            "env": {live_proc.TAG_ENV: str(tmp_path), "STAND_IN_READY_AFTER": str(STEP_S)},
        },
    )
    data = yaml.safe_load(path.read_text())
    data["workloads"][0]["prometheus"] = {"selector": f'job="{prom.JOB}"', "window": f"{WINDOW_S}s"}
    path.write_text(yaml.safe_dump(data))
    return path, url


@dataclass(frozen=True)
class Kept:
    """What the store held when the controller died."""

    version: int
    decisions: frozenset[int]
    audit: frozenset[int]
    ledger: dict[str, tuple[float, float]]
    nodes: dict[str, str]

    @classmethod
    def read(cls, db: Path) -> Kept:
        s = store.SqliteStore(db)
        try:
            return cls(
                s.version(),
                frozenset(d.id for d in s.decisions(limit=1_000_000)),
                frozenset(a.id for a in s.audit(limit=1_000_000)),
                s.ledger(),
                {n.name: n.status.value for n in s.nodes()},
            )
        finally:
            s.close()

    def lost(self, later: Kept) -> int:
        """Rows and ledger time committed here and missing from `later`."""
        ledger = sum(
            1
            for pool, (seconds, usd) in self.ledger.items()
            if later.ledger.get(pool, (0.0, 0.0)) < (seconds - 1e-9, usd - 1e-12)
        )
        return (
            len(self.decisions - later.decisions)
            + len(self.audit - later.audit)
            + ledger
            + (later.version < self.version)
        )


@dataclass(frozen=True)
class Figures:
    leaked: int
    doubled: int
    wrongful: int
    lost: int


def _wait_nodes(ctl: live_proc.Running, token: str, want: set[str], *, timeout: float = 30) -> dict[str, str]:
    """Poll until some node has one of the statuses in `want`; returns what was seen."""
    seen: dict[str, str] = {}

    def reached() -> bool:
        nonlocal seen
        seen = live_proc.nodes(ctl, token)
        return bool(want & set(seen.values()))

    prom.wait_until(reached, timeout=timeout, what=f"a node in {sorted(want)}")
    return seen


def _launch_ready(ctl: live_proc.Running, token: str) -> dict[str, str]:
    prom.wait_until(
        lambda: list(live_proc.nodes(ctl, token).values()) == ["ready"] * TARGET,
        timeout=60,
        what=f"{TARGET} burst nodes ready",
    )
    return live_proc.nodes(ctl, token)


def _drain(ctl: live_proc.Running, token: str, node: str) -> None:
    r = httpx.post(
        f"{ctl.url}/v1/nodes/{node}/drain", headers={"Authorization": f"Bearer {token}"}, timeout=5.0
    )
    r.raise_for_status()


def _restart_and_count(
    tmp_path: Path, path: Path, url: str, before: Kept, old_pids: set[int], *, drained: str | None
) -> tuple[Figures, set[str]]:
    """Restart on the same files, run to steady state (the target's nodes ready, nothing else), count."""
    target = TARGET if drained is None else AFTER_DRAIN
    tag = str(tmp_path)
    ctl = live_proc.Running(path, url)
    peak = 0
    try:
        prom.wait_until(ctl.ready, timeout=60, what="the restarted controller to be ready")
        token = live_proc.token(tmp_path / "state")

        def steady() -> bool:
            nonlocal peak
            seen = live_proc.nodes(ctl, token)
            peak = max(peak, sum(st in ACTIVE for st in seen.values()))
            return sorted(seen.values()) == ["ready"] * target

        prom.wait_until(steady, timeout=60, what=f"{target} ready nodes and nothing else after the restart")
        ready = set(live_proc.nodes(ctl, token))
        running = live_proc.workers(tag)
        after = Kept.read(tmp_path / "state" / "store.db")
    finally:
        ctl.stop()
    alive_old = {p for pids in running.values() for p in pids} & old_pids
    leaked = len(set(running) ^ ready) + len(alive_old)
    doubled = sum(len(pids) - 1 for pids in running.values()) + max(0, peak - target)
    s = store.SqliteStore(tmp_path / "state" / "store.db")
    try:
        moves = [
            a for a in s.audit(limit=1_000_000, kind="transition") if a.after in ("draining", "releasing")
        ]
    finally:
        s.close()
    wrongful = sum(
        1 for a in moves if a.detail == "scale down" or (a.detail == "operator drain" and a.node != drained)
    )
    return Figures(leaked, doubled, wrongful, before.lost(after)), ready


def _scenario(
    tmp_path: Path, demand: prom.PrometheusServer, *, step: str, release: bool
) -> tuple[Figures, dict[str, str], set[str]]:
    """Run to `step` (a status the hook kills at, or `poll:<status>`), kill -9 there, restart, count."""
    path, url = _config(tmp_path, demand.url)
    polled = step.startswith("poll:")
    status = step.removeprefix("poll:")
    env = {} if polled else {fault_hook.ENV: status}
    ctl = live_proc.Running(path, url, env=env)
    drained: str | None = None
    try:
        # The hook may fire at the first tick, before a probe sees the controller ready.
        prom.wait_until(
            lambda: ctl.proc.poll() is not None or ctl.ready(), timeout=60, what="the controller to be ready"
        )
        token = live_proc.token(tmp_path / "state")
        if release:
            drained = sorted(_launch_ready(ctl, token))[0]
            _drain(ctl, token, drained)
        if polled:
            _wait_nodes(ctl, token, {status})
            ctl.kill()
        else:
            ctl.proc.wait(timeout=60)
            ctl.log.close()
            assert ctl.proc.returncode == -signal.SIGKILL, (ctl.proc.returncode, ctl.log_path.read_text())
    finally:
        if ctl.proc.poll() is None:
            ctl.stop()
    old = {p for pids in live_proc.workers(str(tmp_path)).values() for p in pids}
    before = Kept.read(tmp_path / "state" / "store.db")
    at_kill = before.nodes if drained is None else {drained: before.nodes[drained]}
    assert status in at_kill.values(), f"killed at {before.nodes}, not at {status}"
    figures, ready = _restart_and_count(tmp_path, path, url, before, old, drained=drained)
    print(f"kill -9 at {step}: {figures} (store at the kill: {before.nodes}, ready after: {sorted(ready)})")
    return figures, before.nodes, ready


LAUNCH = ["requested", "poll:provisioning", "ready"]
RELEASE = ["draining", "poll:draining", "releasing"]


@pytest.mark.parametrize("step", LAUNCH)
def test_kill_9_at_each_launch_step_leaks_doubles_releases_and_loses_nothing(
    tmp_path: Path, demand: prom.PrometheusServer, step: str
) -> None:
    figures, at_kill, ready = _scenario(tmp_path, demand, step=step, release=False)
    assert figures == Figures(0, 0, 0, 0)
    if step == "requested":  # no worker was started: the restart starts the committed names
        assert ready == set(at_kill)


@pytest.mark.parametrize("step", RELEASE)
def test_kill_9_at_each_release_step_leaks_doubles_releases_and_loses_nothing(
    tmp_path: Path, demand: prom.PrometheusServer, step: str
) -> None:
    figures, _, _ = _scenario(tmp_path, demand, step=step, release=True)
    assert figures == Figures(0, 0, 0, 0)


@contextlib.contextmanager
def _read_only(directory: Path) -> Iterator[None]:
    """`directory` read-only for the controller: a read-only bind mount when root (root writes through
    file modes), else its modes without write bits."""
    if os.geteuid() != 0:
        paths = [directory, *directory.iterdir()]
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p in paths:
                p.chmod(modes[p])
        return
    bind = subprocess.run(
        ["mount", "--bind", str(directory), str(directory)], check=False, capture_output=True, text=True
    )
    if bind.returncode != 0:
        pytest.skip(
            f"root without mount (a read-only bind mount is the only way to deny root writes): {bind.stderr}"
        )
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_read_only_store_is_refused_at_start_in_one_line_and_loses_nothing(
    tmp_path: Path, demand: prom.PrometheusServer
) -> None:
    """kill -9 with 2 nodes ready, the store's volume comes back read-only: the next start refuses in
    one line and starts no worker; writable again, it converges with nothing leaked, doubled, released
    by decision or lost. (A store turning read-only under a running controller cannot be injected from
    outside: a remount read-only fails with EBUSY while SQLite holds the file open for writing.)"""
    path, url = _config(tmp_path, demand.url)
    ctl = live_proc.Running(path, url)
    try:
        prom.wait_until(ctl.ready, timeout=60, what="the controller to be ready")
        _launch_ready(ctl, live_proc.token(tmp_path / "state"))
    finally:
        ctl.kill()
    old = {p for pids in live_proc.workers(str(tmp_path)).values() for p in pids}
    state = tmp_path / "state"
    before = Kept.read(state / "store.db")
    with _read_only(state):
        refused = subprocess.run(
            [sys.executable, "-m", "controller", "run", "--config", str(path)],
            check=False,
            cwd=live_proc.REPO,
            env={**os.environ, live_proc.TAG_ENV: str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        started = live_proc.workers(str(tmp_path))
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.endswith("is read-only; make it writable and start again"), line
    assert not set(started) - {""}, f"a worker started on a read-only store: {started}"
    figures, _ = _restart_and_count(tmp_path, path, url, before, old, drained=None)
    print(f"read-only store at start: {line!r}; writable again: {figures}")
    assert figures == Figures(0, 0, 0, 0)


def test_the_fault_hook_is_off_unless_set_and_names_a_bad_status(tmp_path: Path) -> None:
    db = store.SqliteStore(tmp_path / "store.db")
    try:
        assert fault_hook.wrap(db) is db
        assert fault_hook.wrap(db, "") is db
        with pytest.raises(errors.UserError, match="GPUBURST_FAULT_AT='launching': not a node status"):
            fault_hook.wrap(db, "launching")
    finally:
        db.close()
