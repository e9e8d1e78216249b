"""ProcReader, the start-up walk and the polling source.

Parsing is checked against the checked-in fake tree in tests/fixtures/proc
(see its README for what each pid exercises), behaviour against the real
/proc of this test process and of children it spawns.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from otel_linnix.events import NS_PER_TICK, EventKind, ProcessEvent, ProcessKey, ProcessSource
from otel_linnix.sources.base import Source
from otel_linnix.sources.procfs import (
    FD_LIMIT_UNLIMITED,
    PAGE_SIZE,
    ProcReader,
    ProcStat,
    bootstrap_events,
    bootstrap_scan,
    boottime_ns,
)
from otel_linnix.sources.procfs_poll import ProcfsPollingSource

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "proc"
REPO = Path(__file__).resolve().parents[2]
TICK = NS_PER_TICK
DEADLINE_S = 10.0


@pytest.fixture
def fake() -> ProcReader:
    return ProcReader(str(FIXTURE))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A writable copy of the fake tree."""
    root = tmp_path / "proc"
    shutil.copytree(FIXTURE, root, symlinks=True)
    return root


def stat_line(pid: int, comm: str, ppid: int, start_ticks: int, *, utime: int = 4) -> str:
    fields = ["S", ppid, pid, pid, 0, -1, 4194304, 10, 0, 0, 0, utime, 1, 0, 0, 20, 0, 1, 0]
    fields += [start_ticks, 4096000, 50, 18446744073709551615] + [0] * 27
    return f"{pid} ({comm}) " + " ".join(map(str, fields)) + "\n"


def add_process(
    root: Path, pid: int, start_ticks: int, *, ppid: int = 1, comm: str = "new"
) -> None:
    """A new pid dir modelled on 5000 (uid 65534, argv sleep infinity).

    Built under a non-numeric name and renamed into place, so a polling
    thread never sees it half-written.
    """
    staging = root / f".new-{pid}"
    shutil.copytree(root / "5000", staging, symlinks=True)
    (staging / "stat").write_text(stat_line(pid, comm, ppid, start_ticks))
    staging.rename(root / str(pid))


# --- ProcReader on the fake tree ---------------------------------------------


def test_pids_lists_only_numeric_entries(fake: ProcReader) -> None:
    assert fake.pids() == [1, 2, 4242, 4300, 5000, 6000]


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        (1, ProcStat(1, "systemd", "S", 0, 1, 2 * TICK, 3000 * PAGE_SIZE, 180 * TICK, False)),
        (2, ProcStat(2, "kthreadd", "S", 0, 1, 2 * TICK, 0, 1 * TICK, True)),
        (
            4242,
            ProcStat(
                4242, "my (app) x)", "S", 1, 3, 1500 * TICK, 2560 * PAGE_SIZE, 300 * TICK, False
            ),
        ),
        (4300, ProcStat(4300, "worker", "Z", 4242, 1, 1600 * TICK, 0, 7 * TICK, False)),
        (
            5000,
            ProcStat(5000, "orphan", "S", 4999, 1, 1550 * TICK, 100 * PAGE_SIZE, 2 * TICK, False),
        ),
        (6000, None),  # empty read: exited while the file was rendered
        (7777, None),  # no such process
    ],
)
def test_stat(fake: ProcReader, pid: int, expected: ProcStat | None) -> None:
    assert fake.stat(pid) == expected


@pytest.mark.parametrize(
    ("pid", "expected"),
    [(1, (0, 0)), (4242, (1000, 100)), (5000, (65534, 65534)), (6000, None), (7777, None)],
)
def test_ids_are_the_real_columns(fake: ProcReader, pid: int, expected: object) -> None:
    assert fake.ids(pid) == expected


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        (1, ("/sbin/init", "splash")),
        (4242, ("/opt/app/bin/server", "--name", "", "caf\ufffd")),
        (2, ()),
        (4300, ()),
        (6000, None),
    ],
)
def test_cmdline(fake: ProcReader, pid: int, expected: tuple[str, ...] | None) -> None:
    assert fake.cmdline(pid) == expected


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        (1, "/usr/lib/systemd/systemd"),
        (4242, "/opt/app/bin/server"),
        (2, None),
        (4300, None),
        (7777, None),
    ],
)
def test_exe(fake: ProcReader, pid: int, expected: str | None) -> None:
    assert fake.exe(pid) == expected


