"""linnix-cli in-process against the real API server over a replay-fed pipeline."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otel_linnix.client_cli import ENV_TOKEN, ENV_URL, main
from otel_linnix.config import Config
from otel_linnix.console import event_line
from otel_linnix.events import EventKind, ProcessEvent
from otel_linnix.recording import event_to_dict
from tests.unit.api_stack import (
    START,
    WALL_OFFSET_NS,
    ApiStack,
    api_config,
    free_port,
    write_api_recording,
)
from tests.unit.conftest import DEADLINE_S, make_event, wait_until

S = 1_000_000_000
TOKEN = "cli-t0ken"


@pytest.fixture(autouse=True)
def no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    monkeypatch.delenv(ENV_URL, raising=False)


@pytest.fixture
def stacks() -> Iterator[list[ApiStack]]:
    built: list[ApiStack] = []
    yield built
    for stack in built:
        stack.close()


@pytest.fixture
def serve(stacks: list[ApiStack], tmp_path: Path) -> Callable[[Config], ApiStack]:
    def build(config: Config) -> ApiStack:
        cgroup_root = tmp_path / "cgroup"
        recording = write_api_recording(tmp_path / "api.jsonl", cgroup_root)
        stack = ApiStack(recording, cgroup_root, config)
        stacks.append(stack)
        stack.start()
        stack.serve()
        return stack

    return build


@pytest.fixture
def agent(serve: Callable[[Config], ApiStack]) -> ApiStack:
    return serve(api_config(heartbeat_interval_s=0.2))


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = main(["--url", url, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_status(agent: ApiStack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, agent.url, "status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "status:      ok"
    assert lines[1].startswith("source:      replay ")
    assert lines[2] == "events:      23 (exec 11, exit 4, fork 7, oom_kill 1)"
    assert lines[3] == "lost:        0    queue drops: 0"
    assert lines[4] == "processes:   7 live, 4 exited (retained)"
    assert lines[5] == "stream:      0 clients, 0 events lost to slow clients"


def test_status_json(agent: ApiStack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, agent.url, "status", "--json")
    assert code == 0
    assert json.loads(out)["events_total"] == 23


def test_processes_sorted_by_rss_and_limited(
    agent: ApiStack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, agent.url, "processes", "--sort", "rss", "--limit", "3")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == [
        "PID",
        "PPID",
        "USER",
        "CPU%",
        "RSS",
        "FDS",
        "THR",
        "STATE",
        "AGE",
        "COMMAND",
    ]
    assert [row.split()[0] for row in rows] == ["4242", "800", "1"]
    server, nginx, init = (row.split() for row in rows)
    assert server[1:9] == ["1", "alice", "75.0", "512.0M", "300", "12", "running", "15s"]
    assert nginx[2:5] == ["root", "12.5", "64.0M"]
    assert " ".join(nginx[9:]) == "nginx -g daemon off;"
    assert " ".join(init[9:]) == "/sbin/init splash"


def test_processes_json(agent: ApiStack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, agent.url, "processes", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["pid"] for r in rows] == [4242, 800, 100, 300, 1, 5000, 4300]
    assert rows[0]["user"] == "alice"


def test_processes_filtered_by_user(agent: ApiStack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, agent.url, "processes", "--user", "root", "--json")
    assert code == 0
    assert [r["pid"] for r in json.loads(out)] == [800, 1]


def test_tree_of_a_process_seen_at_start_up(
    agent: ApiStack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, agent.url, "tree", "4300")
    assert (code, err) == (0, "")
    assert out == "1 systemd\n└── 4242 my (app) x)\n    └── 4300 worker <==\n"


def test_tree_marks_the_focus_and_indents_children(
    agent: ApiStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Focus: the live sleep that reused pid 300; its siblings exited.
    code, out, err = run(capsys, agent.url, "tree", "300")
    assert (code, err) == (0, "")
    assert out == (
        "1 systemd\n"
        "└── 100 bash\n"
        "    ├── 200 make [exited: status 2]\n"
        "    ├── 400 stress [exited: signal 9]\n"
        "    └── 300 sleep <==\n"
    )


def test_tree_with_an_unobserved_parent(
    agent: ApiStack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, agent.url, "tree", "5000")
    assert code == 0
    assert out == "4999 (not observed)\n└── 5000 orphan <==\n"


def test_tree_of_an_unknown_pid(agent: ApiStack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, agent.url, "tree", "99999")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("linnix-cli: ")
    assert "HTTP 404" in err
    assert "99999" in err


def test_alerts_when_there_are_none(agent: ApiStack, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, agent.url, "alerts") == (0, "no alerts\n", "")
    code, out, _ = run(capsys, agent.url, "alerts", "--json")
    assert (code, json.loads(out)) == (0, [])


def _child_of_bash(pid: int, first_seq: int) -> list[ProcessEvent]:
    start = (40 + pid % 100) * S
    common = {"ppid": 100, "parent_start_time_ns": START["bash"], "uid": 1000, "gid": 1000}
    built = [
        make_event(EventKind.FORK, pid, start, comm="bash", **common),
        make_event(
            EventKind.EXEC,
            pid,
            start,
            ts_ns=start + 1000,
            comm="true",
            exe="/usr/bin/true",
            argv=("true", str(pid)),
            **common,
        ),
        make_event(
            EventKind.EXIT, pid, start, ts_ns=start + 2000, comm="true", exit_code=0, **common
        ),
    ]
    return [ev.stamp(first_seq + i) for i, ev in enumerate(built)]


def _drive(stack: ApiStack, publish: Callable[[], None]) -> threading.Thread:
    """On a thread: once the CLI is subscribed, publish, wait until it took
    everything, then end the stream as the agent's shutdown does."""

    def drive() -> None:
        try:
            if wait_until(lambda: stack.hub.stats()["subscribers"] == 1):
                publish()
                wait_until(lambda: stack.hub.stats()["queued"] == 0)
        finally:
            stack.hub.close()

    thread = threading.Thread(target=drive, name="stream-driver")
    thread.start()
    return thread


