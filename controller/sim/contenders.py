"""The contenders a replay compares (gpuburst, the peer autoscalers, the fixed fleets, the oracles), by the
names the CLI (`--policies`, a fixed flag) and the reports use. A contender is not a burst policy: gpuburst
is one contender, and it runs the burst policy it is given."""

from __future__ import annotations

import functools
from collections.abc import Callable

from controller.core import model, policy
from controller.runtime import errors
from controller.sim import autoscalers, engine, fixed, gpuburst, oracle, scenario, skyserve
from controller.sim import world as world_mod

NAMES: tuple[str, ...] = (
    "gpuburst",
    "hpa+ca",
    "keda+karpenter",
    "kpa+karpenter",
    "skyserve",
    "static-peak",
    "private-only",
    "oracle",
)
BASELINES = NAMES[1:-1]
REFERENCES: tuple[str, ...] = ("oracle", "lagged-oracle")
"""Informed references (they read the trace); only `oracle` runs by default."""
KNOWN: tuple[str, ...] = (*NAMES, "lagged-oracle")


def parse_names(text: str | None) -> tuple[str, ...]:
    if not text:
        return NAMES
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise errors.UserError(f"--policies: unknown contender {unknown[0]!r}; known: {', '.join(KNOWN)}")
    if not names:
        raise errors.UserError("--policies: name at least one contender")
    return names


def factory(
    name: str,
    burst_policy: policy.BurstPolicy,
    on_decision: Callable[[model.Decision], None] | None = None,
    *,
    tick_s: float = gpuburst.TICK_S,
) -> Callable[[world_mod.World], engine.Contender]:
    """`on_decision` hears each of gpuburst's decisions as it is made (the other contenders have none);
    `tick_s` is gpuburst's tick (never faster than the scrape), as the live controller's
    `tick_interval_s`."""
    if name == "gpuburst":
        return functools.partial(
            gpuburst.Gpuburst, burst_policy=burst_policy, on_decision=on_decision, tick_s=tick_s
        )
    if name == "skyserve":
        return skyserve.SkyServe
    if name == "static-peak":
        return fixed.StaticPeak
    if name == "private-only":
        return fixed.PrivateOnly
    controller, _, provisioner = name.partition("+")
    if controller in ("hpa", "keda", "kpa") and provisioner in ("ca", "karpenter"):
        return functools.partial(
            autoscalers.ReplicaBaseline, name, controller=controller, provisioner=provisioner
        )
    raise errors.UserError(f"unknown contender {name!r}")


def run(
    sc: scenario.Scenario,
    name: str,
    *,
    burst_policy: policy.BurstPolicy,
    progress: engine.Progress | None = None,
    on_decision: Callable[[model.Decision], None] | None = None,
    tick_s: float = gpuburst.TICK_S,
) -> engine.Run:
    if name == "oracle":
        return oracle.run(sc)
    if name == "lagged-oracle":
        return oracle.lagged(sc)
    return engine.run(sc, factory(name, burst_policy, on_decision, tick_s=tick_s), progress=progress)
