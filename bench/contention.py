"""What CPU used beside a workload costs it on this machine, whoever uses it.

Context for ``bench.slowdown``: the same two workloads (``spawner`` fork+exec
loop, ``forker`` bare fork storm) run alone and beside a synthetic CPU user,
in alternating order:

- ``busy idle-class``: a loop that never sleeps, under ``SCHED_IDLE``, the
  lowest priority Linux has (it runs only on an otherwise idle CPU);
- ``busy nice 0``: the same loop at normal priority;
- ``25% duty idle-class``: busy 5 ms, asleep 15 ms, under ``SCHED_IDLE``.

On a host with spare physical cores the idle-class loop costs a workload
almost nothing. When it costs as much as the normal-priority loop, the CPUs
contend below the scheduler (vCPUs sharing a core, an oversubscribed
hypervisor), and no priority setting can keep an agent's CPU from slowing a
workload: only using less CPU does. The hog's own CPU seconds are reported,
so slowdown per CPU-second used beside the workload can be compared with the
agent's (``bench.slowdown`` prints the agent's CPU).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.common import (
    BenchError,
    Spread,
    bench_parser,
    cpu_seconds,
    print_table,
    require,
    run_bench,
    run_spawner,
    spread,
    workload,
)

# (label, SCHED_IDLE?, busy ms per 20 ms period; 20 = never sleeps)
_HOGS: tuple[tuple[str, bool, int], ...] = (
    ("busy idle-class", True, 20),
    ("busy nice 0", False, 20),
    ("25% duty idle-class", True, 5),
)

_HOG_CODE = """
import os, sys, time
if sys.argv[1] == "idle":
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
busy = int(sys.argv[2]) / 1000
while True:
    end = time.monotonic() + busy
    while time.monotonic() < end:
        pass
    if busy < 0.02:
        time.sleep(0.02 - busy)
"""


@dataclass(frozen=True, slots=True)
class Run:
    hog: str | None
    spawner_s: float
    forker_s: float
    hog_cpu_s: float


def _workloads(args: argparse.Namespace, tag: str) -> tuple[float, float]:
    spawned = run_spawner(workload("spawner"), args.spawn_count, 2, workload("child"), tag)
    done = subprocess.run(
        [str(workload("forker")), str(args.fork_count)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"forker failed ({done.returncode}): {done.stderr.strip()}")
    return spawned.wall_s, float(done.stdout.strip())


def _one(args: argparse.Namespace, i: int, hog: tuple[str, bool, int] | None) -> Run:
    time.sleep(args.settle)
    if hog is None:
        spawner_s, forker_s = _workloads(args, f"cont{i}")
        return Run(None, spawner_s, forker_s, 0.0)
    label, idle, busy_ms = hog
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOG_CODE, "idle" if idle else "normal", str(busy_ms)]
    )
    try:
        time.sleep(0.3)  # running, and its class set
        cpu0 = cpu_seconds(proc.pid)
        spawner_s, forker_s = _workloads(args, f"cont{i}")
        hog_cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return Run(label, spawner_s, forker_s, hog_cpu)


def body(args: argparse.Namespace) -> None:
    require()
    runs: list[Run] = []
    for i in range(args.runs):
        order: list[tuple[str, bool, int] | None] = [None, *_HOGS]
        if i % 2:
            order.reverse()  # a drift of the machine favours no side
        for hog in order:
            runs.append(_one(args, len(runs), hog))
            r = runs[-1]
            print(
                f"run {len(runs)} ({r.hog or 'alone'}): spawner {r.spawner_s:.3f} s, "
                f"forker {r.forker_s:.3f} s, hog CPU {r.hog_cpu_s:.2f} s",
                flush=True,
            )

    def of(label: str | None, field: str) -> Spread:
        return spread([getattr(r, field) for r in runs if r.hog == label])

    alone_spawn, alone_fork = of(None, "spawner_s"), of(None, "forker_s")
    rows = [["alone", alone_spawn.fmt(3), "-", alone_fork.fmt(3), "-", "-"]]
    for label, _idle, _busy in _HOGS:
        s, f, cpu = of(label, "spawner_s"), of(label, "forker_s"), of(label, "hog_cpu_s")
        rows.append(
            [
                label,
                s.fmt(3),
                f"{(s.median / alone_spawn.median - 1) * 100:+.1f}%",
                f.fmt(3),
                f"{(f.median / alone_fork.median - 1) * 100:+.1f}%",
                cpu.fmt(2),
            ]
        )
    print_table(
        f"median (min-max) of {args.runs} runs each; spawner {args.spawn_count} children "
        f"with 2 workers, forker {args.fork_count}",
        [
            "beside the workloads",
            "spawner wall s",
            "slowdown",
            "forker elapsed s",
            "slowdown",
            "hog CPU s (both)",
        ],
        rows,
    )


def parser() -> argparse.ArgumentParser:
    p = bench_parser("bench.contention", __doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--spawn-count", type=int, default=3000)
    p.add_argument("--fork-count", type=int, default=20000)
    p.add_argument("--settle", type=float, default=1.0)
    return p


def main() -> int:
    return run_bench("bench.contention", parser(), body)


if __name__ == "__main__":
    raise SystemExit(main())
