"""Renders the Pulumi program under mocks for the stack tests (see stacks/mocks.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stacks import mocks, program

JOIN_SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gpuburst/join-AbC123"
POOL = {
    "gpuburst:kind": "pool",
    "gpuburst:nodes": '["node-a", "node-b", "node-c"]',
    "gpuburst:instanceType": "g5.xlarge",
    "gpuburst:market": "spot",
    "gpuburst:spotMaxPrice": "0.9",
    "gpuburst:costCenter": "ml-inference",
    "gpuburst:clusterCidrs": '["10.0.0.0/16", "10.244.0.0/16"]',
    "gpuburst:joinSecretArn": JOIN_SECRET_ARN,
    "gpuburst:kubernetesVersion": "1.33",
}


@pytest.fixture
def render_pool() -> Callable[..., mocks.Rendering]:
    """Render a pool stack from POOL, with keys overridden or (value None) removed."""

    def render(
        stack: str = "aws-g5-spot", calls: dict[str, mocks.Call] | None = None, **overrides: str | None
    ) -> mocks.Rendering:
        config = {**POOL, **{f"gpuburst:{key}": value for key, value in overrides.items()}}
        config = {key: value for key, value in config.items() if value is not None}
        return mocks.render(program.main, config=config, stack=stack, calls=calls)

    return render
