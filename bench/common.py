"""Helpers shared by the benchmarks.

- statistics: median, percentiles and the min-max spread of repeated runs
  (this machine is noisy, so every figure that is measured more than once is
  reported as median and spread, never as a single run);
- /proc readings: CPU seconds from utime+stime in /proc/<pid>/stat, VmRSS
  from /proc/<pid>/status, the host's fork counter;
- ``ManagedProcess``: a tool (the agent, bpftrace, a poller) started as a
  subprocess, awaited until it says it is ready, and stopped by a signal,
  reaped with wait4(2) so its total CPU including its own shutdown is known;
- the spawner workload and its truth (one line per reaped child);
- reading an agent recording;
- printing: the command line, a table, one line per target.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from otel_linnix.events import EventKind, ProcessEvent
from otel_linnix.recording import read_events
from tests.workloads import build

__all__ = [
    "AGENT",
    "CLK_TCK",
    "BenchError",
    "Finished",
    "HostCpu",
    "ManagedProcess",
    "SpawnRound",
    "SpawnedChild",
    "Spread",
    "add_side_by_side_args",
    "agent_env",
    "agent_status",
    "bench_parser",
    "boot_ns",
    "children_cpu_s",
    "cpu_seconds",
    "fmt_mib",
    "fraction",
    "host_forks",
    "median",
    "parse_spawner_output",
    "percentile",
    "print_command",
    "print_table",
    "read_recording",
    "report_target",
    "require",
    "rss_bytes",
    "run_bench",
    "run_spawner",
    "spread",
    "start_agent",
    "wait_for_quiet",
    "workdir",
    "workload",
]

# The console script installed next to the interpreter running the bench.
AGENT = Path(sys.executable).with_name("otel-linnix")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Fields of /proc/<pid>/stat after the ")" that ends the comm, 0-based:
# field 3 (state) is index 0, so utime (14) is 11.
_UTIME, _STIME, _CUTIME, _CSTIME = 11, 12, 13, 14
_AGENT_READY = {"record": "recording to", "run": "otel-linnix running"}
_STATUS_LINE = re.compile(r"source=\S+ events\[.*\] lost=\d+")


class BenchError(Exception):
    """The benchmark cannot run here (a setup problem, not a result)."""


# ---- statistics -------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and min-max of repeated measurements."""

    median: float
    low: float
    high: float
    n: int

    @property
    def spread_pct(self) -> float:
        """(max - min) as a percentage of the median."""
        if not self.median:
            return math.nan
        return (self.high - self.low) * 100.0 / self.median

    def fmt(self, digits: int = 3, unit: str = "") -> str:
        """``median (min-max)``, e.g. ``1.42 s (1.38-1.51)``."""
        u = f" {unit}" if unit else ""
        if self.n == 1:
            return f"{self.median:.{digits}f}{u}"
        return f"{self.median:.{digits}f}{u} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def spread(values: Sequence[float]) -> Spread:
    if not values:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(median(values), min(values), max(values), len(values))


# ---- /proc ------------------------------------------------------------------


