"""Reading /proc: per-process files, and the start-up walk that seeds the table.

Every /proc read in the agent goes through :class:`ProcReader`. Its methods
return None instead of raising when the process is gone or the file is
unreadable, because a process exiting between ``readdir`` and ``read`` is the
normal case on a busy host, not an error.

The polling source built on this reader lives in
:mod:`otel_linnix.sources.procfs_poll`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from otel_linnix.events import NS_PER_TICK, EventKind, ProcessEvent, ProcessKey, ProcessSource

__all__ = [
    "FD_LIMIT_UNLIMITED",
    "PAGE_SIZE",
    "TRACEPARENT_MAX",
    "BootstrapScan",
    "ProcReader",
    "ProcStat",
    "bootstrap_events",
    "bootstrap_scan",
    "boottime_ns",
    "parent_start_of",
    "read_exec_event",
]

logger = logging.getLogger(__name__)

PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")

# What fd_soft_limit() reports for "unlimited": INT64_MAX rather than the
# kernel's RLIM_INFINITY (2**64 - 1), so the value still fits a signed 64-bit
# OTel gauge and any real fd count stays far below it.
FD_LIMIT_UNLIMITED: int = 2**63 - 1

_PF_KTHREAD = 0x00200000

# Errors that mean "this process is gone or not ours to read". ESRCH shows up
# as ProcessLookupError when the task exits while the kernel renders the file.
_GONE = (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError)

# One read() of this size returns the whole of stat, status, limits or cgroup.
# A short read is the end of the file (seq_file and cmdline hand over all they
# have in one call), which saves the extra read() that would return b"" on
# every file; only a full buffer (a long cmdline) makes _read go on.
_READ_SIZE = 4096

# Field positions in /proc/<pid>/stat counted from the state field (field 3),
# i.e. index = field number - 3, after the comm has been cut off.
_F_STATE, _F_PPID, _F_FLAGS = 0, 1, 6
_F_UTIME, _F_STIME, _F_THREADS, _F_START, _F_RSS = 11, 12, 17, 19, 21

_DELETED = " (deleted)"

_TRACEPARENT = b"TRACEPARENT="
# As many characters of the value as the kernel probe copies (a version-00
# traceparent is 55; one more tells a longer value), so both read the same.
TRACEPARENT_MAX = 56


def boottime_ns() -> int:
    """CLOCK_BOOTTIME now, in ns: monotonic, and counts time spent suspended."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the agent uses, in its units."""

    pid: int
    comm: str
    state: str
    ppid: int
    num_threads: int
    start_time_ns: int
    rss_bytes: int
    cpu_time_ns: int
    kernel_thread: bool


def _strip_deleted(path: str) -> str:
    return path.removesuffix(_DELETED)


