"""What-if over the admin API: an uploaded trace replayed under a shipped scenario, the way
`gpuburst simulate` replays the scenario's own trace.

The upload takes the place of the scenario's `trace:`; everything else (service, private capacity,
pools, billing, metrics, window, rescale, seed) is the scenario's, so a shipped trace under its own
scenario gives exactly the figures `gpuburst simulate --scenario NAME` prints. The simulator's modules
are imported on first use: the controller starts without them, and answers 501 when they are missing.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from controller.runtime import errors, tasks

WHERE = "trace"
"""How errors name the upload."""


def shipped() -> tuple[str, ...]:
    """The shipped scenarios' names (without importing the simulator)."""
    folder = Path(str(resources.files("controller.sim") / "data" / "scenarios"))
    return tuple(sorted(p.stem for p in folder.glob("*.yaml")))


def prepare(trace_csv: bytes, scenario_name: str, *, policy_path: Path) -> tasks.Work:
    """Check the upload and load the scenario now (bad input is a UserError naming the line); the
    returned work runs every contender and returns `{"report": <report.document>, "plot": <PNG bytes>}`."""
    try:
        from controller.sim import command, contenders, report, scenario
    except ImportError as exc:
        missing = f"the simulator is not installed ({exc.name}): pip install gpuburst[sim]"
        raise tasks.UnavailableError(missing) from None
    try:
        text = trace_csv.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.UserError(f"{WHERE}: not UTF-8 text (byte {exc.start})") from None
    times, counts = scenario.parse_trace(text, where=WHERE)
    scenario.per_second(times, counts, where=WHERE)
    path = scenario.resolve(scenario_name) if "/" not in scenario_name else None
    if path is None or path.parent != scenario.SCENARIOS:
        raise errors.UserError(f"unknown scenario {scenario_name!r}: name a shipped one (gpuburst scenarios)")
    data = errors.read_yaml(path, what="scenario")
    with tempfile.TemporaryDirectory(prefix="gpuburst-whatif-") as tmp:
        upload = Path(tmp) / "trace.csv"
        upload.write_text(text)
        sc = scenario.parse({**data, "trace": str(upload)}, path=path)
    names = contenders.parse_names(None)

    def work(progress: tasks.Progress) -> dict[str, Any]:
        runs, oracle_cost = command.run_all(sc, names, policy_path=policy_path, quiet=True, progress=progress)
        doc = report.document(sc, runs, oracle_cost=oracle_cost)
        return {"report": doc, "plot": _png(sc, runs)}

    return work


def _png(sc: Any, runs: Any) -> bytes | None:
    try:
        from controller.sim import plot
    except ImportError:
        return None
    with tempfile.TemporaryDirectory(prefix="gpuburst-whatif-") as tmp:
        return plot.plot(sc, runs, Path(tmp) / "whatif.png").read_bytes()
