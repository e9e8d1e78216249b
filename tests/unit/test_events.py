"""Process identity and the wait-status decoding every exit goes through."""

from __future__ import annotations

import signal

import pytest

from otel_linnix.events import NS_PER_TICK, EventKind, ProcessKey, decode_wait_status
from tests.unit.conftest import make_event


def test_kernel_and_proc_start_times_of_one_process_give_one_key() -> None:
    ticks = 1500  # field 22 of /proc/<pid>/stat
    from_proc = ticks * NS_PER_TICK
    from_kernel = from_proc + NS_PER_TICK - 1  # task->start_boottime, not rounded
    assert ProcessKey.of(4242, from_kernel) == ProcessKey.of(4242, from_proc)
    assert ProcessKey.of(4242, from_kernel).start_time_ns == from_proc


def test_start_times_one_tick_apart_are_different_processes() -> None:
    start = 1500 * NS_PER_TICK
    assert ProcessKey.of(4242, start) != ProcessKey.of(4242, start + NS_PER_TICK)
    assert ProcessKey.of(4242, start) != ProcessKey.of(4243, start)


def test_event_keys_are_truncated_too() -> None:
    ev = make_event(
        EventKind.FORK, 10, 7 * NS_PER_TICK + 3, ppid=1, parent_start_time_ns=2 * NS_PER_TICK + 9
    )
    assert ev.key == ProcessKey(10, 7 * NS_PER_TICK)
    assert ev.parent_key == ProcessKey(1, 2 * NS_PER_TICK)


@pytest.mark.parametrize(
    ("ppid", "parent_start"), [(0, 5 * NS_PER_TICK), (1, None)], ids=["no-ppid", "no-start"]
)
def test_parent_key_needs_both_parent_fields(ppid: int, parent_start: int | None) -> None:
    ev = make_event(EventKind.FORK, 10, NS_PER_TICK, ppid=ppid, parent_start_time_ns=parent_start)
    assert ev.parent_key is None


def test_key_str_is_pid_at_start() -> None:
    assert str(ProcessKey(12, 3 * NS_PER_TICK)) == f"12@{3 * NS_PER_TICK}"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, (0, None, False)),
        (0x0300, (3, None, False)),
        (0xFF00, (255, None, False)),
        (signal.SIGKILL, (None, signal.SIGKILL, False)),
        (0x8B, (None, signal.SIGSEGV, True)),
        (signal.SIGTERM, (None, signal.SIGTERM, False)),
    ],
    ids=["status-0", "status-3", "status-255", "sigkill", "sigsegv-core", "sigterm"],
)
def test_decode_wait_status(code: int, expected: tuple[int | None, int | None, bool]) -> None:
    assert decode_wait_status(code) == expected


@pytest.mark.parametrize(
    ("exit_code", "exit_signal", "abnormal"),
    [(0, None, False), (3, None, True), (None, signal.SIGKILL, True), (None, None, False)],
    ids=["status-0", "status-3", "signal", "unknown"],
)
def test_abnormal_exit(exit_code: int | None, exit_signal: int | None, abnormal: bool) -> None:
    ev = make_event(EventKind.EXIT, 10, 0, exit_code=exit_code, exit_signal=exit_signal)
    assert ev.abnormal_exit is abnormal
