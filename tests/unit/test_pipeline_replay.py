"""The real Pipeline driven by recordings, over the fake /proc tree and a fake cgroup tree."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_linnix.containers import CgroupResolver
from otel_linnix.events import NS_PER_TICK, EventKind, ProcessEvent, ProcessKey, ProcessSource
from otel_linnix.pipeline import Pipeline
from otel_linnix.process_table import ProcessTable
from otel_linnix.recording import event_to_dict
from otel_linnix.sinks import SinkWorker
from otel_linnix.sources.procfs import ProcReader
from otel_linnix.sources.replay import ReplaySource
from tests.unit.conftest import (
    DEADLINE_S,
    PROC_FIXTURE,
    RECORDINGS,
    CollectingSink,
    make_event,
    wait_until,
)

S = 1_000_000_000
CLOCK_NS = 5 * S  # the agent starts before the recordings' first event (10 s)
TREE = RECORDINGS / "build_tree.jsonl"
TREE_EVENTS = 15
# What the start-up walk of tests/fixtures/proc yields: pids 1, 4242, 5000 and
# the zombie 4300, oldest first; pid 2 is a kernel thread and 6000 has an
# empty stat.
BOOTSTRAP_PIDS = [1, 4242, 5000, 4300]

K_INIT = ProcessKey.of(1, 20_000_000)
K_BASH = ProcessKey.of(100, 10_000_123_456)
K_MAKE = ProcessKey.of(200, 11_007_000_001)
K_CC1 = ProcessKey.of(300, 12_000_000_015)
K_CC2 = ProcessKey.of(301, 12_250_000_042)
K_STRESS = ProcessKey.of(400, 13_000_000_999)
K_LEAK = ProcessKey.of(700, 20_000_000_005)
DOCKER_ID = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d"


class Harness:
    """A pipeline with a collecting sink, started and stopped by the test."""

    def __init__(
        self,
        source: ReplaySource,
        cgroup_root: Path,
        *,
        table: ProcessTable | None = None,
        sample_interval_s: float = 3600.0,
    ) -> None:
        self.source = source
        self.sink = CollectingSink()
        self.worker = SinkWorker(self.sink)
        self.table = table if table is not None else ProcessTable()
        self.resolver = CgroupResolver(root=str(cgroup_root))
        self.pipeline = Pipeline(
            source,
            self.table,
            ProcReader(str(PROC_FIXTURE)),
            self.resolver,
            [self.worker],
            clock=lambda: CLOCK_NS,
            sample_interval_s=sample_interval_s,
        )
        self.stop_s: float | None = None

    def run(self, expected_events: int) -> list[ProcessEvent]:
        """Start, wait for the whole recording to reach the sink, and return it."""
        self.pipeline.start()
        assert self.source.done.wait(DEADLINE_S), "the replay did not finish"
        assert self.sink.wait_for(expected_events), (
            f"the sink got {len(self.sink.events)} of {expected_events} events"
        )
        return self.sink.events

    def stop(self) -> None:
        started = time.monotonic()
        self.pipeline.stop(timeout_s=2.0)
        self.stop_s = time.monotonic() - started


@pytest.fixture
def cgroup_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    (root / "system.slice" / "ssh.service").mkdir(parents=True)
    (root / "system.slice" / f"docker-{DOCKER_ID}.scope").mkdir(parents=True)
    return root


@pytest.fixture
def harnesses() -> Iterator[list[Harness]]:
    """Stops every harness a test built, even when the test fails."""
    built: list[Harness] = []
    yield built
    for h in built:
        if h.stop_s is None:
            h.stop()


def harness(
    built: list[Harness],
    source: ReplaySource,
    cgroup_root: Path,
    *,
    table: ProcessTable | None = None,
    sample_interval_s: float = 3600.0,
) -> Harness:
    h = Harness(source, cgroup_root, table=table, sample_interval_s=sample_interval_s)
    built.append(h)
    return h


def write_recording(path: Path, events: list[ProcessEvent]) -> Path:
    path.write_text("".join(json.dumps(event_to_dict(ev)) + "\n" for ev in events))
    return path


@pytest.mark.parametrize("batch_size", [1, 4, 1024])
def test_replay_numbers_every_event_in_order(
    harnesses: list[Harness], cgroup_root: Path, batch_size: int
) -> None:
    h = harness(harnesses, ReplaySource(TREE, batch_size=batch_size), cgroup_root)
    got = h.run(len(BOOTSTRAP_PIDS) + TREE_EVENTS)
    h.stop()
    assert [ev.seq for ev in got] == list(range(1, len(BOOTSTRAP_PIDS) + TREE_EVENTS + 1))
    boot, replayed = got[: len(BOOTSTRAP_PIDS)], got[len(BOOTSTRAP_PIDS) :]
    assert [ev.pid for ev in boot] == BOOTSTRAP_PIDS
    assert all(ev.bootstrap and ev.source is ProcessSource.PROCFS for ev in boot)
    with open(TREE, encoding="utf-8") as fh:
        in_file = [(obj["kind"], obj["pid"]) for obj in map(json.loads, fh)]
    assert [(ev.kind.value, ev.pid) for ev in replayed] == in_file
    assert h.stop_s is not None and h.stop_s < 2.0


def test_replay_builds_the_process_tree(harnesses: list[Harness], cgroup_root: Path) -> None:
    h = harness(harnesses, ReplaySource(TREE), cgroup_root)
    h.run(len(BOOTSTRAP_PIDS) + TREE_EVENTS)
    h.stop()
    table = h.table

    bash = table.get(K_BASH)
    assert bash is not None
    assert not bash.exited
    assert bash.parent_key == K_INIT
    assert (bash.exe, bash.argv) == ("/usr/bin/bash", ("bash", "-c", "make -j2 all"))
    assert [p.key for p in table.ancestors(K_CC1)] == [K_MAKE, K_BASH, K_INIT]
    assert sorted((p.pid, d) for p, d in table.descendants(K_BASH)) == [
        (200, 1),
        (300, 2),
        (301, 2),
        (400, 1),
    ]
    assert [p.key for p in table.siblings(K_CC1)] == [K_CC2]

    cc1, cc2, make, stress = (table.get(k) for k in (K_CC1, K_CC2, K_MAKE, K_STRESS))
    assert cc1 is not None and cc2 is not None and make is not None and stress is not None
    assert all(p.exited and not p.exit_inferred for p in (cc1, cc2, make, stress))
    assert (cc1.exit_code, cc1.exit_signal) == (0, None)
    assert (cc2.exit_signal, cc2.core_dumped) == (signal.SIGSEGV, True)
    assert make.exit_code == 2
    assert stress.oom_killed and stress.exit_signal == signal.SIGKILL

    st = table.stats()
    assert (st.live, st.exited) == (len(BOOTSTRAP_PIDS) + 1, 4)


def test_status_counts_events_by_kind(harnesses: list[Harness], cgroup_root: Path) -> None:
    h = harness(harnesses, ReplaySource(TREE), cgroup_root)
    h.run(len(BOOTSTRAP_PIDS) + TREE_EVENTS)
    h.stop()
    st = h.pipeline.status()
    assert st.events_by_kind == {
        "exec": 5 + len(BOOTSTRAP_PIDS),
        "fork": 5,
        "exit": 4,
        "oom_kill": 1,
    }
    assert st.source is ProcessSource.REPLAY
    assert st.source_stats.events == TREE_EVENTS
    assert st.bootstrap_processes == len(BOOTSTRAP_PIDS)
    assert st.sink_dropped == {"memory": 0}
    assert st.sink_failures == {"memory": 0}
    assert (st.table.live, st.table.exited) == (len(BOOTSTRAP_PIDS) + 1, 4)
    assert not st.degraded


def test_start_and_stop_are_idempotent(harnesses: list[Harness], cgroup_root: Path) -> None:
    h = harness(harnesses, ReplaySource(TREE), cgroup_root)
    h.run(len(BOOTSTRAP_PIDS) + TREE_EVENTS)
    h.pipeline.start()
    h.stop()
    first_stop = h.stop_s
    h.stop()
    assert first_stop is not None and first_stop < 2.0
    assert h.stop_s is not None and h.stop_s < 2.0
    assert len(h.sink.events) == len(BOOTSTRAP_PIDS) + TREE_EVENTS
    assert h.pipeline.status().source_stats.events == TREE_EVENTS


def test_oom_kill_takes_the_victims_cgroup_from_the_table(
    harnesses: list[Harness], cgroup_root: Path, tmp_path: Path
) -> None:
    table = ProcessTable()
    table.apply(
        make_event(
            EventKind.EXEC,
            700,
            K_LEAK.start_time_ns,
            ts_ns=20 * S,
            ppid=100,
            comm="leak",
            cgroup_id=42,
            exe="/opt/leak",
            argv=("leak",),
        )
    )
    oom = make_event(
        EventKind.OOM_KILL,
        700,
        K_LEAK.start_time_ns,
        ts_ns=21 * S,
        ppid=100,
        comm="leak",
        cgroup_id=0,
        rss_bytes=1 << 30,
    )
    path = write_recording(tmp_path / "oom.jsonl", [oom])
    h = harness(harnesses, ReplaySource(path), cgroup_root, table=table)
    got = h.run(len(BOOTSTRAP_PIDS) + 1)
    h.stop()
    assert got[-1].kind is EventKind.OOM_KILL
    assert got[-1].cgroup_id == 42
    leak = table.get(K_LEAK)
    assert leak is not None and leak.oom_killed and leak.cgroup_id == 42


def test_oom_kill_in_the_same_batch_as_its_exec_gets_the_cgroup(
    harnesses: list[Harness], cgroup_root: Path
) -> None:
    # A process that forks, execs and is OOM-killed within one drain interval:
    # its records arrive in one batch.
    h = harness(harnesses, ReplaySource(RECORDINGS / "oom_victim.jsonl"), cgroup_root)
    got = h.run(len(BOOTSTRAP_PIDS) + 4)
    h.stop()
    oom = [ev for ev in got if ev.kind is EventKind.OOM_KILL]
    assert len(oom) == 1
    assert oom[0].cgroup_id == 42


def test_container_is_attributed_from_the_cgroup_id(
    harnesses: list[Harness], cgroup_root: Path, tmp_path: Path
) -> None:
    scope = cgroup_root / "system.slice" / f"docker-{DOCKER_ID}.scope"
    host = cgroup_root / "system.slice" / "ssh.service"
    in_container = make_event(
        EventKind.EXEC,
        800,
        30 * S,
        comm="nginx",
        exe="/usr/sbin/nginx",
        argv=("nginx",),
        cgroup_id=scope.stat().st_ino,
    )
    on_host = make_event(
        EventKind.EXEC,
        801,
        30 * S,
        comm="sshd",
        exe="/usr/sbin/sshd",
        argv=("sshd",),
        cgroup_id=host.stat().st_ino,
    )
    path = write_recording(tmp_path / "containers.jsonl", [in_container, on_host])
    h = harness(harnesses, ReplaySource(path), cgroup_root)
    got = h.run(len(BOOTSTRAP_PIDS) + 2)
    h.stop()
    nginx, sshd = got[-2], got[-1]
    assert (nginx.container_id, nginx.container_runtime, nginx.pod_uid) == (
        DOCKER_ID,
        "docker",
        None,
    )
    assert nginx.cgroup_id == scope.stat().st_ino
    assert (sshd.container_id, sshd.container_runtime) == (None, None)
    info = h.table.get(ProcessKey.of(800, 30 * S))
    assert info is not None
    assert (info.container_id, info.container_runtime) == (DOCKER_ID, "docker")


def test_sampler_thread_samples_live_processes(harnesses: list[Harness], cgroup_root: Path) -> None:
    h = harness(harnesses, ReplaySource(TREE), cgroup_root, sample_interval_s=0.01)
    h.run(len(BOOTSTRAP_PIDS) + TREE_EVENTS)
    server = ProcessKey.of(4242, 1500 * NS_PER_TICK)

    def sampled() -> bool:
        info = h.table.get(server)
        return info is not None and info.sample is not None

    assert wait_until(sampled)
    h.stop()
    info = h.table.get(server)
    assert info is not None and info.sample is not None
    assert info.sample.fd_count == 4
    assert h.pipeline.status().sampler.sweeps >= 1
    assert h.stop_s is not None and h.stop_s < 2.0


def test_every_event_is_stamped_with_its_process_lineage(
    harnesses: list[Harness], cgroup_root: Path
) -> None:
    h = harness(harnesses, ReplaySource(TREE), cgroup_root)
    events = h.run(len(BOOTSTRAP_PIDS) + TREE_EVENTS)
    assert all(len(ev.trace_id or "") == 32 and len(ev.span_id or "") == 16 for ev in events)
    for ev in events:
        info = h.table.get(ev.key)
        assert info is not None
        assert (ev.trace_id, ev.span_id, ev.parent_span_id) == (
            info.trace_id,
            info.span_id,
            info.parent_span_id,
        )
    by_pid = {ev.pid: ev for ev in events if not ev.bootstrap}
    # bash is a child of the bootstrapped init: it roots the tree's trace.
    assert by_pid[100].parent_span_id is None
    assert by_pid[300].parent_span_id == by_pid[200].span_id
    assert {by_pid[p].trace_id for p in (100, 200, 300, 301, 400)} == {by_pid[100].trace_id}
