"""A source that replays a recording (docs/events.md) instead of the kernel.

Used by ``otel-linnix replay``, by rule tests, and by the default test tier,
which drives the real pipeline from fixtures without root or bcc.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from otel_linnix.events import ProcessEvent, ProcessSource
from otel_linnix.recording import open_recording, read_events
from otel_linnix.sources.base import EventSink, SourceStats
from otel_linnix.threads import AgentThread

__all__ = ["ReplaySource"]

# Keep the first errors verbatim for the report; count all of them.
_MAX_KEPT_ERRORS = 100


class ReplaySource:
    """Delivers a JSONL recording in file order, in batches."""

    kind = ProcessSource.REPLAY

    def __init__(self, path: str | Path, batch_size: int = 1024) -> None:
        self.path = Path(path)
        self._batch_size = batch_size
        self.errors: list[tuple[int, str]] = []
        self.error_count = 0
        self._events = 0
        self._thread: threading.Thread | None = None
        self.done = threading.Event()

    def _on_error(self, line_no: int, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append((line_no, reason))

    def run(self, sink: EventSink) -> int:
        """Replay the whole file synchronously; returns the number of events.

        Raises OSError if the file cannot be opened; bad lines are recorded in
        ``errors`` / ``error_count`` and skipped.
        """
        batch: list[ProcessEvent] = []
        with open_recording(self.path) as fh:
            for event in read_events(fh, self._on_error):
                batch.append(event)
                if len(batch) >= self._batch_size:
                    self._deliver(sink, batch)
                    batch = []
        if batch:
            self._deliver(sink, batch)
        self.done.set()
        return self._events

    def _deliver(self, sink: EventSink, batch: list[ProcessEvent]) -> None:
        self._events += len(batch)
        sink.handle_batch(batch)

    def prepare(self) -> None:
        """Nothing to attach: a recording is complete before it is read."""

    def start(self, sink: EventSink) -> None:
        if self._thread is None:
            self._thread = AgentThread(self._run_in_thread, "linnix-replay", (sink,))
            self._thread.start()

    def _run_in_thread(self, sink: EventSink) -> None:
        try:
            self.run(sink)
        except OSError as exc:
            # Reported like a bad line (line 0: the file itself), never a hang.
            self._on_error(0, f"cannot read {self.path}: {exc.strerror}")
        finally:
            self.done.set()

    def stop(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stats(self) -> SourceStats:
        return SourceStats(
            events=self._events, lost={}, drains=0, counters={"bad_lines": self.error_count}
        )

    def cpu_times_ns(self) -> Mapping[int, int] | None:
        return None
