"""Wires a source to the process table, the sampler and the sinks.

Order at start-up: attach the kernel program (records of processes born
from now on queue in the ring buffer), walk /proc for the processes that
already exist, apply that walk, then start draining. Nothing born in
between is missed, and the table tolerates the overlap.

The drain thread calls ``handle_batch``: attribute containers, apply to the
table (which assigns lineage ids), stamp sequence numbers and lineage ids,
hand to each sink's bounded queue. The
sampler runs on its own thread. Neither blocks on a sink.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from otel_linnix.containers import CgroupResolver, parse_container
from otel_linnix.events import (
    OPAQUE_EXEC_PATHS,
    EventKind,
    ProcessEvent,
    ProcessKey,
    ProcessSource,
)
from otel_linnix.process_table import HostSample, ProcessSample, ProcessTable, TableStats
from otel_linnix.redaction import Redactor
from otel_linnix.sampler import Sampler, SweepStats
from otel_linnix.sinks import SinkWorker
from otel_linnix.sources.base import Source, SourceStats
from otel_linnix.sources.procfs import ProcReader, bootstrap_scan
from otel_linnix.threads import AgentThread

__all__ = ["AgentStatus", "Pipeline", "SweepListener"]

SweepListener = Callable[[int, HostSample, Mapping[ProcessKey, ProcessSample]], None]

log = logging.getLogger(__name__)

# Recent loss marks the agent degraded for this long.
_LOSS_WINDOW_NS = 60_000_000_000


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """Everything /status and the self-metrics report."""

    source: ProcessSource
    degraded_reasons: tuple[str, ...]
    uptime_s: float
    events_by_kind: dict[str, int]
    source_stats: SourceStats
    sink_dropped: dict[str, int]
    sink_failures: dict[str, int]
    table: TableStats
    sampler: SweepStats
    bootstrap_processes: int
    cgroups: dict[str, int] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reasons)


class Pipeline:
    """Owns the flow of events; start/stop are idempotent."""

    def __init__(
        self,
        source: Source,
        table: ProcessTable,
        reader: ProcReader,
        resolver: CgroupResolver,
        sinks: Sequence[SinkWorker],
        *,
        clock: Callable[[], int],
        sample_interval_s: float,
        sampler_max_processes: int = 20_000,
        fd_limit_refresh_sweeps: int = 30,
        fd_count_refresh_sweeps: int = 5,
        idle_refresh_sweeps: int = 10,
        capture_kernel_threads: bool = False,
        redactor: Redactor | None = None,
        fallback_reason: str | None = None,
    ) -> None:
        self.source = source
        self.table = table
        self._reader = reader
        self._resolver = resolver
        self.sinks = list(sinks)
        self._clock = clock
        self._kthreads = capture_kernel_threads
        self._redactor = redactor
        self.fallback_reason = fallback_reason
        self.sampler = Sampler(
            reader,
            table,
            source.cpu_times_ns,
            clock,
            max_processes=sampler_max_processes,
            fd_limit_refresh_sweeps=fd_limit_refresh_sweeps,
            fd_count_refresh_sweeps=fd_count_refresh_sweeps,
            idle_refresh_sweeps=idle_refresh_sweeps,
        )
        self._sample_interval_s = sample_interval_s
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._by_kind: collections.Counter[str] = collections.Counter()
        self._loss_marks: collections.deque[tuple[int, int]] = collections.deque(maxlen=256)
        self._stop = threading.Event()
        self._sampler_thread: threading.Thread | None = None
        self._started_ns: int | None = None
        self._bootstrap_count = 0
        self.ready = False  # the start-up walk is applied and the source delivers
        self._sweep_listeners: list[SweepListener] = []
        self.sweep_listener_failures = 0
        self._cgroup_ids: dict[str, int] = {}

    # ---- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._started_ns is not None:
            return
        self._started_ns = self._clock()
        self.source.prepare()
        for sink in self.sinks:
            sink.start()
        self._bootstrap()
        self.source.start(self)
        self.ready = True
        self._stop.clear()
        self._sampler_thread = AgentThread(self._sample_loop, "linnix-sampler")
        self._sampler_thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the source, the sampler and the sinks, within about ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self.source.stop(max(0.1, deadline - time.monotonic() - 0.2))
        if self._sampler_thread is not None:
            self._sampler_thread.join(max(0.0, deadline - time.monotonic()))
            self._sampler_thread = None
        for sink in self.sinks:
            sink.stop(max(0.05, deadline - time.monotonic()))

    def _bootstrap(self) -> None:
        scan = bootstrap_scan(
            self._reader, self._clock(), traceparent=self.table.lineage.traceparent
        )
        events = []
        for found in scan.events:
            if found.kernel_thread and not self._kthreads:
                continue
            path = scan.cgroup_paths.get(found.key)
            events.append(self._with_cgroup_path(found, path) if path is not None else found)
        self._bootstrap_count = len(events)
        self.handle_batch(events)
        log.info("start-up walk of /proc found %d processes", len(events))

    def _with_cgroup_path(self, ev: ProcessEvent, path: str) -> ProcessEvent:
        cgroup_id = self._cgroup_ids.get(path)
        if cgroup_id is None and self._resolver.root is not None:
            try:
                cgroup_id = os.stat(self._resolver.root + path).st_ino
            except OSError:
                cgroup_id = 0
            self._cgroup_ids[path] = cgroup_id
        info = parse_container(path)
        return ev._replace(
            cgroup_id=cgroup_id or 0,
            container_id=info.container_id if info else None,
            container_runtime=info.runtime if info else None,
            pod_uid=info.pod_uid if info else None,
        )

    # ---- the hot path ---------------------------------------------------------

    def handle_batch(self, events: Sequence[ProcessEvent]) -> None:
        """Called by the source's thread with events in kernel order."""
        if not events:
            return
        enriched: list[ProcessEvent] = []
        for ev in events:
            enriched.append(self._enrich(ev, enriched))
        # The table assigns lineage ids as it applies the events; each event
        # is then stamped once with its sequence number and those ids.
        lineage = self.table.apply_batch(enriched)
        seq = self.reserve_seq(len(events))
        out = [
            ev.stamp(seq + i, None, ids)
            for i, (ev, ids) in enumerate(zip(enriched, lineage, strict=True))
        ]
        self._by_kind.update(ev.kind.value for ev in out)
        for sink in self.sinks:
            sink.offer(out)
        self.table.prune(out[-1].ts_ns)

    def reserve_seq(self, count: int = 1) -> int:
        """The first of ``count`` consecutive sequence numbers (/stream ids),
        shared by lifecycle events and alerts."""
        with self._seq_lock:
            first = self._seq + 1
            self._seq += count
        return first

    def _victim_cgroup(self, ev: ProcessEvent, batch: list[ProcessEvent]) -> int:
        """The OOM victim's cgroup: from its own earlier records in this batch
        (not in the table yet), else from the table."""
        key = ev.key
        for earlier in reversed(batch):
            if earlier.cgroup_id and earlier.key == key:
                return earlier.cgroup_id
        known = self.table.get(key)
        return known.cgroup_id if known is not None else 0

    def _enrich(self, ev: ProcessEvent, batch: list[ProcessEvent]) -> ProcessEvent:
        if ev.argv and self._redactor is not None:
            # Once, here: the table, the API, /stream, recordings and exporters
            # only ever see the redacted argv.
            argv = self._redactor.redact(ev.argv)
            if argv is not ev.argv:
                ev = ev._replace(argv=argv)
        if ev.exe is not None and ev.exe.startswith(OPAQUE_EXEC_PATHS):
            ev = self._resolve_exec_image(ev)
        if ev.kind is EventKind.OOM_KILL and not ev.cgroup_id:
            # The OOM tracepoint runs in the allocating task: take the
            # victim's cgroup from what is known of it.
            ev = ev._replace(cgroup_id=self._victim_cgroup(ev, batch))
        if ev.container_id is None and ev.cgroup_id > 1:
            info = self._resolver.container_of(ev.cgroup_id)
            if info is not None:
                # Before the table sees the event (it keeps the container);
                # rare on most hosts, so the common path builds one tuple.
                return ev._replace(
                    container_id=info.container_id,
                    container_runtime=info.runtime,
                    pod_uid=info.pod_uid,
                )
        return ev

    def _resolve_exec_image(self, ev: ProcessEvent) -> ProcessEvent:
        """The file behind an exec through a descriptor or /proc/self/exe.

        fexecve() (crun, systemd) and re-exec through /proc/self/exe (runc,
        podman) hand the kernel a path such as /dev/fd/3 that names no
        program; /proc/<pid>/exe does, while this very process still runs.
        Otherwise the path is kept as the kernel gave it.
        """
        image = self._reader.exe(ev.pid)
        stat = self._reader.stat(ev.pid) if image else None
        if image and stat is not None and ProcessKey.of(ev.pid, stat.start_time_ns) == ev.key:
            return ev._replace(exe=image)
        return ev

    # ---- sampling and status ---------------------------------------------------

    def add_sweep_listener(self, listener: SweepListener) -> None:
        """Call ``listener(now_ns, host, samples)`` after every sampler sweep."""
        self._sweep_listeners.append(listener)

    def _sample_loop(self) -> None:
        while not self._stop.wait(self._sample_interval_s):
            try:
                self.sampler.sweep()
            except Exception:
                log.exception("sampler sweep failed")
            host = self.sampler.last_host
            if host is not None:
                for listener in self._sweep_listeners:
                    try:
                        listener(host.ts_ns, host, self.sampler.last_samples)
                    except Exception:
                        # A failing consumer (rules, recorder) is logged and
                        # counted; sampling goes on.
                        self.sweep_listener_failures += 1
                        log.exception("sweep listener %r failed", listener)
            self.table.prune(self._clock())
            self._loss_marks.append((self._clock(), self.source.stats().lost_total))

    def status(self) -> AgentStatus:
        now = self._clock()
        source_stats = self.source.stats()
        reasons: list[str] = []
        if self.fallback_reason:
            reasons.append(f"kernel capture unavailable: {self.fallback_reason}")
        recent = [lost for ts, lost in self._loss_marks if now - ts <= _LOSS_WINDOW_NS]
        if recent and source_stats.lost_total > min(recent):
            reasons.append(f"{source_stats.lost_total - min(recent)} events lost in the last 60 s")
        return AgentStatus(
            source=self.source.kind,
            degraded_reasons=tuple(reasons),
            uptime_s=(now - (self._started_ns or now)) / 1e9,
            events_by_kind=dict(self._by_kind),
            source_stats=source_stats,
            sink_dropped={s.sink.name: s.dropped for s in self.sinks},
            sink_failures={s.sink.name: s.failures for s in self.sinks},
            table=self.table.stats(),
            sampler=self.sampler.last,
            bootstrap_processes=self._bootstrap_count,
            cgroups=self._resolver.stats(),
        )
