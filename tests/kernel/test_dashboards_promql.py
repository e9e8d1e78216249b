"""Every PromQL query of every example dashboard returns data (issue acceptance).

A real agent runs on the kernel source with its API on an ephemeral loopback
port and a token, and OTLP export to a port nobody listens on (so the export
failure counters exist and grow, as with a Collector that is down). A real
Prometheus scrapes it every second with the scrape job of
examples/grafana/prometheus/prometheus.yml (its job name, path and bearer
authorization; only the target, the token file and the interval are the
test's). A workload gives every panel something to show: a process holding
most of its file descriptors (a firing fd_exhaustion alert, which also gives it
series of its own), failing and killed runs of the same program, a few hundred
short-lived children with mixed exit statuses and signals, a fork burst
(fork_storm) and, where a cgroup v1 memory controller is mounted, an OOM kill.

Then each dashboard is read as Grafana would: its query variables are asked
of Prometheus in order (label_values through /api/v1/label/<name>/values,
each later one with the earlier ones substituted), a value that exists is
chosen for each (the held program for $executable, fd_exhaustion for $rule,
this host's name for $host), and every panel query runs as an instant query
with $__rate_interval = 1m and $__range = 10m; it must return at least one
series with a number that is not NaN. Variables that offer "All" are tried
with it too. A stat panel's trailing ``or vector(0)`` (a display fallback) is
cut off first, so it cannot hide an empty query.

The alerts dashboard's Loki panel (LogQL) cannot run here: there is no Loki on
this machine. tests/unit/test_grafana_dashboards.py checks its shape.
"""

from __future__ import annotations

import copy
import math
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_linnix.agent import Agent
from otel_linnix.config import ApiConfig, Config, ExportConfig
from tests.dashboards import (
    EXAMPLE_DIR,
    Variable,
    label_values_query,
    load_dashboards,
    queries,
    strip_display_fallback,
    substitute,
    variables,
)
from tests.kernel.oom import memory_cgroup, run_oom_victim, v1_memory_available
from tests.prometheus_server import PrometheusServer, Series, require_prometheus
from tests.unit.api_stack import free_port

pytestmark = pytest.mark.kernel

TOKEN = "dashboards-acceptance-token"
EXAMPLE_JOB = "linnix"
# Grafana's $__rate_interval is four scrape intervals at least; one minute
# covers the whole workload, so every rate has increments inside its window.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "10m",
    "__range_s": "600",
    "__range_ms": "600000",
}
DASHBOARDS = load_dashboards()


def scrape_config(agent_port: int, token_file: Path) -> dict[str, Any]:
    """The example's scrape job for the agent, aimed at the test's agent."""
    example = yaml.safe_load((EXAMPLE_DIR / "prometheus" / "prometheus.yml").read_text())
    job = copy.deepcopy(next(j for j in example["scrape_configs"] if j["job_name"] == EXAMPLE_JOB))
    job["static_configs"] = [{"targets": [f"127.0.0.1:{agent_port}"]}]
    job["authorization"]["credentials_file"] = str(token_file)
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    return {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [job]}


@dataclass
class Workload:
    """What the workload left running, and the names the variables should offer."""

    executable: str
    oom_killed: bool = False
    held: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.held:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def agent(needs_ebpf: None) -> Iterator[Agent]:
    export = ExportConfig(
        endpoint=f"http://127.0.0.1:{free_port()}",
        protocol="grpc",
        timeout_s=1.0,
        metrics_interval_s=1.0,
        logs=True,
        traces=False,
    )
    running = Agent(
        Config(api=ApiConfig(bind_address="127.0.0.1:0", auth_token=TOKEN), export=export)
    )
    running.start()
    yield running
    running.stop(5.0)


