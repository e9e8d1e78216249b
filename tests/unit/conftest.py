"""Shared helpers of the default tier: event builders, an in-memory sink, fixture paths."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from otel_linnix import config
from otel_linnix.events import EventKind, ProcessEvent

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PROC_FIXTURE = FIXTURES / "proc"
RECORDINGS = FIXTURES / "recordings"
DEADLINE_S = 5.0


def make_event(
    kind: EventKind,
    pid: int,
    start_time_ns: int,
    *,
    ts_ns: int | None = None,
    ppid: int = 0,
    parent_start_time_ns: int | None = None,
    comm: str = "proc",
    **fields: Any,
) -> ProcessEvent:
    """A ProcessEvent with the identity spelled out and everything else optional.

    ``ts_ns`` defaults to the start time, which is what a fork record carries.
    """
    return ProcessEvent(
        kind=kind,
        ts_ns=start_time_ns if ts_ns is None else ts_ns,
        pid=pid,
        ppid=ppid,
        start_time_ns=start_time_ns,
        parent_start_time_ns=parent_start_time_ns,
        comm=comm,
        **fields,
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> bool:
    """Poll ``predicate`` until it holds or the deadline passes (for counters
    that offer nothing to wait on)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(0.005)
    return True


class CollectingSink:
    """A Sink keeping every batch in memory; waiters are woken on each emit."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.batches: list[list[ProcessEvent]] = []
        self.flushes = 0
        self.shutdowns = 0
        self._cond = threading.Condition()

    @property
    def events(self) -> list[ProcessEvent]:
        with self._cond:
            return [ev for batch in self.batches for ev in batch]

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        with self._cond:
            self.batches.append(list(events))
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> None:
        self.flushes += 1

    def shutdown(self, timeout_s: float) -> None:
        self.shutdowns += 1

    def wait_for(self, count: int, timeout_s: float = DEADLINE_S) -> bool:
        """True once at least ``count`` events arrived, False at the deadline."""
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(len(b) for b in self.batches) >= count, timeout_s
            )


@pytest.fixture
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $LINNIX_CONFIG and no /etc/linnix/linnix.toml, whatever the host has."""
    monkeypatch.delenv(config.ENV_CONFIG, raising=False)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "linnix.toml")


@pytest.fixture
def collecting_sink() -> CollectingSink:
    return CollectingSink()
