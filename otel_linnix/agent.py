"""Builds a running agent from a Config: picks the source, falls back, wires the
pipeline, the /stream hub and the HTTP API."""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence

from otel_linnix.config import Config
from otel_linnix.containers import CgroupResolver
from otel_linnix.errors import CaptureUnavailable, ConfigError
from otel_linnix.export.settings import resolve_export
from otel_linnix.lineage import LineagePolicy, boot_id_bytes
from otel_linnix.pipeline import Pipeline
from otel_linnix.process_table import ProcessTable
from otel_linnix.redaction import Redactor
from otel_linnix.rules.alerts import Alert, AlertStore
from otel_linnix.rules.engine import RulesEngine
from otel_linnix.rules.loader import load_rules
from otel_linnix.sinks import SinkWorker
from otel_linnix.sources.base import Source
from otel_linnix.sources.bpf import BpfSource
from otel_linnix.sources.procfs import ProcReader, boottime_ns
from otel_linnix.sources.procfs_poll import ProcfsPollingSource
from otel_linnix.stream_hub import StreamHub

__all__ = ["Agent", "build_pipeline", "choose_source"]

log = logging.getLogger(__name__)

# Collector thresholds while running (see start); benchmarks use the same.
GC_THRESHOLDS = (50_000, 20, 50)


def choose_source(config: Config, reader: ProcReader) -> tuple[Source, str | None]:
    """The source to run and, when it is not the kernel, why.

    ``capture.source = "ebpf"`` makes an unavailable kernel a start-up error
    (CaptureUnavailable); ``"auto"`` falls back to /proc polling and says why.
    """
    capture = config.capture
    poller = ProcfsPollingSource(
        reader,
        capture.poll_interval_ms / 1000.0,
        boottime_ns,
        traceparent=config.lineage.traceparent,
    )
    if capture.source == "procfs":
        return poller, 'configured to poll /proc ([capture] source = "procfs")'
    bpf = BpfSource(capture, boottime_ns, traceparent=config.lineage.traceparent)
    try:
        bpf.load()
    except CaptureUnavailable as exc:
        if capture.source == "ebpf":
            raise
        log.warning(
            "kernel capture unavailable, polling /proc instead (short-lived "
            "processes will be missed): %s",
            exc,
        )
        return poller, str(exc)
    return bpf, None


def build_pipeline(config: Config, sinks: Sequence[SinkWorker] = ()) -> Pipeline:
    """A pipeline ready to start(); the kernel program is already loaded if used."""
    reader = ProcReader()
    source, reason = choose_source(config, reader)
    table = ProcessTable(
        config.process_table.max_entries,
        int(config.process_table.exited_retention_s * 1e9),
        LineagePolicy.from_config(config.lineage, boot_id_bytes(reader.boot_id())),
    )
    return Pipeline(
        source,
        table,
        reader,
        CgroupResolver(),
        sinks,
        clock=boottime_ns,
        sample_interval_s=config.telemetry.sample_interval_ms / 1000.0,
        sampler_max_processes=config.telemetry.sample_max_processes,
        fd_limit_refresh_sweeps=config.telemetry.fd_limit_refresh_sweeps,
        fd_count_refresh_sweeps=config.telemetry.fd_count_refresh_sweeps,
        idle_refresh_sweeps=config.telemetry.idle_refresh_sweeps,
        capture_kernel_threads=config.capture.kernel_threads,
        redactor=(
            Redactor(config.privacy.redact_flags, config.privacy.redact_patterns)
            if config.privacy.redact_argv
            else None
        ),
        fallback_reason=reason,
    )


def wall_from_boot(ts_ns: int) -> int:
    """Boot-clock ns -> Unix-epoch ns, using the clocks' offset right now."""
    return ts_ns + (time.time_ns() - boottime_ns())


