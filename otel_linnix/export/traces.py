"""Process spans: one span per exec'd process, from its exec to its exit.

Off by default (``[export] traces``). A span's id is the process's lineage
span id and its trace id the lineage trace id, so spans and log records of
one process line up. Its parent is the span of the nearest ancestor that has
one (a child that forks without exec'ing has no span of its own; its
descendants hang under the span above it); a subtree root without a traced
ancestor is a root span, unless its environment carried a TRACEPARENT, whose
parent span it then keeps (the process tree joins the application's trace).
A process that execs again keeps its one span, named after its latest image.

Which processes get spans: with ``traces_subtree_executables``, only those
running under (or as) a process whose executable is listed; with
``traces_executables``, only those whose executable is listed; with both, the
processes meeting both; with neither, every exec'd process. Names match the
executable's base name or its full path.

Memory is bounded: at most ``max_open`` spans wait for their exit and at most
``max_tracked`` processes are remembered as inside a traced subtree; the
oldest is forgotten first and counted in ``dropped``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otel_linnix.config import Config
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey, executable_name
from otel_linnix.export.logs import SCOPE_NAME, exporter_options
from otel_linnix.export.settings import ExportSettings, OtlpTarget
from otel_linnix.export.transport import ExportQueue, OtlpSender
from otel_linnix.export.wire import (
    AttributeEncoder,
    encode_request,
    encode_resource,
    encode_scope,
    fixed64_field,
    len_field,
    varint,
)
from otel_linnix.redaction import Redactor
from otel_linnix.sinks import SinkWorker

__all__ = ["SpanExporter", "build_span_exporter", "signal_name"]

# Span fields (trace/v1): trace_id 1, span_id 2, parent_span_id 4, name 5,
# kind 6, start 7 (fixed64), end 8 (fixed64), attributes 9, status 15.
_KIND_INTERNAL = b"\x30\x01"
_STATUS_ERROR = 2


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``SIG<n>`` for numbers this Python does not name."""
    import signal  # noqa: PLC0415

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


