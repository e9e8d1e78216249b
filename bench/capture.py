"""Capture at this machine's full spawn rate: the agent and a bpftrace peer side by side.

Two spawner workers fork+exec+reap short-lived children for ``--duration``
seconds (the spawner is run in rounds of ``--batch`` children, each with its
own argv tag), while ``otel-linnix record --no-bootstrap`` and
``bpftrace bench/peers/lifecycle.bt`` both watch. The spawner's output is
the truth: the pid, index, argv and wait status of every child.

Each tool's exec and exit events are matched to children per spawner
worker: the events whose parent is that worker (the round is found from the
event's timestamp: the agent's ts_ns is CLOCK_BOOTTIME, bpftrace's nsecs
CLOCK_MONOTONIC, and each round's interval is taken on both clocks), in
time order, are aligned with the worker's children in the order it forked
them, pid against pid. A worker runs one child at a time, so this holds
even when a pid comes back within a round (pid_max is 32768, and other work
on the host may reset the next pid). Execs count when the filename is the
child binary, exits when the comm is the child's; the agent's argv, which
carries the child's index, checks the alignment independently.

CPU of each tool is utime+stime of its process: over the workload window
from /proc/<pid>/stat, and from the workload's start to the tool's exit
(wait4 rusage minus the start reading), which includes the final drain and
writing out what it saw.
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.common import (
    HostCpu,
    ManagedProcess,
    SpawnedChild,
    SpawnRound,
    Spread,
    add_side_by_side_args,
    agent_status,
    bench_parser,
    fraction,
    host_forks,
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
from otel_linnix.events import EventKind, ProcessEvent

PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "lifecycle.bt"
_LOST = re.compile(r"Lost (\d+) events")
_COMM_MAX = 15  # TASK_COMM_LEN - 1
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ExecSeen:
    exe: str
    argv: tuple[str, ...] | None
    argv_truncated: bool


@dataclass(frozen=True, slots=True)
class ExitSeen:
    exit_code: int | None
    exit_signal: int | None
    core_dumped: bool

    @classmethod
    def from_wait_status(cls, status: int) -> ExitSeen:
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status), os.WCOREDUMP(status))
        return cls(os.WEXITSTATUS(status), None, False)


# (round index, parent pid) -> [(timestamp, pid, what the tool saw)]
Observed = dict[tuple[int, int], list[tuple[int, int, T]]]
Seen = tuple[Observed[ExecSeen], Observed[ExitSeen]]
# An observed pid that matches none of the next this many children is not one of them.
_LOOKAHEAD = 64


@dataclass(frozen=True, slots=True)
class ToolScore:
    execs: int
    exits: int
    exit_right: int
    argv_right: int | None  # None: the tool does not report argv
    exe_right: int
    lost: int | None  # None: not reported
    cpu_window_s: float
    cpu_to_exit_s: float


@dataclass(frozen=True, slots=True)
class RunResult:
    children: int
    rounds: int
    wall_s: float
    host_forks: int
    agent: ToolScore
    peer: ToolScore
    agent_sink_drops: int
    background_pct: float  # host CPU busy while both tools settled, before the workload


class _RoundFinder:
    """Which round a kernel timestamp falls into, on one clock."""

    def __init__(self, rounds: Sequence[SpawnRound], *, monotonic: bool) -> None:
        self._spans = [
            (r.mono_start_ns, r.mono_end_ns) if monotonic else (r.boot_start_ns, r.boot_end_ns)
            for r in rounds
        ]
        self._starts = [s for s, _ in self._spans]

    def __call__(self, ts_ns: int) -> int | None:
        i = bisect.bisect_right(self._starts, ts_ns) - 1
        if i >= 0 and ts_ns <= self._spans[i][1]:
            return i
        return None


def _add(seen: Observed[T], key: tuple[int, int], ts_ns: int, pid: int, what: T) -> None:
    seen.setdefault(key, []).append((ts_ns, pid, what))


def agent_seen(events: Iterable[ProcessEvent], rounds: Sequence[SpawnRound], child: Path) -> Seen:
    find = _RoundFinder(rounds, monotonic=False)
    comm = child.name[:_COMM_MAX]
    execs: Observed[ExecSeen] = {}
    exits: Observed[ExitSeen] = {}
    for ev in events:
        r = find(ev.ts_ns)
        if r is None:
            continue
        if ev.kind is EventKind.EXEC and ev.exe == str(child):
            seen = ExecSeen(ev.exe, ev.argv, ev.argv_truncated)
            _add(execs, (r, ev.ppid), ev.ts_ns, ev.pid, seen)
        elif ev.kind is EventKind.EXIT and ev.comm == comm:
            done = ExitSeen(ev.exit_code, ev.exit_signal, ev.core_dumped)
            _add(exits, (r, ev.ppid), ev.ts_ns, ev.pid, done)
    return execs, exits


def peer_seen(output: str, rounds: Sequence[SpawnRound], child: Path) -> Seen:
    find = _RoundFinder(rounds, monotonic=True)
    comm = child.name[:_COMM_MAX]
    execs: Observed[ExecSeen] = {}
    exits: Observed[ExitSeen] = {}
    for line in output.splitlines():
        parts = line.split(" ", 5)
        if len(parts) < 5 or parts[0] not in ("E", "X"):
            continue
        ts_ns = int(parts[1])
        r = find(ts_ns)
        if r is None:
            continue
        pid, key = int(parts[2]), (r, int(parts[3]))
        if parts[0] == "E" and parts[4] == str(child):
            _add(execs, key, ts_ns, pid, ExecSeen(parts[4], None, False))
        elif parts[0] == "X" and len(parts) == 6 and parts[5] == comm:
            _add(exits, key, ts_ns, pid, ExitSeen.from_wait_status(int(parts[4])))
    return execs, exits


def align(children: Sequence[SpawnedChild], observed: list[tuple[int, int, T]]) -> list[T | None]:
    """What was observed of each child of one worker (None: missed).

    ``children`` in fork order, ``observed`` in any order (sorted here by
    time). An observation whose pid is none of the next children's is
    skipped as not theirs.
    """
    obs = sorted(observed, key=lambda o: o[0])
    out: list[T | None] = []
    j = 0
    for i, c in enumerate(children):
        upcoming = {d.pid for d in children[i : i + _LOOKAHEAD]}
        while j < len(obs) and obs[j][1] not in upcoming:
            j += 1
        if j < len(obs) and obs[j][1] == c.pid:
            out.append(obs[j][2])
            j += 1
        else:
            out.append(None)
    return out


def score(
    rounds: Sequence[SpawnRound],
    seen: Seen,
    child: Path,
    *,
    has_argv: bool,
    lost: int | None,
    cpu_window_s: float,
    cpu_to_exit_s: float,
) -> ToolScore:
    execs, exits = seen
    n_exec = n_exit = exit_right = argv_right = exe_right = 0
    for r, rnd in enumerate(rounds):
        for worker in sorted({c.ppid for c in rnd.children}):
            kids = sorted((c for c in rnd.children if c.ppid == worker), key=lambda c: c.index)
            got_exec = align(kids, execs.get((r, worker), []))
            got_exit = align(kids, exits.get((r, worker), []))
            for c, ex, xt in zip(kids, got_exec, got_exit, strict=True):
                if ex is not None:
                    n_exec += 1
                    exe_right += ex.exe == str(child)
                    want = (str(child), rnd.tag, str(c.index), c.outcome)
                    argv_right += ex.argv == want and not ex.argv_truncated
                if xt is not None:
                    n_exit += 1
                    exit_right += xt == ExitSeen(c.exit_code, c.exit_signal, c.core_dumped)
    return ToolScore(
        n_exec,
        n_exit,
        exit_right,
        argv_right if has_argv else None,
        exe_right,
        lost,
        cpu_window_s,
        cpu_to_exit_s,
    )


def _filtered_recording(path: Path, needle: str) -> list[ProcessEvent]:
    """The recording's events whose line mentions the child (skips decoding the rest)."""
    with open(path, encoding="utf-8") as fh:
        kept = "".join(line for line in fh if needle in line)
    tmp = path.with_suffix(".child.jsonl")
    tmp.write_text(kept, encoding="utf-8")
    try:
        events, _bad = read_recording(tmp)
    finally:
        tmp.unlink()
    return events