@pytest.fixture(scope="module")
def prometheus(
    agent: Agent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    require_prometheus()
    workdir = tmp_path_factory.mktemp("dashboards-prometheus")
    token_file = workdir / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    server = PrometheusServer(workdir, scrape_config(agent.api.port, token_file))
    try:
        server.wait_ready()
        server.wait_query(f'up{{job="{EXAMPLE_JOB}"}} == 1')
        yield server
    finally:
        server.stop()


def _oom_kill() -> bool:
    """A Python process killed by the OOM killer in a 64 MiB v1 memory cgroup."""
    if not v1_memory_available():
        return False
    with memory_cgroup("linnix-dashboards-oom") as cg:
        run_oom_victim(cg)
    return True


@pytest.fixture(scope="module")
def workload(prometheus: PrometheusServer, workloads: dict[str, Path]) -> Iterator[Workload]:
    fdhog = workloads["fdhog"]
    done = Workload(executable=fdhog.name)
    try:
        # Holds 900 of its 1024 descriptors: fd_exhaustion fires and stays firing,
        # and the process it names gets per-pid series.
        done.held.append(subprocess.Popen([str(fdhog), "5000", "900"], stdout=subprocess.DEVNULL))
        # The same program failing (EMFILE: status 1) and killed, spread over a
        # few scrapes so its exit counters and lifetime buckets grow in the window.
        for i in range(6):
            if i % 2:
                run = subprocess.run(
                    [str(fdhog), "100000", "1100"], capture_output=True, check=False
                )
                assert run.returncode == 1, run
            else:
                victim = subprocess.Popen([str(fdhog), "1", "3"], stdout=subprocess.DEVNULL)
                time.sleep(0.1)
                victim.kill()
                victim.wait(10)
            time.sleep(0.6)
        # Short-lived children: exit statuses 0..5 and SIGKILL, SIGTERM, SIGSEGV.
        spawned = subprocess.run(
            [str(workloads["spawner"]), "270", "2", str(workloads["child"]), "dash"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert len(spawned.stdout.splitlines()) == 270
        # A fork burst: fork_storm and runaway_tree.
        subprocess.run(
            [str(workloads["forker"]), "5000"], stdout=subprocess.DEVNULL, timeout=60, check=True
        )
        done.oom_killed = _oom_kill()
        _wait_for_every_kind_of_data(prometheus, done)
        yield done
    finally:
        done.stop()


def _wait_for_every_kind_of_data(prometheus: PrometheusServer, done: Workload) -> None:
    exe = done.executable
    prometheus.wait_query('linnix_alerts_firing{linnix_alert_rule="fd_exhaustion"}')
    prometheus.wait_query('linnix_alerts_total{linnix_alert_rule="fork_storm"} > 0')
    prometheus.wait_query(f'process_uptime_seconds{{process_executable_name="{exe}"}}')
    for exit_class in ("error", "signal"):
        prometheus.wait_query(
            f'linnix_process_exits_total{{process_executable_name="{exe}",'
            f' linnix_exit_class="{exit_class}"}}'
        )
    prometheus.wait_query('linnix_export_failures_total{linnix_signal="metrics"} > 0')
    if done.oom_killed:
        prometheus.wait_query("linnix_oom_kills_total > 0")
    # Enough scrapes since the last of it for every rate to have two points.
    time.sleep(3)


def _has_a_number(result: Series) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def _resolve(
    prometheus: PrometheusServer, board: dict[str, Any], preferred: dict[str, str]
) -> tuple[dict[str, str], list[Variable], int]:
    """A value for every variable: each query variable asked of Prometheus in
    order; the preferred value when one is given (it must be offered), else the
    first offered. Returns the values, the variables that offer "All" and how
    many variable queries ran."""
    values = dict(BUILTINS)
    with_all: list[Variable] = []
    ran = 0
    for var in variables(board):
        if var.kind == "datasource":
            continue
        if var.kind == "custom":
            values[var.name] = str(var.raw["current"]["value"])
            assert values[var.name] in var.query.split(","), var.name
            continue
        assert var.kind == "query", f"{var.name}: {var.kind}"
        parsed = label_values_query(substitute(var.query, values))
        assert parsed is not None, var.query
        offered = prometheus.label_values(parsed[1], parsed[0])
        ran += 1
        assert offered, f"{board['uid']} ${var.name}: {var.query} offers nothing"
        choice = preferred.get(var.name, offered[0])
        assert choice in offered, f"{board['uid']} ${var.name}: {choice!r} not in {offered}"
        values[var.name] = choice
        if var.include_all:
            with_all.append(var)
    return values, with_all, ran


def _empty_queries(
    prometheus: PrometheusServer, board: dict[str, Any], values: dict[str, str]
) -> tuple[list[str], int]:
    """Every Prometheus query of the dashboard run with ``values``: the ones
    without data, and how many ran."""
    empty: list[str] = []
    ran = 0
    for query in queries(board):
        if query.language != "prometheus":
            continue  # the Loki panel: see the module docstring
        promql = substitute(strip_display_fallback(query.expr), values)
        ran += 1
        if not _has_a_number(prometheus.query(promql)):
            empty.append(f"{query.where()}: {promql}")
    return empty, ran


@pytest.mark.parametrize("path", list(DASHBOARDS), ids=lambda p: p.stem)
def test_every_query_of_the_dashboard_returns_data(
    path: Path, prometheus: PrometheusServer, workload: Workload
) -> None:
    board = DASHBOARDS[path]
    preferred = {
        "job": EXAMPLE_JOB,
        "host": socket.gethostname(),
        "executable": workload.executable,
        "rule": "fd_exhaustion",
    }
    values, with_all, variable_queries = _resolve(prometheus, board, preferred)
    empty, ran = _empty_queries(prometheus, board, values)
    if with_all:
        # The same with "All" picked wherever a variable offers it.
        everything = dict(values)
        for var in with_all:
            assert var.all_value is not None, var.name
            everything[var.name] = var.all_value
        more, ran_all = _empty_queries(prometheus, board, everything)
        empty += [f"(All) {line}" for line in more]
        ran += ran_all
    print(f"{board['uid']}: {ran} PromQL queries, {variable_queries} variable queries")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_the_panels_show_what_the_workload_did(
    prometheus: PrometheusServer, workload: Workload
) -> None:
    """A few panels read back as numbers: exits of every class, the alerts that
    fired, the OOM kill, the host name in the fleet view."""
    job = f'job="{EXAMPLE_JOB}"'
    classes = prometheus.query(f"sum by (linnix_exit_class) (linnix_process_exits_total{{{job}}})")
    assert {s["metric"]["linnix_exit_class"] for s in classes} == {"ok", "error", "signal"}
    # Every enabled rule has a series from the start (at 0): only the fired ones count.
    rules = prometheus.query(f"sum by (linnix_alert_rule) (linnix_alerts_total{{{job}}}) > 0")
    assert {"fd_exhaustion", "fork_storm"} <= {s["metric"]["linnix_alert_rule"] for s in rules}
    if workload.oom_killed:
        oom = prometheus.query(f"sum(linnix_oom_kills_total{{{job}}})")
        assert float(oom[0]["value"][1]) >= 1
    fleet = prometheus.query(
        f"sum by (host_name) (linnix_processes_live{{{job}}} * on (job, instance)"
        f" group_left (host_name) target_info{{{job}}})"
    )
    assert [s["metric"]["host_name"] for s in fleet] == [socket.gethostname()]
    assert float(fleet[0]["value"][1]) > 1