class ProcReader:
    """Cheap, non-raising reads of one /proc tree (``root`` is a fake in tests)."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    def _read(self, path: str) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, _READ_SIZE)
            if len(data) < _READ_SIZE:
                return data
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _read_pid(self, pid: int, name: str) -> bytes | None:
        try:
            return self._read(f"{self.root}/{pid}/{name}")
        except _GONE:
            return None

    def pids(self) -> list[int]:
        """Thread-group ids present now, ascending (/proc lists no other tids)."""
        with os.scandir(self.root) as entries:
            return sorted(int(e.name) for e in entries if e.name.isdigit())

    def stat(self, pid: int) -> ProcStat | None:
        """Parse /proc/<pid>/stat; None if the process is gone.

        The comm may hold spaces and parentheses, so it ends at the *last*
        ``)``. An empty or short read (a task torn down while the file was
        rendered) counts as gone.
        """
        data = self._read_pid(pid, "stat")
        if not data:
            return None
        open_at, close_at = data.find(b"("), data.rfind(b")")
        fields = data[close_at + 2 :].split()
        if open_at < 0 or close_at < open_at or len(fields) <= _F_RSS:
            return None
        ticks = int(fields[_F_UTIME]) + int(fields[_F_STIME])
        return ProcStat(
            pid=pid,
            comm=data[open_at + 1 : close_at].decode("utf-8", "replace"),
            state=fields[_F_STATE].decode("ascii"),
            ppid=int(fields[_F_PPID]),
            num_threads=int(fields[_F_THREADS]),
            start_time_ns=int(fields[_F_START]) * NS_PER_TICK,
            rss_bytes=int(fields[_F_RSS]) * PAGE_SIZE,
            cpu_time_ns=ticks * NS_PER_TICK,
            kernel_thread=bool(int(fields[_F_FLAGS]) & _PF_KTHREAD),
        )

    def ids(self, pid: int) -> tuple[int, int] | None:
        """(real uid, real gid): the first column of Uid:/Gid: in status."""
        data = self._read_pid(pid, "status")
        if data is None:
            return None
        uid = gid = None
        for line in data.splitlines():
            if line.startswith(b"Uid:"):
                uid = int(line.split()[1])
            elif line.startswith(b"Gid:"):
                gid = int(line.split()[1])
                break  # Gid: always follows Uid:
        if uid is None or gid is None:
            return None
        return uid, gid

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        """argv split at NUL; () for kernel threads and zombies (empty file)."""
        data = self._read_pid(pid, "cmdline")
        if data is None:
            return None
        if not data:
            return ()
        # Only the one terminating NUL goes: an empty last argument is real.
        data = data.removesuffix(b"\0")
        return tuple(arg.decode("utf-8", "replace") for arg in data.split(b"\0"))

    def exe(self, pid: int) -> str | None:
        """Target of /proc/<pid>/exe without " (deleted)"; None if unreadable.

        Kernel threads and zombies have no executable (the link read fails).
        """
        try:
            target = os.readlink(os.fsencode(f"{self.root}/{pid}/exe"))
        except _GONE:
            return None
        return _strip_deleted(target.decode("utf-8", "replace"))

    def fd_count(self, pid: int) -> int | None:
        """Number of open descriptors (entries of /proc/<pid>/fd)."""
        try:
            with os.scandir(f"{self.root}/{pid}/fd") as entries:
                return sum(1 for _ in entries)
        except _GONE:
            return None

    def fd_soft_limit(self, pid: int) -> int | None:
        """Soft RLIMIT_NOFILE from limits; "unlimited" is FD_LIMIT_UNLIMITED."""
        data = self._read_pid(pid, "limits")
        if data is None:
            return None
        for line in data.splitlines():
            if line.startswith(b"Max open files"):
                soft = line[len(b"Max open files") :].split()[0]
                return FD_LIMIT_UNLIMITED if soft == b"unlimited" else int(soft)
        return None

    def cgroup_v2_path(self, pid: int) -> str | None:
        """Path of the ``0::`` (unified hierarchy) line of /proc/<pid>/cgroup.

        None when there is no such line (a v1-only host). The kernel appends
        " (deleted)" when the cgroup has been removed under a zombie; that
        suffix is stripped so the path still matches container patterns.
        """
        data = self._read_pid(pid, "cgroup")
        if data is None:
            return None
        for line in data.splitlines():
            if line.startswith(b"0::"):
                return _strip_deleted(line[3:].decode("utf-8", "replace"))
        return None

    def loadavg1(self) -> float | None:
        """The 1-minute load average from /proc/loadavg."""
        try:
            return float(self._read(f"{self.root}/loadavg").split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pressure(self) -> dict[str, float]:
        """avg10 of /proc/pressure/{cpu,memory,io} as {"cpu.some": 1.5, "io.full": 0.0, ...};
        empty on kernels without PSI (or with it disabled)."""
        out: dict[str, float] = {}
        for resource in ("cpu", "memory", "io"):
            try:
                text = self._read(f"{self.root}/pressure/{resource}").decode()
            except OSError:
                continue
            for line in text.splitlines():
                kind, _, rest = line.partition(" ")
                for item in rest.split():
                    name, _, value = item.partition("=")
                    if name == "avg10":
                        with contextlib.suppress(ValueError):
                            out[f"{resource}.{kind}"] = float(value)
        return out

    def traceparent(self, pid: int) -> str | None:
        """The TRACEPARENT value of the process's environment, else None.

        Only that value leaves this method (cut to TRACEPARENT_MAX
        characters, as the kernel probe reads it): the rest of the
        environment holds secrets and is dropped here.
        """
        data = self._read_pid(pid, "environ")
        if not data:
            return None
        if data.startswith(_TRACEPARENT):
            start = len(_TRACEPARENT)
        else:
            found = data.find(b"\0" + _TRACEPARENT)
            if found < 0:
                return None
            start = found + 1 + len(_TRACEPARENT)
        end = data.find(b"\0", start)
        value = data[start : end if end >= 0 else len(data)][:TRACEPARENT_MAX]
        return value.decode("ascii", "replace")

    def boot_id(self) -> str:
        """This boot's random id; raises OSError if /proc has none (not Linux)."""
        return self._read(f"{self.root}/sys/kernel/random/boot_id").decode("ascii").strip()


