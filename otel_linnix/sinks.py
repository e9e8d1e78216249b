"""Consumers of events, each behind its own bounded queue and thread.

The drain loop only appends to a deque and sets an event; a slow sink
(a file on a stalled disk, a collector that is down) fills its own queue and
then drops, counting every dropped event. It never slows the drain loop or
another sink.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Protocol

import orjson

from otel_linnix.events import ProcessEvent, ProcessKey
from otel_linnix.process_table import HostSample, ProcessSample
from otel_linnix.recording import encode_event, sweep_to_dict
from otel_linnix.threads import AgentThread

__all__ = ["JsonlWriter", "Sink", "SinkWorker"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Something that consumes events on its own worker thread."""

    name: str

    def emit(self, events: Sequence[ProcessEvent]) -> None: ...

    def flush(self, timeout_s: float) -> None: ...

    def shutdown(self, timeout_s: float) -> None: ...


class SinkWorker:
    """Runs one Sink off the hot path with a bounded queue."""

    def __init__(self, sink: Sink, max_queue: int = 65_536, batch_max: int = 4096) -> None:
        self.sink = sink
        self._queue: collections.deque[ProcessEvent] = collections.deque()
        self._max = max_queue
        self._batch_max = batch_max
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # Events accepted and not yet handed to the sink: what drain() waits on.
        self._pending = 0
        self._pending_cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.delivered = 0
        self.failures = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = AgentThread(self._run, f"linnix-sink-{self.sink.name}")
            self._thread.start()

    def offer(self, events: Sequence[ProcessEvent]) -> None:
        """Enqueue without blocking; what does not fit is dropped and counted."""
        room = self._max - len(self._queue)
        if room < len(events):
            self.dropped += len(events) - max(room, 0)
            events = events[: max(room, 0)]
        if events:
            with self._pending_cond:
                self._pending += len(events)
            self._queue.extend(events)
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [
                    self._queue.popleft() for _ in range(min(self._batch_max, len(self._queue)))
                ]
                try:
                    self.sink.emit(batch)
                    self.delivered += len(batch)
                except Exception:
                    self.failures += 1
                    log.exception("sink %s failed on %d events", self.sink.name, len(batch))
                with self._pending_cond:
                    self._pending -= len(batch)
                    if not self._pending:
                        self._pending_cond.notify_all()
            if self._stopping.is_set() and not self._queue:
                return

    def drain(self, timeout_s: float) -> bool:
        """Wait until every accepted event went to the sink; False on timeout."""
        with self._pending_cond:
            return self._pending_cond.wait_for(lambda: not self._pending, timeout_s)

    def stop(self, timeout_s: float) -> None:
        """Deliver what is queued, flush and shut the sink down, all within the
        timeout (one deadline: a sink exporting to a dead collector must not
        get the whole timeout once for each step)."""
        deadline = time.monotonic() + timeout_s
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()
            self._thread.join(timeout_s)
            self._thread = None
        self.sink.flush(max(0.0, deadline - time.monotonic()))
        self.sink.shutdown(max(0.0, deadline - time.monotonic()))


class JsonlWriter:
    """Writes the recorded-event format (docs/events.md) to a binary stream."""

    name = "jsonl"

    def __init__(
        self, stream: IO[bytes], wall_ns: Callable[[int], int], boot_id: str | None = None
    ) -> None:
        self._stream = stream
        self._wall_ns = wall_ns
        # On every line: a replay recomputes lineage ids with it.
        self.boot_id = boot_id
        # Events come from the sink's thread, sweeps from the sampler's.
        self._lock = threading.Lock()

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        offset = self._wall_ns(0)
        boot_id = self.boot_id
        lines = [encode_event(ev, ev.ts_ns + offset, boot_id) for ev in events]
        with self._lock:
            self._stream.write(b"\n".join(lines) + b"\n")

    def write_sweep(
        self, now_ns: int, host: HostSample, samples: Mapping[ProcessKey, ProcessSample]
    ) -> None:
        """A sweep listener: one ``"kind": "sweep"`` line per sampler sweep."""
        line = orjson.dumps(sweep_to_dict(now_ns, host, samples, self._wall_ns(now_ns)))
        with self._lock:
            self._stream.write(line + b"\n")

    def flush(self, timeout_s: float) -> None:
        with self._lock:
            self._stream.flush()

    def shutdown(self, timeout_s: float) -> None:
        self.flush(timeout_s)
