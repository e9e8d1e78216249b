"""The /proc polling source: the fallback when the kernel probe cannot run.

Every interval it lists /proc, reads each process's stat, and diffs the set of
(pid, start time) keys against the previous scan: new keys become EXEC events,
vanished keys EXIT events. The stat reads double as the CPU accounting of
fallback mode (:meth:`ProcfsPollingSource.cpu_times_ns`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from otel_linnix.events import EventKind, ProcessEvent, ProcessKey, ProcessSource
from otel_linnix.sources.base import EventSink, SourceStats
from otel_linnix.sources.procfs import (
    ProcReader,
    ProcStat,
    boottime_ns,
    parent_start_of,
    read_exec_event,
)
from otel_linnix.threads import AgentThread

__all__ = ["ProcfsPollingSource"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Known:
    """What an EXIT event needs of a process seen earlier (argv is not kept)."""

    pid: int
    ppid: int
    start_time_ns: int
    parent_start_time_ns: int | None
    comm: str
    uid: int
    gid: int
    kernel_thread: bool

    @classmethod
    def of(cls, event: ProcessEvent) -> _Known:
        return cls(
            event.pid,
            event.ppid,
            event.start_time_ns,
            event.parent_start_time_ns,
            event.comm,
            event.uid,
            event.gid,
            event.kernel_thread,
        )

    def exit_event(self, ts_ns: int) -> ProcessEvent:
        # Polling never sees the exit itself: status and signal stay unknown.
        return ProcessEvent(
            kind=EventKind.EXIT,
            ts_ns=ts_ns,
            pid=self.pid,
            ppid=self.ppid,
            start_time_ns=self.start_time_ns,
            comm=self.comm,
            uid=self.uid,
            gid=self.gid,
            parent_start_time_ns=self.parent_start_time_ns,
            source=ProcessSource.PROCFS,
            exit_code=None,
            exit_signal=None,
            kernel_thread=self.kernel_thread,
        )


def _by_start(key: ProcessKey) -> tuple[int, int]:
    return key.start_time_ns, key.pid


class ProcfsPollingSource:
    """A :class:`~otel_linnix.sources.base.Source` that polls /proc.

    Polling only sees what is alive at a scan. A process that starts and exits
    between two scans (shorter-lived than ``interval_s``) is never reported;
    an exec that replaces the image of an already-seen process is not
    noticed; exit status and signal are unknown. That blindness cannot be
    counted, so ``stats().lost`` holds only the events of batches a failing
    sink raised on (``sink_error``), and the agent reports itself degraded
    while this source is in use.

    The first scan of a source (the first one after :meth:`start`, unless
    :meth:`scan_once` was called before) only records a baseline and emits
    nothing: processes alive at start-up come from the separate bootstrap
    walk. Each later scan delivers at most one batch: all EXIT events, then
    all EXEC events, so a reused pid shows the old key's exit first.
    """

    kind: ProcessSource = ProcessSource.PROCFS

    def __init__(
        self,
        reader: ProcReader,
        interval_s: float,
        clock: Callable[[], int] = boottime_ns,
        *,
        traceparent: bool = False,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._reader = reader
        # Read each new process's TRACEPARENT, as the kernel probe does at exec.
        self._traceparent = traceparent
        self._interval_s = interval_s
        self._clock = clock
        self._scan_lock = threading.Lock()
        self._known: dict[ProcessKey, _Known] | None = None
        self._cpu_times: Mapping[int, int] = MappingProxyType({})
        self._events = 0
        self._scans = 0
        self._lost: dict[str, int] = {}
        # Separate from the scan lock so stats() never waits for a long scan.
        self._counter_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def prepare(self) -> None:
        """Take the baseline scan now (before the start-up walk), once."""
        with self._scan_lock:
            has_baseline = self._known is not None
        if not has_baseline:
            self.scan_once()

    def start(self, sink: EventSink) -> None:
        """Start the polling thread; idempotent. A stopped source stays stopped."""
        with self._state_lock:
            if self._stopping.is_set():
                raise RuntimeError("a stopped ProcfsPollingSource cannot be restarted")
            if self._thread is not None:
                return
            self._thread = AgentThread(self._run, "linnix-procfs-poll", (sink,))
            self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop polling and join the thread for at most ``timeout_s``; idempotent."""
        with self._state_lock:
            self._stopping.set()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning("procfs polling thread still busy after %.1f s", timeout_s)

    def stats(self) -> SourceStats:
        """Events produced, scans done (as ``drains``), events a failing sink dropped."""
        with self._counter_lock:
            return SourceStats(events=self._events, lost=dict(self._lost), drains=self._scans)

    def cpu_times_ns(self) -> Mapping[int, int]:
        """utime+stime per pid from the last scan (empty before the first)."""
        return self._cpu_times

    def scan_once(self) -> list[ProcessEvent]:
        """Scan /proc once, update the state and return this scan's batch.

        The polling thread calls this every interval; tests call it directly
        to drive scans deterministically. Returns [] for the baseline scan.
        """
        with self._scan_lock:
            stats: dict[ProcessKey, ProcStat] = {}
            for pid in self._reader.pids():
                stat = self._reader.stat(pid)
                if stat is not None:
                    stats[ProcessKey.of(pid, stat.start_time_ns)] = stat
            now_ns = self._clock()
            self._cpu_times = MappingProxyType({s.pid: s.cpu_time_ns for s in stats.values()})

            baseline = self._known is None
            previous = self._known or {}
            exits = [
                previous[k].exit_event(now_ns)
                for k in sorted(previous.keys() - stats.keys(), key=_by_start)
            ]
            known = {k: v for k, v in previous.items() if k in stats}
            start_times = {s.pid: s.start_time_ns for s in stats.values()}
            execs: list[ProcessEvent] = []
            for key in sorted(stats.keys() - previous.keys(), key=_by_start):
                stat = stats[key]
                event = read_exec_event(
                    self._reader,
                    stat,
                    ts_ns=now_ns,
                    parent_start_time_ns=parent_start_of(stat, start_times),
                    bootstrap=False,
                    traceparent=self._traceparent,
                )
                # None: gone already (or pid reused mid-read); if a process
                # still holds the key, the next scan tries again.
                if event is not None:
                    known[key] = _Known.of(event)
                    execs.append(event)

            self._known = known
            batch = [] if baseline else exits + execs
            with self._counter_lock:
                self._scans += 1
                self._events += len(batch)
            return batch

    def _run(self, sink: EventSink) -> None:
        while not self._stopping.is_set():
            try:
                batch = self.scan_once()
            except (OSError, ValueError):
                # Not a vanished process (the reader absorbs those) but /proc
                # itself failing, e.g. EMFILE: the state is unchanged, so the
                # next scan reports whatever this one missed.
                logger.warning("procfs scan failed", exc_info=True)
                batch = []
            if batch and not self._stopping.is_set():
                self._deliver(sink, batch)
            if self._stopping.wait(self._interval_s):
                break

    def _deliver(self, sink: EventSink, batch: list[ProcessEvent]) -> None:
        try:
            sink.handle_batch(batch)
        except Exception:  # a failing sink must not end polling: log, count, go on
            logger.exception("sink failed on a batch of %d procfs events", len(batch))
            with self._counter_lock:
                self._lost["sink_error"] = self._lost.get("sink_error", 0) + len(batch)
