"""The Grafana example (examples/grafana): dashboards, provisioning, compose wiring.

Dashboards are checked as Grafana reads them (schema version, unique ids and
uids, datasource variables, template variables) and their PromQL against the
metric names the agent really exposes: the names come from a Prometheus
exposition produced in process by the metrics code (as in
test_metrics_export.py), never from a list kept here. Whether each query
returns data is tests/kernel/test_dashboards_promql.py's job. LogQL cannot be
run here (no Loki): its shape is checked, no more.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from otel_linnix.config import load_config
from otel_linnix.export.settings import resolve_export
from otel_linnix.sources.base import SourceStats
from tests.dashboards import (
    BUILTIN_VARIABLES,
    DASHBOARD_DIR,
    EXAMPLE_DIR,
    Query,
    iter_panels,
    label_values_query,
    load_dashboards,
    metric_names,
    queries,
    strip_display_fallback,
    variable_refs,
    variables,
)
from tests.unit.test_metrics_export import MetricsStack

REPO = EXAMPLE_DIR.parent.parent
COMPOSE = EXAMPLE_DIR / "docker-compose.yml"
PROMETHEUS_YML = EXAMPLE_DIR / "prometheus" / "prometheus.yml"
COLLECTOR_YAML = EXAMPLE_DIR / "otel-collector.yaml"
PROVISIONING = EXAMPLE_DIR / "grafana" / "provisioning"
DASHBOARDS = load_dashboards()
# Grafana 11.2 (the pinned image) writes 39; older files are migrated on load.
SCHEMA_VERSIONS = range(36, 40)
GRID_COLUMNS = 24
# Panels that show a picture of their own data and need no unit.
UNITLESS = frozenset({"row", "logs", "table", "text"})


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _all_queries() -> list[Query]:
    return [q for board in DASHBOARDS.values() for q in queries(board)]


def _prometheus_queries() -> list[Query]:
    return [q for q in _all_queries() if q.language == "prometheus"]


def _query_ids(found: list[Query]) -> list[str]:
    return [q.where() for q in found]


# ---- the metric names the agent exposes ---------------------------------------------------


@pytest.fixture(scope="module")
def exposed_names(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Sample names of a /metrics exposition with every instrument holding data.

    The replayed recording gives processes, exits and lifetimes; an alert
    raised and one firing, export counters of a signal and the kernel's loss
    counters (a replay loses nothing, the kernel source always reports them)
    fill in the rest.
    """
    stack = MetricsStack(tmp_path_factory.mktemp("exposition"))
    try:
        source = stack.stack.pipeline.source
        replayed = source.stats

        def with_losses() -> SourceStats:
            lost = {kind: 0 for kind in ("fork", "exec", "exit", "oom_kill")}
            return dataclasses.replace(replayed(), lost=lost)

        source.stats = with_losses  # type: ignore[method-assign]
        stack.telemetry.record_alert("fork_storm", "high", "firing")
        stack.alerts.append({"rule": "fork_storm", "severity": "high", "subject": {}})
        stack.telemetry.export_stats = {"logs": lambda: {"failed": 0, "dropped": 0}}
        response = stack.scrape()
        assert response.status_code == 200
        names = {
            sample.name
            for family in text_string_to_metric_families(response.data.decode())
            for sample in family.samples
        }
        yield names
    finally:
        stack.close()


def test_the_exposition_has_every_instrument(exposed_names: set[str]) -> None:
    # Guards the fixture: with an instrument missing, the name check below
    # would wrongly fail a dashboard that reads it.
    for name in (
        "linnix_alerts_total",
        "linnix_alerts_firing",
        "linnix_export_failures_total",
        "linnix_export_dropped_total",
        "linnix_events_lost_total",
        "linnix_process_lifetime_seconds_bucket",
        "target_info",
    ):
        assert name in exposed_names, name


@pytest.mark.parametrize("query", _prometheus_queries(), ids=_query_ids(_prometheus_queries()))
def test_every_metric_a_panel_reads_is_exposed_by_the_agent(
    query: Query, exposed_names: set[str]
) -> None:
    names = metric_names(query.expr)
    assert names, f"no metric name found in {query.expr}"
    assert names <= exposed_names, f"{sorted(names - exposed_names)} are not exposed"