def _stat_fields(pid: int, tid: int | None = None) -> list[str]:
    """The fields of /proc/<pid>/stat (the whole process) or, with ``tid``, of
    /proc/<pid>/task/<tid>/stat (one thread: /proc/<tid>/stat would give the
    process's totals again)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, "rb") as fh:
        data = fh.read()
    return data[data.rfind(b")") + 2 :].decode().split()


def cpu_seconds(pid: int, *, children: bool = False, tid: int | None = None) -> float:
    """utime+stime of a process (all its threads), or of its thread ``tid``, in seconds.

    ``children`` adds cutime+cstime: the CPU of children it has waited for.
    """
    f = _stat_fields(pid, tid)
    ticks = int(f[_UTIME]) + int(f[_STIME])
    if children:
        ticks += int(f[_CUTIME]) + int(f[_CSTIME])
    return ticks / CLK_TCK


def children_cpu_s() -> float:
    """user+sys of every child of this process reaped so far (and of their reaped children)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _status_kib(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {name} line")


def rss_bytes(pid: int, *, peak: bool = False) -> int:
    """VmRSS (or VmHWM, the peak, with ``peak``) of a process in bytes."""
    return _status_kib(pid, "VmHWM" if peak else "VmRSS") * 1024


def host_forks() -> int:
    """Processes and threads created on the host since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("processes "):
                return int(line.split()[1])
    raise BenchError("/proc/stat has no processes line")


@dataclass(frozen=True, slots=True)
class HostCpu:
    """The host's CPU tick counters (first line of /proc/stat)."""

    busy: int
    total: int

    @classmethod
    def now(cls) -> HostCpu:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return cls(sum(ticks[:8]) - idle, sum(ticks[:8]))  # guest time is inside user

    def busy_s_since(self, before: HostCpu) -> float:
        """CPU seconds the host spent busy (all CPUs summed) between two readings."""
        return (self.busy - before.busy) / CLK_TCK

    def busy_pct_since(self, before: HostCpu) -> float:
        """Busy share of all CPUs between two readings, in %."""
        total = self.total - before.total
        return (self.busy - before.busy) * 100.0 / total if total else 0.0


def wait_for_quiet(max_wait_s: float, busy_pct: float, window_s: float = 5.0) -> float:
    """Wait until the host was at most ``busy_pct`` busy over ``window_s``.

    Other sessions share this machine; a measurement of idle cost started
    in the middle of their test run measures them. Gives up after
    ``max_wait_s`` and returns the last busy % either way (and says so).
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = HostCpu.now()
        time.sleep(window_s)
        busy = HostCpu.now().busy_pct_since(before)
        if busy <= busy_pct:
            print(f"host quiet: {busy:.1f}% busy over {window_s:g} s", flush=True)
            return busy
        if time.monotonic() >= deadline:
            print(
                f"host still {busy:.1f}% busy after waiting {max_wait_s:g} s; measuring anyway",
                flush=True,
            )
            return busy


def boot_ns() -> int:
    """CLOCK_BOOTTIME: the clock of the agent's ``ts_ns``."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def fraction(n: int, total: int) -> str:
    """``n/total (pct%)``."""
    return f"{n}/{total} ({n * 100.0 / total:.2f}%)" if total else "0/0"


def fmt_mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


# ---- tools as subprocesses --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finished:
    """How a managed process ended."""

    returncode: int
    cpu_s: float  # its whole life, from wait4's rusage (incl. reaped children)
    killed: bool  # it ignored the stop signal and was killed
    log: str


class ManagedProcess:
    """A tool run side by side with a workload; use as a context manager.

    stdout and stderr go to ``log_path``; start-up waits until ``ready``
    appears there. ``stop()`` signals it and reaps it with wait4(2), so
    the CPU it spent shutting down (a final drain, writing its output) is
    counted.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        ready: str,
        ready_timeout_s: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._finished: Finished | None = None
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        try:
            self._await(ready, ready_timeout_s)
        except BaseException:
            self.stop(signal.SIGKILL, 5.0)
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _await(self, marker: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while marker not in self.log():
            wpid, status, _ru = os.wait4(self.pid, os.WNOHANG)
            if wpid:
                self._finished = Finished(os.waitstatus_to_exitcode(status), 0.0, False, self.log())
                self.proc.returncode = self._finished.returncode
                tail = "\n".join(self._finished.log.splitlines()[-15:])
                raise BenchError(
                    f"{self.name} exited ({self._finished.returncode}) before "
                    f"it was ready; its output ends:\n{tail}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not print {marker!r} within {timeout_s:g} s")
            time.sleep(0.05)

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self, *, peak: bool = False) -> int:
        return rss_bytes(self.pid, peak=peak)

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> Finished:
        if self._finished is not None:
            return self._finished
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        deadline = time.monotonic() + timeout_s
        killed = False
        while True:
            wpid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if wpid:
                break
            if time.monotonic() > deadline:
                killed = True
                os.kill(self.pid, signal.SIGKILL)
                wpid, status, ru = os.wait4(self.pid, 0)
                break
            time.sleep(0.02)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._finished = Finished(
            self.proc.returncode, ru.ru_utime + ru.ru_stime, killed, self.log()
        )
        return self._finished

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop(signal.SIGKILL, 5.0)


def agent_env() -> dict[str, str]:
    """The environment for the agent: embedded default configuration.

    LINNIX_CONFIG is removed so a developer's setting does not change what
    is measured; /etc/linnix/linnix.toml, if present, still applies (the
    command header says so).
    """
    env = dict(os.environ)
    env.pop("LINNIX_CONFIG", None)
    return env


def start_agent(command: str, log_path: Path, *extra: str) -> ManagedProcess:
    """``otel-linnix <command> <extra...>`` (``run`` or ``record``), once ready."""
    argv = [str(AGENT), command, *extra]
    return ManagedProcess(
        "otel-linnix " + command, argv, log_path, ready=_AGENT_READY[command], env=agent_env()
    )


def agent_status(log: str) -> dict[str, str]:
    """The key=value fields of the agent's last status line (``lost``, ``sink_drops``...)."""
    found = [m for m in map(_STATUS_LINE.search, log.splitlines()) if m is not None]
    if not found:
        return {}
    line = found[-1].string[found[-1].start() :]
    return dict(tok.split("=", 1) for tok in line.split() if "=" in tok and "[" not in tok)


# ---- workloads ----------------------------------------------------------------


def workload(name: str) -> Path:
    """The compiled tests/workloads/<name>.c."""
    try:
        return build(name)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"cannot build workload {name}: {exc}") from None


