"""``otel-linnix rules validate`` and ``otel-linnix rules test`` in-process, and the
replay behind them, over synthetic recordings (events and sweep lines)."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from otel_linnix.cli import main
from otel_linnix.errors import EX_CONFIG, EX_DATAERR, EX_USAGE
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey
from otel_linnix.process_table import HostSample, ProcessSample
from otel_linnix.recording import event_to_dict, iso_time, sweep_to_dict
from otel_linnix.rules.alerts import alert_id
from otel_linnix.rules.loader import load_rules
from otel_linnix.rules.replay import check_expectations, replay_rules
from tests.unit.conftest import FIXTURES, make_event

pytestmark = pytest.mark.usefixtures("no_system_config")

S = 1_000_000_000
MS = 1_000_000
MIB = 1024 * 1024
T0 = 5_000 * S
OFFSET = 1_700_000_000 * S  # boot clock -> wall clock of the recording machine
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "rules.yaml"
THREE_MISTAKES = FIXTURES / "rules" / "three_mistakes.yaml"
LINNIX_DEMO = FIXTURES / "rules" / "linnix_demo.yaml"
FORK, EXEC, EXIT = EventKind.FORK, EventKind.EXEC, EventKind.EXIT
SHELL = ProcessKey.of(100, T0 - 100 * S)

BURST_RULES = """
rules:
  - name: burst
    detector: fork_storm
    params: {threshold_per_s: 200, window_s: 1}
    severity: critical
    resolve_after_s: 5
    cooldown_s: 60
    message: "{rate:.0f} forks/s; top: {top_parents}"
  - name: crashes
    detector: crash_loop
    params: {min_exits: 3, window_s: 10}
