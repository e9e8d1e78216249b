"""One-line renderings of events for terminals (replay, record --print, linnix-cli)."""

from __future__ import annotations

import re
import shlex
import signal
from datetime import datetime

from otel_linnix.events import EventKind, ProcessEvent

__all__ = ["describe_exit", "event_line", "one_line"]

_COLOURS = {
    EventKind.FORK: "\033[36m",
    EventKind.EXEC: "\033[32m",
    EventKind.EXIT: "\033[33m",
    EventKind.OOM_KILL: "\033[1;31m",
}
_RESET = "\033[0m"
# C0/C1 control characters and DEL: argv and comm are attacker-chosen bytes, and a newline or an
# escape sequence in them would break one-line-per-process output or repaint the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def one_line(text: str) -> str:
    """``text`` with control characters as escapes (``\\n``, ``\\x1b``), safe for a terminal."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def describe_exit(ev: ProcessEvent) -> str:
    """``status 3``, ``signal SIGSEGV (core dumped)`` or ``unknown``."""
    if ev.exit_signal is not None:
        try:
            name = signal.Signals(ev.exit_signal).name
        except ValueError:
            name = str(ev.exit_signal)
        return f"signal {name}" + (" (core dumped)" if ev.core_dumped else "")
    if ev.exit_code is not None:
        return f"status {ev.exit_code}"
    return "unknown"


def event_line(ev: ProcessEvent, wall_ns: int | None = None, *, colour: bool = False) -> str:
    """``08:16:45.123 EXEC  pid=12 ppid=1 uid=0 sh: /bin/sh -c true``."""
    stamp = (
        datetime.fromtimestamp(wall_ns / 1e9).strftime("%H:%M:%S.%f")[:-3]
        if wall_ns is not None
        else f"{ev.ts_ns / 1e9:.3f}"
    )
    kind = ev.kind.value.upper()
    label = f"{_COLOURS[ev.kind]}{kind:<8}{_RESET}" if colour else f"{kind:<8}"
    head = f"{stamp} {label} pid={ev.pid} ppid={ev.ppid} uid={ev.uid} {one_line(ev.comm)}"
    if ev.container_id:
        head += f" [{ev.container_runtime}:{ev.container_id[:12]}]"
    if ev.kind is EventKind.EXEC:
        args = shlex.join(ev.argv) if ev.argv else ""
        trunc = " [argv truncated]" if ev.argv_truncated else ""
        origin = " (already running)" if ev.bootstrap else ""
        return f"{head}: {one_line(ev.exe or '?')} {one_line(args)}{trunc}{origin}"
    if ev.kind is EventKind.EXIT:
        cpu = f" cpu={ev.cpu_time_ns / 1e6:.1f}ms" if ev.cpu_time_ns is not None else ""
        rss = f" peak_rss={ev.peak_rss_bytes // 1024}KiB" if ev.peak_rss_bytes is not None else ""
        return f"{head}: {describe_exit(ev)}{cpu}{rss}"
    if ev.kind is EventKind.OOM_KILL:
        rss = f" rss={ev.rss_bytes // 1024}KiB" if ev.rss_bytes is not None else ""
        return f"{head}: killed by the OOM killer{rss}"
    return head