@pytest.mark.parametrize(
    ("pid", "expected"), [(1, 3), (4242, 4), (5000, 1), (2, None), (4300, None)]
)
def test_fd_count(fake: ProcReader, pid: int, expected: int | None) -> None:
    assert fake.fd_count(pid) == expected


def test_fd_count_of_empty_fd_dir_is_zero(tree: Path) -> None:
    (tree / "2" / "fd").mkdir()
    assert ProcReader(str(tree)).fd_count(2) == 0


@pytest.mark.parametrize(
    ("pid", "expected"),
    [(1, 1024), (2, 1024), (4242, FD_LIMIT_UNLIMITED), (4300, 4096), (5000, None)],
)
def test_fd_soft_limit(fake: ProcReader, pid: int, expected: int | None) -> None:
    assert fake.fd_soft_limit(pid) == expected


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        (1, "/init.scope"),
        (2, "/"),
        (4242, "/system.slice/docker-0123abcd.scope"),
        (4300, "/system.slice/job-7.scope"),
        (5000, None),  # v1 lines only
        (6000, None),
    ],
)
def test_cgroup_v2_path(fake: ProcReader, pid: int, expected: str | None) -> None:
    assert fake.cgroup_v2_path(pid) == expected


def test_boot_id(fake: ProcReader) -> None:
    assert fake.boot_id() == "0b9b6b2e-5c1a-4d2e-9f8e-3a1c2b4d5e6f"


def test_long_cmdline_is_read_whole(tree: Path) -> None:
    argv = tuple(f"arg{i:05d}" for i in range(3000))
    (tree / "5000" / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    assert ProcReader(str(tree)).cmdline(5000) == argv


def test_cmdline_keeps_an_empty_last_argument(tree: Path) -> None:
    (tree / "5000" / "cmdline").write_bytes(b"printf\0%s\0\0")
    assert ProcReader(str(tree)).cmdline(5000) == ("printf", "%s", "")


# --- ProcReader on the real /proc ----------------------------------------------


@pytest.fixture
def real() -> ProcReader:
    return ProcReader()


def test_real_start_time_agrees_with_psutil(real: ProcReader) -> None:
    me = psutil.Process()
    since_boot_ns = (me.create_time() - psutil.boot_time()) * 1e9
    stat = real.stat(os.getpid())
    assert stat is not None
    assert abs(stat.start_time_ns - since_boot_ns) <= TICK


def test_real_start_time_is_boottime(real: ProcReader) -> None:
    before = boottime_ns()
    child = subprocess.Popen(["sleep", "30"])
    after = boottime_ns()
    try:
        stat = real.stat(child.pid)
        assert stat is not None
        assert before - TICK <= stat.start_time_ns <= after
        assert stat.ppid == os.getpid()
        assert stat.comm == "sleep"
    finally:
        child.kill()
        child.wait()


def test_real_ids(real: ProcReader) -> None:
    assert real.ids(os.getpid()) == (os.getuid(), os.getgid())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a child as another user")
def test_real_ids_of_another_user(real: ProcReader) -> None:
    child = subprocess.Popen(["sleep", "30"], user=65534, group=65533)
    try:
        assert real.ids(child.pid) == (65534, 65533)
    finally:
        child.kill()
        child.wait()


def test_real_fd_count_follows_open_files(real: ProcReader) -> None:
    before = real.fd_count(os.getpid())
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(10)]
    try:
        assert before is not None
        assert real.fd_count(os.getpid()) == before + 10
    finally:
        for fd in fds:
            os.close(fd)
    assert real.fd_count(os.getpid()) == before


def test_real_cmdline_and_exe(real: ProcReader) -> None:
    me = psutil.Process()
    assert real.cmdline(os.getpid()) == tuple(me.cmdline())
    assert real.exe(os.getpid()) == me.exe() == os.path.realpath(sys.executable)


def test_real_fd_soft_limit_follows_setrlimit(real: ProcReader) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert real.fd_soft_limit(os.getpid()) == soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))
    try:
        assert real.fd_soft_limit(os.getpid()) == soft - 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return left.split()[4]
    return None


def test_real_cgroup_v2_path_exists_under_the_mount(real: ProcReader) -> None:
    mount = _cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    path = real.cgroup_v2_path(os.getpid())
    assert path is not None
    assert path.startswith("/")
    assert os.path.isdir(mount + path)


def test_real_boot_id(real: ProcReader) -> None:
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", real.boot_id()
    )