"""


def event_line(ev: ProcessEvent, *, wall: bool = True) -> dict[str, Any]:
    return event_to_dict(ev, ev.ts_ns + OFFSET if wall else None)


def sweep_line(
    ts: int, samples: Mapping[ProcessKey, ProcessSample], *, wall: bool = True
) -> dict[str, Any]:
    host = HostSample(ts, 2, 0.4, {"cpu.some": 1.5, "memory.full": 0.0})
    return sweep_to_dict(ts, host, samples, ts + OFFSET if wall else None)


def write_jsonl(path: Path, records: Iterable[dict[str, Any] | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def write_rules(tmp_path: Path, text: str, expect: str = "") -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        textwrap.dedent(text) + (f"expect:\n{textwrap.dedent(expect)}" if expect else "")
    )
    return path


def shell_birth() -> list[ProcessEvent]:
    start = SHELL.start_time_ns
    return [
        make_event(FORK, 100, start, ppid=1, parent_start_time_ns=20 * MS, comm="systemd"),
        make_event(EXEC, 100, start, ts_ns=start + MS, comm="bash", exe="/usr/bin/bash"),
    ]


def burst(
    start: int, count: int = 600, every: int = 2 * MS, first_pid: int = 1000
) -> list[ProcessEvent]:
    """``count`` short-lived children of the shell, one every ``every`` ns (500/s)."""
    events: list[ProcessEvent] = []
    for i in range(count):
        born = start + i * every
        pid = first_pid + i
        events.append(
            make_event(
                FORK, pid, born, ppid=100, parent_start_time_ns=SHELL.start_time_ns, comm="bash"
            )
        )
        events.append(make_event(EXIT, pid, born, ts_ns=born + MS, comm="bash", exit_code=0))
    return events


def burst_recording(
    path: Path, *, bursts: Iterable[int] = (T0,), wall: bool = True, seconds: int = 15
) -> Path:
    """The shell, fork bursts at the given times, and one sweep a second
    (the shell's readings) from 5 s before the first burst to ``seconds`` after
    the last, all in kernel-time order."""
    starts = sorted(bursts)
    events = shell_birth()
    for n, start in enumerate(starts):
        events += burst(start, first_pid=1000 + 1000 * n)
    sweep_times = range(starts[0] - 5 * S, starts[-1] + seconds * S + 1, S)
    reading = {SHELL: ProcessSample(0, 10 * MS, 0.5, 4 * MIB, 4, 1024, 1, "S")}
    timeline: list[tuple[int, int, dict[str, Any]]] = [
        (ev.ts_ns, 0, event_line(ev, wall=wall)) for ev in events
    ]
    timeline += [
        (ts, 1, sweep_line(ts, {k: s._replace(ts_ns=ts) for k, s in reading.items()}, wall=wall))
        for ts in sweep_times
    ]
    timeline.sort(key=lambda item: (item[0], item[1]))
    return write_jsonl(path, (record for _, _, record in timeline))


# ---- rules validate ------------------------------------------------------------------------


def test_validate_the_shipped_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate", str(SHIPPED)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f"rules ok: {SHIPPED}: 10 rules (10 enabled)"
    assert lines[1:] == [
        f"  {r.name}: {r.detector} [{r.severity.label}]" for r in load_rules(SHIPPED).rules
    ]
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "fork_storm",
        "fork_storm_by_parent",
        "runaway_tree",
        "crash_loop",
        "cpu_spike",
        "runaway_process",
        "memory_leak",
        "fd_exhaustion",
        "oom_kill",
        "cpu_thrashing",
    ]
    assert err == ""


def test_validate_without_a_file_checks_the_configured_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rules", "validate"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("rules ok: ")
    assert first.endswith("rules.yaml: 10 rules (10 enabled)")


def test_validate_the_rules_a_config_file_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = write_rules(tmp_path, "rules:\n  - {name: only, detector: oom_kill, enabled: false}\n")
    config = tmp_path / "linnix.toml"
    config.write_text(f"[rules]\nconfig_path = '{rules}'\n")
    assert main(["rules", "validate", "--config", str(config)]) == 0
    assert capsys.readouterr().out == (
        f"rules ok: {rules}: 1 rules (0 enabled)\n  only: oom_kill [medium] (disabled)\n"
    )


def test_validate_reports_every_problem_and_exits_78(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate", str(THREE_MISTAKES)]) == EX_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3, lines
    prefix = f"otel-linnix: {THREE_MISTAKES}: rule"
    assert lines[0].startswith(f"{prefix} 'slow_oom': params.hold_s: expected a number")
    assert lines[1].startswith(f"{prefix} 'bomb': detector: unknown detector 'fork_bomb'")
    assert lines[2].startswith(f"{prefix} 'crashes': condition: at column 5: unknown field")


def test_validate_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["rules", "validate", str(missing)]) == EX_CONFIG
    assert capsys.readouterr().err == f"otel-linnix: {missing}: rules file not found\n"


def test_validate_a_linnix_rules_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate", str(LINNIX_DEMO)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"rules ok: {LINNIX_DEMO}: 4 rules (4 enabled)",
        "  fork_storm_demo: fork_storm [high]",
        "  fork_burst_demo: fork_storm [medium]",
        "  memory_leak_demo: rss_high [high]",
        "  cpu_spike_demo: cpu_spike [medium]",
    ]


@pytest.mark.parametrize("argv", [["rules"], ["rules", "test", "x.yaml"], ["rules", "lint"]])
def test_rules_usage_errors_exit_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EX_USAGE
    assert "usage: otel-linnix rules" in capsys.readouterr().err


# ---- rules test ------------------------------------------------------------------------------


def test_a_fork_burst_fires_and_resolves_and_meets_the_expectation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = burst_recording(tmp_path / "burst.jsonl")
    rules = write_rules(
        tmp_path, BURST_RULES, "  - {rule: burst, count: 1}\n  - {rule: crashes, count: 0}\n"
    )
    assert main(["rules", "test", str(rules), "--events", str(recording)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2, out
    fired, resolved = lines
    line = re.compile(
        r"(?P<stamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (?P<state>FIRING  |RESOLVED) "
        r"critical burst: host: (?P<rate>\d+) forks/s; top: bash\(100\)=(?P<count>\d+)"
    )
    fired_match, resolved_match = line.fullmatch(fired), line.fullmatch(resolved)
    assert fired_match is not None, fired
    assert resolved_match is not None, resolved
    assert fired_match["state"] == "FIRING  "
    assert resolved_match["state"] == "RESOLVED"
    # fired during the burst (T0 .. T0 + 1.2 s), at a rate of 200/s or more
    assert iso_time(T0 + OFFSET) < fired_match["stamp"] <= iso_time(T0 + 1200 * MS + OFFSET)
    assert int(fired_match["rate"]) >= 200
    assert int(resolved_match["rate"]) >= 200  # the last finding's figures
    assert err.splitlines() == [
        "replayed 1202 events and 21 sweeps: 1 alert(s) (burst)",
        "expect burst: 1 alert(s), wanted exactly 1: ok",
        "expect crashes: 0 alert(s), wanted none: ok",
    ]


def test_an_unmet_expectation_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recording = burst_recording(tmp_path / "burst.jsonl")
    rules = write_rules(
        tmp_path,
        BURST_RULES,
        "  - {rule: burst, count: 2}\n  - {rule: burst, min: 1, max: 3}\n  - {rule: crashes}\n",
    )
    assert main(["rules", "test", str(rules), "--events", str(recording)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert err.splitlines()[1:] == [
        "expect burst: 1 alert(s), wanted exactly 2: NOT MET",
        "expect burst: 1 alert(s), wanted 1..3: ok",
        "expect crashes: 0 alert(s), wanted at least 1: NOT MET",
    ]


def test_json_prints_one_object_per_transition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = burst_recording(tmp_path / "burst.jsonl")
    rules = write_rules(tmp_path, BURST_RULES)
    assert main(["rules", "test", str(rules), "--events", str(recording), "--json"]) == 0
    out, err = capsys.readouterr()
    fired, resolved = (json.loads(line) for line in out.splitlines())
    assert fired["transition"] == fired["state"] == "firing"
    assert resolved["transition"] == resolved["state"] == "resolved"
    assert fired["id"] == resolved["id"] == alert_id("burst", "host", fired["first_seen_ns"])
    assert fired["rule"] == "burst"
    assert fired["severity"] == "critical"
    assert fired["subject"]["kind"] == "host"
    assert fired["first_seen"] == iso_time(fired["first_seen_ns"] + OFFSET)
    assert fired["resolved_at"] is None
    assert resolved["resolved_at"] == iso_time(resolved["resolved_ns"] + OFFSET)
    assert resolved["resolved_ns"] - resolved["last_seen_ns"] >= 5 * S
    assert fired["evidence"]["threshold_per_s"] == 200.0
    assert fired["message"].endswith("forks/s; top: " + fired["evidence"]["top_parents"])
    assert err.startswith("replayed 1202 events and 21 sweeps: 1 alert(s) (burst)\n")


def test_without_wall_times_lines_show_boot_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = burst_recording(tmp_path / "burst.jsonl", wall=False)
    rules = write_rules(tmp_path, BURST_RULES)
    assert main(["rules", "test", str(rules), "--events", str(recording)]) == 0
    fired, resolved = capsys.readouterr().out.splitlines()
    stamp, rest = fired.split(" ", 1)
    assert rest.startswith("FIRING   critical burst: host: ")
    assert T0 / 1e9 < float(stamp) <= (T0 + 1200 * MS) / 1e9
    assert re.fullmatch(r"\d+\.\d{3}", stamp)
    assert resolved.split(" ", 1)[1].startswith("RESOLVED critical burst: host: ")


def test_a_bad_line_exits_65_after_the_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = burst_recording(tmp_path / "burst.jsonl")
    lines = recording.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["pid"] = "100"
    lines.insert(2, json.dumps(broken))
    lines.insert(5, "{not json")
    recording.write_text("\n".join(lines) + "\n")
    rules = write_rules(tmp_path, BURST_RULES, "  - {rule: burst, count: 1}\n")
    assert main(["rules", "test", str(rules), "--events", str(recording)]) == EX_DATAERR
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2  # the rest of the recording was replayed
    assert f"otel-linnix: {recording}:3: field 'pid': expected an integer, got '100'\n" in err
    assert f"otel-linnix: {recording}:6: invalid JSON: " in err
    assert "expect burst: 1 alert(s), wanted exactly 1: ok" in err


def test_a_broken_rules_file_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recording = burst_recording(tmp_path / "burst.jsonl")
    assert main(["rules", "test", str(THREE_MISTAKES), "--events", str(recording)]) == EX_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 3
    assert all(
        line.startswith(f"otel-linnix: {THREE_MISTAKES}: rule ") for line in err.splitlines()
    )


def test_a_missing_recording_exits_65(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write_rules(tmp_path, BURST_RULES)
    missing = tmp_path / "missing.jsonl"
    assert main(["rules", "test", str(rules), "--events", str(missing)]) == EX_DATAERR
    assert capsys.readouterr().err == (
        f"otel-linnix: {missing}: cannot read recording: No such file or directory\n"
    )


def test_sweeps_drive_the_shipped_memory_leak_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaker = ProcessKey.of(4242, T0 - 5 * S)
    records: list[dict[str, Any]] = [
        event_line(
            make_event(FORK, 4242, T0 - 5 * S, ppid=100, parent_start_time_ns=SHELL.start_time_ns)
        ),
        event_line(
            make_event(EXEC, 4242, T0 - 5 * S, ts_ns=T0 - 4 * S, comm="leaker", exe="/opt/leaker")
        ),
    ]
    for i in range(10):  # 20 MiB/s for 10 sweeps, one a second
        ts = T0 + i * S
        rss = 100 * MIB + i * 20 * MIB
        records.append(
            sweep_line(ts, {leaker: ProcessSample(ts, i * MS, 2.0, rss, 12, 1024, 1, "R")})
        )
    recording = write_jsonl(tmp_path / "leak.jsonl", records)
    assert main(["rules", "test", str(SHIPPED), "--events", str(recording)]) == 0
    out, err = capsys.readouterr()
    # 8 samples and 140 MiB of growth: it fires on the 8th sweep.
    (line,) = out.splitlines()
    severity = next(r for r in load_rules(SHIPPED).rules if r.name == "memory_leak").severity
    prefix = (
        f"{iso_time(T0 + 7 * S + OFFSET)} FIRING   {severity.label:<8} "
        f"memory_leak: process:{leaker}: "
    )
    assert line.startswith(prefix), line
    message = line[len(prefix) :]
    assert "leaker (4242)" in message
    assert "RSS grows 20.0 MiB/s" in message
    assert "(+140 MiB in 7 s" in message  # growth over the 8 sweeps
    assert "{" not in message
    assert err.splitlines() == ["replayed 2 events and 10 sweeps: 1 alert(s) (memory_leak)"]


def test_a_resolved_line_shows_when_the_alert_resolved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = burst_recording(tmp_path / "burst.jsonl")
    rules = write_rules(tmp_path, BURST_RULES)
    assert main(["rules", "test", str(rules), "--events", str(recording), "--json"]) == 0
    _, resolved = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert main(["rules", "test", str(rules), "--events", str(recording)]) == 0
    _, resolved_line = capsys.readouterr().out.splitlines()
    # One line per transition, stamped with the transition's time: the resolution
    # came 5 s or more after the alert was last seen.
    assert resolved_line.split(" ", 1)[0] == resolved["resolved_at"], resolved_line


# ---- the replay behind it ------------------------------------------------------------------


def test_a_flare_up_within_the_cooldown_is_one_alert(tmp_path: Path) -> None:
    recording = burst_recording(tmp_path / "twice.jsonl", bursts=(T0, T0 + 30 * S))
    ruleset = load_rules(write_rules(tmp_path, BURST_RULES, "  - {rule: burst, count: 1}\n"))
    result = replay_rules(ruleset.enabled, recording)
    assert [state for state, _ in result.transitions] == [
        "firing",
        "resolved",
        "firing",
        "resolved",
    ]
    assert len({a.id for _, a in result.transitions}) == 1
    assert [a.reopened for _, a in result.transitions] == [0, 0, 1, 1]
    assert result.fired("burst") == 1
    assert (result.events, result.sweeps, result.bad_lines) == (2402, 51, [])
    (outcome,) = check_expectations(result, ruleset.expectations)
    assert outcome.met
    # Transitions are snapshots: the first one still shows the state it had.
    assert result.transitions[0][1].resolved_ns is None
    assert result.transitions[1][1].resolved_ns is not None


def test_two_bursts_past_the_cooldown_are_two_alerts(tmp_path: Path) -> None:
    recording = burst_recording(tmp_path / "twice.jsonl", bursts=(T0, T0 + 120 * S))
    ruleset = load_rules(write_rules(tmp_path, BURST_RULES, "  - {rule: burst, count: 2}\n"))
    result = replay_rules(ruleset.enabled, recording)
    assert result.fired("burst") == 2
    assert [a.reopened for _, a in result.transitions] == [0, 0, 0, 0]
    assert all(o.met for o in check_expectations(result, ruleset.expectations))
