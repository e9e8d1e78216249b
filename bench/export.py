"""OTLP export cost: the CPU the log exporter adds at 6,000 lifecycle events/s,
logs on (exporting to a real receiver) against logs off, side by side.

Everything but the receiver runs in this process on a synthetic load (no
root, no eBPF), so the figures are the export path's own cost:

- a real ``Pipeline`` (``handle_batch``: container attribution, the process
  table with lineage ids, sequence numbers, one SinkWorker per sink) with the
  /stream hub as its only other sink, as in the agent;
- ``--rate`` events/s for ``--seconds``: short-lived compiler processes under
  one long-lived ``make`` (fork, exec with a 6-argument argv, exit; a third
  of them exit non-zero), delivered as the drain loop does: one batch per
  100 ms;
- logs on: the agent's ``LogExporter`` with the default ``[export]`` bounds
  (queue 20,000, batches of 512, 5,000 records/s for forks and execs; exits
  bypass the limit), exporting over ``--protocol`` to an OTLP receiver
  (tests/otlp_receiver.py) in a child process, so decoding is not counted;
- logs off: the same pipeline without the exporter (what the agent runs
  with ``[export] logs = false`` or no endpoint).

Measured per repetition: CPU seconds (utime + stime from
/proc/self/task/<tid>/stat) of the exporter's two threads (its SinkWorker
thread, which rate limits and encodes, and the sender thread), of the
feeding thread (the drain loop's share: ``handle_batch`` and the queue
hand-off), and of the whole process. The export path is the exporter's
threads plus the feeding thread's difference to the peer run. Runs
alternate which goes first; the host is given ``--wait-quiet`` s to be quiet
first. Figures are medians with min-max over ``--reps`` repetitions.

    .venv/bin/python -m bench.export [--quick] [--protocol grpc]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    CLK_TCK,
    HostCpu,
    bench_parser,
    median,
    print_table,
    report_target,
    run_bench,
    spread,
    wait_for_quiet,
)
from otel_linnix.config import ExportConfig
from otel_linnix.containers import CgroupResolver
from otel_linnix.events import EventKind, ProcessEvent
from otel_linnix.export.logs import LogExporter
from otel_linnix.export.settings import resolve_export
from otel_linnix.pipeline import Pipeline
from otel_linnix.process_table import ProcessTable
from otel_linnix.sinks import SinkWorker
from otel_linnix.sources.procfs import ProcReader
from otel_linnix.sources.replay import ReplaySource
from otel_linnix.stream_hub import StreamHub

S = 1_000_000_000
BATCH_S = 0.1
TARGET_ON_PCT = 15.0
TARGET_OFF_PCT = 5.0
ROOT = Path(__file__).resolve().parent.parent

_RECEIVER = """
import sys
from tests.otlp_receiver import OtlpReceiver
rx = OtlpReceiver().start()
print(rx.grpc_endpoint, rx.http_endpoint, flush=True)
sys.stdin.readline()
print(len(rx.log_records()), flush=True)
rx.stop()
"""


class Receiver:
    """tests/otlp_receiver.py in a child process: its decoding is not ours."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _RECEIVER],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.grpc, self.http = self.proc.stdout.readline().split()

    def close(self) -> int:
        """Stop it; the number of log records it received."""
        out, _ = self.proc.communicate("\n", timeout=60)
        return int(out.split()[0])


