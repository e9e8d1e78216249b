"""StreamHub: fan-out to bounded per-client queues, loss accounting, Last-Event-ID resume."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from otel_linnix import stream_hub
from otel_linnix.events import EventKind, ProcessEvent
from otel_linnix.recording import event_to_dict
from otel_linnix.stream_hub import StreamHub, StreamItem, Subscriber, SubscriberLimit
from tests.unit.conftest import DEADLINE_S, make_event, wait_until

S = 1_000_000_000
WALL_OFFSET_NS = 1_700_000_000 * S
KINDS = (EventKind.FORK, EventKind.EXEC, EventKind.EXIT)


def hub_of(*, backlog: int = 100, max_subscribers: int = 8, queue_events: int = 100) -> StreamHub:
    return StreamHub(backlog, max_subscribers, queue_events, lambda ts: ts + WALL_OFFSET_NS)


def event(seq: int, kind: EventKind = EventKind.EXEC, pid: int | None = None) -> ProcessEvent:
    """Event number ``seq`` (a process per seq unless ``pid`` says otherwise)."""
    pid = 1000 + seq if pid is None else pid
    return make_event(kind, pid, 10 * S + seq, ts_ns=10 * S + seq * 1000, comm=f"p{pid}").stamp(seq)


def events(first: int, last: int) -> list[ProcessEvent]:
    """Events first..last, kinds cycling fork, exec, exit."""
    return [event(seq, KINDS[seq % 3]) for seq in range(first, last + 1)]


def seqs(items: list[StreamItem]) -> list[int]:
    return [it.seq for it in items]


def only(kind: str) -> Callable[[StreamItem], bool]:
    return lambda it: it.kind == kind


def test_subscribers_get_events_in_publish_order() -> None:
    hub = hub_of()
    a = hub.subscribe(None, None)
    b = hub.subscribe(None, None)
    assert (a.replay, a.gap, a.restarted) == ([], 0, False)
    hub.emit(events(1, 2))
    hub.emit(events(3, 3))
    hub.publish(4, "alert", {"rule": "fork_storm"})
    hub.emit(events(5, 6))
    for sub in (a.subscriber, b.subscriber):
        items, lost = sub.take(0)
        assert (seqs(items), lost) == ([1, 2, 3, 4, 5, 6], 0)
        assert [it.kind for it in items] == ["exec", "exit", "fork", "alert", "exit", "fork"]
        assert items[0].event == event(1, EventKind.EXEC)
        assert sub.delivered == 6
    assert hub.stats()["last_id"] == 6


def test_take_without_events_times_out_empty() -> None:
    hub = hub_of()
    sub = hub.subscribe(None, None).subscriber
    assert sub.take(0.01) == ([], 0)


def test_each_subscriber_has_its_own_filter() -> None:
    hub = hub_of()
    execs = hub.subscribe(only("exec"), None).subscriber
    exits = hub.subscribe(only("exit"), None).subscriber
    everything = hub.subscribe(None, None).subscriber
    hub.emit(events(1, 6))
    assert seqs(execs.take(0)[0]) == [1, 4]
    assert seqs(exits.take(0)[0]) == [2, 5]
    assert seqs(everything.take(0)[0]) == [1, 2, 3, 4, 5, 6]
    # What a filter rejects is not lost: nobody asked for it.
    assert hub.stats()["lost"] == 0


def test_a_full_queue_loses_exactly_the_overflow_and_nobody_else_does() -> None:
    hub = hub_of(queue_events=3)
    slow = hub.subscribe(None, None).subscriber
    fast = hub.subscribe(None, None).subscriber
    got: list[int] = []
    for first in range(1, 11, 2):
        hub.emit(events(first, first + 1))
        items, lost = fast.take(0)
        assert lost == 0
        got.extend(seqs(items))
    assert got == list(range(1, 11))
    assert (slow.queued, slow.lost) == (3, 7)
    assert hub.stats()["lost"] == 7

    items, lost = slow.take(0)
    assert (seqs(items), lost) == ([1, 2, 3], 7)
    # The loss is reported once.
    assert slow.take(0) == ([], 0)
    # Room again: the next events arrive.
    hub.emit(events(11, 12))
    items, lost = slow.take(0)
    assert (seqs(items), lost) == ([11, 12], 0)
    assert (slow.lost, fast.lost) == (7, 0)


def test_overflow_within_one_batch_keeps_the_oldest() -> None:
    hub = hub_of(queue_events=4)
    sub = hub.subscribe(None, None).subscriber
    hub.emit(events(1, 10))
    items, lost = sub.take(0)
    assert (seqs(items), lost) == ([1, 2, 3, 4], 6)


def test_resume_returns_exactly_the_events_after_the_id() -> None:
    hub = hub_of(backlog=5)
    hub.emit(events(1, 10))

    sub = hub.subscribe(None, 7)
    assert (seqs(sub.replay), sub.gap, sub.restarted) == ([8, 9, 10], 0, False)

    # Events published after subscribing go to the queue, not the replay.
    hub.emit(events(11, 11))
    items, _ = sub.subscriber.take(0)
    assert seqs(items) == [11]

    up_to_date = hub.subscribe(None, 11)
    assert (seqs(up_to_date.replay), up_to_date.gap) == ([], 0)


def test_resume_applies_the_filter_to_the_replay() -> None:
    hub = hub_of(backlog=100)
    hub.emit(events(1, 10))
    sub = hub.subscribe(only("exec"), 3)
    assert seqs(sub.replay) == [4, 7, 10]


def test_resume_from_an_id_older_than_the_backlog_counts_the_gap() -> None:
    hub = hub_of(backlog=5)
    hub.emit(events(1, 10))
    sub = hub.subscribe(None, 2)
    # 3, 4 and 5 fell out of the backlog (6..10 are kept).
    assert (seqs(sub.replay), sub.gap, sub.restarted) == ([6, 7, 8, 9, 10], 3, False)


def test_resume_without_a_backlog_counts_everything_as_gap() -> None:
    hub = hub_of(backlog=0)
    hub.emit(events(1, 10))
    sub = hub.subscribe(None, 3)
    assert (sub.replay, sub.gap) == ([], 7)
    assert hub.stats()["backlog"] == 0


def test_resume_from_an_id_never_issued_is_a_restart() -> None:
    hub = hub_of(backlog=100)
    hub.emit(events(1, 4))
    sub = hub.subscribe(None, 9000)
    assert sub.restarted is True
    assert (seqs(sub.replay), sub.gap) == ([1, 2, 3, 4], 0)

    empty = hub_of()
    fresh = empty.subscribe(None, 5)
    assert (fresh.restarted, fresh.replay, fresh.gap) == (True, [], 0)


def test_subscriber_limit() -> None:
    hub = hub_of(max_subscribers=2)
    first = hub.subscribe(None, None).subscriber
    hub.subscribe(None, None)
    with pytest.raises(SubscriberLimit, match="2 stream clients"):
        hub.subscribe(None, 3)
    assert hub.stats()["rejected"] == 1
    assert hub.stats()["subscribers"] == 2
    hub.unsubscribe(first)
    hub.subscribe(None, None)
    assert hub.stats()["subscribers"] == 2


def test_unsubscribe_folds_the_loss_into_the_stats() -> None:
    hub = hub_of(queue_events=2)
    sub = hub.subscribe(None, None).subscriber
    hub.emit(events(1, 5))
    assert hub.stats()["lost"] == 3
    assert hub.stats()["queued"] == 2
    hub.unsubscribe(sub)
    stats = hub.stats()
    assert (stats["subscribers"], stats["lost"], stats["queued"]) == (0, 3, 0)
    assert hub.lost_total == 3
    hub.unsubscribe(sub)  # twice: counted once
    assert hub.stats()["lost"] == 3

    other = hub.subscribe(None, None).subscriber
    hub.emit(events(6, 9))
    assert other.lost == 2
    assert hub.stats()["lost"] == 5
    # Departed subscribers get nothing more.
    assert sub.queued == 2


def _blocked_in_wait(thread: threading.Thread) -> bool:
    """Whether ``thread`` sits in threading's Condition.wait (innermost Python frame)."""
    frame = sys._current_frames().get(thread.ident or -1)
    return (
        frame is not None
        and frame.f_code.co_name == "wait"
        and frame.f_code.co_filename.endswith("threading.py")
    )


