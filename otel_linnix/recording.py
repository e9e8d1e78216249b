"""The recorded-event format: JSON Lines, one ProcessEvent per line.

The same JSON object is the ``data:`` of a /stream event, so a recording
can be made by ``otel-linnix record`` or by saving the stream. Every line
carries ``"v": 1``; readers reject other versions with a clear error.
Every field is always present (null where it does not apply), so consumers
see one stable shape. Each line names the boot it was recorded on
(``boot_id``), so a replay recomputes the same lineage ids. Documented in
docs/events.md.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple

import orjson

from otel_linnix.errors import DataError
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey, ProcessSource
from otel_linnix.process_table import HostSample, ProcessSample

__all__ = [
    "FORMAT_VERSION",
    "SweepRecord",
    "encode_event",
    "event_from_dict",
    "event_to_dict",
    "iso_time",
    "open_recording",
    "parse_iso_time",
    "read_events",
    "read_records",
    "recording_boot_id",
    "sweep_from_dict",
    "sweep_to_dict",
]

FORMAT_VERSION = 1

_INT_FIELDS = ("ts_ns", "pid", "ppid", "start_time_ns", "uid", "gid", "cgroup_id")
_OPT_INT_FIELDS = (
    "parent_start_time_ns",
    "exit_code",
    "exit_signal",
    "cpu_time_ns",
    "peak_rss_bytes",
    "rss_bytes",
)
_BOOL_FIELDS = ("argv_truncated", "core_dumped", "bootstrap", "kernel_thread")
_OPT_STR_FIELDS = ("exe", "container_id", "container_runtime", "pod_uid", "traceparent")
# Lineage ids: lowercase hex of a fixed length (otel_linnix.lineage).
_HEX_FIELDS = (("trace_id", 32), ("span_id", 16), ("parent_span_id", 16))
_HEX_DIGITS = frozenset("0123456789abcdef")


@functools.lru_cache(maxsize=8192)
def _second(secs: int) -> str:
    # Formatting a date costs microseconds; events come thousands per second.
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso_time(wall_ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as OTLP backends and jq users expect."""
    secs, ns = divmod(wall_ns, 1_000_000_000)
    return f"{_second(secs)}.{ns:09d}Z"


def encode_event(ev: ProcessEvent, wall_ns: int | None = None, boot_id: str | None = None) -> bytes:
    """One event as compact JSON bytes (no newline): a JSONL line, a /stream ``data:``."""
    return orjson.dumps(event_to_dict(ev, wall_ns, boot_id))


def parse_iso_time(text: str) -> int | None:
    """Unix-epoch ns of an ``iso_time()`` string (RFC 3339, UTC, up to 9 fraction digits)."""
    head, _, frac = text.rstrip("Zz").partition(".")
    try:
        stamp = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    digits = (frac if frac.isdigit() else "").ljust(9, "0")[:9]
    return int(stamp.timestamp()) * 1_000_000_000 + int(digits)


def event_to_dict(
    ev: ProcessEvent, wall_ns: int | None = None, boot_id: str | None = None
) -> dict[str, Any]:
    """The JSON object for one event. ``wall_ns`` adds a readable ``time``;
    ``boot_id`` (the UUID text) names the boot the lineage ids belong to."""
    return {
        "v": FORMAT_VERSION,
        "seq": ev.seq,
        "boot_id": boot_id,
        "kind": ev.kind.value,
        "ts_ns": ev.ts_ns,
        "time": iso_time(wall_ns) if wall_ns is not None else None,
        "pid": ev.pid,
        "ppid": ev.ppid,
        "start_time_ns": ev.start_time_ns,
        "parent_start_time_ns": ev.parent_start_time_ns,
        "uid": ev.uid,
        "gid": ev.gid,
        "comm": ev.comm,
        "exe": ev.exe,
        "argv": list(ev.argv) if ev.argv is not None else None,
        "argv_truncated": ev.argv_truncated,
        "cgroup_id": ev.cgroup_id,
        "container_id": ev.container_id,
        "container_runtime": ev.container_runtime,
        "pod_uid": ev.pod_uid,
        "exit_code": ev.exit_code,
        "exit_signal": ev.exit_signal,
        "core_dumped": ev.core_dumped,
        "cpu_time_ns": ev.cpu_time_ns,
        "peak_rss_bytes": ev.peak_rss_bytes,
        "rss_bytes": ev.rss_bytes,
        "bootstrap": ev.bootstrap,
        "kernel_thread": ev.kernel_thread,
        "source": ev.source.value,
        "traceparent": ev.traceparent,
        "trace_id": ev.trace_id,
        "span_id": ev.span_id,
        "parent_span_id": ev.parent_span_id,
    }


