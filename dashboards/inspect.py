"""Read generated dashboards back: every PromQL expression, ready to send to a real Prometheus.

Used by the tests (promtool syntax check, evaluation against a live server) and
handy for checking the dashboards against your own Prometheus before importing.
"""

from __future__ import annotations

import dataclasses
import re

_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


@dataclasses.dataclass(frozen=True)
class Expression:
    where: str  #: "panel title / refId", "annotation name" or "variable name"
    expr: str  #: PromQL with Grafana template variables still in it


@dataclasses.dataclass(frozen=True)
class LabelValuesQuery:
    """A template variable's ``label_values(selector, label)`` query (Grafana syntax, not PromQL)."""

    variable: str
    selector: str
    label: str


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def expressions(dashboard: dict) -> list[Expression]:
    """Every PromQL expression of the panels and annotations."""
    found = [Expression(f"{panel['title']} / {target['refId']}", target["expr"])
             for panel in _panels(dashboard.get("panels") or []) for target in panel.get("targets") or []
             if "expr" in target]
    found += [Expression(f"annotation {a['name']}", a["expr"])
              for a in dashboard.get("annotations", {}).get("list", []) if "expr" in a]
    return found


def label_values_queries(dashboard: dict) -> list[LabelValuesQuery]:
    result = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            match = _LABEL_VALUES.match(variable["query"])
            if not match:
                raise ValueError(f"variable {variable['name']}: not a label_values() query: {variable['query']!r}")
            result.append(LabelValuesQuery(variable["name"], match["selector"], match["label"]))
    return result


def fill(text: str, values: dict[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` as Grafana would; an unknown variable raises KeyError."""
    return _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], text)
