"""The rules as policy SDK objects: the code the CLI runs, minus the gRPC server.

`__main__.py` hands these to `PolicyPack`, which serves them and blocks, so tests build and call the
policies from here instead.
"""

from __future__ import annotations

import pulumi_policy as policy

from policies.guardrails import rules

PACK_NAME = "gpuburst-guardrails"


def policies() -> list[policy.Policy]:
    return [_policy(rule) for rule in rules.RULES]


def _policy(rule: rules.Rule) -> policy.Policy:
    schema = policy.PolicyConfigSchema(
        properties={key: {**spec, "default": rule.defaults[key]} for key, spec in rule.schema.items()}
    )
    if rule.stack_check is not None:
        stack_check = rule.stack_check

        def validate_stack(args: policy.StackValidationArgs, report: policy.ReportViolation) -> None:
            resources = [rules.Resource(r.resource_type, r.name, r.urn, r.props) for r in args.resources]
            for message, urn in stack_check(resources, rule.config(args.get_config())):
                report(message, urn)

        return policy.StackValidationPolicy(
            name=rule.name,
            description=rule.description,
            validate=validate_stack,
            enforcement_level=policy.EnforcementLevel.MANDATORY,
            config_schema=schema,
        )
    resource_check = rule.resource_check
    assert resource_check is not None

    def validate_resource(args: policy.ResourceValidationArgs, report: policy.ReportViolation) -> None:
        for message in resource_check(args.resource_type, args.props, config=rule.config(args.get_config())):
            report(message, None)

    return policy.ResourceValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate_resource,
        enforcement_level=policy.EnforcementLevel.MANDATORY,
        config_schema=schema,
    )
