"""OTLP log records of lifecycle events and alerts, through a real receiver."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_linnix.events import EventKind, ProcessEvent, ProcessKey
from otel_linnix.export.logs import ALERT_EVENT, LogExporter, TokenBucket
from otel_linnix.export.settings import OtlpTarget
from otel_linnix.redaction import REDACTED, Redactor
from otel_linnix.rules.alerts import Alert
from otel_linnix.rules.model import Severity, Subject
from tests.otlp_receiver import LogRecordView, OtlpReceiver
from tests.unit.conftest import RECORDINGS, make_event, wait_until
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
USERS = {1000: "alice"}
K_CC1 = ProcessKey.of(300, 12_000_000_015)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def exporter_for(
    rx: OtlpReceiver, protocol: str = "http/protobuf", **kwargs: object
) -> LogExporter:
    options: dict[str, object] = {
        "max_queue": 1000,
        "batch_max": 100,
        "max_per_s": 10_000.0,
        "wall_offset_ns": lambda: WALL_OFFSET_NS,
        "owner": USERS.get,
        "linger_s": 0.05,
        "version": "9.9",
    }
    options.update(kwargs)
    return LogExporter(
        target("logs", rx.endpoint(protocol), protocol),
        RESOURCE,
        **options,  # type: ignore[arg-type]
    )


def by_seq(records: list[LogRecordView]) -> dict[int, LogRecordView]:
    return {r.attributes["linnix.event.seq"]: r for r in records if r.event_name != ALERT_EVENT}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_lifecycle_event_is_one_record_with_semconv_attributes(
    receiver: OtlpReceiver, tmp_path: Path, protocol: str
) -> None:
    stack = ReplayStack(TREE, tmp_path)
    logs = exporter_for(receiver, protocol, table=stack.table)
    stack.add(logs)
    try:
        events = stack.run(TREE_EVENTS)
        records = by_seq(receiver.wait_for_logs(lambda rs: len(rs) >= TREE_EVENTS))
    finally:
        stack.stop()
    assert len(records) == TREE_EVENTS
    assert logs.stats() == {"exported": TREE_EVENTS, "dropped": 0, "failed": 0, "rate_limited": 0}
    for ev in events:
        rec = records[ev.seq]
        assert rec.protocol == protocol
        assert rec.event_name == f"linnix.process.{ev.kind.value}"
        assert rec.resource == RESOURCE
        assert (rec.scope_name, rec.scope_version) == ("otel_linnix", "9.9")
        assert rec.duplicate_attributes == []
        assert rec.time_unix_nano == wall(ev.ts_ns)
        # The record's own trace context is the process's lineage.
        assert ev.trace_id is not None and ev.span_id is not None
        assert (rec.trace_id, rec.span_id) == (ev.trace_id, ev.span_id)
        assert rec.attributes.get("linnix.parent_span_id") == ev.parent_span_id
        assert rec.attributes["process.pid"] == ev.pid
        assert rec.attributes["process.parent_pid"] == ev.ppid
        assert rec.attributes["process.user.id"] == ev.uid
        assert "process.command_args" not in rec.attributes  # opt-in only

    exec_cc = records[7].attributes
    assert exec_cc["process.executable.name"] == "cc"
    assert exec_cc["process.executable.path"] == "/usr/bin/cc"
    assert exec_cc["process.command"] == "cc"
    assert exec_cc["process.args_count"] == 5
    assert exec_cc["process.owner"] == "alice"
    assert exec_cc["process.creation.time"] == "2023-11-14T22:13:32.000000015Z"
    assert records[7].severity_text == "INFO" and records[7].severity_number == 9

    # Exit records carry no image in the kernel record: it comes from the table.
    exit_ok = records[9]
    assert exit_ok.attributes["process.executable.path"] == "/usr/bin/cc"
    assert exit_ok.attributes["process.exit.code"] == 0
    assert exit_ok.attributes["process.exit.time"] == "2023-11-14T22:13:32.800000015Z"
    assert exit_ok.severity_text == "INFO"
    segv = records[10]
    assert segv.attributes["linnix.process.exit.signal"] == 11
    assert segv.attributes["linnix.process.core_dumped"] is True
    assert "process.exit.code" not in segv.attributes
    assert (segv.severity_text, segv.severity_number) == ("WARN", 13)
    assert records[11].attributes["process.exit.code"] == 2
    oom = records[14]
    assert oom.event_name == "linnix.process.oom_kill"
    assert (oom.severity_text, oom.severity_number) == ("ERROR", 17)
    assert oom.attributes["process.executable.name"] == "stress"

    # The parent links rebuild the tree: make's children point at make's span.
    make_span = records[4].span_id
    assert records[7].attributes["linnix.parent_span_id"] == make_span
    assert records[8].attributes["linnix.parent_span_id"] == make_span
    # A fork runs its parent's image until it execs.
    assert records[5].attributes["process.executable.path"] == "/usr/bin/make"


def test_command_args_are_opt_in_and_always_redacted(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    logs = exporter_for(receiver, command_args=True, redactor=Redactor())
    secret = make_event(
        EventKind.EXEC,
        42,
        5_000_000_000,
        ppid=1,
        comm="mysql",
        exe="/usr/bin/mysql",
        argv=("mysql", "--password", "hunter2", "-h", "db"),
        trace_id="ab" * 16,
        span_id="cd" * 8,
    )
    logs.emit([secret])
    (rec,) = receiver.wait_for_logs(lambda rs: len(rs) == 1)
    logs.shutdown(1.0)
    assert rec.attributes["process.command_args"] == ["mysql", "--password", REDACTED, "-h", "db"]
    assert rec.attributes["process.args_count"] == 5
    assert "linnix.parent_span_id" not in rec.attributes  # a lineage root


def test_rate_limit_never_drops_exits(receiver: OtlpReceiver) -> None:
    now = [100.0]
    logs = exporter_for(receiver, max_per_s=10.0, clock=lambda: now[0])
    forks = [make_event(EventKind.FORK, 1000 + i, (i + 1) * 10**7, ppid=1) for i in range(100)]
    exits = [
        make_event(EventKind.EXIT, 1000 + i, (i + 1) * 10**7, ppid=1, exit_code=0)
        for i in range(100)
    ]
    logs.emit(forks + exits)
    records = receiver.wait_for_logs(lambda rs: len(rs) >= 110)
    # A second later ten more forks are allowed, exits still all pass.
    now[0] += 1.0
    logs.emit(forks[:20] + exits[:5])
    records = receiver.wait_for_logs(lambda rs: len(rs) >= 125)
    logs.shutdown(1.0)
    names = [r.event_name for r in records]
    assert names.count("linnix.process.exit") == 105
    assert names.count("linnix.process.fork") == 20
    assert logs.stats()["rate_limited"] == 90 + 10
    assert logs.stats()["dropped"] == 0


def test_token_bucket_refills_at_the_rate_and_banks_one_second() -> None:
    now = [0.0]
    bucket = TokenBucket(5.0, lambda: now[0])
    assert sum(bucket.take() for _ in range(10)) == 5
    now[0] = 0.4
    bucket.refill()
    assert sum(bucket.take() for _ in range(10)) == 2
    now[0] = 100.0
    bucket.refill()
    assert sum(bucket.take() for _ in range(10)) == 5


def test_a_full_queue_drops_and_counts_and_keeps_room_for_exits() -> None:
    # Nobody listens: nothing leaves the queue while the sender lingers.
    logs = LogExporter(
        target("logs", "http://127.0.0.1:9", "http/protobuf"),
        RESOURCE,
        max_queue=100,
        batch_max=10_000,
        max_per_s=1e6,
        linger_s=60.0,
    )
    forks = [make_event(EventKind.FORK, 2000 + i, (i + 1) * 10**7, ppid=1) for i in range(200)]
    logs.emit(forks)
    assert len(logs.queue) == 75  # a quarter stays free for exits
    assert logs.stats()["dropped"] == 125
    exits = [ev._replace(kind=EventKind.EXIT, exit_code=0) for ev in forks[:40]]
    logs.emit(exits)
    assert len(logs.queue) == 100
    assert logs.stats()["dropped"] == 125 + 15
    started = time.monotonic()
    logs.shutdown(0.3)
    assert time.monotonic() - started < 1.0
    # Unsent at shutdown: dropped too, so every record is accounted for.
    assert logs.stats()["dropped"] == 240
    assert logs.stats()["exported"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_failures_are_counted_and_export_resumes_when_the_collector_returns(
    receiver: OtlpReceiver, protocol: str
) -> None:
    logs = exporter_for(receiver, protocol)
    receiver.stop()
    first = [make_event(EventKind.FORK, 3000 + i, (i + 1) * 10**7, ppid=1) for i in range(10)]
    logs.emit(first)
    assert wait_until(lambda: logs.stats()["failed"] >= 2), logs.stats()
    assert logs.stats()["exported"] == 0
    receiver.start()  # same ports
    later = [make_event(EventKind.FORK, 4000 + i, (i + 1) * 10**7, ppid=1) for i in range(5)]
    logs.emit(later)
    records = receiver.wait_for_logs(lambda rs: len(rs) >= 15, timeout_s=15)
    logs.shutdown(1.0)
    assert sorted(r.attributes["process.pid"] for r in records) == [
        *range(3000, 3010),
        *range(4000, 4005),
    ]
    assert logs.stats()["exported"] == 15
    assert logs.stats()["dropped"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_refusing_collector_is_retried_then_delivered(
    receiver: OtlpReceiver, protocol: str
) -> None:
    receiver.mode = "refuse"
    logs = exporter_for(receiver, protocol)
    logs.emit([make_event(EventKind.FORK, 5000, 10**7, ppid=1)])
    receiver.wait_refused(2)
    assert logs.stats()["failed"] >= 1
    receiver.mode = "ok"
    (rec,) = receiver.wait_for_logs(lambda rs: len(rs) == 1, timeout_s=15)
    logs.shutdown(1.0)
    assert rec.attributes["process.pid"] == 5000
    assert logs.stats()["exported"] == 1


def test_a_rejected_request_is_dropped_not_retried(receiver: OtlpReceiver) -> None:
    # The wrong path: 404 is not retryable, so the batch is given up and counted.
    logs = LogExporter(
        _target_with_path(receiver, "/v1/nowhere"),
        RESOURCE,
        max_queue=100,
        batch_max=10,
        max_per_s=1e6,
        linger_s=0.05,
    )
    logs.emit([make_event(EventKind.FORK, 6000 + i, (i + 1) * 10**7, ppid=1) for i in range(3)])
    assert wait_until(lambda: logs.stats()["dropped"] == 3)
    logs.shutdown(0.5)
    assert logs.stats() == {"exported": 0, "dropped": 3, "failed": 1, "rate_limited": 0}


def _target_with_path(rx: OtlpReceiver, path: str) -> OtlpTarget:
    base = target("logs", rx.http_endpoint, "http/protobuf")
    return dataclasses.replace(base, endpoint=rx.http_endpoint + path)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_slow_collector_never_blocks_emit_and_shutdown_is_bounded(
    receiver: OtlpReceiver, protocol: str
) -> None:
    receiver.mode = "slow"
    receiver.delay_s = 30.0
    logs = exporter_for(receiver, protocol, max_queue=500, batch_max=50)
    events = [make_event(EventKind.FORK, 7000 + i, (i + 1) * 10**7, ppid=1) for i in range(2000)]
    started = time.monotonic()
    for i in range(0, len(events), 100):
        logs.emit(events[i : i + 100])
    assert time.monotonic() - started < 1.0
    assert logs.stats()["dropped"] > 0  # bounded: the queue filled and overflowed
    started = time.monotonic()
    logs.flush(0.5)
    logs.shutdown(0.5)
    assert time.monotonic() - started < 1.6
    stats = logs.stats()
    assert stats["exported"] == 0
    assert stats["dropped"] == 2000


def test_alert_transitions_become_linnix_alert_records(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    stack = ReplayStack(TREE, tmp_path)
    logs = exporter_for(receiver, table=stack.table)
    stack.add(logs)
    try:
        stack.run(TREE_EVENTS)
        cc1 = stack.table.get(K_CC1)
        assert cc1 is not None
        alert = Alert(
            id="0123456789abcdef",
            rule="cpu_spike",
            severity=Severity.HIGH,
            subject=Subject("process", str(K_CC1), 300, K_CC1.start_time_ns, "cc", "/usr/bin/cc"),
            message="cc at 99% CPU for 10 s",
            evidence={"avg_cpu_percent": 99.5, "samples": 10, "top": ["a", "b"], "x": {"y": 1}},
            first_seen_ns=12_100_000_000,
            last_seen_ns=12_600_000_000,
            tags=("cpu",),
        )
        logs.alert(alert)
        alert.state = "resolved"
        alert.resolved_ns = 13_000_000_000
        logs.alert(alert)
        records = receiver.wait_for_logs(
            lambda rs: sum(r.event_name == ALERT_EVENT for r in rs) == 2
        )
    finally:
        stack.stop()
    firing, resolved = [r for r in records if r.event_name == ALERT_EVENT]
    assert (firing.severity_number, firing.severity_text) == (17, "high")
    assert (resolved.severity_number, resolved.severity_text) == (9, "high")
    assert firing.body == "cc at 99% CPU for 10 s"
    attrs = firing.attributes
    assert attrs["linnix.alert.rule"] == "cpu_spike"
    assert attrs["linnix.alert.state"] == "firing"
    assert attrs["linnix.alert.severity"] == "high"
    assert attrs["linnix.alert.id"] == "0123456789abcdef"
    assert attrs["linnix.alert.subject.key"] == str(K_CC1)
    assert attrs["linnix.alert.evidence.avg_cpu_percent"] == 99.5
    assert attrs["linnix.alert.evidence.samples"] == 10
    assert attrs["linnix.alert.evidence.top"] == ["a", "b"]
    assert attrs["linnix.alert.evidence.x"] == '{"y":1}'
    assert attrs["linnix.alert.tags"] == ["cpu"]
    assert attrs["process.pid"] == 300
    assert attrs["process.executable.name"] == "cc"
    assert firing.time_unix_nano == wall(12_600_000_000)
    assert resolved.time_unix_nano == wall(13_000_000_000)
    assert resolved.attributes["linnix.alert.state"] == "resolved"
    # The subject's lineage: the same ids as its lifecycle records.
    assert (firing.trace_id, firing.span_id) == (cc1.trace_id, cc1.span_id)
    assert attrs["linnix.parent_span_id"] == cc1.parent_span_id


def test_an_event_without_lineage_has_no_trace_context(receiver: OtlpReceiver) -> None:
    logs = exporter_for(receiver)
    ev: ProcessEvent = make_event(EventKind.FORK, 8000, 10**7, ppid=1)
    logs.emit([ev])
    (rec,) = receiver.wait_for_logs(lambda rs: len(rs) == 1)
    logs.shutdown(1.0)
    assert (rec.trace_id, rec.span_id) == ("", "")


POD = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
CONTAINER = "ab" * 32


def test_event_and_alert_records_carry_the_same_container_attributes(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    # The build tree, run inside a Kubernetes pod's containerd container.
    lines = TREE.read_text().splitlines()
    boxed = tmp_path / "boxed.jsonl"
    with boxed.open("w") as out:
        for line in lines:
            rec = json.loads(line)
            rec.update(container_id=CONTAINER, container_runtime="containerd", pod_uid=POD)
            out.write(json.dumps(rec) + "\n")
    stack = ReplayStack(boxed, tmp_path)
    logs = exporter_for(receiver, table=stack.table)
    stack.add(logs)
    try:
        stack.run(TREE_EVENTS)
        logs.alert(
            Alert(
                id="0123456789abcdef",
                rule="cpu_spike",
                severity=Severity.HIGH,
                subject=Subject(
                    "process", str(K_CC1), 300, K_CC1.start_time_ns, "cc", "/usr/bin/cc", CONTAINER
                ),
                message="cc at 99% CPU for 10 s",
                evidence={},
                first_seen_ns=12_100_000_000,
                last_seen_ns=12_600_000_000,
            )
        )
        records = receiver.wait_for_logs(lambda rs: len(rs) >= TREE_EVENTS + 1)
    finally:
        stack.stop()
    expected = {
        "container.id": CONTAINER,
        "linnix.container.runtime": "containerd",
        "k8s.pod.uid": POD,
    }
    assert len(records) == TREE_EVENTS + 1
    for rec in records:
        got = {k: rec.attributes.get(k) for k in expected}
        assert got == expected, rec.event_name
        assert rec.duplicate_attributes == []
