"""A real Prometheus server scrapes the real agent's /metrics (issue acceptance).

The agent runs on the kernel source with its API on an ephemeral loopback
port and a token; the test starts /usr/bin/prometheus on another free
loopback port, with a 1 s scrape interval, the token in its scrape
configuration and a temporary storage directory (whatever Prometheus the
Debian package may run on :9090 is never involved), and asks it questions
through its HTTP API, as a user's dashboard would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_linnix.agent import Agent
from otel_linnix.config import ApiConfig, Config, ExportConfig
from tests.otlp_receiver import OtlpReceiver
from tests.prometheus_server import PrometheusServer, require_prometheus
from tests.unit.api_stack import free_port

pytestmark = pytest.mark.kernel

TOKEN = "prometheus-acceptance-token"


@pytest.fixture(scope="module")
def agent(needs_ebpf: None) -> Iterator[Agent]:
    running = Agent(Config(api=ApiConfig(bind_address="127.0.0.1:0", auth_token=TOKEN)))
    running.start()
    yield running
    running.stop(5.0)


def scrape_config(target_port: int) -> dict[str, Any]:
    """One job scraping the agent's /metrics every second with the bearer token."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "linnix",
                "metrics_path": "/metrics",
                "authorization": {"credentials": TOKEN},
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }
        ],
    }


@pytest.fixture(scope="module")
def prometheus(
    agent: Agent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    require_prometheus()
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_config(agent.api.port))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_the_agent(prometheus: PrometheusServer) -> None:
    up = prometheus.wait_query('up{job="linnix"}', lambda r: bool(r) and r[0]["value"][1] == "1")
    assert up[0]["metric"]["instance"].startswith("127.0.0.1:")
    for promql in (
        "process_cpu_time_seconds_total",
        "process_memory_usage_bytes",
        "system_process_created_total",
        'linnix_events_total{linnix_event_kind="exec"}',
        "linnix_processes_live",
        "linnix_agent_memory_usage_bytes",
    ):
        result = prometheus.wait_query(promql)
        assert all(float(s["value"][1]) >= 0 for s in result), promql
    # The resource arrives as target_info, as the OpenTelemetry spec maps it.
    info = prometheus.wait_query('target_info{job="linnix"}')
    assert info[0]["metric"]["service_name"] == "otel-linnix"
    assert info[0]["metric"]["os_type"] == "linux"


def test_forks_show_in_system_process_created(prometheus: PrometheusServer) -> None:
    promql = 'system_process_created_total{job="linnix"}'
    before = float(prometheus.wait_query(promql)[0]["value"][1])
    for _ in range(20):
        subprocess.run(["/bin/true"], check=True)
    prometheus.wait_query(promql, lambda r: bool(r) and float(r[0]["value"][1]) >= before + 20)


def test_a_busy_process_gets_series_that_go_stale_when_it_exits(
    prometheus: PrometheusServer,
) -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    selector = f'process_cpu_time_seconds_total{{process_pid="{busy.pid}"}}'
    try:
        # At 100 % of a core it is among the top processes by CPU after a sweep.
        found = prometheus.wait_query(selector, lambda r: bool(r) and float(r[0]["value"][1]) > 0.5)
        labels = found[0]["metric"]
        # The exec'd path's base name (the kernel record), or the resolved one
        # (/proc/<pid>/exe, when the start-up walk found it).
        names = {Path(sys.executable).name, Path(sys.executable).resolve().name}
        assert labels["process_executable_name"] in names
        memory = prometheus.wait_query(f'process_memory_usage_bytes{{process_pid="{busy.pid}"}}')
        assert float(memory[0]["value"][1]) > 1 << 20
    finally:
        busy.kill()
        busy.wait()
    # The next scrape no longer has it: Prometheus marks the series stale and
    # an instant query returns nothing.
    prometheus.wait_query(selector, lambda r: not r, timeout_s=15)
    exits = prometheus.wait_query(
        'linnix_process_exits_total{linnix_exit_class="signal"}', timeout_s=15
    )
    assert exits


def test_promtool_accepts_the_live_exposition(agent: Agent) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is absent (Debian package prometheus)")
    request = urllib.request.Request(
        f"http://127.0.0.1:{agent.api.port}/metrics",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def _otlp_agent(endpoint: str, protocol: str) -> Agent:
    export = ExportConfig(
        endpoint=endpoint,
        protocol=protocol,
        metrics_interval_s=1.0,
        timeout_s=1.0,
        logs=False,
        traces=False,
    )
    return Agent(Config(api=ApiConfig(bind_address="127.0.0.1:0"), export=export))


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_agent_exports_metrics_over_otlp(needs_ebpf: None, protocol: str) -> None:
    with OtlpReceiver() as receiver:
        running = _otlp_agent(receiver.endpoint(protocol), protocol)
        running.start()
        try:
            # Per-pid CPU series appear once the sampler has swept.
            points = receiver.wait_for_metrics(
                lambda ps: (
                    any(p.name == "process.cpu.time" and "process.pid" in p.attributes for p in ps)
                    and any(p.name == "system.process.created" for p in ps)
                ),
                timeout_s=20,
            )
        finally:
            started = time.monotonic()
            running.stop(3.0)
            stopped_in = time.monotonic() - started
        assert stopped_in < 4.0
        cpu = [p for p in points if p.name == "process.cpu.time"]
        assert any("process.pid" in p.attributes for p in cpu)
        assert all(p.unit == "s" and p.monotonic for p in cpu)
        assert {p.protocol for p in points} == {protocol}
        assert points[0].resource["service.name"] == "otel-linnix"


def test_stop_is_bounded_when_the_collector_is_gone(needs_ebpf: None) -> None:
    # Nothing listens there: every export fails, and stop must not wait for retries.
    running = _otlp_agent(f"http://127.0.0.1:{free_port()}", "grpc")
    running.start()
    try:
        deadline = time.monotonic() + 15
        while running.metrics.exporter is not None and running.metrics.exporter.failed == 0:
            assert time.monotonic() < deadline, "no export failure was counted"
            time.sleep(0.2)
    finally:
        started = time.monotonic()
        running.stop(2.0)
        stopped_in = time.monotonic() - started
    assert stopped_in < 3.0
    assert running.export_stats["metrics"]()["failed"] >= 1
