"""OpenTelemetry metrics: names, units, attributes, the cardinality budget, /metrics.

The pipeline replays the API recording (tests/unit/api_stack.py); resource
samples are set by hand so the top-N selection is exact. Prometheus output is
read back with prometheus_client's own parser; the OTel data model with an
InMemoryMetricReader on the same provider.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
    Sum,
)
from prometheus_client.parser import text_string_to_metric_families

from otel_linnix.config import ApiConfig, Config, ExportConfig
from otel_linnix.containers import CgroupResolver
from otel_linnix.events import EventKind, ProcessKey, executable_name
from otel_linnix.export.metrics import (
    MAX_GROUPS,
    OTHER_GROUP,
    PROMETHEUS_CONTENT_TYPE,
    CountingMetricExporter,
    MetricsTelemetry,
)
from otel_linnix.export.resource import build_resource, host_id
from otel_linnix.export.settings import resolve_export
from otel_linnix.pipeline import Pipeline
from otel_linnix.process_table import ProcessSample, ProcessTable
from otel_linnix.sinks import SinkWorker
from otel_linnix.sources.procfs import ProcReader
from otel_linnix.sources.replay import ReplaySource
from tests.otlp_receiver import OtlpReceiver
from tests.unit.api_stack import (
    CLOCK_NS,
    DOCKER_ID,
    K_BASH,
    K_INIT,
    K_NGINX,
    K_ORPHAN,
    K_SERVER,
    K_SLEEP,
    MIB,
    SAMPLES,
    START,
    ApiStack,
    write_api_recording,
)
from tests.unit.conftest import PROC_FIXTURE, make_event, wait_until

S = 1_000_000_000
TOKEN = "metrics-test-token"
PROMTOOL = shutil.which("promtool")

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Series:
    """Every sample of an exposition: (name, labels) -> value."""
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def of(series: Series, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in series.items() if n == name and want <= lab}


def value(series: Series, name: str, **labels: str) -> float:
    found = of(series, name, **labels)
    assert len(found) == 1, f"{name} {labels}: {found}"
    return next(iter(found.values()))


def pids(series: Series, name: str) -> set[str]:
    return {dict(lab).get("process_pid", "") for lab in of(series, name)} - {""}


class MetricsStack:
    """ApiStack plus the metrics telemetry wired as the agent wires it."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        top: int = 20,
        prometheus: bool = True,
        alerts: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        config = Config(
            api=ApiConfig(auth_token=TOKEN),
            export=ExportConfig(top_processes=top, prometheus=prometheus),
        )
        recording = write_api_recording(tmp_path / "api.jsonl", tmp_path / "cgroup")
        self.stack = ApiStack(recording, tmp_path / "cgroup", config)
        self.alerts = list(alerts)
        self.memory = InMemoryMetricReader()
        self.telemetry = MetricsTelemetry(
            resolve_export(config.export, {}),
            self.stack.pipeline,
            clock=lambda: CLOCK_NS,
            firing_alerts=lambda: self.alerts,
            extra_readers=[self.memory],
        )
        self.worker = SinkWorker(self.telemetry.sink)
        self.stack.pipeline.sinks.append(self.worker)
        self.stack.context.metrics = self.telemetry if prometheus else None
        self.stack.start()
        # CPU times too (the stack's samples leave them unset): 1 s per 10 % CPU.
        self.set_samples({key: cpu / 10 for key, (cpu, *_rest) in SAMPLES.items()})
        assert self.worker.drain(5.0)

    def set_samples(self, cpu_s: Mapping[ProcessKey, float]) -> None:
        self.stack.table.update_samples(
            {
                key: ProcessSample(
                    CLOCK_NS, int(cpu_s[key] * S), cpu, rss, fds, 1024, threads, state
                )
                for key, (cpu, rss, fds, threads, state) in SAMPLES.items()
                if key in cpu_s
            }
        )

    def scrape(self, token: str | None = TOKEN) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.stack.app.test_client().get("/metrics", headers=headers)

    def series(self) -> Series:
        response = self.scrape()
        assert response.status_code == 200, response.data
        return parse(response.data.decode())

    def close(self) -> None:
        self.stack.close()
        self.telemetry.shutdown(2.0)


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[MetricsStack]:
    stack = MetricsStack(tmp_path)
    yield stack
    stack.close()


# ---- names, units, attributes ----------------------------------------------------------