def read_exec_event(
    reader: ProcReader,
    stat: ProcStat,
    *,
    ts_ns: int,
    parent_start_time_ns: int | None,
    bootstrap: bool,
    traceparent: bool = False,
) -> ProcessEvent | None:
    """A PROCFS EXEC event for the process ``stat`` was just read from.

    Reads the rest (ids, cmdline, exe), then reads stat again: if the process
    is gone or its pid now names a newer process, the reads may mix two
    processes, so the answer is None and the caller skips it. With
    ``traceparent`` the environment's TRACEPARENT is read too.
    """
    ids = reader.ids(stat.pid)
    argv = reader.cmdline(stat.pid)
    exe = reader.exe(stat.pid)
    tp = reader.traceparent(stat.pid) if traceparent else None
    again = reader.stat(stat.pid)
    if ids is None or again is None or again.start_time_ns != stat.start_time_ns:
        return None
    return ProcessEvent(
        kind=EventKind.EXEC,
        ts_ns=ts_ns,
        pid=stat.pid,
        ppid=stat.ppid,
        start_time_ns=stat.start_time_ns,
        comm=stat.comm,
        uid=ids[0],
        gid=ids[1],
        parent_start_time_ns=parent_start_time_ns,
        source=ProcessSource.PROCFS,
        exe=exe,
        argv=argv,
        bootstrap=bootstrap,
        kernel_thread=stat.kernel_thread,
        traceparent=tp,
    )


def parent_start_of(stat: ProcStat, start_times: Mapping[int, int]) -> int | None:
    """The parent's start time from the same scan, if the parent is known.

    A parent that started after its child is a reused pid (the real parent
    died and the child has not been reparented yet), so it is not linked.
    """
    if stat.ppid <= 0:
        return None
    start = start_times.get(stat.ppid)
    if start is None or start > stat.start_time_ns:
        return None
    return start


@dataclass(frozen=True, slots=True)
class BootstrapScan:
    """What the start-up walk found.

    ``events`` are the synthetic EXEC events, parents first.
    ``cgroup_paths`` maps each emitted process to its cgroup v2 path (read in
    the same pass, before the consistency re-check), for container
    attribution; processes without a ``0::`` line are absent.
    """

    events: tuple[ProcessEvent, ...]
    cgroup_paths: Mapping[ProcessKey, str]


def bootstrap_scan(reader: ProcReader, now_ns: int, *, traceparent: bool = False) -> BootstrapScan:
    """One EXEC event (``bootstrap=True``) per process alive now.

    Sorted by start time then pid, so parents come before their children.
    Processes that vanish during the walk are left out. ``traceparent``: read
    each one's TRACEPARENT too (lineage of processes older than the agent).
    """
    stats = [s for s in map(reader.stat, reader.pids()) if s is not None]
    stats.sort(key=lambda s: (s.start_time_ns, s.pid))
    start_times = {s.pid: s.start_time_ns for s in stats}
    events: list[ProcessEvent] = []
    cgroup_paths: dict[ProcessKey, str] = {}
    for stat in stats:
        cgroup = reader.cgroup_v2_path(stat.pid)
        event = read_exec_event(
            reader,
            stat,
            ts_ns=now_ns,
            parent_start_time_ns=parent_start_of(stat, start_times),
            bootstrap=True,
            traceparent=traceparent,
        )
        if event is None:
            logger.debug("pid %d vanished during the start-up walk", stat.pid)
            continue
        events.append(event)
        if cgroup is not None:
            cgroup_paths[event.key] = cgroup
    return BootstrapScan(events=tuple(events), cgroup_paths=cgroup_paths)


def bootstrap_events(reader: ProcReader, now_ns: int) -> list[ProcessEvent]:
    """The events of :func:`bootstrap_scan`, for callers that need no cgroups."""
    return list(bootstrap_scan(reader, now_ns).events)