def test_every_query_variable_reads_exposed_metrics(exposed_names: set[str]) -> None:
    for board in DASHBOARDS.values():
        for var in variables(board):
            if var.kind != "query":
                continue
            parsed = label_values_query(var.query)
            assert parsed is not None, f"{board['uid']} ${var.name}: {var.query}"
            selector, _label = parsed
            assert selector is not None, f"{board['uid']} ${var.name} names no metric"
            assert metric_names(selector) <= exposed_names, var.query


def test_the_lexer_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'topk($limit, sum by (le, process_pid) (rate(process_cpu_time_seconds_total{a="b c",'
        ' d=~"$x"}[$__rate_interval])) * on (job, instance) group_left (host_name) '
        'target_info{h="x"}) or label_replace(up, "a", "b", "c", "") or vector(0)'
    )
    assert metric_names(expr) == {"process_cpu_time_seconds_total", "target_info", "up"}
    assert strip_display_fallback("sum(x) or vector(0)") == "sum(x)"
    assert strip_display_fallback("sum(x) or vector(0) + 1") == "sum(x) or vector(0) + 1"


# ---- each dashboard as Grafana reads it ---------------------------------------------------


def test_the_four_dashboards_are_there() -> None:
    uids = {board["uid"] for board in DASHBOARDS.values()}
    assert uids == {
        "otel-linnix-host",
        "otel-linnix-top",
        "otel-linnix-alerts",
        "otel-linnix-fleet",
    }


@pytest.mark.parametrize("path", list(DASHBOARDS), ids=lambda p: p.name)
def test_dashboard_top_level(path: Path) -> None:
    board = DASHBOARDS[path]
    assert isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] in SCHEMA_VERSIONS
    assert isinstance(board["uid"], str) and re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", board["uid"])
    assert board["title"].startswith("otel-linnix / ")
    assert "otel-linnix" in board["tags"]
    assert board["description"]
    # Provisioned dashboards must not carry a database id of another instance.
    assert board.get("id") is None
    assert board["panels"]


