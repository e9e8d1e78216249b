"""decode_record against raw records packed as bpf/events.h lays them out."""

from __future__ import annotations

import resource
import signal
import struct

import pytest

from otel_linnix.events import EventKind, ProcessEvent, ProcessSource
from otel_linnix.sources.bpf import HEADER, TP_MAX, RecordLayout, decode_record

FNAME_MAX = 256
LAYOUT = RecordLayout(FNAME_MAX)
PAGE = resource.getpagesize()

EV_FORK, EV_EXEC, EV_EXIT, EV_OOM = 1, 2, 3, 4
F_KTHREAD, F_ARGV_TRUNC, F_FNAME_TRUNC = 1 << 0, 1 << 1, 1 << 2

TS, START, PARENT_START, CGROUP = 9_000_000_123, 8_000_000_456, 1_000_000_789, 4711


def header(
    kind: int,
    *,
    pid: int = 4242,
    ppid: int = 17,
    uid: int = 1000,
    gid: int = 100,
    flags: int = 0,
    comm: bytes = b"worker",
) -> bytes:
    return HEADER.pack(kind, pid, ppid, uid, gid, flags, TS, START, PARENT_START, CGROUP, comm)


def exec_record(
    filename: bytes,
    argv: bytes,
    *,
    flags: int = 0,
    comm: bytes = b"worker",
    traceparent: bytes = b"",
    stale: bytes = b"",
) -> bytes:
    """An exec record; ``stale`` fills the traceparent field past its length."""
    tail = struct.pack("<IIII", len(filename), len(argv), len(traceparent), 0)
    tp_field = (traceparent + stale).ljust(TP_MAX, b"\0")[:TP_MAX]
    return (
        header(EV_EXEC, flags=flags, comm=comm)
        + tail
        + tp_field
        + filename.ljust(FNAME_MAX, b"\0")
        + argv
    )


def exit_record(code: int, cpu_ns: int = 7_000_000, peak_pages: int = 300) -> bytes:
    return header(EV_EXIT) + struct.pack("<IIQQ", code, 0, cpu_ns, peak_pages)


def decode(raw: bytes) -> ProcessEvent:
    ev = decode_record(raw, LAYOUT)
    assert ev is not None
    return ev


def test_layout_matches_events_h() -> None:
    assert HEADER.size == 72  # struct event_header
    assert LAYOUT.exec_traceparent_off == 72 + 16
    assert LAYOUT.exec_filename_off == 72 + 16 + TP_MAX
    assert LAYOUT.exec_argv_off == 72 + 16 + TP_MAX + FNAME_MAX


TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_exec_traceparent_is_read_by_its_length() -> None:
    ev = decode(exec_record(b"/bin/sh", b"sh\0", traceparent=TP, stale=b"\0junk"))
    assert ev.traceparent == TP.decode()
    assert ev.argv == ("sh",)
    assert ev.exe == "/bin/sh"


def test_exec_without_traceparent_has_none_even_with_stale_bytes() -> None:
    assert decode(exec_record(b"/bin/sh", b"sh\0", stale=TP)).traceparent is None


def test_exec_traceparent_non_ascii_stays_unparseable() -> None:
    ev = decode(exec_record(b"/bin/sh", b"sh\0", traceparent=b"00-\xff"))
    assert ev.traceparent is not None
    assert not ev.traceparent.isascii() or "?" in ev.traceparent


def test_header_fields() -> None:
    ev = decode(header(EV_FORK) + struct.pack("<Q", 0x11))
    assert ev == ProcessEvent(
        kind=EventKind.FORK,
        ts_ns=TS,
        pid=4242,
        ppid=17,
        start_time_ns=START,
        comm="worker",
        uid=1000,
        gid=100,
        parent_start_time_ns=PARENT_START,
        cgroup_id=CGROUP,
        source=ProcessSource.EBPF,
    )


