"""Assembles the final BPF program text and its compile flags.

Kept apart from the bcc module so that ``otel-linnix bpf dump`` and the
tests can build (and show) exactly what would be loaded on a machine with
no bcc at all.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

from otel_linnix.config import CaptureConfig, bundled_path
from otel_linnix.sources.btf import KernelOffsets

__all__ = ["ENV_BPF_DIR", "ENV_SCAN_MAX", "BpfProgram", "bpf_dir", "build_program"]

ENV_BPF_DIR = "LINNIX_BPF_DIR"
_MAIN = "lifecycle.bpf.c"
_HEADER = "events.h"


@dataclass(frozen=True, slots=True)
class BpfProgram:
    """The C text handed to bcc (header inlined) and the -D flags."""

    text: str
    cflags: tuple[str, ...]
    source_path: Path

    def dump(self) -> str:
        flags = "\n".join(f"//   {flag}" for flag in self.cflags)
        return (
            f"// {self.source_path} as compiled, with {_HEADER} inlined\n"
            f"// cflags:\n{flags}\n\n{self.text}"
        )


def bpf_dir(environ: dict[str, str] | None = None) -> Path:
    """The folder holding the BPF sources ($LINNIX_BPF_DIR overrides)."""
    env = os.environ if environ is None else environ
    override = env.get(ENV_BPF_DIR)
    return Path(override) if override else bundled_path("bpf")


# Bytes of a new image's environment searched for TRACEPARENT= at exec. Real
# environments are 1-4 KiB; the scan costs a few ns per 8 bytes, so the cap
# bounds the cost for huge ones (flagged, and counted as env_scan_truncated).
ENV_SCAN_MAX = 8192


def build_program(
    capture: CaptureConfig,
    offsets: KernelOffsets,
    directory: Path | None = None,
    *,
    traceparent: bool = True,
) -> BpfProgram:
    """The lifecycle program for this kernel's layout and this configuration.

    ``traceparent``: look for TRACEPARENT in each new image's environment
    (``[lineage] traceparent``)."""
    where = directory or bpf_dir()
    source = where / _MAIN
    header = (where / _HEADER).read_text()
    text = source.read_text().replace(f'#include "{_HEADER}"', header, 1)
    page = resource.getpagesize()
    params = {
        "RINGBUF_PAGES": max(1, capture.ring_buffer_kib * 1024 // page),
        "WAKEUP_EVERY": capture.wakeup_every,
        "ARGV_MAX": capture.argv_max_bytes,
        "FNAME_MAX": capture.filename_max_bytes,
        "CAPTURE_KTHREADS": int(capture.kernel_threads),
        "CPU_MAP_ENTRIES": capture.max_processes,
        "THREAD_MAP_ENTRIES": capture.max_processes * 4,
        "EXIT_OVERFLOW_ENTRIES": capture.exit_overflow_entries,
        "TRACEPARENT_SCAN": int(traceparent),
        "ENV_SCAN_MAX": ENV_SCAN_MAX,
    }
    cflags = [f"-D{name}={value}" for name, value in params.items()]
    cflags.extend(offsets.cflags())
    return BpfProgram(text=text, cflags=tuple(cflags), source_path=source)
