"""The kernel source: loads the lifecycle program with bcc and drains its ring buffer.

The only module that imports bcc (lazily, in ``BpfSource.start``), so the
rest of the agent and its tests run where bcc is absent. Raw records become
ProcessEvents in exactly one place: ``decode_record``.

Drain policy: the kernel side submits without waking us (waking the
consumer per event slowed fork-heavy workloads by 14-42%) and forces a
wakeup every ``wakeup_every`` records; this thread polls with the drain
interval as timeout and then consumes whatever is there, so latency is
bounded by the interval and a burst cannot overrun the ring.

The ring is read from its memory mapping (``ringbuf.RingReader``) where the
CPU's memory ordering allows it, else through bcc's ctypes callback.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from otel_linnix.config import CaptureConfig
from otel_linnix.errors import CaptureUnavailable
from otel_linnix.events import EventKind, ProcessEvent, ProcessSource, decode_wait_status
from otel_linnix.sources.base import EventSink, SourceStats
from otel_linnix.sources.bpf_program import BpfProgram, build_program
from otel_linnix.sources.btf import kernel_offsets
from otel_linnix.sources.ringbuf import RingReader
from otel_linnix.sources.ringbuf import supported as direct_ring_supported
from otel_linnix.threads import AgentThread

__all__ = [
    "HEADER",
    "BpfSource",
    "RecordLayout",
    "check_prerequisites",
    "decode_record",
]

log = logging.getLogger(__name__)

# Mirrors bpf/events.h; tests/kernel/test_bpf_layout.py checks it against
# the C compiler's offsetof().
HEADER = struct.Struct("<6I4Q16s")
_FORK_TAIL = struct.Struct("<Q")
_EXIT_TAIL = struct.Struct("<IIQQ")
_OOM_TAIL = struct.Struct("<Q")
_EXEC_TAIL = struct.Struct("<IIII")
# bpf/events.h TP_MAX: the traceparent field of an exec record.
TP_MAX = 64
_EV_FORK, _EV_EXEC, _EV_EXIT, _EV_OOM = 1, 2, 3, 4
_F_KTHREAD, _F_ARGV_TRUNC, _F_FNAME_TRUNC = 1, 2, 4
_STAT_NAMES = (
    "submitted",
    "lost_fork",
    "lost_exec",
    "exits_parked",
    "lost_exit",
    "lost_oom_kill",
    "cpu_map_full",
    "thread_map_full",
    "argv_faults",
    "forced_wakeups",
    "env_scan_truncated",
)
_PAGE = resource.getpagesize()
_EBPF = ProcessSource.EBPF
_CAP_PERFMON, _CAP_BPF, _CAP_SYS_ADMIN = 38, 39, 21


class RecordLayout:
    """Where the variable parts of an exec record sit for this build."""

    def __init__(self, filename_max: int) -> None:
        self.exec_traceparent_off = HEADER.size + _EXEC_TAIL.size
        self.exec_filename_off = self.exec_traceparent_off + TP_MAX
        self.exec_argv_off = self.exec_filename_off + filename_max


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def decode_record(raw: bytes, layout: RecordLayout) -> ProcessEvent | None:
    """One kernel record -> ProcessEvent (None for an unknown kind).

    Positional construction on purpose: this runs once per kernel record.
    """
    (kind, pid, ppid, uid, gid, flags, ts_ns, start_ns, parent_start_ns, cgroup_id, comm_raw) = (
        HEADER.unpack_from(raw)
    )
    pstart = parent_start_ns if ppid else None
    # ProcessEvent's fields from ts_ns to source, the same for every kind.
    common = (ts_ns, pid, ppid, start_ns, _text(comm_raw), uid, gid, pstart, cgroup_id, _EBPF)
    kthread = bool(flags & _F_KTHREAD)
    if kind == _EV_EXEC:
        fname_len, argv_len, tp_len, _pad = _EXEC_TAIL.unpack_from(raw, HEADER.size)
        fstart = layout.exec_filename_off
        exe = raw[fstart : fstart + fname_len].decode("utf-8", "backslashreplace")
        block = raw[layout.exec_argv_off : layout.exec_argv_off + argv_len]
        # The block is NUL-terminated args; a cut block ends mid-argument.
        parts = block.split(b"\0")
        if parts and parts[-1] == b"":
            parts.pop()
        argv = tuple(p.decode("utf-8", "backslashreplace") for p in parts)
        tp = None
        if tp_len:
            tstart = layout.exec_traceparent_off
            # Not decoded leniently into something valid: the parser rejects
            # any non-ASCII value.
            tp = raw[tstart : tstart + min(tp_len, TP_MAX)].decode("ascii", "replace")
        return ProcessEvent(
            EventKind.EXEC,
            *common,
            exe,
            argv,
            bool(flags & _F_ARGV_TRUNC),
            kernel_thread=kthread,
            traceparent=tp,
        )
    if kind == _EV_EXIT:
        code, _pad, cpu_ns, peak_pages = _EXIT_TAIL.unpack_from(raw, HEADER.size)
        status, signal, core = decode_wait_status(code)
        return ProcessEvent(
            EventKind.EXIT,
            *common,
            None,
            None,
            False,
            status,
            signal,
            core,
            cpu_ns,
            peak_pages * _PAGE,
            kernel_thread=kthread,
        )
    if kind == _EV_FORK:
        return ProcessEvent(
            EventKind.FORK,
            *common,
            kernel_thread=kthread,
        )
    if kind == _EV_OOM:
        (rss_pages,) = _OOM_TAIL.unpack_from(raw, HEADER.size)
        return ProcessEvent(
            EventKind.OOM_KILL,
            *common,
            rss_bytes=rss_pages * _PAGE,
            kernel_thread=kthread,
        )
    return None


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_prerequisites() -> None:
    """Raise CaptureUnavailable saying exactly what is missing for eBPF here."""
    caps = _effective_caps()
    has_bpf = caps & (1 << _CAP_BPF) and caps & (1 << _CAP_PERFMON)
    if not (has_bpf or caps & (1 << _CAP_SYS_ADMIN)):
        raise CaptureUnavailable(
            "no permission to load eBPF programs: run as root or grant "
            "CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN"
        )
    if not any(
        Path(p, "events", "sched").is_dir()
        for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    ):
        raise CaptureUnavailable(
            "tracefs is not mounted (no /sys/kernel/tracing/events): "
            "mount -t tracefs nodev /sys/kernel/tracing"
        )
    build = Path("/lib/modules", os.uname().release, "build")
    if not (build / "include").is_dir():
        raise CaptureUnavailable(
            f"bcc needs a kernel header tree at {build}: run `make install` "
            "(it links Debian's linux-headers package there)"
        )
    try:
        import bcc  # noqa: F401, PLC0415
    except ImportError as exc:
        raise CaptureUnavailable(
            f"bcc is not importable ({exc}): install Debian's python3-bpfcc and "
            "run `make install` to link it into the virtual environment"
        ) from None


_MADV_PAGEOUT = 21  # Linux 5.4+
_COMPILER_LIBS = ("libLLVM", "libclang")


def _release_compiler_memory() -> None:
    """Give back what compiling the program left resident: about 80 MiB.

    bcc compiles in-process with LLVM/clang, which touch 80 MiB of their
    libraries' pages and leave freed heap behind; none of it is used again
    once the program is loaded. The library pages are clean file pages, so
    MADV_PAGEOUT drops them (they would simply fault back in if ever needed),
    and malloc_trim returns the freed heap. Advisory: failures are ignored.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) > 5 and any(lib in fields[5] for lib in _COMPILER_LIBS):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    libc.madvise(start, end - start, _MADV_PAGEOUT)
        libc.malloc_trim(0)
    except (OSError, AttributeError) as exc:
        log.debug("could not release the compiler's memory: %s", exc)