def test_prometheus_names_follow_the_semconv_translation(metrics: MetricsStack) -> None:
    names = {name for name, _labels in metrics.series()}
    for expected in (
        "process_cpu_time_seconds_total",
        "process_memory_usage_bytes",
        "process_unix_file_descriptor_count",
        "process_thread_count",
        "process_uptime_seconds",
        "system_process_created_total",
        "system_process_count",
        "linnix_oom_kills_total",
        "linnix_events_total",
        "linnix_queue_dropped_total",
        "linnix_table_evictions_total",
        "linnix_processes_live",
        "linnix_stream_subscribers",
        "linnix_process_exits_total",
        "linnix_process_lifetime_seconds_bucket",
        "linnix_executable_process_count",
        "linnix_agent_cpu_time_seconds_total",
        "linnix_agent_memory_usage_bytes",
        "target_info",
    ):
        assert expected in names, expected
    # prometheus_client's own self-metrics stay out of the private registry.
    assert not [
        n for n in names if n.startswith(("process_virtual", "process_open_fds", "python_"))
    ]


def test_otel_names_units_and_kinds(metrics: MetricsStack) -> None:
    metrics.series()  # the in-memory reader collects on its own call
    data = metrics.memory.get_metrics_data()
    assert data is not None
    found = {
        m.name: m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if sm.scope.name == "otel_linnix"
    }
    units = {
        "process.cpu.time": "s",
        "process.memory.usage": "By",
        "process.unix.file_descriptor.count": "{file_descriptor}",
        "process.thread.count": "{thread}",
        "process.uptime": "s",
        "system.process.created": "{process}",
        "system.process.count": "{process}",
        "linnix.process.lifetime": "s",
        "linnix.agent.memory.usage": "By",
    }
    for name, unit in units.items():
        assert found[name].unit == unit, name
    for name, monotonic in (
        ("process.cpu.time", True),
        ("system.process.created", True),
        ("linnix.events", True),
        ("process.thread.count", False),
        ("system.process.count", False),
    ):
        points = found[name].data
        assert isinstance(points, Sum) and points.is_monotonic is monotonic, name
    resource = data.resource_metrics[0].resource.attributes
    assert resource["service.name"] == "otel-linnix"
    assert resource["os.type"] == "linux"
    assert resource["host.name"]


def test_per_process_attributes_and_values(metrics: MetricsStack) -> None:
    series = metrics.series()
    nginx = {"process_pid": "800", "process_executable_name": "nginx"}
    assert value(series, "process_memory_usage_bytes", **nginx, container_id=DOCKER_ID) == 64 * MIB
    assert value(series, "process_cpu_time_seconds_total", **nginx) == pytest.approx(1.25)
    assert value(series, "process_unix_file_descriptor_count", **nginx) == 25
    assert value(series, "process_thread_count", **nginx) == 4
    age = (CLOCK_NS - START["nginx"]) / S
    assert value(series, "process_uptime_seconds", **nginx) == pytest.approx(age)
    # The executable name is the exe's base name, not the (truncated) comm.
    assert value(series, "process_thread_count", process_pid="4242") == 12
    # argv never becomes a label.
    labels = {k for (_n, lab) in series for k, _v in lab}
    values = " ".join(v for (_n, lab) in series for _k, v in lab)
    assert not {"process_command_args", "process_command_line", "argv"} & labels
    assert "daemon off" not in values


def test_host_and_self_metrics(metrics: MetricsStack) -> None:
    series = metrics.series()
    assert value(series, "system_process_created_total") == 7  # fork events replayed
    assert value(series, "linnix_oom_kills_total") == 1
    assert value(series, "linnix_events_total", linnix_event_kind="exit") == 4
    assert value(series, "system_process_count", process_state="running") == 1  # the server
    assert value(series, "system_process_count", process_state="sleeping") == 5
    assert value(series, "linnix_processes_live") == len(metrics.stack.table.live_keys())
    assert value(series, "linnix_queue_dropped_total", linnix_sink="metrics") == 0
    assert value(series, "linnix_agent_memory_usage_bytes") > 10 * MIB


