"""Fan-out of events to /stream clients, each with its own bounded queue.

The hub is a Sink: it runs on its own SinkWorker thread, never on the drain
loop. Per batch it appends to a bounded backlog (for ``Last-Event-ID``
resumes) and hands each subscriber the events that pass its filter. A
subscriber whose queue is full loses the overflow, counted, and is told how
many it lost the next time it reads; it never delays the hub or other
subscribers. The SSE frame of an event is built once, on first use, and
shared by every client (nothing is serialised when nobody listens).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from otel_linnix.events import ProcessEvent
from otel_linnix.recording import event_to_dict

__all__ = ["StreamHub", "StreamItem", "Subscriber", "SubscriberLimit"]


class StreamItem:
    """One event as the stream carries it: sequence, kind and a lazily built frame."""

    __slots__ = ("_frame", "boot_id", "event", "kind", "seq", "wall_ns")

    def __init__(
        self,
        seq: int,
        kind: str,
        event: ProcessEvent | None,
        wall_ns: int,
        data: dict[str, object] | None = None,
        *,
        boot_id: str | None = None,
    ) -> None:
        self.seq = seq
        self.kind = kind
        self.event = event
        self.wall_ns = wall_ns
        self.boot_id = boot_id
        self._frame: bytes | None = None
        if data is not None:
            self._frame = _frame(seq, kind, data)

    def frame(self) -> bytes:
        """``id:``, ``event:`` and ``data:`` lines, built once.

        Two clients racing here build it twice, harmlessly.
        """
        if self._frame is None and self.event is not None:
            self._frame = _frame(
                self.seq, self.kind, event_to_dict(self.event, self.wall_ns, self.boot_id)
            )
        return self._frame or b""


def _frame(seq: int, kind: str, data: dict[str, object]) -> bytes:
    # Bytes, built once: every client sends the same object, with no
    # per-client encoding copy.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode(), orjson.dumps(data))


def _item_of(
    entry: ProcessEvent | StreamItem, wall_offset_ns: int, boot_id: str | None
) -> StreamItem:
    if isinstance(entry, StreamItem):
        return entry
    return StreamItem(
        entry.seq, entry.kind.value, entry, entry.ts_ns + wall_offset_ns, boot_id=boot_id
    )


class SubscriberLimit(Exception):
    """Raised by subscribe() when the configured number of clients is reached."""


class Subscriber:
    """One client's queue. Written by the hub thread, read by the client's thread."""

    def __init__(self, accept: Callable[[StreamItem], bool] | None, max_queue: int) -> None:
        self.accept = accept
        self._max = max_queue
        self._queue: collections.deque[StreamItem] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._unreported_loss = 0
        self.lost = 0
        self.delivered = 0
        self.closed = False

    def offer(self, items: Sequence[StreamItem]) -> None:
        if self.accept is not None:
            items = [it for it in items if self.accept(it)]
        if not items:
            return
        with self._lock:
            room = self._max - len(self._queue)
            if room < len(items):
                dropped = len(items) - max(room, 0)
                self.lost += dropped
                self._unreported_loss += dropped
                items = items[: max(room, 0)]
            self._queue.extend(items)
        self._wake.set()

    def take(self, timeout_s: float) -> tuple[list[StreamItem], int]:
        """Wait up to ``timeout_s`` for events; returns them and the loss not yet reported."""
        if not self._queue and not self._unreported_loss:
            self._wake.wait(timeout_s)
        with self._lock:
            self._wake.clear()
            items = list(self._queue)
            self._queue.clear()
            lost, self._unreported_loss = self._unreported_loss, 0
        self.delivered += len(items)
        return items, lost

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a new client gets: its queue, the backlog to send first, and any gap."""

    subscriber: Subscriber
    replay: list[StreamItem]
    gap: int  # events between the requested id and the oldest retained one
    restarted: bool = False  # the requested id is from an earlier run of the agent


