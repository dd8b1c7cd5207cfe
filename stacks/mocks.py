"""Runs the program, or one component of it, against Pulumi's mock engine and keeps what it registers.

No CLI, provider plugin or cloud account is involved: provider functions answer from a small table of
fakes and resources get fake ids. The tests use it to check what a stack would create, and the policy
pack runs over what it records; `python -m stacks.mocks Pulumi.<stack>.yaml` prints the same for a
stack file (secrets replaced by placeholders).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
import pulumi.runtime.config
import pulumi.runtime.mocks
import pulumi.runtime.settings
import yaml
from google.protobuf import json_format

PROJECT = "gpuburst"
# Pulumi's wire form of a secret value (see pulumi.runtime.rpc).
_SIG_KEY = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"

Call = Callable[[Mapping[str, Any]], dict[str, Any]]

# Provider functions the program calls, answered as a region with three zones would.
DEFAULT_CALLS: dict[str, Call] = {
    "aws:ec2/getAmi:getAmi": lambda args: {
        "id": "ami-0123456789abcdef0",
        "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250101",
        "rootDeviceName": "/dev/sda1",
        "architecture": "x86_64",
    },
    "aws:ec2/getInstanceType:getInstanceType": lambda args: {
        "instanceType": args["instanceType"],
        "supportedArchitectures": ["x86_64"],
    },
    "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings": lambda args: {
        "id": "eu-west-1",
        "locations": ["eu-west-1c", "eu-west-1a", "eu-west-1b"],
        "locationTypes": ["availability-zone"] * 3,
        "instanceTypes": [args["filters"][0]["values"][0]] * 3,
    },
}


@dataclasses.dataclass(frozen=True)
class Registered:
    """One resource registration as the engine would receive it (input names in the engine's case)."""

    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    ignore_changes: tuple[str, ...]
    wire_inputs: Mapping[str, Any]

    @property
    def inputs(self) -> dict[str, Any]:
        """Inputs with secrets unwrapped."""
        return {key: _unwrap(value) for key, value in self.wire_inputs.items()}

    @property
    def secret_inputs(self) -> frozenset[str]:
        return frozenset(key for key, value in self.wire_inputs.items() if _is_secret(value))


@dataclasses.dataclass(frozen=True)
class Rendering:
    resources: tuple[Registered, ...]
    outputs: Mapping[str, Any]

    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def get(self, type_: str, name: str) -> Registered:
        matches = [r for r in self.resources if r.type == type_ and r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources of type {type_} named {name}")
        return matches[0]


def integral(value: Any) -> Any:
    """Numbers cross the engine as doubles; Kubernetes reads 1.0 as 1."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral(item) for item in value]
    return value


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, calls: Mapping[str, Call]) -> None:
        self.calls = calls

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        return _fake_id(args.typ, args.name), {**args.inputs, **_fake_outputs(args.typ, args.name)}

    # The mock monitor also accepts a bare dict, and a (dict, None) tuple crashes it.
    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        token: str = args.token
        if token not in self.calls:
            raise NotImplementedError(f"no mock for provider function {token}")
        result: dict[str, Any] = self.calls[token](args.args)
        return result


class _Monitor(pulumi.runtime.mocks.MockMonitor):
    """Also keeps the resource options the stock mock monitor drops (ignore_changes, parent)."""

    def __init__(self, mocks: _Mocks) -> None:
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (the gRPC method's name)
        register: Callable[[Any], Any] = super().RegisterResource
        response = register(request)
        if request.type != "pulumi:pulumi:Stack":
            urn = self.make_urn(request.parent, request.type, request.name)
            self.registered.append(
                Registered(
                    type=request.type,
                    name=request.name,
                    urn=urn,
                    parent=request.parent,
                    custom=bool(request.custom),
                    ignore_changes=tuple(request.ignoreChanges),
                    wire_inputs=_wire(request.object),
                )
            )
        return response


def render(
    program: Callable[[], object],
    *,
    config: Mapping[str, str],
    secret_keys: Sequence[str] = (),
    stack: str = "test",
    calls: Mapping[str, Call] | None = None,
) -> Rendering:
    """Run `program` under fresh mocks with `config` (full keys, string values) and return what it
    registered and exported. Each call starts from clean runtime state, so renders do not leak into
    each other."""
    mocks = _Mocks({**DEFAULT_CALLS, **(calls or {})})
    monitor = _Monitor(mocks)
    pulumi.runtime.settings.reset_options(project=PROJECT, stack=stack, preview=False)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.config.set_all_config(dict(config), list(secret_keys))
    outputs: dict[str, Any] = {}

    def run() -> pulumi.Output[None]:
        program()
        root = pulumi.runtime.settings.get_root_resource()
        exported = dict(getattr(root, "outputs", {}))
        return pulumi.Output.from_input(exported).apply(outputs.update)

    # `test` waits for the returned Output and for every registration the program started.
    test: Callable[[Callable[[], object]], Callable[[], None]] = pulumi.runtime.test
    test(run)()
    return Rendering(resources=tuple(monitor.registered), outputs=outputs)


def stack_file_config(path: Path, *, secrets: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The config of a `Pulumi.<stack>.yaml` as the CLI hands it to the program: every value a string,
    structured values as JSON, and `secure:` values replaced from `secrets` (which must name them)."""
    document = yaml.safe_load(path.read_text()) or {}
    values: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            if key not in secrets:
                raise KeyError(f"{path.name}: {key} is a secret; pass a stand-in value for it")
            values[key] = secrets[key]
            secret_keys.append(key)
        elif isinstance(value, list | dict):
            values[key] = json.dumps(value)
        elif isinstance(value, bool):
            values[key] = "true" if value else "false"
        else:
            values[key] = str(value)
    return values, secret_keys


def _wire(struct: Any) -> dict[str, Any]:
    """The registered inputs as plain data, secrets still in their wire form."""
    return dict(json_format.MessageToDict(struct))


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(_SIG_KEY) == _SECRET_SIG


def _unwrap(value: Any) -> Any:
    if _is_secret(value):
        return _unwrap(value["value"])
    if isinstance(value, dict):
        return {key: _unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unwrap(item) for item in value]
    return value


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _fake_id(type_: str, name: str) -> str:
    prefixes = {
        "aws:ec2/instance:Instance": "i",
        "aws:ec2/vpc:Vpc": "vpc",
        "aws:ec2/subnet:Subnet": "subnet",
        "aws:ec2/securityGroup:SecurityGroup": "sg",
        "aws:ec2/launchTemplate:LaunchTemplate": "lt",
        "aws:ec2/routeTable:RouteTable": "rtb",
        "aws:ec2/vpnGateway:VpnGateway": "vgw",
        "aws:ec2/customerGateway:CustomerGateway": "cgw",
        "aws:ec2/vpnConnection:VpnConnection": "vpn",
    }
    prefix = prefixes.get(type_)
    return f"{prefix}-{_digest(type_, name)[:17]}" if prefix else f"{name}-id"


def _fake_outputs(type_: str, name: str) -> dict[str, Any]:
    digest = _digest(type_, name)
    if type_ == "aws:ec2/instance:Instance":
        return {
            "privateIp": f"10.42.{int(digest[:2], 16)}.{int(digest[2:4], 16) % 250 + 4}",
            "instanceState": "running",
        }
    if type_ == "aws:ec2/vpnConnection:VpnConnection":
        return {"tunnel1Address": "198.51.100.1", "tunnel2Address": "198.51.100.2"}
    if type_.startswith("aws:iam/"):
        return {"arn": f"arn:aws:iam::123456789012:{type_.rsplit(':', 1)[-1].lower()}/{name}", "name": name}
    return {}


def _main(argv: list[str]) -> int:
    from stacks import program

    if len(argv) != 1:
        print("usage: python -m stacks.mocks Pulumi.<stack>.yaml", file=sys.stderr)
        return 2
    path = Path(argv[0])
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    document = yaml.safe_load(path.read_text()) or {}
    placeholders = {
        key: "<secret>"
        for key, value in (document.get("config") or {}).items()
        if isinstance(value, dict) and "secure" in value
    }
    config, secret_keys = stack_file_config(path, secrets=placeholders)
    rendering = render(program.main, config=config, secret_keys=secret_keys, stack=stack)
    for resource in _custom(rendering.resources):
        print(f"{resource.type}  {resource.name}")
    print(json.dumps(rendering.outputs, indent=2, default=str))
    return 0


def _custom(resources: Sequence[Registered]) -> Iterator[Registered]:
    return iter(sorted((r for r in resources if r.custom), key=lambda r: (r.type, r.name)))


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
