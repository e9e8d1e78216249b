"""Lineage ids: the formula, the traceparent parser, lineage roots, TRACEPARENT
inheritance, and that a replay reproduces the ids the live run stamped."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
import uuid
from pathlib import Path

import pytest

from otel_linnix.cli import main
from otel_linnix.config import CaptureConfig, LineageConfig
from otel_linnix.events import NS_PER_TICK, EventKind, ProcessEvent
from otel_linnix.lineage import (
    NO_BOOT_ID,
    LineagePolicy,
    TraceParent,
    boot_id_bytes,
    parse_traceparent,
    span_id_of,
    trace_id_of,
)
from otel_linnix.process_table import ProcessTable
from otel_linnix.recording import event_to_dict, read_events
from otel_linnix.sinks import JsonlWriter
from otel_linnix.sources.bpf_program import ENV_SCAN_MAX, build_program
from otel_linnix.sources.btf import KernelOffsets
from otel_linnix.sources.procfs import ProcReader
from tests.unit.conftest import RECORDINGS, make_event

S = 1_000_000_000
BOOT_TEXT = "8c2f7a4e-1b3d-4f5a-9e6c-0d1e2f3a4b5c"
BOOT = uuid.UUID(BOOT_TEXT).bytes
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TP = f"00-{TRACE}-{PARENT}-01"


def table(**policy: object) -> ProcessTable:
    return ProcessTable(lineage=LineagePolicy(BOOT, **policy))  # type: ignore[arg-type]


def fork(pid: int, start: int, ppid: int, pstart: int, comm: str = "sh") -> ProcessEvent:
    return make_event(EventKind.FORK, pid, start, ppid=ppid, parent_start_time_ns=pstart, comm=comm)


def exec_(
    pid: int,
    start: int,
    ppid: int,
    pstart: int,
    exe: str,
    *,
    ts: int | None = None,
    traceparent: str | None = None,
) -> ProcessEvent:
    return make_event(
        EventKind.EXEC,
        pid,
        start,
        ts_ns=(start + 1000) if ts is None else ts,
        ppid=ppid,
        parent_start_time_ns=pstart,
        comm=exe.rsplit("/", 1)[-1][:15],
        exe=exe,
        argv=(exe,),
        traceparent=traceparent,
    )


def span(pid: int, start: int) -> str:
    return span_id_of(BOOT, pid, start - start % NS_PER_TICK)


def trace(pid: int, start: int) -> str:
    return trace_id_of(BOOT, pid, start - start % NS_PER_TICK)


# ---- the formula ------------------------------------------------------------


def test_ids_are_sha256_of_boot_id_pid_and_start_time_big_endian() -> None:
    digest = hashlib.sha256(BOOT + (4242).to_bytes(4, "big") + (12 * S).to_bytes(8, "big"))
    assert span_id_of(BOOT, 4242, 12 * S) == digest.digest()[:8].hex()
    assert trace_id_of(BOOT, 4242, 12 * S) == digest.digest()[:16].hex()
    assert len(span_id_of(BOOT, 1, 0)) == 16
    assert len(trace_id_of(BOOT, 1, 0)) == 32
    # The span id is the trace id's first half: a root's ids share a prefix.
    assert trace_id_of(BOOT, 7, S).startswith(span_id_of(BOOT, 7, S))


def test_ids_differ_by_boot_pid_and_start_time() -> None:
    ids = {
        span_id_of(BOOT, 10, S),
        span_id_of(NO_BOOT_ID, 10, S),
        span_id_of(BOOT, 11, S),
        span_id_of(BOOT, 10, S + NS_PER_TICK),
    }
    assert len(ids) == 4


def test_boot_id_text_is_the_uuid_as_proc_writes_it() -> None:
    assert boot_id_bytes(BOOT_TEXT + "\n") == BOOT
    assert LineagePolicy(BOOT).boot_uuid == BOOT_TEXT
    with pytest.raises(ValueError, match="16 bytes"):
        LineagePolicy(b"short")


def test_table_ids_use_the_tick_truncated_start_time() -> None:
    t = table()
    start = 5 * S + 3_456_789  # not on a tick: the key truncates it
    trace_id, span_id, parent = t.apply(fork(50, start, 1, 20_000_000))
    assert span_id == span_id_of(BOOT, 50, 5 * S)
    assert trace_id == trace_id_of(BOOT, 50, 5 * S)
    assert parent is None


# ---- the traceparent parser -----------------------------------------------------


def test_a_valid_version_00_traceparent() -> None:
    assert parse_traceparent(TP) == TraceParent("00", TRACE, PARENT, "01")


@pytest.mark.parametrize(
    "value",
    [
        "",
        TP[:-1],  # 54 characters
        TP + "-",  # version 00 must be exactly 55
        TP + "0",
        TP.upper(),
        TP.replace(TRACE, "0" * 32),
        TP.replace(PARENT, "0" * 16),
        "ff" + TP[2:],
        TP.replace("-", "_", 1),
        TP[:35] + "x" + TP[36:],
        TP.replace(TRACE, "g" + TRACE[1:]),
        TP[:-2] + "0z",
        "0x" + TP[2:],
        TP.replace(TRACE, "é" + TRACE[1:]),
    ],
)
def test_malformed_traceparents_are_rejected(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_in_the_00_layout() -> None:
    later = "01" + TP[2:]
    assert parse_traceparent(later) == TraceParent("01", TRACE, PARENT, "01")
    assert parse_traceparent(later + "-more") == TraceParent("01", TRACE, PARENT, "01")
    assert parse_traceparent(later + "x") is None


# ---- lineage roots ---------------------------------------------------------------


INIT = 20_000_000


def test_a_tree_shares_the_trace_of_its_root_and_links_parent_spans() -> None:
    t = table()
    t.apply(exec_(1, INIT, 0, 0, "/sbin/init"))
    bash = t.apply(fork(100, 10 * S, 1, INIT))
    make = t.apply(fork(200, 11 * S, 100, 10 * S))
    cc = t.apply(fork(300, 12 * S, 200, 11 * S))
    assert bash == (trace(100, 10 * S), span(100, 10 * S), None)  # child of pid 1: a root
    assert make == (trace(100, 10 * S), span(200, 11 * S), span(100, 10 * S))
    assert cc == (trace(100, 10 * S), span(300, 12 * S), span(200, 11 * S))
    info = t.get(make_event(EventKind.FORK, 300, 12 * S).key)
    assert info is not None
    assert (info.trace_id, info.span_id, info.parent_span_id) == cc


def test_pid_1_itself_and_processes_with_unknown_parents_are_roots() -> None:
    t = table()
    assert t.apply(exec_(1, INIT, 0, 0, "/sbin/init"))[2] is None
    orphan = t.apply(fork(900, 30 * S, 800, 29 * S))  # parent never seen
    assert orphan == (trace(900, 30 * S), span(900, 30 * S), None)


@pytest.mark.parametrize(
    ("parent_exe", "comm"),
    [
        ("/usr/sbin/sshd", "sshd"),
        ("/usr/sbin/cron", "cron"),
        ("/opt/bin/renamed-sshd", "sshd"),  # the comm alone matches
        ("/usr/bin/containerd-shim-runc-v2", "containerd-shim"),
        ("/usr/bin/conmon", "conmon"),
    ],
)
def test_children_of_spawners_and_shims_start_a_new_trace(parent_exe: str, comm: str) -> None:
    t = table()
    t.apply(exec_(1, INIT, 0, 0, "/sbin/init"))
    t.apply(fork(10, S, 1, INIT))
    t.apply(exec_(10, S, 1, INIT, "/usr/bin/launcher"))
    spawner = make_event(
        EventKind.EXEC,
        20,
        2 * S,
        ts_ns=2 * S + 5,
        ppid=10,
        parent_start_time_ns=S,
        comm=comm,
        exe=parent_exe,
    )
    t.apply(fork(20, 2 * S, 10, S))
    assert t.apply(spawner)[0] == trace(10, S)  # under the launcher: inherits
    child = t.apply(fork(30, 3 * S, 20, 2 * S, comm=comm))
    assert child == (trace(30, 3 * S), span(30, 3 * S), None)
    # Still running the spawner's image, the child would start new work too;
    # once it runs a shell, the shell's children belong to its trace.
    t.apply(exec_(30, 3 * S, 20, 2 * S, "/bin/bash"))
    grandchild = t.apply(fork(40, 4 * S, 30, 3 * S, comm="bash"))
    assert grandchild == (trace(30, 3 * S), span(40, 4 * S), span(30, 3 * S))


def test_a_long_spawner_name_matches_the_15_byte_comm() -> None:
    policy = LineagePolicy(BOOT, frozenset({"my-long-job-runner"}))
    assert policy.starts_work("my-long-job-run", None)
    assert policy.starts_work("x", "/opt/my-long-job-runner")
    assert not policy.starts_work("bash", "/usr/bin/bash")
    assert not policy.starts_work("systemd-journal", "/lib/systemd/systemd-journald")
    # Shims count whatever the configured spawners are.
    assert LineagePolicy(BOOT, frozenset()).starts_work("containerd-shim", None)


def test_spawners_come_from_the_configuration() -> None:
    policy = LineagePolicy.from_config(LineageConfig(spawners=("jobd",), traceparent=False), BOOT)
    assert policy.spawners == frozenset({"jobd"})
    assert policy.traceparent is False
    assert policy.boot_id == BOOT


def test_ids_stay_the_same_after_ancestors_are_pruned() -> None:
    t = ProcessTable(exited_retention_ns=S, lineage=LineagePolicy(BOOT))
    t.apply(fork(100, 10 * S, 1, INIT))
    t.apply(fork(200, 11 * S, 100, 10 * S))
    t.apply(make_event(EventKind.EXIT, 100, 10 * S, ts_ns=12 * S, ppid=1))
    assert t.prune(20 * S) == 1
    assert t.get(make_event(EventKind.FORK, 100, 10 * S).key) is None
    # The survivor keeps its ids, and its new child still joins the trace.
    again = t.apply(make_event(EventKind.EXEC, 200, 11 * S, ts_ns=21 * S, ppid=1, exe="/bin/x"))
    assert again == (trace(100, 10 * S), span(200, 11 * S), span(100, 10 * S))
    child = t.apply(fork(300, 22 * S, 200, 11 * S))
    assert child == (trace(100, 10 * S), span(300, 22 * S), span(200, 11 * S))


# ---- TRACEPARENT -----------------------------------------------------------------


def tp_tree(t: ProcessTable, child_tp: str | None) -> tuple[tuple[str, str, str | None], ...]:
    """bash (child of init) runs app with TRACEPARENT=TP; app runs worker
    with ``child_tp`` in its environment."""
    t.apply(exec_(1, INIT, 0, 0, "/sbin/init"))
    t.apply(fork(100, 10 * S, 1, INIT))
    t.apply(exec_(100, 10 * S, 1, INIT, "/bin/bash"))
    t.apply(fork(200, 11 * S, 100, 10 * S))
    app = t.apply(exec_(200, 11 * S, 100, 10 * S, "/usr/bin/app", traceparent=TP))
    t.apply(fork(300, 12 * S, 200, 11 * S))
    worker = t.apply(exec_(300, 12 * S, 200, 11 * S, "/usr/bin/worker", traceparent=child_tp))
    grandchild = t.apply(fork(400, 13 * S, 300, 12 * S))
    return app, worker, grandchild


def test_a_traceparent_set_for_a_process_gives_its_trace_and_parent_span() -> None:
    app, worker, grandchild = tp_tree(table(), TP)
    assert app == (TRACE, span(200, 11 * S), PARENT)
    # The worker inherited the same TRACEPARENT unchanged: its parent span is
    # its real parent, so the tree keeps its shape under the trace.
    assert worker == (TRACE, span(300, 12 * S), span(200, 11 * S))
    assert grandchild == (TRACE, span(400, 13 * S), span(300, 12 * S))


def test_a_different_traceparent_for_a_child_wins_again() -> None:
    other_trace, other_parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    _, worker, grandchild = tp_tree(table(), f"00-{other_trace}-{other_parent}-00")
    assert worker == (other_trace, span(300, 12 * S), other_parent)
    assert grandchild == (other_trace, span(400, 13 * S), span(300, 12 * S))


def test_a_child_whose_environment_dropped_the_traceparent_stays_in_the_trace() -> None:
    _, worker, _ = tp_tree(table(), None)
    assert worker == (TRACE, span(300, 12 * S), span(200, 11 * S))


def test_events_before_the_exec_keep_the_inherited_trace() -> None:
    t = table()
    t.apply(fork(100, 10 * S, 1, INIT))
    before = t.apply(fork(200, 11 * S, 100, 10 * S))
    after = t.apply(exec_(200, 11 * S, 100, 10 * S, "/usr/bin/app", traceparent=TP))
    assert before[0] == trace(100, 10 * S)
    assert after == (TRACE, span(200, 11 * S), PARENT)
    exit_ = make_event(EventKind.EXIT, 200, 11 * S, ts_ns=15 * S, ppid=100)
    assert t.apply(exit_) == after


def test_a_malformed_traceparent_is_ignored_and_counted() -> None:
    t = table()
    t.apply(fork(100, 10 * S, 1, INIT))
    t.apply(fork(200, 11 * S, 100, 10 * S))
    ids = t.apply(exec_(200, 11 * S, 100, 10 * S, "/bin/app", traceparent=TP.upper()))
    assert ids == (trace(100, 10 * S), span(200, 11 * S), span(100, 10 * S))
    assert t.stats().traceparent_invalid == 1


def test_traceparents_are_ignored_when_disabled() -> None:
    app, _, _ = tp_tree(table(traceparent=False), TP)
    assert app == (trace(100, 10 * S), span(200, 11 * S), span(100, 10 * S))


def test_an_older_exec_record_does_not_change_the_trace() -> None:
    t = table()
    t.apply(fork(100, 10 * S, 1, INIT))
    t.apply(fork(200, 11 * S, 100, 10 * S))
    newer = t.apply(exec_(200, 11 * S, 100, 10 * S, "/bin/b", ts=11 * S + 9000))
    older = t.apply(exec_(200, 11 * S, 100, 10 * S, "/bin/a", ts=11 * S + 10, traceparent=TP))
    assert older == newer


def test_proc_reader_returns_only_the_traceparent_value(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, env in {
        7: b"HOME=/root\0TRACEPARENT=" + TP.encode() + b"\0SECRET=hunter2\0",
        8: b"TRACEPARENT=short\0SECRET=x\0",
        9: b"NOT_TRACEPARENT=" + TP.encode() + b"\0",
        10: b"TRACEPARENT=" + TP.encode() + b"-and-more-fields",
    }.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "environ").write_bytes(env)
    reader = ProcReader(str(proc))
    assert reader.traceparent(7) == TP
    assert reader.traceparent(8) == "short"
    assert reader.traceparent(9) is None
    assert reader.traceparent(10) == TP + "-"  # cut where the kernel probe cuts
    assert reader.traceparent(11) is None  # gone


# ---- the pipeline and replays -------------------------------------------------------


def test_replay_recomputes_the_recorded_ids(capsys: pytest.CaptureFixture[str]) -> None:
    """The fixture was recorded with its boot id; a replay derives the same ids."""
    with (RECORDINGS / "build_tree.jsonl").open() as fh:
        recorded = [json.loads(line) for line in fh]
    assert main(["replay", "--json", str(RECORDINGS / "build_tree.jsonl")]) == 0
    replayed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    fields = ("boot_id", "trace_id", "span_id", "parent_span_id")
    assert [[r[f] for f in fields] for r in replayed] == [[r[f] for f in fields] for r in recorded]
    boot = uuid.UUID(recorded[0]["boot_id"]).bytes
    bash = recorded[0]
    assert bash["span_id"] == span_id_of(boot, bash["pid"], bash["start_time_ns"] // 10**7 * 10**7)
    assert len({r["trace_id"] for r in recorded}) == 1


def test_a_recording_made_by_the_writer_replays_to_the_same_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = table()
    events = [
        exec_(1, INIT, 0, 0, "/sbin/init"),
        fork(100, 10 * S, 1, INIT),
        exec_(100, 10 * S, 1, INIT, "/usr/bin/app", traceparent=TP),
        fork(200, 11 * S, 100, 10 * S),
        exec_(200, 11 * S, 100, 10 * S, "/usr/bin/worker", traceparent=TP),
        fork(300, 12 * S, 200, 11 * S, comm="worker"),
    ]
    stamped = [ev.stamp(i, None, t.apply(ev)) for i, ev in enumerate(events, start=1)]
    out = io.BytesIO()
    JsonlWriter(out, lambda ts: ts + 1_700_000_000 * S, BOOT_TEXT).emit(stamped)
    path = tmp_path / "rec.jsonl"
    path.write_bytes(out.getvalue())
    assert main(["replay", "--json", str(path)]) == 0
    replayed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["trace_id"], r["span_id"], r["parent_span_id"]) for r in replayed] == [
        (ev.trace_id, ev.span_id, ev.parent_span_id) for ev in stamped
    ]
    assert replayed[-1]["trace_id"] == TRACE
    assert replayed[-1]["parent_span_id"] == span(200, 11 * S)


def test_a_replay_without_the_parents_keeps_the_recorded_lineage() -> None:
    """A recording made without the start-up walk: the first processes' parents
    are missing, so the recorded ids are the best knowledge of their trace."""
    recorded = event_to_dict(
        fork(500, 40 * S, 450, 39 * S).stamp(1, None, ("a" * 32, span(500, 40 * S), "b" * 16))
    )
    (ev,) = read_events(io.StringIO(json.dumps(recorded) + "\n"), lambda n, why: None)
    t = table()
    assert t.apply(ev) == ("a" * 32, span(500, 40 * S), "b" * 16)
    assert t.apply(fork(501, 41 * S, 500, 40 * S)) == (
        "a" * 32,
        span(501, 41 * S),
        span(500, 40 * S),
    )


def test_old_recordings_replay_with_an_all_zero_boot_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = event_to_dict(fork(100, 10 * S, 1, INIT))
    for name in ("boot_id", "traceparent", "trace_id", "span_id", "parent_span_id"):
        del line[name]
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(line) + "\n")
    assert main(["replay", "--json", str(path)]) == 0
    (replayed,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert replayed["span_id"] == span_id_of(NO_BOOT_ID, 100, 10 * S)
    assert replayed["boot_id"] is None


def test_id_layout_is_what_the_docs_say() -> None:
    """docs/architecture.md spells the formula out; recompute it by hand."""
    pid, start = 31337, 123_450_000_000
    raw = BOOT + struct.pack(">IQ", pid, start)
    assert len(raw) == 28
    digest = hashlib.sha256(raw).digest()
    assert (span_id_of(BOOT, pid, start), trace_id_of(BOOT, pid, start)) == (
        digest[:8].hex(),
        digest[:16].hex(),
    )


@pytest.mark.parametrize("enabled", [True, False])
def test_the_program_scans_for_traceparent_only_when_enabled(enabled: bool) -> None:
    offsets = KernelOffsets(**{f.name: 0 for f in dataclasses.fields(KernelOffsets)})
    program = build_program(CaptureConfig(), offsets, traceparent=enabled)
    assert f"-DTRACEPARENT_SCAN={int(enabled)}" in program.cflags
    assert f"-DENV_SCAN_MAX={ENV_SCAN_MAX}" in program.cflags
    assert "-DOFF_MM_ENV_START=0" in program.cflags
    assert "#if TRACEPARENT_SCAN" in program.text
    assert "//   -DTRACEPARENT_SCAN=" in program.dump()
