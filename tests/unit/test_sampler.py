"""The sampler against a scripted ProcReader and a fake clock."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping

import pytest

from otel_linnix.events import NS_PER_TICK, EventKind, ProcessKey
from otel_linnix.process_table import ProcessTable
from otel_linnix.sampler import Sampler
from otel_linnix.sources.procfs import ProcReader, ProcStat
from tests.unit.conftest import PROC_FIXTURE, make_event

S = 1_000_000_000
MS = 1_000_000


class ScriptedReader(ProcReader):
    """A ProcReader whose answers the test sets, counting every read."""

    def __init__(self) -> None:
        super().__init__(root="/nonexistent")
        self.stats: dict[int, ProcStat] = {}
        self.fd_counts: dict[int, int] = {}
        self.fd_limits: dict[int, int] = {}
        self.stat_reads: list[int] = []
        self.limit_reads: collections.Counter[int] = collections.Counter()
        self.fd_reads: collections.Counter[int] = collections.Counter()

    def add(
        self, pid: int, start_ticks: int, *, cpu_ns: int = 0, fds: int = 4, fd_limit: int = 1024
    ) -> ProcessKey:
        self.stats[pid] = ProcStat(
            pid=pid,
            comm=f"p{pid}",
            state="S",
            ppid=1,
            num_threads=2,
            start_time_ns=start_ticks * NS_PER_TICK,
            rss_bytes=8192 * pid,
            cpu_time_ns=cpu_ns,
            kernel_thread=False,
        )
        self.fd_counts[pid] = fds
        self.fd_limits[pid] = fd_limit
        return ProcessKey.of(pid, start_ticks * NS_PER_TICK)

    def set_cpu(self, pid: int, cpu_ns: int) -> None:
        self.stats[pid] = dataclasses.replace(self.stats[pid], cpu_time_ns=cpu_ns)

    def stat(self, pid: int) -> ProcStat | None:
        self.stat_reads.append(pid)
        return self.stats.get(pid)

    def fd_count(self, pid: int) -> int | None:
        self.fd_reads[pid] += 1
        return self.fd_counts.get(pid)

    def fd_soft_limit(self, pid: int) -> int | None:
        self.limit_reads[pid] += 1
        return self.fd_limits.get(pid)


class FakeClock:
    def __init__(self, now_ns: int = 100 * S) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


class KernelCpu:
    """Stands in for the kernel source's per-process CPU map."""

    def __init__(self) -> None:
        self.values: dict[int, int] | None = None

    def __call__(self) -> Mapping[int, int] | None:
        return self.values


@pytest.fixture
def reader() -> ScriptedReader:
    return ScriptedReader()


@pytest.fixture
def table() -> ProcessTable:
    return ProcessTable()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kernel_cpu() -> KernelCpu:
    return KernelCpu()


def track(table: ProcessTable, key: ProcessKey) -> None:
    table.apply(make_event(EventKind.EXEC, key.pid, key.start_time_ns, comm=f"p{key.pid}"))


def sampler_for(
    reader: ScriptedReader, table: ProcessTable, clock: FakeClock, kernel_cpu: KernelCpu, **kw: int
) -> Sampler:
    return Sampler(reader, table, kernel_cpu, clock, **kw)


def test_cpu_percent_from_two_sweeps(
    reader: ScriptedReader, table: ProcessTable, clock: FakeClock, kernel_cpu: KernelCpu
) -> None:
    key = reader.add(10, 500, cpu_ns=2 * S, fds=7, fd_limit=4096)
    track(table, key)
    sampler = sampler_for(reader, table, clock, kernel_cpu)

    first = sampler.sweep()
    assert (first.sampled, first.vanished, first.sweeps) == (1, 0, 1)
    info = table.get(key)
    assert info is not None and info.sample is not None
    assert info.sample.cpu_percent is None  # one reading is not a rate
    assert (info.sample.ts_ns, info.sample.cpu_time_ns) == (clock.now_ns, 2 * S)
    assert (info.sample.rss_bytes, info.sample.fd_count, info.sample.fd_limit) == (
        8192 * 10,
        7,
        4096,
    )
    assert (info.sample.threads, info.sample.state) == (2, "S")

    clock.now_ns += 1 * S
    reader.set_cpu(10, 2 * S + 500 * MS)
    sampler.sweep()
    info = table.get(key)
    assert info is not None and info.sample is not None
    assert info.sample.cpu_percent == pytest.approx(50.0)
    assert sampler.last.sweeps == 2


def test_more_than_one_core_is_more_than_100_percent(
    reader: ScriptedReader,
    table: ProcessTable,
    clock: FakeClock,
    kernel_cpu: KernelCpu,
) -> None:
    key = reader.add(10, 500, cpu_ns=0)
    track(table, key)
    sampler = sampler_for(reader, table, clock, kernel_cpu)
    sampler.sweep()
    clock.now_ns += S // 2
    reader.set_cpu(10, 1 * S)
    sampler.sweep()
    info = table.get(key)
    assert info is not None and info.sample is not None
    assert info.sample.cpu_percent == pytest.approx(200.0)


