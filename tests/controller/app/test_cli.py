"""The CLI imports only what the command being run needs, and its command table matches the modules."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.app import cli

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("pulumi", "kubernetes", "fastapi", "numpy", "matplotlib", "onnxruntime", "prometheus_api_client")


def _imported_after(argv: list[str]) -> set[str]:
    """Top-level packages loaded by `gpuburst ARGV` in a fresh interpreter."""
    code = (
        "import contextlib, io, json, sys\n"
        "from controller.app import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    cli.main({argv!r})\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize(
    "argv", [["--help"], ["policy", "validate", str(ROOT / "policies" / "burst" / "default.yaml")]]
)
def test_light_commands_import_no_heavy_package(argv: list[str]) -> None:
    loaded = _imported_after(argv)
    assert "controller" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controller", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for name, (_, help_line) in cli.COMMANDS.items():
        assert name in out and help_line.split()[0] in out


def test_command_table_matches_what_modules_register() -> None:
    registered: dict[str, tuple[str, str]] = {}
    for module in dict.fromkeys(m for m, _ in cli.COMMANDS.values()):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        helps = {a.dest: a.help for a in sub._choices_actions}
        registered |= {name: (module, helps[name]) for name in sub.choices}
    assert registered == cli.COMMANDS


def test_a_named_command_gets_its_full_arguments() -> None:
    args = cli.parser(["policy", "validate", "x.yaml"]).parse_args(["policy", "validate", "x.yaml"])
    assert args.file == Path("x.yaml") and callable(args.func)


def test_a_command_whose_extra_is_missing_says_which_extra(capsys: pytest.CaptureFixture[str]) -> None:
    code = (
        "import sys\n"
        "sys.modules['numpy'] = None  # as on a base install without the sim extra\n"
        "from controller.app import cli\n"
        "sys.exit(cli.main(['simulate', '--scenario', 'flash-crowd']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "gpuburst: error: simulate needs numpy: pip install 'gpuburst[sim]'"


def test_every_module_needing_an_extra_is_a_command_module() -> None:
    assert set(cli.EXTRAS) <= {m for m, _ in cli.COMMANDS.values()}


def test_the_base_install_commands_import_no_extra() -> None:
    """`run`, `policy` and `bench-tick` work with none of the sim or workload extras installed."""
    extras = ("numpy", "matplotlib", "tqdm", "onnx", "onnxruntime", "PIL", "jsonpatch", "h11", "botocore")
    base = sorted({m for name, (m, _) in cli.COMMANDS.items() if m not in cli.EXTRAS})
    code = (
        "import importlib, sys\n"
        f"for name in {extras!r}:\n"
        "    sys.modules[name] = None\n"
        f"for module in {base!r}:\n"
        "    importlib.import_module(module)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "controller.app.live" in base
