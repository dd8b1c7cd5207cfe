"""The Pulumi capacity adapter through the real Automation API code, against a scripted CLI.

`Stack`, `LocalWorkspace` and the SDK's error classes are the real ones: the scripted `PulumiCommand`
only plays the binary, so argument building and error recognition are what production runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pulumi import automation as auto
from pulumi.automation import errors as auto_errors

from controller.adapters import pulumi_stack
from controller.core import lifecycle, model
from controller.ports.clock import FakeClock
from controller.runtime import errors
from tests.support import scripted_pulumi as sp

QUICK = pulumi_stack.Backoff(0.01, 0.02)
SETTLE_S = 5.0


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Pulumi.yaml").write_text("name: gpuburst\nruntime: python\nmain: stacks/\n")
    return tmp_path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def cli() -> sp.ScriptedPulumi:
    return sp.ScriptedPulumi(stacks=("spot", "ondemand"))


class Applies:
    """Collects apply results and lets a test wait for the n-th."""

    def __init__(self) -> None:
        self.results: list[pulumi_stack.ApplyResult] = []
        self.cond = threading.Condition()

    def __call__(self, result: pulumi_stack.ApplyResult) -> None:
        with self.cond:
            self.results.append(result)
            self.cond.notify_all()

    def wait(self, n: int) -> list[pulumi_stack.Verdict]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.results) >= n, timeout=SETTLE_S), self.results
            return [r.outcome.verdict for r in self.results]


@pytest.fixture
def applies() -> Applies:
    return Applies()


@pytest.fixture
def capacity(
    project: Path, clock: FakeClock, cli: sp.ScriptedPulumi, applies: Applies
) -> Iterator[pulumi_stack.PulumiCapacity]:
    cap = pulumi_stack.PulumiCapacity(
        ["spot", "ondemand"],
        clock=clock,
        work_dir=project,
        config_dir=project / "state",
        pulumi_command=cli,
        lock_backoff=QUICK,
        failure_backoff=pulumi_stack.Backoff(60.0, 60.0),
        on_apply=applies,
    )
    yield cap
    cap.close(timeout_s=SETTLE_S)


def settle(cap: pulumi_stack.PulumiCapacity, pool: str = "spot") -> model.PoolState:
    assert cap.wait_settled(pool, timeout_s=SETTLE_S)
    return cap.state(pool)


# -- start-up ---------------------------------------------------------------------------------------
def test_start_selects_each_stack_and_reads_its_outputs(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    assert cli.commands("whoami")
    assert [c[-1] for c in cli.commands("stack select")] == ["spot", "ondemand"]
    assert {c[-1] for c in cli.commands("stack output")} == {"spot", "ondemand"}
    state = capacity.state("spot")
    assert state == model.PoolState(pool="spot", instances={}, submitted=None, apply=model.ApplyState.IDLE)


def test_commands_run_in_the_project_with_each_pools_environment(project: Path, clock: FakeClock) -> None:
    cli = sp.ScriptedPulumi(stacks=("spot", "ondemand"))
    with pulumi_stack.PulumiCapacity(
        ["spot", "ondemand"],
        clock=clock,
        work_dir=project,
        config_dir=project / "state",
        pulumi_command=cli,
        env_vars={"AWS_REGION": "us-east-1"},
        pool_env={"ondemand": {"AWS_PROFILE": "od-account"}},
    ) as cap:
        cap.submit("ondemand", ("n1",))
        settle(cap, "ondemand")
    assert {run.cwd for run in cli.runs} == {str(project)}
    by_stack = {run.args[run.args.index("--stack") + 1]: run.env for run in cli.runs if "up" in run.args}
    assert by_stack["ondemand"]["AWS_PROFILE"] == "od-account"
    assert by_stack["ondemand"]["AWS_REGION"] == "us-east-1"
    spot_env = [run.env for run in cli.runs if run.args[-1] == "spot"]
    assert spot_env and all(env.get("AWS_PROFILE") is None for env in spot_env)
    assert len(cli.commands("whoami")) == 2, "each environment's login is checked"
    with pytest.raises(errors.UserError, match=r"unknown pools \['gpu-x'\]"):
        pulumi_stack.PulumiCapacity(
            ["spot"],
            clock=clock,
            work_dir=project,
            config_dir=project / "state",
            pulumi_command=cli,
            pool_env={"gpu-x": {}},
        )


def test_start_adopts_instances_already_in_the_stack(project: Path, clock: FakeClock) -> None:
    cli = sp.ScriptedPulumi(stacks=("spot",))
    with pulumi_stack.PulumiCapacity(
        ["spot"], clock=clock, work_dir=project, config_dir=project / "state", pulumi_command=cli
    ) as cap:
        cap.submit("spot", ("n1", "n2"))
        settle(cap)
    with pulumi_stack.PulumiCapacity(
        ["spot"], clock=clock, work_dir=project, config_dir=project / "state", pulumi_command=cli
    ) as again:
        state = again.state("spot")
        assert state.instances == {"n1": "running", "n2": "running"}
        assert state.submitted is None, "a restarted controller has submitted nothing yet"


def test_missing_cli_is_a_start_up_error_naming_it(
    project: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The real PulumiCommand, looking for `pulumi` on a PATH that has none.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(errors.UserError, match=r"`pulumi` CLI was not found.*PATH"):
        pulumi_stack.PulumiCapacity(["spot"], clock=clock, work_dir=project, config_dir=project / "state")


def test_not_logged_in_is_a_start_up_error_saying_how_to_log_in(project: Path, clock: FakeClock) -> None:
    cli = sp.ScriptedPulumi(stacks=("spot",), logged_in=False)
    with pytest.raises(errors.UserError, match=r"not logged in.*pulumi login.*PULUMI_ACCESS_TOKEN"):
        pulumi_stack.PulumiCapacity(
            ["spot"], clock=clock, work_dir=project, config_dir=project / "state", pulumi_command=cli
        )


def test_missing_stack_is_a_start_up_error_naming_pool_stack_and_fix(project: Path, clock: FakeClock) -> None:
    cli = sp.ScriptedPulumi(stacks=("spot",))
    with pytest.raises(errors.UserError) as err:
        pulumi_stack.PulumiCapacity(
            {"spot": "spot", "ondemand": "od-east"},
            clock=clock,
            work_dir=project,
            config_dir=project / "state",
            pulumi_command=cli,
        )
    assert "pool 'ondemand'" in str(err.value)
    assert "stack 'od-east'" in str(err.value)
    assert "pulumi stack init od-east" in str(err.value)


def test_create_stacks_initialises_a_missing_stack(project: Path, clock: FakeClock) -> None:
    cli = sp.ScriptedPulumi()
    with pulumi_stack.PulumiCapacity(
        ["spot"],
        clock=clock,
        work_dir=project,
        config_dir=project / "state",
        pulumi_command=cli,
        create_stacks=True,
    ) as cap:
        assert cli.commands("stack init") and "spot" in cli.stacks
        assert cap.state("spot").instances == {}


def test_missing_passphrase_is_a_start_up_error(project: Path, clock: FakeClock) -> None:
    cli = sp.ScriptedPulumi(stacks=("spot",))
    cli.fail("stack output", sp.PASSPHRASE)
    with pytest.raises(errors.UserError, match=r"pool 'spot'.*PULUMI_CONFIG_PASSPHRASE"):
        pulumi_stack.PulumiCapacity(
            ["spot"], clock=clock, work_dir=project, config_dir=project / "state", pulumi_command=cli
        )


def test_no_project_file_is_a_start_up_error_naming_the_directory(tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(errors.UserError, match=f"no Pulumi.yaml in {tmp_path}"):
        pulumi_stack.PulumiCapacity(
            ["spot"],
            clock=clock,
            work_dir=tmp_path,
            config_dir=tmp_path / "state",
            pulumi_command=sp.ScriptedPulumi(stacks=("spot",)),
        )


def test_the_repository_root_is_the_default_project() -> None:
    assert (pulumi_stack.IMPORT_ROOT / "controller" / "adapters" / "pulumi_stack").is_dir()
    assert (pulumi_stack.IMPORT_ROOT / "Pulumi.yaml").is_file()


# -- apply ------------------------------------------------------------------------------------------
def test_submit_sets_sorted_nodes_config_then_up_and_reads_the_outputs(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    capacity.submit("spot", ("n1", "n2"))
    state = settle(capacity)
    assert state.instances == {"n1": "running", "n2": "running"}
    assert state.submitted == ("n1", "n2")
    assert state.apply is model.ApplyState.IDLE
    assert cli.commands("config set") == [], "the node set never goes to the project's stack file"
    up = cli.commands("up")[-1]
    assert {"--yes", "--skip-preview"} <= set(up)
    assert up[up.index("--stack") + 1] == "spot"
    config_file = Path(up[up.index("--config-file") + 1])
    assert config_file == capacity.config_dir / "Pulumi.spot.yaml"
    assert yaml.safe_load(config_file.read_text())["config"]["gpuburst:nodes"] == ["n1", "n2"]
    assert cli.stacks["spot"].history[-1]["config"]["gpuburst:nodes"] == {
        "value": '["n1", "n2"]',
        "secret": False,
    }
    inst = capacity.instances("spot")["n1"]
    assert inst.instance_id is not None and inst.instance_id.startswith("i-")
    assert inst.private_ip is not None and inst.private_ip.startswith("10.42.")
    assert capacity.state("ondemand").instances == {}, "pools are separate stacks"


HUMAN = """\
# The person's config: comments, order and secrets stay as written.
encryptionsalt: v1:Zm9vYmFy:v1:c2FsdA==:Y2lwaGVy
config:
  aws:region: eu-west-1
  gpuburst:kind: pool
  gpuburst:nodes: []   # the controller passes its own set
  gpuburst:instanceType: g5.xlarge
  gpuburst:joinSecretArn: arn:aws:secretsmanager:eu-west-1:123456789012:secret:gpuburst/join-AbCdEf
  gpuburst:kubernetesVersion: "1.33"
  # The pool account's key, if not from the environment: ciphertext under the stack's passphrase.
  aws:secretKey:
    secure: v1:AAAABBBBCCCC