def test_kernel_cpu_time_is_preferred_when_larger(
    reader: ScriptedReader,
    table: ProcessTable,
    clock: FakeClock,
    kernel_cpu: KernelCpu,
) -> None:
    busy = reader.add(10, 500, cpu_ns=1 * S)
    idle = reader.add(11, 500, cpu_ns=1 * S)
    track(table, busy)
    track(table, idle)
    sampler = sampler_for(reader, table, clock, kernel_cpu)
    kernel_cpu.values = {10: 1 * S, 11: 1 * S}
    sampler.sweep()

    clock.now_ns += 1 * S
    reader.set_cpu(10, 1 * S + 300 * MS)  # /proc lags: ticks only, and not yet updated
    reader.set_cpu(11, 1 * S + 200 * MS)
    kernel_cpu.values = {10: 1 * S + 800 * MS, 11: 1 * S + 100 * MS}
    sampler.sweep()

    busy_info, idle_info = table.get(busy), table.get(idle)
    assert busy_info is not None and busy_info.sample is not None
    assert idle_info is not None and idle_info.sample is not None
    assert busy_info.sample.cpu_time_ns == 1 * S + 800 * MS
    assert busy_info.sample.cpu_percent == pytest.approx(80.0)
    assert idle_info.sample.cpu_time_ns == 1 * S + 200 * MS  # the kernel value is smaller
    assert idle_info.sample.cpu_percent == pytest.approx(20.0)


def test_reused_or_gone_pids_are_vanished_and_not_sampled(
    reader: ScriptedReader,
    table: ProcessTable,
    clock: FakeClock,
    kernel_cpu: KernelCpu,
) -> None:
    alive = reader.add(10, 500)
    reused = ProcessKey.of(11, 500 * NS_PER_TICK)
    reader.add(11, 900)  # pid 11 now names a process started later
    gone = ProcessKey.of(12, 500 * NS_PER_TICK)  # no stat at all
    for key in (alive, reused, gone):
        track(table, key)
    sampler = sampler_for(reader, table, clock, kernel_cpu)

    stats = sampler.sweep()
    assert (stats.sampled, stats.vanished) == (1, 2)
    sampled = {}
    for key in (alive, reused, gone):
        info = table.get(key)
        assert info is not None  # still in the table: only the sampler saw it go
        sampled[key.pid] = info.sample is not None
    assert sampled == {10: True, 11: False, 12: False}
    assert reader.limit_reads[11] == 0


def test_fd_limit_is_reread_only_every_refresh_sweeps(
    reader: ScriptedReader,
    table: ProcessTable,
    clock: FakeClock,
    kernel_cpu: KernelCpu,
) -> None:
    key = reader.add(10, 500, fd_limit=1024)
    track(table, key)
    sampler = sampler_for(reader, table, clock, kernel_cpu, fd_limit_refresh_sweeps=3)
    seen: list[int | None] = []
    for sweep in range(7):
        if sweep == 1:
            reader.fd_limits[10] = 65536  # prlimit between sweeps
        clock.now_ns += S
        sampler.sweep()
        info = table.get(key)
        assert info is not None and info.sample is not None
        seen.append(info.sample.fd_limit)
    assert reader.limit_reads[10] == 3  # sweeps 0, 3 and 6
    assert seen == [1024, 1024, 1024, 65536, 65536, 65536, 65536]


def test_max_processes_bounds_a_sweep_and_the_next_continues(
    reader: ScriptedReader,
    table: ProcessTable,
    clock: FakeClock,
    kernel_cpu: KernelCpu,
) -> None:
    for pid in (10, 20, 30, 40, 50):
        track(table, reader.add(pid, 500))
    sampler = sampler_for(reader, table, clock, kernel_cpu, max_processes=2)
    per_sweep: list[list[int]] = []
    for _ in range(4):
        reader.stat_reads.clear()
        stats = sampler.sweep()
        assert stats.sampled == 2
        per_sweep.append(list(reader.stat_reads))
    assert per_sweep == [[10, 20], [30, 40], [50, 10], [20, 30]]


