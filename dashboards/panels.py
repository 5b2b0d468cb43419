"""The few panel shapes shmq's dashboards use, on top of grafana-foundation-sdk's builders.

Every panel queries the dashboard's ``$datasource`` variable, so an imported
dashboard works with whatever the Prometheus data source is called.
"""

from __future__ import annotations

import json

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
GRID_WIDTH = 24


def datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def label_variable(name: str, label: str, query: str, *, multi: bool) -> db.QueryVariable:
    """A variable listing the values of a label; multi-valued ones get an "All" that matches anything."""
    variable = (
        db.QueryVariable(name).label(label).query(query).datasource(DATASOURCE)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC).multi(multi)
    )
    return variable.include_all(True).all_value(".*") if multi else variable


def query(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False,
          fmt: pm.PromQueryFormat | None = None) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(expr).ref_id(ref).legend_format(legend)
    if instant:
        target = target.instant()
    return target.format(fmt) if fmt else target


def _with_targets(panel, targets: list[prometheus.Dataquery]):
    """Attach targets, naming them A, B, C... in order."""
    for i, target in enumerate(targets):
        panel = panel.with_target(target.ref_id(chr(ord("A") + i)))
    return panel


def _common(panel, title: str, description: str, targets, width: int, height: int):
    return _with_targets(panel.title(title).description(description).datasource(DATASOURCE)
                         .span(width).height(height), targets)


def timeseries_panel(title: str, description: str, unit: str, targets: list[prometheus.Dataquery], *,
                     width: int = 12, height: int = 8) -> timeseries.Panel:
    legend = (cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE).placement(cm.LegendPlacement.BOTTOM)
              .show_legend(True).calcs(["mean", "max", "lastNotNull"]))
    panel = (timeseries.Panel().unit(unit).fill_opacity(10).legend(legend)
             .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    return _common(panel, title, description, targets, width, height)


# Override properties that draw a limit (such as ring capacity) as a dashed line without fill.
DASHED_LIMIT = [dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0)]


def wait_heatmap(title: str, description: str, bucket_rates: str, *, width: int = 12,
                 height: int = 8) -> heatmap.Panel:
    """A heatmap of pre-bucketed histogram rates (``sum by (le) (rate(..._bucket[...]))``)."""
    panel = (
        heatmap.Panel().calculate(False)
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges")
               .scale(hm.HeatmapColorScale.EXPONENTIAL).exponent(0.5).steps(64))
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE))
        .cell_values(heatmap.CellValues().unit("reqps"))
        .show_tooltip().show_y_histogram().show_legend()
    )
    targets = [query(bucket_rates, "{{le}}", fmt=pm.PromQueryFormat.HEATMAP)]
    return _common(panel, title, description, targets, width, height)


def value_mappings(codes: dict[int, tuple[str, str]]) -> list[dm.ValueMapping]:
    """Numbers shown as words with a colour: {code: (text, colour)}."""
    return [dm.ValueMap(options={str(code): dm.ValueMappingResult(text=text, color=color, index=i)
                                 for i, (code, (text, color)) in enumerate(sorted(codes.items()))})]


def state_timeline_panel(title: str, description: str, targets: list[prometheus.Dataquery],
                         codes: dict[int, tuple[str, str]], *, width: int = 12,
                         height: int = 8) -> statetimeline.Panel:
    panel = (statetimeline.Panel().mappings(value_mappings(codes)).show_value(cm.VisibilityMode.AUTO)
             .merge_values(True).row_height(0.9).fill_opacity(80)
             .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS)))
    return _common(panel, title, description, targets, width, height)


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (the base colour)."""
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=value, color=color) for value, color in steps])


def stat_panel(title: str, description: str, unit: str, targets: list[prometheus.Dataquery],
               levels: db.ThresholdsConfig, *, width: int = 6, height: int = 4) -> stat.Panel:
    panel = (stat.Panel().unit(unit).thresholds(levels).color_mode(cm.BigValueColorMode.BACKGROUND)
             .graph_mode(cm.BigValueGraphMode.AREA)
             .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    return _common(panel, title, description, targets, width, height)


def table_panel(title: str, description: str, targets: list[prometheus.Dataquery], *,
                transformations: list[dm.DataTransformerConfig], overrides: list[tuple[str, list]],
                sort_by: str, width: int = GRID_WIDTH, height: int = 8) -> table.Panel:
    panel = table.Panel().sort_by([cb.TableSortByFieldState().display_name(sort_by).desc(True)])
    for transformation in transformations:
        panel = panel.with_transformation(transformation)
    for name, properties in overrides:
        panel = panel.override_by_name(name, properties)
    return _common(panel, title, description, targets, width, height)


def render(dashboard: db.Dashboard) -> str:
    """The dashboard as stable, pretty JSON, with panel ids numbered in layout order."""
    model = dashboard.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"


def loads(text: str) -> dict:
    return json.loads(text)
