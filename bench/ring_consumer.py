"""The agent's CPU with the ring buffer read from its mapping vs through bcc's callback.

``otel-linnix run`` (default configuration) is started once per run, reading
its ring either directly (``sources/ringbuf.py``, the default on x86-64) or
through bcc's ctypes callback (the consumer used elsewhere, forced here by
the same switch the kernel tests use). Each run drives the same load: two
bare fork storms (``forker``) and a fork+exec loop (``spawner``). Runs
alternate between the two consumers, so a drift of this shared machine does
not favour one. Reported: CPU of the drain thread and of the whole agent
(per thread, from /proc/<pid>/task/*/stat), per run and as medians.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.agent_cost import thread_cpu_s, thread_delta
from bench.common import (
    BenchError,
    ManagedProcess,
    agent_env,
    agent_status,
    bench_parser,
    print_table,
    require,
    run_bench,
    run_spawner,
    spread,
    workdir,
    workload,
)

# The agent's entry point, with the consumer switch the kernel tests use.
_RUN_WITH = """
import sys
from otel_linnix.sources import bpf
if sys.argv[1] == "bcc":
    bpf.direct_ring_supported = lambda: False
from otel_linnix.cli import main
sys.exit(main(["run"]))
"""
_CONSUMER_LOG = {"mmap": "read from its mapping", "bcc": "through bcc's callback"}


def one_run(args: argparse.Namespace, consumer: str, wd: Path, i: int) -> dict[str, float]:
    forker, spawner, child = workload("forker"), workload("spawner"), workload("child")
    log = wd / f"agent-{i}-{consumer}.log"
    with ManagedProcess(
        f"otel-linnix run ({consumer})",
        [sys.executable, "-c", _RUN_WITH, consumer],
        log,
        ready="otel-linnix running",
        env=agent_env(),
    ) as agent:
        if _CONSUMER_LOG[consumer] not in agent.log():
            raise BenchError(f"the agent did not use the {consumer} consumer; see {log}")
        time.sleep(args.settle)
        before = thread_cpu_s(agent.pid)
        for _ in range(args.storms):
            subprocess.run([str(forker), str(args.fork_count)], capture_output=True, check=True)
        run_spawner(spawner, args.spawn_count, 2, child, f"ring{i}")
        used = thread_delta(before, thread_cpu_s(agent.pid))
        end = agent.stop()
    lost = agent_status(end.log).get("lost")
    if lost != "0":
        raise BenchError(f"the agent lost events (lost={lost}); see {log}")
    return used


def main_body(args: argparse.Namespace) -> None:
    if args.quick:
        args.runs, args.fork_count, args.spawn_count = 2, 5000, 1000
    require()
    events = args.storms * args.fork_count * 2 + args.spawn_count * 3
    print(
        f"{args.runs} runs per consumer, alternating; each: {args.storms} x forker "
        f"{args.fork_count} and spawner {args.spawn_count} (about {events:,} events)"
    )
    runs: dict[str, list[dict[str, float]]] = {"mmap": [], "bcc": []}
    rows = []
    with workdir(args.keep) as wd:
        for i in range(args.runs):
            for consumer in ("mmap", "bcc") if i % 2 == 0 else ("bcc", "mmap"):
                used = one_run(args, consumer, wd, i)
                runs[consumer].append(used)
                drain, total = used.get("bpf-drain", 0.0), sum(used.values())
                rows.append([i + 1, consumer, f"{drain:.2f}", f"{total:.2f}"])
                print(
                    f"run {i + 1} {consumer}: drain {drain:.2f} s, agent {total:.2f} s", flush=True
                )
    print_table(
        "per run (CPU seconds over the load)", ["run", "consumer", "drain thread", "agent"], rows
    )
    summary = []
    medians: dict[str, tuple[float, float]] = {}
    for consumer, of_runs in runs.items():
        drains = spread([u.get("bpf-drain", 0.0) for u in of_runs])
        totals = spread([sum(u.values()) for u in of_runs])
        medians[consumer] = (drains.median, totals.median)
        summary.append(
            [
                consumer,
                drains.fmt(2, "s"),
                f"{drains.median / events * 1e6:.1f}",
                totals.fmt(2, "s"),
                f"{totals.median / events * 1e6:.1f}",
            ]
        )
    print_table(
        f"medians (min-max) of {args.runs} runs each",
        ["consumer", "drain thread", "us per event", "agent", "us per event"],
        summary,
    )
    (d_m, t_m), (d_b, t_b) = medians["mmap"], medians["bcc"]
    print(f"\nratio mapping / bcc callback: drain thread {d_m / d_b:.2f}, agent {t_m / t_b:.2f}")


def parser() -> argparse.ArgumentParser:
    p = bench_parser("bench.ring_consumer", __doc__)
    p.add_argument("--runs", type=int, default=6, help="runs per consumer")
    p.add_argument("--storms", type=int, default=2, help="fork storms per run")
    p.add_argument("--fork-count", type=int, default=20000, help="children per fork storm")
    p.add_argument("--spawn-count", type=int, default=3000, help="fork+exec children per run")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after the agent is ready")
    p.add_argument("--quick", action="store_true", help="2 runs each, smaller workloads")
    return p


def main() -> int:
    return run_bench("bench.ring_consumer", parser(), main_body)


if __name__ == "__main__":
    raise SystemExit(main())