@dataclass(slots=True)
class _OpenSpan:
    """A span between exec and exit."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    start_ns: int  # boot clock
    exec_ev: ProcessEvent  # the latest exec: name and attributes come from it


def _matches(names: frozenset[str], exe: str | None, comm: str) -> bool:
    if exe:
        return exe in names or exe.rsplit("/", 1)[-1] in names
    return comm in names


class SpanExporter:
    """The ``otlp-traces`` sink."""

    name = "otlp-traces"

    def __init__(
        self,
        target: OtlpTarget,
        resource: Mapping[str, Any],
        *,
        subtree_executables: Sequence[str] = (),
        executables: Sequence[str] = (),
        max_queue: int = 20_000,
        batch_max: int = 512,
        command_args: bool = False,
        redactor: Redactor | None = None,
        wall_offset_ns: Callable[[], int] = lambda: 0,
        version: str = "",
        max_open: int = 16_384,
        max_tracked: int = 65_536,
        sender: OtlpSender | None = None,
        linger_s: float = 1.0,
    ) -> None:
        resource_bytes = encode_resource(resource)
        scope = encode_scope(SCOPE_NAME, version)
        self.queue = ExportQueue(
            "traces",
            sender if sender is not None else OtlpSender(target),
            lambda spans: encode_request(resource_bytes, scope, spans),
            max_queue,
            batch_max,
            linger_s=linger_s,
        )
        self._subtree = frozenset(subtree_executables)
        self._executables = frozenset(executables)
        self._command_args = command_args
        self._redactor = redactor
        self._wall_offset_ns = wall_offset_ns
        self._max_open = max_open
        self._max_tracked = max_tracked
        self._attrs = AttributeEncoder(b"\x4a")
        # Dicts keep insertion order: the first key is the oldest, evicted first.
        self._open: dict[ProcessKey, _OpenSpan] = {}
        # Process -> span id its children's spans hang under (its own span if
        # it has one, else what it inherited at fork). Only processes inside a
        # traced region are here.
        self._parent_span: dict[ProcessKey, bytes] = {}
        # Processes under a subtree root (only with subtree_executables).
        self._in_subtree: dict[ProcessKey, None] = {}
        self._lock = threading.Lock()
        self.evicted = 0  # open spans or tracked processes forgotten for room
        # The SinkWorker in front of this sink, if any: its drops count too.
        self.worker: SinkWorker | None = None
        self.queue.start()

    # -- the Sink protocol ------------------------------------------------------

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        offset = self._wall_offset_ns()
        with self._lock:
            for ev in events:
                kind = ev.kind
                if kind is EventKind.FORK:
                    self._on_fork(ev)
                elif kind is EventKind.EXEC:
                    self._on_exec(ev)
                elif kind is EventKind.EXIT:
                    self._on_exit(ev, offset)

    def flush(self, timeout_s: float) -> None:
        self.queue.flush(timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        self.queue.shutdown(timeout_s)

    def stats(self) -> dict[str, int]:
        """What ``Agent.export_stats["traces"]`` reports; ``dropped`` includes
        spans that could not be kept open."""
        stats = self.queue.stats()
        stats["dropped"] += self.evicted
        if self.worker is not None:
            stats["dropped"] += self.worker.dropped
        stats["open"] = len(self._open)
        return stats

    @property
    def open_spans(self) -> int:
        return len(self._open)

    # -- state ----------------------------------------------------------------

    def _remember(self, table: dict[ProcessKey, Any], key: ProcessKey, value: Any) -> None:
        if key not in table and len(table) >= self._max_tracked:
            del table[next(iter(table))]
            self.evicted += 1
        table[key] = value

    def _on_fork(self, ev: ProcessEvent) -> None:
        parent = ev.parent_key
        if parent is None:
            return
        span = self._parent_span.get(parent)
        if span is not None:
            self._remember(self._parent_span, ev.key, span)
        if parent in self._in_subtree:
            self._remember(self._in_subtree, ev.key, None)

    def _selected(self, ev: ProcessEvent) -> bool:
        key = ev.key
        if self._subtree and key not in self._in_subtree:
            if not _matches(self._subtree, ev.exe, ev.comm):
                return False
            self._remember(self._in_subtree, key, None)
        return not self._executables or _matches(self._executables, ev.exe, ev.comm)

    def _on_exec(self, ev: ProcessEvent) -> None:
        key = ev.key
        if not self._selected(ev) or not ev.span_id or not ev.trace_id:
            return
        span = self._open.get(key)
        if span is not None:
            span.exec_ev = ev  # exec again: same span, latest image
            return
        parent = self._parent_span.get(key)
        if parent is None and ev.traceparent and ev.parent_span_id:
            parent = bytes.fromhex(ev.parent_span_id)
        span_id = bytes.fromhex(ev.span_id)
        if len(self._open) >= self._max_open:
            del self._open[next(iter(self._open))]
            self.evicted += 1
        start = ev.start_time_ns if ev.bootstrap else ev.ts_ns
        self._open[key] = _OpenSpan(bytes.fromhex(ev.trace_id), span_id, parent, start, ev)
        self._remember(self._parent_span, key, span_id)

    def _on_exit(self, ev: ProcessEvent, offset: int) -> None:
        key = ev.key
        self._parent_span.pop(key, None)
        self._in_subtree.pop(key, None)
        span = self._open.pop(key, None)
        if span is None:
            return
        if not self.queue.has_room(priority=True):
            self.queue.reject()
            return
        self.queue.offer(self.encode_span(span, ev, offset), priority=True)

    # -- encoding ---------------------------------------------------------------

    def encode_span(self, span: _OpenSpan, exit_ev: ProcessEvent, offset: int) -> bytes:
        """A finished span as a ScopeSpans.spans field."""
        a = self._attrs
        image = span.exec_ev
        exe = image.exe
        name = executable_name(exe, image.comm)
        parts = [
            len_field(b"\x0a", span.trace_id),
            len_field(b"\x12", span.span_id),
        ]
        if span.parent_span_id is not None:
            parts.append(len_field(b"\x22", span.parent_span_id))
        parts += [
            len_field(b"\x2a", name.encode()),
            _KIND_INTERNAL,
            fixed64_field(b"\x39", span.start_ns + offset),
            fixed64_field(b"\x41", max(exit_ev.ts_ns, span.start_ns) + offset),
            a.text("process.executable.name", name),
            a.integer("process.pid", exit_ev.pid),
            a.integer("process.parent_pid", image.ppid),
            a.integer("process.user.id", image.uid),
        ]
        if exe:
            parts.append(a.text("process.executable.path", exe))
        argv = image.argv
        if argv:
            parts.append(a.text("process.command", argv[0]))
            parts.append(a.integer("process.args_count", len(argv)))
            if self._command_args:
                if self._redactor is not None:
                    argv = self._redactor.redact(argv)
                parts.append(a.value("process.command_args", list(argv)))
        if image.container_id is not None:
            parts.append(a.text("container.id", image.container_id))
        error: str | None = None
        if exit_ev.exit_code is not None:
            parts.append(a.integer("process.exit.code", exit_ev.exit_code))
            if exit_ev.exit_code != 0:
                error = str(exit_ev.exit_code)
        if exit_ev.exit_signal is not None:
            error = signal_name(exit_ev.exit_signal)
            parts.append(a.integer("linnix.process.exit.signal", exit_ev.exit_signal))
        if error is not None:
            # CLI-span conventions: error.type is the exit code (or here the signal).
            parts.append(a.text("error.type", error))
            message = len_field(b"\x12", f"exited with {error}".encode())
            parts.append(len_field(b"\x7a", message + b"\x18" + varint(_STATUS_ERROR)))
        return len_field(b"\x12", b"".join(parts))


def build_span_exporter(
    config: Config, settings: ExportSettings, wall_offset_ns: Callable[[], int]
) -> SpanExporter | None:
    """The process-span exporter the settings ask for; None when traces are off."""
    if settings.traces is None:
        return None
    return SpanExporter(
        settings.traces,
        subtree_executables=settings.config.traces_subtree_executables,
        executables=settings.config.traces_executables,
        wall_offset_ns=wall_offset_ns,
        **exporter_options(config, settings),
    )
