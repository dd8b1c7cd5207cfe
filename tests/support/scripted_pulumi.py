"""A scripted `pulumi` CLI, so the real Automation API code (`Stack`, `LocalWorkspace`, its argument
building and its error classes) runs in tests without the CLI, a backend or a cloud.

`ScriptedPulumi` subclasses `pulumi.automation.PulumiCommand` and answers `run(args, ...)` the way the CLI
would: it keeps per-stack config, a stack state (the instances Pulumi believes exist), the stack
outputs and the update history, next to a tiny "cloud" (instance id -> EC2 state). Hand it to the code
under test:

    cli = ScriptedPulumi(stacks=("spot", "ondemand"))
    capacity = pulumi_stack.PulumiCapacity(
        ["spot"], clock=clock, work_dir=project, config_dir=project / "state", pulumi_command=cli
    )
    # or: auto.LocalWorkspaceOptions(pulumi_command=cli)

What it plays (a pool stack of the gpuburst project):
- `up` reads `gpuburst:nodes` (JSON list of node names), creates an instance for each new name, deletes
  the instances of names no longer listed and sets the `nodes` output (name -> instance_id, private_ip,
  state). Like Pulumi without `--refresh`, it trusts its state: an instance that vanished from the
  cloud stays in the outputs until a `refresh`.
- `refresh` reconciles the state with the cloud: a deleted or terminated instance leaves the state
  (`delete`), another state is recorded (`update`). The outputs are recomputed only with
  `--run-program=true` (what `PulumiCapacity.refresh` passes), so a test sees what the adapter relies on.
- `stack select/init/ls`, `config set/get/set-all/rm` and the full config listing, `stack output`,
  `stack history` (what `Stack.up`/`refresh` read after the operation), `whoami`, `version`.
- Stack config files as the CLI treats them: `config set/set-all/rm` rewrite `Pulumi.<stack>.yaml` in
  the working directory (creating it); `up`/`refresh` with `--config-file FILE` take the stack's config
  from FILE for that operation only and write nothing.
- `--policy-pack DIR` on `up` runs nothing; it is recorded like every argument.
- Anything else fails like an unknown command, so a test notices a call it did not expect.

Scripting:
- `fail("up", LOCKED, stack="spot")`: the next matching command fails with that text; `times=` for more.
  Ready-made texts: `LOCKED` and `CONFLICT` (the real `Stack` raises `ConcurrentUpdateError`),
  `insufficient_capacity(code)`, `AWS_CREDENTIALS`, `generic(...)`.
- `hold("up")` / `release("up")`: matching commands block until released (to catch an apply in flight);
  `started("up")` is a semaphore released as each such command begins.
- `vanish(node)` deletes the instance in the cloud (`terminate(node)` marks it `terminated`, as a spot
  interruption does), `set_cloud_state(node, "stopped")` makes drift.
- `logged_in=False` makes every backend call fail as the CLI does without a login; `missing=True`
  raises `FileNotFoundError` as a missing binary does.

Recorded: `calls` (each argument list as the CLI received it), `runs` (the same with the working
directory and the extra environment of each), `applied(stack)` (node sets per `up`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pulumi.automation import _cmd
from pulumi.automation import errors as auto_errors
from semver import VersionInfo

NODES_KEY = "gpuburst:nodes"
CODE = 255  # the CLI's exit status for an error

LOCKED = (
    "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or "
    "delete the lock file with `pulumi cancel`.\n"
    "  file:///var/lib/pulumi/.pulumi/locks/organization/gpuburst/spot/6b1f0c52.json: created by "
    "ops@bastion (pid 4242) at 2025-03-01T10:00:00Z"
)
CONFLICT = "error: [409] Conflict: Another update is currently in progress."
NOT_LOGGED_IN = "error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions"
AWS_CREDENTIALS = (
    "error: pulumi:providers:aws resource 'default_7_51_1' has a problem: No valid credential sources "
    "found.\nPlease see https://www.pulumi.com/registry/packages/aws/installation-configuration/ for more "
    "information about providing credentials."
)
PASSPHRASE = (
    'error: constructing secrets manager of type "passphrase": unable to find either '
    "`PULUMI_CONFIG_PASSPHRASE` or `PULUMI_CONFIG_PASSPHRASE_FILE` when trying to access the Passphrase "
    "Secrets Provider; please ensure one of these environment variables is set to allow the operation "
    "to continue"
)


@dataclasses.dataclass(frozen=True)
class Failure:
    """What a failing command prints and returns."""

    stderr: str
    stdout: str = ""
    code: int = CODE


def insufficient_capacity(code: str = "InsufficientInstanceCapacity", *, node: str = "node") -> Failure:
    """An `up` whose instance launch the cloud refused, printed as `pulumi up` prints resource errors."""
    detail = {
        "InsufficientInstanceCapacity": "We currently do not have sufficient g5.xlarge capacity in the "
        "Availability Zone you requested (us-east-1a). Our system will be working on provisioning "
        "additional capacity.",
        "MaxSpotInstanceCountExceeded": "Max spot instance count exceeded",
        "VcpuLimitExceeded": "You have requested more vCPU capacity than your current vCPU limit of 8 "
        "allows for the instance bucket that the specified instance type belongs to.",
    }.get(code, "The request cannot be fulfilled.")
    stdout = (
        "Updating (spot):\n"
        f" +  aws:ec2:Instance node-{node} creating (0s)\n"
        f" +  aws:ec2:Instance node-{node} creating failed error: creating EC2 Instance\n"
        "Diagnostics:\n"
        f"  aws:ec2:Instance (node-{node}):\n"
        "    error: 1 error occurred:\n"
        "    \t* creating EC2 Instance: operation error EC2: RunInstances, https response error "
        f"StatusCode: 500, RequestID: 0f4c-11, api error {code}: {detail}\n"
        "  pulumi:pulumi:Stack (gpuburst-spot):\n"
        "    error: update failed\n"
        "Resources:\n    12 unchanged\n"
    )
    return Failure(stderr="", stdout=stdout)


def generic(message: str = "error: creating EC2 Launch Template: InvalidAMIID.NotFound") -> Failure:
    return Failure(stderr=message, stdout="Updating (spot):\n\nDiagnostics:\n  " + message + "\n")


@dataclasses.dataclass(frozen=True)
class Run:
    args: list[str]
    cwd: str
    env: dict[str, str]


@dataclasses.dataclass
class StackState:
    name: str
    config: dict[str, tuple[str, bool]] = dataclasses.field(default_factory=dict)
    resources: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    """What the stack's state records: node -> {instance_id, private_ip, state}."""
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    applied: list[tuple[str, ...]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Scripted:
    command: str
    stack: str | None
    failure: Failure
    times: int


class ScriptedPulumi(_cmd.PulumiCommand):
    """The `pulumi` CLI, played in memory. Thread-safe: the adapter runs one worker per stack."""

    def __init__(
        self,
        *,
        stacks: Iterable[str] = (),
        version: str = "3.272.0",
        logged_in: bool = True,
        missing: bool = False,
        launch_state: str = "running",
        hold_timeout_s: float = 10.0,
    ) -> None:
        # PulumiCommand.__init__ runs `pulumi version`; a scripted CLI has nothing to run.
        self.command = "pulumi"
        self.version = VersionInfo.parse(version)
        self.logged_in = logged_in
        self.missing = missing
        self.launch_state = launch_state
        self.hold_timeout_s = hold_timeout_s
        self.stacks: dict[str, StackState] = {name: StackState(name) for name in stacks}
        self.current: str | None = None
        self.cloud: dict[str, str] = {}
        """Instance id -> EC2 state, as the cloud sees it; a deleted instance is absent."""
        self.calls: list[list[str]] = []
        self.runs: list[Run] = []
        self._lock = threading.RLock()
        self._failures: list[_Scripted] = []
        self._holds: dict[str, threading.Event] = {}
        self._started: dict[str, threading.Semaphore] = {}
        self._seq = 0

    # -- scripting ----------------------------------------------------------------------------------
    def fail(self, command: str, failure: Failure | str, *, stack: str | None = None, times: int = 1) -> None:
        """Make the next `times` runs of `command` ("up", "refresh", "stack select", ...) fail."""
        if isinstance(failure, str):
            failure = Failure(stderr=failure)
        with self._lock:
            self._failures.append(_Scripted(command, stack, failure, times))

    def hold(self, command: str) -> None:
        with self._lock:
            self._holds[command] = threading.Event()

    def release(self, command: str) -> None:
        with self._lock:
            gate = self._holds.pop(command, None)
        if gate is not None:
            gate.set()

    def started(self, command: str) -> threading.Semaphore:
        """Released once each time `command` begins (before any hold)."""
        with self._lock:
            return self._started.setdefault(command, threading.Semaphore(0))

    def instance_of(self, node: str) -> str:
        with self._lock:
            for st in self.stacks.values():
                if node in st.resources:
                    return st.resources[node]["instance_id"]
        raise KeyError(f"no stack holds node {node!r}")

    def vanish(self, node: str) -> None:
        """The instance is deleted behind the stack's back (gone from the cloud's listing)."""
        with self._lock:
            self.cloud.pop(self.instance_of(node), None)

    def terminate(self, node: str) -> None:
        """The cloud terminated the instance (a spot interruption); it still shows as `terminated`."""
        self.set_cloud_state(node, "terminated")

    def set_cloud_state(self, node: str, state: str) -> None:
        with self._lock:
            self.cloud[self.instance_of(node)] = state

    def applied(self, stack: str) -> list[tuple[str, ...]]:
        with self._lock:
            return list(self.stacks[stack].applied)

    def commands(self, name: str) -> list[list[str]]:
        """The recorded calls of one command, e.g. "up" or "config set"."""
        with self._lock:
            return [c for c in self.calls if _command(c)[0] == name]

    # -- the CLI ------------------------------------------------------------------------------------
    def run(
        self,
        args: list[str],
        cwd: str,
        additional_env: Mapping[str, str],
        on_output: _cmd.OnOutput | None = None,
        on_error: _cmd.OnOutput | None = None,
    ) -> _cmd.CommandResult:
        # As the real run(): every command is non-interactive, the flag goes before any "--".
        sep = args.index("--") if "--" in args else len(args)
        if "--non-interactive" not in args[:sep]:
            args.insert(0, "--non-interactive")
        if self.missing:
            raise FileNotFoundError(2, "No such file or directory", "pulumi")
        command, flags, values = _command(args)
        with self._lock:
            self.calls.append(list(args))
            self.runs.append(Run(list(args), cwd, dict(additional_env)))
            started = self._started.get(command)
            gate = self._holds.get(command)
        if started is not None:
            started.release()
        if gate is not None and not gate.wait(self.hold_timeout_s):
            raise TimeoutError(f"scripted pulumi: {command!r} held for more than {self.hold_timeout_s} s")
        stack = flags.get("--stack")
        stdout = ""
        with self._lock:
            failure = self._take_failure(command, stack)
            if failure is None:
                stdout, failure = self._answer(command, flags, values, stack, cwd)
            if failure is not None and command in ("up", "refresh") and stack in self.stacks:
                self._record(self.stacks[stack], "update" if command == "up" else "refresh", {}, ok=False)
        if failure is not None:
            result = _cmd.CommandResult(stdout=failure.stdout, stderr=failure.stderr, code=failure.code)
            for line in failure.stdout.splitlines():
                if on_output:
                    on_output(line)
            for line in failure.stderr.splitlines():
                if on_error:
                    on_error(line)
            raise auto_errors.create_command_error(result)
        for line in stdout.splitlines():
            if on_output:
                on_output(line)
        return _cmd.CommandResult(stdout=stdout, stderr="", code=0)

    def _take_failure(self, command: str, stack: str | None) -> Failure | None:
        for scripted in self._failures:
            if scripted.command == command and scripted.stack in (None, stack):
                scripted.times -= 1
                if scripted.times <= 0:
                    self._failures.remove(scripted)
                return scripted.failure
        return None

    def _answer(
        self, command: str, flags: dict[str, str], values: list[str], stack: str | None, cwd: str
    ) -> tuple[str, Failure | None]:
        if command == "version":
            return f"v{self.version}", None
        if not self.logged_in:
            return "", Failure(NOT_LOGGED_IN)
        if command == "whoami":
            return json.dumps({"user": "gpuburst-ci", "url": "file://~", "organizations": []}), None
        if command == "stack ls":
            return json.dumps([{"name": n, "current": n == self.current} for n in sorted(self.stacks)]), None
        if command == "stack init":
            name = values[0]
            if name in self.stacks:
                return "", Failure(f"error: stack '{name}' already exists")
            self.stacks[name] = StackState(name)
            self.current = name
            return f"Created stack '{name}'", None
        if stack is None:
            return "", Failure(f"error: scripted pulumi: {command!r} without --stack")
        st = self.stacks.get(stack)
        if st is None:
            return "", Failure(f"error: no stack named '{stack}' found")
        if command == "stack select":
            self.current = stack
            return "", None
        if command in ("config set", "config set-all", "config rm"):
            stdout, failure = self._config_write(st, command, flags, values)
            _write_settings(Path(cwd) / f"Pulumi.{stack}.yaml", st.config)
            return stdout, failure
        config = st.config
        if "--config-file" in flags:
            config = _read_settings(Path(flags["--config-file"]))
        if command == "config get":
            key = values[0]
            if key not in st.config:
                return "", Failure(f"error: configuration key '{key}' not found for stack '{stack}'")
            value, secret = st.config[key]
            return json.dumps({"value": value, "secret": secret}), None
        if command == "config":
            return json.dumps({k: {"value": v, "secret": s} for k, (v, s) in st.config.items()}), None
        if command == "stack output":
            return json.dumps(st.outputs), None
        if command == "stack history":
            return json.dumps(list(reversed(st.history))[: int(flags.get("--page-size", "0")) or None]), None
        if command == "up":
            return self._up(st, config)
        if command == "refresh":
            return self._refresh(st, config, run_program=flags.get("--run-program") == "true"), None
        return "", Failure(f'error: unknown command "{command}" for "pulumi"')

    @staticmethod
    def _config_write(
        st: StackState, command: str, flags: dict[str, str], values: list[str]
    ) -> tuple[str, Failure | None]:
        if command == "config set":
            st.config[values[0]] = (values[1], "--secret" in flags)
            return "", None
        if command == "config set-all":
            for pair in flags.get("--plaintext-all", "").split("\0"):
                if pair:
                    key, _, value = pair.partition("=")
                    st.config[key] = (value, False)
            return "", None
        st.config.pop(values[0], None)  # config rm
        return "", None

    def _up(self, st: StackState, config: Mapping[str, tuple[str, bool]]) -> tuple[str, Failure | None]:
        raw = config.get(NODES_KEY, ("[]", False))[0]
        try:
            nodes = json.loads(raw)
        except json.JSONDecodeError as exc:
            return "", Failure(f"error: gpuburst:nodes: not JSON: {exc}")
        if nodes != sorted(set(nodes)):
            return "", Failure(f"error: gpuburst:nodes must be sorted and unique, got {raw}")
        changes = {"create": 0, "delete": 0, "same": 0}
        for node in [n for n in st.resources if n not in nodes]:
            self.cloud[st.resources.pop(node)["instance_id"]] = "terminated"
            changes["delete"] += 1
        for node in nodes:
            if node in st.resources:
                changes["same"] += 1
                continue
            self._seq += 1
            instance_id = f"i-{self._seq:017x}"
            self.cloud[instance_id] = self.launch_state
            st.resources[node] = {
                "instance_id": instance_id,
                "private_ip": f"10.42.{self._seq // 250}.{self._seq % 250 + 4}",
                "state": self.launch_state,
            }
            changes["create"] += 1
        st.outputs = self._outputs(st)
        st.applied.append(tuple(nodes))
        self._record(st, "update", changes, ok=True, config=config)
        return f"Updating ({st.name}):\nResources:\n    {sum(changes.values())} total\n", None

    def _refresh(self, st: StackState, config: Mapping[str, tuple[str, bool]], *, run_program: bool) -> str:
        changes = {"same": 0, "update": 0, "delete": 0}
        for node, res in list(st.resources.items()):
            cloud = self.cloud.get(res["instance_id"])
            if cloud is None or cloud == "terminated":
                del st.resources[node]
                changes["delete"] += 1
            elif cloud != res["state"]:
                res["state"] = cloud
                changes["update"] += 1
            else:
                changes["same"] += 1
        if run_program:
            st.outputs = self._outputs(st)
        self._record(st, "refresh", changes, ok=True, config=config)
        return f"Refreshing ({st.name}):\nResources:\n    {sum(changes.values())} total\n"

    @staticmethod
    def _outputs(st: StackState) -> dict[str, Any]:
        return {"nodes": {node: dict(res) for node, res in sorted(st.resources.items())}}

    def _record(
        self,
        st: StackState,
        kind: str,
        changes: Mapping[str, int],
        *,
        ok: bool,
        config: Mapping[str, tuple[str, bool]] | None = None,
    ) -> None:
        start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=len(st.history))
        st.history.append(
            {
                "kind": kind,
                "startTime": start.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "endTime": (start + dt.timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "message": "",
                "environment": {"exec.kind": "auto.local"},
                "config": {k: {"value": v, "secret": s} for k, (v, s) in (config or st.config).items()},
                "result": "succeeded" if ok else "failed",
                "version": len(st.history) + 1,
                "resourceChanges": {k: v for k, v in changes.items() if v},
            }
        )


def _read_settings(path: Path) -> dict[str, tuple[str, bool]]:
    """A stack settings file's config as the CLI hands it to a program: structured values as JSON."""
    document = yaml.safe_load(path.read_text()) or {}
    config: dict[str, tuple[str, bool]] = {}
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            config[key] = (str(value["secure"]), True)
        elif isinstance(value, list | dict):
            config[key] = (json.dumps(value), False)
        else:
            config[key] = (str(value), False)
    return config


def _write_settings(path: Path, config: Mapping[str, tuple[str, bool]]) -> None:
    """What `pulumi config set` does to the stack settings file in the project directory."""
    document = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    document["config"] = {k: {"secure": v} if s else v for k, (v, s) in config.items()}
    path.write_text(yaml.safe_dump(document, sort_keys=False))


# Flags that take a value (so the value is not taken for a positional argument).
_VALUED = {
    "--stack",
    "--color",
    "--exec-kind",
    "--page-size",
    "--page",
    "--message",
    "--event-log",
    "--client",
    "--parallel",
    "--secrets-provider",
    "--config-file",
    "--target",
    "--exclude",
    "--replace",
    "--policy-pack",
    "--policy-pack-config",
}
_COMMANDS = ("stack output", "stack history", "stack select", "stack init", "stack ls", "stack rm")
_CONFIG = ("config set-all", "config set", "config get", "config rm")


def _command(args: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """Split CLI arguments into (command, flags, positional values); values after "--" are positional."""
    flags: dict[str, str] = {}
    words: list[str] = []
    plain: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            words.extend(args[i + 1 :])
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if eq:
                flags[name] = value
            elif name in _VALUED and i + 1 < len(args):
                flags[name] = args[i + 1]
                i += 1
            elif name == "--plaintext" and i + 1 < len(args) and "=" in args[i + 1]:
                # config set-all --plaintext key=value ...
                plain.append(args[i + 1])
                i += 1
            else:
                flags[name] = "true"
        else:
            words.append(arg)
        i += 1
    if plain:
        flags["--plaintext-all"] = "\0".join(plain)
    text = " ".join(words)
    for name in (*_CONFIG, *_COMMANDS):
        if text == name or text.startswith(name + " "):
            return name, flags, words[len(name.split()) :]
    if words and words[0] == "config" and len(words) == 1:
        return "config", flags, []
    return (words[0] if words else ""), flags, words[1:]