def test_stream_json_of_one_kind(agent: ApiStack, capsys: pytest.CaptureFixture[str]) -> None:
    last = agent.hub.stats()["last_id"]
    first_child = _child_of_bash(901, last + 1)
    second_child = _child_of_bash(902, last + 4)

    def publish() -> None:
        agent.hub.emit(first_child)
        agent.hub.emit(second_child)

    driver = _drive(agent, publish)
    try:
        code = main(["--url", agent.url, "stream", "--json", "--kind", "exec"])
    finally:
        driver.join(DEADLINE_S)
    assert not driver.is_alive()
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    printed = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e["pid"], e["seq"]) for e in printed] == [
        ("exec", 901, last + 2),
        ("exec", 902, last + 5),
    ]
    assert printed[0]["argv"] == ["true", "901"]


def test_stream_prints_alerts(agent: ApiStack, capsys: pytest.CaptureFixture[str]) -> None:
    alert: dict[str, object] = {
        "rule": "fork_storm",
        "severity": "high",
        "state": "firing",
        "subject": {"pid": 100, "comm": "bash"},
        "message": "120 forks in 1 s",
    }
    driver = _drive(agent, lambda: agent.hub.publish(9000, "alert", alert))
    try:
        code = main(["--url", agent.url, "--no-color", "stream", "--kind", "alert"])
    finally:
        driver.join(DEADLINE_S)
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out == "[HIGH] fork_storm (firing) pid=100 bash - 120 forks in 1 s\n"


def test_stream_when_the_agent_has_no_room_for_another_client(
    serve: Callable[[Config], ApiStack], capsys: pytest.CaptureFixture[str]
) -> None:
    stack = serve(api_config(max_stream_clients=1))
    occupant = stack.hub.subscribe(None, None).subscriber
    try:
        code, out, err = run(capsys, stack.url, "stream")
    finally:
        stack.hub.unsubscribe(occupant)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("linnix-cli: ")
    assert "HTTP 503" in err
    assert "too many stream clients" in err


