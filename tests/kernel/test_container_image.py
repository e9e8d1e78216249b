"""The container image (Dockerfile) on the real kernel: build it, run it, watch the host.

The image is built with podman on a Debian base made here with debootstrap from
the host's own Debian mirror, so no container registry is needed; both images
stay cached (the base is made once, the build reuses its layers). Containers run
the way the Dockerfile documents (privileged, host pid namespace) and are removed
afterwards. What is checked is what a user sees: /health ok from eBPF, a process
started on the host listed by /processes, the image's HEALTHCHECK healthy, and the
API address the entrypoint picks from the token.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/debian:bookworm"
IMAGE = "localhost/otel-linnix:test"
SUITE = "bookworm"
APP = "/opt/otel-linnix"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Hosts behind a TLS-inspecting proxy trust its CA here; the build hands this
# bundle to pip as a build secret (it is not stored in the image).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The mounts the Dockerfile documents: the host's BTF and tracefs, and the
# host's cgroup tree for container attribution.
HOST_MOUNTS = ("-v", "/sys/kernel:/sys/kernel", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro")

_T = TypeVar("_T")


# --- podman on this host -------------------------------------------------------


def podman_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the container image test needs root (rootful podman, privileged containers)"
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/install.sh --dev installs it)"
    return None


def cgroup2_mount() -> Path | None:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields, _, tail = line.partition(" - ")
            if tail.split(" ", 1)[0] == "cgroup2":
                return Path(fields.split()[4])
    return None


def free_v2_controllers() -> str | None:
    """Give every controller of a hybrid layout's v2 hierarchy a v1 hierarchy.

    crun refuses a hybrid cgroup layout (v1 hierarchies plus a v2 one) while
    the v2 hierarchy holds any controller (hugetlb on some hosts). Mounting such
    a controller as a v1 hierarchy moves it out; nothing uses it in v2 then.
    The mount stays: every later container needs it too. Returns why it could
    not, or None.
    """
    v2 = cgroup2_mount()
    if v2 is None or v2 == Path("/sys/fs/cgroup"):
        return None  # v1 only, or pure v2: crun is fine with either
    for name in (v2 / "cgroup.controllers").read_text().split():
        target = Path("/sys/fs/cgroup", name)
        target.mkdir(exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "cgroup", "-o", name, "cgroup", str(target)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            return (
                f"crun cannot run here: the cgroup v2 hierarchy {v2} holds the {name} "
                f"controller and mounting it as v1 failed: {done.stderr.strip()}"
            )
    return None


def run_podman(
    env: dict[str, str], *args: str, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def podman_env(needs_ebpf: None) -> Iterator[dict[str, str]]:
    reason = podman_unavailable_reason() or free_v2_controllers()
    if reason is not None:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="linnix-podman-") as conf_dir:
        # Without CAP_SYS_RESOURCE (missing from some hosts' bounding set),
        # crun cannot apply podman's default ulimits; the container keeps ours.
        conf = Path(conf_dir, "containers.conf")
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        yield {**os.environ, "CONTAINERS_CONF": str(conf)}


# --- the base image and the build ----------------------------------------------


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses for the bookworm suite itself."""
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            enabled = fields.get("Enabled", "yes") != "no"
            binary = "deb" in fields.get("Types", "").split()
            if enabled and binary and SUITE in fields.get("Suites", "").split():
                return fields.get("URIs", DEFAULT_MIRROR).split()[0]
    lists = [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return DEFAULT_MIRROR


def make_base_image(env: dict[str, str]) -> None:
    """debootstrap a minimal bookworm and import it, trimmed like a registry's base."""
    if run_podman(env, "image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (scripts/install.sh --dev installs it)")
    with tempfile.TemporaryDirectory(prefix="linnix-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp, "rootfs")
        made = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), debian_mirror()],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert made.returncode == 0, f"debootstrap failed:\n{made.stdout[-2000:]}{made.stderr}"
        # The downloaded packages and the package lists: 80 MB no image needs.
        for leftover in [
            *rootfs.glob("var/cache/apt/archives/*.deb"),
            *rootfs.glob("var/lib/apt/lists/*_*"),
        ]:
            leftover.unlink()
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                ["podman", "import", "-", BASE_IMAGE],
                stdin=tar.stdout,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        assert tar.returncode == 0 and imported.returncode == 0, imported.stderr


