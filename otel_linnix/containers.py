"""Container attribution from cgroup v2 ids and paths.

The kernel probe records ``bpf_get_current_cgroup_id()``: the inode number of
the task's cgroup v2 directory (1 for the v2 root). Container runtimes name
that directory after the container, so id -> directory -> name attributes a
process to a container without asking any runtime's API: no socket, no
credentials, nothing beyond reading the cgroup tree.

Supported layouts (``<id>`` is 64 lowercase hex digits; any prefix may come
before them, e.g. ``/user.slice/.../user@1000.service/...`` for rootless):

* docker: ``.../docker-<id>.scope`` (systemd driver), ``/docker/<id>`` (cgroupfs)
* containerd: ``.../cri-containerd-<id>.scope`` (systemd driver),
  ``.../kubepods/[<qos>/]pod<uid>/<id>`` (kubelet cgroupfs driver; dockershim
  used the same layout, but it left Kubernetes in 1.24, so containerd it is)
* cri-o: ``.../crio-<id>.scope`` (systemd), ``.../crio-<id>`` (cgroupfs)
* podman: ``.../libpod-<id>.scope``, with or without the nested payload
  cgroup ``.../libpod-<id>.scope/container``; ``libpod-<id>`` (cgroupfs)

The pod uid comes from the container's parent directory:
``kubepods[-<qos>]-pod<uid with _>.slice`` (systemd; kind prefixes it with
``kubelet-``) or ``pod<uid>`` below a ``kubepods`` directory (cgroupfs).

Decision on conmon: ``crio-conmon-<id>.scope`` and ``libpod-conmon-<id>.scope``
hold the runtime's monitor, not the container's workload, so they are not a
match: such a path yields None, unless the monitor itself runs inside an
outer container, which then owns it. The innermost match always wins, so
docker-in-docker and kind attribute to the inner container.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "ROOT_CGROUP_ID",
    "CgroupResolver",
    "ContainerInfo",
    "find_cgroup2_mount",
    "parse_container",
]

_log = logging.getLogger(__name__)

#: What ``bpf_get_current_cgroup_id()`` returns for a task in the v2 root:
#: the kernfs root inode. Checked before any cache so the common case on a
#: host without containers costs nothing.
ROOT_CGROUP_ID = 1

_V = TypeVar("_V")

_HEX64 = "[0-9a-f]{64}"
# The systemd drivers name a unit "<prefix>-<id>.scope"; the cgroupfs managers
# of CRI-O and podman use the same name without ".scope".
_PREFIXED = re.compile(rf"(docker|cri-containerd|crio|libpod)-({_HEX64})(?:\.scope)?")
_RUNTIME_OF_PREFIX = {
    "docker": "docker",
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "libpod": "podman",
}
_BARE_ID = re.compile(_HEX64)
# systemd escapes '-' in unit names, so the kubelet writes the uid with '_'.
_POD_SLICE = re.compile(
    r"(?:.+-)?kubepods(?:-besteffort|-burstable)?-pod([0-9a-f][0-9a-f_]*)\.slice"
)
_POD_DIR = re.compile(r"pod([0-9a-f][0-9a-f-]*)")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container as named by its cgroup directory.

    ``runtime`` is one of "docker", "containerd", "cri-o", "podman";
    ``pod_uid`` is the Kubernetes pod uid in its canonical dashed form, or
    None outside Kubernetes.
    """

    container_id: str
    runtime: str
    pod_uid: str | None


def _match_container(parts: list[str], i: int) -> tuple[str, str] | None:
    """(container id, runtime) if ``parts[i]`` names a container, else None."""
    name = parts[i]
    m = _PREFIXED.fullmatch(name)
    if m is not None:
        return m.group(2), _RUNTIME_OF_PREFIX[m.group(1)]
    # A bare id means something only where a runtime is known to put one;
    # elsewhere 64 hex digits could be any tool's directory.
    if i > 0 and _BARE_ID.fullmatch(name):
        parent = parts[i - 1]
        if parent == "docker":
            return name, "docker"
        if _POD_DIR.fullmatch(parent) and "kubepods" in parts[: i - 1]:
            return name, "containerd"
    return None


def _pod_uid(parts: list[str], i: int) -> str | None:
    """The pod uid if the container at ``parts[i]`` sits directly in a pod cgroup."""
    if i == 0:
        return None
    parent = parts[i - 1]
    m = _POD_SLICE.fullmatch(parent)
    if m is not None:
        return m.group(1).replace("_", "-")
    m = _POD_DIR.fullmatch(parent)
    if m is not None and "kubepods" in parts[: i - 1]:
        return m.group(1)
    return None


def parse_container(path: str) -> ContainerInfo | None:
    """The innermost container named by a cgroup path (v2, or a v1 hierarchy's).

    Pure: looks at the string only. Returns None for host cgroups
    (``/system.slice/ssh.service``, ``/``), for conmon monitors and for ids
    that are not exactly 64 lowercase hex digits.
    """
    parts = [p for p in path.strip().split("/") if p and p != "."]
    # Walk from the leaf outwards so the innermost container wins and
    # sub-cgroups a container makes for itself (podman's "container",
    # systemd units inside a container) are skipped over.
    for i in range(len(parts) - 1, -1, -1):
        found = _match_container(parts, i)
        if found is not None:
            return ContainerInfo(found[0], found[1], _pod_uid(parts, i))
    return None


