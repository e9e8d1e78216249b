"""The contract every event source fulfils, and what it reports about itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from otel_linnix.events import ProcessEvent, ProcessSource

__all__ = ["EventSink", "Source", "SourceStats"]


class EventSink(Protocol):
    """Receives batches of events in the order the source saw them.

    Called from the source's own thread; it must not block for long (the
    drain loop of the kernel source is the hot path).
    """

    def handle_batch(self, events: Sequence[ProcessEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceStats:
    """Counters a source exposes; every drop it knows of is in here.

    ``lost`` maps an event kind (``fork``, ``exec``, ``exit``...) to the
    number of its records lost since start.
    """

    events: int = 0
    lost: Mapping[str, int] = field(default_factory=dict)
    drains: int = 0
    # source-specific counters shown on /status (kernel map pressure...)
    counters: Mapping[str, int] = field(default_factory=dict)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())


class Source(Protocol):
    """A producer of ProcessEvents: kernel probe, /proc poller or recording."""

    kind: ProcessSource

    def prepare(self) -> None:
        """Get ready to capture (attach probes, take a baseline) without delivering.

        Called before the /proc start-up walk, so that a process born while
        the walk runs is seen by the source; idempotent.
        """

    def start(self, sink: EventSink) -> None:
        """Begin delivering events to ``sink``; idempotent."""

    def stop(self, timeout_s: float) -> None:
        """Stop delivering and release resources within ``timeout_s``; idempotent."""

    def stats(self) -> SourceStats:
        """A snapshot of the source's counters."""

    def cpu_times_ns(self) -> Mapping[int, int] | None:
        """Total on-CPU time per thread-group id, or None if this source has none."""
