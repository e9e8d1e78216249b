"""Where a running agent's cost goes: in the kernel (per BPF program) and per thread.

The agent's BPF programs run in the context of the tasks they trace, so
their cost is charged to the workload, not to the agent. With the kernel's
BPF statistics on (``kernel.bpf_stats_enabled``), every program counts its
runs and the nanoseconds they took; both appear in the fdinfo of the
program's file descriptor in the agent, so they can be read per program
without any tool. Enabling the statistics adds two clock reads to each run,
so the figures include that (a few tens of ns per run).

The agent's threads carry OS names (``bpf-drain``, ``sink-rules`` ...), so
the user-space side splits per thread from /proc/<pid>/task/*/stat.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError, cpu_seconds

_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    """Turn the kernel's per-program run statistics on, and back to what they were."""
    try:
        before = _STATS_SYSCTL.read_text().strip()
        _STATS_SYSCTL.write_text("1")
    except OSError as exc:
        raise BenchError(f"cannot enable BPF run statistics ({_STATS_SYSCTL}): {exc}") from None
    try:
        yield
    finally:
        _STATS_SYSCTL.write_text(before)


@dataclass(frozen=True, slots=True)
class ProgRuns:
    """One BPF program's counters: runs and the nanoseconds they took in total."""

    name: str
    runs: int
    ns: int


def _fdinfo(pid: int) -> Iterator[dict[str, str]]:
    fds = Path(f"/proc/{pid}/fdinfo")
    for entry in fds.iterdir():
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            text = entry.read_text()
            yield dict(
                (k.strip(), v.strip())
                for k, _, v in (line.partition(":") for line in text.splitlines())
            )


def _prog_name(prog_id: str) -> str:
    """bpftool names the program (the function name the kernel keeps, 15 bytes)."""
    try:
        out = subprocess.run(
            ["bpftool", "--json", "prog", "show", "id", prog_id],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        name = json.loads(out).get("name")
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        name = None
    return str(name) if name else f"prog {prog_id}"


class ProgCounters:
    """The run counters of the BPF programs a process holds, by program id."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._names: dict[str, str] = {}

    def read(self) -> dict[str, ProgRuns]:
        out: dict[str, ProgRuns] = {}
        for info in _fdinfo(self.pid):
            prog_id = info.get("prog_id")
            # A link's fdinfo names its program too, without counters.
            if prog_id is None or "run_time_ns" not in info:
                continue
            name = self._names.get(prog_id)
            if name is None:
                name = self._names[prog_id] = _prog_name(prog_id)
            out[prog_id] = ProgRuns(name, int(info["run_cnt"]), int(info["run_time_ns"]))
        if not out:
            raise BenchError(f"process {self.pid} holds no BPF program")
        return out


def prog_delta(before: Mapping[str, ProgRuns], after: Mapping[str, ProgRuns]) -> list[ProgRuns]:
    """What each program ran between two readings, largest first."""
    rows = [
        ProgRuns(a.name, a.runs - b.runs, a.ns - b.ns)
        for prog_id, a in after.items()
        if (b := before.get(prog_id)) is not None
    ]
    return sorted(rows, key=lambda r: -r.ns)


def thread_cpu_s(pid: int) -> dict[str, float]:
    """user+sys seconds of each thread of ``pid``, summed by thread name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread gone meanwhile
            comm = (task / "comm").read_text().strip()
            out[comm] = out.get(comm, 0.0) + cpu_seconds(pid, tid=int(task.name))
    return out


def thread_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: s - before.get(name, 0.0) for name, s in after.items()}
