"""Acceptance of kernel capture: every process, with the right facts, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from otel_linnix.config import CaptureConfig
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey
from otel_linnix.process_table import ProcessSample
from tests.kernel.conftest import Agent

pytestmark = pytest.mark.kernel


def _expected(outcome: str) -> tuple[int | None, int | None]:
    """(exit status, signal) the spawner's child was told to end with."""
    n = int(outcome[1:])
    return (n, None) if outcome[0] == "e" else (None, n)


Seen = dict[EventKind, dict[int, list[ProcessEvent]]]


def _spawn(
    agent: Agent, workloads: dict[str, Path], count: int, tag: str
) -> tuple[dict[int, list[str]], Seen]:
    """Run the spawner for ``count`` children and wait for every exit: its truth
    (pid -> ppid, index, outcome, wait status) and what the agent saw of them."""
    out = subprocess.run(
        [str(workloads["spawner"]), str(count), "2", str(workloads["child"]), tag],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    truth = {int(f[0]): f[1:] for f in (line.split() for line in out.splitlines())}
    assert len(truth) == count
    pids = set(truth)
    agent.collector.wait_for(
        lambda evs: pids <= {e.pid for e in evs if e.kind is EventKind.EXIT}, timeout_s=30
    )
    return truth, agent.collector.by_kind(pids)


def test_2000_short_lived_processes_all_captured(
    agent: Agent, workloads: dict[str, Path], tag: str
) -> None:
    lost_before = agent.lost_total()
    spawned, seen = _spawn(agent, workloads, 2000, tag)
    pids = set(spawned)
    wrong: list[tuple[object, ...]] = []
    for pid, (f_ppid, index, outcome, f_status) in spawned.items():
        ppid, wait_status = int(f_ppid), int(f_status)
        execs = [e for e in seen[EventKind.EXEC][pid] if e.argv and tag in e.argv]
        exits = seen[EventKind.EXIT][pid]
        forks = seen[EventKind.FORK][pid]
        status, sig = _expected(outcome)
        if not (len(forks) == 1 and len(execs) == 1 and len(exits) == 1):
            wrong.append((pid, "counts", len(forks), len(execs), len(exits)))
            continue
        exe, ex = execs[0], exits[0]
        if exe.argv != (str(workloads["child"]), tag, index, outcome):
            wrong.append((pid, "argv", exe.argv))
        if exe.ppid != ppid or forks[0].ppid != ppid or ex.ppid != ppid:
            wrong.append((pid, "ppid", exe.ppid, forks[0].ppid, ex.ppid, ppid))
        if (ex.exit_code, ex.exit_signal) != (status, sig):
            wrong.append((pid, "exit", ex.exit_code, ex.exit_signal, outcome))
        if ex.core_dumped != bool(wait_status & 0x80):
            wrong.append((pid, "core", ex.core_dumped, wait_status))
        if exe.key != ex.key or forks[0].key != ex.key:
            wrong.append((pid, "identity", forks[0].key, exe.key, ex.key))
    assert wrong == []
    assert agent.lost_total() == lost_before
    segv = [e for pid in pids for e in seen[EventKind.EXIT][pid] if e.exit_signal == 11]
    assert len(segv) == sum(1 for i in range(2000) if i % 9 == 8)


def test_threads_are_not_processes(agent: Agent, workloads: dict[str, Path]) -> None:
    proc = subprocess.Popen([str(workloads["threads"]), "50", "1"])
    assert proc.wait(timeout=20) == 0
    agent.collector.wait_for(
        lambda evs: any(e.pid == proc.pid and e.kind is EventKind.EXIT for e in evs)
    )
    mine = agent.collector.of_pid(proc.pid)
    kinds = sorted(e.kind.value for e in mine)
    assert kinds == ["exec", "exit", "fork"]
    # No thread of it appears as a process: nothing forked with it as parent.
    children = [e for e in agent.collector.events if e.ppid == proc.pid]
    assert children == []
    info = agent.table.get(mine[0].key)
    assert info is not None and info.exited and info.exit_code == 0
    assert agent.table.children(mine[0].key) == []


def _unique_seconds(base: int) -> str:
    """A sleep duration no other process in the test run has: it tags the argv."""
    return f"{base}.{uuid.uuid4().int % 10**9:09d}"


def test_three_level_tree_is_linked(agent: Agent) -> None:
    tag = _unique_seconds(2)
    # The trailing `; true` stops the shells from exec-ing their last command.
    outer = subprocess.Popen(["sh", "-c", f'sh -c "sleep {tag}; true"; true'])
    try:
        events = agent.collector.wait_for(
            lambda evs: any(e.kind is EventKind.EXEC and e.argv and tag in e.argv for e in evs)
        )
        sleep_ev = next(e for e in events if e.kind is EventKind.EXEC and e.argv and tag in e.argv)
        chain = agent.table.ancestors(sleep_ev.key)
        assert [p.comm for p in chain[:2]] == ["sh", "sh"]
        assert chain[1].pid == outer.pid
        assert chain[2].pid == os.getpid()
        assert chain[0].ppid == outer.pid
        below = {info.pid: depth for info, depth in agent.table.descendants(chain[1].key)}
        assert below == {chain[0].pid: 1, sleep_ev.pid: 2}
    finally:
        outer.kill()
        outer.wait()


def test_cpu_time_matches_proc(agent: Agent) -> None:
    hog = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    def proc_cpu_ns() -> int:
        with open(f"/proc/{hog.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * tick_ns

    try:
        deadline = time.monotonic() + 20
        while proc_cpu_ns() < 2_000_000_000:  # let it accumulate two seconds on a CPU
            assert time.monotonic() < deadline, "the busy loop did not get CPU time"
            time.sleep(0.05)
        cpu = agent.source.cpu_times_ns()
        proc_ns = proc_cpu_ns()
        assert cpu is not None
        assert abs(cpu[hog.pid] - proc_ns) <= 0.05 * proc_ns
        sample = _sample_of(agent, hog.pid)
        assert sample.cpu_time_ns is not None
        assert abs(sample.cpu_time_ns - proc_cpu_ns()) <= 0.05 * proc_ns
    finally:
        hog.kill()
        hog.wait()


def _sample_of(agent: Agent, pid: int) -> ProcessSample:
    agent.pipeline.sampler.sweep()
    info = agent.table.find_pid(pid)
    assert info is not None and info.sample is not None
    return info.sample


def test_rss_and_fds_sampled_exactly(agent: Agent, tmp_path: Path) -> None:
    script = (
        "import sys, os\n"
        "block = bytearray(64 << 20)\n"
        "for i in range(0, len(block), 4096): block[i] = 1\n"
        f"files = [open(os.path.join({str(tmp_path)!r}, f'f{{i}}'), 'w') for i in range(100)]\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        agent.collector.wait_for(lambda evs: any(e.pid == proc.pid for e in evs))
        sample = _sample_of(agent, proc.pid)
        with open(f"/proc/{proc.pid}/statm") as fh:
            resident = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = os.listdir(f"/proc/{proc.pid}/fd")
        assert sample.rss_bytes is not None and resident > 64 << 20
        assert abs(sample.rss_bytes - resident) <= 0.05 * resident
        assert sample.fd_count == len(fds)
        held = [f for f in fds if os.readlink(f"/proc/{proc.pid}/fd/{f}").startswith(str(tmp_path))]
        assert len(held) == 100
        limits = Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
        soft = next(line.split()[3] for line in limits if line.startswith("Max open files"))
        assert sample.fd_limit == int(soft)
        assert sample.threads == 1 and sample.state in {"S", "R"}
    finally:
        proc.kill()
        proc.communicate()


def test_pid_reuse_gives_distinct_entries(agent: Agent) -> None:
    first_tag, second_tag = _unique_seconds(0), _unique_seconds(30)
    first = subprocess.Popen(["sleep", first_tag])
    first.wait()
    pid = first.pid
    second = None
    for _ in range(200):  # another fork on the host may take the pid first; retry
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        candidate = subprocess.Popen(["sleep", second_tag])
        if candidate.pid == pid:
            second = candidate
            break
        candidate.kill()
        candidate.wait()
    assert second is not None, "could not make the kernel reuse the pid"
    try:
        events = agent.collector.wait_for(
            lambda evs: (
                {first_tag, second_tag}
                <= {
                    e.argv[1]
                    for e in evs
                    if e.pid == pid and e.kind is EventKind.EXEC and e.argv and len(e.argv) == 2
                }
            )
        )
        keys = {
            e.argv[1]: e.key
            for e in events
            if e.pid == pid and e.kind is EventKind.EXEC and e.argv and len(e.argv) == 2
        }
        old, new = agent.table.get(keys[first_tag]), agent.table.get(keys[second_tag])
        assert old is not None and new is not None
        assert old.key != new.key and old.key.pid == new.key.pid == pid
        assert old.key.start_time_ns < new.key.start_time_ns
        assert old.exited and old.exit_code == 0 and not old.exit_inferred
        assert not new.exited
        assert agent.table.find_pid(pid) == new
    finally:
        second.kill()
        second.wait()


def test_process_started_before_agent_is_bootstrapped(needs_ebpf: None) -> None:
    tag = _unique_seconds(30)
    parent = subprocess.Popen(["sh", "-c", f"sleep {tag}; true"])
    try:
        # Wait until the child has exec'd, so the walk sees its final argv.
        for _ in range(200):
            kids = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
            if kids and tag in Path(f"/proc/{kids[0]}/cmdline").read_text():
                break
            time.sleep(0.02)
        child_pid = int(kids[0])
        with Agent() as fresh:
            info = fresh.table.find_pid(child_pid)
            assert info is not None and info.bootstrap
            assert info.argv == ("sleep", tag)
            assert info.ppid == parent.pid
            parent_info = fresh.table.find_pid(parent.pid)
            assert parent_info is not None
            assert info.parent_key == parent_info.key
            assert [c.pid for c in fresh.table.children(parent_info.key)] == [child_pid]
    finally:
        parent.kill()
        parent.wait()


def test_exit_carries_cpu_time_and_peak_rss(agent: Agent) -> None:
    script = "b = bytearray(40 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
    proc = subprocess.Popen([sys.executable, "-c", script])
    assert proc.wait(timeout=20) == 0
    events = agent.collector.wait_for(
        lambda evs: any(e.kind is EventKind.EXIT and e.pid == proc.pid for e in evs)
    )
    ex = next(e for e in events if e.kind is EventKind.EXIT and e.pid == proc.pid)
    assert ex.exit_code == 0 and ex.exit_signal is None
    assert ex.peak_rss_bytes is not None and ex.peak_rss_bytes > 40 << 20
    assert ex.cpu_time_ns is not None and ex.cpu_time_ns > 1_000_000
    assert ex.key == ProcessKey.of(ex.pid, ex.start_time_ns)


def test_full_ring_buffer_counts_every_loss_and_keeps_every_exit(
    needs_ebpf: None, workloads: dict[str, Path], tag: str
) -> None:
    # A ring far too small for the burst and a consumer that drains once a
    # second without early wakeups: records must be lost, all of them counted,
    # and no exit may be lost (exits wait in the overflow map).
    tiny = CaptureConfig(ring_buffer_kib=64, drain_interval_ms=1000, wakeup_every=1_000_000)
    with Agent(tiny) as small:
        spawned, seen = _spawn(small, workloads, 1500, tag)
        pids = set(spawned)
        counters = small.source.kernel_counters()
        stats = small.source.stats()
    assert counters["exits_parked"] > 0
    assert stats.lost["exit"] == 0
    assert all(len(seen[EventKind.EXIT][pid]) == 1 for pid in pids)
    lost_execs = len(pids) - len(seen[EventKind.EXEC])
    lost_forks = len(pids) - len(seen[EventKind.FORK])
    assert lost_execs + lost_forks > 0, "the burst should have overrun the tiny ring"
    # Every missing record of ours is in the counters (which may also count
    # records of unrelated processes lost in the same burst).
    assert stats.lost["exec"] >= lost_execs
    assert stats.lost["fork"] >= lost_forks


def test_exec_through_a_descriptor_names_the_program(agent: Agent) -> None:
    """fexecve() hands the kernel /dev/fd/N; the event names the file behind it."""
    tag = _unique_seconds(3)
    script = (
        "import os; fd = os.open('/usr/bin/sleep', os.O_RDONLY); "
        f"os.execve(fd, ['sleep', '{tag}'], {{}})"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        events = agent.collector.wait_for(
            lambda evs: any(e.kind is EventKind.EXEC and e.argv and tag in e.argv for e in evs)
        )
        ev = next(e for e in events if e.kind is EventKind.EXEC and e.argv and tag in e.argv)
        assert ev.pid == child.pid
        assert ev.exe == os.path.realpath("/usr/bin/sleep")
        info = agent.table.get(ev.key)
        assert info is not None and info.exe == ev.exe
    finally:
        child.kill()
        child.wait()


def test_a_ring_that_wraps_around_loses_nothing(
    needs_ebpf: None, workloads: dict[str, Path], tag: str
) -> None:
    # 1 MiB of ring for about 1.8 MB of records: the consumer position passes
    # the end of the data area and records wrapping it must arrive whole.
    small = CaptureConfig(ring_buffer_kib=1024, drain_interval_ms=20, wakeup_every=16)
    with Agent(small) as agent:
        assert agent.source.ring_consumer == "mmap"
        spawned, seen = _spawn(agent, workloads, 2000, tag)
        ring = agent.source._ring
        assert ring is not None and ring.position > 1024 * 1024
        lost = agent.lost_total()
    assert lost == 0
    for pid, (_ppid, index, _outcome, _status) in spawned.items():
        execs = [e for e in seen[EventKind.EXEC][pid] if e.argv and tag in e.argv]
        assert len(seen[EventKind.FORK][pid]) == 1, pid
        assert len(execs) == 1 and execs[0].argv is not None and execs[0].argv[2] == index, pid
        assert len(seen[EventKind.EXIT][pid]) == 1, pid


def test_bccs_ring_consumer_still_captures_everything(
    needs_ebpf: None, workloads: dict[str, Path], tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the direct reader is not used (CPUs with weaker memory ordering
    than x86-64), bcc's callback consumer reads the same records."""
    monkeypatch.setattr("otel_linnix.sources.bpf.direct_ring_supported", lambda: False)
    with Agent() as agent:
        assert agent.source.ring_consumer == "bcc"
        spawned, seen = _spawn(agent, workloads, 300, tag)
        pids = set(spawned)
        lost = agent.lost_total()
    assert lost == 0
    assert all(len(seen[EventKind.FORK][pid]) == 1 for pid in pids)
    assert all(len(seen[EventKind.EXIT][pid]) == 1 for pid in pids)
    assert sum(len(v) for v in seen[EventKind.EXEC].values()) >= len(pids)