"""


def test_an_apply_leaves_the_committed_stack_file_byte_for_byte(
    project: Path, clock: FakeClock, cli: sp.ScriptedPulumi
) -> None:
    committed = project / "Pulumi.spot.yaml"
    committed.write_text(HUMAN)
    with pulumi_stack.PulumiCapacity(
        ["spot"], clock=clock, work_dir=project, config_dir=project / "state", pulumi_command=cli
    ) as cap:
        cap.submit("spot", ("n1", "n2"))
        assert settle(cap, "spot").instances == {"n1": "running", "n2": "running"}
        assert cap.refresh("spot").error == ""
        own = yaml.safe_load((project / "state" / "Pulumi.spot.yaml").read_text())

    assert committed.read_text() == HUMAN
    assert sorted(p.name for p in project.iterdir()) == ["Pulumi.spot.yaml", "Pulumi.yaml", "state"]
    # What the CLI ran with: the person's keys, salt and ciphertext as written, plus the node set.
    assert own["encryptionsalt"] == "v1:Zm9vYmFy:v1:c2FsdA==:Y2lwaGVy"
    assert own["config"] == {**yaml.safe_load(HUMAN)["config"], "gpuburst:nodes": ["n1", "n2"]}
    assert cli.stacks["spot"].applied == [("n1", "n2")]
    [refresh] = cli.commands("refresh")
    assert refresh[refresh.index("--config-file") + 1] == str(project / "state" / "Pulumi.spot.yaml")


def test_a_person_editing_the_stack_file_is_seen_by_the_next_apply(
    project: Path, clock: FakeClock, cli: sp.ScriptedPulumi
) -> None:
    committed = project / "Pulumi.spot.yaml"
    committed.write_text(HUMAN)
    with pulumi_stack.PulumiCapacity(
        ["spot"], clock=clock, work_dir=project, config_dir=project / "state", pulumi_command=cli
    ) as cap:
        cap.submit("spot", ("n1",))
        settle(cap, "spot")
        committed.write_text(HUMAN.replace("g5.xlarge", "g5.2xlarge"))
        cap.submit("spot", ("n1", "n2"))
        settle(cap, "spot")

    config = cli.stacks["spot"].history[-1]["config"]
    assert config["gpuburst:instanceType"]["value"] == "g5.2xlarge"
    assert config["gpuburst:nodes"]["value"] == '["n1", "n2"]'


def test_shrinking_the_set_removes_only_the_dropped_node(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    capacity.submit("spot", ("n1", "n2", "n3"))
    settle(capacity)
    kept = capacity.instances("spot")["n1"].instance_id
    capacity.submit("spot", ("n1", "n3"))
    assert settle(capacity).instances == {"n1": "running", "n3": "running"}
    assert capacity.instances("spot")["n1"].instance_id == kept


def test_submit_never_blocks_and_the_latest_set_wins(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    cli.hold("up")
    capacity.submit("spot", ("a",))
    assert cli.started("up").acquire(timeout=SETTLE_S)
    # An apply is in flight: these return at once and replace each other.
    capacity.submit("spot", ("a", "b"))
    capacity.submit("spot", ("a", "b", "c"))
    state = capacity.state("spot")
    assert state.apply is model.ApplyState.BUSY
    assert state.submitted == ("a", "b", "c")
    assert state.instances == {}, "outputs are those of before the running apply"
    cli.release("up")
    state = settle(capacity)
    assert cli.applied("spot") == [("a",), ("a", "b", "c")], "the intermediate set is skipped"
    assert set(state.instances) == {"a", "b", "c"}
    assert state.apply is model.ApplyState.IDLE


def test_state_is_busy_from_submit_until_the_apply_is_done(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    capacity.submit("spot", ("a",))
    settle(capacity)
    cli.hold("up")
    capacity.submit("spot", ())
    # Between submit and the end of the apply "a" is still in the stack and nothing may conclude otherwise.
    assert capacity.state("spot").apply is model.ApplyState.BUSY
    assert cli.started("up").acquire(timeout=SETTLE_S)
    assert capacity.state("spot").apply is model.ApplyState.BUSY
    cli.release("up")
    state = settle(capacity)
    assert state.instances == {} and state.apply is model.ApplyState.IDLE


def test_unsorted_or_repeated_nodes_are_refused(capacity: pulumi_stack.PulumiCapacity) -> None:
    with pytest.raises(ValueError, match="sorted and unique"):
        capacity.submit("spot", ("b", "a"))
    with pytest.raises(ValueError, match="sorted and unique"):
        capacity.submit("spot", ("a", "a"))


def test_unknown_pool_is_a_key_error_naming_the_pools(capacity: pulumi_stack.PulumiCapacity) -> None:
    with pytest.raises(KeyError, match=r"unknown pool 'gpu-x'.*ondemand.*spot"):
        capacity.state("gpu-x")


# -- error mapping through the real Stack code --------------------------------------------------------
def _real_up_error(project: Path, failure: sp.Failure | str) -> BaseException:
    """Run the SDK's own Stack.up against the scripted CLI and return what it raised."""
    cli = sp.ScriptedPulumi(stacks=("spot",))
    cli.fail("up", failure)
    stack = auto.select_stack(
        "spot", work_dir=str(project), opts=auto.LocalWorkspaceOptions(pulumi_command=cli)
    )
    with pytest.raises(Exception) as err:
        stack.up()
    return err.value


