"""One-line event renderings for terminals."""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest

from otel_linnix.console import describe_exit, event_line, one_line
from otel_linnix.events import EventKind, ProcessEvent
from tests.unit.conftest import make_event

TS = 12_345_678_901  # rendered as 12.346 without a wall clock


def exec_event(**fields: Any) -> ProcessEvent:
    base: dict[str, Any] = {"exe": "/usr/bin/grep", "argv": ("grep", "-r", "two words", "it's")}
    base.update(fields)
    return make_event(EventKind.EXEC, 42, 1, ts_ns=TS, ppid=1, comm="grep", uid=1000, **base)


def exit_event(**fields: Any) -> ProcessEvent:
    return make_event(EventKind.EXIT, 42, 1, ts_ns=TS, ppid=1, comm="grep", uid=1000, **fields)


HEAD = "12.346 {kind} pid=42 ppid=1 uid=1000 grep"


def test_exec_line_quotes_argv_like_a_shell() -> None:
    assert event_line(exec_event()) == (
        HEAD.format(kind="EXEC    ") + ": /usr/bin/grep grep -r 'two words' 'it'\"'\"'s'"
    )


def test_exec_line_flags_truncated_argv_and_bootstrap() -> None:
    line = event_line(exec_event(argv=("sleep", "infinity"), argv_truncated=True, bootstrap=True))
    assert line.endswith(": /usr/bin/grep sleep infinity [argv truncated] (already running)")


def test_exec_line_without_exe_or_argv() -> None:
    line = event_line(exec_event(exe=None, argv=None))
    assert line.startswith(HEAD.format(kind="EXEC    ") + ": ?")
    assert "[argv truncated]" not in line
    assert "(already running)" not in line


def test_exit_line_by_status() -> None:
    line = event_line(exit_event(exit_code=3, cpu_time_ns=12_500_000, peak_rss_bytes=2 << 20))
    assert line == HEAD.format(kind="EXIT    ") + ": status 3 cpu=12.5ms peak_rss=2048KiB"


def test_exit_line_by_signal_with_core_dump() -> None:
    line = event_line(exit_event(exit_signal=signal.SIGSEGV, core_dumped=True))
    assert line == HEAD.format(kind="EXIT    ") + ": signal SIGSEGV (core dumped)"


def test_exit_line_unknown() -> None:
    assert event_line(exit_event()) == HEAD.format(kind="EXIT    ") + ": unknown"


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"exit_code": 0}, "status 0"),
        ({"exit_signal": signal.SIGKILL}, "signal SIGKILL"),
        ({"exit_signal": signal.SIGABRT, "core_dumped": True}, "signal SIGABRT (core dumped)"),
        ({"exit_signal": 99}, "signal 99"),
        ({}, "unknown"),
    ],
    ids=["status-0", "sigkill", "sigabrt-core", "unnamed-signal", "unknown"],
)
def test_describe_exit(fields: dict[str, Any], text: str) -> None:
    assert describe_exit(exit_event(**fields)) == text


def test_oom_kill_line() -> None:
    ev = make_event(
        EventKind.OOM_KILL, 42, 1, ts_ns=TS, ppid=1, comm="grep", uid=1000, rss_bytes=3 << 30
    )
    assert event_line(ev) == (
        HEAD.format(kind="OOM_KILL") + ": killed by the OOM killer rss=3145728KiB"
    )


def test_fork_line_is_the_head() -> None:
    ev = make_event(EventKind.FORK, 42, 1, ts_ns=TS, ppid=1, comm="grep", uid=1000)
    assert event_line(ev) == HEAD.format(kind="FORK    ")


def test_container_is_shown_short() -> None:
    line = event_line(
        exit_event(exit_code=0, container_id="0123456789abcdef" * 4, container_runtime="docker")
    )
    assert " grep [docker:0123456789ab]: status 0" in line


def test_wall_clock_stamp() -> None:
    line = event_line(exit_event(exit_code=0), wall_ns=1_700_000_000_123_000_000)
    assert re.match(r"\d\d:\d\d:\d\d\.123 EXIT ", line)


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda k: k.value)
def test_colour_codes_only_when_asked(kind: EventKind) -> None:
    ev = make_event(kind, 42, 1, ts_ns=TS, comm="x", exit_code=0)
    plain = event_line(ev)
    coloured = event_line(ev, colour=True)
    assert "\033[" not in plain
    assert re.search(r"\033\[[0-9;]+m" + kind.value.upper() + r" *\033\[0m", coloured)
    assert re.sub(r"\033\[[0-9;]*m", "", coloured) == plain


def test_one_line_escapes_control_characters() -> None:
    assert one_line("a\nb\tc\r\x1b[31m\x7f\x9b ü") == "a\\nb\\tc\\r\\x1b[31m\\x7f\\x9b ü"


def test_exec_line_of_a_multi_line_script_stays_on_one_line() -> None:
    ev = exec_event(argv=("bash", "-c", "set -e\nrm -rf /tmp/x\n"))._replace(comm="ba\x1bsh")
    line = event_line(ev)
    assert "\n" not in line and "\x1b" not in line
    assert line.endswith(" ba\\x1bsh: /usr/bin/grep bash -c 'set -e\\nrm -rf /tmp/x\\n'")
