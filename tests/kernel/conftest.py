"""Kernel tier: the real lifecycle program on the real kernel.

Skips (with the reason the agent itself would give) where eBPF cannot run;
on these machines and in CI, as root, it runs. One agent pipeline is shared
by the session (loading the program costs about a second); tests pick their
own processes out of its stream by pid or by a unique argv tag.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from otel_linnix.config import CaptureConfig
from otel_linnix.containers import CgroupResolver
from otel_linnix.errors import CaptureUnavailable
from otel_linnix.events import EventKind, ProcessEvent
from otel_linnix.pipeline import Pipeline
from otel_linnix.process_table import ProcessTable
from otel_linnix.sinks import SinkWorker
from otel_linnix.sources.bpf import BpfSource, check_prerequisites
from otel_linnix.sources.procfs import ProcReader, boottime_ns
from tests.workloads import build, have_compiler


def kernel_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "kernel tier needs root"
    try:
        check_prerequisites()
    except CaptureUnavailable as exc:
        return f"kernel capture unavailable here: {exc}"
    if not have_compiler():
        return "kernel tier needs gcc for its workload programs"
    return None


class Collector:
    """A sink keeping every event, with deadline-based waits."""

    name = "collector"

    def __init__(self) -> None:
        self.events: list[ProcessEvent] = []
        self._cond = threading.Condition()

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        with self._cond:
            self.events.extend(events)
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> None:
        pass

    def shutdown(self, timeout_s: float) -> None:
        pass

    def wait_for(
        self, predicate: Callable[[list[ProcessEvent]], bool], timeout_s: float = 20.0
    ) -> list[ProcessEvent]:
        """Wait until ``predicate(events)`` holds; fail the test at the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"condition not met within {timeout_s} s ({len(self.events)} events seen)"
                    )
                self._cond.wait(left)
            return list(self.events)

    def of_pid(self, pid: int) -> list[ProcessEvent]:
        with self._cond:
            return [e for e in self.events if e.pid == pid]

    def by_kind(self, pids: set[int]) -> dict[EventKind, dict[int, list[ProcessEvent]]]:
        out: dict[EventKind, dict[int, list[ProcessEvent]]] = collections.defaultdict(
            lambda: collections.defaultdict(list)
        )
        with self._cond:
            for e in self.events:
                if e.pid in pids:
                    out[e.kind][e.pid].append(e)
        return out


class Agent:
    """A running pipeline on the real kernel and the events it emitted."""

    def __init__(self, capture: CaptureConfig | None = None) -> None:
        self.collector = Collector()
        self.source = BpfSource(capture or CaptureConfig(), boottime_ns)
        self.table = ProcessTable()
        self.pipeline = Pipeline(
            self.source,
            self.table,
            ProcReader(),
            CgroupResolver(),
            [SinkWorker(self.collector, max_queue=1_000_000)],
            clock=boottime_ns,
            sample_interval_s=3600.0,
        )

    def __enter__(self) -> Agent:
        self.pipeline.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipeline.stop(2.0)

    def lost_total(self) -> int:
        return self.source.stats().lost_total


@pytest.fixture(scope="session")
def needs_ebpf() -> None:
    reason = kernel_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def agent(needs_ebpf: None) -> Iterator[Agent]:
    with Agent() as running:
        yield running


@pytest.fixture
def tag() -> str:
    """A unique argv marker so a test finds its own processes."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def workloads(needs_ebpf: None) -> dict[str, Path]:
    return {
        name: build(name) for name in ("spawner", "child", "forker", "threads", "leaker", "fdhog")
    }