def one_run(args: argparse.Namespace, wd: Path, run: int, spawner: Path, child: Path) -> RunResult:
    rec = wd / f"agent-{run}.jsonl"
    with (
        ManagedProcess(
            "bpftrace",
            ["bpftrace", str(PEER_SCRIPT)],
            wd / f"bpftrace-{run}.log",
            ready="Attaching",
        ) as peer,
        start_agent(
            "record", wd / f"agent-{run}.log", "--out", str(rec), "--no-bootstrap"
        ) as agent,
    ):
        before = HostCpu.now()
        time.sleep(args.settle)
        background = HostCpu.now().busy_pct_since(before)
        forks0 = host_forks()
        agent0, peer0 = agent.cpu_s(), peer.cpu_s()
        started = time.monotonic()
        rounds: list[SpawnRound] = []
        while time.monotonic() - started < args.duration:
            tag = f"cap{run}r{len(rounds)}"
            rounds.append(run_spawner(spawner, args.batch, args.workers, child, tag))
        wall_s = time.monotonic() - started
        agent1, peer1 = agent.cpu_s(), peer.cpu_s()
        forks = host_forks() - forks0
        time.sleep(args.grace)
        agent_end = agent.stop(signal.SIGINT, 60.0)
        peer_end = peer.stop(signal.SIGINT, 60.0)
    status = agent_status(agent_end.log)
    needle = child.name[:_COMM_MAX]
    agent_score = score(
        rounds,
        agent_seen(_filtered_recording(rec, needle), rounds, child),
        child,
        has_argv=True,
        lost=int(status["lost"]) if "lost" in status else None,
        cpu_window_s=agent1 - agent0,
        cpu_to_exit_s=agent_end.cpu_s - agent0,
    )
    peer_lost = sum(int(m.group(1)) for m in _LOST.finditer(peer_end.log))
    peer_score = score(
        rounds,
        peer_seen(peer_end.log, rounds, child),
        child,
        has_argv=False,
        lost=peer_lost,
        cpu_window_s=peer1 - peer0,
        cpu_to_exit_s=peer_end.cpu_s - peer0,
    )
    if not args.keep:
        rec.unlink()
    return RunResult(
        sum(len(r.children) for r in rounds),
        len(rounds),
        wall_s,
        forks,
        agent_score,
        peer_score,
        int(status.get("sink_drops", "0")),
        background,
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def report(results: Sequence[RunResult]) -> None:
    rows = []
    for i, r in enumerate(results, 1):
        rows.append(
            [
                i,
                r.children,
                f"{r.children / r.wall_s:.0f}",
                f"{r.agent.execs}/{r.agent.exits}",
                f"{r.peer.execs}/{r.peer.exits}",
                f"{r.agent.lost}/{r.agent_sink_drops}",
                r.peer.lost,
                r.agent.exit_right,
                r.peer.exit_right,
                r.agent.argv_right,
                f"{r.agent.cpu_to_exit_s:.2f}",
                f"{r.peer.cpu_to_exit_s:.2f}",
                f"{_ratio(r.agent.cpu_to_exit_s, r.peer.cpu_to_exit_s):.2f}",
            ]
        )
    print_table(
        "per run (exec/exit = events seen for the spawned children)",
        [
            "run",
            "children",
            "per s",
            "agent exec/exit",
            "bpftrace exec/exit",
            "agent lost/drops",
            "bpftrace lost",
            "agent exit ok",
            "bpftrace exit ok",
            "agent argv ok",
            "agent CPU s",
            "bpftrace CPU s",
            "ratio",
        ],
        rows,
    )

    total = sum(r.children for r in results)

    def tot(get: str, tool: str) -> int:
        return sum(getattr(getattr(r, tool), get) or 0 for r in results)

    def cpu(tool: str, field: str) -> Spread:
        return spread([getattr(getattr(r, tool), field) for r in results])

    def pct(tool: str) -> Spread:
        return spread([getattr(r, tool).cpu_window_s * 100.0 / r.wall_s for r in results])

    wall = sum(r.wall_s for r in results)
    agent_lost = tot("lost", "agent")
    drops = sum(r.agent_sink_drops for r in results)
    rows = [
        ["children spawned (truth)", total, total],
        [
            "exec events seen",
            fraction(tot("execs", "agent"), total),
            fraction(tot("execs", "peer"), total),
        ],
        [
            "exit events seen",
            fraction(tot("exits", "agent"), total),
            fraction(tot("exits", "peer"), total),
        ],
        [
            "lost (reported by the tool)",
            f"{agent_lost} (+{drops} recorder drops)",
            tot("lost", "peer"),
        ],
        [
            "exit status/signal right",
            fraction(tot("exit_right", "agent"), total),
            fraction(tot("exit_right", "peer"), total),
        ],
        ["argv right", fraction(tot("argv_right", "agent"), total), "n/a (prints filename only)"],
        [
            "filename right",
            fraction(tot("exe_right", "agent"), total),
            fraction(tot("exe_right", "peer"), total),
        ],
        [
            "CPU s, workload window",
            cpu("agent", "cpu_window_s").fmt(2),
            cpu("peer", "cpu_window_s").fmt(2),
        ],
        [
            "CPU s, workload start to exit",
            cpu("agent", "cpu_to_exit_s").fmt(2),
            cpu("peer", "cpu_to_exit_s").fmt(2),
        ],
        ["CPU % of one core (window)", pct("agent").fmt(1), pct("peer").fmt(1)],
    ]
    print_table(
        f"summary over {len(results)} run(s), {wall:.1f} s of spawning, "
        f"{total / wall:.0f} children/s; CPU as median (min-max) of runs",
        ["", "agent (otel-linnix record)", "bpftrace"],
        rows,
    )
    ratios = spread([_ratio(r.agent.cpu_to_exit_s, r.peer.cpu_to_exit_s) for r in results])
    ratios_w = spread([_ratio(r.agent.cpu_window_s, r.peer.cpu_window_s) for r in results])
    forks = sum(r.host_forks for r in results)
    print(
        f"\nratio agent CPU / bpftrace CPU: {ratios.fmt(2)} (start to exit), "
        f"{ratios_w.fmt(2)} (workload window)"
    )
    print(
        f"host forks during the windows: {forks} (spawned children: {total}; "
        "the rest is the spawner workers and other activity on the host)"
    )
    background = spread([r.background_pct for r in results])
    print(f"host CPU busy just before each run (% of all CPUs): {background.fmt(1)}")
    print()
    seen_all = tot("execs", "agent") == total and tot("exits", "agent") == total
    report_target(
        "0 lost",
        agent_lost == 0 and drops == 0 and seen_all,
        f"agent lost={agent_lost}, recorder drops={drops}, "
        f"exec seen {tot('execs', 'agent')}/{total}, "
        f"exit seen {tot('exits', 'agent')}/{total}",
    )
    report_target(
        "every exit status right",
        tot("exit_right", "agent") == total,
        f"{tot('exit_right', 'agent')}/{total} right",
    )
    report_target(
        "agent CPU within 2x of bpftrace's",
        ratios.median <= 2.0,
        f"ratio {ratios.fmt(2)}: agent {cpu('agent', 'cpu_to_exit_s').fmt(2, 's')}, "
        f"bpftrace {cpu('peer', 'cpu_to_exit_s').fmt(2, 's')}",
    )


def main_body(args: argparse.Namespace) -> None:
    if args.quick:
        args.duration, args.runs = 5.0, 1
    require(programs=["bpftrace"])
    spawner, child = workload("spawner"), workload("child")
    print(
        f"workload: {args.workers} spawner workers, rounds of {args.batch} children, "
        f"{args.duration:g} s per run, {args.runs} run(s); peer: bpftrace {PEER_SCRIPT.name}"
    )
    results = []
    with workdir(args.keep) as wd:
        for run in range(args.runs):
            results.append(one_run(args, wd, run, spawner, child))
            print(
                f"run {run + 1}: {results[-1].children} children in {results[-1].wall_s:.1f} s",
                flush=True,
            )
        report(results)


def parser() -> argparse.ArgumentParser:
    p = bench_parser("bench.capture", __doc__)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of spawning per run")
    p.add_argument("--runs", type=int, default=3, help="runs (CPU reported as median)")
    p.add_argument("--workers", type=int, default=2, help="spawner workers")
    p.add_argument("--batch", type=int, default=2000, help="children per spawner round")
    add_side_by_side_args(p)
    p.add_argument("--quick", action="store_true", help="one run of 5 s")
    return p


def main() -> int:
    return run_bench("bench.capture", parser(), main_body)


if __name__ == "__main__":
    raise SystemExit(main())
