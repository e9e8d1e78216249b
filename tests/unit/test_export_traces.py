"""Process spans (exec to exit) through a real receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_linnix.events import EventKind, ProcessEvent
from otel_linnix.export.traces import SpanExporter, signal_name
from otel_linnix.redaction import REDACTED, Redactor
from tests.otlp_receiver import OtlpReceiver, SpanView
from tests.unit.conftest import RECORDINGS, make_event
from tests.unit.export_stack import (
    PROTOCOLS,
    RESOURCE,
    WALL_OFFSET_NS,
    ReplayStack,
    target,
    wall,
)

TREE = RECORDINGS / "build_tree.jsonl"
TREE_EVENTS = 15
TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def exporter_for(
    rx: OtlpReceiver, protocol: str = "http/protobuf", **kwargs: object
) -> SpanExporter:
    options: dict[str, object] = {"wall_offset_ns": lambda: WALL_OFFSET_NS, "linger_s": 0.05}
    options.update(kwargs)
    return SpanExporter(
        target("traces", rx.endpoint(protocol), protocol),
        RESOURCE,
        **options,  # type: ignore[arg-type]
    )


def replay(
    rx: OtlpReceiver, tmp_path: Path, spans: int, **kwargs: Any
) -> tuple[list[ProcessEvent], list[SpanView], SpanExporter]:
    stack = ReplayStack(TREE, tmp_path)
    exporter = exporter_for(rx, **kwargs)
    stack.add(exporter)
    try:
        events = stack.run(TREE_EVENTS)
        found = rx.wait_for_spans(lambda ss: len(ss) >= spans)
    finally:
        stack.stop()
    return events, found, exporter


def first(events: list[ProcessEvent], kind: EventKind, pid: int) -> ProcessEvent:
    return next(ev for ev in events if ev.kind is kind and ev.pid == pid)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_make_subtree_is_one_trace_nested_like_the_process_tree(
    receiver: OtlpReceiver, tmp_path: Path, protocol: str
) -> None:
    events, spans, exporter = replay(
        receiver, tmp_path, 3, subtree_executables=["make"], protocol=protocol
    )
    assert len(spans) == 3  # make and its two cc; not bash, not stress
    by_pid = {s.attributes["process.pid"]: s for s in spans}
    make, cc1, cc2 = by_pid[200], by_pid[300], by_pid[301]
    make_exec = first(events, EventKind.EXEC, 200)
    assert make_exec.trace_id is not None
    assert {s.trace_id for s in spans} == {make_exec.trace_id}
    assert make.span_id == make_exec.span_id
    assert make.parent_span_id == ""  # the subtree's root
    assert cc1.parent_span_id == make.span_id
    assert cc2.parent_span_id == make.span_id
    assert cc1.span_id == first(events, EventKind.EXEC, 300).span_id
    assert make.name == "make" and cc1.name == "cc"
    assert make.kind == 1  # INTERNAL
    assert make.start_time_unix_nano == wall(make_exec.ts_ns)
    assert make.end_time_unix_nano == wall(first(events, EventKind.EXIT, 200).ts_ns)
    assert make.attributes["process.executable.path"] == "/usr/bin/make"
    assert make.attributes["process.exit.code"] == 2
    assert (make.status_code, make.attributes["error.type"]) == (2, "2")
    assert cc1.status_code == 0 and "error.type" not in cc1.attributes
    assert cc1.attributes["process.exit.code"] == 0
    assert (cc2.status_code, cc2.attributes["error.type"]) == (2, "SIGSEGV")
    assert cc2.attributes["linnix.process.exit.signal"] == 11
    assert "process.command_args" not in cc1.attributes
    assert exporter.stats() == {"exported": 3, "dropped": 0, "failed": 0, "open": 0}


def test_an_executable_filter_traces_only_those_executables(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    _, spans, _ = replay(receiver, tmp_path, 2, executables=["/usr/bin/cc"], command_args=True)
    assert sorted(s.attributes["process.pid"] for s in spans) == [300, 301]
    # No traced ancestor: each is a root span.
    assert {s.parent_span_id for s in spans} == {""}
    assert {tuple(s.attributes["process.command_args"]) for s in spans} == {
        ("cc", "-c", "main.c", "-o", "main.o"),
        ("cc", "-c", "util.c"),
    }


def test_without_filters_every_exited_exec_is_a_span_and_the_rest_stay_open(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    _, spans, exporter = replay(receiver, tmp_path, 4)
    assert sorted(s.name for s in spans) == ["cc", "cc", "make", "stress"]
    stress = next(s for s in spans if s.name == "stress")
    assert stress.attributes["error.type"] == "SIGKILL"
    by_name = {s.name: s for s in spans}
    # bash has a span too (still open): make hangs under it.
    assert by_name["make"].parent_span_id != ""
    assert exporter.open_spans == 1


def _ids(n: int) -> dict[str, Any]:
    return {"trace_id": TRACE, "span_id": f"{n:016x}"}


def test_children_of_a_fork_without_exec_hang_under_the_nearest_span(
    receiver: OtlpReceiver,
) -> None:
    exporter = exporter_for(receiver, subtree_executables=["make"])
    t = 10**9
    events = [
        make_event(EventKind.EXEC, 10, t, ppid=1, comm="make", exe="/usr/bin/make", **_ids(10)),
        # make forks a subshell that never execs; the subshell forks cc.
        make_event(EventKind.FORK, 11, t + 1, ppid=10, parent_start_time_ns=t, **_ids(11)),
        make_event(EventKind.FORK, 12, t + 2, ppid=11, parent_start_time_ns=t + 1, **_ids(12)),
        make_event(
            EventKind.EXEC,
            12,
            t + 2,
            ts_ns=t + 5,
            ppid=11,
            comm="cc",
            exe="/usr/bin/cc",
            parent_start_time_ns=t + 1,
            **_ids(12),
        ),
        make_event(EventKind.EXIT, 12, t + 2, ts_ns=t + 9, ppid=11, exit_code=0, **_ids(12)),
        make_event(EventKind.EXIT, 11, t + 1, ts_ns=t + 10, ppid=10, exit_code=0, **_ids(11)),
        make_event(EventKind.EXIT, 10, t, ts_ns=t + 11, ppid=1, exit_code=0, **_ids(10)),
    ]
    exporter.emit(events)
    spans = receiver.wait_for_spans(lambda ss: len(ss) == 2)
    exporter.shutdown(1.0)
    by_name = {s.name: s for s in spans}
    assert by_name["cc"].parent_span_id == f"{10:016x}"
    assert by_name["make"].parent_span_id == ""
    assert by_name["cc"].end_time_unix_nano == wall(t + 9)


def test_a_traceparent_root_keeps_the_application_span_as_parent(
    receiver: OtlpReceiver,
) -> None:
    exporter = exporter_for(receiver, command_args=True, redactor=Redactor())
    app_span = "b7ad6b7169203331"
    t = 10**9
    exporter.emit(
        [
            make_event(
                EventKind.EXEC,
                20,
                t,
                ppid=1,
                comm="deploy",
                exe="/opt/deploy",
                argv=("deploy", "--token", "s3cr3t"),
                traceparent=f"00-{TRACE}-{app_span}-01",
                parent_span_id=app_span,
                **_ids(20),
            ),
            make_event(EventKind.EXIT, 20, t, ts_ns=t + 5, ppid=1, exit_code=0, **_ids(20)),
        ]
    )
    (span,) = receiver.wait_for_spans(lambda ss: len(ss) == 1)
    exporter.shutdown(1.0)
    assert (span.trace_id, span.parent_span_id) == (TRACE, app_span)
    assert span.attributes["process.command_args"] == ["deploy", "--token", REDACTED]


def test_open_spans_and_tracked_processes_are_bounded_and_counted(
    receiver: OtlpReceiver,
) -> None:
    exporter = exporter_for(receiver, max_open=2, max_tracked=3)
    t = 10**9
    execs = [
        make_event(EventKind.EXEC, 30 + i, t + i, ppid=1, comm="x", exe="/bin/x", **_ids(30 + i))
        for i in range(5)
    ]
    exporter.emit(execs)
    assert exporter.open_spans == 2
    # The oldest were forgotten: their exits produce no span.
    exporter.emit([ev._replace(kind=EventKind.EXIT, exit_code=0) for ev in execs])
    spans = receiver.wait_for_spans(lambda ss: len(ss) == 2)
    exporter.shutdown(1.0)
    assert sorted(s.attributes["process.pid"] for s in spans) == [33, 34]
    stats = exporter.stats()
    assert stats["exported"] == 2
    assert stats["dropped"] == 3 + 2  # three open spans, two tracked parents forgotten
    assert exporter.open_spans == 0


def test_signal_names() -> None:
    assert signal_name(9) == "SIGKILL"
    assert signal_name(200) == "SIG200"
