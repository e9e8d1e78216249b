"""Builds a running agent from a Config: picks the source, falls back, wires the pipeline."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from otel_linnix.config import Config
from otel_linnix.containers import CgroupResolver
from otel_linnix.errors import CaptureUnavailable
from otel_linnix.pipeline import Pipeline
from otel_linnix.process_table import ProcessTable
from otel_linnix.sinks import SinkWorker
from otel_linnix.sources.base import Source
from otel_linnix.sources.bpf import BpfSource
from otel_linnix.sources.procfs import ProcReader, boottime_ns
from otel_linnix.sources.procfs_poll import ProcfsPollingSource

__all__ = ["build_pipeline", "choose_source"]

log = logging.getLogger(__name__)


def choose_source(config: Config, reader: ProcReader) -> tuple[Source, str | None]:
    """The source to run and, when it is not the kernel, why.

    ``capture.source = "ebpf"`` makes an unavailable kernel a start-up error
    (CaptureUnavailable); ``"auto"`` falls back to /proc polling and says why.
    """
    capture = config.capture
    poller = ProcfsPollingSource(reader, capture.poll_interval_ms / 1000.0, boottime_ns)
    if capture.source == "procfs":
        return poller, 'configured to poll /proc ([capture] source = "procfs")'
    bpf = BpfSource(capture, boottime_ns)
    try:
        bpf.load()
    except CaptureUnavailable as exc:
        if capture.source == "ebpf":
            raise
        log.warning(
            "kernel capture unavailable, polling /proc instead (short-lived "
            "processes will be missed): %s",
            exc,
        )
        return poller, str(exc)
    return bpf, None


def build_pipeline(config: Config, sinks: Sequence[SinkWorker] = ()) -> Pipeline:
    """A pipeline ready to start(); the kernel program is already loaded if used."""
    reader = ProcReader()
    source, reason = choose_source(config, reader)
    table = ProcessTable(
        config.process_table.max_entries, int(config.process_table.exited_retention_s * 1e9)
    )
    return Pipeline(
        source,
        table,
        reader,
        CgroupResolver(),
        sinks,
        clock=boottime_ns,
        sample_interval_s=config.telemetry.sample_interval_ms / 1000.0,
        sampler_max_processes=config.telemetry.sample_max_processes,
        fd_limit_refresh_sweeps=config.telemetry.fd_limit_refresh_sweeps,
        capture_kernel_threads=config.capture.kernel_threads,
        fallback_reason=reason,
    )
