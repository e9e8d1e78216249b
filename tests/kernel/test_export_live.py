"""OTLP log records and process spans from the real agent on the real kernel.

One agent for the module exports logs and spans (spans for processes under
``make``) over HTTP/protobuf to an in-process receiver; each test picks out its
own processes by pid or argv tag.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_linnix.agent import Agent
from otel_linnix.config import ApiConfig, Config, ExportConfig, ProcessTableConfig
from tests.otlp_receiver import LogRecordView, OtlpReceiver, SpanView
from tests.unit.conftest import wait_until

pytestmark = pytest.mark.kernel

MIB = 1 << 20


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def agent(needs_ebpf: None, receiver: OtlpReceiver) -> Iterator[Agent]:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]
    config = Config(
        api=ApiConfig(bind_address="127.0.0.1:0"),
        export=ExportConfig(
            endpoint=receiver.http_endpoint,
            protocol="http/protobuf",
            metrics=False,
            traces=True,
            command_args=True,
            traces_subtree_executables=("make",),
            timeout_s=2.0,
        ),
    )
    running = Agent(config)
    running.start()
    yield running
    running.stop(5.0)


def get_json(agent: Agent, path: str, timeout_s: float = 5.0) -> Any:
    url = f"http://127.0.0.1:{agent.api.port}{path}"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def records_of(rx: OtlpReceiver, pids: set[int]) -> list[LogRecordView]:
    return [r for r in rx.log_records() if r.attributes.get("process.pid") in pids]


def test_a_process_tree_arrives_as_records_whose_span_ids_rebuild_the_graph(
    agent: Agent, receiver: OtlpReceiver, tag: str
) -> None:
    script = f"sleep 30 & sleep 30 & sh -c 'sleep 30' & /bin/true {tag} --password hunter2; wait"
    outer = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        # Everything exec'd: the graph has its four descendants (three sleeps, one sh).
        deadline = time.monotonic() + 10
        graph: dict[str, Any] = {}
        below: list[dict[str, Any]] = []
        while len([n for n in below if n["comm"] == "sleep"]) < 3:
            assert time.monotonic() < deadline, graph
            time.sleep(0.2)
            try:
                graph = get_json(agent, f"/graph/{outer.pid}")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # 404: not seen yet
                    raise
                continue
            below = [n for n in graph["nodes"] if n["relationship"] == "descendant"]
        pids = {outer.pid} | {n["pid"] for n in below}
        receiver.wait_for_logs(
            lambda rs: {r.attributes.get("process.pid") for r in rs} >= pids, timeout_s=15
        )
    finally:
        os.killpg(outer.pid, signal.SIGTERM)
        outer.wait(10)

    records = records_of(receiver, pids)
    span_of: dict[int, str] = {}
    for rec in records:
        assert len(rec.trace_id) == 32 and len(rec.span_id) == 16
        assert span_of.setdefault(rec.attributes["process.pid"], rec.span_id) == rec.span_id
    # Every edge of /graph below the shell is a parent-span link in the records.
    edges = [e for e in graph["edges"] if e["to"] in pids and e["from"] in pids]
    assert len(edges) == len(pids) - 1
    for edge in edges:
        child = next(r for r in records if r.attributes["process.pid"] == edge["to"])
        assert child.attributes["linnix.parent_span_id"] == span_of[edge["from"]], edge
    # One unit of work: one trace.
    assert len({r.trace_id for r in records}) == 1

    outer_exec = next(
        r
        for r in records
        if r.event_name == "linnix.process.exec" and r.attributes["process.pid"] == outer.pid
    )
    assert outer_exec.attributes["process.parent_pid"] == os.getpid()
    assert outer_exec.attributes["process.command"] == "sh"
    assert outer_exec.attributes["process.executable.name"] in ("sh", "dash", "bash")
    assert outer_exec.attributes["process.user.id"] == os.getuid()
    assert outer_exec.attributes["process.args_count"] == 3

    # The exits: /bin/true with status 0, the sleeps by SIGTERM.
    exits = receiver.wait_for_logs(
        lambda rs: len([r for r in rs if r.event_name == "linnix.process.exit"
                        and r.attributes.get("process.pid") in pids]) >= len(pids),
        timeout_s=15,
    )  # fmt: skip
    true_exec = next(
        r
        for r in receiver.log_records()
        if r.event_name == "linnix.process.exec"
        and tag in r.attributes.get("process.command_args", [])
    )
    assert true_exec.attributes["process.command_args"] == [
        "/bin/true",
        tag,
        "--password",
        "<redacted>",
    ]
    true_pid = true_exec.attributes["process.pid"]
    by_pid = {
        r.attributes["process.pid"]: r
        for r in exits
        if r.event_name == "linnix.process.exit" and r.attributes.get("process.pid") in pids
    }
    assert by_pid[true_pid].attributes["process.exit.code"] == 0
    sleeps = [n["pid"] for n in below if n["comm"] == "sleep"]
    for pid in sleeps:
        assert by_pid[pid].attributes["linnix.process.exit.signal"] == signal.SIGTERM
        assert by_pid[pid].severity_text == "WARN"
        assert by_pid[pid].attributes["process.executable.name"] == "sleep"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _storm(forker: Path, seconds: float, agent: Agent) -> tuple[int, float]:
    """Fork storms back to back for ``seconds``, /health polled throughout:
    (storms run, slowest /health answer in s)."""
    worst = 0.0
    storms = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        storm = subprocess.Popen([str(forker), "3000"], stdout=subprocess.DEVNULL)
        while storm.poll() is None:
            started = time.monotonic()
            health = get_json(agent, "/health", timeout_s=5.0)
            worst = max(worst, time.monotonic() - started)
            assert health["status"] in ("ok", "degraded")
            time.sleep(0.2)
        storms += 1
    return storms, worst


def test_a_collector_down_for_60_s_in_a_fork_storm_costs_nothing_and_export_resumes(
    needs_ebpf: None, workloads: dict[str, Path], tag: str
) -> None:
    # Its own agent, with a process table that reaches its bound within the
    # warm-up: a fork storm fills the default one (100,000 entries, exited
    # ones kept 60 s) for a minute, which is the table's memory, not export's.
    with OtlpReceiver() as receiver:
        config = Config(
            api=ApiConfig(bind_address="127.0.0.1:0"),
            process_table=ProcessTableConfig(exited_retention_s=1.0, max_entries=5000),
            export=ExportConfig(
                endpoint=receiver.grpc_endpoint,
                protocol="grpc",
                metrics=False,
                command_args=True,
            ),
        )
        agent = Agent(config)
        agent.start()
        try:
            source = agent.pipeline.source
            # Warm-up with the collector up: every structure at its working size.
            _storm(workloads["forker"], 30, agent)
            lost_before = source.stats().lost_total
            assert agent.export_stats["logs"]()["exported"] > 0
            receiver.stop()
            # A batch already being answered when the collector went down may
            # still complete and count as exported: at most one.
            exported_before = agent.export_stats["logs"]()["exported"]
            receiver.clear()
            rss_before = _rss_bytes()
            storms, worst_health_s = _storm(workloads["forker"], 60, agent)
            rss_growth = _rss_bytes() - rss_before
            stats = agent.export_stats["logs"]()
            logs = agent.logs
            assert logs is not None and logs.worker is not None
            held = logs.queue.held_bytes()
            queued = len(logs.queue)
            receiver.start()
            lost = source.stats().lost_total - lost_before
            # The collector is back: the backlog goes out (what did not fit
            # was dropped and counted above), then new records flow again.
            assert logs.worker.drain(60)
            assert wait_until(lambda: len(logs.queue) == 0, 60)
            time.sleep(1.5)  # a linger and a refilled rate limit
            subprocess.run(["/bin/true", f"{tag}-after"], check=True)
            found = receiver.wait_for_logs(
                lambda rs: any(
                    f"{tag}-after" in r.attributes.get("process.command_args", []) for r in rs
                ),
                timeout_s=30,
            )
        finally:
            agent.stop(5.0)
    assert storms >= 5
    assert lost == 0
    assert worst_health_s < 2.0
    # What export holds while the collector is away is bounded by its queue.
    # (The whole process grows too, by the same order with export off: see
    # the report printed here; that growth is not export's.)
    print(f"RSS growth over the 60 s outage: {rss_growth / MIB:.1f} MiB; export queue holds "
          f"{queued} records, {held / MIB:.1f} MiB")  # fmt: skip
    assert queued <= ExportConfig().logs_queue
    assert held < 20 * MIB
    assert stats["failed"] > 0
    # Nothing got through while it was down (but the one batch in flight at the cut).
    assert stats["exported"] - exported_before <= config.export.logs_batch
    assert stats["dropped"] + stats["rate_limited"] > 0  # bounded: the excess went, counted
    assert found


def _write_project(root: Path, files: int) -> None:
    for i in range(files):
        (root / f"f{i}.c").write_text(f"int f{i}(int x) {{ return x * {i}; }}\n")
    objs = " ".join(f"f{i}.o" for i in range(files))
    (root / "Makefile").write_text(
        f"all: lib.a\nlib.a: {objs}\n\tar rcs $@ $^\n%.o: %.c\n\tcc -O2 -c $< -o $@\n"
    )


def test_a_make_build_is_one_trace_nested_like_the_process_tree(
    agent: Agent, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    files = 4
    _write_project(tmp_path, files)
    build = subprocess.Popen(["make", "-j2", "-s"], cwd=tmp_path)
    assert build.wait(120) == 0

    def make_span(spans: list[SpanView]) -> SpanView | None:
        return next((s for s in spans if s.attributes.get("process.pid") == build.pid), None)

    spans = receiver.wait_for_spans(lambda ss: make_span(ss) is not None, timeout_s=20)
    root = make_span(spans)
    assert root is not None
    trace = [s for s in spans if s.trace_id == root.trace_id]
    assert root.name == "make" and root.parent_span_id == ""
    assert root.status_code == 0 and root.attributes["process.exit.code"] == 0
    by_id = {s.span_id: s for s in trace}
    by_pid = {s.attributes["process.pid"]: s for s in trace}
    names = [s.name for s in trace]
    assert names.count("cc") == files
    assert "ar" in names
    for span in trace:
        if span is root:
            continue
        # Nested: the parent is in the trace and is the parent process's span.
        parent = by_id[span.parent_span_id]
        assert parent.attributes["process.pid"] == span.attributes["process.parent_pid"]
        assert by_pid[span.attributes["process.parent_pid"]] is parent
        assert root.start_time_unix_nano <= span.start_time_unix_nano
        assert span.end_time_unix_nano <= root.end_time_unix_nano
        # Every chain leads up to make.
        hops, up = 0, span
        while up is not root:
            up = by_id[up.parent_span_id]
            hops += 1
            assert hops < 10
    for cc in (s for s in trace if s.name == "cc"):
        assert cc.parent_span_id == root.span_id
        assert cc.attributes["process.command_args"][:3] == ["cc", "-O2", "-c"]