def test_exits_by_class_and_lifetimes_per_executable(metrics: MetricsStack) -> None:
    series = metrics.series()
    # build_tree: two cc exits (one ok, one by signal), make with status 2, stress killed.
    assert value(series, "linnix_process_exits_total", process_executable_name="cc",
                 linnix_exit_class="ok") == 1  # fmt: skip
    assert value(series, "linnix_process_exits_total", process_executable_name="cc",
                 linnix_exit_class="signal") == 1  # fmt: skip
    assert value(series, "linnix_process_exits_total", process_executable_name="make",
                 linnix_exit_class="error") == 1  # fmt: skip
    assert value(series, "linnix_process_lifetime_seconds_count",
                 process_executable_name="cc") == 2  # fmt: skip
    # make ran 3 s: in the 5 s bucket, not in the 1 s one.
    assert value(series, "linnix_process_lifetime_seconds_bucket",
                 process_executable_name="make", le="1.0") == 0  # fmt: skip
    assert value(series, "linnix_process_lifetime_seconds_bucket",
                 process_executable_name="make", le="5.0") == 1  # fmt: skip


# ---- the budget ----------------------------------------------------------------------------


def test_budget_keeps_top_cpu_and_rss_and_aggregates_the_rest(tmp_path: Path) -> None:
    stack = MetricsStack(tmp_path, top=1)
    try:
        series = stack.series()
        # server is first by CPU and by RSS: the only process with series of its own.
        assert pids(series, "process_memory_usage_bytes") == {"4242"}
        groups = of(series, "linnix_executable_process_count")
        by_exe = {dict(lab)["process_executable_name"]: v for lab, v in groups.items()}
        assert by_exe["sleep"] == 2  # 5000 and 300
        assert "server" not in by_exe
        rss = of(
            series, "process_memory_usage_bytes", process_pid="", process_executable_name="sleep"
        )
        assert list(rss.values()) == [3 * MIB]
        # Every live process is in a series: its own or its executable's.
        counted = sum(groups.values()) + len(pids(series, "process_uptime_seconds"))
        assert counted == len(stack.stack.table.live_keys())
    finally:
        stack.close()


def test_processes_named_by_firing_alerts_get_their_own_series(tmp_path: Path) -> None:
    alert = {
        "rule": "fd_exhaustion",
        "severity": "high",
        "subject": {"pid": K_ORPHAN.pid, "start_time_ns": START["orphan"]},
    }
    stale = {"rule": "x", "severity": "low", "subject": {"pid": 100, "start_time_ns": 1}}
    stack = MetricsStack(tmp_path, top=1, alerts=[alert, stale])
    try:
        series = stack.series()
        # The stale alert names an older process with pid 100: bash keeps no series.
        assert pids(series, "process_memory_usage_bytes") == {"4242", "5000"}
        assert value(series, "linnix_alerts_firing", linnix_alert_rule="fd_exhaustion",
                     linnix_alert_severity="high") == 1  # fmt: skip
        stack.telemetry.record_alert("fd_exhaustion", "high", "firing")
        stack.telemetry.record_alert("fd_exhaustion", "high", "resolved")
        series = stack.series()
        assert value(series, "linnix_alerts_total", linnix_alert_rule="fd_exhaustion") == 1
    finally:
        stack.close()


def test_declared_rules_start_at_zero_so_the_first_alert_is_a_rate(metrics: MetricsStack) -> None:
    metrics.telemetry.declare_rules([("fork_storm", "high"), ("oom_kill", "critical")])
    series = metrics.series()
    for rule, severity in (("fork_storm", "high"), ("oom_kill", "critical")):
        assert value(series, "linnix_alerts_total", linnix_alert_rule=rule,
                     linnix_alert_severity=severity) == 0  # fmt: skip
    metrics.telemetry.record_alert("fork_storm", "high", "firing")
    series = metrics.series()
    assert value(series, "linnix_alerts_total", linnix_alert_rule="fork_storm") == 1
    assert value(series, "linnix_alerts_total", linnix_alert_rule="oom_kill") == 0


def test_series_of_an_exited_process_leave_the_next_scrape(metrics: MetricsStack) -> None:
    before = metrics.series()
    assert "800" in pids(before, "process_cpu_time_seconds_total")
    metrics.stack.publish(
        [
            make_event(
                EventKind.EXIT,
                800,
                START["nginx"],
                ts_ns=CLOCK_NS - S,
                comm="nginx",
                exit_code=0,
                cpu_time_ns=2 * S,
            )
        ]
    )
    assert metrics.worker.drain(5.0)
    after = metrics.series()
    for name in (
        "process_cpu_time_seconds_total",
        "process_memory_usage_bytes",
        "process_uptime_seconds",
        "process_thread_count",
        "process_unix_file_descriptor_count",
    ):
        assert "800" not in pids(after, name), name
    assert not [lab for (_n, lab) in after if ("container_id", DOCKER_ID) in lab]
    assert value(after, "linnix_process_exits_total", process_executable_name="nginx") == 1
    # The CPU it used after its last collection (1.25 s, under its own
    # series) and before its exit (2 s) now counts towards nginx's aggregate.
    assert value(after, "process_cpu_time_seconds_total", process_pid="",
                 process_executable_name="nginx") == pytest.approx(0.75)  # fmt: skip