@pytest.mark.parametrize("text", [sp.LOCKED, sp.CONFLICT], ids=["diy-lock", "cloud-409"])
def test_a_locked_stack_raises_concurrent_update_and_maps_to_busy(project: Path, text: str) -> None:
    exc = _real_up_error(project, text)
    assert isinstance(exc, auto_errors.ConcurrentUpdateError)
    outcome = pulumi_stack.classify(exc)
    assert outcome.verdict is pulumi_stack.Verdict.BUSY
    assert "locked" in outcome.message or "in progress" in outcome.message


@pytest.mark.parametrize("code", pulumi_stack.CAPACITY_ERRORS)
def test_capacity_and_quota_errors_map_to_unavailable(project: Path, code: str) -> None:
    exc = _real_up_error(project, sp.insufficient_capacity(code))
    assert type(exc) is auto_errors.CommandError
    outcome = pulumi_stack.classify(exc)
    assert outcome.verdict is pulumi_stack.Verdict.UNAVAILABLE
    assert f"api error {code}" in outcome.message, "the message is the line naming the cloud's refusal"


def test_a_longer_error_code_is_not_taken_for_a_capacity_one(project: Path) -> None:
    exc = _real_up_error(project, sp.generic("error: api error UnsupportedOperation: not for this AMI"))
    assert pulumi_stack.classify(exc).verdict is pulumi_stack.Verdict.FAILED


