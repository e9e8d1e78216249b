"""The live process tree, keyed by (pid, start time).

Accepts events in any order (exit before exec, child before parent, a
/proc bootstrap racing kernel records), survives PID reuse, keeps exited
processes for a grace period so /graph can still show them, and is bounded:
when full it evicts exited entries first, then the oldest live ones, and
counts both. No I/O, no threads; a lock makes it safe to query from the API
while the drain loop writes.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from otel_linnix.events import NS_PER_TICK, EventKind, ProcessEvent, ProcessKey, ProcessSource
from otel_linnix.lineage import LineagePolicy, parse_traceparent

__all__ = [
    "GRAPH_FIELDS",
    "FactsRow",
    "GraphRow",
    "GraphRows",
    "HostSample",
    "ProcessInfo",
    "ProcessSample",
    "ProcessTable",
    "TableStats",
]

_T = TypeVar("_T")

# /graph walks at most this far up; a deeper chain means a cycle in bad input.
_MAX_DEPTH = 4096


class ProcessSample(NamedTuple):
    """One sampler reading of a live process."""

    ts_ns: int
    cpu_time_ns: int | None
    cpu_percent: float | None  # of one core, over the last interval
    rss_bytes: int | None
    fd_count: int | None
    fd_limit: int | None
    threads: int | None
    state: str | None  # the /proc state letter: R, S, D, Z, T...


class HostSample(NamedTuple):
    """Host-wide figures read with each sampler sweep."""

    ts_ns: int
    cpus: int
    load1: float
    # /proc/pressure avg10 percentages: "cpu.some", "memory.some",
    # "memory.full", "io.some", "io.full"; empty where PSI is absent.
    psi: Mapping[str, float]


class ProcessInfo(NamedTuple):
    """A read-only snapshot of one table entry.

    A NamedTuple because /processes builds thousands per request: it costs
    a tenth of a frozen dataclass of this width to construct.
    """

    key: ProcessKey
    ppid: int
    parent_key: ProcessKey | None
    start_time_ns: int
    comm: str
    exe: str | None
    argv: tuple[str, ...] | None
    argv_truncated: bool
    uid: int
    gid: int
    cgroup_id: int
    container_id: str | None
    container_runtime: str | None
    pod_uid: str | None
    kernel_thread: bool
    bootstrap: bool
    source: ProcessSource
    exec_count: int
    exited: bool
    exit_ts_ns: int | None
    exit_code: int | None
    exit_signal: int | None
    core_dumped: bool
    exit_inferred: bool  # the exit was not observed: deduced from PID reuse
    cpu_time_ns: int | None  # at exit
    peak_rss_bytes: int | None
    oom_killed: bool
    sample: ProcessSample | None
    # Lineage (otel_linnix.lineage): the TRACEPARENT the process's environment
    # holds as far as known, and its span-style ids.
    traceparent: str | None
    trace_id: str
    span_id: str
    parent_span_id: str | None

    @property
    def pid(self) -> int:
        return self.key.pid


@dataclass(frozen=True, slots=True)
class TableStats:
    live: int
    exited: int
    evicted_exited: int
    evicted_live: int
    exits_inferred: int
    traceparent_invalid: int = 0  # malformed TRACEPARENT values seen at exec (ignored)


class _Entry:
    """Mutable table row; never leaves this module (ProcessInfo does)."""

    __slots__ = (
        "argv",
        "argv_truncated",
        "bootstrap",
        "cgroup_id",
        "comm",
        "container_id",
        "container_runtime",
        "core_dumped",
        "cpu_time_ns",
        "exe",
        "exec_count",
        "exec_ts_ns",
        "exit_code",
        "exit_inferred",
        "exit_signal",
        "exit_ts_ns",
        "exited",
        "gid",
        "kernel_thread",
        "key",
        "lineage",
        "oom_killed",
        "parent_key",
        "parent_span_id",
        "peak_rss_bytes",
        "pod_uid",
        "ppid",
        "sample",
        "source",
        "span_id",
        "start_time_ns",
        "tp_known",
        "trace_id",
        "traceparent",
        "uid",
    )

    def __init__(self, ev: ProcessEvent, key: ProcessKey) -> None:
        self.key = key
        self.ppid = ev.ppid
        self.parent_key: ProcessKey | None = None
        self.start_time_ns = ev.start_time_ns
        self.comm = ev.comm
        self.exe: str | None = None
        self.argv: tuple[str, ...] | None = None
        self.argv_truncated = False
        self.exec_ts_ns = -1
        self.exec_count = 0
        self.uid = ev.uid
        self.gid = ev.gid
        self.cgroup_id = ev.cgroup_id
        self.container_id = ev.container_id
        self.container_runtime = ev.container_runtime
        self.pod_uid = ev.pod_uid
        self.kernel_thread = ev.kernel_thread
        self.bootstrap = ev.bootstrap
        self.source = ev.source
        self.exited = False
        self.exit_ts_ns: int | None = None
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.core_dumped = False
        self.exit_inferred = False
        self.cpu_time_ns: int | None = None
        self.peak_rss_bytes: int | None = None
        self.oom_killed = False
        self.sample: ProcessSample | None = None
        # Set by ProcessTable._assign_lineage right after construction.
        self.trace_id = ""
        self.span_id = ""
        self.parent_span_id: str | None = None
        self.lineage: tuple[str, str, str | None] = ("", "", None)
        # The TRACEPARENT of the environment, and whether it is known at all
        # (a process whose parent was never seen may hold anything).
        self.traceparent: str | None = None
        self.tp_known = False

    def set_lineage(self, trace_id: str, span_id: str, parent_span_id: str | None) -> None:
        self.trace_id, self.span_id, self.parent_span_id = trace_id, span_id, parent_span_id
        # The tuple the pipeline stamps on every event, built once per change.
        self.lineage = (trace_id, span_id, parent_span_id)

    def info(self) -> ProcessInfo:
        # One C-level fetch of every field, in ProcessInfo's order: a
        # snapshot of thousands of processes is built per /processes request.
        return tuple.__new__(ProcessInfo, _INFO_FIELDS(self))


# Every ProcessInfo field is an _Entry attribute of the same name.
_INFO_FIELDS = operator.attrgetter(*ProcessInfo._fields)

# What a rule condition reads of a process: comm, exe, argv, uid, container id,
# container runtime, parent key (rules.facts indexes it in this order).
FactsRow = tuple[
    str, str | None, tuple[str, ...] | None, int, str | None, str | None, ProcessKey | None
]
_FACTS_FIELDS = operator.attrgetter(
    "comm", "exe", "argv", "uid", "container_id", "container_runtime", "parent_key"
)

# What a /graph node shows of a process: key, ppid, parent key, start time,
# comm, exe, uid, gid, exec count, bootstrap, exited, exit code, exit signal,
# container id, trace id, span id, parent span id (api.serialize reads it in
# this order). One C-level fetch per node instead of a whole ProcessInfo: a
# graph of thousands of descendants is built per /graph request.
# GRAPH_FIELDS fetches it from a table entry or from a ProcessInfo alike.
GraphRow = tuple[
    ProcessKey,
    int,
    ProcessKey | None,
    int,
    str,
    str | None,
    int,
    int,
    int,
    bool,
    bool,
    int | None,
    int | None,
    str | None,
    str,
    str,
    str | None,
]
GRAPH_FIELDS = operator.attrgetter(
    "key",
    "ppid",
    "parent_key",
    "start_time_ns",
    "comm",
    "exe",
    "uid",
    "gid",
    "exec_count",
    "bootstrap",
    "exited",
    "exit_code",
    "exit_signal",
    "container_id",
    "trace_id",
    "span_id",
    "parent_span_id",
)


@dataclass(frozen=True, slots=True)
class GraphRows:
    """The lineage of one process, read under one lock (a consistent cut)."""

    focus: GraphRow
    ancestors: list[GraphRow]  # parent first, up to the oldest one in the table
    siblings: list[GraphRow]
    levels: list[list[GraphRow]]  # descendants breadth first: children, grandchildren...
    truncated: bool  # more descendants than asked for


class ProcessTable:
    """Processes by key, with parent/child links and bounded retention."""

    def __init__(
        self,
        max_entries: int = 100_000,
        exited_retention_ns: int = 60_000_000_000,
        lineage: LineagePolicy | None = None,
    ):
        self._max = max_entries
        # Boot id and spawners the lineage ids are computed with.
        self.lineage = lineage if lineage is not None else LineagePolicy()
        self._traceparent_invalid = 0
        self._retention_ns = exited_retention_ns
        self._entries: dict[ProcessKey, _Entry] = {}
        self._live_by_pid: dict[int, ProcessKey] = {}
        # Indexed by the parent's key whether or not the parent is (yet) in the
        # table, so a child seen before its parent is linked when it arrives.
        self._children: dict[ProcessKey, set[ProcessKey]] = {}
        self._exited: OrderedDict[ProcessKey, int] = OrderedDict()
        self._lock = threading.RLock()
        self._evicted_exited = 0
        self._evicted_live = 0
        self._exits_inferred = 0

    # ---- writes -----------------------------------------------------------

    def apply(self, ev: ProcessEvent) -> tuple[str, str, str | None]:
        """Apply one event; returns the process's (trace id, span id, parent span id)."""
        with self._lock:
            return self._apply(ev)

    def apply_batch(self, events: Iterable[ProcessEvent]) -> list[tuple[str, str, str | None]]:
        """Apply events in order; returns the lineage ids of each one's process
        as they stand right after that event (what the pipeline stamps)."""
        with self._lock:
            return [self._apply(ev) for ev in events]

    def _apply(self, ev: ProcessEvent) -> tuple[str, str, str | None]:
        kind = ev.kind
        # The key, built inline once: this runs for every event.
        start = ev.start_time_ns
        key = tuple.__new__(ProcessKey, (ev.pid, start - start % NS_PER_TICK))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._new_entry(ev, key)
        elif entry.parent_key is None and ev.parent_start_time_ns is not None and ev.ppid > 0:
            self._link(entry, ProcessKey.of(ev.ppid, ev.parent_start_time_ns))
        if kind is EventKind.EXEC:
            # Older data never overwrites newer: a /proc bootstrap read after
            # an exec already holds that exec's argv.
            if ev.ts_ns >= entry.exec_ts_ns:
                entry.exec_ts_ns = ev.ts_ns
                entry.comm = ev.comm
                entry.exe = ev.exe if ev.exe is not None else entry.exe
                entry.argv = ev.argv if ev.argv is not None else entry.argv
                entry.argv_truncated = ev.argv_truncated
                entry.uid, entry.gid = ev.uid, ev.gid
                self._set_cgroup(entry, ev)
                if self.lineage.traceparent:
                    self._exec_traceparent(entry, ev.traceparent)
            if not ev.bootstrap:
                entry.exec_count += 1
        elif kind is EventKind.EXIT:
            self._mark_exited(entry, ev.ts_ns, inferred=False)
            entry.exit_code = ev.exit_code
            entry.exit_signal = ev.exit_signal
            entry.core_dumped = ev.core_dumped
            entry.cpu_time_ns = ev.cpu_time_ns
            entry.peak_rss_bytes = ev.peak_rss_bytes
            if entry.exe is None and entry.exec_count == 0:
                entry.comm = ev.comm
        elif kind is EventKind.FORK:
            self._set_cgroup(entry, ev)
        elif kind is EventKind.OOM_KILL:
            entry.oom_killed = True
        return entry.lineage

    def _assign_lineage(self, entry: _Entry, ev: ProcessEvent) -> None:
        """Lineage ids of a new entry, in O(1) from its parent's entry.

        Computed once here (and changed only by a TRACEPARENT at exec), so the
        ids stay stable after ancestors are pruned and no event walks the tree.
        """
        key = entry.key
        digest = self.lineage.digest(key.pid, key.start_time_ns)
        span_id = digest[:8].hex()
        parent_key = entry.parent_key
        parent = self._entries.get(parent_key) if parent_key is not None else None
        if parent is not None:
            # fork copies the environment: the child holds the parent's TRACEPARENT.
            entry.traceparent, entry.tp_known = parent.traceparent, parent.tp_known
            if (
                parent_key is not None
                and parent_key.pid > 1
                and not self.lineage.starts_work(parent.comm, parent.exe)
            ):
                entry.set_lineage(parent.trace_id, span_id, parent.span_id)
                return
        elif entry.ppid > 1 and ev.trace_id is not None:
            # A replayed event whose parent is not in the recording (recorded
            # without the start-up walk): keep the lineage it was recorded with.
            entry.set_lineage(ev.trace_id, span_id, ev.parent_span_id)
            return
        entry.set_lineage(digest[:16].hex(), span_id, None)

    def _exec_traceparent(self, entry: _Entry, value: str | None) -> None:
        """A TRACEPARENT set for this process (not the one it inherited
        unchanged) makes it join that trace, under that parent span."""
        if entry.tp_known and value == entry.traceparent:
            # Inherited unchanged: the real parent stays the parent span, so a
            # tree under one traceparent keeps its shape.
            return
        entry.traceparent, entry.tp_known = value, True
        if value is None:
            return
        parsed = parse_traceparent(value)
        if parsed is None:
            self._traceparent_invalid += 1
            return
        entry.set_lineage(parsed.trace_id, entry.span_id, parsed.parent_id)

    def _set_cgroup(self, entry: _Entry, ev: ProcessEvent) -> None:
        if ev.cgroup_id:
            entry.cgroup_id = ev.cgroup_id
            entry.container_id = ev.container_id
            entry.container_runtime = ev.container_runtime
            entry.pod_uid = ev.pod_uid

    def _new_entry(self, ev: ProcessEvent, key: ProcessKey) -> _Entry:
        parent_key = ev.parent_key
        if parent_key is None and ev.ppid > 0:
            parent_key = self._live_by_pid.get(ev.ppid)
        entry = _Entry(ev, key)
        self._entries[key] = entry
        if parent_key is not None:
            self._link(entry, parent_key)
        self._assign_lineage(entry, ev)
        if ev.kind is EventKind.EXIT:
            self._retire_older_holder(entry, ev.ts_ns)
        else:
            self._claim_pid(entry, ev.ts_ns)
        self._enforce_bound()
        return entry

    def _link(self, entry: _Entry, parent_key: ProcessKey) -> None:
        entry.parent_key = parent_key
        entry.ppid = parent_key.pid
        siblings = self._children.get(parent_key)
        if siblings is None:
            siblings = self._children[parent_key] = set()
        siblings.add(entry.key)

    def _retire_older_holder(self, entry: _Entry, ts_ns: int) -> bool:
        """Retire the live holder of ``entry``'s pid if it started earlier.

        One pid names at most one live process. If an older process still
        holds it, that one has exited without us seeing the exit (a lost exit,
        or a record still on its way): mark it exited, inferred. Returns False
        when the holder is the newer process (``entry`` is the stale one).
        """
        holder_key = self._live_by_pid.get(entry.key.pid)
        if holder_key is None or holder_key == entry.key:
            return True
        holder = self._entries[holder_key]
        if holder.start_time_ns <= entry.start_time_ns:
            self._mark_exited(holder, ts_ns, inferred=True)
            return True
        return False

    def _claim_pid(self, entry: _Entry, ts_ns: int) -> None:
        """Make ``entry`` the live holder of its pid, or mark it stale."""
        if self._retire_older_holder(entry, ts_ns):
            self._live_by_pid[entry.key.pid] = entry.key
        else:
            self._mark_exited(entry, ts_ns, inferred=True)

    def _mark_exited(self, entry: _Entry, ts_ns: int, *, inferred: bool) -> None:
        if entry.exited:
            if entry.exit_inferred and not inferred:
                entry.exit_inferred = False  # the real exit arrived late
                entry.exit_ts_ns = ts_ns
            return
        entry.exited = True
        entry.exit_ts_ns = ts_ns
        entry.exit_inferred = inferred
        if inferred:
            self._exits_inferred += 1
        if self._live_by_pid.get(entry.key.pid) == entry.key:
            del self._live_by_pid[entry.key.pid]
        self._exited[entry.key] = ts_ns

    def _remove(self, key: ProcessKey) -> None:
        entry = self._entries.pop(key)
        if entry.parent_key is not None:
            siblings = self._children.get(entry.parent_key)
            if siblings is not None:
                siblings.discard(key)
                if not siblings and entry.parent_key not in self._entries:
                    del self._children[entry.parent_key]
        if not self._children.get(key):
            self._children.pop(key, None)
        if self._live_by_pid.get(key.pid) == key:
            del self._live_by_pid[key.pid]
        self._exited.pop(key, None)

    def _enforce_bound(self) -> None:
        while len(self._entries) > self._max:
            if self._exited:
                self._remove(next(iter(self._exited)))
                self._evicted_exited += 1
            else:
                self._remove(next(iter(self._entries)))
                self._evicted_live += 1

    def prune(self, now_ns: int) -> int:
        """Drop exited entries older than the retention; returns how many."""
        removed = 0
        with self._lock:
            cutoff = now_ns - self._retention_ns
            while self._exited:
                key, exit_ts = next(iter(self._exited.items()))
                if exit_ts > cutoff:
                    break
                self._remove(key)
                removed += 1
        return removed

    def update_samples(self, samples: Mapping[ProcessKey, ProcessSample]) -> None:
        with self._lock:
            for key, sample in samples.items():
                entry = self._entries.get(key)
                if entry is not None and not entry.exited:
                    entry.sample = sample

    # ---- reads ------------------------------------------------------------

    def facts_row(self, key: ProcessKey) -> FactsRow | None:
        """The fields a rule condition reads, without building a ProcessInfo:
        the rules engine asks for one or two per event."""
        with self._lock:
            entry = self._entries.get(key)
            return _FACTS_FIELDS(entry) if entry is not None else None

    def get(self, key: ProcessKey) -> ProcessInfo | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry.info() if entry else None

    def find_pid(self, pid: int) -> ProcessInfo | None:
        """The live process with ``pid``, else the most recently exited one."""
        with self._lock:
            key = self._live_by_pid.get(pid)
            if key is not None:
                return self._entries[key].info()
            candidates = [e for k, e in self._entries.items() if k.pid == pid]
            if not candidates:
                return None
            return max(candidates, key=lambda e: e.start_time_ns).info()

    def all_for_pid(self, pid: int) -> list[ProcessInfo]:
        """Every retained process that had ``pid``, oldest first."""
        with self._lock:
            found = [e.info() for k, e in self._entries.items() if k.pid == pid]
        return sorted(found, key=lambda p: p.start_time_ns)

    def live_keys(self) -> dict[int, ProcessKey]:
        """pid -> key of every live process (a copy)."""
        with self._lock:
            return dict(self._live_by_pid)

    def snapshot(self, *, include_exited: bool = False) -> list[ProcessInfo]:
        with self._lock:
            return [e.info() for e in self._entries.values() if include_exited or not e.exited]

    def children(self, key: ProcessKey) -> list[ProcessInfo]:
        with self._lock:
            return [
                self._entries[k].info() for k in self._children.get(key, ()) if k in self._entries
            ]

    def ancestors(self, key: ProcessKey) -> list[ProcessInfo]:
        """Parent first, up to the oldest ancestor still in the table."""
        with self._lock:
            return self._walk_up(key, _Entry.info)

    def ancestor_keys(self, key: ProcessKey, max_depth: int) -> list[ProcessKey]:
        """Keys of the known ancestors of ``key``, parent first, at most ``max_depth``."""
        out: list[ProcessKey] = []
        with self._lock:
            entry = self._entries.get(key)
            while entry is not None and entry.parent_key is not None and len(out) < max_depth:
                parent_key = entry.parent_key
                if parent_key == key or parent_key in out:
                    break  # a cycle in bad input
                out.append(parent_key)
                entry = self._entries.get(parent_key)
        return out

    def has_ancestor_pid(self, key: ProcessKey, pid: int) -> bool:
        """Whether a process with ``pid`` is among the known ancestors of ``key``."""
        with self._lock:
            entry = self._entries.get(key)
            steps = 0
            while entry is not None and entry.parent_key is not None and steps < _MAX_DEPTH:
                if entry.parent_key.pid == pid:
                    return True
                entry = self._entries.get(entry.parent_key)
                steps += 1
        return False

    def siblings(self, key: ProcessKey) -> list[ProcessInfo]:
        with self._lock:
            return self._siblings(key, _Entry.info)

    def descendants(self, key: ProcessKey, limit: int = 100_000) -> list[tuple[ProcessInfo, int]]:
        """Breadth-first (process, depth) pairs below ``key``; depth 1 = children."""
        with self._lock:
            levels, _ = self._walk_down(key, limit, _Entry.info)
        return [(info, depth) for depth, level in enumerate(levels, start=1) for info in level]

    def graph_rows(self, key: ProcessKey, max_descendants: int) -> GraphRows | None:
        """Ancestors, siblings and at most ``max_descendants`` descendants of ``key``."""
        with self._lock:
            focus = self._entries.get(key)
            if focus is None:
                return None
            levels, truncated = self._walk_down(key, max_descendants, GRAPH_FIELDS)
            return GraphRows(
                GRAPH_FIELDS(focus),
                self._walk_up(key, GRAPH_FIELDS),
                self._siblings(key, GRAPH_FIELDS),
                levels,
                truncated,
            )

    # The walks below run under the lock; ``fetch`` turns an entry into what
    # the caller returns (a ProcessInfo, or the few fields of a GraphRow).

    def _walk_up(self, key: ProcessKey, fetch: Callable[[_Entry], _T]) -> list[_T]:
        out: list[_T] = []
        entry = self._entries.get(key)
        seen = {key}
        while entry is not None and entry.parent_key is not None and len(out) < _MAX_DEPTH:
            if entry.parent_key in seen:
                break  # a cycle in bad input
            seen.add(entry.parent_key)
            entry = self._entries.get(entry.parent_key)
            if entry is not None:
                out.append(fetch(entry))
        return out

    def _siblings(self, key: ProcessKey, fetch: Callable[[_Entry], _T]) -> list[_T]:
        entry = self._entries.get(key)
        if entry is None or entry.parent_key is None:
            return []
        entries = self._entries
        return [
            fetch(entries[k])
            for k in self._children.get(entry.parent_key, ())
            if k != key and k in entries
        ]

    def _walk_down(
        self, key: ProcessKey, limit: int, fetch: Callable[[_Entry], _T]
    ) -> tuple[list[list[_T]], bool]:
        """Descendants level by level (children first), at most ``limit``;
        and whether there were more."""
        entries, children = self._entries, self._children
        levels: list[list[_T]] = []
        frontier = [key]
        seen = {key}
        room = limit
        while frontier:
            level: list[_T] = []
            nxt: list[ProcessKey] = []
            for parent in frontier:
                for k in children.get(parent, ()):
                    child = entries.get(k)
                    if child is None or k in seen:
                        continue
                    if room == 0:
                        if level:
                            levels.append(level)
                        return levels, True
                    room -= 1
                    seen.add(k)
                    level.append(fetch(child))
                    nxt.append(k)
            if level:
                levels.append(level)
            frontier = nxt
        return levels, False

    def stats(self) -> TableStats:
        with self._lock:
            return TableStats(
                live=len(self._live_by_pid),
                exited=len(self._exited),
                evicted_exited=self._evicted_exited,
                evicted_live=self._evicted_live,
                exits_inferred=self._exits_inferred,
                traceparent_invalid=self._traceparent_invalid,
            )

    def __len__(self) -> int:
        return len(self._entries)