def test_uids_and_titles_are_unique_across_dashboards() -> None:
    uids = [board["uid"] for board in DASHBOARDS.values()]
    titles = [board["title"] for board in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("path", list(DASHBOARDS), ids=lambda p: p.name)
def test_panels_have_unique_ids_titles_and_a_place_on_the_grid(path: Path) -> None:
    panels = list(iter_panels(DASHBOARDS[path]["panels"]))
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(set(ids)) == len(ids), f"duplicate panel ids: {sorted(ids)}"
    for panel in panels:
        assert panel["title"], panel["id"]
        pos = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= pos.keys(), panel["title"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= GRID_COLUMNS
        if panel["type"] != "row":
            assert panel.get("description"), f"{panel['title']}: say what the panel answers"
            assert panel.get("targets"), panel["title"]


@pytest.mark.parametrize("path", list(DASHBOARDS), ids=lambda p: p.name)
def test_panels_do_not_overlap(path: Path) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in iter_panels(DASHBOARDS[path]["panels"]):
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


@pytest.mark.parametrize("path", list(DASHBOARDS), ids=lambda p: p.name)
def test_every_panel_reads_its_datasource_from_a_variable(path: Path) -> None:
    board = DASHBOARDS[path]
    by_kind = {v.name: v.query for v in variables(board) if v.kind == "datasource"}
    assert by_kind.get("datasource") == "prometheus"
    for panel in iter_panels(board["panels"]):
        if panel["type"] == "row":
            continue
        source = panel["datasource"]
        match = re.fullmatch(r"\$\{(\w+)\}", source["uid"])
        assert match, f"{panel['title']}: datasource {source} is not a variable"
        assert by_kind.get(match.group(1)) == source["type"], panel["title"]
        if source["type"] == "prometheus":
            assert source == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == source, f"{panel['title']} {target['refId']}"
    for var in variables(board):
        if var.kind == "query":
            assert var.raw["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("path", list(DASHBOARDS), ids=lambda p: p.name)
def test_variables_used_are_defined_and_defined_before_use(path: Path) -> None:
    board = DASHBOARDS[path]
    defined: set[str] = set()
    names = [v.name for v in variables(board)]
    assert len(set(names)) == len(names)
    for var in variables(board):
        used = variable_refs(var.query) - BUILTIN_VARIABLES
        assert used <= defined, f"${var.name} uses {used - defined} before they are defined"
        defined.add(var.name)
    for query in queries(board):
        used = variable_refs(query.expr) | variable_refs(query.datasource.get("uid", ""))
        unknown = used - defined - BUILTIN_VARIABLES
        assert not unknown, f"{query.where()} uses undefined {unknown}"


@pytest.mark.parametrize("path", list(DASHBOARDS), ids=lambda p: p.name)
def test_rates_use_grafana_intervals(path: Path) -> None:
    for query in queries(DASHBOARDS[path]):
        for function, window in re.findall(
            r"\b(rate|irate|increase|delta|deriv)\((?:[^()\[]|\([^()]*\))*\[([^\]]*)\]", query.expr
        ):
            assert window in ("$__rate_interval", "$__range"), f"{query.where()}: {function}"


@pytest.mark.parametrize("path", list(DASHBOARDS), ids=lambda p: p.name)
def test_units_and_legends(path: Path) -> None:
    for panel in iter_panels(DASHBOARDS[path]["panels"]):
        if panel["type"] in UNITLESS:
            continue
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        if panel["type"] == "timeseries":
            assert panel["options"]["legend"]["showLegend"] is True
            for target in panel["targets"]:
                assert target.get("legendFormat"), f"{panel['title']} {target['refId']}"


def test_a_display_fallback_only_on_single_value_panels() -> None:
    for query in _prometheus_queries():
        if strip_display_fallback(query.expr) != query.expr:
            board = next(b for b in DASHBOARDS.values() if b["uid"] == query.dashboard)
            panel = next(p for p in iter_panels(board["panels"]) if p["id"] == query.panel_id)
            assert panel["type"] == "stat", query.where()


def test_logql_is_well_formed() -> None:
    """Loki is not on this machine: the LogQL is checked for shape only."""
    logql = [q for q in _all_queries() if q.language == "loki"]
    assert logql
    for query in logql:
        expr = query.expr
        selector = re.match(r"\{([^}]*)\}", expr)
        assert selector, f"{query.where()}: no stream selector"
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector.group(1))
        # Loki refuses a selector whose every matcher matches the empty string.
        assert any(op == "=" and value for _name, op, value in matchers), expr
        stages = expr[selector.end() :].strip()
        assert stages.startswith("|")
        for stage in stages.split("|")[1:]:
            assert re.fullmatch(r'\s*\w+\s*(=~|!~|!=|=)\s*"[^"]*"\s*', stage), stage
        assert expr.count('"') % 2 == 0


# ---- provisioning and compose -------------------------------------------------------------


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = _yaml(COMPOSE)
    return compose


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def test_compose_mounts_files_of_the_repository() -> None:
    services = _compose()["services"]
    assert {"agent", "otel-collector", "prometheus", "loki", "tempo", "grafana"} <= set(services)
    for name, service in services.items():
        for source, _target in _bind_mounts(service):
            if source.startswith("/"):
                continue  # a host path (/sys/kernel)
            assert (EXAMPLE_DIR / source).exists(), f"{name} mounts missing {source}"
        image = service.get("image", "")
        if "build" not in service:
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin {image!r}"


def test_compose_builds_the_agent_from_the_repository() -> None:
    agent = _compose()["services"]["agent"]
    context = (EXAMPLE_DIR / agent["build"]["context"]).resolve()
    assert context == REPO
    assert (context / agent["build"]["dockerfile"]).is_file()
    assert agent["privileged"] is True
    assert agent["pid"] == "host"
    mounts = dict(_bind_mounts(agent))
    assert mounts.get("/sys/kernel") == "/sys/kernel"
    # The image's entrypoint links kernel headers under /lib/modules: no mount over it.
    assert not [t for t in mounts.values() if t.startswith("/lib/modules")]


def _interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against ``shell``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if shell.get(name):
            return shell[name]
        assert op != ":?", f"compose would refuse to start without {name}: {arg}"
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def test_the_example_agent_configuration_loads() -> None:
    agent = _compose()["services"]["agent"]
    shell = {"LINNIX_API_TOKEN": "example-token"}
    env = {k: _interpolate(str(v), shell) for k, v in agent["environment"].items()}
    config_path = next(s for s, t in _bind_mounts(agent) if t == env["LINNIX_CONFIG"])
    config = load_config(EXAMPLE_DIR / config_path, env)
    assert config.api.bind_address == env["LINNIX_API_BIND_ADDRESS"]
    assert config.api.auth_token == "example-token"
    # Every signal goes to the Collector over gRPC, process spans included.
    settings = resolve_export(config.export, env)
    for signal in (settings.metrics, settings.logs, settings.traces):
        assert signal is not None
        assert signal.protocol == "grpc"
        assert signal.endpoint.startswith("http://otel-collector:")


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_compose_services_reach_each_other_where_the_configs_say() -> None:
    compose = _compose()
    agent_env = compose["services"]["agent"]["environment"]
    collector = _yaml(COLLECTOR_YAML)
    prometheus = _yaml(PROMETHEUS_YML)
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0]
        for job in prometheus["scrape_configs"]
    }
    # Prometheus scrapes the agent's API port and the Collector's prometheus exporter.
    assert targets["linnix"] == f"agent:{_port(agent_env['LINNIX_API_BIND_ADDRESS'])}"
    exporter_port = _port(collector["exporters"]["prometheus"]["endpoint"])
    assert targets["otel-collector"] == f"otel-collector:{exporter_port}"
    # The agent sends OTLP/gRPC to the Collector's gRPC receiver.
    grpc = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert agent_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{_port(grpc)}"
    assert agent_env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    # The token file Prometheus reads is the one its entrypoint writes.
    credentials = prometheus["scrape_configs"][0]["authorization"]["credentials_file"]
    entrypoint = (EXAMPLE_DIR / "prometheus" / "entrypoint.sh").read_text(encoding="utf-8")
    assert f"> {credentials}" in entrypoint
    assert "LINNIX_API_TOKEN" in compose["services"]["prometheus"]["environment"]


