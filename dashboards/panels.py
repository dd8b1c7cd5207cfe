"""The few panel shapes our dashboards use, over grafana-foundation-sdk builders.

Keeping them here gives every dashboard the same conventions: the `$datasource` variable on every query,
reference ids A, B, C..., legends built from label names, unique panel ids and the SDK's grid layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog import builder as cog_builder
from grafana_foundation_sdk.cog import variants as cog_variants
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

DATASOURCE_VAR = "datasource"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VAR}}}")
"""Every query and variable reads the Prometheus the viewer picked, so one JSON works on any Grafana."""

GREEN, YELLOW, RED, BLUE = "green", "yellow", "red", "blue"


def legend(*labels: str, suffix: str = "") -> str:
    """A legend format such as `{{pool}} {{status}} demand` (Grafana's `{{label}}` syntax)."""
    parts = [f"{{{{{label}}}}}" for label in labels]
    return " ".join([*parts, suffix] if suffix else parts)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    """Empty: Grafana's automatic legend (the series' labels)."""


@dataclass(frozen=True)
class Override:
    """Field config for the series whose display name matches `regexp` (e.g. a budget line)."""

    regexp: str
    properties: Mapping[str, object]


def dashed_line(color: str) -> Mapping[str, object]:
    """An unstacked, unfilled dashed line: a limit drawn over stacked series."""
    return {
        "custom.stacking": {"mode": "none", "group": "A"},
        "custom.fillOpacity": 0,
        "custom.lineStyle": {"fill": "dash", "dash": [10, 10]},
        "color": {"mode": "fixed", "fixedColor": color},
    }


def right_axis(unit: str, label: str) -> Mapping[str, object]:
    return {"unit": unit, "custom.axisPlacement": "right", "custom.axisLabel": label}


def _targets(queries: Sequence[Query], *, instant: bool) -> list[cog_builder.Builder[cog_variants.Dataquery]]:
    out: list[cog_builder.Builder[cog_variants.Dataquery]] = []
    for i, q in enumerate(queries):
        target = prom_b.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        target = target.legend_format(q.legend or "__auto")
        out.append(target.instant() if instant else target.range())
    return out


def _steps(thresholds: Iterable[tuple[float | None, str]]) -> dash_b.ThresholdsConfig:
    steps = [dash_m.Threshold(value=v, color=c) for v, c in thresholds]
    return dash_b.ThresholdsConfig().mode(dash_m.ThresholdsMode.ABSOLUTE).steps(steps)


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    bars: bool = False,
    min_value: float | None = 0,
    limits: Sequence[tuple[float, str]] = (),
    overrides: Sequence[Override] = (),
) -> ts_b.Panel:
    """A time series; `limits` draws dashed threshold lines (an SLO, an alert's threshold)."""
    panel = (
        ts_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=False))
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(40 if stacked or bars else 10)
        .line_width(1)
        .draw_style(common_m.GraphDrawStyle.BARS if bars else common_m.GraphDrawStyle.LINE)
        .stacking(
            common_b.StackingConfig().mode(
                common_m.StackingMode.NORMAL if stacked else common_m.StackingMode.NONE
            )
        )
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common_m.LegendDisplayMode.TABLE)
            .placement(common_m.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common_m.TooltipDisplayMode.MULTI)
            .sort(common_m.SortOrder.DESCENDING)
        )
    )
    if min_value is not None:
        panel = panel.min(min_value)
    if limits:
        panel = panel.thresholds(_steps([(None, GREEN), *limits])).thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common_m.GraphThresholdsStyleMode.DASHED)
        )
    for o in overrides:
        props = [dash_m.DynamicConfigValue(id_val=k, value=v) for k, v in o.properties.items()]
        panel = panel.override_by_regexp(o.regexp, props)
    return panel


def stat(
    title: str,
    description: str,
    query: Query,
    *,
    unit: str,
    thresholds: Sequence[tuple[float | None, str]] = ((None, BLUE),),
    mappings: Mapping[str, tuple[str, str]] | None = None,
    no_value: str | None = None,
    width: int = 4,
    height: int = 4,
) -> stat_b.Panel:
    """A single current value, coloured by `thresholds`; `mappings` turn exact values into words and
    `no_value` is shown when there is no series or the value is NaN (a budget that is not set)."""
    panel = (
        stat_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([query], instant=True))
        .unit(unit)
        .span(width)
        .height(height)
        .thresholds(_steps(thresholds))
        .color_mode(common_m.BigValueColorMode.BACKGROUND)
        .graph_mode(common_m.BigValueGraphMode.NONE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    maps: list[dash_m.ValueMapping] = []
    if mappings:
        options = {
            value: dash_m.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(mappings.items())
        }
        maps.append(dash_m.ValueMap(options=options))
    if no_value is not None:
        panel = panel.no_value(no_value)
        nan = dash_m.DashboardSpecialValueMapOptions(
            match=dash_m.SpecialValueMatch.NULL_AND_NAN,
            result=dash_m.ValueMappingResult(text=no_value, index=len(maps)),
        )
        maps.append(dash_m.SpecialValueMap(options=nan))
    return panel.mappings(maps) if maps else panel


class Board:
    """A dashboard being laid out: rows and panels in reading order, each with its own id."""

    def __init__(self, builder: dash_b.Dashboard) -> None:
        self.builder = builder
        self._next_id = 1

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def row(self, title: str) -> None:
        self.builder.with_row(dash_b.Row(title).id(self._id()))

    def add(self, *panels: ts_b.Panel | stat_b.Panel) -> None:
        for p in panels:
            self.builder.with_panel(p.id(self._id()))


def dashboard(*, uid: str, title: str, description: str, tags: Sequence[str]) -> dash_b.Dashboard:
    """A dashboard with our defaults and the `$datasource` variable first."""
    return (
        dash_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(list(tags))
        .editable()
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .with_variable(dash_b.DatasourceVariable(DATASOURCE_VAR).label("Data source").type("prometheus"))
    )


def label_variable(name: str, label: str, *, metric: str, description: str) -> dash_b.QueryVariable:
    """A multi-select of one label's values on `metric`, All by default (as the regex `.*`)."""
    return (
        dash_b.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {name})")
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dash_m.VariableOption(selected=True, text="All", value="$__all"))
    )