def _thread_cpu_s(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat", "rb") as fh:
        data = fh.read()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _threads(prefixes: tuple[str, ...]) -> list[int]:
    return [
        t.native_id
        for t in threading.enumerate()
        if t.native_id is not None and t.name.startswith(prefixes)
    ]


def synthetic_batches(rate: int, seconds: float) -> Iterator[list[ProcessEvent]]:
    """Batches of one 100 ms drain each: fork, exec, exit of compiler
    processes under one make, a third failing."""
    per_batch = int(rate * BATCH_S)
    make_start = 1 * S
    ts = 2 * S
    pid = 10_000
    yield [
        ProcessEvent(EventKind.FORK, make_start, 500, 1, make_start, "bash", uid=1000,
                     parent_start_time_ns=10_000_000),
        ProcessEvent(EventKind.EXEC, make_start + 1000, 500, 1, make_start, "make", uid=1000,
                     parent_start_time_ns=10_000_000, exe="/usr/bin/make",
                     argv=("make", "-j8", "all")),
    ]  # fmt: skip
    step = int(BATCH_S * S) // max(1, per_batch)
    for _ in range(int(seconds / BATCH_S)):
        batch: list[ProcessEvent] = []
        while len(batch) + 3 <= per_batch:
            pid = pid + 1 if pid < 4_000_000 else 10_000
            start = ts - ts % 10_000_000 + pid % 10_000_000
            common = {"uid": 1000, "gid": 1000, "parent_start_time_ns": make_start}
            batch.append(ProcessEvent(EventKind.FORK, ts, pid, 500, start, "make", **common))  # type: ignore[arg-type]
            batch.append(
                ProcessEvent(
                    EventKind.EXEC, ts + step, pid, 500, start, "cc1",
                    exe="/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
                    argv=("cc1", "-quiet", f"src/f{pid}.c", "-O2", "-o", f"/tmp/cc{pid}.s"),
                    **common,  # type: ignore[arg-type]
                )
            )  # fmt: skip
            batch.append(
                ProcessEvent(
                    EventKind.EXIT, ts + 2 * step, pid, 500, start, "cc1",
                    exit_code=1 if pid % 3 == 0 else 0, cpu_time_ns=2_000_000,
                    peak_rss_bytes=8 << 20, **common,  # type: ignore[arg-type]
                )
            )  # fmt: skip
            ts += 3 * step
        yield batch


@dataclass
class Run:
    export_cpu_s: float
    feeder_cpu_s: float
    process_cpu_s: float
    wall_s: float
    stats: dict[str, int]
    received: int


def run_once(args: argparse.Namespace, logs_on: bool, tmp: Path) -> Run:
    (tmp / "proc").mkdir(exist_ok=True)
    (tmp / "cgroup").mkdir(exist_ok=True)
    table = ProcessTable()
    hub = StreamHub(10_000, 16, 4096, lambda ts: ts)
    pipeline = Pipeline(
        ReplaySource(tmp / "unused.jsonl"),
        table,
        ProcReader(str(tmp / "proc")),
        CgroupResolver(root=str(tmp / "cgroup")),
        [SinkWorker(hub)],
        clock=lambda: 0,
        sample_interval_s=3600.0,
    )
    receiver = Receiver() if logs_on else None
    exporter: LogExporter | None = None
    if receiver is not None:
        endpoint = receiver.grpc if args.protocol == "grpc" else receiver.http
        settings = resolve_export(ExportConfig(endpoint=endpoint, protocol=args.protocol), {})
        assert settings.logs is not None
        cfg = settings.config
        exporter = LogExporter(
            settings.logs,
            {"service.name": "bench"},
            max_queue=cfg.logs_queue,
            batch_max=cfg.logs_batch,
            max_per_s=cfg.logs_max_per_s,
            table=table,
            wall_offset_ns=lambda: 1_700_000_000 * S,
            owner=lambda uid: "builder",
        )
        exporter.worker = SinkWorker(exporter, max_queue=cfg.logs_queue)
        pipeline.sinks.append(exporter.worker)
    for worker in pipeline.sinks:
        worker.start()
    batches = list(synthetic_batches(args.rate, args.seconds))
    export_threads = _threads(("linnix-sink-otlp", "linnix-otlp"))
    before_threads = {tid: _thread_cpu_s(tid) for tid in export_threads}
    me = threading.get_native_id()
    feeder_before = _thread_cpu_s(me)
    process_before = _process_cpu_s()
    started = time.monotonic()
    for i, batch in enumerate(batches):
        # Paced like the drain loop: one batch per 100 ms.
        delay = started + i * BATCH_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pipeline.handle_batch(batch)
    # Let the exporter finish what it was handed (its CPU counts).
    for worker in pipeline.sinks:
        worker.drain(30)
    if exporter is not None:
        exporter.flush(30)
    wall_s = time.monotonic() - started
    feeder = _thread_cpu_s(me) - feeder_before
    export = sum(_thread_cpu_s(tid) - cpu for tid, cpu in before_threads.items())
    process = _process_cpu_s() - process_before
    stats = exporter.stats() if exporter is not None else {}
    pipeline.stop(5.0)
    received = receiver.close() if receiver is not None else 0
    return Run(export, feeder, process, wall_s, stats, received)


def body(args: argparse.Namespace) -> None:
    if args.quick:
        args.seconds, args.reps = 5.0, 2
    events = int(args.rate * BATCH_S) // 3 * 3 * int(args.seconds / BATCH_S)
    print(
        f"load: {args.rate} lifecycle events/s for {args.seconds:g} s ({events} events, "
        f"fork/exec/exit, batches every {BATCH_S * 1000:.0f} ms); protocol {args.protocol}; "
        f"{args.reps} repetitions; {os.cpu_count()} CPUs"
    )
    wait_for_quiet(args.wait_quiet, 25.0)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-export-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    on: list[Run] = []
    off: list[Run] = []
    host_before = HostCpu.now()
    for rep in range(args.reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for logs_on in order:
            (on if logs_on else off).append(run_once(args, logs_on, tmp))
    host_pct = HostCpu.now().busy_pct_since(host_before)
    print(f"host load during the runs: {host_pct:.1f}% busy (all CPUs, this process included)")

    def pct(values: list[float], runs: list[Run]) -> list[float]:
        return [v * 100.0 / r.wall_s for v, r in zip(values, runs, strict=True)]

    feeder_off = median(pct([r.feeder_cpu_s for r in off], off))
    export_on = pct([r.export_cpu_s for r in on], on)
    feeder_on = pct([r.feeder_cpu_s for r in on], on)
    path_on = [e + f - feeder_off for e, f in zip(export_on, feeder_on, strict=True)]
    rows = [
        ["exporter threads, % of a core", spread(export_on).fmt(1), "-"],
        [
            "feeding (drain) thread, % of a core",
            spread(feeder_on).fmt(1),
            spread(pct([r.feeder_cpu_s for r in off], off)).fmt(1),
        ],
        [
            "whole process, % of a core",
            spread(pct([r.process_cpu_s for r in on], on)).fmt(1),
            spread(pct([r.process_cpu_s for r in off], off)).fmt(1),
        ],
        [
            "us of export path per event",
            spread(
                [p / 100 * r.wall_s / events * 1e6 for p, r in zip(path_on, on, strict=True)]
            ).fmt(1),
            "-",
        ],
    ]  # fmt: skip
    print_table("CPU (median (min-max))", ["", "logs on", "logs off"], rows)
    drops = [
        [
            f"rep {i + 1}",
            r.stats["exported"],
            r.received,
            r.stats["dropped"],
            r.stats["rate_limited"],
            r.stats["failed"],
        ]
        for i, r in enumerate(on)
    ]
    print_table(
        "logs on: records", ["", "exported", "received", "dropped", "rate limited", "failed"], drops
    )
    path = spread(path_on)
    process_ratio = median([r.process_cpu_s for r in on]) / max(
        1e-9, median([r.process_cpu_s for r in off])
    )
    print(f"whole process, logs on / logs off: {process_ratio:.2f}x")
    report_target(
        "logs on < 15% of one core",
        path.median < TARGET_ON_PCT,
        f"export path {path.fmt(1)}% at {args.rate} events/s",
    )
    # Logs off no exporter thread exists (measured anyway: 0 when none runs).
    export_off = spread(pct([r.export_cpu_s for r in off], off))
    report_target(
        "logs off < 5% of one core",
        export_off.median < TARGET_OFF_PCT,
        f"export threads {export_off.fmt(1)}%; the pipeline itself costs {feeder_off:.1f}% "
        "of a core feeding these events, with or without export",
    )


def main() -> int:
    p = bench_parser("bench.export", __doc__)
    p.add_argument("--rate", type=int, default=6000, help="lifecycle events per second")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each configuration")
    p.add_argument("--protocol", choices=("http/protobuf", "grpc"), default="http/protobuf")
    p.add_argument("--wait-quiet", type=float, default=30.0, help="seconds to wait for quiet")
    p.add_argument("--quick", action="store_true", help="5 s runs, 2 repetitions")
    return run_bench("bench.export", p, body)


if __name__ == "__main__":
    raise SystemExit(main())