def _field(
    obj: dict[str, Any], name: str, check: Callable[[Any], bool], expected: str, *, required: bool
) -> Any:
    if name not in obj or obj[name] is None:
        if required:
            raise DataError(f"field {name!r}: missing (expected {expected})")
        return None
    value = obj[name]
    if not check(value):
        raise DataError(f"field {name!r}: expected {expected}, got {value!r}")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _hex_of(length: int) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return isinstance(v, str) and len(v) == length and _HEX_DIGITS.issuperset(v)

    return check


def event_from_dict(obj: Any) -> ProcessEvent:
    """Validate one decoded JSON object; raises DataError naming the field."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if version != FORMAT_VERSION:
        raise DataError(
            f"field 'v': unsupported format version {version!r} "
            f"(this agent reads version {FORMAT_VERSION})"
        )
    kind_raw = _field(obj, "kind", lambda v: isinstance(v, str), "a string", required=True)
    try:
        kind = EventKind(kind_raw)
    except ValueError:
        known = ", ".join(k.value for k in EventKind)
        raise DataError(f"field 'kind': unknown kind {kind_raw!r} (known: {known})") from None
    source_raw = obj.get("source", "replay")
    try:
        source = ProcessSource(source_raw)
    except ValueError:
        raise DataError(f"field 'source': unknown source {source_raw!r}") from None
    values: dict[str, Any] = {"kind": kind, "source": source}
    for name in _INT_FIELDS:
        values[name] = _field(
            obj, name, _is_int, "an integer", required=name in ("ts_ns", "pid", "start_time_ns")
        )
        if values[name] is None:
            values[name] = 0
    for name in _OPT_INT_FIELDS:
        values[name] = _field(obj, name, _is_int, "an integer or null", required=False)
    for name in _BOOL_FIELDS:
        values[name] = bool(
            _field(obj, name, lambda v: isinstance(v, bool), "true or false", required=False)
        )
    for name in _OPT_STR_FIELDS:
        values[name] = _field(
            obj, name, lambda v: isinstance(v, str), "a string or null", required=False
        )
    values["comm"] = (
        _field(obj, "comm", lambda v: isinstance(v, str), "a string", required=False) or ""
    )
    argv = _field(
        obj,
        "argv",
        lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
        "a list of strings or null",
        required=False,
    )
    values["argv"] = tuple(argv) if argv is not None else None
    for name, length in _HEX_FIELDS:
        values[name] = _field(
            obj,
            name,
            _hex_of(length),
            f"{length} lowercase hex characters or null",
            required=False,
        )
    seq = obj.get("seq", 0)
    values["seq"] = seq if _is_int(seq) else 0
    return ProcessEvent(**values)


class SweepRecord(NamedTuple):
    """One sampler sweep as recorded (``"kind": "sweep"`` lines)."""

    ts_ns: int
    host: HostSample | None
    samples: tuple[tuple[ProcessKey, ProcessSample], ...]


_SAMPLE_FIELDS = (
    "cpu_time_ns",
    "cpu_percent",
    "rss_bytes",
    "fd_count",
    "fd_limit",
    "threads",
    "state",
)


def sweep_to_dict(
    ts_ns: int,
    host: HostSample | None,
    samples: Mapping[ProcessKey, ProcessSample],
    wall_ns: int | None = None,
) -> dict[str, Any]:
    """A sweep line: host figures and one object per sampled process."""
    return {
        "v": FORMAT_VERSION,
        "kind": "sweep",
        "ts_ns": ts_ns,
        "time": iso_time(wall_ns) if wall_ns is not None else None,
        "host": None
        if host is None
        else {"cpus": host.cpus, "load1": host.load1, "psi": dict(host.psi)},
        "samples": [
            {
                "pid": key.pid,
                "start_time_ns": key.start_time_ns,
                **{name: getattr(sample, name) for name in _SAMPLE_FIELDS},
            }
            for key, sample in samples.items()
        ],
    }


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def sweep_from_dict(obj: dict[str, Any]) -> SweepRecord:
    """Validate a sweep line; raises DataError naming the field."""
    ts_ns = _field(obj, "ts_ns", _is_int, "an integer", required=True)
    host_raw = obj.get("host")
    host = None
    if host_raw is not None:
        if not isinstance(host_raw, dict):
            raise DataError("field 'host': expected an object or null")
        cpus = _field(host_raw, "cpus", _is_int, "an integer", required=True)
        load1 = _field(host_raw, "load1", _number, "a number", required=True)
        psi = host_raw.get("psi") or {}
        if not isinstance(psi, dict) or not all(_number(v) for v in psi.values()):
            raise DataError("field 'host.psi': expected an object of numbers")
        host = HostSample(ts_ns, cpus, float(load1), {str(k): float(v) for k, v in psi.items()})
    raw_samples = obj.get("samples")
    if not isinstance(raw_samples, list):
        raise DataError("field 'samples': expected a list")
    samples = []
    for i, item in enumerate(raw_samples):
        if not isinstance(item, dict):
            raise DataError(f"field 'samples[{i}]': expected an object")
        try:
            pid = _field(item, "pid", _is_int, "an integer", required=True)
            start = _field(item, "start_time_ns", _is_int, "an integer", required=True)
            values = [item.get(name) for name in _SAMPLE_FIELDS]
        except DataError as exc:
            raise DataError(f"samples[{i}]: {exc}") from None
        samples.append((ProcessKey.of(pid, start), ProcessSample(ts_ns, *values)))
    return SweepRecord(ts_ns, host, tuple(samples))


def open_recording(path: str | os.PathLike[str]) -> IO[str]:
    """A recording opened for reading; ``.gz`` files are decompressed on the fly."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_records(
    stream: IO[str], on_error: Callable[[int, str], None]
) -> Iterator[ProcessEvent | SweepRecord]:
    """Events and sweeps from a JSONL stream, in file order; bad lines go to
    ``on_error(line_no, reason)`` and never stop the read."""
    for line_no, line in enumerate(stream, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
            if isinstance(obj, dict) and obj.get("kind") == "sweep" and obj.get("v") == 1:
                yield sweep_from_dict(obj)
            else:
                yield event_from_dict(obj)
        except json.JSONDecodeError as exc:
            on_error(line_no, f"invalid JSON: {exc.msg} at column {exc.colno}")
        except DataError as exc:
            on_error(line_no, str(exc))


def recording_boot_id(stream: IO[str], max_lines: int = 1000) -> str | None:
    """The ``boot_id`` of the first of ``max_lines`` lines that has one.

    The lineage ids of a replay are recomputed with it. Recordings made
    before the field existed have none (they replay with an all-zero boot id).
    """
    for line in itertools.islice(stream, max_lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = obj.get("boot_id") if isinstance(obj, dict) else None
        if isinstance(value, str):
            return value
    return None


def read_events(stream: IO[str], on_error: Callable[[int, str], None]) -> Iterator[ProcessEvent]:
    """The lifecycle events of a JSONL stream (sweep lines are skipped).

    Blank lines are skipped. A bad line never stops the read: the caller
    decides what the count of errors means.
    """
    for record in read_records(stream, on_error):
        if isinstance(record, ProcessEvent):
            yield record