def test_missing_cloud_credentials_map_to_setup_with_the_fix(project: Path) -> None:
    outcome = pulumi_stack.classify(_real_up_error(project, sp.AWS_CREDENTIALS))
    assert outcome.verdict is pulumi_stack.Verdict.SETUP
    assert "AWS_PROFILE" in outcome.message and "No valid credential sources" in outcome.message


def test_any_other_failure_is_failed_with_the_clis_message(project: Path) -> None:
    exc = _real_up_error(project, sp.generic("error: creating EC2 Launch Template: InvalidAMIID.NotFound"))
    outcome = pulumi_stack.classify(exc)
    assert outcome.verdict is pulumi_stack.Verdict.FAILED
    assert outcome.message == "error: creating EC2 Launch Template: InvalidAMIID.NotFound"


def test_stack_not_found_and_missing_binary_map_to_setup(project: Path) -> None:
    cli = sp.ScriptedPulumi()
    with pytest.raises(auto_errors.StackNotFoundError) as err:
        auto.select_stack("spot", work_dir=str(project), opts=auto.LocalWorkspaceOptions(pulumi_command=cli))
    assert pulumi_stack.classify(err.value) == pulumi_stack.Outcome(
        pulumi_stack.Verdict.SETUP, "error: no stack named 'spot' found"
    )
    gone = sp.ScriptedPulumi(stacks=("spot",), missing=True)
    with pytest.raises(FileNotFoundError) as missing:
        auto.select_stack("spot", work_dir=str(project), opts=auto.LocalWorkspaceOptions(pulumi_command=gone))
    assert pulumi_stack.classify(missing.value).verdict is pulumi_stack.Verdict.SETUP
    assert "`pulumi` CLI was not found" in pulumi_stack.classify(missing.value).message


