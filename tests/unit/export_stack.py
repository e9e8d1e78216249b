"""A replay-fed Pipeline with the OTLP exporters as sinks, and the in-process receiver."""

from __future__ import annotations

from pathlib import Path

from otel_linnix.config import ExportConfig
from otel_linnix.containers import CgroupResolver
from otel_linnix.events import ProcessEvent
from otel_linnix.export.settings import OtlpTarget, resolve_export
from otel_linnix.pipeline import Pipeline
from otel_linnix.process_table import ProcessTable
from otel_linnix.sinks import Sink, SinkWorker
from otel_linnix.sources.procfs import ProcReader
from otel_linnix.sources.replay import ReplaySource
from tests.unit.conftest import DEADLINE_S, CollectingSink

S = 1_000_000_000
# Boot clock -> wall clock in these tests: event times read as November 2023.
WALL_OFFSET_NS = 1_700_000_000 * S
PROTOCOLS = ("http/protobuf", "grpc")
RESOURCE = {"service.name": "linnix-test", "host.name": "testhost"}


def target(signal: str, endpoint: str, protocol: str, timeout_s: float = 2.0) -> OtlpTarget:
    """The signal's target as resolve_export builds it from ``[export]``."""
    cfg = ExportConfig(endpoint=endpoint, protocol=protocol, timeout_s=timeout_s, traces=True)
    settings = resolve_export(cfg, {})
    found = getattr(settings, signal)
    assert isinstance(found, OtlpTarget)
    return found


def wall(boot_ns: int) -> int:
    return boot_ns + WALL_OFFSET_NS


class ReplayStack:
    """ReplaySource -> Pipeline -> (exporter sinks, a collecting sink)."""

    def __init__(self, recording: Path, tmp_path: Path) -> None:
        # An empty /proc and cgroup tree: only the recording's processes exist.
        (tmp_path / "proc").mkdir(exist_ok=True)
        (tmp_path / "cgroup").mkdir(exist_ok=True)
        self.source = ReplaySource(recording)
        self.table = ProcessTable()
        self.collected = CollectingSink()
        self.pipeline = Pipeline(
            self.source,
            self.table,
            ProcReader(str(tmp_path / "proc")),
            CgroupResolver(root=str(tmp_path / "cgroup")),
            [SinkWorker(self.collected)],
            clock=lambda: 30 * S,
            sample_interval_s=3600.0,
        )

    def add(self, sink: Sink) -> None:
        """Another sink, before ``run``."""
        self.pipeline.sinks.insert(0, SinkWorker(sink))

    def run(self, expected_events: int) -> list[ProcessEvent]:
        """Start, wait until every event went through; the events as the sinks saw them."""
        self.pipeline.start()
        assert self.source.done.wait(DEADLINE_S)
        assert self.collected.wait_for(expected_events)
        for worker in self.pipeline.sinks:
            assert worker.drain(DEADLINE_S)
        return self.collected.events

    def stop(self) -> None:
        self.pipeline.stop(2.0)
