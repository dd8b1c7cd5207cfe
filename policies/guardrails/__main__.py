"""Serves the pack to the Pulumi CLI (`pulumi up --policy-pack policies/guardrails`); never imported."""

import pulumi_policy

from policies.guardrails import pack

pulumi_policy.PolicyPack(name=pack.PACK_NAME, policies=pack.policies())
