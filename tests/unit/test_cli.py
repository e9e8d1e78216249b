"""The otel-linnix command in-process: exit codes and what it prints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from otel_linnix.cli import _stop_on_signals, main
from otel_linnix.errors import EX_CONFIG, EX_DATAERR, EX_USAGE
from tests.unit.conftest import RECORDINGS

pytestmark = pytest.mark.usefixtures("no_system_config")

REPO = Path(__file__).resolve().parents[2]
TREE = RECORDINGS / "build_tree.jsonl"
BAD = RECORDINGS / "one_bad_line.jsonl"


def test_check_config_reports_every_problem_with_exit_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "linnix.toml"
    path.write_text("[capture]\nsource = 'bogus'\nring_buffer_kib = 100\n[nowhere]\n")
    assert main(["check-config", "--config", str(path)]) == EX_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"otel-linnix: {path}: ") for line in lines)
    assert "[capture] source" in lines[0]
    assert "[capture] ring_buffer_kib" in lines[1]
    assert "[nowhere]" in lines[2]


def test_check_config_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["check-config", "--config", str(missing)]) == EX_CONFIG
    assert capsys.readouterr().err == f"otel-linnix: {missing}: config file not found\n"


def test_check_config_accepts_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "config" / "linnix.toml"
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"config ok: {path}\n")
    assert "capture: source=auto drain_interval_ms=100" in out


def test_check_config_lists_ignored_linnix_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "linnix.toml"
    path.write_text("[runtime]\nevents_rate_cap = 10\n[circuit_breaker]\nenabled = true\n")
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ignored (Linnix setting not used here): [runtime] events_rate_cap" in out
    assert "ignored (Linnix setting not used here): [circuit_breaker]" in out


@pytest.mark.parametrize(
    "argv",
    [["frobnicate"], [], ["replay"], ["check-config", "--no-such-flag"]],
    ids=["unknown-command", "no-command", "replay-without-file", "unknown-flag"],
)
def test_usage_errors_exit_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EX_USAGE
    assert "usage: otel-linnix" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "replay" in capsys.readouterr().out


def test_replay_prints_one_line_per_event_and_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["replay", str(TREE)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 15
    assert "\033[" not in out
    with open(TREE, encoding="utf-8") as fh:
        recorded = [json.loads(line) for line in fh]
    for line, obj in zip(lines, recorded, strict=True):
        assert f" {obj['kind'].upper()} " in line
        assert f" pid={obj['pid']} " in line
    assert lines[1].endswith(": /usr/bin/bash bash -c 'make -j2 all'")
    assert lines[9].endswith(": signal SIGSEGV (core dumped) cpu=12.0ms peak_rss=8192KiB")
    assert err.splitlines()[-1] == (
        f"replayed 15 events from {TREE}: 1 processes still running, 4 exited, 0 bad lines"
    )


def test_replay_json_reprints_the_recording(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--json", str(TREE)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with open(TREE, encoding="utf-8") as fh:
        recorded = [json.loads(line) for line in fh]
    assert len(printed) == len(recorded)
    for p, r in zip(printed, recorded, strict=True):
        assert {k: v for k, v in p.items() if k != "time"} == {
            k: v for k, v in r.items() if k != "time"
        }


def test_replay_quiet_prints_only_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--quiet", str(TREE)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("replayed 15 events")


def test_replay_with_a_bad_line_exits_65_and_names_file_and_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["replay", str(BAD)]) == EX_DATAERR
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3  # the good lines are still replayed
    errors = [line for line in err.splitlines() if line.startswith("otel-linnix: ")]
    assert errors == [f"otel-linnix: {BAD}:2: field 'pid': expected an integer, got '100'"]
    assert err.splitlines()[-1].endswith("1 bad lines")


def test_replay_of_a_missing_file_exits_65(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    assert main(["replay", str(missing)]) == EX_DATAERR
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"otel-linnix: {missing}: cannot read recording: No such file or directory\n"


def test_replay_uses_the_given_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_config = tmp_path / "linnix.toml"
    bad_config.write_text("[process_table]\nmax_entries = 1\n")
    recording = shutil.copy(TREE, tmp_path / "tree.jsonl")
    assert main(["replay", "--config", str(bad_config), str(recording)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"otel-linnix: {bad_config}: [process_table] max_entries")


def test_a_stop_signal_never_deadlocks_the_waiting_main_thread() -> None:
    # A signal handler runs in the main thread, possibly while it is inside the wait
    # itself; 200 signals landing at arbitrary points of a tight wait loop must each
    # be seen, and none may hang the loop.
    for _ in range(200):
        with _stop_on_signals() as stop:
            killer = threading.Timer(0.001, os.kill, (os.getpid(), signal.SIGTERM))
            killer.start()
            deadline = time.monotonic() + 5
            while not stop.wait(0.0):
                assert time.monotonic() < deadline, "the stop request was never seen"
            killer.join()
            assert stop.signum == signal.SIGTERM