def test_executable_cpu_counter_never_goes_down_as_processes_move(tmp_path: Path) -> None:
    """A process leaving the top N, re-entering it, and exiting: its executable's
    aggregate grows by what it used while not broken out, and never shrinks."""
    stack = MetricsStack(tmp_path, top=1)
    try:
        group = {"process_pid": "", "process_executable_name": "sleep"}
        # sleep 300 (0.1 s) and 5000 (0.01 s) are aggregated.
        first = value(stack.series(), "process_cpu_time_seconds_total", **group)
        assert first == pytest.approx(0.11)
        # 300 becomes the top CPU consumer: 4 s more, under its own series.
        cpu = {k: c / 10 for k, (c, *_r) in SAMPLES.items()}
        stack.stack.table.update_samples(
            {K_SLEEP: ProcessSample(CLOCK_NS, 4_100_000_000, 99.0, 2 * MIB, 5, 1024, 1, "R")}
        )
        series = stack.series()
        assert "300" in pids(series, "process_cpu_time_seconds_total")
        assert value(series, "process_cpu_time_seconds_total", **group) == pytest.approx(0.11)
        # Back in the group with 1 s more: only that second is added.
        cpu[K_SLEEP] = 5.1
        stack.set_samples(cpu)
        assert value(stack.series(), "process_cpu_time_seconds_total", **group) == pytest.approx(
            1.11
        )
        # It exits after 0.5 s more.
        stack.stack.publish(
            [
                make_event(
                    EventKind.EXIT,
                    300,
                    START["sleep"],
                    ts_ns=CLOCK_NS,
                    comm="sleep",
                    exit_code=0,
                    cpu_time_ns=5_600_000_000,
                )
            ]
        )
        assert stack.worker.drain(5.0)
        assert value(stack.series(), "process_cpu_time_seconds_total", **group) == pytest.approx(
            1.61
        )
    finally:
        stack.close()


def idle_pipeline(table: ProcessTable, tmp_path: Path) -> Pipeline:
    """A pipeline around ``table`` that is never started: what MetricsTelemetry reads."""
    return Pipeline(
        ReplaySource(tmp_path / "none.jsonl"),
        table,
        ProcReader(str(PROC_FIXTURE)),
        CgroupResolver(root=str(tmp_path)),
        [],
        clock=lambda: CLOCK_NS,
        sample_interval_s=3600.0,
    )


def test_series_count_with_5000_processes_stays_within_the_budget(tmp_path: Path) -> None:
    """5,000 live processes of 40 executables: the series count follows the
    budget and the executables, not the processes."""
    table = ProcessTable()
    events = []
    samples = {}
    for i in range(5000):
        pid = 10_000 + i
        start = (i + 1) * 10_000_000
        events.append(
            make_event(EventKind.EXEC, pid, start, ppid=1, comm=f"w{i % 40}", exe=f"/opt/w{i % 40}")
        )
        samples[ProcessKey.of(pid, start)] = ProcessSample(
            CLOCK_NS, i * 1_000_000, i / 100, (i + 1) * 4096, 10, 1024, 2, "S"
        )
    table.apply_batch(events)
    table.update_samples(samples)
    pipeline = idle_pipeline(table, tmp_path)
    settings = resolve_export(ExportConfig(top_processes=20), {})
    telemetry = MetricsTelemetry(settings, pipeline, clock=lambda: CLOCK_NS)
    try:
        started = time.perf_counter()
        series = parse(telemetry.exposition().decode())
        elapsed = time.perf_counter() - started
        # Top 20 by CPU and top 20 by RSS are the same 20 processes here.
        assert len(pids(series, "process_memory_usage_bytes")) == 20
        assert len(of(series, "linnix_executable_process_count")) == 40
        assert sum(of(series, "linnix_executable_process_count").values()) == 4980
        process_series = [n for (n, _l) in series if n.startswith("process_")]
        # 5 metrics x 20 processes; per executable: memory, fds, threads, CPU.
        assert len(process_series) == 5 * 20 + 4 * 40
        assert elapsed < 2.0  # generous: bench/metrics.py measures it properly
    finally:
        telemetry.shutdown(1.0)


