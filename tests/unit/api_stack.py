"""The API over a real, replay-fed Pipeline and a real StreamHub, for the API tests.

The recording is ``build_tree.jsonl`` plus a few events written per test:
``nginx`` (800) inside a docker container, and pid 300 reused by a live
``sleep`` after the ``cc`` that had it exited. The pipeline's clock stands
still at 30 s, so ages are exact; resource samples are set by hand (the
sampler never sweeps), so sorting and filtering by them is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

from flask import Flask

from otel_linnix.api import ApiContext, create_app
from otel_linnix.api.context import UserNames
from otel_linnix.api.server import ApiServer
from otel_linnix.config import ApiConfig, Config
from otel_linnix.containers import CgroupResolver
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey
from otel_linnix.pipeline import Pipeline
from otel_linnix.process_table import ProcessSample, ProcessTable
from otel_linnix.recording import event_to_dict
from otel_linnix.redaction import Redactor
from otel_linnix.sinks import SinkWorker
from otel_linnix.sources.procfs import ProcReader
from otel_linnix.sources.replay import ReplaySource
from otel_linnix.stream_hub import StreamHub
from tests.unit.conftest import (
    DEADLINE_S,
    PROC_FIXTURE,
    RECORDINGS,
    CollectingSink,
    make_event,
    wait_until,
)

S = 1_000_000_000
MIB = 1 << 20
CLOCK_NS = 30 * S
# The hub's boot -> wall clock offset: event times read as November 2023.
WALL_OFFSET_NS = 1_700_000_000 * S
MEM_TOTAL_BYTES = 1024 * MIB
DOCKER_ID = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d"
BOOTSTRAP_PIDS = (1, 4242, 5000, 4300)
TREE_EVENTS = 15
EXTRA_EVENTS = 4
RECORDING_EVENTS = len(BOOTSTRAP_PIDS) + TREE_EVENTS + EXTRA_EVENTS

# Exact start times (what the nodes and rows carry); keys truncate them to the tick.
START = {
    "init": 20_000_000,
    "bash": 10_000_123_456,
    "make": 11_007_000_001,
    "cc1": 12_000_000_015,
    "cc2": 12_250_000_042,
    "stress": 13_000_000_999,
    "server": 15 * S,
    "orphan": 15_500_000_000,
    "worker": 16 * S,
    "nginx": 16_500_000_000,
    "sleep": 17 * S,
}
K_INIT = ProcessKey.of(1, START["init"])
K_BASH = ProcessKey.of(100, START["bash"])
K_MAKE = ProcessKey.of(200, START["make"])
K_CC1 = ProcessKey.of(300, START["cc1"])
K_CC2 = ProcessKey.of(301, START["cc2"])
K_STRESS = ProcessKey.of(400, START["stress"])
K_SERVER = ProcessKey.of(4242, START["server"])
K_ORPHAN = ProcessKey.of(5000, START["orphan"])
K_WORKER = ProcessKey.of(4300, START["worker"])
K_NGINX = ProcessKey.of(800, START["nginx"])
K_SLEEP = ProcessKey.of(300, START["sleep"])

USERS = {0: "root", 1000: "alice", 65534: "nobody"}

# pid: (cpu %, rss, open fds, threads, state). 4300 (a zombie) has no sample.
SAMPLES: dict[ProcessKey, tuple[float, int, int, int, str]] = {
    K_INIT: (0.5, 8 * MIB, 40, 1, "S"),
    K_BASH: (2.0, 4 * MIB, 4, 1, "S"),
    K_SERVER: (75.0, 512 * MIB, 300, 12, "R"),
    K_ORPHAN: (0.1, 1 * MIB, 3, 1, "S"),
    K_NGINX: (12.5, 64 * MIB, 25, 4, "S"),
    K_SLEEP: (1.0, 2 * MIB, 5, 1, "S"),
}


class FixedUsers(UserNames):
    """uid -> name from a fixed table, whatever this host's passwd says."""

    def name(self, uid: int) -> str | None:
        return USERS.get(uid)


def api_config(**api: object) -> Config:
    """The default Config with some [api] settings replaced."""
    return dataclasses.replace(Config(), api=dataclasses.replace(ApiConfig(), **api))  # type: ignore[arg-type]