class StreamHub:
    """Backlog plus subscribers; a Sink for the pipeline (``emit``)."""

    name = "stream"

    def __init__(
        self,
        backlog: int,
        max_subscribers: int,
        queue_events: int,
        wall_from_boot: Callable[[int], int],
        boot_id: str | None = None,
    ) -> None:
        # Written into every event's data, so a saved stream replays with
        # the same lineage ids.
        self.boot_id = boot_id
        self._backlog: collections.deque[ProcessEvent | StreamItem] = collections.deque(
            maxlen=backlog or None
        )
        self._backlog_enabled = backlog > 0
        self._max_subscribers = max_subscribers
        self._queue_events = queue_events
        self._wall_from_boot = wall_from_boot
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._last_seq = 0
        self.lost_total = 0  # by departed subscribers, plus live ones in stats()
        self.rejected = 0

    # ---- Sink --------------------------------------------------------------

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        if not events:
            return
        # The backlog keeps the events themselves (a C-level extend): with no
        # client connected, nothing is built or serialised per event.
        subscribers = self._record(events, events[-1].seq)
        if subscribers:
            offset = self._wall_from_boot(0)
            items = [_item_of(ev, offset, self.boot_id) for ev in events]
            for sub in subscribers:
                sub.offer(items)

    def publish(self, seq: int, kind: str, data: dict[str, object]) -> None:
        """A non-process item (an alert) with its own, already assigned, sequence."""
        item = StreamItem(seq, kind, None, time.time_ns(), data)
        for sub in self._record([item], seq):
            sub.offer([item])

    def _record(
        self, entries: Sequence[ProcessEvent | StreamItem], last_seq: int
    ) -> list[Subscriber]:
        """Append to the backlog; returns the subscribers to offer the entries to."""
        with self._lock:
            if self._backlog_enabled:
                self._backlog.extend(entries)
            self._last_seq = max(self._last_seq, last_seq)
            return list(self._subscribers)

    def flush(self, timeout_s: float) -> None:
        """Nothing is buffered beyond the subscribers' own queues."""

    def shutdown(self, timeout_s: float) -> None:
        self.close()

    # ---- clients -----------------------------------------------------------

    def subscribe(
        self, accept: Callable[[StreamItem], bool] | None, last_event_id: int | None
    ) -> Subscription:
        """Register a client; with ``last_event_id``, what it missed comes first.

        Registration and the backlog snapshot happen under one lock, so an
        event is either in the replay or in the queue, never in both or
        neither. Raises SubscriberLimit when the client limit is reached.
        """
        sub = Subscriber(accept, self._queue_events)
        with self._lock:
            if len(self._subscribers) >= self._max_subscribers:
                self.rejected += 1
                raise SubscriberLimit(f"{self._max_subscribers} stream clients already connected")
            self._subscribers.add(sub)
            if last_event_id is None:
                return Subscription(sub, [], 0)
            backlog = list(self._backlog)
            last_seq = self._last_seq
        oldest = backlog[0].seq if backlog else last_seq + 1
        restarted = last_event_id > last_seq
        if restarted:
            # An id this run never issued: the agent restarted and numbering
            # began again. Everything retained is new to the client.
            last_event_id = 0
        offset = self._wall_from_boot(0)
        missed = [_item_of(it, offset, self.boot_id) for it in backlog if it.seq > last_event_id]
        gap = max(0, oldest - last_event_id - 1)
        if accept is not None:
            missed = [it for it in missed if accept(it)]
        return Subscription(sub, missed, gap, restarted)

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
                self.lost_total += sub.lost

    def close(self) -> None:
        """End every client's stream (agent shutdown)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.close()

    def stats(self) -> dict[str, int]:
        with self._lock:
            subs = list(self._subscribers)
            return {
                "subscribers": len(subs),
                "lost": self.lost_total + sum(s.lost for s in subs),
                "queued": sum(s.queued for s in subs),
                "rejected": self.rejected,
                "backlog": len(self._backlog),
                "last_id": self._last_seq,
            }
