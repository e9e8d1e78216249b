"""The agent's own footprint: idle CPU, RSS with 1,000 live processes, sampler cost.

(a) Idle CPU: ``otel-linnix run`` (default config) on a quiet host, CPU % of
    one core from utime+stime over ``--idle-window`` seconds, after
    ``--settle`` seconds for its start-up walk. It first waits (up to
    ``--wait-quiet`` seconds) for the host to be quiet, since other
    sessions share this machine. The host's fork count over the
    window is printed: "quiet" is whatever the machine was doing.
(b) RSS: ``--live`` extra ``/bin/sleep`` children of this bench are started,
    then the agent; after ``--settle`` seconds (at least 3 sampler sweeps at
    the default 1 s interval) VmRSS is read once a second for
    ``--rss-samples`` seconds; CPU over that time is the sampler's real cost.
(c) Sampler cost with the same live processes, in this process: the agent's
    ``Sampler`` over a ``ProcessTable`` filled by the /proc start-up walk, with
    CPU times from a loaded ``BpfSource`` (its in-kernel accounting), versus a
    psutil sweep of 8 attributes (cpu_times, memory_info, num_fds,
    num_threads, status, ppid, name, create_time) over the same pids, with
    Process objects kept across sweeps as ``process_iter`` does. CPU ms per
    sweep from time.thread_time; one warm-up sweep each, then ``--sweeps``
    sweeps alternating the two.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import (
    BenchError,
    HostCpu,
    Spread,
    fmt_mib,
    host_forks,
    print_table,
    report_target,
    require,
    run_bench,
    spread,
    start_agent,
    wait_for_quiet,
    workdir,
)
from otel_linnix.config import CaptureConfig
from otel_linnix.process_table import ProcessTable
from otel_linnix.sampler import Sampler
from otel_linnix.sources.bpf import BpfSource
from otel_linnix.sources.procfs import ProcReader, bootstrap_events, boottime_ns

PSUTIL_ATTRS = [
    "cpu_times",
    "memory_info",
    "num_fds",
    "num_threads",
    "status",
    "ppid",
    "name",
    "create_time",
]
SLEEP = "/bin/sleep"


@dataclass(frozen=True, slots=True)
class Idle:
    window_s: float
    cpu_s: float
    rss_bytes: int
    host_forks: int
    host_busy_pct: float  # all CPUs, the agent included
    # per --idle-step slice of the window: (agent CPU % of one core, host forks)
    slices: tuple[tuple[float, int], ...]

    @property
    def cpu_pct(self) -> float:
        return self.cpu_s * 100.0 / self.window_s


@dataclass(frozen=True, slots=True)
class Loaded:
    live: int
    processes: int  # on the host while measuring
    rss: Spread
    peak_rss_bytes: int
    cpu_pct: float


@dataclass(frozen=True, slots=True)
class SweepCost:
    processes: int
    sampler_ms: Spread
    psutil_ms: Spread
    sampler_wall_ms: Spread
    psutil_wall_ms: Spread
    sampler_cold_ms: float
    psutil_cold_ms: float


@contextlib.contextmanager
def live_processes(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` sleeping children, killed and reaped on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [SLEEP, "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
                )
            )
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def measure_idle(args: argparse.Namespace, wd: Path) -> Idle:
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet, args.quiet_pct)
    with start_agent("run", wd / "agent-idle.log") as agent:
        time.sleep(args.settle)
        host0, forks0, cpu0, t0 = HostCpu.now(), host_forks(), agent.cpu_s(), time.monotonic()
        slices = []
        last = (t0, cpu0, forks0)
        while last[0] - t0 < args.idle_window - 1e-3:
            time.sleep(min(args.idle_step, args.idle_window - (last[0] - t0)))
            now = (time.monotonic(), agent.cpu_s(), host_forks())
            slices.append(((now[1] - last[1]) * 100.0 / (now[0] - last[0]), now[2] - last[2]))
            last = now
        t1, cpu1, forks1 = last
        busy = HostCpu.now().busy_pct_since(host0)
        rss = agent.rss_bytes()
    return Idle(t1 - t0, cpu1 - cpu0, rss, forks1 - forks0, busy, tuple(slices))


def measure_loaded(args: argparse.Namespace, wd: Path) -> Loaded:
    with start_agent("run", wd / "agent-loaded.log") as agent:
        time.sleep(args.settle)
        cpu0, t0 = agent.cpu_s(), time.monotonic()
        samples = []
        for _ in range(args.rss_samples):
            time.sleep(1.0)
            samples.append(agent.rss_bytes())
        cpu1, t1 = agent.cpu_s(), time.monotonic()
        peak = agent.rss_bytes(peak=True)
        n_procs = len(psutil.pids())
    return Loaded(args.live, n_procs, spread(samples), peak, (cpu1 - cpu0) * 100.0 / (t1 - t0))


def psutil_sweep(procs: list[psutil.Process]) -> int:
    done = 0
    for p in procs:
        try:
            p.as_dict(PSUTIL_ATTRS, ad_value=None)
            done += 1
        except psutil.NoSuchProcess:
            pass
    return done


def _timed(fn: object) -> tuple[float, float]:
    """(CPU ms, wall ms) of ``fn()`` on this thread."""
    assert callable(fn)
    c0, w0 = time.thread_time(), time.perf_counter()
    fn()
    return (time.thread_time() - c0) * 1e3, (time.perf_counter() - w0) * 1e3


def measure_sweeps(args: argparse.Namespace) -> SweepCost:
    source = BpfSource(CaptureConfig())
    source.load()
    try:
        reader = ProcReader()
        table = ProcessTable()
        table.apply_batch(
            [ev for ev in bootstrap_events(reader, boottime_ns()) if not ev.kernel_thread]
        )
        sampler = Sampler(reader, table, source.cpu_times_ns, boottime_ns)
        pids = sorted(table.live_keys())
        procs = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(pid))
        sampler_cold, _ = _timed(sampler.sweep)
        psutil_cold, _ = _timed(lambda: psutil_sweep(procs))
        s_cpu, s_wall, p_cpu, p_wall = [], [], [], []
        for _ in range(args.sweeps):
            c, w = _timed(sampler.sweep)
            s_cpu.append(c)
            s_wall.append(w)
            c, w = _timed(lambda: psutil_sweep(procs))
            p_cpu.append(c)
            p_wall.append(w)
        if sampler.last.sampled < len(pids) * 0.9:
            raise BenchError(f"the sampler sampled only {sampler.last.sampled} of {len(pids)}")
    finally:
        source.stop(1.0)
    return SweepCost(
        len(pids),
        spread(s_cpu),
        spread(p_cpu),
        spread(s_wall),
        spread(p_wall),
        sampler_cold,
        psutil_cold,
    )


def report(idle: Idle, loaded: Loaded, cost: SweepCost, args: argparse.Namespace) -> None:
    quiet = [c for c, forks in idle.slices if forks == 0]
    print_table(
        "(a) idle agent (otel-linnix run, default config)",
        ["", "value"],
        [
            ["window", f"{idle.window_s:.1f} s"],
            ["agent CPU", f"{idle.cpu_s:.2f} s = {idle.cpu_pct:.2f}% of one core"],
            ["agent VmRSS at the end", fmt_mib(idle.rss_bytes)],
            [
                "host forks during the window",
                f"{idle.host_forks} ({idle.host_forks / idle.window_s:.1f}/s)",
            ],
            ["host CPU busy during the window", f"{idle.host_busy_pct:.1f}% of all CPUs"],
            [
                f"agent CPU per {args.idle_step:g} s slice",
                spread([c for c, _ in idle.slices]).fmt(2, "%"),
            ],
            [
                f"agent CPU in slices with no host fork ({len(quiet)} of {len(idle.slices)})",
                spread(quiet).fmt(2, "%") if quiet else "-",
            ],
        ],
    )
    print_table(
        f"(b) agent with {loaded.live} extra live processes "
        f"({loaded.processes} on the host), after {args.settle:g} s",
        ["", "value"],
        [
            [
                f"VmRSS, {loaded.rss.n} samples 1 s apart",
                f"{loaded.rss.median / 2**20:.1f} MiB "
                f"({loaded.rss.low / 2**20:.1f}-{loaded.rss.high / 2**20:.1f})",
            ],
            ["VmHWM (peak since start)", fmt_mib(loaded.peak_rss_bytes)],
            ["agent CPU while sampling", f"{loaded.cpu_pct:.2f}% of one core"],
        ],
    )
    ratio = cost.sampler_ms.median / cost.psutil_ms.median
    print_table(
        f"(c) one sweep over {cost.processes} processes, median (min-max) of {cost.sampler_ms.n}",
        ["", "agent Sampler", "psutil, 8 attributes"],
        [
            ["CPU ms per sweep", cost.sampler_ms.fmt(1), cost.psutil_ms.fmt(1)],
            ["wall ms per sweep", cost.sampler_wall_ms.fmt(1), cost.psutil_wall_ms.fmt(1)],
            [
                "CPU us per process",
                f"{cost.sampler_ms.median * 1e3 / cost.processes:.1f}",
                f"{cost.psutil_ms.median * 1e3 / cost.processes:.1f}",
            ],
            [
                "first (cold) sweep CPU ms",
                f"{cost.sampler_cold_ms:.1f}",
                f"{cost.psutil_cold_ms:.1f}",
            ],
        ],
    )
    print(
        f"\nratio Sampler CPU / psutil CPU per sweep: {ratio:.2f} "
        f"(psutil costs {1 / ratio:.1f}x the Sampler)"
    )
    print()
    report_target(
        "idle CPU under 1%",
        idle.cpu_pct < 1.0,
        f"{idle.cpu_pct:.2f}% of one core over {idle.window_s:.0f} s",
    )
    report_target(
        f"RSS under 150 MB with {loaded.live} live processes",
        loaded.rss.high < 150e6,
        f"VmRSS {loaded.rss.median / 1e6:.1f} MB median, {loaded.rss.high / 1e6:.1f} MB max",
    )


def main_body(args: argparse.Namespace) -> None:
    if args.quick:
        args.idle_window, args.sweeps, args.wait_quiet = 15.0, 5, min(args.wait_quiet, 30.0)
    require()
    if not Path(SLEEP).exists():
        raise BenchError(f"{SLEEP} is missing")
    print(
        f"(a) idle window {args.idle_window:g} s; (b) {args.live} live processes; "
        f"(c) {args.sweeps} sweeps each; settle {args.settle:g} s"
    )
    with workdir(args.keep) as wd:
        idle = measure_idle(args, wd)
        print(f"(a) done: {idle.cpu_pct:.2f}% of one core", flush=True)
        with live_processes(args.live):
            loaded = measure_loaded(args, wd)
            print(f"(b) done: VmRSS {fmt_mib(loaded.rss.median)}", flush=True)
            cost = measure_sweeps(args)
        report(idle, loaded, cost, args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.footprint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--idle-window", type=float, default=60.0, help="(a) seconds measured")
    p.add_argument(
        "--idle-step", type=float, default=5.0, help="(a) CPU is also reported per slice of S s"
    )
    p.add_argument("--live", type=int, default=1000, help="(b, c) extra live processes")
    p.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds after the agent is ready before measuring",
    )
    p.add_argument("--rss-samples", type=int, default=5, help="(b) RSS readings, 1 s apart")
    p.add_argument("--sweeps", type=int, default=10, help="(c) sweeps measured per tool")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=600.0,
        metavar="S",
        help="(a) wait up to S seconds for a quiet host first (0: do not wait)",
    )
    p.add_argument(
        "--quiet-pct",
        type=float,
        default=5.0,
        help="(a) quiet means at most this %% of all CPUs busy over 5 s",
    )
    p.add_argument("--quick", action="store_true", help="(a) over 15 s, (c) 5 sweeps")
    p.add_argument("--keep", action="store_true", help="keep the agent logs")
    return p


def main() -> int:
    return run_bench("bench.footprint", parser(), main_body)


if __name__ == "__main__":
    raise SystemExit(main())
