"""/metrics scrape time and series count with 5,000 live processes.

The agent runs (``otel-linnix run``) while tests/workloads/holder.c keeps
``--live`` processes alive; once the sampler has swept them all, GET
/metrics is timed ``--requests`` times per round over ``--rounds`` rounds.
Side by side in every round, the peer: a prometheus_client exporter in the
style of process-exporter, which reads /proc/<pid>/stat of every process at
scrape time and exposes a series per pid (CPU, RSS, threads), timed from
collection to text. ``promtool check metrics`` parses the agent's output
once, for the consumer's side. Target: /metrics p99 under 100 ms.

    .venv/bin/python -m bench.metrics [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bench.common import (
    CLK_TCK,
    BenchError,
    ManagedProcess,
    bench_parser,
    percentile,
    print_table,
    report_target,
    require,
    run_bench,
    spread,
    start_agent,
    workdir,
    workload,
)

_PORT = 3518
_PAGE = os.sysconf("SC_PAGE_SIZE")


class PerPidCollector(Collector):
    """Every process, a series each, read from /proc at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cpu = CounterMetricFamily("peer_process_cpu_seconds", "CPU time", labels=["pid", "comm"])
        rss = GaugeMetricFamily("peer_process_resident_bytes", "RSS", labels=["pid", "comm"])
        threads = GaugeMetricFamily("peer_process_threads", "threads", labels=["pid", "comm"])
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            comm = data[data.find(b"(") + 1 : data.rfind(b")")].decode(errors="replace")
            fields = data[data.rfind(b")") + 2 :].split()
            labels = [name, comm]
            cpu.add_metric(labels, (int(fields[11]) + int(fields[12])) / CLK_TCK)
            threads.add_metric(labels, int(fields[17]))
            rss.add_metric(labels, int(fields[21]) * _PAGE)
        yield cpu
        yield rss
        yield threads


def _agent_scrape() -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{_PORT}/metrics", timeout=30) as resp:
        body = resp.read()
    return (time.perf_counter() - started) * 1000, body


def _peer_scrape(registry: CollectorRegistry) -> tuple[float, bytes]:
    started = time.perf_counter()
    body = generate_latest(registry)
    return (time.perf_counter() - started) * 1000, body


def _series(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def _families(body: bytes) -> dict[str, int]:
    """Series per metric name (histogram parts folded into their family)."""
    out: dict[str, int] = {}
    for line in body.splitlines():
        if not line or line.startswith(b"#"):
            continue
        name = line.split(b"{", 1)[0].split(b" ", 1)[0].decode()
        for suffix in ("_bucket", "_sum", "_count"):
            if name.startswith("linnix_process_lifetime") and name.endswith(suffix):
                name = name[: -len(suffix)]
        out[name] = out.get(name, 0) + 1
    return out


def _wait_live(count: int) -> int:
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{_PORT}/status") as resp:
            live = int(json.loads(resp.read())["processes"]["live"])
        if live >= count:
            return live
        if time.monotonic() > deadline:
            raise BenchError(f"the agent sees {live} live processes, not {count}")
        time.sleep(0.2)


def body(args: argparse.Namespace) -> None:
    require(root=True, programs=["promtool"])
    if args.quick:
        args.rounds, args.requests = 3, 10
    holder = workload("holder")
    peer = CollectorRegistry(auto_describe=False)
    peer.register(PerPidCollector())
    with workdir(args.keep) as wd:
        config = wd / "linnix.toml"
        config.write_text(f'[api]\nbind_address = "127.0.0.1:{_PORT}"\n')
        with (
            start_agent("run", wd / "agent.log", "--config", str(config)),
            ManagedProcess(
                "holder", [str(holder), str(args.live)], wd / "holder.log", ready="ready"
            ),
        ):
            live = _wait_live(args.live)
            time.sleep(2.5)  # two sampler sweeps: every process has its figures
            _agent_scrape()
            _peer_scrape(peer)  # warm-up
            agent_rounds: list[list[float]] = []
            peer_rounds: list[list[float]] = []
            for _ in range(args.rounds):
                agent_rounds.append([_agent_scrape()[0] for _ in range(args.requests)])
                peer_rounds.append([_peer_scrape(peer)[0] for _ in range(args.requests)])
            _ms, agent_body = _agent_scrape()
            _ms, peer_body = _peer_scrape(peer)
            started = time.perf_counter()
            check = subprocess.run(
                ["promtool", "check", "metrics"], input=agent_body, capture_output=True, check=False
            )
            promtool_ms = (time.perf_counter() - started) * 1000

    rows = []
    for name, rounds, text in (
        ("otel-linnix GET /metrics", agent_rounds, agent_body),
        ("peer: prometheus_client, a series per pid", peer_rounds, peer_body),
    ):
        every = [ms for r in rounds for ms in r]
        medians = spread([percentile(r, 50) for r in rounds])
        rows.append(
            [
                name,
                medians.fmt(1),
                f"{percentile(every, 99):.1f}",
                f"{max(every):.1f}",
                _series(text),
                f"{len(text) / 1024:.0f}",
            ]
        )
    print_table(
        f"Scrape with {live} live processes: {args.rounds} rounds x {args.requests} "
        "requests, side by side (ms)",
        ["exporter", "p50 median (min-max of rounds)", "p99", "max", "series", "KiB"],
        rows,
    )
    print_table(
        "Series of the agent's exposition, by metric",
        ["metric", "series"],
        sorted(_families(agent_body).items()),
    )
    every_agent = [ms for r in agent_rounds for ms in r]
    agent_p50 = spread([percentile(r, 50) for r in agent_rounds]).median
    peer_p50 = spread([percentile(r, 50) for r in peer_rounds]).median
    print(
        f"\npromtool check metrics on the agent's output: {promtool_ms:.0f} ms, "
        f"exit {check.returncode}{' (clean)' if not check.stdout.strip() else ''}"
    )
    report_target(
        "/metrics p99 < 100 ms with 5,000 processes",
        percentile(every_agent, 99) < 100,
        f"p99 {percentile(every_agent, 99):.1f} ms, p50 {agent_p50:.1f} ms = "
        f"{agent_p50 / peer_p50:.2f}x the per-pid peer's {peer_p50:.1f} ms; "
        f"{_series(agent_body)} series vs the peer's {_series(peer_body)}",
    )


def main() -> int:
    parser = bench_parser("bench.metrics", __doc__)
    parser.add_argument("--live", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 10 requests")
    return run_bench("bench.metrics", parser, body)


if __name__ == "__main__":
    raise SystemExit(main())
