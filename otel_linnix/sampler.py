"""Per-process resource sampling: CPU %, RSS, open fds and their limit, threads, state.

CPU time comes from the in-kernel accounting (one batched map read for all
processes) when the kernel source runs, else from /proc/<pid>/stat. Per
process a sweep reads /proc/<pid>/stat once and lists /proc/<pid>/fd (every
sweep for a process near its fd limit or gaining fds, every
``fd_count_refresh_sweeps`` sweeps otherwise); the fd soft limit changes
rarely (prlimit), so it is re-read every ``fd_limit_refresh_sweeps`` sweeps. A sweep covers at most
``max_processes`` processes, continuing round-robin on the next sweep, so
its cost is bounded whatever the host runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from otel_linnix.events import ProcessKey
from otel_linnix.process_table import HostSample, ProcessSample, ProcessTable
from otel_linnix.sources.procfs import ProcReader

__all__ = ["Sampler", "SweepStats"]

_YIELD_EVERY = 64


@dataclass(frozen=True, slots=True)
class SweepStats:
    """What the last sweep did and cost (exported as self-metrics)."""

    sampled: int
    vanished: int
    duration_s: float
    cpu_s: float
    sweeps: int


class Sampler:
    """Reads resource figures of live processes into the table."""

    def __init__(
        self,
        reader: ProcReader,
        table: ProcessTable,
        cpu_times: Callable[[], Mapping[int, int] | None],
        clock: Callable[[], int],
        *,
        max_processes: int = 20_000,
        fd_limit_refresh_sweeps: int = 30,
        fd_count_refresh_sweeps: int = 5,
        idle_refresh_sweeps: int = 10,
    ) -> None:
        self._reader = reader
        self._table = table
        self._cpu_times = cpu_times
        self._clock = clock
        self._max = max_processes
        self._refresh = fd_limit_refresh_sweeps
        self._fd_every = max(1, fd_count_refresh_sweeps)
        self._idle_every = max(1, idle_refresh_sweeps)
        self._prev_cpu: dict[ProcessKey, tuple[int, int]] = {}
        self._fd_limits: dict[ProcessKey, tuple[int, int | None]] = {}
        # key -> (in-kernel CPU time, sample) at the last /proc read
        self._read_at: dict[ProcessKey, tuple[int, ProcessSample]] = {}
        # key -> (fd count, the count before it, sweep it was listed at)
        self._fd_counts: dict[ProcessKey, tuple[int, int, int]] = {}
        self._cursor = 0
        self._sweeps = 0
        self.last = SweepStats(0, 0, 0.0, 0.0, 0)
        self.last_host: HostSample | None = None
        self.last_samples: Mapping[ProcessKey, ProcessSample] = {}

    def sweep(self) -> SweepStats:
        started, started_cpu = time.perf_counter(), time.thread_time()
        live_now = self._table.live_keys()
        live = sorted(live_now.items())
        kernel_cpu = self._cpu_times()
        if len(live) > self._max:
            start = self._cursor % len(live)
            live = (live[start:] + live[:start])[: self._max]
            self._cursor = start + self._max
        samples: dict[ProcessKey, ProcessSample] = {}
        vanished = 0
        for n, (pid, key) in enumerate(live, start=1):
            if n % _YIELD_EVERY == 0:
                # Let API requests in: a sweep over thousands of processes
                # would otherwise hold the interpreter for tens of ms.
                time.sleep(0)
            kernel = kernel_cpu.get(pid, -1) if kernel_cpu is not None else None
            carried = self._carry_forward(key, pid, kernel)
            if carried is not None:
                samples[key] = carried
                continue
            stat = self._reader.stat(pid)
            if stat is None or ProcessKey.of(pid, stat.start_time_ns) != key:
                vanished += 1  # exited (or pid reused) since the table saw it
                continue
            now = self._clock()
            cpu_ns = stat.cpu_time_ns
            if kernel_cpu is not None and pid in kernel_cpu:
                cpu_ns = max(cpu_ns, kernel_cpu[pid])
            sample = ProcessSample(
                ts_ns=now,
                cpu_time_ns=cpu_ns,
                cpu_percent=self._cpu_percent(key, now, cpu_ns),
                rss_bytes=stat.rss_bytes,
                fd_count=self._fd_count(key, pid, self._fd_limit(key, pid)),
                fd_limit=self._fd_limit(key, pid),
                threads=stat.num_threads,
                state=stat.state,
            )
            samples[key] = sample
            if kernel is not None:
                self._read_at[key] = (kernel, sample)
        self._table.update_samples(samples)
        self._forget_gone(set(live_now.values()))
        self.last_host = HostSample(
            ts_ns=self._clock(),
            cpus=os.cpu_count() or 1,
            load1=self._reader.loadavg1() or 0.0,
            psi=self._reader.pressure(),
        )
        self.last_samples = samples
        self._sweeps += 1
        self.last = SweepStats(
            sampled=len(samples),
            vanished=vanished,
            duration_s=time.perf_counter() - started,
            cpu_s=time.thread_time() - started_cpu,
            sweeps=self._sweeps,
        )
        return self.last

    def _carry_forward(self, key: ProcessKey, pid: int, kernel: int | None) -> ProcessSample | None:
        """The last sample, re-dated, if the process has not run since it was read.

        The in-kernel accounting says whether a process ran. One that did not
        cannot have changed its threads, fds or state, nor (reclaim aside) its
        RSS, so /proc is not read again; every ``idle_refresh_sweeps`` sweeps
        (staggered by pid) it is, which also catches what reclaim did. On a
        host where most processes sleep this removes most of a sweep's cost.
        """
        last = self._read_at.get(key)
        if kernel is None or last is None or last[0] != kernel:
            return None
        if (self._sweeps + pid) % self._idle_every == 0:
            return None
        now = self._clock()
        sample = last[1]
        self._prev_cpu[key] = (now, sample.cpu_time_ns or 0)
        # (ts_ns, cpu_time_ns, cpu_percent, ...): re-dated, 0 % CPU, the rest kept;
        # built directly because _replace costs several times more.
        return tuple.__new__(ProcessSample, (now, sample[1], 0.0, *sample[3:]))

    def _cpu_percent(self, key: ProcessKey, now: int, cpu_ns: int) -> float | None:
        prev = self._prev_cpu.get(key)
        self._prev_cpu[key] = (now, cpu_ns)
        if prev is None or now <= prev[0]:
            return None
        return max(0.0, (cpu_ns - prev[1]) * 100.0 / (now - prev[0]))

    def _fd_count(self, key: ProcessKey, pid: int, limit: int | None) -> int | None:
        """Open fds, re-listed every sweep only where they matter.

        Listing /proc/<pid>/fd is the most expensive read of a sweep. A process
        using under a quarter of its limit, whose count did not grow at the
        last listing, is re-listed every ``fd_count_refresh_sweeps`` sweeps
        (staggered by pid); one near its limit or growing, every sweep.
        """
        known = self._fd_counts.get(key)
        if known is not None:
            count, previous, listed_at = known
            calm = (limit is None or count * 4 < limit) and count <= previous
            due = (
                self._sweeps - listed_at >= self._fd_every
                or (self._sweeps + pid) % self._fd_every == 0
            )
            if calm and not due:
                return count
        fresh = self._reader.fd_count(pid)
        if fresh is not None:
            previous_count = known[0] if known is not None else fresh
            self._fd_counts[key] = (fresh, previous_count, self._sweeps)
        return fresh

    def _fd_limit(self, key: ProcessKey, pid: int) -> int | None:
        cached = self._fd_limits.get(key)
        if cached is not None and self._sweeps - cached[0] < self._refresh:
            return cached[1]
        limit = self._reader.fd_soft_limit(pid)
        self._fd_limits[key] = (self._sweeps, limit)
        return limit

    def _forget_gone(self, live: set[ProcessKey]) -> None:
        """Drop per-process state of processes no longer live (bounded memory)."""
        for cache in (self._prev_cpu, self._fd_limits, self._fd_counts, self._read_at):
            for key in [k for k in cache if k not in live]:
                del cache[key]
