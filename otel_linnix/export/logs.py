"""Lifecycle events and alerts as OpenTelemetry log records (events) over OTLP.

Every lifecycle event becomes one record with ``event_name``
``linnix.process.fork`` / ``.exec`` / ``.exit`` / ``.oom_kill``, the semantic
conventions' process attributes and the event's lineage ids as the record's
trace and span ids (the parent span id goes in ``linnix.parent_span_id``).
Every alert transition becomes a ``linnix.alert`` record.

This is a Sink: events arrive on its own SinkWorker thread, are rate limited
(forks and execs only: exits, OOM kills and alerts always pass, so no
process is left open downstream), encoded straight to OTLP bytes and put in
a bounded ExportQueue whose thread talks to the collector. Records are built
here rather than through the SDK's LoggerProvider and BatchLogRecordProcessor:
that path costs about 75 us per record on these hosts (a protobuf object per
attribute) and offers no way to keep room for exits or count what a full
queue drops. Nothing here ever waits for the collector.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import orjson

from otel_linnix.config import Config
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey, executable_name
from otel_linnix.export.resource import build_resource
from otel_linnix.export.settings import ExportSettings, OtlpTarget
from otel_linnix.export.transport import ExportQueue, OtlpSender
from otel_linnix.export.wire import (
    AttributeEncoder,
    encode_request,
    encode_resource,
    encode_scope,
    fixed64_field,
    len_field,
)
from otel_linnix.process_table import ProcessTable
from otel_linnix.recording import iso_time
from otel_linnix.redaction import Redactor
from otel_linnix.rules.alerts import Alert
from otel_linnix.rules.model import Severity
from otel_linnix.sinks import SinkWorker

__all__ = [
    "ALERT_EVENT",
    "EVENT_NAMES",
    "SCOPE_NAME",
    "ExporterOptions",
    "LogExporter",
    "TokenBucket",
    "alert_severity",
    "build_log_exporter",
    "export_redactor",
    "exporter_options",
    "package_version",
]

SCOPE_NAME = "otel_linnix"
EVENT_NAMES: Mapping[EventKind, str] = {
    EventKind.FORK: "linnix.process.fork",
    EventKind.EXEC: "linnix.process.exec",
    EventKind.EXIT: "linnix.process.exit",
    EventKind.OOM_KILL: "linnix.process.oom_kill",
}
ALERT_EVENT = "linnix.alert"

# OTel severity numbers: INFO 9, WARN 13, ERROR 17, FATAL 21.
_SEVERITY = {"INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}
_ALERT_SEVERITY = {
    Severity.INFO: 9,
    Severity.LOW: 13,
    Severity.MEDIUM: 14,
    Severity.HIGH: 17,
    Severity.CRITICAL: 21,
}
# Processes whose encoded identity and image are kept (entries go at exit;
# past this many live processes the cache starts over).
_MAX_CACHED_PROCESSES = 65_536
# Kinds the rate limit never touches: a lost exit leaves a process open in
# every backend for good, and OOM kills are what people look for.
_PRIORITY = frozenset({EventKind.EXIT, EventKind.OOM_KILL})


def alert_severity(alert: Alert) -> tuple[int, str]:
    """(OTel severity number, severity text) of an alert transition. A
    resolution is INFO: it must not page anyone; the rule's own severity
    stays in ``linnix.alert.severity``."""
    if alert.state == "resolved":
        return 9, alert.severity.label
    return _ALERT_SEVERITY[alert.severity], alert.severity.label


def _severity_field(text: str, number: int) -> bytes:
    # LogRecord: severity_number = 2 (varint), severity_text = 3.
    return bytes([0x10, number]) + len_field(b"\x1a", text.encode())


def _string_field(tag: bytes, text: str) -> bytes:
    return len_field(tag, text.encode())


# LogRecord fields: time 1 (fixed64), observed time 11 (fixed64), attributes 6,
# trace_id 9, span_id 10, event_name 12, body 5.
_TIME, _OBSERVED, _ATTRS = b"\x09", b"\x59", b"\x32"
_TRACE_ID, _SPAN_ID, _EVENT_NAME, _BODY = b"\x4a", b"\x52", b"\x62", b"\x2a"
_EVENT_NAME_FIELDS = {kind: _string_field(_EVENT_NAME, name) for kind, name in EVENT_NAMES.items()}
_INFO = _severity_field("INFO", _SEVERITY["INFO"])
_WARN = _severity_field("WARN", _SEVERITY["WARN"])
_ERROR = _severity_field("ERROR", _SEVERITY["ERROR"])


class TokenBucket:
    """``rate`` tokens a second, at most one second's worth banked."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._tokens = rate
        self._clock = clock
        self._last = clock()

    def refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _severity_of(ev: ProcessEvent) -> bytes:
    """INFO; WARN for an exit by signal or non-zero status; ERROR for an OOM kill."""
    if ev.kind is EventKind.EXIT:
        return _WARN if ev.abnormal_exit else _INFO
    if ev.kind is EventKind.OOM_KILL:
        return _ERROR
    return _INFO