def free_port() -> int:
    """A port nobody listens on (the kernel just handed it out, then it was closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_api_recording(path: Path, cgroup_root: Path) -> Path:
    """build_tree.jsonl plus nginx in a docker container and a reuse of pid 300."""
    scope = cgroup_root / "system.slice" / f"docker-{DOCKER_ID}.scope"
    scope.mkdir(parents=True, exist_ok=True)
    cgroup_id = scope.stat().st_ino
    extra = [
        make_event(
            EventKind.FORK,
            800,
            START["nginx"],
            ppid=1,
            parent_start_time_ns=START["init"],
            comm="systemd",
            cgroup_id=cgroup_id,
        ),
        make_event(
            EventKind.EXEC,
            800,
            START["nginx"],
            ts_ns=START["nginx"] + 1_000_000,
            ppid=1,
            parent_start_time_ns=START["init"],
            comm="nginx",
            exe="/usr/sbin/nginx",
            argv=("nginx", "-g", "daemon off;"),
            cgroup_id=cgroup_id,
        ),
        make_event(
            EventKind.FORK,
            300,
            START["sleep"],
            ppid=100,
            parent_start_time_ns=START["bash"],
            comm="bash",
            uid=1000,
            gid=1000,
            cgroup_id=4096,
        ),
        make_event(
            EventKind.EXEC,
            300,
            START["sleep"],
            ts_ns=START["sleep"] + 1_000_000,
            ppid=100,
            parent_start_time_ns=START["bash"],
            comm="sleep",
            exe="/usr/bin/sleep",
            argv=("sleep", "60"),
            uid=1000,
            gid=1000,
            cgroup_id=4096,
        ),
    ]
    assert len(extra) == EXTRA_EVENTS
    tree = (RECORDINGS / "build_tree.jsonl").read_text(encoding="utf-8")
    lines = [json.dumps(event_to_dict(ev)) + "\n" for ev in extra]
    path.write_text(tree + "".join(lines), encoding="utf-8")
    return path


class ApiStack:
    """Pipeline (ReplaySource -> table -> hub and a collecting sink), API app, optional server."""

    def __init__(
        self,
        recording: Path,
        cgroup_root: Path,
        config: Config | None = None,
        *,
        fallback_reason: str | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.config = config if config is not None else Config()
        api = self.config.api
        self.hub = StreamHub(
            api.stream_backlog_events,
            api.max_stream_clients,
            api.stream_queue_events,
            lambda ts_ns: ts_ns + WALL_OFFSET_NS,
        )
        self.source = ReplaySource(recording)
        self.sink = CollectingSink()
        self.table = ProcessTable()
        self.pipeline = Pipeline(
            self.source,
            self.table,
            ProcReader(str(PROC_FIXTURE)),
            CgroupResolver(root=str(cgroup_root)),
            [SinkWorker(self.hub), SinkWorker(self.sink)],
            clock=lambda: CLOCK_NS,
            sample_interval_s=3600.0,
            redactor=redactor,
            fallback_reason=fallback_reason,
        )
        self.context = ApiContext(
            self.config,
            self.pipeline,
            self.hub,
            lambda: CLOCK_NS,
            users=FixedUsers(),
            mem_total_bytes=MEM_TOTAL_BYTES,
        )
        self.app: Flask = create_app(self.context)
        self.server: ApiServer | None = None
        self._started = False

    def start(self, expected_events: int = RECORDING_EVENTS, *, samples: bool = True) -> None:
        """Start the pipeline and wait until every event reached the table, the hub and the sink."""
        self._started = True
        self.pipeline.start()
        assert self.source.done.wait(DEADLINE_S), "the replay did not finish"
        assert self.sink.wait_for(expected_events), (
            f"the sink got {len(self.sink.events)} of {expected_events} events"
        )
        assert wait_until(lambda: self.hub.stats()["last_id"] >= expected_events), (
            f"the hub got {self.hub.stats()['last_id']} of {expected_events} events"
        )
        if samples:
            self.table.update_samples(
                {
                    key: ProcessSample(CLOCK_NS, None, cpu, rss, fds, 1024, threads, state)
                    for key, (cpu, rss, fds, threads, state) in SAMPLES.items()
                }
            )

    def publish(self, events: list[ProcessEvent]) -> list[ProcessEvent]:
        """Feed events through the pipeline as its source would; returns them as numbered."""
        before = len(self.sink.events)
        self.pipeline.handle_batch(events)
        assert self.sink.wait_for(before + len(events))
        return self.sink.events[before:]

    def serve(self) -> ApiServer:
        """The API on a real waitress server on 127.0.0.1, on an ephemeral port."""
        server = ApiServer(self.app, "127.0.0.1:0", self.config.api.max_stream_clients)
        self.server = server
        server.start()
        return server

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        """The agent's shutdown order: end the streams, stop the server, stop the pipeline."""
        self.hub.close()
        if self.server is not None:
            wait_until(lambda: self.hub.stats()["subscribers"] == 0)
            self.server.stop(2.0)
        if self._started:
            self.pipeline.stop(2.0)