def test_real_kernel_thread(real: ProcReader) -> None:
    stat = real.stat(2)
    if stat is None or stat.comm != "kthreadd":
        pytest.skip("pid 2 is not kthreadd here (pid namespace)")
    assert stat.kernel_thread
    assert real.cmdline(2) == ()
    assert real.exe(2) is None
    own = real.stat(os.getpid())
    assert own is not None
    assert not own.kernel_thread


def test_real_zombie_then_reaped(real: ProcReader) -> None:
    child = subprocess.Popen(["true"])
    try:
        # Wait for the exit without reaping: the child stays a zombie.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        stat = real.stat(child.pid)
        assert stat is not None
        assert stat.state == "Z"
        assert real.cmdline(child.pid) == ()
        assert real.exe(child.pid) is None
    finally:
        child.wait()
    # Reaped: every read answers None instead of raising.
    pid = child.pid
    assert real.stat(pid) is None
    assert real.ids(pid) is None
    assert real.cmdline(pid) is None
    assert real.exe(pid) is None
    assert real.fd_count(pid) is None
    assert real.fd_soft_limit(pid) is None
    assert real.cgroup_v2_path(pid) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a reader as an unprivileged user")
def test_real_permission_denied_is_none() -> None:
    script = (
        "from otel_linnix.sources.procfs import ProcReader\n"
        "r = ProcReader()\n"
        "print(r.exe(1), r.fd_count(1), r.stat(1) is not None)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        user=65534,
        group=65534,
        env={"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE_S,
    )
    assert result.stdout.split() == ["None", "None", "True"]


# --- bootstrap ----------------------------------------------------------------


def test_bootstrap_orders_parents_first_and_links_them(fake: ProcReader) -> None:
    events = bootstrap_events(fake, now_ns=123)
    assert [(e.pid, e.parent_start_time_ns) for e in events] == [
        (1, None),
        (2, None),
        (4242, 2 * TICK),
        (5000, None),  # parent 4999 is not in the tree
        (4300, 1500 * TICK),
    ]
    assert all(
        e.kind is EventKind.EXEC
        and e.bootstrap
        and e.source is ProcessSource.PROCFS
        and e.ts_ns == 123
        for e in events
    )
    assert [e.pid for e in events if e.kernel_thread] == [2]


def test_bootstrap_event_fields(fake: ProcReader) -> None:
    by_pid = {e.pid: e for e in bootstrap_events(fake, now_ns=5)}
    assert by_pid[4242] == ProcessEvent(
        kind=EventKind.EXEC,
        ts_ns=5,
        pid=4242,
        ppid=1,
        start_time_ns=1500 * TICK,
        comm="my (app) x)",
        uid=1000,
        gid=100,
        parent_start_time_ns=2 * TICK,
        cgroup_id=0,
        source=ProcessSource.PROCFS,
        exe="/opt/app/bin/server",
        argv=("/opt/app/bin/server", "--name", "", "caf\ufffd"),
        bootstrap=True,
    )
    assert by_pid[2].argv == ()
    assert by_pid[2].exe is None


def test_bootstrap_cgroup_paths_by_key(fake: ProcReader) -> None:
    scan = bootstrap_scan(fake, now_ns=1)
    assert dict(scan.cgroup_paths) == {
        ProcessKey(1, 2 * TICK): "/init.scope",
        ProcessKey(2, 2 * TICK): "/",
        ProcessKey(4242, 1500 * TICK): "/system.slice/docker-0123abcd.scope",
        ProcessKey(4300, 1600 * TICK): "/system.slice/job-7.scope",
    }
    assert list(scan.events) == bootstrap_events(fake, now_ns=1)


def test_bootstrap_does_not_link_a_parent_younger_than_its_child(tree: Path) -> None:
    # 4242's pid now names a process started after 4300: not 4300's parent.
    (tree / "4242" / "stat").write_text(stat_line(4242, "reused", 1, 1700))
    by_pid = {e.pid: e for e in bootstrap_events(ProcReader(str(tree)), now_ns=1)}
    assert by_pid[4300].parent_start_time_ns is None
    assert [e.pid for e in bootstrap_events(ProcReader(str(tree)), now_ns=1)][-1] == 4242


class _ReusedMidRead(ProcReader):
    """Answers a newer start time for ``pid`` from the second stat read on."""

    def __init__(self, root: str, pid: int) -> None:
        super().__init__(root)
        self._pid = pid
        self._reads = 0

    def stat(self, pid: int) -> ProcStat | None:
        stat = super().stat(pid)
        if pid != self._pid or stat is None:
            return stat
        self._reads += 1
        if self._reads == 1:
            return stat
        return ProcStat(pid, "other", "R", 1, 1, stat.start_time_ns + TICK, 0, 0, False)


def test_bootstrap_skips_a_pid_reused_during_the_walk() -> None:
    events = bootstrap_events(_ReusedMidRead(str(FIXTURE), 4242), now_ns=1)
    assert [e.pid for e in events] == [1, 2, 5000, 4300]


# --- polling source -------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 1_000

    def __call__(self) -> int:
        self.now_ns += 1_000
        return self.now_ns


class RecordingSink:
    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[list[ProcessEvent]] = []
        self._fail_first = fail_first
        self._calls = 0
        self._cond = threading.Condition()

    def handle_batch(self, events: Sequence[ProcessEvent]) -> None:
        with self._cond:
            self._calls += 1
            self._cond.notify_all()
            if self._calls <= self._fail_first:
                raise RuntimeError("sink down")
            self.batches.append(list(events))

    def wait_for(self, predicate: Callable[[list[ProcessEvent]], bool]) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: predicate([e for b in self.batches for e in b]), DEADLINE_S
            )

    def wait_calls(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._calls >= n, DEADLINE_S)


