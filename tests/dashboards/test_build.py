"""The committed dashboards and rules are what the code generates, and the dashboards are well formed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dashboards import build, panels

GENERATED = build.outputs()
DASHBOARDS = build.dashboards()


@pytest.mark.parametrize("relative", sorted(GENERATED))
def test_committed_file_is_what_the_code_generates(relative: str) -> None:
    committed = build.HERE / relative
    assert committed.is_file(), f"{relative} is not committed: run python -m dashboards.build"
    assert committed.read_text(encoding="utf-8") == GENERATED[relative], (
        f"{relative} differs from the code: run python -m dashboards.build and commit the result"
    )


def test_nothing_else_is_published() -> None:
    """The workload stack turns every *.json and *rules*.y*ml under dashboards/ into a ConfigMap."""
    published = {
        str(p.relative_to(build.HERE))
        for pattern in ("*.json", "*rules*.y*ml")
        for p in build.HERE.rglob(pattern)
        if "__pycache__" not in p.parts
    }
    assert published == set(GENERATED)


def test_cli_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build.main([str(tmp_path), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err

    assert build.main([str(tmp_path)]) == 0
    assert build.main([str(tmp_path), "--check"]) == 0

    rules = tmp_path / "rules" / "gpuburst-rules.yaml"
    rules.write_text(rules.read_text() + "# hand edit\n")
    assert build.main([str(tmp_path), "--check"]) == 1


def test_generation_is_deterministic() -> None:
    assert build.outputs() == GENERATED


def _panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in model["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


@pytest.mark.parametrize("relative", sorted(DASHBOARDS))
def test_dashboard_structure(relative: str) -> None:
    model = DASHBOARDS[relative]
    assert model["uid"] and len(model["uid"]) <= 40
    variables = model["templating"]["list"]
    assert variables[0]["type"] == "datasource" and variables[0]["query"] == "prometheus"
    for v in variables[1:]:
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert v["includeAll"] and v["allValue"] == ".*"

    all_panels = _panels(model)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)) and 0 not in ids
    titles = [p["title"] for p in all_panels if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "panel titles name panels in the README: keep them unique"
    for p in all_panels:
        if p["type"] == "row":
            continue
        where = f"{relative}: {p['title']}"
        assert p["description"], where
        assert p["fieldConfig"]["defaults"]["unit"], where
        assert p["datasource"]["uid"] == "${datasource}", where
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, where
        ref_ids = [t["refId"] for t in p["targets"]]
        assert ref_ids == [chr(ord("A") + i) for i in range(len(ref_ids))], where
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", where
            assert t["expr"].strip(), where


def test_panels_do_not_overlap() -> None:
    for relative, model in DASHBOARDS.items():
        taken: dict[tuple[int, int], str] = {}
        for p in model["panels"]:
            pos = p["gridPos"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in taken, f"{relative}: {p['title']} overlaps {taken[(x, y)]}"
                    taken[(x, y)] = p["title"]


def test_legend_helper() -> None:
    assert panels.legend("pool", "status") == "{{pool}} {{status}}"
    assert panels.legend("workload", suffix="demand") == "{{workload}} demand"


def test_json_round_trips() -> None:
    for relative, text in GENERATED.items():
        if relative.endswith(".json"):
            assert json.loads(text) == DASHBOARDS[relative]