def test_cli_message_prefers_the_cause_over_the_closing_line() -> None:
    text = str(
        auto.CommandResult(
            stdout="Diagnostics:\n  error: 1 error occurred:\n  * reading AMI: timeout\n"
            "  error: update failed\n",
            stderr="",
            code=255,
        )
    )
    assert pulumi_stack.cli_message(text) == "* reading AMI: timeout"
    assert pulumi_stack.cli_message(str(auto.CommandResult("", "", 137))) == "exit code 137"


# -- outcomes in the pool state ---------------------------------------------------------------------
def test_locked_stack_stays_busy_and_is_retried(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi, applies: Applies
) -> None:
    cli.fail("up", sp.LOCKED, stack="spot", times=2)
    capacity.submit("spot", ("a",))
    assert applies.wait(3) == [pulumi_stack.Verdict.BUSY, pulumi_stack.Verdict.BUSY, pulumi_stack.Verdict.OK]
    state = capacity.state("spot")
    assert state.instances == {"a": "running"} and state.apply is model.ApplyState.IDLE
    assert state.message == ""


def test_a_lock_is_reported_as_busy_with_the_reason(
    project: Path, clock: FakeClock, cli: sp.ScriptedPulumi, applies: Applies
) -> None:
    cli.fail("up", sp.LOCKED, times=1)
    with pulumi_stack.PulumiCapacity(
        ["spot"],
        clock=clock,
        work_dir=project,
        config_dir=project / "state",
        pulumi_command=cli,
        lock_backoff=pulumi_stack.Backoff(60.0, 60.0),
        on_apply=applies,
    ) as cap:
        cap.submit("spot", ("a",))
        applies.wait(1)
        state = cap.state("spot")
        assert state.apply is model.ApplyState.BUSY
        assert "locked" in state.message and "attempt 1" in state.message
        assert state.unavailable_until is None
        # A new set during the lock's backoff waits for the backoff too: nothing else is applied.
        cap.submit("spot", ("a", "b"))
        assert not cap.wait_settled("spot", timeout_s=0.05)
        assert len(cli.commands("up")) == 1


