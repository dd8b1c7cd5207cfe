"""Bad input to the CLI is one line naming what and where, exit status 2, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.app import cli
from controller.sim import scenario
from tests.support import prom


def _local_config(tmp_path: Path, **api: Any) -> Path:
    data = {
        "workloads": [{"name": "w", "gpu_rps": 6, "service_time_s": 0.15, "slo_s": 1.0, "private_gpus": 1}],
        "pools": [
            {
                "name": "local",
                "gpus_per_node": 1,
                "price_per_hour": 1.0,
                "boot_s": 5,
                "max_nodes": 1,
                "adapter": {"kind": "local", "worker_command": ["sleep", "60"]},
            }
        ],
        "prometheus": {"url": f"http://127.0.0.1:{prom.free_port()}", "timeout_s": 0.2, "retries": 0},
        "store": {"path": str(tmp_path / "store.db")},
        "api": api,
    }
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("gpuburst: error: ")
    return err


def test_a_non_utf8_config_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"workloads: \xff\xfe\n")
    err = _one_line_error(capsys, ["run", "--config", str(path), "--once"])
    assert str(path) in err and "not UTF-8" in err


def test_a_non_utf8_scenario_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"name: \xe9t\xe9\n")
    err = _one_line_error(capsys, ["simulate", "--scenario", str(path)])
    assert str(path) in err and "not UTF-8" in err


def test_a_non_utf8_trace_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(scenario.resolve("flash-crowd").read_text())
    data["trace"] = "t.csv"
    (tmp_path / "t.csv").write_bytes(b"t_seconds,requests\n0,1\n1,\xff\n")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    err = _one_line_error(capsys, ["simulate", "--scenario", str(path)])
    assert "t.csv" in err and "not UTF-8" in err


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_an_unwritable_json_path_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    target = tmp_path
    if where == "under a file":
        (tmp_path / "plain").write_text("")
        target = tmp_path / "plain" / "out.json"
    with pytest.raises(SystemExit) as exc:
        cli.main(["simulate", "--scenario", "flash-crowd", "--json", str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert str(target) in err[-1] and "Traceback" not in "".join(err)


def test_once_refuses_a_missing_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "tokens.json"
    path = _local_config(tmp_path, listen="127.0.0.1:0", tokens_file=str(missing))
    err = _one_line_error(capsys, ["run", "--config", str(path), "--once"])
    assert str(missing) in err and "cannot read the API token file" in err


def test_an_admin_port_in_use_names_the_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _local_config(tmp_path, listen=f"127.0.0.1:{port}")
        err = _one_line_error(capsys, ["run", "--config", str(path)])
    assert f"127.0.0.1:{port}" in err and "api.listen" in err