def test_close_wakes_a_blocked_take() -> None:
    hub = hub_of()
    sub = hub.subscribe(None, None).subscriber
    result: list[Any] = []

    def reader() -> None:
        started = time.monotonic()
        result.append(sub.take(60.0))
        result.append(time.monotonic() - started)

    thread = threading.Thread(target=reader, name="blocked-take")
    thread.start()
    try:
        assert wait_until(lambda: _blocked_in_wait(thread)), "take() did not block"
        hub.close()
        thread.join(DEADLINE_S)
        assert not thread.is_alive()
    finally:
        if thread.is_alive():
            sub.close()
            thread.join(DEADLINE_S)
    assert result[0] == ([], 0)
    assert result[1] < DEADLINE_S
    assert sub.closed is True


def test_close_with_a_queued_event_wakes_take_with_it() -> None:
    hub = hub_of()
    sub = hub.subscribe(None, None).subscriber
    hub.emit(events(1, 1))
    hub.close()
    items, _ = sub.take(60.0)
    assert seqs(items) == [1]
    assert sub.closed is True


def test_frames_are_built_lazily_once_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(
        ev: ProcessEvent, wall_ns: int | None = None, boot_id: str | None = None
    ) -> dict[str, Any]:
        calls.append(ev.seq)
        return event_to_dict(ev, wall_ns, boot_id)

    monkeypatch.setattr(stream_hub, "event_to_dict", counting)
    hub = hub_of()
    hub.emit(events(1, 3))
    assert calls == [], "serialised with nobody listening"

    a = hub.subscribe(None, None).subscriber
    b = hub.subscribe(None, None).subscriber
    ev = event(4, EventKind.EXEC, pid=42)
    hub.emit([ev])
    (item_a,), _ = a.take(0)
    (item_b,), _ = b.take(0)
    assert item_a is item_b
    assert calls == []

    frame = item_a.frame()
    assert calls == [4]
    assert item_b.frame() is frame
    assert item_a.frame() is frame
    assert calls == [4]

    head, _, data = frame.decode().partition("data: ")
    assert head == "id: 4\nevent: exec\n"
    assert data.endswith("\n\n")
    assert json.loads(data) == event_to_dict(ev, ev.ts_ns + WALL_OFFSET_NS)


def test_an_alert_reaches_subscribers_with_kind_alert() -> None:
    hub = hub_of()
    alerts = hub.subscribe(only("alert"), None).subscriber
    everything = hub.subscribe(None, None).subscriber
    hub.emit(events(1, 3))
    hub.publish(4, "alert", {"rule": "oom_kill", "severity": "critical"})

    (item,), lost = alerts.take(0)
    assert (item.seq, item.kind, item.event, lost) == (4, "alert", None, 0)
    assert item.frame() == (
        b'id: 4\nevent: alert\ndata: {"rule":"oom_kill","severity":"critical"}\n\n'
    )
    assert seqs(everything.take(0)[0]) == [1, 2, 3, 4]
    # Alerts are kept for resumes like events.
    assert seqs(hub.subscribe(None, 3).replay) == [4]
    assert hub.stats()["last_id"] == 4


def test_subscriber_alone_counts_delivered_and_queued() -> None:
    sub = Subscriber(None, max_queue=10)
    items = [StreamItem(i, "exec", event(i), 0) for i in (1, 2)]
    sub.offer(items)
    assert sub.queued == 2
    taken, _ = sub.take(0)
    assert taken == items
    assert (sub.queued, sub.delivered, sub.lost) == (0, 2, 0)
