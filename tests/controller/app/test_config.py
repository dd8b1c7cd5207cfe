"""The controller config: the shipped examples load, and bad files fail naming the file and the field."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.app import config
from controller.core import model
from controller.runtime import auth, errors

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "workloads": [
            {"name": "face-compare", "gpu_rps": 25, "service_time_s": 0.06, "slo_s": 0.5, "private_gpus": 2}
        ],
        "pools": [
            {
                "name": "spot",
                "gpus_per_node": 1,
                "price_per_hour": 0.4,
                "boot_s": 240,
                "max_nodes": 4,
                "adapter": {"kind": "pulumi"},
            }
        ],
        "kubernetes": {},
    }
    data.update(overrides)
    return data


def _load(tmp_path: Path, data: Any) -> config.Loaded:
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(data))
    return config.load(path)


def test_the_shipped_examples_load() -> None:
    aws = config.load(EXAMPLES / "aws.yaml")
    assert [p.name for p in aws.setup().pools] == ["aws-g5-spot", "aws-g5-ondemand"]
    assert aws.setup().pools[0] == model.PoolSpec(
        "aws-g5-spot", gpus_per_node=1, price_per_hour=0.45, boot_s=240, max_nodes=8, spot=True
    )
    assert aws.config.leader_election.enabled and aws.config.api.address() == ("0.0.0.0", 8080)
    assert aws.path(aws.config.pools[0].adapter.work_dir) == EXAMPLES.parent  # type: ignore[union-attr]
    local = config.load(EXAMPLES / "local.yaml")
    assert local.config.adapter_kind == "local" and local.config.kubernetes is None
    assert local.policy.name == "local" and local.policy.trend_window_s == 60
    assert local.store_path == EXAMPLES.parent / ".gpuburst" / "local.db"


def test_defaults_fill_a_minimal_file(tmp_path: Path) -> None:
    loaded = _load(tmp_path, _minimal())
    c = loaded.config
    assert c.tick_interval_s == 15 and c.api.listen == "127.0.0.1:8080"
    assert c.prometheus.url == "http://127.0.0.1:9090"
    assert loaded.policy.name == "default"
    assert loaded.store_path == tmp_path / "gpuburst.db"
    queries = c.prometheus_adapter_config().queries("face-compare")
    assert queries.selector == 'job="face-compare"'


def test_a_workload_selector_reaches_the_prometheus_adapter(tmp_path: Path) -> None:
    data = _minimal()
    data["workloads"][0]["prometheus"] = {"selector": 'app="fc", placement!="x"', "window": "30s"}
    q = _load(tmp_path, data).config.prometheus_adapter_config().queries("face-compare")
    assert (q.selector, q.window) == ('app="fc", placement!="x"', "30s")
    assert 'app="fc", placement!="x"' in q.render()["rate"]


def test_a_workload_timeout_reaches_the_workload(tmp_path: Path) -> None:
    data = _minimal()
    data["workloads"][0].update(timeout_s=10)
    assert _load(tmp_path, data).setup().workloads[0].timeout_s == 10


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["workloads"][0].update(pods={"port": 9000}), "workloads.0.pods: unknown field"),
        (lambda d: d.update(surge_interval_s=1), "surge_interval_s: unknown field"),
        (lambda d: d.update(tick_interval=5), "tick_interval: unknown field"),
        (
            lambda d: d["pools"][0].update(max_nodes=-1),
            "pools.0.max_nodes: Input should be greater than or equal to 0",
        ),
        (
            lambda d: d["pools"][0].update(min_nodes=5),
            "pools.0: Value error, min_nodes (5) is above max_nodes (4)",
        ),
        (
            lambda d: d["pools"][0].update(name="Spot_1"),
            "pools.0.name: Value error, 'Spot_1' is not a DNS label",
        ),
        (
            lambda d: d["pools"][0]["adapter"].update(kind="gcp"),
            "pools.0.adapter: Input tag 'gcp' found using 'kind'",
        ),
        (lambda d: d["pools"][0]["adapter"].update(stak="x"), "pools.0.adapter.pulumi.stak: unknown field"),
        (lambda d: d["workloads"][0].pop("gpu_rps"), "workloads.0.gpu_rps: Field required"),
        (
            lambda d: d["workloads"][0].update(prometheus={"selector": "job=face"}),
            "workloads.0.prometheus.selector: Value error, 'job=face' is not a list of PromQL label matchers",
        ),
        (lambda d: d.update(workloads=[]), "workloads: List should have at least 1 item"),
        (lambda d: d.update(workloads=d["workloads"] * 2), "duplicate name(s) ['face-compare']"),
        (lambda d: d.pop("kubernetes"), "kubernetes: required with pulumi pools"),
        (lambda d: d.update(api={"listen": "8080"}), "api.listen: Value error, '8080' is not host:port"),
        (lambda d: d.update(prometheus={"url": "prometheus:9090"}), "prometheus.url: Value error"),
        (
            lambda d: d.update(leader_election={"enabled": True, "renew_deadline_s": 20}),
            "leader_election: Value error, need retry_period_s < renew_deadline_s < lease_duration_s",
        ),
        (
            lambda d: d["pools"].append(
                {
                    "name": "lap",
                    "gpus_per_node": 1,
                    "price_per_hour": 0,
                    "boot_s": 1,
                    "max_nodes": 1,
                    "adapter": {"kind": "local"},
                }
            ),
            "pools: every pool uses one adapter kind",
        ),
    ],
)
def test_bad_fields_are_named_with_their_path(tmp_path: Path, mutate: Any, message: str) -> None:
    data = _minimal()
    mutate(data)
    with pytest.raises(errors.UserError) as caught:
        _load(tmp_path, data)
    text = str(caught.value)
    assert text.startswith(str(tmp_path / "controller.yaml") + ": ")
    assert message in text


def test_a_budget_that_cannot_pay_for_min_nodes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tight.yaml").write_text("budget_usd_per_hour: 1.0\n")
    data = _minimal(policy_file="tight.yaml")
    data["pools"][0].update(min_nodes=3)
    with pytest.raises(
        errors.UserError, match=r"min_nodes cost 1\.20 USD/h, above the policy budget of 1\.00"
    ):
        _load(tmp_path, data)


def test_the_policy_file_is_found_next_to_the_config_and_its_errors_name_it(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("target_utilization: 2\n")
    with pytest.raises(errors.UserError, match=r"p\.yaml: target_utilization: Input should be less than"):
        _load(tmp_path, _minimal(policy_file="p.yaml"))
    with pytest.raises(errors.UserError, match=r"missing\.yaml: cannot read policy file"):
        _load(tmp_path, _minimal(policy_file="missing.yaml"))


def test_unreadable_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(errors.UserError, match=r"nope\.yaml: cannot read config file"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("workloads: [\n")
    with pytest.raises(errors.UserError, match=r"bad\.yaml: not valid YAML"):
        config.load(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(errors.UserError, match=r"bad\.yaml: a config is a mapping of fields, got list"):
        config.load(bad)


def test_first_start_creates_one_admin_token_stored_hashed(tmp_path: Path) -> None:
    loaded = _load(tmp_path, _minimal(api={"listen": "127.0.0.1:0"}, store={"path": "state/g.db"}))
    tokens = loaded.api_tokens()
    secret = tmp_path / "state" / "admin-token"
    token = secret.read_text().strip()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state" / "api-tokens.json").stat().st_mode) == 0o600
    assert token not in (tmp_path / "state" / "api-tokens.json").read_text()
    assert tokens.check(token) == auth.Principal("admin", auth.Role.ADMIN) and len(tokens) == 1
    secret.unlink()  # the operator keeps it elsewhere: never written again
    assert loaded.api_tokens().check(token) is not None and not secret.exists()


def test_a_configured_token_file_is_used_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    viewer = auth.add_token(path, "grafana", auth.Role.VIEWER)
    loaded = _load(tmp_path, _minimal(api={"tokens_file": "tokens.json"}))
    assert loaded.api_tokens().check(viewer) == auth.Principal("grafana", auth.Role.VIEWER)
    assert not (tmp_path / "admin-token").exists()
    with pytest.raises(errors.UserError, match="a token named 'grafana' exists already"):
        auth.add_token(path, "grafana", auth.Role.ADMIN)
    path.write_text('{"tokens": [{"name": "x", "role": "root", "sha256": "00"}]}')
    with pytest.raises(errors.UserError, match=r"tokens\.json: .*tokens\.0\.role"):
        loaded.api_tokens()
    with pytest.raises(errors.UserError, match="tls_cert_file and tls_key_file go together"):
        _load(tmp_path, _minimal(api={"tls_cert_file": "c.pem"}))