def test_collector_pipelines_use_what_is_defined() -> None:
    collector = _yaml(COLLECTOR_YAML)
    used: set[tuple[str, str]] = set()
    for name, pipeline in collector["service"]["pipelines"].items():
        assert name in ("metrics", "logs", "traces")
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in collector[kind], f"{name}: {kind} {component}"
                used.add((kind, component))
    defined = {
        (kind, c) for kind in ("receivers", "processors", "exporters") for c in collector[kind]
    }
    assert defined == used
    assert collector["exporters"]["otlphttp"]["endpoint"] == "http://loki:3100/otlp"
    assert collector["exporters"]["otlp"]["endpoint"].startswith("tempo:")


def test_grafana_provisioning_points_at_the_stack_and_the_dashboards() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = dict(_bind_mounts(grafana))
    sources = _yaml(PROVISIONING / "datasources" / "datasources.yaml")["datasources"]
    by_type = {s["type"]: s for s in sources}
    assert set(by_type) == {"prometheus", "loki", "tempo"}
    assert len({s["uid"] for s in sources}) == len(sources)
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["loki"]["url"] == "http://loki:3100"
    assert by_type["tempo"]["url"] == "http://tempo:3200"
    derived = by_type["loki"]["jsonData"]["derivedFields"][0]
    assert derived["datasourceUid"] == by_type["tempo"]["uid"]
    assert by_type["tempo"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] == by_type["loki"]["uid"]
    providers = _yaml(PROVISIONING / "dashboards" / "dashboards.yaml")["providers"]
    assert len(providers) == 1
    path = providers[0]["options"]["path"]
    assert mounts["./dashboards"] == path
    assert (EXAMPLE_DIR / "dashboards").resolve() == DASHBOARD_DIR
    assert mounts["./grafana/provisioning/datasources"].endswith("/provisioning/datasources")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (DASHBOARD_DIR / Path(home).name).exists()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is absent (prometheus)")
def test_promtool_accepts_the_prometheus_configuration(tmp_path: Path) -> None:
    # credentials_file must exist for promtool: point it at a file of ours.
    token = tmp_path / "token"
    token.write_text("t", encoding="utf-8")
    config = _yaml(PROMETHEUS_YML)
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    promtool = shutil.which("promtool")
    assert promtool is not None
    check = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
