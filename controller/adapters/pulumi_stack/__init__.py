"""Pulumi capacity: the cloud pool stacks, driven through the Automation API (the `Capacity` port).

Owns one stack per cloud pool (`gpuburst:nodes` config in, `nodes` output out: `outputs`), the worker
thread that applies each pool's latest desired node set (`worker`), the one mapping from CLI failures to
what the controller does about them (`failures.classify`), and the refresh that finds instances that
vanished behind the stack's back. How many nodes a pool should have is decided elsewhere: the reconciler
hands in sorted node sets and reads `state()` on later ticks, which never waits for an apply.
"""

from controller.adapters.pulumi_stack.capacity import IMPORT_ROOT, PROJECT_FILES, PulumiCapacity
from controller.adapters.pulumi_stack.failures import (
    CAPACITY_ERRORS,
    SETUP_ERRORS,
    Outcome,
    Verdict,
    classify,
    cli_message,
)
from controller.adapters.pulumi_stack.guardrails import POLICY_PACK
from controller.adapters.pulumi_stack.outputs import (
    GONE_STATES,
    NODES_CONFIG,
    NODES_OUTPUT,
    ApplyResult,
    Instance,
    OutputError,
    RefreshResult,
    parse_nodes,
)
from controller.adapters.pulumi_stack.worker import FAILURE_BACKOFF, LOCK_BACKOFF, Backoff

__all__ = [
    "CAPACITY_ERRORS",
    "FAILURE_BACKOFF",
    "GONE_STATES",
    "IMPORT_ROOT",
    "LOCK_BACKOFF",
    "NODES_CONFIG",
    "NODES_OUTPUT",
    "POLICY_PACK",
    "PROJECT_FILES",
    "SETUP_ERRORS",
    "ApplyResult",
    "Backoff",
    "Instance",
    "Outcome",
    "OutputError",
    "PulumiCapacity",
    "RefreshResult",
    "Verdict",
    "classify",
    "cli_message",
    "parse_nodes",
]