def test_insufficient_capacity_fails_the_apply_and_makes_the_pool_unavailable_for_the_ttl(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi, clock: FakeClock
) -> None:
    cli.fail("up", sp.insufficient_capacity("InsufficientInstanceCapacity", node="a"), stack="spot")
    capacity.submit("spot", ("a",))
    state = settle(capacity)
    assert state.apply is model.ApplyState.FAILED
    assert "InsufficientInstanceCapacity" in state.message
    assert state.unavailable_until == clock.now() + 180.0
    assert capacity.state("ondemand").unavailable_until is None, "only that pool"
    clock.advance(179.0)
    assert capacity.state("spot").unavailable_until is not None
    clock.advance(1.0)
    assert capacity.state("spot").unavailable_until is None


def test_only_a_launch_ends_the_unavailability_early(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi, clock: FakeClock
) -> None:
    capacity.submit("spot", ("a",))
    settle(capacity)
    cli.fail("up", sp.insufficient_capacity(node="b"))
    capacity.submit("spot", ("a", "b"))
    until = settle(capacity).unavailable_until
    assert until is not None
    capacity.submit("spot", ())  # a release succeeds: it proves nothing about capacity
    state = settle(capacity)
    assert state.apply is model.ApplyState.IDLE and state.unavailable_until == until
    capacity.submit("spot", ("c",))  # a launch succeeds: capacity is back
    assert settle(capacity).unavailable_until is None


def test_a_failed_apply_is_failed_with_the_message_and_a_new_set_goes_at_once(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi, applies: Applies
) -> None:
    cli.fail("up", sp.generic("error: creating EC2 Launch Template: InvalidAMIID.NotFound"))
    capacity.submit("spot", ("a",))
    state = settle(capacity)
    assert state.apply is model.ApplyState.FAILED
    assert state.message == "error: creating EC2 Launch Template: InvalidAMIID.NotFound"
    assert state.unavailable_until is None
    capacity.submit("spot", ())  # the lifecycle dropped the failed node: no 60 s backoff to wait out
    state = settle(capacity)
    assert state.apply is model.ApplyState.IDLE and state.message == ""
    assert applies.wait(2) == [pulumi_stack.Verdict.FAILED, pulumi_stack.Verdict.OK]


def test_a_failed_apply_is_retried_without_a_new_set(
    project: Path, clock: FakeClock, cli: sp.ScriptedPulumi, applies: Applies
) -> None:
    # A release that failed must not wait for the desired set to change: the node would bill on.
    with pulumi_stack.PulumiCapacity(
        ["spot"],
        clock=clock,
        work_dir=project,
        config_dir=project / "state",
        pulumi_command=cli,
        failure_backoff=QUICK,
        on_apply=applies,
    ) as cap:
        cap.submit("spot", ("a",))
        settle(cap)
        cli.fail("up", sp.generic("error: deleting EC2 Instance: RequestLimitExceeded"))
        cap.submit("spot", ())
        assert applies.wait(3)[1:] == [pulumi_stack.Verdict.FAILED, pulumi_stack.Verdict.OK]
        assert cap.state("spot").instances == {}
        assert cli.applied("spot") == [("a",), ()]


