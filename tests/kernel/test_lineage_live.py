"""Lineage ids on the real kernel: a known tree, a TRACEPARENT from the
environment, and ids recomputed from /proc with the documented formula."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from otel_linnix.agent import Agent
from otel_linnix.config import ApiConfig, Config, LineageConfig, RulesConfig
from otel_linnix.events import NS_PER_TICK, EventKind, ProcessEvent
from otel_linnix.lineage import boot_id_bytes, span_id_of, trace_id_of
from otel_linnix.sinks import SinkWorker
from tests.kernel.conftest import Collector

pytestmark = pytest.mark.kernel

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


class Live:
    def __init__(self) -> None:
        self.collector = Collector()
        config = Config(
            api=dataclasses.replace(ApiConfig(), bind_address="127.0.0.1:0"),
            rules=RulesConfig(enabled=False),
        )
        self.agent = Agent(config, [SinkWorker(self.collector, max_queue=1_000_000)])

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.agent.api.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def exec_of(self, tag: str, comm: str) -> ProcessEvent:
        """The exec event of the process running ``comm`` with ``tag`` in its argv."""

        def found(evs: list[ProcessEvent]) -> bool:
            return any(self._matches(e, tag, comm) for e in evs)

        evs = self.collector.wait_for(found)
        return next(e for e in evs if self._matches(e, tag, comm))

    @staticmethod
    def _matches(ev: ProcessEvent, tag: str, comm: str) -> bool:
        return (
            ev.kind is EventKind.EXEC
            and ev.comm == comm
            and ev.argv is not None
            and any(tag in a for a in ev.argv)
        )


@pytest.fixture(scope="module")
def live(needs_ebpf: None) -> Iterator[Live]:
    running = Live()
    running.agent.start()
    yield running
    running.agent.stop(5.0)


def _stat(pid: int) -> tuple[int, int, str]:
    """(ppid, start time ns at tick resolution, comm) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    comm = data[data.find(b"(") + 1 : data.rfind(b")")].decode()
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]), int(fields[19]) * NS_PER_TICK, comm


