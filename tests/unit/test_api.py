"""The HTTP API over a real replay-fed Pipeline and a real StreamHub.

JSON routes go through Flask's test client; /stream goes through the real
waitress server on 127.0.0.1, read with http.client on a reader thread.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import pytest
from flask.testing import FlaskClient

from otel_linnix.api.context import UserNames
from otel_linnix.api.serialize import graph_json, listed_processes_body, process_json
from otel_linnix.api.server import ApiServer
from otel_linnix.config import Config
from otel_linnix.events import EventKind, ProcessEvent
from otel_linnix.process_table import ProcessSample, ProcessTable
from tests.unit.api_stack import (
    CLOCK_NS,
    DOCKER_ID,
    MIB,
    RECORDING_EVENTS,
    START,
    ApiStack,
    api_config,
    write_api_recording,
)
from tests.unit.conftest import DEADLINE_S, make_event, wait_until

S = 1_000_000_000
LIVE = [1, 100, 300, 800, 4242, 4300, 5000]


# ---- fixtures -----------------------------------------------------------------


@pytest.fixture
def cgroup_root(tmp_path: Path) -> Path:
    return tmp_path / "cgroup"


@pytest.fixture
def recording(tmp_path: Path, cgroup_root: Path) -> Path:
    return write_api_recording(tmp_path / "api.jsonl", cgroup_root)


@pytest.fixture
def stacks() -> Iterator[list[ApiStack]]:
    """Closes every stack a test built, even when the test fails."""
    built: list[ApiStack] = []
    yield built
    for stack in built:
        stack.close()


class StackFactory(Protocol):
    def __call__(
        self, config: Config | None = None, *, fallback_reason: str | None = None
    ) -> ApiStack: ...


@pytest.fixture
def make_stack(stacks: list[ApiStack], recording: Path, cgroup_root: Path) -> StackFactory:
    def build(config: Config | None = None, *, fallback_reason: str | None = None) -> ApiStack:
        stack = ApiStack(recording, cgroup_root, config, fallback_reason=fallback_reason)
        stacks.append(stack)
        return stack

    return build


@pytest.fixture
def stack(make_stack: StackFactory) -> ApiStack:
    built = make_stack()
    built.start()
    return built


@pytest.fixture
def client(stack: ApiStack) -> FlaskClient:
    return stack.app.test_client()


def get(client: FlaskClient, path: str, **headers: str) -> tuple[int, Any]:
    response = client.get(path, headers=headers)
    assert response.mimetype == "application/json", (path, response.mimetype)
    return response.status_code, response.get_json()


def pids(client: FlaskClient, query: str) -> list[int]:
    status, body = get(client, f"/processes?{query}")
    assert status == 200, body
    return [row["pid"] for row in body]


def assert_json_error(client: FlaskClient, path: str, status: int, *mentions: str) -> str:
    code, body = get(client, path)
    assert code == status, body
    assert set(body) == {"error"}
    message: str = body["error"]
    for text in mentions:
        assert text in message, message
    return message


# ---- health, readiness, status ------------------------------------------------


def test_health_ok(client: FlaskClient) -> None:
    status, body = get(client, "/health")
    assert status == 200
    assert body == {
        "status": "ok",
        "source": "replay",
        "reasons": [],
        "version": "0.1.0",
        "uptime_s": 0.0,
    }


def test_healthz_in_linnix_shape(client: FlaskClient) -> None:
    status, body = get(client, "/healthz")
    assert status == 200
    assert body == {"status": "ok", "kernel_instrumentation": "unavailable", "transport": "replay"}


def test_health_is_degraded_when_kernel_capture_fell_back(make_stack: StackFactory) -> None:
    stack = make_stack(fallback_reason="no BTF at /sys/kernel/btf/vmlinux")
    stack.start()
    client = stack.app.test_client()
    reason = "kernel capture unavailable: no BTF at /sys/kernel/btf/vmlinux"

    status, body = get(client, "/health")
    assert status == 200  # liveness: the agent runs, degraded
    assert (body["status"], body["reasons"]) == ("degraded", [reason])

    status, body = get(client, "/healthz")
    assert (status, body["status"]) == (200, "degraded")

    status, body = get(client, "/readyz")
    assert status == 503
    assert body["ready"] is False
    assert body["reason"] == reason


def test_readyz_is_503_until_the_pipeline_started(make_stack: StackFactory) -> None:
    stack = make_stack()
    client = stack.app.test_client()
    status, body = get(client, "/readyz")
    assert status == 503
    assert body["ready"] is False
    assert body["reason"].startswith("starting")

    stack.start()
    status, body = get(client, "/readyz")
    assert status == 200
    assert body == {
        "ready": True,
        "kernel_instrumentation": "unavailable",
        "transport": "replay",
        "reason": None,
    }


def test_status_reports_counts(client: FlaskClient) -> None:
    status, body = get(client, "/status")
    assert status == 200
    assert set(body) == {
        "version",
        "status",
        "reasons",
        "source",
        "uptime_s",
        "events_by_kind",
        "events_total",
        "lost_events",
        "lost_by_kind",
        "source_counters",
        "queue_drops",
        "sink_failures",
        "processes",
        "sampler",
        "stream",
        "cgroups",
    }
    assert body["events_by_kind"] == {"exec": 11, "fork": 7, "exit": 4, "oom_kill": 1}
    assert body["events_total"] == RECORDING_EVENTS
    assert body["lost_events"] == 0
    assert body["source_counters"] == {"bad_lines": 0}
    assert body["queue_drops"] == {"stream": 0, "memory": 0}
    assert body["processes"] == {
        "live": 7,
        "exited_retained": 4,
        "bootstrap": 4,
        "evicted_exited": 0,
        "evicted_live": 0,
        "exits_inferred": 0,
        "traceparent_invalid": 0,
    }
    assert set(body["sampler"]) == {"sweeps", "last_sweep_ms", "last_sweep_cpu_ms", "sampled"}
    assert body["stream"] == {
        "subscribers": 0,
        "lost": 0,
        "queued": 0,
        "rejected": 0,
        "backlog": RECORDING_EVENTS,
        "last_id": RECORDING_EVENTS,
    }


# ---- /processes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", LIVE),
        ("comm=bash", [100]),
        ("comm=s*", [1, 300]),
        ("comm=c*", []),
        ("comm=c*&include_exited=1", [300, 301]),
        ("comm=my+(app)+x)", [4242]),
        ("exe=/usr/bin/sleep", [300, 5000]),
        ("exe=sleep", [300, 5000]),
        ("exe=/usr/sbin/*", [800]),
        (f"container={DOCKER_ID[:12]}", [800]),
        (f"container={DOCKER_ID}", [800]),
        ("container=none", [1, 100, 300, 4242, 4300, 5000]),
        ("user=root", [1, 800]),
        ("user=alice", [100, 300, 4242, 4300]),
        ("user=0", [1, 800]),
        ("user=65534", [5000]),
        ("user=nosuchuser", []),
        ("min_cpu=2", [100, 800, 4242]),
        ("min_cpu=12.5", [800, 4242]),
        ("min_rss=8388608", [1, 800, 4242]),
        ("filter=cpu_pct>10", [800, 4242]),
        ("filter=cpu_pct+>+1", [100, 800, 4242]),
        ("filter=mem_pct>10", [4242]),
        ("comm=bash&user=alice", [100]),
        ("comm=bash&user=root", []),
    ],
)
def test_processes_filters(client: FlaskClient, query: str, expected: list[int]) -> None:
    assert pids(client, query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sort=pid", LIVE),
        ("sort=pid&order=desc", LIVE[::-1]),
        ("sort=cpu", [4242, 800, 100, 300, 1, 5000, 4300]),
        ("sort=cpu&order=asc", [4300, 5000, 1, 300, 100, 800, 4242]),
        ("sort=cpu_pct:desc", [4242, 800, 100, 300, 1, 5000, 4300]),
        ("sort=cpu_pct:asc", [4300, 5000, 1, 300, 100, 800, 4242]),
        ("sort=rss", [4242, 800, 1, 100, 300, 5000, 4300]),
        ("sort=mem_pct:desc", [4242, 800, 1, 100, 300, 5000, 4300]),
        ("sort=fds", [4242, 1, 800, 300, 100, 5000, 4300]),
        ("sort=fds&order=asc", [4300, 5000, 100, 300, 800, 1, 4242]),
        ("sort=age", [1, 100, 4242, 5000, 4300, 800, 300]),
        ("sort=age&order=asc", [300, 800, 4300, 5000, 4242, 100, 1]),
        ("sort=rss&limit=3", [4242, 800, 1]),
        ("limit=2", [1, 100]),
        ("limit=1000", LIVE),
        ("sort=cpu&min_cpu=1&limit=2", [4242, 800]),
    ],
)
def test_processes_sort_and_limit(client: FlaskClient, query: str, expected: list[int]) -> None:
    assert pids(client, query) == expected


def test_processes_include_exited(client: FlaskClient) -> None:
    status, rows = get(client, "/processes?include_exited=1")
    assert status == 200
    by_identity = {(r["pid"], r["start_time_ns"]): r for r in rows}
    assert len(by_identity) == len(rows) == 11
    exited = sorted(k for k, r in by_identity.items() if r["exited"])
    assert exited == [
        (200, START["make"]),
        (300, START["cc1"]),
        (301, START["cc2"]),
        (400, START["stress"]),
    ]
    assert all(by_identity[k]["state"] == "exited" for k in exited)
    assert by_identity[(300, START["sleep"])]["exited"] is False


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("min_cpu=abc", "min_cpu"),
        ("min_cpu=-1", "min_cpu"),
        ("min_cpu=nan", "min_cpu"),
        ("min_rss=lots", "min_rss"),
        ("min_rss=-5", "min_rss"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("sort=bogus", "sort"),
        ("order=up", "order"),
        ("sort=cpu&order=sideways", "order"),
        ("filter=junk", "filter"),
        ("filter=rss>5", "filter"),
    ],
)
def test_processes_rejects_bad_parameters(client: FlaskClient, query: str, param: str) -> None:
    value = query.rpartition("=")[2]
    assert_json_error(client, f"/processes?{query}", 400, f"'{param}'", value)


def test_one_process_in_full(client: FlaskClient) -> None:
    status, row = get(client, "/processes/100")
    assert status == 200
    expected = {
        "pid": 100,
        "ppid": 1,
        "start_time_ns": START["bash"],
        "comm": "bash",
        "exe": "/usr/bin/bash",
        "argv": ["bash", "-c", "make -j2 all"],
        "uid": 1000,
        "gid": 1000,
        "user": "alice",
        "container_id": None,
        "cpu_percent": 2.0,
        "cpu_pct": 2.0,
        "rss_bytes": 4 * MIB,
        "mem_pct": 4 * 100 / 1024,
        "open_fds": 4,
        "fd_limit": 1024,
        "threads": 1,
        "state": "sleeping",
        "age_sec": 19,
        "exited": False,
        "exit_code": None,
        "exit_time": None,
        "source": "ebpf",
    }
    assert {k: row[k] for k in expected} == expected
    assert row["age_s"] == pytest.approx((CLOCK_NS - START["bash"]) / 1e9)
    assert row["start_time"].endswith("Z")


def test_one_process_in_a_container(client: FlaskClient) -> None:
    status, row = get(client, "/processes/800")
    assert status == 200
    assert (row["comm"], row["container_id"], row["container_runtime"]) == (
        "nginx",
        DOCKER_ID,
        "docker",
    )


def test_one_exited_process_is_still_found(client: FlaskClient) -> None:
    status, row = get(client, "/processes/400")
    assert status == 200
    assert (row["comm"], row["state"], row["exited"]) == ("stress", "exited", True)
    assert (row["exit_signal"], row["oom_killed"]) == (9, True)
    assert row["exit_time"] is not None
    # The age of an exited process stops at its exit.
    assert row["age_s"] == pytest.approx(2.001)


def test_one_process_unknown_pid_is_404_json(client: FlaskClient) -> None:
    assert_json_error(client, "/processes/99999", 404, "99999")


def test_one_process_of_a_reused_pid_by_start_time(client: FlaskClient) -> None:
    status, row = get(client, "/processes/300")
    assert (status, row["comm"], row["exited"]) == (200, "sleep", False)

    status, row = get(client, f"/processes/300?start_time_ns={START['cc1']}")
    assert status == 200
    assert (row["comm"], row["start_time_ns"], row["exited"], row["exit_code"]) == (
        "cc",
        START["cc1"],
        True,
        0,
    )

    status, row = get(client, f"/processes/300?start_time_ns={START['sleep']}")
    assert (status, row["comm"]) == (200, "sleep")

    assert_json_error(client, "/processes/300?start_time_ns=1", 404, "300", "started at 1")
    assert_json_error(client, "/processes/300?start_time_ns=soon", 400, "'start_time_ns'")


# ---- /graph -------------------------------------------------------------------


def _nodes(graph: Mapping[str, Any]) -> dict[tuple[int, int | None], dict[str, Any]]:
    nodes = {(n["pid"], n["start_time_ns"]): n for n in graph["nodes"]}
    assert len(nodes) == len(graph["nodes"]), "a process appears twice"
    return nodes


def test_graph_relationships_and_levels(client: FlaskClient) -> None:
    status, graph = get(client, "/graph/100")
    assert status == 200
    assert (graph["root"], graph["start_time_ns"], graph["truncated"]) == (
        100,
        START["bash"],
        False,
    )
    shape = {k: (n["relationship"], n["level"]) for k, n in _nodes(graph).items()}
    assert shape == {
        (100, START["bash"]): ("self", 0),
        (1, START["init"]): ("ancestor", -1),
        (4242, START["server"]): ("sibling", 0),
        (800, START["nginx"]): ("sibling", 0),
        (200, START["make"]): ("descendant", 1),
        (400, START["stress"]): ("descendant", 1),
        (300, START["sleep"]): ("descendant", 1),
        (300, START["cc1"]): ("descendant", 2),
        (301, START["cc2"]): ("descendant", 2),
    }


def test_graph_of_a_deep_exited_process(client: FlaskClient) -> None:
    status, graph = get(client, f"/graph/300?start_time_ns={START['cc1']}")
    assert status == 200
    shape = {k: (n["relationship"], n["level"]) for k, n in _nodes(graph).items()}
    assert shape == {
        (300, START["cc1"]): ("self", 0),
        (200, START["make"]): ("ancestor", -1),
        (100, START["bash"]): ("ancestor", -2),
        (1, START["init"]): ("ancestor", -3),
        (301, START["cc2"]): ("sibling", 0),
    }


def test_graph_edges_link_parent_to_child_as_ppid_says(client: FlaskClient) -> None:
    for path in ("/graph/100", "/graph/4300", f"/graph/300?start_time_ns={START['cc1']}"):
        status, graph = get(client, path)
        assert status == 200
        nodes = _nodes(graph)
        children = set()
        for edge in graph["edges"]:
            child = nodes[(edge["to"], edge["to_start_time_ns"])]
            assert child["ppid"] == edge["from"], edge
            children.add((edge["to"], edge["to_start_time_ns"]))
        # A tree: every node but the top one has exactly one edge to it.
        assert len(graph["edges"]) == len(children) == len(nodes) - 1, path


def test_graph_edges_name_the_parent_by_its_nodes_start_time(client: FlaskClient) -> None:
    # An edge's (from, from_start_time_ns) must identify the parent node as
    # (pid, start_time_ns): that is how a client (linnix-cli tree) joins them.
    status, graph = get(client, "/graph/100")
    assert status == 200
    nodes = _nodes(graph)
    dangling = [
        edge for edge in graph["edges"] if (edge["from"], edge["from_start_time_ns"]) not in nodes
    ]
    assert dangling == []


def test_graph_and_processes_carry_lineage_ids(client: FlaskClient) -> None:
    """Every node's parent span is its parent node's span; bash (a child of
    pid 1) roots the trace its descendants share; /processes agrees."""
    status, graph = get(client, "/graph/100")
    assert status == 200
    nodes = _nodes(graph)
    for edge in graph["edges"]:
        parent = nodes[(edge["from"], edge["from_start_time_ns"])]
        child = nodes[(edge["to"], edge["to_start_time_ns"])]
        if parent["pid"] == 1:
            assert child["parent_span_id"] is None  # a lineage root
            assert child["trace_id"].startswith(child["span_id"])
        else:
            assert child["parent_span_id"] == parent["span_id"]
            assert child["trace_id"] == parent["trace_id"]
    bash = nodes[(100, START["bash"])]
    below = [n for n in nodes.values() if n["relationship"] == "descendant"]
    assert below
    assert {n["trace_id"] for n in below} == {bash["trace_id"]}
    status, listed = get(client, "/processes/100")
    assert status == 200
    assert (listed["trace_id"], listed["span_id"], listed["parent_span_id"]) == (
        bash["trace_id"],
        bash["span_id"],
        None,
    )
    assert listed["traceparent"] is None
    status, orphan = get(client, "/graph/5000")
    virtual = [n for n in orphan["nodes"] if n["relationship"] == "virtual_root"]
    assert [(n["trace_id"], n["span_id"], n["parent_span_id"]) for n in virtual] == [
        (None, None, None)
    ]


def test_graph_keeps_exited_processes_and_marks_them(client: FlaskClient) -> None:
    status, graph = get(client, "/graph/100")
    assert status == 200
    nodes = _nodes(graph)
    exited = {
        k: (n["event_type"], n["exit_code"], n["exit_signal"])
        for k, n in nodes.items()
        if n["exited"]
    }
    assert exited == {
        (200, START["make"]): ("exit", 2, None),
        (300, START["cc1"]): ("exit", 0, None),
        (301, START["cc2"]): ("exit", None, 11),
        (400, START["stress"]): ("exit", None, 9),
    }
    assert nodes[(300, START["sleep"])]["event_type"] == "exec"
    assert nodes[(100, START["bash"])]["exited"] is False


def test_graph_with_an_unknown_parent_has_a_virtual_root(client: FlaskClient) -> None:
    status, graph = get(client, "/graph/5000")
    assert status == 200
    nodes = _nodes(graph)
    assert {k: (n["relationship"], n["level"]) for k, n in nodes.items()} == {
        (5000, START["orphan"]): ("self", 0),
        (4999, None): ("virtual_root", -1),
    }
    assert graph["edges"] == [
        {
            "from": 4999,
            "to": 5000,
            "from_start_time_ns": None,
            "to_start_time_ns": START["orphan"],
        }
    ]


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_graph_truncates_descendants(client: FlaskClient, limit: int) -> None:
    status, graph = get(client, f"/graph/100?max_descendants={limit}")
    assert status == 200
    below = [n for n in graph["nodes"] if n["relationship"] == "descendant"]
    assert len(below) == limit
    assert graph["truncated"] is True


@pytest.mark.parametrize("limit", [5, 6, 1000])
def test_graph_is_not_truncated_when_every_descendant_fits(client: FlaskClient, limit: int) -> None:
    # bash has exactly five descendants.
    status, graph = get(client, f"/graph/100?max_descendants={limit}")
    assert status == 200
    below = [n for n in graph["nodes"] if n["relationship"] == "descendant"]
    assert len(below) == 5
    assert graph["truncated"] is False


def test_graph_errors(client: FlaskClient) -> None:
    assert_json_error(client, "/graph/99999", 404, "99999")
    assert_json_error(client, "/graph/100?max_descendants=0", 400, "'max_descendants'")


# ---- routing errors and the token ---------------------------------------------


def test_unknown_route_is_404_json(client: FlaskClient) -> None:
    assert_json_error(client, "/no/such/route", 404, "/no/such/route")


@pytest.mark.parametrize("path", ["/processes", "/health", "/graph/100"])
def test_wrong_method_is_405_json(client: FlaskClient, path: str) -> None:
    response = client.post(path)
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert "POST" in body["error"]


TOKEN = "s3cret-t0ken"


@pytest.fixture
def token_client(make_stack: StackFactory) -> FlaskClient:
    stack = make_stack(api_config(auth_token=TOKEN))
    stack.start()
    return stack.app.test_client()


@pytest.mark.parametrize(
    "path", ["/processes", "/processes/100", "/graph/100", "/status", "/alerts", "/metrics"]
)
def test_token_is_required_without_a_header(token_client: FlaskClient, path: str) -> None:
    response = token_client.get(path)
    assert response.status_code == 401
    assert response.mimetype == "application/json"
    assert set(response.get_json()) == {"error"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize(
    "header", ["Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "]
)
def test_wrong_token_is_401(token_client: FlaskClient, header: str) -> None:
    response = token_client.get("/processes", headers={"Authorization": header})
    assert response.status_code == 401
    assert set(response.get_json()) == {"error"}


def test_right_token_is_accepted(token_client: FlaskClient) -> None:
    status, rows = get(token_client, "/processes", Authorization=f"Bearer {TOKEN}")
    assert status == 200
    assert [r["pid"] for r in rows] == LIVE
    status, _ = get(token_client, "/processes", Authorization=f"bearer {TOKEN}")
    assert status == 200


def test_health_and_probes_need_no_token(token_client: FlaskClient) -> None:
    status, body = get(token_client, "/health")
    assert (status, body["status"]) == (200, "ok")
    # Kubelet httpGet probes cannot send a token from a Secret.
    status, body = get(token_client, "/healthz")
    assert (status, body["status"]) == (200, "ok")
    status, body = get(token_client, "/readyz")
    assert (status, body["ready"]) == (200, True)


# ---- /alerts ------------------------------------------------------------------


@dataclass
class RecordingAlerts:
    """An alert source that answers fixed alerts and remembers what it was asked."""

    answer: list[dict[str, object]] = field(default_factory=list)
    calls: list[tuple[str | None, int | None]] = field(default_factory=list)

    def alerts(self, state: str | None, since_ns: int | None) -> list[dict[str, object]]:
        self.calls.append((state, since_ns))
        return self.answer


def test_alerts_are_empty_without_a_rules_engine(client: FlaskClient) -> None:
    assert get(client, "/alerts") == (200, [])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", (None, None)),
        ("state=firing", ("firing", None)),
        ("state=resolved", ("resolved", None)),
        ("since=1700000000", (None, 1_700_000_000 * S)),
        ("since=1700000000.5", (None, 1_700_000_000 * S + S // 2)),
        ("since=2023-11-14T22:13:20Z", (None, 1_700_000_000 * S)),
        ("since=2023-11-14T23:13:20%2B01:00", (None, 1_700_000_000 * S)),
        ("state=firing&since=2023-11-14T22:13:20.5Z", ("firing", 1_700_000_000 * S + S // 2)),
    ],
)
def test_alerts_pass_state_and_since_to_the_source(
    stack: ApiStack, query: str, expected: tuple[str | None, int | None]
) -> None:
    source = RecordingAlerts(answer=[{"rule": "fork_storm", "state": "firing"}])
    stack.context.alert_source = source
    status, body = get(stack.app.test_client(), f"/alerts?{query}")
    assert status == 200
    assert body == [{"rule": "fork_storm", "state": "firing"}]
    assert source.calls == [expected]


@pytest.mark.parametrize(
    "since",
    ["1700000000.25", "2023-11-14T22:13:20.25Z", "2023-11-14T22:13:20.250000+00:00"],
)
def test_alerts_since_is_exact_to_the_nanosecond(stack: ApiStack, since: str) -> None:
    # A quarter second past 1700000000 s is 1700000000250000000 ns, not the
    # nearest double (1700000000249999872).
    source = RecordingAlerts()
    stack.context.alert_source = source
    status, _ = get(stack.app.test_client(), f"/alerts?since={since.replace('+', '%2B')}")
    assert status == 200
    assert source.calls == [(None, 1_700_000_000 * S + S // 4)]


@pytest.mark.parametrize(
    ("query", "param"),
    [("state=bogus", "state"), ("since=garbage", "since"), ("since=2023-13-45", "since")],
)
def test_alerts_reject_bad_parameters(client: FlaskClient, query: str, param: str) -> None:
    assert_json_error(client, f"/alerts?{query}", 400, f"'{param}'")


# ---- /stream over the real server ---------------------------------------------


@dataclass
class SseBlock:
    """One blank-line-terminated block of an event stream."""

    fields: dict[str, str]
    comments: list[str]

    @property
    def id(self) -> str | None:
        return self.fields.get("id")

    @property
    def event(self) -> str | None:
        return self.fields.get("event")

    @property
    def data(self) -> Any:
        return json.loads(self.fields["data"])


class SseClient:
    """An SSE response read on its own thread; blocks arrive in a queue."""

    def __init__(self, port: int, path: str, headers: Mapping[str, str] | None = None) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
        self._conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self._sock = self._conn.sock
        self.response = self._conn.getresponse()
        self.status = self.response.status
        self._blocks: queue.Queue[SseBlock | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if self.status == 200:
            self._thread = threading.Thread(target=self._read, name="sse-reader", daemon=True)
            self._thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        comments: list[str] = []
        try:
            while raw := self.response.readline():
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    if fields or comments:
                        self._blocks.put(SseBlock(fields, comments))
                    fields, comments = {}, []
                elif line.startswith(":"):
                    comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    fields[name] = f"{fields[name]}\n{value}" if name in fields else value
        except (OSError, ValueError, http.client.HTTPException):
            pass  # the socket was shut down under the reader by close()
        finally:
            self._blocks.put(None)

    def json(self) -> Any:
        return json.loads(self.response.read())

    def next_block(self, timeout_s: float = DEADLINE_S) -> SseBlock | None:
        """The next block, or None at the end of the stream."""
        try:
            return self._blocks.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"nothing arrived on the stream within {timeout_s} s") from None

    def next_frame(self, timeout_s: float = DEADLINE_S) -> SseBlock:
        """The next block carrying an event (comments and the retry hint skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            block = self.next_block(max(0.0, deadline - time.monotonic()))
            assert block is not None, "the stream ended"
            if block.event is not None:
                return block

    def frames(self, count: int) -> list[SseBlock]:
        return [self.next_frame() for _ in range(count)]

    def ended(self, timeout_s: float) -> bool:
        """True when the stream ends within ``timeout_s`` (blocks before the end skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                block = self._blocks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if block is None:
                self._blocks.put(None)
                return True

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(DEADLINE_S)
            assert not self._thread.is_alive(), "the stream reader did not stop"
        self.response.close()
        self._conn.close()
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> SseClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def served(make_stack: StackFactory) -> ApiStack:
    stack = make_stack(api_config(heartbeat_interval_s=0.2))
    stack.start()
    stack.serve()
    return stack


def _server_port(stack: ApiStack) -> int:
    assert stack.server is not None
    return stack.server.port


def _child_of_bash(pid: int, start_s: int) -> list[ProcessEvent]:
    start = start_s * S
    common: dict[str, Any] = {
        "ppid": 100,
        "parent_start_time_ns": START["bash"],
        "uid": 1000,
        "gid": 1000,
    }
    return [
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


def test_api_server_listens_on_an_ephemeral_port(stack: ApiStack) -> None:
    # Port 0 lets the kernel choose a free port; ApiServer.port reports it.
    server = ApiServer(stack.app, "127.0.0.1:0", 1)
    server.start()
    try:
        assert server.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5) as resp:
            assert json.loads(resp.read())["status"] == "ok"
    finally:
        server.stop(2.0)


def test_stream_delivers_published_events_as_frames(served: ApiStack) -> None:
    with SseClient(_server_port(served), "/stream") as sse:
        assert sse.status == 200
        assert sse.response.getheader("Content-Type", "").startswith("text/event-stream")
        assert served.hub.stats()["subscribers"] == 1
        first = sse.next_block()
        assert first is not None and first.fields == {"retry": "3000"}
        published = served.publish(_child_of_bash(900, 40))
        frames = sse.frames(3)
    assert [(f.id, f.event) for f in frames] == [(str(ev.seq), ev.kind.value) for ev in published]
    assert [f.data["seq"] for f in frames] == [RECORDING_EVENTS + i for i in (1, 2, 3)]
    exec_data = frames[1].data
    assert (exec_data["v"], exec_data["kind"], exec_data["pid"], exec_data["argv"]) == (
        1,
        "exec",
        900,
        ["true", "900"],
    )
    assert exec_data["time"].endswith("Z")


def test_stream_filters_by_kind(served: ApiStack) -> None:
    with SseClient(_server_port(served), "/stream?kind=exec") as sse:
        served.publish(_child_of_bash(901, 41))
        served.publish(_child_of_bash(902, 42))
        frames = sse.frames(2)
    assert [(f.event, f.data["pid"]) for f in frames] == [("exec", 901), ("exec", 902)]


def test_events_route_filters_by_several_kinds(served: ApiStack) -> None:
    with SseClient(_server_port(served), "/events?kind=fork,exit") as sse:
        served.publish(_child_of_bash(903, 43))
        frames = sse.frames(2)
    assert [(f.event, f.data["pid"]) for f in frames] == [("fork", 903), ("exit", 903)]


def test_stream_filters_by_pid_subtree(served: ApiStack) -> None:
    outside = make_event(
        EventKind.FORK, 950, 44 * S, ppid=800, parent_start_time_ns=START["nginx"], comm="nginx"
    )
    with SseClient(_server_port(served), "/stream?pid=100&kind=fork") as sse:
        served.publish([outside, *_child_of_bash(904, 45)])
        frame = sse.next_frame()
        served.publish(_child_of_bash(905, 46))
        second = sse.next_frame()
    assert [(frame.event, frame.data["pid"]), (second.event, second.data["pid"])] == [
        ("fork", 904),
        ("fork", 905),
    ]


def test_stream_filters_by_comm(served: ApiStack) -> None:
    with SseClient(_server_port(served), "/stream?comm=tru*") as sse:
        served.publish(_child_of_bash(908, 49))
        frames = sse.frames(2)
    # The fork still carries the parent's comm (bash).
    assert [(f.event, f.data["comm"]) for f in frames] == [("exec", "true"), ("exit", "true")]


def test_stream_filters_by_container(served: ApiStack, cgroup_root: Path) -> None:
    scope = cgroup_root / "system.slice" / f"docker-{DOCKER_ID}.scope"
    in_container = make_event(
        EventKind.FORK,
        960,
        50 * S,
        ppid=800,
        parent_start_time_ns=START["nginx"],
        comm="nginx",
        cgroup_id=scope.stat().st_ino,
    )
    with SseClient(_server_port(served), f"/stream?container={DOCKER_ID[:12]}") as sse:
        served.publish([*_child_of_bash(909, 50), in_container])
        frame = sse.next_frame()
    assert (frame.event, frame.data["pid"], frame.data["container_id"]) == (
        "fork",
        960,
        DOCKER_ID,
    )


def test_stream_tells_a_client_how_many_events_it_lost(make_stack: StackFactory) -> None:
    stack = make_stack(api_config(heartbeat_interval_s=0.2, stream_queue_events=10))
    stack.start()
    stack.serve()
    with SseClient(_server_port(stack), "/stream") as sse:
        # One batch larger than the client's queue: the overflow is lost at once.
        last = stack.hub.stats()["last_id"]
        batch = [
            make_event(EventKind.FORK, 970 + i, (60 + i) * S).stamp(last + 1 + i) for i in range(15)
        ]
        stack.hub.emit(batch)
        lost = sse.next_frame()
        kept = sse.frames(10)
    assert (lost.event, lost.data) == ("lost", {"lost": 5, "reason": "this client read too slowly"})
    assert [f.id for f in kept] == [str(last + 1 + i) for i in range(10)]
    assert stack.hub.stats()["lost"] == 5


def test_stream_resumes_exactly_after_last_event_id(served: ApiStack) -> None:
    last = RECORDING_EVENTS
    headers = {"Last-Event-ID": str(last - 3)}
    with SseClient(_server_port(served), "/stream", headers) as sse:
        replayed = sse.frames(3)
        published = served.publish(_child_of_bash(906, 47)[:1])
        live = sse.next_frame()
    assert [f.id for f in replayed] == [str(last - 2), str(last - 1), str(last)]
    assert live.id == str(published[0].seq) == str(last + 1)


def test_stream_reports_a_gap_older_than_the_backlog(make_stack: StackFactory) -> None:
    stack = make_stack(api_config(heartbeat_interval_s=0.2, stream_backlog_events=10))
    stack.start()
    stack.serve()
    last = RECORDING_EVENTS
    with SseClient(_server_port(stack), "/stream", {"Last-Event-ID": "5"}) as sse:
        lost = sse.next_frame()
        replayed = sse.frames(10)
    oldest = last - 9
    assert lost.event == "lost"
    assert lost.id is None
    assert lost.data == {
        "lost": oldest - 5 - 1,
        "reason": "the requested id is older than the backlog",
    }
    assert [f.id for f in replayed] == [str(i) for i in range(oldest, last + 1)]


def test_stream_with_an_id_from_an_earlier_run_replays_the_backlog(served: ApiStack) -> None:
    with SseClient(_server_port(served), "/stream", {"Last-Event-ID": "100000"}) as sse:
        notice = sse.next_block()
        while notice is not None and not notice.comments:
            notice = sse.next_block()
        replayed = sse.frames(RECORDING_EVENTS)
    assert notice is not None and "earlier run" in notice.comments[0]
    assert [f.id for f in replayed] == [str(i) for i in range(1, RECORDING_EVENTS + 1)]


def test_stream_rejects_bad_requests(client: FlaskClient) -> None:
    message = assert_json_error(client, "/stream?kind=exec,bogus", 400, "'kind'", "bogus")
    assert "exec" in message.partition("known:")[2]
    assert_json_error(client, "/stream?pid=0", 400, "'pid'")
    code, body = get(client, "/stream", **{"Last-Event-ID": "yesterday"})
    assert code == 400
    assert "Last-Event-ID" in body["error"]


def test_stream_sends_heartbeats_when_idle(make_stack: StackFactory) -> None:
    stack = make_stack(api_config(heartbeat_interval_s=0.1))
    stack.start()
    stack.serve()
    with SseClient(_server_port(stack), "/stream") as sse:
        started = time.monotonic()
        heartbeats = 0
        while heartbeats < 3:
            block = sse.next_block()
            assert block is not None
            assert block.event is None, "nothing was published"
            heartbeats += any(c.startswith("keep-alive") for c in block.comments)
        elapsed = time.monotonic() - started
    assert elapsed < 3.0


def test_stream_over_the_client_limit_is_503(make_stack: StackFactory) -> None:
    stack = make_stack(api_config(heartbeat_interval_s=0.1, max_stream_clients=1))
    stack.start()
    stack.serve()
    port = _server_port(stack)
    with SseClient(port, "/stream") as first:
        assert first.status == 200
        with SseClient(port, "/stream") as second:
            assert second.status == 503
            body = second.json()
        assert set(body) == {"error"}
        assert "too many stream clients" in body["error"]
        assert stack.hub.stats()["rejected"] == 1
    # The departed client's slot is freed (noticed at its next heartbeat).
    assert wait_until(lambda: stack.hub.stats()["subscribers"] == 0)
    with SseClient(port, "/stream") as third:
        assert third.status == 200


def test_alerts_as_an_event_stream_carry_only_alerts(served: ApiStack) -> None:
    with SseClient(_server_port(served), "/alerts") as sse:
        served.publish(_child_of_bash(907, 48))
        served.hub.publish(5000, "alert", {"rule": "fork_storm", "severity": "high"})
        frame = sse.next_frame()
    assert (frame.id, frame.event, frame.data) == (
        "5000",
        "alert",
        {"rule": "fork_storm", "severity": "high"},
    )


def test_agent_shutdown_order_ends_open_streams(served: ApiStack) -> None:
    server = served.server
    assert server is not None
    with SseClient(server.port, "/stream") as sse:
        assert sse.next_block() is not None
        started = time.monotonic()
        served.hub.close()
        server.stop(1.0)
        stop_s = time.monotonic() - started
        assert sse.ended(2.0)
    assert stop_s < 2.0


def test_server_stop_ends_open_streams(served: ApiStack) -> None:
    server = served.server
    assert server is not None
    with SseClient(server.port, "/stream") as sse:
        assert sse.next_block() is not None
        started = time.monotonic()
        server.stop(1.0)
        stop_s = time.monotonic() - started
        ended = sse.ended(2.0)
    assert ended, "the stream was still open 2 s after ApiServer.stop() returned"
    assert stop_s < 2.0


def test_a_second_listing_reuses_unchanged_objects_with_a_fresh_age() -> None:
    # Unchanged processes are served from the previous listing's JSON with
    # the age spliced in; a process whose sample changed is rebuilt.

    table = ProcessTable()
    for pid in (10, 11):
        table.apply(make_event(EventKind.EXEC, pid, pid * 1_000_000_000, comm=f"p{pid}"))
    keys = table.live_keys()
    table.update_samples(
        {
            keys[10]: ProcessSample(1, 5, 1.0, 4096, 3, 1024, 1, "S"),
            keys[11]: ProcessSample(1, 5, 1.0, 4096, 3, 1024, 1, "S"),
        }
    )

    class Ctx:
        """The parts of ApiContext the serialiser reads."""

        def __init__(self) -> None:
            self.json_cache: dict[object, object] = {}
            self.mem_total_bytes = 1 << 30
            self.users = UserNames()

        def wall_from_boot(self, ts: int) -> int:
            return ts

    ctx = Ctx()
    first = json.loads(listed_processes_body(table.snapshot(), ctx, 100 * 10**9, 0))  # type: ignore[arg-type]
    table.update_samples(
        {
            keys[10]: ProcessSample(2, 5, 1.0, 4096, 3, 1024, 1, "S"),
            keys[11]: ProcessSample(2, 9, 4.0, 8192, 3, 1024, 1, "R"),
        }
    )
    second = json.loads(listed_processes_body(table.snapshot(), ctx, 101 * 10**9, 0))  # type: ignore[arg-type]
    a1, b1 = sorted(first, key=lambda p: p["pid"])
    a2, b2 = sorted(second, key=lambda p: p["pid"])
    assert a2["age_s"] == a1["age_s"] + 1.0
    assert {k: v for k, v in a2.items() if not k.startswith("age")} == {
        k: v for k, v in a1.items() if not k.startswith("age")
    }
    assert (b2["cpu_percent"], b2["rss_bytes"], b2["state"]) == (4.0, 8192, "running")
    assert (b1["cpu_percent"], b1["rss_bytes"], b1["state"]) == (1.0, 4096, "sleeping")
    # What the cache serves is exactly what building the object afresh gives.
    fresh = {
        info.pid: json.loads(json.dumps(process_json(info, ctx, 101 * 10**9, 0)))  # type: ignore[arg-type]
        for info in table.snapshot()
    }
    assert {p["pid"]: p for p in second} == fresh
    assert [list(p) for p in second] == [list(fresh[p["pid"]]) for p in second]  # key order too


def test_a_graph_of_a_process_pruned_meanwhile_is_the_process_alone() -> None:
    # /graph looks the process up, then walks the table: the sampler may
    # prune it in between. The graph is then that process and its parent.
    table = ProcessTable()
    table.apply(make_event(EventKind.EXEC, 10, 10**9, ppid=1, comm="sh"))
    info = table.find_pid(10)
    assert info is not None
    graph = graph_json(ProcessTable(), info, 100)  # a table that no longer holds it
    assert [(n["pid"], n["relationship"], n["level"]) for n in graph["nodes"]] == [
        (10, "self", 0),
        (1, "virtual_root", -1),
    ]
    assert graph["nodes"][0]["comm"] == "sh"
    assert graph["nodes"][0]["event_type"] == "exec"
    assert graph["edges"] == [
        {"from": 1, "to": 10, "from_start_time_ns": None, "to_start_time_ns": 10**9}
    ]
    assert graph["truncated"] is False
