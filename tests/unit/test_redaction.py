"""Redactor: secrets in argv, table-driven; and redaction inside the real pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_linnix.events import EventKind
from otel_linnix.recording import event_to_dict
from otel_linnix.redaction import REDACTED, Redactor
from tests.unit.api_stack import RECORDING_EVENTS, START, ApiStack, write_api_recording
from tests.unit.conftest import make_event

R = REDACTED


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("mysql", "--password", "hunter2"), ("mysql", "--password", R)),
        (("mysql", "--password=hunter2", "db"), ("mysql", f"--password={R}", "db")),
        (("env", "DB_PASSWORD=x", "app"), ("env", f"DB_PASSWORD={R}", "app")),
        (
            ("curl", "-H", "Authorization: Bearer abc123456", "https://api.example/x"),
            ("curl", "-H", f"Authorization: {R}", "https://api.example/x"),
        ),
        (("curl", "-H", "X-Api-Key: k"), ("curl", "-H", f"X-Api-Key: {R}")),
        (("git", "clone", "https://bob:pw@host/x"), ("git", "clone", f"https://bob:{R}@host/x")),
        (("aws", "AKIAIOSFODNN7EXAMPLE"), ("aws", R)),
        (
            ("aws", "--profile", "x", "id=AKIAIOSFODNN7EXAMPLE"),
            ("aws", "--profile", "x", f"id={R}"),
        ),
        (
            ("tool", "--api-key", "k", "--token", "t", "--client-secret", "s"),
            ("tool", "--api-key", R, "--token", R, "--client-secret", R),
        ),
        (
            ("sh", "-c", "mysql -u root --password hunter2 -e 'select 1'"),
            ("sh", "-c", f"mysql -u root --password {R} -e 'select 1'"),
        ),
        (
            ("sh", "-c", "export TOKEN=abc; ./deploy"),
            ("sh", "-c", f"export TOKEN={R}; ./deploy"),
        ),
        (
            ("sh", "-c", "curl -H 'Authorization: Bearer abc123456' https://x"),
            ("sh", "-c", f"curl -H 'Authorization: Bearer {R}' https://x"),
        ),
        (("psql", "postgres://app:s3cret@db/prod"), ("psql", f"postgres://app:{R}@db/prod")),
        (("app", "--passwd", "hunter2", "-v"), ("app", "--passwd", R, "-v")),
        # A secret flag as the last argument hides nothing (there is nothing to hide).
        (("app", "--token"), ("app", "--token")),
    ],
)
def test_builtin_rules(argv: tuple[str, ...], expected: tuple[str, ...]) -> None:
    out = Redactor().redact(argv)
    assert out == expected
    assert len(out) == len(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ("bash", "-c", "make -j2 all"),
        ("ls", "-l", "/tmp"),
        ("app", "--token"),
        ("python3", "-m", "http.server", "8000"),
        ("curl", "https://example.com/path"),
        (),
    ],
)
def test_argv_without_secrets_is_the_same_object(argv: tuple[str, ...]) -> None:
    assert Redactor().redact(argv) is argv
    custom = Redactor(extra_flags=("-p",), extra_patterns=(r"sk_live_\w+",))
    assert custom.redact(argv) is argv


def test_empty_argv() -> None:
    empty: tuple[str, ...] = ()
    assert Redactor().redact(empty) == ()
    assert Redactor(extra_flags=("-p",), extra_patterns=("x",)).redact(empty) is empty


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("mysql", "-p", "hunter2", "db"), ("mysql", "-p", R, "db")),
        (("app", "--PIN", "1234"), ("app", "--PIN", R)),
        (("app", "-p"), ("app", "-p")),
        # Not configured: -u takes a user name, not a secret.
        (("mysql", "-u", "root"), ("mysql", "-u", "root")),
    ],
)
def test_extra_flags_hide_the_next_argument(
    argv: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    assert Redactor(extra_flags=("-p", "--pin")).redact(argv) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # No group: the whole match is hidden.
        (("stripe", "sk_live_abc123"), ("stripe", R)),
        (("stripe", "--key=sk_live_abc123,x"), ("stripe", f"--key={R},x")),
        # A group: only the group is hidden.
        (("client", "pin:4711"), ("client", f"pin:{R}")),
        (("client", "a pin:4711 b"), ("client", f"a pin:{R} b")),
        (("client", "pin:none"), ("client", "pin:none")),
    ],
)
def test_extra_patterns_with_and_without_a_group(
    argv: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    redactor = Redactor(extra_patterns=(r"sk_live_\w+", r"pin:(\d+)"))
    assert redactor.redact(argv) == expected


def test_builtin_rules_still_apply_with_extras() -> None:
    redactor = Redactor(extra_flags=("-p",), extra_patterns=(r"sk_live_\w+",))
    argv = ("app", "--password", "hunter2", "-p", "x", "sk_live_1")
    assert redactor.redact(argv) == ("app", "--password", R, "-p", R, R)


# ---- inside the pipeline --------------------------------------------------------


@pytest.fixture
def redacting_stack(tmp_path: Path) -> Iterator[ApiStack]:
    cgroup_root = tmp_path / "cgroup"
    recording = write_api_recording(tmp_path / "api.jsonl", cgroup_root)
    secret_exec = make_event(
        EventKind.EXEC,
        100,
        START["bash"],
        ts_ns=25_000_000_000,
        ppid=1,
        parent_start_time_ns=START["init"],
        comm="mysql",
        exe="/usr/bin/mysql",
        argv=("mysql", "--password", "hunter2", "-e", "select 1"),
        uid=1000,
        gid=1000,
        cgroup_id=4096,
    )
    with open(recording, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event_to_dict(secret_exec)) + "\n")
    stack = ApiStack(recording, cgroup_root, redactor=Redactor())
    yield stack
    stack.close()


def test_pipeline_redacts_exec_argv_before_the_table_and_the_sinks(
    redacting_stack: ApiStack,
) -> None:
    stack = redacting_stack
    stack.start(RECORDING_EVENTS + 1)
    expected = ["mysql", "--password", R, "-e", "select 1"]

    # The sinks: the collecting sink and the stream hub.
    mysql = [ev for ev in stack.sink.events if ev.comm == "mysql"]
    assert len(mysql) == 1
    assert list(mysql[0].argv or ()) == expected
    sub = stack.hub.subscribe(None, 0)
    frames = b"".join(it.frame() for it in sub.replay).decode()
    stack.hub.unsubscribe(sub.subscriber)
    assert '"argv":["mysql","--password","<redacted>","-e","select 1"]' in frames

    # The table, and the API reading it.
    info = stack.table.find_pid(100)
    assert info is not None and list(info.argv or ()) == expected
    response = stack.app.test_client().get("/processes/100")
    assert response.get_json()["argv"] == expected

    # Nowhere at all.
    assert "hunter2" not in repr(stack.sink.events)
    assert "hunter2" not in frames
    assert "hunter2" not in repr(stack.table.snapshot(include_exited=True))
    assert "hunter2" not in stack.app.test_client().get("/processes").get_data(as_text=True)
    # Arguments without secrets pass unchanged.
    nginx = stack.table.find_pid(800)
    assert nginx is not None and nginx.argv == ("nginx", "-g", "daemon off;")
