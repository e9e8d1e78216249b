"""CgroupResolver against the real cgroup v2 hierarchy.

Every process on the test machines sits in the v2 root (cgroup id 1), so the
test makes its own container-shaped cgroup, moves a child into it and checks
that the id the kernel reports for the child resolves to that container.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from otel_linnix.containers import (
    ROOT_CGROUP_ID,
    CgroupResolver,
    ContainerInfo,
    find_cgroup2_mount,
)

pytestmark = pytest.mark.kernel

_MOUNT = find_cgroup2_mount()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a cgroup v2 directory and move a process into it"
    if _MOUNT is None:
        return "no cgroup2 hierarchy mounted (see /proc/self/mountinfo)"
    if not os.access(_MOUNT, os.W_OK):
        return f"cgroup2 mount {_MOUNT} is not writable"
    return None


_REASON = _skip_reason()


@dataclass
class Contained:
    mount: Path
    cgroup_dir: Path
    container_id: str
    child: subprocess.Popen[bytes]


def _rmdir_retrying(path: Path) -> None:
    # Right after the last member is reaped the kernel may still report the
    # cgroup busy for a moment.
    for _ in range(50):
        try:
            path.rmdir()
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
        else:
            return
    path.rmdir()


@contextlib.contextmanager
def _make_contained() -> Iterator[Contained]:
    """A `sleep 30` child inside <v2 mount>/system.slice/docker-<random id>.scope."""
    assert _MOUNT is not None
    mount = Path(_MOUNT)
    container_id = secrets.token_hex(32)
    slice_dir = mount / "system.slice"
    cgroup_dir = slice_dir / f"docker-{container_id}.scope"
    made_slice = not slice_dir.exists()
    slice_dir.mkdir(exist_ok=True)
    child: subprocess.Popen[bytes] | None = None
    try:
        cgroup_dir.mkdir()
        child = subprocess.Popen(["sleep", "30"])
        (cgroup_dir / "cgroup.procs").write_text(f"{child.pid}\n")
        yield Contained(mount, cgroup_dir, container_id, child)
    finally:
        if child is not None:
            child.kill()
            child.wait(timeout=10)
        _rmdir_retrying(cgroup_dir)
        if made_slice:
            # Shared with other tests that use the same layout: leave it if busy.
            with contextlib.suppress(OSError):
                slice_dir.rmdir()


@pytest.fixture
def contained() -> Iterator[Contained]:
    if _REASON is not None:
        pytest.skip(_REASON)
    with _make_contained() as c:
        yield c


def _v2_path_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"/proc/{pid}/cgroup has no cgroup v2 line")


def test_child_in_docker_scope_resolves_to_its_container(contained: Contained) -> None:
    rel = "/" + str(contained.cgroup_dir.relative_to(contained.mount))
    # What bpf_get_current_cgroup_id() returns for the child: the inode number
    # of its v2 directory. /proc confirms the child really is in there.
    cgroup_id = os.stat(contained.cgroup_dir).st_ino
    assert cgroup_id != ROOT_CGROUP_ID
    assert _v2_path_of(contained.child.pid) == rel

    r = CgroupResolver(str(contained.mount))
    assert r.path_of(cgroup_id) == rel
    assert r.container_of(cgroup_id) == ContainerInfo(contained.container_id, "docker", None)
    assert r.container_of(ROOT_CGROUP_ID) is None
    assert r.path_of(ROOT_CGROUP_ID) == "/"
    assert r.stats()["misses"] == 0


def test_resolver_made_before_the_container_finds_it_by_rescan() -> None:
    if _REASON is not None:
        pytest.skip(_REASON)
    r = CgroupResolver(rescan_min_interval_s=0.0)  # finds the mount itself
    assert r.root == _MOUNT
    # The agent starts first; the container appears afterwards.
    with _make_contained() as c:
        cgroup_id = os.stat(c.cgroup_dir).st_ino
        assert r.container_of(cgroup_id) == ContainerInfo(c.container_id, "docker", None)
    stats = r.stats()
    assert stats["rescans"] == 1
    assert stats["unresolved"] == 0