def _kill(pid: int | None) -> None:
    """Stop a grandchild this test started (by its pid; it may be gone)."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _boot() -> bytes:
    with open("/proc/sys/kernel/random/boot_id") as fh:
        return boot_id_bytes(fh.read())


def _expected_root(pid: int) -> int:
    """The lineage root of ``pid`` by the documented rule, read from /proc."""
    spawners = set(LineageConfig().spawners)
    while True:
        ppid, _, _ = _stat(pid)
        if ppid <= 1:
            return pid
        _, _, parent_comm = _stat(ppid)
        try:
            parent_exe = os.path.basename(os.readlink(f"/proc/{ppid}/exe"))
        except OSError:
            parent_exe = ""
        names = {parent_comm, parent_exe}
        if any(n.startswith(("containerd-shim", "conmon")) for n in names) or (
            parent_exe in spawners or any(parent_comm == s[:15] for s in spawners)
        ):
            return pid
        pid = ppid


def test_a_three_level_tree_links_parent_spans_and_shares_a_trace(live: Live) -> None:
    tag = f"{5 + uuid.uuid4().int % 10**6 / 10**7:.7f}"
    outer = subprocess.Popen(["sh", "-c", f'sh -c "sleep {tag}; true"; true'])
    sleep_pid = None
    try:
        sleep = live.exec_of(tag, "sleep")
        sleep_pid = sleep.pid
        execs = [e for e in live.collector.events if e.kind is EventKind.EXEC]
        outer_ev = next(e for e in execs if e.pid == outer.pid)
        inner = next(e for e in execs if e.pid == sleep.ppid)
        assert inner.ppid == outer.pid
        assert sleep.ppid == inner.pid
        assert inner.parent_span_id == outer_ev.span_id
        assert sleep.parent_span_id == inner.span_id
        assert outer_ev.trace_id == inner.trace_id == sleep.trace_id
        # Every event of one process carries the same ids.
        for ev in (outer_ev, inner, sleep):
            mine = {
                (e.trace_id, e.span_id, e.parent_span_id)
                for e in live.collector.of_pid(ev.pid)
                if e.start_time_ns == ev.start_time_ns and e.kind is not EventKind.EXEC
            }
            assert mine <= {(ev.trace_id, ev.span_id, ev.parent_span_id)}

        graph = live.get(f"/graph/{sleep.pid}")
        nodes = {n["pid"]: n for n in graph["nodes"]}
        for ev in (outer_ev, inner, sleep):
            node = nodes[ev.pid]
            assert (node["trace_id"], node["span_id"], node["parent_span_id"]) == (
                ev.trace_id,
                ev.span_id,
                ev.parent_span_id,
            )
        process = live.get(f"/processes/{inner.pid}")
        assert process["span_id"] == inner.span_id
        assert process["parent_span_id"] == outer_ev.span_id

        # (c) the documented formula, from /proc facts alone
        boot = _boot()
        for ev in (outer_ev, inner, sleep):
            _, start, _ = _stat(ev.pid)
            assert ev.span_id == span_id_of(boot, ev.pid, start)
        root = _expected_root(sleep.pid)
        _, root_start, _ = _stat(root)
        assert sleep.trace_id == trace_id_of(boot, root, root_start)
    finally:
        _kill(sleep_pid)
        outer.kill()
        outer.wait()


def test_a_traceparent_from_the_environment_sets_trace_and_parent_span(live: Live) -> None:
    tag = f"{5 + uuid.uuid4().int % 10**6 / 10**7:.7f}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TRACEPARENT": TRACEPARENT}
    # A long environment before TRACEPARENT: the scan must walk past it.
    env.update({f"FILLER_{i}": "x" * 40 for i in range(40)})
    proc = subprocess.Popen(["sh", "-c", f"sleep {tag}; true"], env=env)
    sleep_pid = None
    try:
        sleep = live.exec_of(tag, "sleep")
        sleep_pid = sleep.pid
        shell = next(
            e for e in live.collector.events if e.kind is EventKind.EXEC and e.pid == proc.pid
        )
        assert shell.traceparent == TRACEPARENT
        assert (shell.trace_id, shell.parent_span_id) == (TRACE, PARENT)
        # The child inherited the same TRACEPARENT: same trace, real parent.
        assert sleep.traceparent == TRACEPARENT
        assert sleep.trace_id == TRACE
        assert sleep.parent_span_id == shell.span_id
        boot = _boot()
        _, start, _ = _stat(proc.pid)
        assert shell.span_id == span_id_of(boot, proc.pid, start)
        node = live.get(f"/processes/{proc.pid}")
        assert (node["trace_id"], node["parent_span_id"], node["traceparent"]) == (
            TRACE,
            PARENT,
            TRACEPARENT,
        )
    finally:
        _kill(sleep_pid)
        proc.kill()
        proc.wait()
    # Its exit carries the trace too.
    exits = live.collector.wait_for(
        lambda evs: any(e.kind is EventKind.EXIT and e.pid == proc.pid for e in evs)
    )
    exit_ev = next(e for e in exits if e.kind is EventKind.EXIT and e.pid == proc.pid)
    assert (exit_ev.trace_id, exit_ev.parent_span_id) == (TRACE, PARENT)


def test_only_the_traceparent_value_reaches_user_space(live: Live) -> None:
    tag = f"{5 + uuid.uuid4().int % 10**6 / 10**7:.7f}"
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    env = {"TRACEPARENT": "short", "API_KEY": secret, "PATH": "/usr/bin:/bin"}
    subprocess.run(["/bin/sleep", "0.01", tag], env=env, check=True)
    ev = live.exec_of(tag, "sleep")
    assert ev.traceparent == "short"
    assert secret not in repr(ev)
    # A malformed value is counted and ignored: the process stays in its parent's trace.
    assert ev.parent_span_id is not None
    assert live.agent.pipeline.table.stats().traceparent_invalid >= 1
