"""Small C programs the kernel tests and benchmarks run as workloads.

``build(name)`` compiles ``<name>.c`` with the system compiler into a cache
folder (once per source change) and returns the binary's path.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

__all__ = ["HERE", "build", "have_compiler"]

HERE = Path(__file__).resolve().parent
_CACHE = Path("/tmp/otel-linnix-workloads")


def have_compiler() -> bool:
    return shutil.which("gcc") is not None


def build(name: str) -> Path:
    """Compile tests/workloads/<name>.c (cached by content) and return the binary."""
    source = HERE / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = _CACHE / f"{name}-{digest}"
    if not binary.exists():
        _CACHE.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".tmp")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(tmp), str(source)], check=True)
        tmp.rename(binary)
    return binary