@dataclass(frozen=True, slots=True)
class SpawnedChild:
    """One line of spawner output: the truth about one child."""

    pid: int
    ppid: int
    index: int
    outcome: str
    status: int  # wait(2) status as the parent saw it

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    @property
    def exit_signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def core_dumped(self) -> bool:
        return os.WCOREDUMP(self.status)


def parse_spawner_output(text: str) -> list[SpawnedChild]:
    out = []
    for line in text.splitlines():
        pid, ppid, index, outcome, status = line.split()
        out.append(SpawnedChild(int(pid), int(ppid), int(index), outcome, int(status)))
    return out


@dataclass(frozen=True, slots=True)
class SpawnRound:
    """One spawner run: its children and when it ran on both kernel clocks."""

    tag: str
    children: tuple[SpawnedChild, ...]
    mono_start_ns: int  # CLOCK_MONOTONIC: bpftrace's nsecs
    mono_end_ns: int
    boot_start_ns: int  # CLOCK_BOOTTIME: the agent's ts_ns
    boot_end_ns: int
    cpu_s: float  # user+sys of the spawner, its workers and their children

    @property
    def wall_s(self) -> float:
        return (self.mono_end_ns - self.mono_start_ns) / 1e9


def run_spawner(spawner: Path, count: int, workers: int, child: Path, tag: str) -> SpawnRound:
    """``spawner COUNT WORKERS CHILD TAG`` to completion, with its truth."""
    cpu0 = children_cpu_s()
    boot0, mono0 = boot_ns(), time.monotonic_ns()
    done = subprocess.run(
        [str(spawner), str(count), str(workers), str(child), tag],
        capture_output=True,
        text=True,
        check=False,
    )
    mono1, boot1 = time.monotonic_ns(), boot_ns()
    cpu_s = children_cpu_s() - cpu0
    children = parse_spawner_output(done.stdout)
    if len(children) != count:
        raise BenchError(
            f"spawner reported {len(children)} of {count} children "
            f"(exit {done.returncode}): {done.stderr.strip()}"
        )
    return SpawnRound(tag, tuple(children), mono0, mono1, boot0, boot1, cpu_s)


def read_recording(path: Path) -> tuple[list[ProcessEvent], int]:
    """Events of an agent recording (fork/exec/exit only) and its bad-line count."""
    bad: list[int] = []
    with open(path, encoding="utf-8") as fh:
        events = [
            ev
            for ev in read_events(fh, lambda n, _r: bad.append(n))
            if ev.kind in (EventKind.FORK, EventKind.EXEC, EventKind.EXIT)
        ]
    return events, len(bad)


# ---- running and printing -------------------------------------------------------


def print_command(module: str) -> None:
    """The exact command line, first thing in the output."""
    print(
        "command: "
        + shlex.join([sys.executable, "-m", module, *sys.argv[1:]])
        + f"   (in {os.getcwd()})"
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"host: kernel {os.uname().release}, {os.cpu_count()} CPUs, load average {load}")
    sys.stdout.flush()


def require(*, root: bool = True, programs: Sequence[str] = ()) -> None:
    if root and os.geteuid() != 0:
        raise BenchError("needs root (the agent and bpftrace load eBPF programs)")
    for prog in programs:
        if not any(Path(d, prog).exists() for d in os.get_exec_path()):
            raise BenchError(f"{prog} is not installed")


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    """A scratch folder for recordings and logs; kept (and named) with ``keep``."""
    path = Path(tempfile.mkdtemp(prefix="otel-linnix-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"files kept in {path}")
        else:
            for child in sorted(path.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() else child.unlink()
            path.rmdir()


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def report_target(name: str, met: bool, detail: str) -> None:
    print(f"target {name}: {'met' if met else 'NOT MET'} ({detail})")


def bench_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser every benchmark starts from, with ``--keep``."""
    p = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--keep", action="store_true", help="keep recordings and logs")
    return p


def add_side_by_side_args(p: argparse.ArgumentParser) -> None:
    """``--settle`` and ``--grace`` of the benchmarks that run tools around a workload."""
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds between both tools being ready and the workload",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=1.0,
        help="seconds after the workload before the tools are stopped",
    )


def run_bench(
    module: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], None]
) -> int:
    """Parse arguments, print the command, run ``body(args)``; setup errors exit 1.

    A missed target is a result, not a failure: the exit status is 0 then.
    """
    args = parser.parse_args()
    print_command(module)
    try:
        body(args)
    except BenchError as exc:
        print(f"cannot run this benchmark here: {exc}", file=sys.stderr)
        return 1
    return 0