def _ids(trace_id: str | None, span_id: str | None) -> bytes:
    out = b""
    if trace_id:
        out += len_field(_TRACE_ID, bytes.fromhex(trace_id))
    if span_id:
        out += len_field(_SPAN_ID, bytes.fromhex(span_id))
    return out


class LogExporter:
    """The ``otlp-logs`` sink: lifecycle events and alerts to an OTLP collector."""

    name = "otlp-logs"

    def __init__(
        self,
        target: OtlpTarget,
        resource: Mapping[str, Any],
        *,
        max_queue: int,
        batch_max: int,
        max_per_s: float,
        command_args: bool = False,
        redactor: Redactor | None = None,
        table: ProcessTable | None = None,
        wall_offset_ns: Callable[[], int] = lambda: 0,
        owner: Callable[[int], str | None] | None = None,
        version: str = "",
        sender: OtlpSender | None = None,
        linger_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``redactor`` is applied to argv before it is exported; pass None when
        the pipeline already redacts (it does unless ``[privacy] redact_argv``
        is off). ``table`` supplies the executable and argv of forks and exits
        (their kernel records carry neither); ``owner`` maps a uid to a name."""
        self._resource = encode_resource(resource)
        self._scope = encode_scope(SCOPE_NAME, version)
        self.queue = ExportQueue(
            "logs",
            sender if sender is not None else OtlpSender(target),
            lambda records: encode_request(self._resource, self._scope, records),
            max_queue,
            batch_max,
            linger_s=linger_s,
        )
        self._bucket = TokenBucket(max_per_s, clock)
        self._command_args = command_args
        self._redactor = redactor
        self._table = table
        self._wall_offset_ns = wall_offset_ns
        self._owner = owner
        self._attrs = AttributeEncoder(_ATTRS)
        # Alerts come from the rules engine's thread, events from this sink's:
        # each has its own encoder (the caches are not shared), so neither locks.
        self._alert_attrs = AttributeEncoder(_ATTRS, cache_size=1024)
        # Per process (bounded): its encoded identity and image attributes.
        self._identities: dict[tuple[int, int, str | None, str | None], bytes] = {}
        self._images: dict[ProcessKey, bytes] = {}
        self.rate_limited = 0
        # The SinkWorker in front of this sink, if any: its drops count too.
        self.worker: SinkWorker | None = None
        self.queue.start()

    # -- the Sink protocol --------------------------------------------------

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        self._bucket.refill()
        offset = self._wall_offset_ns()
        observed = time.time_ns()
        queue = self.queue
        for ev in events:
            priority = ev.kind in _PRIORITY
            if not priority and not self._bucket.take():
                self.rate_limited += 1
                continue
            if not queue.has_room(priority=priority):
                queue.reject()  # full: counted, and not worth encoding
                continue
            queue.offer(self.encode_event(ev, offset, observed), priority=priority)

    def flush(self, timeout_s: float) -> None:
        self.queue.flush(timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        self.queue.shutdown(timeout_s)

    # -- alerts ---------------------------------------------------------------

    def alert(self, alert: Alert) -> None:
        """One alert transition (firing or resolved); never blocks."""
        record = self.encode_alert(alert, self._wall_offset_ns(), time.time_ns())
        self.queue.offer(record, priority=True)

    def stats(self) -> dict[str, int]:
        """What ``Agent.export_stats["logs"]`` reports: records ``exported``,
        ``dropped`` (no room, rejected, unsent at shutdown), ``failed``
        requests, and records not sent because of the ``rate_limited``."""
        stats = {**self.queue.stats(), "rate_limited": self.rate_limited}
        if self.worker is not None:
            stats["dropped"] += self.worker.dropped
        return stats

    # -- encoding ---------------------------------------------------------------

    def _process_image(self, ev: ProcessEvent) -> tuple[str | None, tuple[str, ...] | None]:
        """(exe, argv) of the process an event is about. Exec records carry
        them; a fork runs its parent's image; an exit is looked up in the table
        (exited processes stay there for a while)."""
        if ev.kind is EventKind.EXEC or self._table is None:
            return ev.exe, ev.argv
        key: ProcessKey | None = ev.key if ev.kind is not EventKind.FORK else ev.parent_key
        row = self._table.facts_row(key) if key is not None else None
        if row is None:
            return ev.exe, ev.argv
        return row[1], row[2]

    def encode_event(self, ev: ProcessEvent, wall_offset_ns: int, observed_ns: int) -> bytes:
        """One lifecycle event as a LogRecord field (ScopeLogs.log_records)."""
        a = self._attrs
        kind = ev.kind
        parts = [
            fixed64_field(_TIME, ev.ts_ns + wall_offset_ns),
            fixed64_field(_OBSERVED, observed_ns),
            _severity_of(ev),
            _EVENT_NAME_FIELDS[kind],
            a.integer("process.parent_pid", ev.ppid),
            a.text("linnix.process.comm", ev.comm),
            a.integer("process.user.id", ev.uid),
            a.integer_once("linnix.event.seq", ev.seq),
            self._identity_attributes(ev, wall_offset_ns),
            self._image_attributes(ev),
        ]
        if self._owner is not None:
            owner = self._owner(ev.uid)
            if owner is not None:
                parts.append(a.text("process.owner", owner))
        if kind is EventKind.EXIT:
            self._exit_attributes(ev, wall_offset_ns, parts)
        elif kind is EventKind.OOM_KILL and ev.rss_bytes is not None:
            parts.append(a.integer("linnix.process.rss_bytes", ev.rss_bytes))
        elif kind is EventKind.EXEC:
            if ev.bootstrap:
                parts.append(a.boolean("linnix.process.bootstrap", True))
            if ev.argv_truncated:
                parts.append(a.boolean("linnix.process.argv_truncated", True))
        if ev.container_id is not None or ev.pod_uid is not None:
            parts.append(
                self._container_attributes(ev.container_id, ev.container_runtime, ev.pod_uid)
            )
        return len_field(b"\x12", b"".join(parts))

    def _container_attributes(
        self, container_id: str | None, runtime: str | None, pod_uid: str | None
    ) -> bytes:
        """container.id (with its runtime) and k8s.pod.uid: the same in event and alert records."""
        a = self._attrs
        out = b""
        if container_id is not None:
            out = a.text("container.id", container_id)
            if runtime is not None:
                out += a.text("linnix.container.runtime", runtime)
        if pod_uid is not None:
            out += a.text("k8s.pod.uid", pod_uid)
        return out

    def _identity_attributes(self, ev: ProcessEvent, wall_offset_ns: int) -> bytes:
        """Pid, creation time, parent span and the record's trace and span ids: the
        same for every record of a process (until a TRACEPARENT exec), so
        encoded once per process and forgotten at its exit."""
        key = (ev.pid, ev.start_time_ns, ev.trace_id, ev.parent_span_id)
        cache = self._identities
        encoded = cache.pop(key, None) if ev.kind is EventKind.EXIT else cache.get(key)
        if encoded is None:
            a = self._attrs
            encoded = a.integer("process.pid", ev.pid) + a.text_once(
                "process.creation.time", iso_time(ev.start_time_ns + wall_offset_ns)
            )
            if ev.parent_span_id is not None:
                encoded += a.text_once("linnix.parent_span_id", ev.parent_span_id)
            encoded += _ids(ev.trace_id, ev.span_id)
            if ev.kind is not EventKind.EXIT:
                if len(cache) >= _MAX_CACHED_PROCESSES:
                    cache.clear()  # rare: then rebuilt as processes show up
                cache[key] = encoded
        return encoded

    def _image_attributes(self, ev: ProcessEvent) -> bytes:
        """Executable, command and (opt-in, redacted) arguments, encoded at exec
        and reused for the process's later records (and its forked children,
        which run the same image until they exec)."""
        images = self._images
        kind = ev.kind
        if kind is EventKind.EXEC:
            encoded = self._encode_image(ev.exe, ev.argv, ev.comm)
        else:
            source = ev.parent_key if kind is EventKind.FORK else ev.key
            found = images.get(source) if source is not None else None
            if found is None:
                exe, argv = self._process_image(ev)
                found = self._encode_image(exe, argv, ev.comm)
            encoded = found
        if kind is EventKind.EXIT:
            images.pop(ev.key, None)
        else:
            if len(images) >= _MAX_CACHED_PROCESSES:
                images.clear()
            images[ev.key] = encoded
        return encoded

    def _encode_image(self, exe: str | None, argv: tuple[str, ...] | None, comm: str) -> bytes:
        a = self._attrs
        out = a.text("process.executable.name", executable_name(exe, comm))
        if exe:
            out += a.text("process.executable.path", exe)
        if argv:
            out += a.text("process.command", argv[0]) + a.integer("process.args_count", len(argv))
            if self._command_args:
                if self._redactor is not None:
                    argv = self._redactor.redact(argv)
                out += a.value("process.command_args", list(argv))
        return out

    def _exit_attributes(self, ev: ProcessEvent, wall_offset_ns: int, parts: list[bytes]) -> None:
        a = self._attrs
        parts.append(a.text_once("process.exit.time", iso_time(ev.ts_ns + wall_offset_ns)))
        if ev.exit_code is not None:
            parts.append(a.integer("process.exit.code", ev.exit_code))
        if ev.exit_signal is not None:
            parts.append(a.integer("linnix.process.exit.signal", ev.exit_signal))
            parts.append(a.boolean("linnix.process.core_dumped", ev.core_dumped))
        if ev.cpu_time_ns is not None:
            parts.append(a.double("linnix.process.cpu_time_s", ev.cpu_time_ns / 1e9))
        if ev.peak_rss_bytes is not None:
            parts.append(a.integer("linnix.process.peak_rss_bytes", ev.peak_rss_bytes))

    def encode_alert(self, alert: Alert, wall_offset_ns: int, observed_ns: int) -> bytes:
        """One alert transition as a ``linnix.alert`` LogRecord field."""
        a = self._alert_attrs
        number, text = alert_severity(alert)
        at_ns = alert.resolved_ns if alert.resolved_ns is not None else alert.last_seen_ns
        subject = alert.subject
        parts = [
            fixed64_field(_TIME, at_ns + wall_offset_ns),
            fixed64_field(_OBSERVED, observed_ns),
            _severity_field(text, number),
            _string_field(_EVENT_NAME, ALERT_EVENT),
            # body: AnyValue string
            len_field(_BODY, len_field(b"\x0a", alert.message.encode())),
            a.text("linnix.alert.id", alert.id),
            a.text("linnix.alert.rule", alert.rule),
            a.text("linnix.alert.severity", alert.severity.label),
            a.text("linnix.alert.state", alert.state),
            a.text_once("linnix.alert.message", alert.message),
            a.text_once("linnix.alert.first_seen", iso_time(alert.first_seen_ns + wall_offset_ns)),
            a.integer("linnix.alert.reopened", alert.reopened),
            a.text("linnix.alert.subject.kind", subject.kind),
            a.text("linnix.alert.subject.key", subject.key),
        ]
        if alert.tags:
            parts.append(a.value("linnix.alert.tags", list(alert.tags)))
        if alert.host:
            parts.append(a.text("host.name", alert.host))
        for key, value in alert.evidence.items():
            parts.append(a.value(f"linnix.alert.evidence.{key}", _attribute_value(value)))
        if subject.pid is not None:
            parts.append(a.integer("process.pid", subject.pid))
        if subject.comm is not None:
            parts.append(a.text("linnix.process.comm", subject.comm))
        if subject.exe is not None:
            parts.append(a.text("process.executable.path", subject.exe))
            parts.append(
                a.text(
                    "process.executable.name",
                    executable_name(subject.exe, subject.comm or subject.exe),
                )
            )
        info = None
        if self._table is not None and subject.pid is not None:
            if subject.start_time_ns is not None:
                info = self._table.get(ProcessKey.of(subject.pid, subject.start_time_ns))
            else:
                info = self._table.find_pid(subject.pid)
        if info is not None:
            parts.append(a.integer("process.parent_pid", info.ppid))
            if info.parent_span_id is not None:
                parts.append(a.text_once("linnix.parent_span_id", info.parent_span_id))
            parts.append(_ids(info.trace_id, info.span_id))
        # The runtime and pod are the table's, when it holds the same container.
        held = info if info is not None and info.container_id == subject.container_id else None
        parts.append(
            self._container_attributes(
                subject.container_id,
                held.container_runtime if held is not None else None,
                held.pod_uid if held is not None else None,
            )
        )
        return len_field(b"\x12", b"".join(parts))


def _attribute_value(value: Any) -> Any:
    """Evidence as an attribute: scalars and lists of scalars as they are,
    anything else as JSON (attributes cannot nest)."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (str, bool, int, float)) for v in value
    ):
        return list(value)
    return orjson.dumps(value, default=str).decode()


