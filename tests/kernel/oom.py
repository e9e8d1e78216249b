"""An OOM kill on demand: a Python process that outgrows a cgroup v1 memory limit.

These machines mount the v1 memory controller at /sys/fs/cgroup/memory (a
hybrid layout); where it is missing, callers skip or leave the OOM part out.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["V1_MEMORY", "memory_cgroup", "rmdir_retry", "run_oom_victim", "v1_memory_available"]

V1_MEMORY = Path("/sys/fs/cgroup/memory")
# Allocates 8 MiB at a time until the limit's OOM killer ends it.
_HOG = "blocks = []\nwhile True:\n    blocks.append(bytearray(8 << 20))\n"


def v1_memory_available() -> bool:
    return (V1_MEMORY / "memory.limit_in_bytes").exists()


def rmdir_retry(path: Path) -> None:
    """A cgroup directory can be busy for a moment after its last task exits."""
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    path.rmdir()


@contextlib.contextmanager
def memory_cgroup(prefix: str, limit_bytes: int = 64 << 20) -> Iterator[Path]:
    """A v1 memory cgroup of its own with ``limit_bytes``, removed afterwards."""
    cg = V1_MEMORY / f"{prefix}-{secrets.token_hex(4)}"
    cg.mkdir()
    try:
        (cg / "memory.limit_in_bytes").write_text(str(limit_bytes))
        yield cg
    finally:
        rmdir_retry(cg)


def run_oom_victim(cgroup: Path) -> int:
    """Run the hog inside ``cgroup`` until the OOM killer kills it; its pid."""
    proc = subprocess.Popen(
        ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$0" -c "$1"', sys.executable, _HOG]
    )
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return proc.pid
