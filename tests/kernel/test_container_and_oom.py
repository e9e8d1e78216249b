"""Container attribution and OOM kills, observed through the real agent."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_linnix.containers import find_cgroup2_mount
from otel_linnix.events import EventKind
from tests.kernel.conftest import Agent
from tests.kernel.oom import memory_cgroup, rmdir_retry, run_oom_victim, v1_memory_available

pytestmark = pytest.mark.kernel


@contextlib.contextmanager
def docker_scope() -> Iterator[tuple[Path, str]]:
    """A real cgroup v2 directory laid out as Docker's systemd driver does."""
    mount = find_cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    slice_dir = Path(mount, "system.slice")
    made_slice = not slice_dir.exists()
    slice_dir.mkdir(exist_ok=True)
    container_id = secrets.token_hex(32)
    scope = slice_dir / f"docker-{container_id}.scope"
    scope.mkdir()
    try:
        yield scope, container_id
    finally:
        rmdir_retry(scope)
        if made_slice:
            rmdir_retry(slice_dir)


def test_process_in_docker_cgroup_carries_container_id(agent: Agent) -> None:
    with docker_scope() as (scope, container_id):
        # The shell moves itself into the cgroup, then execs: the exec record
        # is written from inside the container's cgroup.
        proc = subprocess.Popen(["sh", "-c", f"echo $$ > {scope}/cgroup.procs && exec sleep 0.3"])
        assert proc.wait(timeout=20) == 0
        events = agent.collector.wait_for(
            lambda evs: any(e.pid == proc.pid and e.kind is EventKind.EXIT for e in evs)
        )
        mine = {e.kind: e for e in events if e.pid == proc.pid}
        exec_ev, exit_ev = mine[EventKind.EXEC], mine[EventKind.EXIT]
        assert exec_ev.cgroup_id == os.stat(scope).st_ino
        assert exec_ev.container_id == container_id
        assert exec_ev.container_runtime == "docker"
        assert exit_ev.container_id == container_id
        info = agent.table.get(exec_ev.key)
        assert info is not None and info.container_id == container_id
        # The fork happened outside the container: it must not carry the id.
        assert mine[EventKind.FORK].container_id is None


@pytest.fixture
def oom_cgroup() -> Iterator[Path]:
    if not v1_memory_available():
        pytest.skip("no cgroup v1 memory controller mounted at /sys/fs/cgroup/memory")
    with memory_cgroup("linnix-oom") as cg:
        yield cg


def test_oom_kill_is_reported_with_the_victims_facts(agent: Agent, oom_cgroup: Path) -> None:
    pid = run_oom_victim(oom_cgroup)
    events = agent.collector.wait_for(
        lambda evs: any(e.pid == pid and e.kind is EventKind.EXIT for e in evs)
    )
    mine = [e for e in events if e.pid == pid]
    oom = [e for e in mine if e.kind is EventKind.OOM_KILL]
    assert len(oom) == 1
    victim = oom[0]
    assert victim.comm.startswith("python")
    assert victim.rss_bytes is not None and 32 << 20 < victim.rss_bytes <= 80 << 20
    exit_ev = next(e for e in mine if e.kind is EventKind.EXIT)
    assert exit_ev.exit_signal == 9
    assert victim.key == exit_ev.key
    info = agent.table.get(victim.key)
    assert info is not None and info.oom_killed and info.exited