def test_executable_groups_are_bounded(tmp_path: Path) -> None:
    table = ProcessTable()
    table.apply_batch(
        [
            make_event(EventKind.EXEC, 10 + i, (i + 1) * 10_000_000, comm="x", exe=f"/bin/e{i}")
            for i in range(MAX_GROUPS + 50)
        ]
    )
    pipeline = idle_pipeline(table, tmp_path)
    telemetry = MetricsTelemetry(
        resolve_export(ExportConfig(top_processes=0), {}), pipeline, clock=lambda: CLOCK_NS
    )
    try:
        groups = of(parse(telemetry.exposition().decode()), "linnix_executable_process_count")
        by_exe = {dict(lab)["process_executable_name"]: v for lab, v in groups.items()}
        assert len(by_exe) == MAX_GROUPS + 1
        assert by_exe[OTHER_GROUP] == 50
    finally:
        telemetry.shutdown(1.0)


# ---- /metrics ------------------------------------------------------------------------------


def test_route_serves_the_text_format_and_needs_the_token(metrics: MetricsStack) -> None:
    response = metrics.scrape()
    assert response.status_code == 200
    assert response.headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
    assert metrics.scrape(token=None).status_code == 401
    assert metrics.scrape(token="wrong").status_code == 401


def test_route_is_404_when_prometheus_is_off(tmp_path: Path) -> None:
    stack = MetricsStack(tmp_path, prometheus=False)
    try:
        response = stack.scrape()
        assert response.status_code == 404
        assert "prometheus = false" in response.get_json()["error"]
        assert stack.telemetry.registry is None
    finally:
        stack.close()


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)"
)
def test_promtool_finds_nothing_to_complain_about(metrics: MetricsStack) -> None:
    metrics.telemetry.record_alert("fork_storm", "high", "firing")
    metrics.alerts.append({"rule": "fork_storm", "severity": "high", "subject": {}})
    body = metrics.scrape().data
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert check.stdout.decode().strip() == ""


# ---- exporter failures and shutdown --------------------------------------------------------


class _Exporter(MetricExporter):
    """Answers with ``result``, after ``delay_s``."""

    def __init__(self, result: MetricExportResult, delay_s: float = 0.0) -> None:
        super().__init__()
        self.result = result
        self.delay_s = delay_s
        self.calls = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.calls += 1
        time.sleep(self.delay_s)
        return self.result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def test_counting_exporter_counts_failures_and_exceptions() -> None:
    data = MetricsData(resource_metrics=[])
    failing = CountingMetricExporter(_Exporter(MetricExportResult.FAILURE))
    failing.export(data)
    failing.export(data)
    assert failing.stats() == {"exported": 0, "failed": 2}
    ok = CountingMetricExporter(_Exporter(MetricExportResult.SUCCESS))
    ok.export(data)
    assert ok.stats() == {"exported": 1, "failed": 0}

    class Raising(_Exporter):
        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            raise ConnectionError("collector gone")

    raising = CountingMetricExporter(Raising(MetricExportResult.SUCCESS))
    with pytest.raises(ConnectionError):
        raising.export(data)
    assert raising.failed == 1


def test_export_stats_of_every_signal_become_self_metrics(metrics: MetricsStack) -> None:
    stats = {"logs": lambda: {"failed": 3, "dropped": 7}, "traces": lambda: {"sent": 1}}
    metrics.telemetry.export_stats = stats
    series = metrics.series()
    assert value(series, "linnix_export_failures_total", linnix_signal="logs") == 3
    assert value(series, "linnix_export_dropped_total", linnix_signal="logs") == 7
    assert not of(series, "linnix_export_failures_total", linnix_signal="traces")


def test_shutdown_is_bounded_by_its_timeout_when_the_export_hangs(tmp_path: Path) -> None:
    stack = MetricsStack(tmp_path)
    hanging = _Exporter(MetricExportResult.SUCCESS, delay_s=10.0)
    telemetry = MetricsTelemetry(
        stack.telemetry.settings,
        stack.stack.pipeline,
        clock=lambda: CLOCK_NS,
        extra_readers=[PeriodicExportingMetricReader(hanging, export_interval_millis=60_000)],
    )
    try:
        started = time.monotonic()
        assert telemetry.shutdown(0.5) is False
        assert time.monotonic() - started < 1.5
        assert hanging.calls == 1  # the final export was attempted
    finally:
        stack.close()


