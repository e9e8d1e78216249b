"""Container attribution: path parsing and the id -> path resolver on a fake tree."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_linnix import containers
from otel_linnix.containers import CgroupResolver, ContainerInfo, parse_container

DOCKER_ID = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d"
CTRD_ID = "2e3da66e54fd4ce15096f6802881f4bcc83f55c75a3fe588059b6f64455b6632"
CRIO_ID = "25180deecaa55fe3387954e1d3e9be2b2281f990369ac772bac5e868a27e2625"
PODMAN_ID = "e055a04c06b25bee25188cc4a50e985ef5af1fcfa9a68dd52530a5e72055bc26"
INNER_ID = "4be5b516d3354e2ef9f3c6ab6bb03c7a5fe0fd6408c35118bada27d979c66ab4"
POD_UID = "c5de9fc7-6d1d-4d5b-9167-7090843311d2"
POD_SLICE_UID = POD_UID.replace("-", "_")  # how systemd unit names spell it
STATIC_POD_UID = "5a3c1d0e8f7b6a594837261504f3e2d1"  # static pods: a 32-hex config hash

KUBEPODS_BURSTABLE = (
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice"
)
KUBEPODS_BESTEFFORT = (
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_SLICE_UID}.slice"
)


def info(cid: str, runtime: str, pod: str | None = None) -> ContainerInfo:
    return ContainerInfo(container_id=cid, runtime=runtime, pod_uid=pod)


# Layouts as the runtimes create them: docker's systemd and cgroupfs drivers,
# the kubelet's systemd driver (kubepods-<qos>-pod<uid_>.slice, no qos slice for
# Guaranteed pods) and cgroupfs driver (/kubepods/<qos>/pod<uid>/<id>), CRI-O's
# cgroup managers (crio-<id>.scope / crio-<id>, monitor in crio-conmon-<id>),
# podman's machine.slice/libpod-<id>.scope with crun's nested "container"
# payload cgroup, and kind (kubelet-kubepods-* inside a docker node container).
PARSE_CASES: list[tuple[str, ContainerInfo | None]] = [
    (f"/system.slice/docker-{DOCKER_ID}.scope", info(DOCKER_ID, "docker")),
    (f"/docker/{DOCKER_ID}", info(DOCKER_ID, "docker")),
    (f"/system.slice/docker-{DOCKER_ID}.scope/init.scope", info(DOCKER_ID, "docker")),
    (f"{KUBEPODS_BURSTABLE}/cri-containerd-{CTRD_ID}.scope", info(CTRD_ID, "containerd", POD_UID)),
    (
        f"/kubepods.slice/kubepods-pod{POD_SLICE_UID}.slice/cri-containerd-{CTRD_ID}.scope",
        info(CTRD_ID, "containerd", POD_UID),
    ),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_POD_UID}.slice"
        f"/cri-containerd-{CTRD_ID}.scope",
        info(CTRD_ID, "containerd", STATIC_POD_UID),
    ),
    (f"/kubepods/besteffort/pod{POD_UID}/{CTRD_ID}", info(CTRD_ID, "containerd", POD_UID)),
    (f"/kubepods/pod{POD_UID}/{CTRD_ID}", info(CTRD_ID, "containerd", POD_UID)),
    (f"{KUBEPODS_BESTEFFORT}/crio-{CRIO_ID}.scope", info(CRIO_ID, "cri-o", POD_UID)),
    (f"{KUBEPODS_BESTEFFORT}/crio-conmon-{CRIO_ID}.scope", None),
    (f"/kubepods/burstable/pod{POD_UID}/crio-{CRIO_ID}", info(CRIO_ID, "cri-o", POD_UID)),
    (f"{KUBEPODS_BURSTABLE}/docker-{DOCKER_ID}.scope", info(DOCKER_ID, "docker", POD_UID)),
    (f"/machine.slice/libpod-{PODMAN_ID}.scope", info(PODMAN_ID, "podman")),
    (f"/machine.slice/libpod-{PODMAN_ID}.scope/container", info(PODMAN_ID, "podman")),
    (f"/machine.slice/libpod-conmon-{PODMAN_ID}.scope", None),
    (
        "/user.slice/user-1000.slice/user@1000.service/user.slice"
        f"/libpod-{PODMAN_ID}.scope/container",
        info(PODMAN_ID, "podman"),
    ),
    # Innermost wins: docker-in-docker, and kind's pods inside the node container.
    (f"/system.slice/docker-{DOCKER_ID}.scope/docker/{INNER_ID}", info(INNER_ID, "docker")),
    (
        f"/system.slice/docker-{DOCKER_ID}.scope/kubelet.slice/kubelet-kubepods.slice"
        "/kubelet-kubepods-besteffort.slice"
        f"/kubelet-kubepods-besteffort-pod{POD_SLICE_UID}.slice/cri-containerd-{CTRD_ID}.scope",
        info(CTRD_ID, "containerd", POD_UID),
    ),
    # A monitor running inside an outer container belongs to that container.
    (
        f"/system.slice/docker-{DOCKER_ID}.scope/machine.slice/libpod-conmon-{PODMAN_ID}.scope",
        info(DOCKER_ID, "docker"),
    ),
    (f"/docker/{DOCKER_ID}\n", info(DOCKER_ID, "docker")),
    # Host cgroups and near misses.
    ("/system.slice/ssh.service", None),
    ("/system.slice/docker.service", None),
    ("/user.slice/user-0.slice/session-1.scope", None),
    ("/init.scope", None),
    ("/", None),
    ("", None),
    (f"/system.slice/docker-{DOCKER_ID[:63]}.scope", None),
    (f"/docker/{DOCKER_ID[:63]}", None),
    (f"/system.slice/docker-{DOCKER_ID.upper()}.scope", None),
    (f"/{DOCKER_ID}", None),  # a bare id where no runtime puts one
    (f"/system.slice/{DOCKER_ID}", None),
    (KUBEPODS_BURSTABLE, None),  # the pod cgroup itself holds no container
]


@pytest.mark.parametrize(("path", "expected"), PARSE_CASES)
def test_parse_container(path: str, expected: ContainerInfo | None) -> None:
    assert parse_container(path) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_mount() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cgroup2-") as d:
        root = Path(d)
        (root / "system.slice" / "ssh.service").mkdir(parents=True)
        (root / "cgroup.procs").write_text("")  # files are not cgroups
        yield root


def mkcg(root: Path, rel: str) -> int:
    """Create a directory in the fake mount and return its id (inode number)."""
    path = root / rel.lstrip("/")
    path.mkdir(parents=True)
    return os.stat(path).st_ino


def test_resolver_maps_ids_to_paths_and_containers(fake_mount: Path) -> None:
    docker_rel = f"/system.slice/docker-{DOCKER_ID}.scope"
    crio_rel = f"{KUBEPODS_BURSTABLE}/crio-{CRIO_ID}.scope"
    docker_id = mkcg(fake_mount, docker_rel)
    crio_id = mkcg(fake_mount, crio_rel)
    ssh_id = os.stat(fake_mount / "system.slice" / "ssh.service").st_ino
    file_id = os.stat(fake_mount / "cgroup.procs").st_ino

    r = CgroupResolver(str(fake_mount), clock=FakeClock())

    assert r.root == str(fake_mount)
    assert r.path_of(docker_id) == docker_rel
    assert r.container_of(docker_id) == info(DOCKER_ID, "docker")
    assert r.path_of(crio_id) == crio_rel
    assert r.container_of(crio_id) == info(CRIO_ID, "cri-o", POD_UID)
    assert r.path_of(ssh_id) == "/system.slice/ssh.service"
    assert r.container_of(ssh_id) is None
    assert r.path_of(containers.ROOT_CGROUP_ID) == "/"
    assert r.container_of(containers.ROOT_CGROUP_ID) is None
    assert r.path_of(file_id) is None
    stats = r.stats()
    assert stats["lookups"] == 9
    assert stats["misses"] == 1  # the file
    assert stats["unresolved"] == 1
    assert stats["rescans"] == 0  # rate-limited: the clock has not moved
    assert stats["evictions"] == 0


def test_container_of_is_cached_per_id(fake_mount: Path) -> None:
    cg = mkcg(fake_mount, f"/system.slice/docker-{DOCKER_ID}.scope")
    r = CgroupResolver(str(fake_mount), clock=FakeClock())
    first = r.container_of(cg)
    assert first is not None
    # parse_container builds a new object per call; the same object means a hit.
    assert r.container_of(cg) is first
    assert r.stats()["containers_cached"] == 1


def test_rescan_finds_a_new_directory(fake_mount: Path) -> None:
    clock = FakeClock()
    r = CgroupResolver(str(fake_mount), rescan_min_interval_s=1.0, clock=clock)
    cg = mkcg(fake_mount, f"/machine.slice/libpod-{PODMAN_ID}.scope/container")

    # Too soon after the initial walk: a miss that stays unresolved, and the
    # None is not cached, so it is retried below.
    assert r.container_of(cg) is None
    assert r.stats()["rescans"] == 0
    assert r.stats()["unresolved"] == 1

    clock.now += 1.0
    assert r.container_of(cg) == info(PODMAN_ID, "podman")
    assert r.path_of(cg) == f"/machine.slice/libpod-{PODMAN_ID}.scope/container"
    stats = r.stats()
    assert stats["rescans"] == 1
    assert stats["misses"] == 2
    assert stats["unresolved"] == 1


def test_rescans_are_rate_limited(fake_mount: Path) -> None:
    clock = FakeClock()
    r = CgroupResolver(str(fake_mount), rescan_min_interval_s=5.0, clock=clock)
    unknown = 10**12  # no directory has this inode

    for _ in range(100):
        assert r.path_of(unknown) is None
    assert r.stats()["rescans"] == 0

    clock.now += 5.0
    for _ in range(100):
        assert r.path_of(unknown) is None
    assert r.stats()["rescans"] == 1

    other = unknown + 1  # a different id: the first one is known to be gone
    clock.now += 4.9
    assert r.path_of(other) is None
    assert r.stats()["rescans"] == 1
    clock.now += 0.1
    assert r.path_of(other) is None
    stats = r.stats()
    assert stats["rescans"] == 2
    assert stats["misses"] == 202
    assert stats["unresolved"] == 202


def test_an_id_a_rescan_did_not_find_is_not_rescanned_for_until_the_ttl(fake_mount: Path) -> None:
    clock = FakeClock()
    r = CgroupResolver(str(fake_mount), rescan_min_interval_s=0.0, negative_ttl_s=30.0, clock=clock)
    gone = 10**12
    assert r.path_of(gone) is None
    assert r.stats()["rescans"] == 1
    for _ in range(50):
        clock.now += 0.5
        assert r.path_of(gone) is None
    assert r.stats()["rescans"] == 1  # events of a removed cgroup cost no walks
    # ...and do not starve the rescan a new container needs.
    rel = f"/system.slice/docker-{DOCKER_ID}.scope"
    assert r.path_of(mkcg(fake_mount, rel)) == rel
    assert r.stats()["rescans"] == 2
    clock.now += 30.0
    assert r.path_of(gone) is None
    assert r.stats()["rescans"] == 3


def test_entries_outlive_their_directory(fake_mount: Path) -> None:
    clock = FakeClock()
    rel = f"/system.slice/docker-{DOCKER_ID}.scope"
    cg = mkcg(fake_mount, rel)
    r = CgroupResolver(str(fake_mount), rescan_min_interval_s=0.0, clock=clock)
    (fake_mount / rel.lstrip("/")).rmdir()
    assert r.path_of(10**12) is None  # forces a rescan that no longer sees it
    assert r.stats()["rescans"] == 1
    # An exit event read after the runtime removed the cgroup still resolves.
    assert r.path_of(cg) == rel
    assert r.container_of(cg) == info(DOCKER_ID, "docker")


def test_caches_are_bounded(fake_mount: Path) -> None:
    ids = [mkcg(fake_mount, f"/docker/{c * 64}") for c in "abcd"]
    r = CgroupResolver(str(fake_mount), rescan_min_interval_s=0.0, max_entries=3)
    stats = r.stats()
    # 7 directories (system.slice, ssh.service, docker, 4 containers) into 3 slots.
    assert stats["paths_cached"] == 3
    assert stats["evictions"] == 4
    for cid in ids:
        assert r.container_of(cid) is not None
    assert r.stats()["containers_cached"] == 3


def test_max_entries_must_be_positive(fake_mount: Path) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CgroupResolver(str(fake_mount), max_entries=0)


def test_missing_mount_disables_attribution_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=containers.__name__):
        r = CgroupResolver(str(tmp_path / "absent"), rescan_min_interval_s=0.0)
        for cg in (containers.ROOT_CGROUP_ID, 2, 12345):
            assert r.path_of(cg) is None
            assert r.container_of(cg) is None
    assert r.root is None
    warnings = [rec for rec in caplog.records if rec.name == containers.__name__]
    assert len(warnings) == 1
    assert "absent" in warnings[0].getMessage()
    stats = r.stats()
    assert stats["lookups"] == 6
    assert stats["rescans"] == stats["misses"] == 0


def test_no_cgroup2_mounted_at_all(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(containers, "find_cgroup2_mount", lambda: None)
    with caplog.at_level(logging.WARNING, logger=containers.__name__):
        r = CgroupResolver()
    assert r.root is None
    assert r.container_of(5) is None
    assert [rec.name for rec in caplog.records] == [containers.__name__]


MOUNTINFO_HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime shared:9 - cgroup2 cgroup2 rw
"""
MOUNTINFO_V1_ONLY = MOUNTINFO_HYBRID.splitlines()[1] + "\n"
MOUNTINFO_BIND_FIRST = """\
50 23 0:38 /kubepods /host/cg rw - cgroup2 cgroup2 rw
51 23 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MOUNTINFO_HYBRID, "/sys/fs/cgroup/uni fied"),
        (MOUNTINFO_V1_ONLY, None),
        (MOUNTINFO_BIND_FIRST, "/sys/fs/cgroup"),
        (MOUNTINFO_BIND_FIRST.splitlines()[0], "/host/cg"),
        ("", None),
    ],
)
def test_find_cgroup2_mount(tmp_path: Path, text: str, expected: str | None) -> None:
    f = tmp_path / "mountinfo"
    f.write_text(text)
    assert containers.find_cgroup2_mount(str(f)) == expected


def test_find_cgroup2_mount_unreadable(tmp_path: Path) -> None:
    assert containers.find_cgroup2_mount(str(tmp_path / "nope")) is None


def test_finds_this_hosts_mount_when_root_is_none() -> None:
    found = containers.find_cgroup2_mount()
    if found is None:
        pytest.skip("this host has no cgroup2 mount")
    assert CgroupResolver().root == found