def test_exec_argv_splits_on_nul_with_trailing_nul() -> None:
    ev = decode(exec_record(b"/usr/bin/ls", b"ls\0-l\0/tmp\0"))
    assert ev.kind is EventKind.EXEC
    assert ev.exe == "/usr/bin/ls"
    assert ev.argv == ("ls", "-l", "/tmp")
    assert ev.argv_truncated is False


def test_exec_keeps_an_empty_last_argument() -> None:
    assert decode(exec_record(b"/bin/echo", b"echo\0\0")).argv == ("echo", "")


def test_exec_with_no_argv() -> None:
    assert decode(exec_record(b"/bin/true", b"")).argv == ()


def test_truncated_argv_keeps_the_partial_last_argument() -> None:
    ev = decode(exec_record(b"/usr/bin/cc", b"cc\0-c\0very_long_na", flags=F_ARGV_TRUNC))
    assert ev.argv == ("cc", "-c", "very_long_na")
    assert ev.argv_truncated is True


def test_argv_truncated_flag_alone_sets_the_field() -> None:
    assert decode(exec_record(b"/bin/sh", b"sh\0", flags=F_ARGV_TRUNC)).argv_truncated is True
    assert decode(exec_record(b"/bin/sh", b"sh\0", flags=F_FNAME_TRUNC)).argv_truncated is False


def test_filename_uses_its_length_not_the_padding() -> None:
    raw = exec_record(b"/opt/x", b"x\0")
    ev = decode(raw)
    assert ev.exe == "/opt/x"


def test_non_utf8_argv_is_kept_escaped() -> None:
    ev = decode(exec_record(b"/bin/cat", b"cat\0caf\xe9\0"))
    assert ev.argv == ("cat", "caf\\xe9")


def test_kernel_thread_flag() -> None:
    assert decode(header(EV_FORK, flags=F_KTHREAD) + bytes(8)).kernel_thread is True
    assert decode(header(EV_FORK, flags=F_ARGV_TRUNC) + bytes(8)).kernel_thread is False


def test_comm_stops_at_the_first_nul() -> None:
    assert decode(header(EV_FORK, comm=b"sh\0stale-bytes!") + bytes(8)).comm == "sh"
    assert decode(header(EV_FORK, comm=b"sixteen-chars-xx") + bytes(8)).comm == "sixteen-chars-xx"


def test_ppid_zero_has_no_parent_start() -> None:
    ev = decode(header(EV_FORK, ppid=0) + bytes(8))
    assert ev.parent_start_time_ns is None
    assert ev.parent_key is None


@pytest.mark.parametrize(
    ("code", "status", "sig", "core"),
    [
        (0x0000, 0, None, False),
        (0x0300, 3, None, False),
        (0xFF00, 255, None, False),
        (0x0009, None, signal.SIGKILL, False),
        (0x008B, None, signal.SIGSEGV, True),
    ],
    ids=["status-0", "status-3", "status-255", "sigkill", "sigsegv-core"],
)
def test_exit_status(code: int, status: int | None, sig: int | None, core: bool) -> None:
    ev = decode(exit_record(code))
    assert ev.kind is EventKind.EXIT
    assert (ev.exit_code, ev.exit_signal, ev.core_dumped) == (status, sig, core)


def test_exit_cpu_and_peak_rss_in_bytes() -> None:
    ev = decode(exit_record(0, cpu_ns=123_456_789, peak_pages=300))
    assert ev.cpu_time_ns == 123_456_789
    assert ev.peak_rss_bytes == 300 * PAGE


def test_oom_kill_rss_in_bytes() -> None:
    ev = decode(header(EV_OOM) + struct.pack("<Q", 1000))
    assert ev.kind is EventKind.OOM_KILL
    assert ev.rss_bytes == 1000 * PAGE
    assert ev.pid == 4242


@pytest.mark.parametrize("kind", [0, 5, 99])
def test_unknown_kind_is_none(kind: int) -> None:
    assert decode_record(header(kind) + bytes(32), LAYOUT) is None
