"""The Grafana example's dashboards as data: panels, queries, template variables.

Shared by tests/unit/test_grafana_dashboards.py (structure, names) and
tests/kernel/test_dashboards_promql.py (every query against a real Prometheus
scraping a real agent). Nothing here knows a panel by name: whatever the
dashboards hold is what gets checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_VARIABLES",
    "DASHBOARD_DIR",
    "EXAMPLE_DIR",
    "Query",
    "Variable",
    "iter_panels",
    "label_values_query",
    "load_dashboards",
    "metric_names",
    "queries",
    "strip_display_fallback",
    "substitute",
    "variable_refs",
    "variables",
]

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "grafana"
DASHBOARD_DIR = EXAMPLE_DIR / "dashboards"

# Grafana's own variables: $__rate_interval, $__range, ${__data.fields.x}, ...
BUILTIN_VARIABLES = frozenset(
    {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}
)

# $name, ${name}, ${name:format}, [[name]]; ${__data.fields.x} and the like are
# Grafana's and never reach a query.
_VARIABLE = re.compile(
    r"\$\{([A-Za-z0-9_.]+)(?::[A-Za-z]+)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]"
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# Label lists after these words name labels, not metrics.
_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])")
_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
        "group_right", "offset", "bool", "atan2", "inf", "nan",
    }
)  # fmt: skip
# `... or vector(0)` at the end of a stat panel's query: shows 0 instead of "No
# data" when there is nothing to count. Tests check the part before it.
_DISPLAY_FALLBACK = re.compile(r"\s+or\s+vector\(\s*0\s*\)\s*$")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$"
)


@dataclass(frozen=True)
class Query:
    """One query of one panel."""

    dashboard: str  # the dashboard's uid
    panel_id: int
    panel: str  # the panel's title
    ref_id: str
    datasource: Mapping[str, Any]
    expr: str
    instant: bool

    @property
    def language(self) -> str:
        return str(self.datasource.get("type", ""))

    def where(self) -> str:
        return f"{self.dashboard} panel {self.panel_id} {self.panel!r} query {self.ref_id}"


@dataclass(frozen=True)
class Variable:
    """One template variable; ``query`` is the PromQL of a query variable."""

    name: str
    kind: str
    query: str
    raw: Mapping[str, Any]

    @property
    def include_all(self) -> bool:
        return bool(self.raw.get("includeAll"))

    @property
    def all_value(self) -> str | None:
        value = self.raw.get("allValue")
        return str(value) if value is not None else None


def load_dashboards(folder: Path = DASHBOARD_DIR) -> dict[Path, dict[str, Any]]:
    """Every dashboard JSON of the folder, by path."""
    return {
        path: json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))
    }


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels a collapsed row holds."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Every query of every panel (a target's own datasource wins over its panel's)."""
    found: list[Query] = []
    for panel in iter_panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if not isinstance(expr, str):
                continue
            found.append(
                Query(
                    dashboard=str(dashboard.get("uid")),
                    panel_id=int(panel["id"]),
                    panel=str(panel.get("title", "")),
                    ref_id=str(target.get("refId", "")),
                    datasource=target.get("datasource") or panel.get("datasource") or {},
                    expr=expr,
                    instant=bool(target.get("instant")),
                )
            )
    return found


def variables(dashboard: Mapping[str, Any]) -> list[Variable]:
    """The template variables, in their order (later ones may use earlier ones)."""
    out: list[Variable] = []
    for raw in (dashboard.get("templating") or {}).get("list") or []:
        query = raw.get("query", "")
        if isinstance(query, Mapping):  # Grafana 10+ may store {"query": ..., "refId": ...}
            query = query.get("query", "")
        out.append(Variable(str(raw["name"]), str(raw["type"]), str(query), raw))
    return out


def variable_refs(text: str) -> set[str]:
    """Names of the template variables ``text`` uses."""
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(text)}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every variable replaced by its value (KeyError for unknown ones)."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return values[name]

    return _VARIABLE.sub(one, text)


def strip_display_fallback(expr: str) -> str:
    """``expr`` without a trailing ``or vector(0)``, the part a test must see return data."""
    return _DISPLAY_FALLBACK.sub("", expr)


def metric_names(promql: str) -> set[str]:
    """Metric names a PromQL expression reads (by a small lexer, not a full parser).

    String literals, label matchers, range selectors and the label lists of
    ``by``/``on``/... are dropped; what remains is functions (followed by a
    parenthesis), keywords and metric names.
    """
    text = _VARIABLE.sub("1", _STRING.sub('""', promql))
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(1)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function call or an operator
        names.add(word)
    return names


def label_values_query(query: str) -> tuple[str | None, str] | None:
    """(series selector or None, label) of ``label_values(...)``, else None."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        return None
    return match.group(1), match.group(2)