class BpfSource:
    """Kernel capture through tracepoints and a ring buffer."""

    kind = ProcessSource.EBPF

    def __init__(
        self,
        capture: CaptureConfig,
        clock: Callable[[], int] = lambda: time.clock_gettime_ns(time.CLOCK_BOOTTIME),
        *,
        traceparent: bool = True,
    ) -> None:
        self._capture = capture
        self._traceparent = traceparent
        self._clock = clock
        self._btf_path = capture.btf_path
        self._layout = RecordLayout(capture.filename_max_bytes)
        self._bpf: Any = None
        self._ring: RingReader | None = None  # None: bcc's callback consumes
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._batch: list[ProcessEvent] = []
        self._events = 0
        self._drains = 0
        self._decode_errors = 0
        self._sink_errors = 0
        self._final_counters: dict[str, int] = {}
        self._batch_failure_logged = False

    def program(self) -> BpfProgram:
        """The program this source would load (BTF offsets resolved)."""
        return build_program(
            self._capture, kernel_offsets(self._btf_path), traceparent=self._traceparent
        )

    def load(self) -> None:
        """Compile and attach; raises CaptureUnavailable with the reason.

        Separate from start() so the pipeline can attach first, scan /proc
        (records of processes born meanwhile wait in the ring), then drain.
        """
        if self._bpf is not None:
            return
        check_prerequisites()
        program = self.program()
        from bcc import BPF  # noqa: PLC0415 - the one place bcc is imported

        started = time.monotonic()
        try:
            bpf = BPF(text=program.text.encode(), cflags=list(program.cflags))
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception on compile/attach errors
            raise CaptureUnavailable(f"the BPF program failed to load: {exc}") from None
        events = bpf[b"events"]
        if direct_ring_supported():
            self._ring = RingReader(events.map_fd, events.max_entries)
        else:
            events.open_ring_buffer(self._on_record)
        self._bpf = bpf
        _release_compiler_memory()
        log.info(
            "eBPF lifecycle program loaded in %.2f s; ring buffer read %s",
            time.monotonic() - started,
            "from its mapping" if self._ring is not None else "through bcc's callback",
        )

    @property
    def ring_consumer(self) -> str | None:
        """How the ring is read once loaded: ``mmap`` (directly) or ``bcc``."""
        if self._bpf is None:
            return None
        return "mmap" if self._ring is not None else "bcc"

    def prepare(self) -> None:
        self.load()

    def start(self, sink: EventSink) -> None:
        if self._thread is not None:
            return
        self.load()
        self._stop.clear()
        self._thread = AgentThread(self._drain_loop, "linnix-bpf-drain", (sink,))
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                # Freeing the BPF object under a running poll would crash the
                # process; the daemon thread ends with it instead.
                log.warning(
                    "drain thread still busy after %.1f s; leaving the program attached until exit",
                    timeout_s,
                )
                return
            self._thread = None
        if self._bpf is not None:
            self._final_counters = self.kernel_counters()  # still reported after stop
            if self._ring is not None:
                self._ring.close()  # before the map's fd goes with the program
                self._ring = None
            self._bpf.cleanup()
            self._bpf = None

    def _on_record(self, _ctx: Any, data: Any, size: int) -> int:
        self._decode_into_batch(ctypes.string_at(data, size))
        # bcc converts the return value with int(); None would raise and be
        # caught for every single record.
        return 0

    def _decode_into_batch(self, raw: bytes) -> None:
        try:
            event = decode_record(raw, self._layout)
        except (struct.error, ValueError, IndexError):
            # A record this build cannot read: counted (decode_errors, shown
            # as lost "undecodable"), never allowed to stop the drain loop.
            event = None
        if event is None:
            self._decode_errors += 1
            return
        self._batch.append(event)

    def _drain_overflow(self) -> None:
        table = self._bpf[b"exit_overflow"]
        keys = list(table.keys())
        for key in keys:
            try:
                value = table[key]
            except KeyError:
                continue
            del table[key]
            self._decode_into_batch(bytes(value))

    def _drain_loop(self, sink: EventSink) -> None:
        wait, consume = self._ring_access()
        while not self._stop.is_set():
            wait()
            consume()
            self._drain_overflow()
            self._drains += 1
            self._deliver(sink)
        # Deliver what is still in the ring so a clean stop loses nothing.
        consume()
        self._drain_overflow()
        self._deliver(sink)

    def _ring_access(self) -> tuple[Callable[[], object], Callable[[], object]]:
        """(wait up to the drain interval, consume what is there) for this ring."""
        interval_ms = self._capture.drain_interval_ms
        ring = self._ring
        if ring is not None:
            decode = self._decode_into_batch
            return (lambda: ring.wait(interval_ms / 1000)), (lambda: ring.consume(decode))
        bpf = self._bpf
        return (lambda: bpf.ring_buffer_poll(interval_ms)), bpf.ring_buffer_consume

    def _deliver(self, sink: EventSink) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._events += len(batch)
        try:
            sink.handle_batch(batch)
        except Exception:
            # A bug downstream must not stop capture: log it, count the
            # batch as lost, keep draining.
            self._sink_errors += len(batch)
            log.exception("processing %d events failed", len(batch))

    def kernel_counters(self) -> dict[str, int]:
        """The BPF-side counters (summed over CPUs)."""
        if self._bpf is None:
            return dict(self._final_counters)
        stats = self._bpf[b"stats"]
        out = {name: int(sum(stats[ctypes.c_int(i)])) for i, name in enumerate(_STAT_NAMES)}
        out["decode_errors"] = self._decode_errors
        out["lost_processing"] = self._sink_errors
        return out

    def stats(self) -> SourceStats:
        k = self.kernel_counters()
        lost = {kind: k.get(f"lost_{kind}", 0) for kind in ("fork", "exec", "exit", "oom_kill")}
        lost["undecodable"] = k.get("decode_errors", 0)
        lost["processing"] = k.get("lost_processing", 0)
        return SourceStats(events=self._events, lost=lost, drains=self._drains, counters=k)

    def cpu_times_ns(self) -> Mapping[int, int] | None:
        """On-CPU ns per process, including slices still running right now."""
        bpf = self._bpf
        if bpf is None:
            return None
        totals: dict[int, int] = {}
        cpu_map = bpf[b"cpu_ns"]
        try:
            # Batched: elements of ctypes arrays of plain integers come back
            # as Python ints.
            for k, v in cpu_map.items_lookup_batch():
                totals[int(k)] = int(v)
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception; fall back
            if not self._batch_failure_logged:
                self._batch_failure_logged = True
                log.warning(
                    "batched read of the CPU map failed (%r); reading it entry "
                    "by entry, which costs more",
                    exc,
                )
            for k, v in cpu_map.items():
                totals[int(k.value)] = int(v.value)
        now = self._clock()
        for cur in bpf[b"oncpu_now"][ctypes.c_int(0)]:
            if cur.tgid and now > cur.since_ns:
                running = now - cur.since_ns
                if cur.tgid in totals:
                    totals[cur.tgid] += running
                else:
                    # Running since before it was ever switched out: its
                    # runtime at switch-in plus the slice so far.
                    totals[cur.tgid] = cur.rt_in + running
        return totals
