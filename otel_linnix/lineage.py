"""Span-style lineage ids of processes, and the W3C traceparent parser.

Pure core: no I/O, no threads. The process table calls in here once per new
entry (and once per exec carrying a new TRACEPARENT); nothing here walks the
tree.

Byte layout (any component can recompute the ids from facts it can read)::

    digest   = SHA-256( boot_id  || pid            || start_time_ns )
                        16 bytes    u32 big-endian    u64 big-endian
    span_id  = hex(digest[0:8])     16 lowercase hex characters
    trace_id = hex(digest[0:16])    32 lowercase hex characters, of the
                                    tree's lineage root

- ``boot_id``: the 16 raw bytes of the UUID in /proc/sys/kernel/random/boot_id
  (``uuid.UUID(text).bytes``), so ids of two boots never collide.
- ``pid``: the process id (thread-group id) as the host sees it.
- ``start_time_ns``: CLOCK_BOOTTIME start time in ns truncated to the /proc
  tick (``ProcessKey.start_time_ns``; 10 ms steps with USER_HZ = 100), i.e.
  field 22 of /proc/<pid>/stat times 1e9 / USER_HZ. The kernel and /proc
  agree on that value, so ids survive agent restarts.

The lineage root of a process is the nearest ancestor-or-self whose parent is
pid 0 or 1, is not known, or runs a container shim or a configured spawner
(``[lineage] spawners``). A W3C ``TRACEPARENT`` set for a process (not merely
inherited unchanged from its parent) overrides both the trace id and the
parent span id; its descendants inherit that trace id.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from dataclasses import dataclass, field
from typing import NamedTuple

from otel_linnix.config import LineageConfig

__all__ = [
    "NO_BOOT_ID",
    "LineageIds",
    "LineagePolicy",
    "TraceParent",
    "boot_id_bytes",
    "lineage_digest",
    "parse_traceparent",
    "span_id_of",
    "trace_id_of",
]

NO_BOOT_ID = bytes(16)

_ID_PACK = struct.Struct(">IQ")
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
# Shims start the processes of a container: their children are new units of
# work whatever ``spawners`` says. Compared by prefix because comm is cut at
# 15 bytes and shims come in versions (containerd-shim-runc-v2, ...).
_SHIM_PREFIXES = ("containerd-shim", "docker-containerd-shim", "conmon")
_COMM_LEN = 15  # TASK_COMM_LEN - 1: what the kernel keeps of a name


def boot_id_bytes(text: str) -> bytes:
    """The 16 raw bytes of a boot id written as a UUID (as /proc shows it)."""
    return uuid.UUID(text.strip()).bytes


def lineage_digest(boot_id: bytes, pid: int, start_time_ns: int) -> bytes:
    """SHA-256 of boot id (16 bytes), pid (u32 BE), start time ns (u64 BE)."""
    return hashlib.sha256(boot_id + _ID_PACK.pack(pid, start_time_ns)).digest()


def span_id_of(boot_id: bytes, pid: int, start_time_ns: int) -> str:
    """The span id of a process: 16 lowercase hex characters."""
    return lineage_digest(boot_id, pid, start_time_ns)[:8].hex()


def trace_id_of(boot_id: bytes, pid: int, start_time_ns: int) -> str:
    """The trace id of a tree rooted at this process: 32 lowercase hex characters."""
    return lineage_digest(boot_id, pid, start_time_ns)[:16].hex()


class TraceParent(NamedTuple):
    """The parts of a valid W3C traceparent that lineage uses."""

    version: str
    trace_id: str
    parent_id: str
    flags: str


def _is_hex(text: str) -> bool:
    return _HEX.issuperset(text)


def parse_traceparent(value: str) -> TraceParent | None:
    """Strictly parse a W3C trace-context ``traceparent``; None if malformed.

    Version ``00`` must be exactly 55 characters
    (``00-<32 hex>-<16 hex>-<2 hex>``), lowercase hex only, with non-zero trace
    and parent ids. Version ``ff`` is invalid. A later version is read as the
    spec asks: its first 55 characters in the 00 layout, followed by nothing
    or by ``-`` and fields this parser does not read.
    """
    size = len(value)
    if size < 55:
        return None
    version, trace_id, parent_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    valid = (
        _is_hex(version)
        and version != "ff"
        and (size == 55 or (version != "00" and value[55] == "-"))
        and value[2] == value[35] == value[52] == "-"
        and _is_hex(trace_id)
        and _is_hex(parent_id)
        and _is_hex(flags)
        and trace_id != _ZERO_TRACE
        and parent_id != _ZERO_SPAN
    )
    return TraceParent(version, trace_id, parent_id, flags) if valid else None


class LineageIds(NamedTuple):
    """What the pipeline stamps on every event of a process."""

    trace_id: str
    span_id: str
    parent_span_id: str | None


@dataclass(frozen=True, slots=True)
class LineagePolicy:
    """What decides lineage: this boot's id and which parents start new work."""

    boot_id: bytes = NO_BOOT_ID
    spawners: frozenset[str] = field(default_factory=lambda: frozenset(LineageConfig().spawners))
    traceparent: bool = True
    # spawner answers by (comm, exe): a handful of distinct parents fork most
    # processes, so the check costs one dict lookup per new entry.
    _cache: dict[tuple[str, str | None], bool] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if len(self.boot_id) != 16:
            raise ValueError(f"boot id must be 16 bytes, got {len(self.boot_id)}")

    @classmethod
    def from_config(cls, config: LineageConfig, boot_id: bytes) -> LineagePolicy:
        return cls(boot_id, frozenset(config.spawners), config.traceparent)

    @property
    def boot_uuid(self) -> str:
        """The boot id as /proc/sys/kernel/random/boot_id writes it."""
        return str(uuid.UUID(bytes=self.boot_id))

    def digest(self, pid: int, start_time_ns: int) -> bytes:
        return lineage_digest(self.boot_id, pid, start_time_ns)

    def starts_work(self, comm: str, exe: str | None) -> bool:
        """Whether children of a process with this comm and exe start a new
        lineage: it is a container shim or a configured spawner."""
        key = (comm, exe)
        known = self._cache.get(key)
        if known is not None:
            return known
        base = os.path.basename(exe) if exe else None
        names = (comm, base) if base else (comm,)
        answer = (
            any(n.startswith(_SHIM_PREFIXES) for n in names)
            or (
                (base is not None and base in self.spawners)
                # comm is the name cut to 15 bytes: compare with the cut name.
                or any(comm == s[:_COMM_LEN] for s in self.spawners)
            )
        )
        if len(self._cache) > 4096:
            self._cache.clear()  # bounded: a host runs far fewer distinct parents
        self._cache[key] = answer
        return answer