def find_cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Mount point of the cgroup v2 hierarchy, or None when none is mounted.

    Prefers a mount of the hierarchy's root; on hybrid hosts v2 sits at
    /sys/fs/cgroup/unified rather than /sys/fs/cgroup, so guessing is wrong.
    """
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    fallback: str | None = None
    for line in lines:
        # "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ..."
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or tail.split(" ", 1)[0] != "cgroup2":
            continue
        point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        if fields[3] == "/":
            return point
        fallback = fallback or point
    return fallback


def _put(cache: OrderedDict[int, _V], key: int, value: _V, limit: int) -> int:
    """Insert as most recent; evict the least recent past ``limit``. Returns evictions."""
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > limit:
        cache.popitem(last=False)
        return 1
    return 0


class CgroupResolver:
    """Maps a cgroup v2 id (directory inode) to its path and container.

    The tree is walked once at construction; a miss triggers a rescan at most
    once per ``rescan_min_interval_s`` (new containers appear as new
    directories, and a burst of events from one unknown cgroup must not walk
    the tree per event). An id that a rescan made after its first miss did
    not find (its directory is already gone) is not rescanned for again for
    ``negative_ttl_s``, so a stream of events from a removed cgroup costs
    nothing and cannot starve the rescan a new container needs. All caches
    are LRU-bounded by ``max_entries``.
    Entries outlive their directories until evicted: an exit event may be read
    after the runtime removed the cgroup, and kernfs ids are not reused on
    64-bit kernels, so a stale entry is never a wrong one.

    Not thread-safe: call it from one thread (the event loop's).
    """

    def __init__(
        self,
        root: str | None = None,
        rescan_min_interval_s: float = 0.05,
        *,
        negative_ttl_s: float = 60.0,
        max_entries: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self._interval = rescan_min_interval_s
        self._limit = max_entries
        self._clock = clock
        self._paths: OrderedDict[int, str] = OrderedDict()
        self._infos: OrderedDict[int, ContainerInfo | None] = OrderedDict()
        self._negative_ttl = negative_ttl_s
        # id -> when a rescan failed to find it
        self._gone: OrderedDict[int, float] = OrderedDict()
        self._counts = dict.fromkeys(("lookups", "misses", "rescans", "unresolved", "evictions"), 0)
        self._scanned_at = clock()
        self._root_ino = ROOT_CGROUP_ID
        mount = root if root is not None else find_cgroup2_mount()
        if mount is None or not os.path.isdir(mount):
            # Said once, here, not per lookup: the agent runs fine without it.
            _log.warning(
                "no cgroup v2 hierarchy at %s: container attribution disabled",
                mount if mount is not None else "any mount point",
            )
            self._root: str | None = None
            return
        self._root = mount
        self._root_ino = os.stat(mount).st_ino
        self._scan()

    @property
    def root(self) -> str | None:
        """The v2 mount point in use, or None when attribution is disabled."""
        return self._root

    def path_of(self, cgroup_id: int) -> str | None:
        """Path relative to the v2 mount, as in /proc/<pid>/cgroup ("/" for the root)."""
        self._counts["lookups"] += 1
        if self._root is None:
            return None
        return self._resolve(cgroup_id)

    def container_of(self, cgroup_id: int) -> ContainerInfo | None:
        """The container owning cgroup ``cgroup_id``, or None (host, root, unknown)."""
        self._counts["lookups"] += 1
        if self._root is None or cgroup_id in (ROOT_CGROUP_ID, self._root_ino):
            return None
        if cgroup_id in self._infos:
            self._infos.move_to_end(cgroup_id)
            return self._infos[cgroup_id]
        path = self._resolve(cgroup_id)
        if path is None:
            # Not cached: a later rescan may still find the directory.
            return None
        info = parse_container(path)
        self._counts["evictions"] += _put(self._infos, cgroup_id, info, self._limit)
        return info

    def stats(self) -> dict[str, int]:
        """Counters since construction, plus the current cache sizes."""
        return {
            **self._counts,
            "paths_cached": len(self._paths),
            "containers_cached": len(self._infos),
        }

    def _resolve(self, cgroup_id: int) -> str | None:
        if cgroup_id in (ROOT_CGROUP_ID, self._root_ino):
            return "/"
        path = self._paths.get(cgroup_id)
        if path is not None:
            self._paths.move_to_end(cgroup_id)
            return path
        self._counts["misses"] += 1
        now = self._clock()
        gone_at = self._gone.get(cgroup_id)
        known_gone = gone_at is not None and now - gone_at < self._negative_ttl
        if not known_gone and now - self._scanned_at >= self._interval:
            self._counts["rescans"] += 1
            path = self._scan(want=cgroup_id)
            if path is not None:
                # Re-inserted last: a tree larger than the cache may have
                # pushed it out again during the walk.
                self._counts["evictions"] += _put(self._paths, cgroup_id, path, self._limit)
                self._gone.pop(cgroup_id, None)
                return path
            _put(self._gone, cgroup_id, now, self._limit)
        self._counts["unresolved"] += 1
        return None

    def _scan(self, want: int | None = None) -> str | None:
        """Walk the v2 tree, recording every directory's inode and path.

        Returns the path of directory ``want`` if the walk saw it.
        """
        self._scanned_at = self._clock()
        if self._root is None:
            return None
        found: str | None = None
        stack: list[tuple[str, str]] = [(self._root, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                with os.scandir(directory) as it:
                    entries = list(it)
            except OSError:
                continue  # removed between being listed and being entered
            for entry in entries:
                try:
                    # d_type and d_ino come with readdir: no stat per cgroup.
                    # On cgroupfs d_ino is the kernfs id the BPF helper returns.
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    ino = entry.inode()
                except OSError:
                    continue
                child = f"{rel}/{entry.name}"
                if ino == want:
                    found = child
                self._counts["evictions"] += _put(self._paths, ino, child, self._limit)
                stack.append((entry.path, child))
        return found
