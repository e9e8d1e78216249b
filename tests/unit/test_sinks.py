"""SinkWorker: ordered delivery, bounded queue with counted drops, isolation of failures."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from otel_linnix.events import EventKind, ProcessEvent
from otel_linnix.recording import event_from_dict, iso_time
from otel_linnix.sinks import JsonlWriter, SinkWorker
from tests.unit.conftest import DEADLINE_S, CollectingSink, make_event, wait_until


def events(first: int, count: int) -> list[ProcessEvent]:
    return [make_event(EventKind.FORK, pid, pid, seq=pid) for pid in range(first, first + count)]


def seqs(evs: Sequence[ProcessEvent]) -> list[int]:
    return [ev.seq for ev in evs]


class GatedSink(CollectingSink):
    """Blocks in emit() until the gate opens; says when it is blocked."""

    def __init__(self) -> None:
        super().__init__("gated")
        self.gate = threading.Event()
        self.entered = threading.Event()

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        self.entered.set()
        if not self.gate.wait(DEADLINE_S):
            raise AssertionError("the gate was never opened")
        super().emit(events)


class FailingSink(CollectingSink):
    """Raises on any batch holding a pid in ``poison``."""

    def __init__(self, poison: set[int]) -> None:
        super().__init__("failing")
        self.poison = poison

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        if any(ev.pid in self.poison for ev in events):
            raise RuntimeError("collector unavailable")
        super().emit(events)


@pytest.fixture
def gated() -> Iterator[GatedSink]:
    sink = GatedSink()
    yield sink
    sink.gate.set()  # never leave a worker thread parked on a failed test


def test_delivers_every_event_in_order(collecting_sink: CollectingSink) -> None:
    worker = SinkWorker(collecting_sink, batch_max=7)
    worker.start()
    try:
        for first in range(1, 101, 20):
            worker.offer(events(first, 20))
        assert collecting_sink.wait_for(100)
    finally:
        worker.stop(DEADLINE_S)
    assert seqs(collecting_sink.events) == list(range(1, 101))
    assert all(len(b) <= 7 for b in collecting_sink.batches)
    assert (worker.delivered, worker.dropped, worker.failures) == (100, 0, 0)


def test_a_blocked_sink_makes_offer_drop_and_count(gated: GatedSink) -> None:
    worker = SinkWorker(gated, max_queue=10)
    worker.start()
    try:
        worker.offer(events(1, 1))
        assert gated.entered.wait(DEADLINE_S)  # the worker holds event 1, the queue is empty

        started = time.monotonic()
        worker.offer(events(2, 25))
        worker.offer(events(27, 3))
        offer_s = time.monotonic() - started

        assert offer_s < 1.0
        assert not gated.gate.is_set()  # offer() returned while the sink was still blocked
        assert worker.dropped == 15 + 3
        assert worker.delivered == 0

        gated.gate.set()
        assert gated.wait_for(11)
        assert worker.drain(DEADLINE_S)
    finally:
        gated.gate.set()
        worker.stop(DEADLINE_S)
    assert seqs(gated.events) == list(range(1, 12))
    assert worker.delivered == 11
    assert worker.dropped == 18


def test_queue_has_room_again_after_draining(collecting_sink: CollectingSink) -> None:
    worker = SinkWorker(collecting_sink, max_queue=5)
    worker.offer(events(1, 8))  # not started: nothing leaves the queue
    assert worker.dropped == 3
    worker.start()
    try:
        assert collecting_sink.wait_for(5)
        assert worker.drain(DEADLINE_S)
        worker.offer(events(9, 5))
        assert collecting_sink.wait_for(10)
    finally:
        worker.stop(DEADLINE_S)
    assert seqs(collecting_sink.events) == [1, 2, 3, 4, 5, 9, 10, 11, 12, 13]
    assert worker.dropped == 3


def test_a_failing_sink_is_counted_and_later_batches_still_arrive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = FailingSink(poison={2})
    worker = SinkWorker(sink)
    worker.start()
    try:
        with caplog.at_level(logging.ERROR, logger="otel_linnix.sinks"):
            worker.offer(events(1, 3))
            assert wait_until(lambda: worker.failures == 1)
        worker.offer(events(4, 2))
        assert sink.wait_for(2)
        worker.offer(events(6, 1))
        assert sink.wait_for(3)
    finally:
        worker.stop(DEADLINE_S)
    assert seqs(sink.events) == [4, 5, 6]
    assert (worker.failures, worker.delivered) == (1, 3)
    assert any("failing" in r.getMessage() for r in caplog.records)


def test_stop_delivers_what_was_queued_then_shuts_the_sink_down(
    collecting_sink: CollectingSink,
) -> None:
    worker = SinkWorker(collecting_sink)
    worker.offer(events(1, 50))
    worker.start()
    worker.stop(DEADLINE_S)
    assert seqs(collecting_sink.events) == list(range(1, 51))
    assert (collecting_sink.flushes, collecting_sink.shutdowns) == (1, 1)


def test_stop_delivers_events_queued_behind_a_busy_sink(gated: GatedSink) -> None:
    worker = SinkWorker(gated)
    worker.start()
    worker.offer(events(1, 1))
    assert gated.entered.wait(DEADLINE_S)
    worker.offer(events(2, 9))
    gated.gate.set()
    worker.stop(DEADLINE_S)
    assert seqs(gated.events) == list(range(1, 11))


def test_start_and_stop_are_idempotent(collecting_sink: CollectingSink) -> None:
    worker = SinkWorker(collecting_sink)
    worker.start()
    worker.start()
    worker.offer(events(1, 3))
    worker.stop(DEADLINE_S)
    worker.stop(DEADLINE_S)
    assert seqs(collecting_sink.events) == [1, 2, 3]
    named = [t for t in threading.enumerate() if t.name == "linnix-sink-memory"]
    assert named == []


def test_jsonl_writer_writes_one_valid_line_per_event() -> None:
    out = io.BytesIO()
    offset = 1_700_000_000_000_000_000
    writer = JsonlWriter(out, lambda ts: ts + offset)
    batch_a = [
        make_event(
            EventKind.EXEC,
            1,
            10,
            ts_ns=11,
            comm="sh",
            argv=("sh", "-c", "a\nb"),
            exe="/bin/sh",
            seq=1,
        )
    ]
    batch_b = [
        make_event(EventKind.EXIT, 1, 10, ts_ns=20, exit_code=0, seq=2),
        make_event(EventKind.FORK, 2, 30, comm="sh", seq=3),
    ]
    writer.emit(batch_a)
    writer.emit(batch_b)
    writer.shutdown(1.0)
    lines = out.getvalue().decode().split("\n")
    assert lines[-1] == ""  # every line ends with a newline
    lines = lines[:-1]
    assert len(lines) == 3
    for line, ev in zip(lines, batch_a + batch_b, strict=True):
        obj = json.loads(line)
        assert obj["time"] == iso_time(ev.ts_ns + offset)
        back = event_from_dict(obj)
        assert back == ev
        assert back.seq == ev.seq