def test_state_of_processes_that_left_the_table_is_forgotten(
    reader: ScriptedReader,
    clock: FakeClock,
    kernel_cpu: KernelCpu,
) -> None:
    table = ProcessTable(exited_retention_ns=0)
    key = reader.add(10, 500, cpu_ns=1 * S)
    track(table, key)
    sampler = sampler_for(reader, table, clock, kernel_cpu, fd_limit_refresh_sweeps=100)
    sampler.sweep()
    assert reader.limit_reads[10] == 1

    # The process leaves the table; a sweep runs while it is absent.
    table.apply(make_event(EventKind.EXIT, 10, key.start_time_ns, ts_ns=clock.now_ns))
    table.prune(clock.now_ns)
    assert table.get(key) is None
    clock.now_ns += S
    assert sampler.sweep().sampled == 0

    # The same key shows up again (re-added by a later record): nothing of the
    # old readings may be reused.
    track(table, key)
    clock.now_ns += S
    reader.set_cpu(10, 1 * S + 500 * MS)
    sampler.sweep()
    info = table.get(key)
    assert info is not None and info.sample is not None
    assert info.sample.cpu_percent is None
    assert reader.limit_reads[10] == 2


def test_sweep_over_the_fake_proc_tree(
    table: ProcessTable, clock: FakeClock, kernel_cpu: KernelCpu
) -> None:
    reader = ProcReader(str(PROC_FIXTURE))
    server = ProcessKey.of(4242, 1500 * NS_PER_TICK)
    track(table, server)
    track(table, ProcessKey.of(1, 2 * NS_PER_TICK))
    stats = Sampler(reader, table, kernel_cpu, clock).sweep()
    assert (stats.sampled, stats.vanished) == (2, 0)
    info = table.get(server)
    assert info is not None and info.sample is not None
    assert info.sample.cpu_time_ns == (250 + 50) * NS_PER_TICK
    assert info.sample.fd_count == 4
    assert info.sample.threads == 3
    assert info.sample.state == "S"


def test_fds_are_listed_every_sweep_only_where_they_matter(
    reader: ScriptedReader, table: ProcessTable, clock: FakeClock, kernel_cpu: KernelCpu
) -> None:
    calm = reader.add(10, 5, fds=10, fd_limit=1024)  # far below its limit
    near = reader.add(20, 5, fds=600, fd_limit=1024)  # above a quarter of it
    growing = reader.add(30, 5, fds=10, fd_limit=1024)
    for key in (calm, near, growing):
        track(table, key)
    sampler = sampler_for(reader, table, clock, kernel_cpu, fd_count_refresh_sweeps=5)
    for sweep in range(10):
        reader.fd_counts[30] = 10 + sweep  # one more fd every sweep
        sampler.sweep()
    assert reader.fd_reads[20] == 10
    # Growth is seen at the first listing after it began (at most 5 sweeps
    # on); from then on the process is listed every sweep.
    assert reader.fd_reads[30] >= 6
    # The calm one: the first sweep, then once every 5 sweeps.
    assert 2 <= reader.fd_reads[10] <= 4
    # A stale count is at most 5 sweeps old and still reported.
    info = table.get(calm)
    assert info is not None and info.sample is not None and info.sample.fd_count == 10
    grown = table.get(growing)
    assert grown is not None and grown.sample is not None and grown.sample.fd_count == 19


def test_a_process_that_did_not_run_is_not_read_again(
    reader: ScriptedReader, table: ProcessTable, clock: FakeClock, kernel_cpu: KernelCpu
) -> None:
    sleeper = reader.add(40, 5, cpu_ns=7 * MS)
    busy = reader.add(41, 5, cpu_ns=7 * MS)
    track(table, sleeper)
    track(table, busy)
    kernel_cpu.values = {40: 7 * MS, 41: 7 * MS}
    sampler = sampler_for(reader, table, clock, kernel_cpu, idle_refresh_sweeps=10)
    for sweep in range(11):
        clock.now_ns += S
        kernel_cpu.values = {40: 7 * MS, 41: 7 * MS + (sweep + 1) * 100 * MS}
        reader.set_cpu(41, kernel_cpu.values[41])
        sampler.sweep()
    reads = collections.Counter(reader.stat_reads)
    assert reads[41] == 11  # it ran every time: read every time
    # The sleeper: the first sweep, then ten sweeps later (staggered by pid).
    assert reads[40] == 2
    info = table.get(sleeper)
    assert info is not None and info.sample is not None
    assert info.sample.ts_ns == clock.now_ns  # re-dated, not stale
    assert info.sample.cpu_percent == 0.0
    assert info.sample.rss_bytes == 8192 * 40
    running = table.get(busy)
    assert running is not None and running.sample is not None
    assert running.sample.cpu_percent == pytest.approx(10.0)


def test_without_kernel_accounting_every_process_is_read(
    reader: ScriptedReader, table: ProcessTable, clock: FakeClock, kernel_cpu: KernelCpu
) -> None:
    key = reader.add(42, 5)
    track(table, key)
    sampler = sampler_for(reader, table, clock, kernel_cpu)
    for _ in range(3):
        clock.now_ns += S
        sampler.sweep()
    assert collections.Counter(reader.stat_reads)[42] == 3