# ---- resource -----------------------------------------------------------------------------


def test_resource_has_host_identity_and_configured_attributes() -> None:
    settings = resolve_export(
        ExportConfig(resource_attributes="deployment.environment=prod,host.name=edge-1"),
        {"OTEL_SERVICE_NAME": "linnix-edge"},
    )
    attributes = build_resource(settings).attributes
    assert attributes["service.name"] == "linnix-edge"
    assert attributes["deployment.environment"] == "prod"
    assert attributes["host.name"] == "edge-1"  # configured wins over detected
    assert attributes["os.type"] == "linux"
    machine = host_id()
    if machine is not None:
        assert attributes["host.id"] == machine
    else:
        assert "host.id" not in attributes


def test_host_id_reads_the_first_machine_id_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    real = tmp_path / "machine-id"
    real.write_text("0123456789abcdef0123456789abcdef\n")
    assert host_id((str(tmp_path / "missing"), str(empty), str(real))) == (
        "0123456789abcdef0123456789abcdef"
    )
    assert host_id((str(tmp_path / "missing"),)) is None


# ---- OTLP, both protocols -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_otlp_export_reaches_a_collector(tmp_path: Path, protocol: str) -> None:
    with OtlpReceiver() as receiver:
        settings = resolve_export(
            ExportConfig(top_processes=20),
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint(protocol),
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=linnix",
            },
        )
        settings = dataclasses.replace(settings, metrics_interval_s=0.2)
        stack = MetricsStack(tmp_path)
        telemetry = MetricsTelemetry(settings, stack.stack.pipeline, clock=lambda: CLOCK_NS)
        try:
            points = receiver.wait_for_metrics(
                lambda ps: any(p.name == "process.memory.usage" for p in ps), timeout_s=10
            )
        finally:
            assert telemetry.shutdown(5.0)
            stack.close()
        memory = [p for p in points if p.name == "process.memory.usage"]
        nginx = [p for p in memory if p.attributes.get("process.pid") == K_NGINX.pid]
        assert nginx and nginx[0].value == 64 * MIB and nginx[0].unit == "By"
        assert nginx[0].attributes["container.id"] == DOCKER_ID
        assert nginx[0].resource["service.name"] == "otel-linnix"
        cpu = [p for p in points if p.name == "process.cpu.time"]
        assert cpu and all(p.monotonic and p.temporality == 2 for p in cpu)
        assert {p.protocol for p in points} == {protocol}
        assert receiver.received("metrics")[0].headers["x-tenant"] == "linnix"
        assert telemetry.exporter is not None and telemetry.exporter.failed == 0


def test_otlp_failures_are_counted(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        receiver.mode = "refuse"
        settings = resolve_export(
            ExportConfig(),
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
                "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
            },
        )
        settings = dataclasses.replace(settings, metrics_interval_s=0.2)
        stack = MetricsStack(tmp_path)
        telemetry = MetricsTelemetry(
            settings,
            stack.stack.pipeline,
            clock=lambda: CLOCK_NS,
            export_stats={},
        )
        assert telemetry.exporter is not None
        exporter = telemetry.exporter
        telemetry.export_stats = {"metrics": exporter.stats}
        try:
            assert wait_until(lambda: exporter.failed >= 1, timeout_s=15)
            series = parse(telemetry.exposition().decode())
            assert value(series, "linnix_export_failures_total", linnix_signal="metrics") >= 1
        finally:
            telemetry.shutdown(1.0)
            stack.close()


# Keys the tests above rely on, checked once so a fixture change fails loudly here.
def test_fixture_samples_are_what_the_tests_assume() -> None:
    assert {K_INIT, K_BASH, K_SERVER, K_ORPHAN, K_NGINX, K_SLEEP} == set(SAMPLES)
    assert max(SAMPLES, key=lambda k: SAMPLES[k][0]) == K_SERVER
    assert max(SAMPLES, key=lambda k: SAMPLES[k][1]) == K_SERVER


def test_an_unresolved_descriptor_exec_is_named_by_comm() -> None:
    assert executable_name("/dev/fd/3", "crun") == "crun"
    assert executable_name("/proc/self/exe", "runc") == "runc"
    assert executable_name("/usr/bin/crun", "crun") == "crun"
    assert executable_name("/usr/local/bin/python3.11", "python3") == "python3.11"
    assert executable_name(None, "kworker") == "kworker"
