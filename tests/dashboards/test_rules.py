"""The alert rules: promtool unit tests of the important alerts, and what every alert must carry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.core import lifecycle
from dashboards import build, rules
from tests.dashboards import promtool

UNIT_TESTS = Path(__file__).with_name("rules_test.yaml")
ALERTS = {a.alert: a for a in rules.alerts()}
_DURATION = re.compile(r"^\d+[smh]$")


def _with_descriptions(doc: dict[str, Any], rules_file: Path) -> dict[str, Any]:
    doc["rule_files"] = [str(rules_file)]
    for test in doc["tests"]:
        for series in test["input_series"]:
            # YAML reads an unquoted `0x30` as the hexadecimal 48, not "0 thirty times"
            assert isinstance(series["values"], str), f"quote the values of {series['series']}"
        for case in test.get("alert_rule_test", []):
            for alert in case["exp_alerts"]:
                alert["exp_annotations"]["description"] = ALERTS[case["alertname"]].description
    return doc


def test_alert_unit_tests(tmp_path: Path) -> None:
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    tested = {case["alertname"] for t in doc["tests"] for case in t.get("alert_rule_test", [])}
    assert tested <= set(ALERTS), tested - set(ALERTS)
    assert len(tested) >= 12
    path = tmp_path / "rules_test.yaml"
    path.write_text(yaml.safe_dump(_with_descriptions(doc, build.HERE / rules.RULES_FILE), sort_keys=False))
    result = promtool.run("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_fail_when_an_alert_misbehaves(tmp_path: Path) -> None:
    """The standby tests against rules whose leader filter is gone must fail: the standby's series fire."""
    text = build.outputs()[rules.RULES_FILE]
    broken = text.replace(" and on (job, instance) (gpuburst_leader == 1)", "")
    assert broken != text
    rules_path = tmp_path / "broken-rules.yaml"
    rules_path.write_text(broken)
    doc = _with_descriptions(yaml.safe_load(UNIT_TESTS.read_text()), rules_path)
    doc["tests"] = [t for t in doc["tests"] if "standby" in t["name"]]
    assert len(doc["tests"]) == 3
    path = tmp_path / "rules_test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = promtool.run("test", "rules", str(path))
    assert result.returncode != 0
    for alert in ("GpuburstNotTicking", "GpuburstMetricsStale", "GpuburstBudgetBinding"):
        assert f"alertname: {alert}," in result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_carries_what_the_operator_needs(name: str) -> None:
    alert = ALERTS[name]
    assert re.fullmatch(r"(FaceCompare|Gpuburst)[A-Z][A-Za-z0-9]+", name)
    assert _DURATION.match(alert.for_), "every alert waits before firing"
    assert alert.severity in ("critical", "warning")
    assert alert.summary and len(alert.summary) <= 160
    assert "{{" not in alert.description, "descriptions are static: values belong in the summary"
    assert len(alert.description) >= 120, "say what to look at and what to do"


def test_rule_names_are_unique_and_recordings_follow_the_convention() -> None:
    names = [getattr(r, "alert", None) or getattr(r, "record", None) for g in rules.groups() for r in g.rules]
    assert len(names) == len(set(names))
    for g in rules.groups():
        for r in g.rules:
            if isinstance(r, rules.Record):
                assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", r.record), r.record


def _minutes(duration: str) -> float:
    assert duration.endswith("m")
    return float(duration[:-1])


def test_node_windows_outlast_the_lifecycle_timeouts() -> None:
    """A window shorter than the timeout would fire while the lifecycle is still waiting as designed."""
    timeouts = lifecycle.Timeouts()
    assert _minutes(rules.PROVISION_WINDOW) * 60 > timeouts.boot_s
    assert _minutes(rules.RELEASE_WINDOW) * 60 > timeouts.drain_s


def test_readme_explains_every_alert_and_panel() -> None:
    readme = (build.HERE / "README.md").read_text(encoding="utf-8")
    missing = [name for name in ALERTS if name not in readme]
    for relative, model in build.dashboards().items():
        for p in model["panels"]:
            if p["type"] != "row" and p["title"] not in readme:
                missing.append(f"{relative}: {p['title']}")
    assert missing == []