def test_unreadable_outputs_make_state_raise_rather_than_look_empty(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    capacity.submit("spot", ("a",))
    settle(capacity)
    cli.fail("up", sp.generic("error: connection reset"))
    cli.fail("stack output", "error: could not reach https://api.pulumi.com: connection refused")
    capacity.submit("spot", ("a", "b"))
    assert capacity.wait_settled("spot", timeout_s=SETTLE_S)
    with pytest.raises(RuntimeError, match=r"outputs unreadable.*connection refused"):
        capacity.state("spot")


def test_malformed_nodes_output_is_reported_not_taken_for_no_instances() -> None:
    outputs = {"nodes": auto.OutputValue(["a", "b"], secret=False)}
    with pytest.raises(pulumi_stack.OutputError, match=r"stack 'spot'.*not a map"):
        pulumi_stack.parse_nodes(outputs, stack="spot")
    with pytest.raises(pulumi_stack.OutputError, match="no 'nodes' output"):
        pulumi_stack.parse_nodes({"vpcId": auto.OutputValue("vpc-1", secret=False)}, stack="spot")
    assert pulumi_stack.parse_nodes({}, stack="spot") == {}


def test_apply_results_carry_pool_nodes_outcome_and_duration(
    capacity: pulumi_stack.PulumiCapacity, applies: Applies
) -> None:
    capacity.submit("ondemand", ("x",))
    applies.wait(1)
    result = applies.results[0]
    assert (result.pool, result.nodes, result.outcome.verdict) == (
        "ondemand",
        ("x",),
        pulumi_stack.Verdict.OK,
    )
    assert result.duration_s >= 0.0
    assert any("Updating (ondemand)" in line for line in capacity.output_tail("ondemand"))


# -- refresh ----------------------------------------------------------------------------------------
def test_refresh_reports_a_vanished_instance_and_the_next_sync_fails_its_node(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi, clock: FakeClock
) -> None:
    capacity.submit("spot", ("a", "b"))
    settle(capacity)
    cli.terminate("a")  # a spot interruption
    assert capacity.state("spot").instances == {"a": "running", "b": "running"}, "up alone trusts its state"
    result = capacity.refresh("spot")
    assert result.vanished == ("a",)
    assert result.changes == {"same": 1, "delete": 1} and result.drift == 1
    refresh = cli.commands("refresh")[-1]
    assert "--run-program=true" in refresh and "--skip-preview" in refresh

    records = {
        n: model.NodeRecord(n, "spot", model.NodeStatus.READY, 900.0, 800.0, ready_at=900.0) for n in "ab"
    }
    obs = model.Observation(
        at=clock.now(),
        metrics={},
        cluster={n: model.ClusterNode(n, "spot", ready=True, pods=1) for n in "ab"},
        pools={p: capacity.state(p) for p in capacity.pools},
    )
    new, transitions = lifecycle.sync(records, obs, timeouts=lifecycle.Timeouts())
    assert new["a"].status is model.NodeStatus.FAILED and new["b"].status is model.NodeStatus.READY
    assert [t.node for t in transitions] == ["a"]


def test_refresh_of_a_deleted_instance_and_of_drift(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    capacity.submit("spot", ("a", "b", "c"))
    settle(capacity)
    cli.vanish("b")  # deleted by hand in the console
    cli.set_cloud_state("c", "stopped")
    result = capacity.refresh("spot")
    assert result.vanished == ("b",)
    assert result.changes == {"same": 1, "update": 1, "delete": 1} and result.drift == 2
    assert capacity.state("spot").instances == {"a": "running", "c": "stopped"}
    assert capacity.refresh("spot") == pulumi_stack.RefreshResult("spot", changes={"same": 2})


def test_refresh_failure_is_reported_and_keeps_the_known_instances(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    capacity.submit("spot", ("a",))
    settle(capacity)
    cli.fail("refresh", sp.CONFLICT)
    result = capacity.refresh("spot")
    assert result.vanished == () and "locked" in result.error
    assert capacity.state("spot").instances == {"a": "running"}


def test_refresh_waits_for_a_running_apply(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    cli.hold("up")
    capacity.submit("spot", ("a",))
    assert cli.started("up").acquire(timeout=SETTLE_S)
    done: list[pulumi_stack.RefreshResult] = []
    job = threading.Thread(target=lambda: done.append(capacity.refresh("spot")))
    job.start()
    job.join(0.05)
    assert not done, "a refresh must not run while the stack is being updated"
    cli.release("up")
    job.join(SETTLE_S)
    assert done and done[0].error == "" and done[0].vanished == ()
    assert capacity.state("spot").instances == {"a": "running"}


# -- shutdown ---------------------------------------------------------------------------------------
def test_close_stops_the_workers_and_refuses_new_sets(project: Path, clock: FakeClock) -> None:
    cli = sp.ScriptedPulumi(stacks=("spot",))
    cap = pulumi_stack.PulumiCapacity(
        ["spot"], clock=clock, work_dir=project, config_dir=project / "state", pulumi_command=cli
    )
    workers = [t for t in threading.enumerate() if t.name == "pulumi-apply-spot"]
    assert workers and all(t.daemon for t in workers)
    cap.close(timeout_s=SETTLE_S)
    assert not any(t.is_alive() for t in workers)
    with pytest.raises(RuntimeError, match="closed"):
        cap.submit("spot", ("a",))


# -- guardrails ---------------------------------------------------------------------------------------
def _pool_file(project: Path, **keys: object) -> None:
    config = {**yaml.safe_load(HUMAN)["config"], **{f"gpuburst:{k}": v for k, v in keys.items()}}
    (project / "Pulumi.spot.yaml").write_text(yaml.safe_dump({"config": config}))


def test_every_up_runs_the_guardrail_pack(
    capacity: pulumi_stack.PulumiCapacity, cli: sp.ScriptedPulumi
) -> None:
    capacity.submit("spot", ("n1",))
    settle(capacity)

    up = cli.commands("up")[-1]
    pack = Path(up[up.index("--policy-pack") + 1])
    assert pack == pulumi_stack.POLICY_PACK
    assert (pack / "PulumiPolicy.yaml").is_file() and (pack / "__main__.py").is_file()


@pytest.mark.parametrize(
    ("keys", "nodes", "rule"),
    [
        (
            {"instanceType": "p4d.24xlarge"},
            ("n1",),
            "gpu-instance-types: instance type p4d.24xlarge is not allowed",
        ),
        (
            {},
            tuple(f"n{i:02}" for i in range(9)),
            "max-nodes-per-pool: 9 GPU instances in the stack, more than",
        ),
        (
            {"market": "spot", "spotMaxPrice": "9.99"},
            ("n1",),
            "spot-max-price: spot max price 9.99 USD/h is above",
        ),
        ({"associatePublicIp": True}, ("n1",), "no-public-ips: associatePublicIpAddress must be false"),
    ],
    ids=["instance-type", "max-nodes", "spot-price", "public-ip"],
)
def test_a_desired_state_breaking_a_guardrail_is_refused_before_any_cloud_call(
    project: Path,
    clock: FakeClock,
    cli: sp.ScriptedPulumi,
    applies: Applies,
    keys: dict[str, object],
    nodes: tuple[str, ...],
    rule: str,
) -> None:
    _pool_file(project, **keys)
    with pulumi_stack.PulumiCapacity(
        ["spot"],
        clock=clock,
        work_dir=project,
        config_dir=project / "state",
        pulumi_command=cli,
        failure_backoff=pulumi_stack.Backoff(60.0, 60.0),
        on_apply=applies,
    ) as cap:
        cap.submit("spot", nodes)
        assert applies.wait(1) == [pulumi_stack.Verdict.REFUSED]
        state = cap.state("spot")

    assert cli.commands("up") == [] and cli.commands("config set") == []
    assert not (project / "state" / "Pulumi.spot.yaml").exists(), "nothing was handed to the CLI"
    assert state.apply is model.ApplyState.FAILED
    assert rule in state.message and state.message.startswith("guardrails refused")
    # The decision the lifecycle takes on the requested node carries the rule as its cause.
    rec = model.NodeRecord(nodes[0], "spot", model.NodeStatus.REQUESTED, clock.now(), clock.now())
    obs = model.Observation(at=clock.now(), metrics={}, cluster={}, pools={"spot": state})
    new, [transition] = lifecycle.sync({rec.name: rec}, obs, timeouts=lifecycle.Timeouts())
    assert new[rec.name].status is model.NodeStatus.FAILED
    assert rule in transition.reason


def test_releasing_every_node_is_never_refused(
    project: Path, clock: FakeClock, cli: sp.ScriptedPulumi
) -> None:
    _pool_file(project, instanceType="p4d.24xlarge")

    with pulumi_stack.PulumiCapacity(
        ["spot"], clock=clock, work_dir=project, config_dir=project / "state", pulumi_command=cli
    ) as cap:
        cap.submit("spot", ())
        assert settle(cap).apply is model.ApplyState.IDLE

    assert cli.applied("spot") == [()]