@pytest.fixture
def poller(tree: Path) -> Iterator[ProcfsPollingSource]:
    source = ProcfsPollingSource(ProcReader(str(tree)), interval_s=0.01, clock=FakeClock())
    yield source
    source.stop(timeout_s=DEADLINE_S)


def test_polling_source_satisfies_the_protocol(poller: ProcfsPollingSource) -> None:
    source: Source = poller
    assert source.kind is ProcessSource.PROCFS


def test_first_scan_is_only_a_baseline(poller: ProcfsPollingSource) -> None:
    assert poller.cpu_times_ns() == {}
    assert poller.scan_once() == []
    assert poller.stats().drains == 1
    assert poller.stats().events == 0
    assert poller.cpu_times_ns() == {
        1: 180 * TICK,
        2: 1 * TICK,
        4242: 300 * TICK,
        4300: 7 * TICK,
        5000: 2 * TICK,
    }
    assert poller.scan_once() == []  # nothing changed


def test_new_process_is_one_exec(tree: Path, poller: ProcfsPollingSource) -> None:
    poller.scan_once()
    add_process(tree, 7000, 2000, ppid=4242, comm="child")
    assert poller.scan_once() == [
        ProcessEvent(
            kind=EventKind.EXEC,
            ts_ns=3_000,
            pid=7000,
            ppid=4242,
            start_time_ns=2000 * TICK,
            comm="child",
            uid=65534,
            gid=65534,
            parent_start_time_ns=1500 * TICK,
            source=ProcessSource.PROCFS,
            exe="/usr/bin/sleep",
            argv=("sleep", "infinity"),
        )
    ]
    assert poller.scan_once() == []
    assert poller.stats().events == 1
    assert poller.cpu_times_ns()[7000] == 5 * TICK


def test_vanished_process_is_one_exit(tree: Path, poller: ProcfsPollingSource) -> None:
    poller.scan_once()
    shutil.rmtree(tree / "5000")
    assert poller.scan_once() == [
        ProcessEvent(
            kind=EventKind.EXIT,
            ts_ns=3_000,
            pid=5000,
            ppid=4999,
            start_time_ns=1550 * TICK,
            comm="orphan",
            uid=65534,
            gid=65534,
            source=ProcessSource.PROCFS,
            exit_code=None,
            exit_signal=None,
        )
    ]
    assert 5000 not in poller.cpu_times_ns()
    assert poller.scan_once() == []


def test_reused_pid_is_exit_then_exec(tree: Path, poller: ProcfsPollingSource) -> None:
    poller.scan_once()
    (tree / "4242" / "stat").write_text(stat_line(4242, "reborn", 1, 3000))
    add_process(tree, 3000, 2500)  # another new process, in the same batch
    batch = poller.scan_once()
    assert [(e.kind, e.key) for e in batch] == [
        (EventKind.EXIT, ProcessKey(4242, 1500 * TICK)),
        (EventKind.EXEC, ProcessKey(3000, 2500 * TICK)),
        (EventKind.EXEC, ProcessKey(4242, 3000 * TICK)),
    ]
    assert batch[0].comm == "my (app) x)"
    assert batch[0].uid == 1000
    assert batch[2].comm == "reborn"
    assert not any(e.bootstrap for e in batch)


