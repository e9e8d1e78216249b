"""Short-lived process coverage: the agent vs a psutil poller sweeping every second.

``spawner COUNT 2 child TAG`` runs COUNT short-lived children (about 2,000
per second here) while ``otel-linnix record --no-bootstrap`` and the poller
(``python -m bench.peers.psutil_poller``, its own process, one
``psutil.process_iter`` sweep per ``--interval``) both watch. A child
counts as reported by a tool when the tool has a process with the child's
pid whose argv carries the run's TAG and the child's index; the spawner's
output is the truth.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    HostCpu,
    ManagedProcess,
    SpawnRound,
    Spread,
    add_side_by_side_args,
    agent_status,
    bench_parser,
    fraction,
    print_table,
    read_recording,
    report_target,
    require,
    run_bench,
    run_spawner,
    spread,
    start_agent,
    workdir,
    workload,
)
from otel_linnix.events import EventKind


@dataclass(frozen=True, slots=True)
class RunResult:
    children: int
    wall_s: float
    agent_seen: int
    poller_seen: int
    agent_lost: int | None
    agent_cpu_s: float
    poller_cpu_s: float
    background_pct: float  # host CPU busy before the workload


def _truth(spawned: SpawnRound) -> set[tuple[int, str, str]]:
    return {(c.pid, spawned.tag, str(c.index)) for c in spawned.children}


def _argv_key(pid: int, argv: list[str] | tuple[str, ...] | None) -> tuple[int, str, str] | None:
    if argv is None or len(argv) < 3:
        return None
    return (pid, argv[1], argv[2])


def agent_reported(recording: Path) -> set[tuple[int, str, str]]:
    events, _bad = read_recording(recording)
    keys = (_argv_key(ev.pid, ev.argv) for ev in events if ev.kind is EventKind.EXEC)
    return {k for k in keys if k is not None}


def poller_reported(output: Path) -> set[tuple[int, str, str]]:
    found = set()
    for line in output.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        key = _argv_key(obj["pid"], obj["cmdline"])
        if key is not None:
            found.add(key)
    return found


def one_run(args: argparse.Namespace, wd: Path, run: int) -> RunResult:
    spawner, child = workload("spawner"), workload("child")
    rec, polled = wd / f"agent-{run}.jsonl", wd / f"poller-{run}.jsonl"
    poller_argv = [
        sys.executable,
        "-m",
        "bench.peers.psutil_poller",
        "--out",
        str(polled),
        "--interval",
        str(args.interval),
    ]
    with (
        ManagedProcess(
            "psutil poller", poller_argv, wd / f"poller-{run}.log", ready="ready"
        ) as poller,
        start_agent(
            "record", wd / f"agent-{run}.log", "--out", str(rec), "--no-bootstrap"
        ) as agent,
    ):
        before = HostCpu.now()
        time.sleep(args.settle)
        background = HostCpu.now().busy_pct_since(before)
        agent0, poller0 = agent.cpu_s(), poller.cpu_s()
        spawned = run_spawner(spawner, args.count, args.workers, child, f"cov{run}")
        # Give the poller a full sweep after the last child, to be fair to it.
        time.sleep(max(args.grace, args.interval * 1.5))
        agent_end = agent.stop(signal.SIGINT, 60.0)
        poller_end = poller.stop(signal.SIGINT, 30.0)
    truth = _truth(spawned)
    lost = agent_status(agent_end.log).get("lost")
    return RunResult(
        children=len(truth),
        wall_s=spawned.wall_s,
        agent_seen=len(truth & agent_reported(rec)),
        poller_seen=len(truth & poller_reported(polled)),
        agent_lost=int(lost) if lost is not None else None,
        agent_cpu_s=agent_end.cpu_s - agent0,
        poller_cpu_s=poller_end.cpu_s - poller0,
        background_pct=background,
    )


def report(results: list[RunResult], args: argparse.Namespace) -> None:
    print_table(
        "per run",
        [
            "run",
            "children",
            "spawn s",
            "agent reported",
            "poller reported",
            "agent lost",
            "agent CPU s",
            "poller CPU s",
            "host busy % before",
        ],
        [
            [
                i,
                r.children,
                f"{r.wall_s:.2f}",
                fraction(r.agent_seen, r.children),
                fraction(r.poller_seen, r.children),
                r.agent_lost,
                f"{r.agent_cpu_s:.2f}",
                f"{r.poller_cpu_s:.2f}",
                f"{r.background_pct:.1f}",
            ]
            for i, r in enumerate(results, 1)
        ],
    )
    total = sum(r.children for r in results)
    agent = sum(r.agent_seen for r in results)
    poller = sum(r.poller_seen for r in results)

    def cov(get: str) -> Spread:
        return spread([getattr(r, get) * 100.0 / r.children for r in results])

    print_table(
        f"summary over {len(results)} run(s): fraction of the children reported "
        "(by pid and argv TAG+index); median (min-max) of runs",
        ["", "agent (otel-linnix record)", f"psutil poller ({args.interval:g} s)"],
        [
            ["reported, all runs", fraction(agent, total), fraction(poller, total)],
            ["reported %, per run", cov("agent_seen").fmt(2), cov("poller_seen").fmt(2)],
            [
                "CPU s, workload start to exit",
                spread([r.agent_cpu_s for r in results]).fmt(2),
                spread([r.poller_cpu_s for r in results]).fmt(2),
            ],
        ],
    )
    print()
    report_target(
        "agent reports 100% of the children",
        agent == total,
        f"{fraction(agent, total)}; the poller {fraction(poller, total)}",
    )


def main_body(args: argparse.Namespace) -> None:
    if args.quick:
        args.count, args.runs = 1000, 1
    require()
    print(
        f"{args.count} short-lived children per run ({args.workers} spawner workers), "
        f"{args.runs} run(s); poller interval {args.interval:g} s"
    )
    results = []
    with workdir(args.keep) as wd:
        for run in range(args.runs):
            results.append(one_run(args, wd, run))
            r = results[-1]
            print(
                f"run {run + 1}: {r.children} children in {r.wall_s:.2f} s: agent "
                f"{r.agent_seen}, poller {r.poller_seen}",
                flush=True,
            )
        report(results, args)


def parser() -> argparse.ArgumentParser:
    p = bench_parser("bench.coverage", __doc__)
    p.add_argument("--count", type=int, default=3000, help="short-lived children per run")
    p.add_argument("--workers", type=int, default=2, help="spawner workers")
    p.add_argument("--runs", type=int, default=3, help="runs")
    p.add_argument("--interval", type=float, default=1.0, help="poller sweep interval, s")
    add_side_by_side_args(p)
    p.add_argument("--quick", action="store_true", help="one run of 1,000 children")
    return p


def main() -> int:
    return run_bench("bench.coverage", parser(), main_body)


if __name__ == "__main__":
    raise SystemExit(main())
