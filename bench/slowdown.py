"""Workload slowdown with the agent running (``otel-linnix run``, default config) vs not.

Two workloads, each timed in every run:
- fork+exec loop: ``spawner 3000 2 child`` (wall time of the whole spawner);
- bare fork storm: ``forker 20000`` (the elapsed seconds it prints).

Runs alternate without/with the agent, and the order flips every pair
(off,on / on,off ...) so a drift of the machine does not favour one side.
For a run with the agent, a fresh agent is started, given ``--settle``
seconds to finish its start-up walk and first sampler sweeps, and stopped
afterwards; a run without it waits the same settle time. Slowdown is the
median with the agent over the median without, minus one; it is reported
over all runs and again over the quiet pairs only (both runs of the pair
overlapped little other work), because other sessions share this machine.

Besides wall time, each workload's CPU (user+sys of it and its descendants,
from wait4 rusage) is reported: the agent's BPF programs run in the
workload's context, so their cost shows there, while the agent's own
user-space CPU competes for the two cores and shows only in wall time. The
CPU the rest of the host used during each run is printed too: this machine
is shared, and a run that overlapped other work is visible.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.agent_cost import (
    ProgCounters,
    ProgRuns,
    bpf_stats_enabled,
    prog_delta,
    thread_cpu_s,
    thread_delta,
)
from bench.common import (
    BenchError,
    HostCpu,
    Spread,
    agent_status,
    children_cpu_s,
    print_table,
    report_target,
    require,
    run_bench,
    run_spawner,
    spread,
    start_agent,
    workdir,
    workload,
)


@dataclass(frozen=True, slots=True)
class Sample:
    with_agent: bool
    spawner_s: float  # wall
    spawner_cpu_s: float  # user+sys of the spawner and all its descendants
    forker_s: float  # the elapsed time it prints
    forker_cpu_s: float
    agent_cpu_s: float | None  # over both workloads
    agent_lost: int | None
    # CPU the rest of the host used during the workloads (busy time minus the
    # workloads and the agent): the noise this run had to share the CPUs with.
    other_cpu_s: float
    # With the agent: what its BPF programs ran during each workload, and its
    # CPU per thread over both.
    bpf_spawner: list[ProgRuns] | None = None
    bpf_forker: list[ProgRuns] | None = None
    threads: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Binaries:
    spawner: Path
    child: Path
    forker: Path


def run_workloads(
    args: argparse.Namespace, b: Binaries, tag: str, between: Callable[[], object] = lambda: None
) -> tuple[float, float, float, float]:
    """(spawner wall s, spawner CPU s, forker elapsed s, forker CPU s); ``between``
    runs after the spawner and before the forker."""
    spawned = run_spawner(b.spawner, args.spawn_count, args.workers, b.child, tag)
    between()
    cpu0 = children_cpu_s()
    done = subprocess.run(
        [str(b.forker), str(args.fork_count)], capture_output=True, text=True, check=False
    )
    forker_cpu_s = children_cpu_s() - cpu0
    if done.returncode != 0:
        raise BenchError(f"forker failed ({done.returncode}): {done.stderr.strip()}")
    return spawned.wall_s, spawned.cpu_s, float(done.stdout.strip()), forker_cpu_s


def one_sample(args: argparse.Namespace, b: Binaries, wd: Path, i: int, with_agent: bool) -> Sample:
    tag = f"slow{i}{'a' if with_agent else 'n'}"
    if not with_agent:
        time.sleep(args.settle)
        host0 = HostCpu.now()
        sw, sc, fw, fc = run_workloads(args, b, tag)
        other = HostCpu.now().busy_s_since(host0) - sc - fc
        return Sample(False, sw, sc, fw, fc, None, None, other)
    extra = ("--config", str(args.agent_config)) if args.agent_config else ()
    with start_agent("run", wd / f"agent-{i}.log", *extra) as agent:
        time.sleep(args.settle)
        progs = ProgCounters(agent.pid)
        readings = [progs.read()]
        host0, cpu0, threads0 = HostCpu.now(), agent.cpu_s(), thread_cpu_s(agent.pid)
        sw, sc, fw, fc = run_workloads(args, b, tag, lambda: readings.append(progs.read()))
        readings.append(progs.read())
        cpu1, threads1 = agent.cpu_s(), thread_cpu_s(agent.pid)
        other = HostCpu.now().busy_s_since(host0) - sc - fc - (cpu1 - cpu0)
        end = agent.stop(signal.SIGINT, 30.0)
    lost = agent_status(end.log).get("lost")
    lost_n = int(lost) if lost is not None else None
    return Sample(
        True,
        sw,
        sc,
        fw,
        fc,
        cpu1 - cpu0,
        lost_n,
        other,
        prog_delta(readings[0], readings[1]),
        prog_delta(readings[1], readings[2]),
        thread_delta(threads0, threads1),
    )


def _slowdown(on: Spread, off: Spread) -> float:
    return (on.median / off.median - 1.0) * 100.0


# (label, Sample field, target % or None)
_MEASURES = (
    ("fork+exec loop, wall", "spawner_s", 5.0),
    ("fork storm, elapsed", "forker_s", 10.0),
    ("fork+exec loop, workload CPU", "spawner_cpu_s", None),
    ("fork storm, workload CPU", "forker_cpu_s", None),
)


def report(samples: list[Sample], args: argparse.Namespace) -> None:
    off = [s for s in samples if not s.with_agent]
    on = [s for s in samples if s.with_agent]
    rows = [
        [
            i // 2 + 1,
            "with" if s.with_agent else "without",
            f"{s.spawner_s:.3f}",
            f"{s.spawner_cpu_s:.2f}",
            f"{s.forker_s:.3f}",
            f"{s.forker_cpu_s:.2f}",
            f"{s.agent_cpu_s:.2f}" if s.agent_cpu_s is not None else "-",
            s.agent_lost if s.agent_lost is not None else "-",
            f"{s.other_cpu_s:.2f}",
        ]
        for i, s in enumerate(samples)
    ]
    print_table(
        "per run, in the order run (CPU = user+sys seconds)",
        [
            "pair",
            "agent",
            "spawner wall s",
            "spawner CPU",
            "forker elapsed s",
            "forker CPU",
            "agent CPU",
            "lost",
            "other CPU on host",
        ],
        rows,
    )

    results = _summary(off, on)
    _print_summary(
        f"summary, all runs: median (min-max) of {len(off)} runs each; spawner "
        f"{args.spawn_count} children with {args.workers} workers, forker {args.fork_count}",
        results,
    )
    quiet = [
        (n, w)
        for n, w in zip(off, on, strict=False)
        if max(n.other_cpu_s, w.other_cpu_s) <= args.quiet_cpu
    ]
    quiet_results = _summary([n for n, _ in quiet], [w for _, w in quiet]) if quiet else []
    if quiet:
        _print_summary(
            f"summary, quiet pairs only ({len(quiet)} of {len(off)} pairs in which the rest of "
            f"the host used at most {args.quiet_cpu:g} CPU s during both runs)",
            quiet_results,
        )
    cpu = spread([s.agent_cpu_s for s in on if s.agent_cpu_s is not None])
    lost = sum(s.agent_lost or 0 for s in on)
    other = spread([s.other_cpu_s for s in samples])
    print(f"\nagent CPU over both workloads: {cpu.fmt(2, 's')}; events lost: {lost}")
    print(
        f"other CPU on the host during a run (busy time minus workloads and agent): "
        f"{other.fmt(2, 's')}"
    )
    print(
        "workload CPU includes the in-kernel cost of the agent's BPF programs, which run "
        "in the workload's context"
    )
    report_kernel(on)
    report_threads(on, args)
    print()
    for label, res in (("all runs", results), (f"{len(quiet)} quiet pairs", quiet_results)):
        for name, a, b, slow, _p, target in res:
            if target is None:
                continue
            report_target(
                f"{name.split(',')[0]} slowdown at most {target:g}% ({label})",
                slow <= target,
                f"{slow:+.1f}%: {b.median:.3f} s with vs {a.median:.3f} s without; "
                f"spread without the agent {a.spread_pct:.0f}% of its median",
            )


def report_kernel(on: list[Sample]) -> None:
    """The agent's BPF programs during each workload: the part of the slowdown
    that no user-space work can remove (kernel.bpf_stats_enabled counters)."""
    for label, field, cpu_field in (
        ("fork+exec loop", "bpf_spawner", "spawner_cpu_s"),
        ("fork storm", "bpf_forker", "forker_cpu_s"),
    ):
        runs = [(getattr(s, field), getattr(s, cpu_field)) for s in on]
        runs = [(progs, cpu) for progs, cpu in runs if progs is not None]
        if not runs:
            continue
        names = sorted({p.name for progs, _ in runs for p in progs})
        rows: list[list[object]] = []
        for name in names:
            mine = [p for progs, _ in runs for p in progs if p.name == name]
            rows.append(
                [
                    name,
                    f"{spread([p.runs for p in mine]).median:,.0f}",
                    f"{spread([p.ns / p.runs for p in mine if p.runs]).median:,.0f}"
                    if any(p.runs for p in mine)
                    else "-",
                    f"{spread([p.ns / 1e6 for p in mine]).median:.1f}",
                ]
            )
        totals = [sum(p.ns for p in progs) / 1e9 for progs, _ in runs]
        share = spread([t / cpu * 100.0 for t, (_, cpu) in zip(totals, runs, strict=True)])
        rows.append(["all programs", "", "", f"{spread(totals).median * 1e3:.1f}"])
        print_table(
            f"in-kernel cost of the agent's BPF programs during the {label} "
            f"(medians of {len(runs)} runs)",
            ["program", "runs", "ns per run", "total ms"],
            rows,
        )
        print(f"in-kernel share of the {label}'s CPU: {share.fmt(1, '%')}")


def report_threads(on: list[Sample], args: argparse.Namespace) -> None:
    """The agent's user-space CPU per thread over both workloads."""
    runs = [s.threads for s in on if s.threads is not None]
    if not runs:
        return
    events = args.spawn_count * 3 + args.fork_count * 2  # fork+exec+exit, fork+exit
    names = sorted({n for t in runs for n in t}, key=lambda n: -sum(t.get(n, 0.0) for t in runs))
    rows = []
    for name in names:
        cpu = spread([t.get(name, 0.0) for t in runs])
        if cpu.median < 0.005:
            continue
        rows.append([name, cpu.fmt(2), f"{cpu.median / events * 1e6:.1f}"])
    print_table(
        f"agent CPU per thread over both workloads (about {events:,} events; "
        f"medians of {len(runs)} runs)",
        ["thread", "CPU s", "us per event"],
        rows,
    )