def image_id(env: dict[str, str], name: str) -> str | None:
    found = run_podman(env, "image", "inspect", "-f", "{{.Id}}", name, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str]) -> str:
    make_base_image(podman_env)
    previous = image_id(podman_env, IMAGE)
    args = ["build", "--format", "docker", "--pull=never", "--network=host"]
    if HOST_CA_BUNDLE.is_file():
        args += ["--secret", f"id=ca_bundle,src={HOST_CA_BUNDLE}"]
    args += ["--build-arg", f"BASE={BASE_IMAGE}", "-t", IMAGE, str(ROOT)]
    # --network=host: apt and pip in the build reach the mirror and PyPI the
    # way this host does. The docker format keeps the HEALTHCHECK.
    run_podman(podman_env, *args, timeout=900)
    if previous is not None and previous != image_id(podman_env, IMAGE):
        # The image this build replaced: only the layers the new one does not
        # share go, so the cache stays and repeated runs do not fill the disk.
        run_podman(podman_env, "rmi", previous, check=False)
    return IMAGE


# --- running containers -----------------------------------------------------------


@dataclass(frozen=True)
class Container:
    name: str
    id: str
    pid: int


@pytest.fixture
def start(podman_env: dict[str, str], image: str) -> Iterator[Callable[..., Container]]:
    """Start containers of the image (detached, privileged, host pid); removed at the end."""
    names: list[str] = []

    def run(*options: str) -> Container:
        name = f"linnix-test-{uuid.uuid4().hex[:8]}"
        names.append(name)
        args = ["run", "-d", "--name", name, "--privileged", "--pid=host", *options, image]
        cid = run_podman(podman_env, *args).stdout.strip()
        pid = run_podman(podman_env, "inspect", "-f", "{{.State.Pid}}", name).stdout
        return Container(name, cid, int(pid))

    yield run
    for name in names:
        run_podman(podman_env, "rm", "-f", "-t", "5", name, timeout=60, check=False)


@pytest.fixture
def host_sleep() -> Iterator[Callable[[], str]]:
    """Start `sleep` on the host with a unique argument; returns the argument."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> str:
        tag = f"300.{uuid.uuid4().int % 10**9:09d}"
        procs.append(subprocess.Popen(["sleep", tag]))
        return tag

    yield spawn
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def wait_for(probe: Callable[[], _T | None], what: str, timeout_s: float = 60.0) -> _T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def host_get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, None
    except OSError:
        return 0, None  # not listening yet


# An HTTP GET from inside a container (its own network namespace), with the
# image's interpreter: prints [status, body].
_GET_INSIDE = """
import json, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    req.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(json.dumps([resp.status, json.loads(resp.read())]))
except urllib.error.HTTPError as exc:
    print(json.dumps([exc.code, None]))
except OSError:
    print(json.dumps([0, None]))
"""


def inside_get(
    env: dict[str, str], box: Container, path: str, token: str | None = None
) -> tuple[int, Any]:
    args = ["exec", box.name, f"{APP}/.venv/bin/python", "-c", _GET_INSIDE]
    args += [f"http://127.0.0.1:3000{path}", *([token] if token else [])]
    status, body = json.loads(run_podman(env, *args, timeout=60).stdout)
    return int(status), body


def listening(env: dict[str, str], box: Container, port: int) -> set[str]:
    """Addresses listening on TCP ``port`` in the container's network namespace."""
    table = run_podman(env, "exec", box.name, "cat", "/proc/net/tcp").stdout
    found = set()
    for line in table.splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1]))
    return found


