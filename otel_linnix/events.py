"""The one event type that crosses module boundaries, and process identity.

Every timestamp here is CLOCK_BOOTTIME in nanoseconds (what the kernel's
``bpf_ktime_get_boot_ns()`` and ``task->start_boottime`` use), so kernel
records, /proc start times and the agent's own clock can be compared without
conversion. Wall-clock time is derived only at the edges.
"""

from __future__ import annotations

import enum
import os
from typing import NamedTuple

__all__ = [
    "NS_PER_TICK",
    "OPAQUE_EXEC_PATHS",
    "EventKind",
    "ProcessEvent",
    "ProcessKey",
    "ProcessSource",
    "decode_wait_status",
    "executable_name",
]

# /proc/<pid>/stat reports start times in USER_HZ ticks (always 100 on Linux,
# but ask rather than assume). Identity keys are truncated to this resolution
# so a key built from /proc and one built from a kernel record agree.
NS_PER_TICK: int = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class EventKind(enum.Enum):
    """What happened to a process."""

    FORK = "fork"
    EXEC = "exec"
    EXIT = "exit"
    OOM_KILL = "oom_kill"


class ProcessSource(enum.Enum):
    """Where an event came from; users see it in records and /health."""

    EBPF = "ebpf"
    PROCFS = "procfs"
    REPLAY = "replay"


class ProcessKey(NamedTuple):
    """A process identity that survives PID reuse: (pid, start time).

    ``start_time_ns`` is truncated to the /proc tick so that the same process
    seen by the kernel probe and by a /proc scan gets the same key.  Two
    processes with one pid inside one 10 ms tick would need the pid space
    (32768 here) to wrap within that tick, which the machine cannot do.
    """

    pid: int
    start_time_ns: int

    @classmethod
    def of(cls, pid: int, start_time_ns: int) -> ProcessKey:
        # tuple.__new__ directly: keys are built several times per event.
        return tuple.__new__(cls, (pid, start_time_ns - start_time_ns % NS_PER_TICK))

    def __str__(self) -> str:
        return f"{self.pid}@{self.start_time_ns}"


# Exec paths that name a descriptor or a /proc link rather than a program:
# fexecve() (crun, systemd) hands the kernel /dev/fd/N, a re-exec through
# /proc/self/exe (runc, podman) that link.
OPAQUE_EXEC_PATHS = ("/dev/fd/", "/proc/")


def executable_name(exe: str | None, comm: str) -> str:
    """semconv's process.executable.name: the base name of the executable, else
    comm (also for an opaque path: /dev/fd/3 would be named "3")."""
    if not exe or exe.startswith(OPAQUE_EXEC_PATHS):
        return comm
    return exe.rsplit("/", 1)[-1] or comm


def decode_wait_status(code: int) -> tuple[int | None, int | None, bool]:
    """Split a kernel wait status into (exit status, signal, core dumped).

    ``task->exit_code`` uses the wait(2) encoding: bits 8-15 carry the exit
    status of a normal exit, bits 0-6 the terminating signal, bit 7 core dump.
    """
    signal = code & 0x7F
    if signal:
        return None, signal, bool(code & 0x80)
    return (code >> 8) & 0xFF, None, False


class ProcessEvent(NamedTuple):
    """One lifecycle event of one process (never of a thread).

    ``pid`` is the thread-group id. ``ppid``/``parent_start_time_ns`` name the
    real parent at the time of the event. Fields that do not apply to a kind
    are None.

    A NamedTuple rather than a frozen dataclass: the drain loop builds one per
    kernel record, and a 28-field frozen dataclass costs about 12 us to build
    against about 1 us here, with the same immutability.
    """

    kind: EventKind
    ts_ns: int
    pid: int
    ppid: int
    start_time_ns: int
    comm: str
    uid: int = 0
    gid: int = 0
    parent_start_time_ns: int | None = None
    cgroup_id: int = 0
    source: ProcessSource = ProcessSource.EBPF
    # exec
    exe: str | None = None
    argv: tuple[str, ...] | None = None
    argv_truncated: bool = False
    # exit
    exit_code: int | None = None
    exit_signal: int | None = None
    core_dumped: bool = False
    cpu_time_ns: int | None = None
    peak_rss_bytes: int | None = None
    # oom_kill: the victim's resident memory when the kernel chose it
    rss_bytes: int | None = None
    # set when the record describes a process that existed before start-up
    bootstrap: bool = False
    kernel_thread: bool = False
    # exec: the W3C TRACEPARENT value found in the new image's environment
    # (only that value is ever read; see otel_linnix.lineage)
    traceparent: str | None = None
    # Filled by the pipeline; kept last so stamp() rebuilds the tuple cheaply.
    container_id: str | None = None
    container_runtime: str | None = None
    pod_uid: str | None = None
    # the pipeline's sequence number (the /stream id); 0 until assigned
    seq: int = 0
    # Lineage ids of the process (lowercase hex, 32/16/16 characters; see
    # otel_linnix.lineage), stamped after the table applied the event.
    # parent_span_id is None for a lineage root without a traceparent.
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None

    def stamp(
        self,
        seq: int,
        container: tuple[str | None, str | None, str | None] | None = None,
        lineage: tuple[str, str, str | None] | None = None,
    ) -> ProcessEvent:
        """This event with its sequence number and, if given, (container id,
        runtime, pod uid) and (trace id, span id, parent span id): one tuple
        build, no per-field copying."""
        cid, runtime, pod = (
            container
            if container is not None
            else (self.container_id, self.container_runtime, self.pod_uid)
        )
        trace, span, parent = (
            lineage if lineage is not None else (self.trace_id, self.span_id, self.parent_span_id)
        )
        return tuple.__new__(
            ProcessEvent,
            (*self[:_PIPELINE_FIELDS], cid, runtime, pod, seq, trace, span, parent),
        )

    @property
    def key(self) -> ProcessKey:
        return ProcessKey.of(self.pid, self.start_time_ns)

    @property
    def parent_key(self) -> ProcessKey | None:
        if self.parent_start_time_ns is None or self.ppid <= 0:
            return None
        return ProcessKey.of(self.ppid, self.parent_start_time_ns)

    @property
    def abnormal_exit(self) -> bool:
        """True for an exit by signal or with a non-zero status."""
        return self.exit_signal is not None or bool(self.exit_code)


# Index of the first pipeline-owned field (container_id).
_PIPELINE_FIELDS = ProcessEvent._fields.index("container_id")