def test_token_from_the_environment(
    serve: Callable[[Config], ApiStack],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = serve(api_config(auth_token=TOKEN))

    code, out, err = run(capsys, stack.url, "processes")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("linnix-cli: ")
    assert "HTTP 401" in err
    assert ENV_TOKEN in err

    monkeypatch.setenv(ENV_TOKEN, "not-the-token")
    code, _, err = run(capsys, stack.url, "status")
    assert code == 1
    assert "HTTP 401" in err

    monkeypatch.setenv(ENV_TOKEN, TOKEN)
    code, out, err = run(capsys, stack.url, "processes", "--json")
    assert (code, err) == (0, "")
    assert len(json.loads(out)) == 7


def test_unreachable_agent(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (["status"], ["processes"], ["tree", "1"], ["alerts"], ["stream"]):
        code, out, err = run(capsys, url, *argv)
        assert (code, out) == (1, ""), argv
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("linnix-cli: "), err
        assert url in lines[0]


@pytest.fixture
def five_hours_west(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC-5 (a POSIX TZ string: no tz database needed)."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_stream_prints_one_line_per_event(
    agent: ApiStack, capsys: pytest.CaptureFixture[str]
) -> None:
    last = agent.hub.stats()["last_id"]
    child = _child_of_bash(903, last + 1)
    driver = _drive(agent, lambda: agent.hub.emit(child))
    try:
        code = main(["--url", agent.url, "--no-color", "stream", "--kind", "exec,exit"])
    finally:
        driver.join(DEADLINE_S)
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    stamps, lines = zip(*(line.split(" ", 1) for line in out.splitlines()), strict=True)
    assert list(lines) == [
        "EXEC     pid=903 ppid=100 uid=1000 true: /usr/bin/true true 903",
        "EXIT     pid=903 ppid=100 uid=1000 true: status 0",
    ]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", stamp) for stamp in stamps)


def test_stream_prints_the_event_time_in_local_time(
    agent: ApiStack, capsys: pytest.CaptureFixture[str], five_hours_west: None
) -> None:
    last = agent.hub.stats()["last_id"]
    child = _child_of_bash(904, last + 1)
    driver = _drive(agent, lambda: agent.hub.emit(child[1:2]))
    try:
        code = main(["--url", agent.url, "--no-color", "stream"])
    finally:
        driver.join(DEADLINE_S)
    out, _ = capsys.readouterr()
    assert code == 0
    # The event's "time" is 22:14:04 UTC; event_line renders an epoch time
    # in local time, 17:14:04 here.
    wall_ns = child[1].ts_ns + WALL_OFFSET_NS
    assert out.startswith("17:14:04.000 ")
    assert out == event_line(child[1], wall_ns) + "\n"


def test_processes_table_keeps_a_multi_line_command_on_one_row(
    stacks: list[ApiStack], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A `bash -c` script is one argv element with newlines in it: the table must stay
    # one row per process, showing the newline as an escape.
    script = ("bash", "-c", "set -e\nmake test\n")
    events = [
        make_event(EventKind.FORK, 77, START["init"] + S, ppid=0, comm="sh"),
        make_event(
            EventKind.EXEC,
            77,
            START["init"] + S,
            ts_ns=START["init"] + 2 * S,
            comm="bash",
            exe="/usr/bin/bash",
            argv=script,
        ),
    ]
    recording = tmp_path / "script.jsonl"
    recording.write_text("".join(json.dumps(event_to_dict(ev)) + "\n" for ev in events))
    stack = ApiStack(recording, tmp_path / "cgroup", api_config())
    stacks.append(stack)
    stack.start(len(events), samples=False)
    stack.serve()
    code, out, err = run(capsys, stack.url, "processes")
    assert (code, err) == (0, "")
    _header, *rows = out.splitlines()
    assert all(row.split()[0].isdigit() for row in rows), rows
    (script_row,) = (row for row in rows if row.split()[0] == "77")
    assert script_row.endswith("bash -c set -e\\nmake test\\n")