Result = tuple[str, Spread, Spread, float, Spread, float | None]


def _summary(off: list[Sample], on: list[Sample]) -> list[Result]:
    results: list[Result] = []
    for name, field, target in _MEASURES:
        a = spread([getattr(s, field) for s in off])
        b = spread([getattr(s, field) for s in on])
        # Slowdown within each adjacent with/without pair: shows how much of
        # the difference of the medians is noise.
        paired = spread(
            [
                (getattr(w, field) / getattr(n, field) - 1.0) * 100.0
                for n, w in zip(off, on, strict=False)
            ]
        )
        results.append((name, a, b, _slowdown(b, a), paired, target))
    return results


def _print_summary(title: str, results: list[Result]) -> None:
    print_table(
        title,
        ["measure (s)", "without agent", "with agent", "slowdown", "per pair %", "spread without"],
        [
            [name, a.fmt(3), b.fmt(3), f"{slow:+.1f}%", paired.fmt(1), f"{a.spread_pct:.0f}%"]
            for name, a, b, slow, paired, _t in results
        ],
    )


def main_body(args: argparse.Namespace) -> None:
    if args.quick:
        args.runs, args.spawn_count, args.fork_count = 2, 1000, 5000
    require()
    b = Binaries(workload("spawner"), workload("child"), workload("forker"))
    print(f"{args.runs} runs each, alternating; settle {args.settle:g} s before each run")
    samples: list[Sample] = []
    with workdir(args.keep) as wd, bpf_stats_enabled():
        for i in range(args.runs):
            order = (False, True) if i % 2 == 0 else (True, False)
            for with_agent in order:
                samples.append(one_sample(args, b, wd, len(samples), with_agent))
                s = samples[-1]
                print(
                    f"run {len(samples)} ({'with' if with_agent else 'without'} agent): "
                    f"spawner {s.spawner_s:.3f} s, forker {s.forker_s:.3f} s",
                    flush=True,
                )
        report(samples, args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.slowdown",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=5, help="runs with and runs without the agent")
    p.add_argument("--spawn-count", type=int, default=3000, help="spawner children per run")
    p.add_argument("--workers", type=int, default=2, help="spawner workers")
    p.add_argument("--fork-count", type=int, default=20000, help="forker children per run")
    p.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds of quiet before each run (after the agent is ready)",
    )
    p.add_argument(
        "--quiet-cpu",
        type=float,
        default=0.6,
        help="a pair is quiet when the rest of the host used at most this many CPU seconds "
        "during each of its runs (reported separately)",
    )
    p.add_argument(
        "--agent-config",
        type=Path,
        default=None,
        help="linnix.toml for the agent (default: its embedded defaults), e.g. with "
        "[rules] enabled = false to see what the rules engine costs",
    )
    p.add_argument("--quick", action="store_true", help="2 runs each, smaller workloads")
    p.add_argument("--keep", action="store_true", help="keep the agent logs")
    return p


def main() -> int:
    return run_bench("bench.slowdown", parser(), main_body)


if __name__ == "__main__":
    raise SystemExit(main())