def package_version() -> str:
    """The agent's version, for the instrumentation scope ("" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("otel-linnix")
    except PackageNotFoundError:
        return ""


def export_redactor(config: Config) -> Redactor | None:
    """The redactor exporters apply to argv: none when the pipeline already
    redacts every argv (``[privacy] redact_argv``), else one of their own, so
    exported arguments are redacted whatever that setting says."""
    if config.privacy.redact_argv:
        return None
    return Redactor(config.privacy.redact_flags, config.privacy.redact_patterns)


class ExporterOptions(TypedDict):
    """What the log and span exporters take alike from the configuration."""

    resource: dict[str, Any]
    max_queue: int
    batch_max: int
    command_args: bool
    redactor: Redactor | None
    version: str


def exporter_options(config: Config, settings: ExportSettings) -> ExporterOptions:
    cfg = settings.config
    return ExporterOptions(
        resource=dict(build_resource(settings).attributes),
        max_queue=cfg.logs_queue,
        batch_max=cfg.logs_batch,
        command_args=cfg.command_args,
        redactor=export_redactor(config),
        version=package_version(),
    )


def build_log_exporter(
    config: Config,
    settings: ExportSettings,
    table: ProcessTable | None,
    wall_offset_ns: Callable[[], int],
    owner: Callable[[int], str | None] | None = None,
) -> LogExporter | None:
    """The OTLP log exporter the settings ask for; None when logs have no endpoint."""
    if settings.logs is None:
        return None
    return LogExporter(
        settings.logs,
        max_per_s=settings.config.logs_max_per_s,
        table=table,
        wall_offset_ns=wall_offset_ns,
        owner=owner,
        **exporter_options(config, settings),
    )
