"""The recorded-event format: round trips, the stable shape, validation, line errors."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from otel_linnix.errors import DataError
from otel_linnix.events import EventKind, ProcessEvent, ProcessSource
from otel_linnix.recording import (
    FORMAT_VERSION,
    event_from_dict,
    event_to_dict,
    iso_time,
    read_events,
    recording_boot_id,
)
from tests.unit.conftest import RECORDINGS, make_event

WALL = 1_700_000_000_123_456_789


def full_event(kind: EventKind) -> ProcessEvent:
    """An event with every field away from its default."""
    return ProcessEvent(
        kind=kind,
        ts_ns=5_000_000_123,
        pid=4242,
        ppid=17,
        start_time_ns=4_990_000_000,
        comm="wörker",
        uid=1000,
        gid=100,
        parent_start_time_ns=1_000_000_000,
        cgroup_id=8123,
        source=ProcessSource.PROCFS,
        exe="/opt/app/bin/wörker",
        argv=("wörker", "--name", "", 'it\'s "quoted"'),
        argv_truncated=True,
        exit_code=3,
        exit_signal=11,
        core_dumped=True,
        cpu_time_ns=12_345_678,
        peak_rss_bytes=1 << 30,
        rss_bytes=1 << 29,
        bootstrap=True,
        kernel_thread=True,
        container_id="a" * 64,
        container_runtime="docker",
        pod_uid="c5de9fc7-6d1d-4d5b",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        seq=99,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="5266345710cfbed7",
        parent_span_id="b7ad6b7169203331",
    )


@pytest.mark.parametrize("kind", list(EventKind), ids=lambda k: k.value)
def test_round_trip_keeps_every_field(kind: EventKind) -> None:
    ev = full_event(kind)
    line = json.dumps(event_to_dict(ev, WALL))
    back = event_from_dict(json.loads(line))
    assert {name: getattr(back, name) for name in ProcessEvent._fields} == {
        name: getattr(ev, name) for name in ProcessEvent._fields
    }
    assert back == ev
    assert back.seq == 99


def test_every_field_is_always_present() -> None:
    minimal = make_event(EventKind.FORK, 1, 0)
    obj = event_to_dict(minimal)
    expected = set(ProcessEvent._fields) | {"v", "time", "boot_id"}
    assert set(obj) == expected
    assert obj["v"] == FORMAT_VERSION
    assert obj["time"] is None
    assert obj["argv"] is None
    assert obj["kind"] == "fork"
    assert obj["source"] == "ebpf"


def test_time_is_added_from_wall_clock() -> None:
    obj = event_to_dict(make_event(EventKind.FORK, 1, 0), WALL)
    assert obj["time"] == "2023-11-14T22:13:20.123456789Z"


@pytest.mark.parametrize(
    ("wall_ns", "text"),
    [
        (0, "1970-01-01T00:00:00.000000000Z"),
        (1_700_000_000_000_000_001, "2023-11-14T22:13:20.000000001Z"),
        (1_700_000_000_999_999_999, "2023-11-14T22:13:20.999999999Z"),
    ],
)
def test_iso_time(wall_ns: int, text: str) -> None:
    assert iso_time(wall_ns) == text


def valid() -> dict[str, Any]:
    return event_to_dict(make_event(EventKind.EXEC, 10, 5, comm="sh", argv=("sh",)))


def with_(**changes: Any) -> dict[str, Any]:
    obj = valid()
    obj.update(changes)
    return obj


def without(name: str) -> dict[str, Any]:
    obj = valid()
    del obj[name]
    return obj


@pytest.mark.parametrize(
    ("obj", "named"),
    [
        (without("pid"), "'pid': missing"),
        (with_(pid=None), "'pid': missing"),
        (without("ts_ns"), "'ts_ns': missing"),
        (without("start_time_ns"), "'start_time_ns': missing"),
        (without("kind"), "'kind': missing"),
        (with_(pid="10"), "'pid': expected an integer, got '10'"),
        (with_(pid=True), "'pid': expected an integer"),
        (with_(kind="spawn"), "'kind': unknown kind 'spawn'"),
        (with_(v=2), "'v': unsupported format version 2"),
        (without("v"), "'v': unsupported format version None"),
        (with_(argv=["sh", 1]), "'argv': expected a list of strings"),
        (with_(argv="sh -c true"), "'argv': expected a list of strings"),
        (with_(exit_code="0"), "'exit_code': expected an integer or null"),
        (with_(core_dumped=1), "'core_dumped': expected true or false"),
        (with_(comm=5), "'comm': expected a string"),
        (with_(exe=["/bin/sh"]), "'exe': expected a string or null"),
        (with_(source="kernel"), "'source': unknown source 'kernel'"),
    ],
    ids=[
        "missing-pid",
        "null-pid",
        "missing-ts",
        "missing-start",
        "missing-kind",
        "pid-string",
        "pid-bool",
        "unknown-kind",
        "v2",
        "no-v",
        "argv-int",
        "argv-string",
        "exit-code-string",
        "bool-as-int",
        "comm-int",
        "exe-list",
        "unknown-source",
    ],
)
def test_validation_error_names_the_field(obj: dict[str, Any], named: str) -> None:
    with pytest.raises(DataError) as info:
        event_from_dict(obj)
    assert named in str(info.value)


@pytest.mark.parametrize("value", [[1, 2], "text", 3, None], ids=["list", "string", "int", "null"])
def test_a_line_that_is_not_an_object_is_rejected(value: object) -> None:
    with pytest.raises(DataError, match="expected a JSON object"):
        event_from_dict(value)


def test_optional_fields_default_when_absent() -> None:
    ev = event_from_dict({"v": 1, "kind": "exit", "ts_ns": 9, "pid": 3, "start_time_ns": 2})
    assert ev == ProcessEvent(
        kind=EventKind.EXIT,
        ts_ns=9,
        pid=3,
        ppid=0,
        start_time_ns=2,
        comm="",
        source=ProcessSource.REPLAY,
    )
    assert ev.seq == 0


def test_read_events_reports_bad_lines_and_keeps_going() -> None:
    good = [json.dumps(event_to_dict(make_event(EventKind.FORK, pid, pid))) for pid in (1, 2, 3)]
    text = (
        "\n".join(
            [
                good[0],
                "{not json",
                "",
                good[1],
                json.dumps(with_(pid="x")),
                "   ",
                "[]",
                good[2],
            ]
        )
        + "\n"
    )
    errors: list[tuple[int, str]] = []
    events = list(read_events(io.StringIO(text), lambda n, why: errors.append((n, why))))
    assert [ev.pid for ev in events] == [1, 2, 3]
    assert [n for n, _ in errors] == [2, 5, 7]
    assert errors[0][1].startswith("invalid JSON")
    assert "'pid'" in errors[1][1]
    assert "JSON object" in errors[2][1]


@pytest.mark.parametrize("name", ["build_tree.jsonl", "oom_victim.jsonl"])
def test_fixtures_are_valid_recordings(name: str) -> None:
    errors: list[tuple[int, str]] = []
    with open(RECORDINGS / name, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
        fh.seek(0)
        events = list(read_events(fh, lambda n, why: errors.append((n, why))))
    assert errors == []
    assert len(events) == len(lines)
    for line, ev in zip(lines, events, strict=True):
        obj = json.loads(line)
        assert obj["v"] == 1
        assert set(obj) == set(event_to_dict(ev))


def test_recorded_lines_name_their_boot() -> None:
    boot = "3f2b8c1e-5d4a-4e6f-9a7b-0c1d2e3f4a5b"
    obj = event_to_dict(make_event(EventKind.FORK, 1, 0), None, boot)
    assert obj["boot_id"] == boot
    assert event_to_dict(make_event(EventKind.FORK, 1, 0))["boot_id"] is None
    stream = io.StringIO("\n".join(json.dumps(o) for o in ({"v": 1}, obj)) + "\n")
    assert recording_boot_id(stream) == boot
    assert recording_boot_id(io.StringIO('{"v": 1, "kind": "fork"}\nnot json\n')) is None


def test_recordings_without_lineage_fields_still_load() -> None:
    """Lines written before traceparent, the lineage ids and boot_id existed."""
    old = valid()
    for name in ("boot_id", "traceparent", "trace_id", "span_id", "parent_span_id"):
        del old[name]
    ev = event_from_dict(old)
    assert (ev.traceparent, ev.trace_id, ev.span_id, ev.parent_span_id) == (None,) * 4
    assert ev.argv == ("sh",)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trace_id", "ABCDEF" * 5 + "00"),  # upper case
        ("trace_id", "a" * 31),
        ("span_id", "g" * 16),
        ("parent_span_id", 12),
    ],
)
def test_malformed_lineage_ids_are_rejected_naming_the_field(field: str, value: object) -> None:
    obj = valid()
    obj[field] = value
    with pytest.raises(DataError, match=field):
        event_from_dict(obj)