class Agent:
    """Everything ``otel-linnix run`` runs: pipeline, rules, /stream hub, HTTP API."""

    def __init__(self, config: Config, extra_sinks: Sequence[SinkWorker] = ()) -> None:
        from otel_linnix.api import ApiContext, create_app  # noqa: PLC0415 - Flask at the edge
        from otel_linnix.api.context import UserNames  # noqa: PLC0415
        from otel_linnix.api.server import ApiServer  # noqa: PLC0415
        from otel_linnix.export.metrics import MetricsTelemetry  # noqa: PLC0415 - OTel SDK

        # Rules first: a bad rules file is a start-up error before anything loads.
        ruleset = load_rules(config.rules_path()) if config.rules.enabled else None
        # So is a malformed [export] key or OTEL_* variable.
        self.export_settings = resolve_export(config.export, os.environ)
        # signal -> its exporter's counters ("failed", "dropped", ...): what
        # linnix.export.failures and linnix.export.dropped report.
        self.export_stats: dict[str, Callable[[], Mapping[str, int]]] = {}
        api = config.api
        self.hub = StreamHub(
            api.stream_backlog_events,
            api.max_stream_clients,
            api.stream_queue_events,
            wall_from_boot,
        )
        self.pipeline = build_pipeline(config, [SinkWorker(self.hub), *extra_sinks])
        self.hub.boot_id = self.pipeline.table.lineage.boot_uuid
        self.alerts = AlertStore(lambda: wall_from_boot(0))
        self.rules: RulesEngine | None = None
        if ruleset is not None:
            users = UserNames()
            self.rules = RulesEngine(
                ruleset.enabled,
                self.pipeline.table,
                users=users.name,
                on_alert=self._deliver_alert,
                host=socket.gethostname(),
            )
            self.pipeline.sinks.append(SinkWorker(self.rules))
            self.pipeline.add_sweep_listener(self.rules.observe_sweep)
            log.info(
                "rules: %d enabled of %d from %s",
                len(ruleset.enabled),
                len(ruleset.rules),
                ", ".join(ruleset.files),
            )
        # One meter provider for /metrics and OTLP (exporters only when configured).
        self.metrics = MetricsTelemetry(
            self.export_settings,
            self.pipeline,
            clock=boottime_ns,
            firing_alerts=lambda: self.alerts.alerts("firing", None),
            stream_subscribers=lambda: self.hub.stats()["subscribers"],
            export_stats=self.export_stats,
        )
        self.pipeline.sinks.append(SinkWorker(self.metrics.sink))
        if ruleset is not None:
            self.metrics.declare_rules((r.name, r.severity.label) for r in ruleset.enabled)
        if self.metrics.exporter is not None:
            self.export_stats["metrics"] = self.metrics.exporter.stats
        self._add_event_exporters(config, UserNames().name)
        self.context = ApiContext(
            config,
            self.pipeline,
            self.hub,
            boottime_ns,
            alert_source=self.alerts,
            metrics=self.metrics if self.metrics.registry is not None else None,
        )
        try:
            self.api = ApiServer(create_app(self.context), api.bind_address, api.max_stream_clients)
        except OSError as exc:
            self.pipeline.stop(1.0)
            self.metrics.shutdown(1.0)
            raise ConfigError(
                f"[api] bind_address: cannot listen on {api.bind_address}: {exc.strerror}"
            ) from None

    def _add_event_exporters(self, config: Config, owner: Callable[[int], str | None]) -> None:
        """OTLP log records and process spans, each only when it has an endpoint.
        Sinks like any other: the drain loop never waits for a collector."""
        from otel_linnix.export.logs import build_log_exporter  # noqa: PLC0415
        from otel_linnix.export.traces import build_span_exporter  # noqa: PLC0415

        def wall_offset() -> int:
            return wall_from_boot(0)

        table = self.pipeline.table
        # The exporters' own queues are the buffers (bounded by logs_queue);
        # their SinkWorker queue is only a hand-off, kept small.
        hand_off = max(1024, 8 * config.export.logs_batch)
        self.logs = build_log_exporter(config, self.export_settings, table, wall_offset, owner)
        if self.logs is not None:
            self.logs.worker = SinkWorker(self.logs, max_queue=hand_off)
            self.pipeline.sinks.append(self.logs.worker)
            self.export_stats["logs"] = self.logs.stats
        self.spans = build_span_exporter(config, self.export_settings, wall_offset)
        if self.spans is not None:
            self.spans.worker = SinkWorker(self.spans, max_queue=hand_off)
            self.pipeline.sinks.append(self.spans.worker)
            self.export_stats["traces"] = self.spans.stats

    def _deliver_alert(self, alert: Alert) -> None:
        """An alert transition: to /alerts, to /stream as an ``alert`` event,
        and to OTLP as a ``linnix.alert`` record."""
        alert.seq = self.pipeline.reserve_seq()
        data = self.alerts.record(alert)
        self.hub.publish(alert.seq, "alert", data)
        if self.logs is not None:
            self.logs.alert(alert)
        self.metrics.record_alert(alert.rule, alert.severity.label, alert.state)
        log.warning(
            "alert %s %s [%s] %s: %s",
            alert.state,
            alert.rule,
            alert.severity.label,
            alert.subject.key,
            alert.message,
        )

    def start(self) -> None:
        # The API first: /health and /readyz answer while the walk runs.
        self.api.start()
        self.pipeline.start()
        # What exists now (modules, the loaded program, the start-up walk)
        # lives as long as the agent: keep it out of every future collection,
        # and collect young objects less often. The agent allocates an event
        # tuple per kernel record; with the default threshold a full
        # collection over the whole process table runs every few thousand
        # events and stalls API requests for tens of milliseconds.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    def stop(self, timeout_s: float = 1.8) -> None:
        deadline = time.monotonic() + timeout_s
        self.hub.close()  # ends every /stream response
        self.api.stop(max(0.1, (deadline - time.monotonic()) / 3))
        self.pipeline.stop(max(0.1, deadline - time.monotonic()))
        # Last, so the final OTLP export holds everything the pipeline saw;
        # bounded, whatever state the collector is in.
        self.metrics.shutdown(max(0.1, deadline - time.monotonic()))