def assert_healthy(env: dict[str, str], box: Container) -> None:
    """The image's own HEALTHCHECK, run now, passes and is recorded as healthy."""
    check = run_podman(env, "healthcheck", "run", box.name, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    status = run_podman(env, "inspect", "-f", "{{.State.Health.Status}}", box.name).stdout
    assert status.strip() == "healthy"


def find_process(rows: list[dict[str, Any]], tag: str) -> dict[str, Any] | None:
    return next((r for r in rows if tag in r["argv"]), None)


# --- the tests ----------------------------------------------------------------------


def test_image_metadata(podman_env: dict[str, str], image: str) -> None:
    (meta,) = json.loads(run_podman(podman_env, "image", "inspect", image).stdout)
    config = meta["Config"]
    # Kept only in the docker format; podman 4 reports it beside Config.
    healthcheck = meta.get("Healthcheck") or config.get("Healthcheck")
    assert healthcheck is not None, "no HEALTHCHECK: built without --format docker?"
    assert healthcheck["Test"] == [
        "CMD",
        f"{APP}/scripts/container-entrypoint.sh",
        "healthcheck",
    ]
    assert config["Entrypoint"] == [f"{APP}/scripts/container-entrypoint.sh"]
    assert "MALLOC_ARENA_MAX=2" in config["Env"]
    assert "LINNIX_CONFIG=/etc/linnix/linnix.toml" in config["Env"]


def test_documented_run_watches_the_host(
    podman_env: dict[str, str],
    start: Callable[..., Container],
    host_sleep: Callable[[], str],
) -> None:
    # Host network as documented; the port is a free one, since 3000 may be
    # taken on a shared host. The address is loopback, so no token is needed.
    port = free_port()
    began = time.monotonic()
    box = start(
        "--network=host",
        "--cgroupns=host",
        *HOST_MOUNTS,
        "-e",
        f"LINNIX_API_BIND_ADDRESS=127.0.0.1:{port}",
    )
    health = wait_for(lambda: host_get(port, "/health")[1], "/health answering")
    print(f"container start -> /health: {time.monotonic() - began:.2f} s")
    assert (health["status"], health["source"]) == ("ok", "ebpf"), health

    # Started after the agent: it can only be known from a kernel event.
    tag = host_sleep()
    row = wait_for(
        lambda: find_process(host_get(port, "/processes?comm=sleep")[1] or [], tag),
        "the host's sleep in /processes",
    )
    assert row["source"] == "ebpf", row

    # A process inside the container is attributed to it (host cgroup tree mounted).
    inner = f"301.{uuid.uuid4().int % 10**9:09d}"
    run_podman(podman_env, "exec", "-d", box.name, "sleep", inner)
    row = wait_for(
        lambda: find_process(host_get(port, "/processes?comm=sleep")[1] or [], inner),
        "the container's sleep in /processes",
    )
    assert (row["container_id"], row["container_runtime"]) == (box.id, "podman"), row

    assert_healthy(podman_env, box)
    rss_kib = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{box.pid}/status").read_text())
    print(f"agent RSS in the container: {int(rss_kib.group(1)) // 1024 if rss_kib else '?'} MiB")


@pytest.mark.parametrize("token", [secrets.token_hex(16), None], ids=["token", "no-token"])
def test_api_address_follows_the_token(
    podman_env: dict[str, str],
    start: Callable[..., Container],
    host_sleep: Callable[[], str],
    token: str | None,
) -> None:
    # A network namespace of the container's own: port 3000 is free there
    # whatever runs on the host, and the listening address is the container's.
    token_env = ["-e", f"LINNIX_API_TOKEN={token}"] if token else []
    box = start("--network=none", *HOST_MOUNTS, *token_env)
    health = wait_for(
        lambda: inside_get(podman_env, box, "/health")[1], "/health answering", timeout_s=90
    )
    assert (health["status"], health["source"]) == ("ok", "ebpf"), health
    wildcard = "0.0.0.0"  # noqa: S104 - an address read back, not bound to
    assert listening(podman_env, box, 3000) == {wildcard if token else "127.0.0.1"}

    tag = host_sleep()

    def listed() -> dict[str, Any] | None:
        status, rows = inside_get(podman_env, box, "/processes?comm=sleep", token)
        assert status == 200, status
        return find_process(rows, tag)

    assert wait_for(listed, "the host's sleep in /processes")["source"] == "ebpf"
    if token:
        assert inside_get(podman_env, box, "/processes")[0] == 401
        assert inside_get(podman_env, box, "/processes", "wrong")[0] == 401
    assert_healthy(podman_env, box)


def test_refuses_a_wildcard_address_without_a_token(podman_env: dict[str, str], image: str) -> None:
    # Refused at configuration time, before any capture: no privileges needed.
    args = ["run", "--rm", "-e", "LINNIX_API_BIND_ADDRESS=0.0.0.0:3000", image]
    done = run_podman(podman_env, *args, check=False)
    assert done.returncode == 78, done.stderr
    assert "without a token" in done.stderr