def test_rejects_a_non_positive_interval(fake: ProcReader) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        ProcfsPollingSource(fake, interval_s=0)


def _poll_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "linnix-procfs-poll"]


def test_thread_delivers_a_batch_and_stops(tree: Path, poller: ProcfsPollingSource) -> None:
    sink = RecordingSink()
    poller.scan_once()  # baseline before the thread runs
    add_process(tree, 7000, 2000)
    poller.start(sink)
    poller.start(sink)  # idempotent: still one thread
    assert len(_poll_threads()) == 1
    assert sink.wait_for(lambda events: [e.pid for e in events] == [7000])
    assert sink.batches[0][0].kind is EventKind.EXEC
    poller.stop(timeout_s=DEADLINE_S)
    assert _poll_threads() == []
    poller.stop(timeout_s=DEADLINE_S)  # idempotent
    assert poller.stats().drains >= 2
    with pytest.raises(RuntimeError, match="restarted"):
        poller.start(sink)


def test_stop_interrupts_the_interval_wait(tree: Path) -> None:
    source = ProcfsPollingSource(ProcReader(str(tree)), interval_s=3600, clock=FakeClock())
    source.start(RecordingSink())
    began = time.monotonic()
    source.stop(timeout_s=DEADLINE_S)
    assert time.monotonic() - began < DEADLINE_S / 2
    assert _poll_threads() == []


def test_a_failing_sink_is_counted_and_polling_goes_on(
    tree: Path, poller: ProcfsPollingSource
) -> None:
    sink = RecordingSink(fail_first=1)
    poller.scan_once()
    add_process(tree, 7000, 2000)
    poller.start(sink)
    assert sink.wait_calls(1)
    add_process(tree, 7001, 2001)
    assert sink.wait_for(lambda events: [e.pid for e in events] == [7001])
    poller.stop(timeout_s=DEADLINE_S)
    assert poller.stats().lost == {"sink_error": 1}


class _FailingOnce(ProcReader):
    """A /proc whose listing fails once (as with EMFILE), after the baseline."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.listings = 0
        self.failed = threading.Event()

    def pids(self) -> list[int]:
        self.listings += 1
        if self.listings == 2:
            self.failed.set()
            raise OSError(24, "Too many open files")
        return super().pids()


def test_a_failed_scan_is_caught_up_by_the_next(tree: Path) -> None:
    reader = _FailingOnce(str(tree))
    source = ProcfsPollingSource(reader, interval_s=0.01, clock=FakeClock())
    sink = RecordingSink()
    source.scan_once()
    add_process(tree, 7000, 2000)
    try:
        source.start(sink)
        assert reader.failed.wait(DEADLINE_S)
        assert sink.wait_for(lambda events: [e.pid for e in events] == [7000])
    finally:
        source.stop(timeout_s=DEADLINE_S)
    assert source.stats().lost == {}


def test_real_scan_cpu_times() -> None:
    source = ProcfsPollingSource(ProcReader(), interval_s=1)
    source.scan_once()
    times = psutil.Process().cpu_times()
    assert 0 < source.cpu_times_ns()[os.getpid()] <= (times.user + times.system) * 1e9 + TICK


def test_thread_on_real_proc_sees_a_child_start_and_exit() -> None:
    source = ProcfsPollingSource(ProcReader(), interval_s=0.02)
    sink = RecordingSink()
    source.scan_once()
    child = subprocess.Popen(["sleep", "30"])
    try:
        source.start(sink)
        assert sink.wait_for(lambda es: any(e.pid == child.pid for e in es))
        child.kill()
        child.wait()
        assert sink.wait_for(
            lambda es: (
                [e.kind for e in es if e.pid == child.pid] == [EventKind.EXEC, EventKind.EXIT]
            )
        )
    finally:
        child.kill()
        child.wait()
        source.stop(timeout_s=DEADLINE_S)
    mine = [e for b in sink.batches for e in b if e.pid == child.pid]
    assert mine[0].key == mine[1].key
    assert mine[0].argv == ("sleep", "30")
    assert mine[0].parent_start_time_ns is not None
    assert mine[0].ppid == os.getpid()
