"""Rules evaluation cost: per event and per sampler sweep, with every default rule
and 5,000 live processes, against the same pipeline without rules.

Everything runs in this process on a deterministic synthetic load (no root,
no eBPF), so the figures are the rules engine's own cost, not the kernel's:

- a ``ProcessTable`` (the agent's default bounds: 100,000 entries, exited
  processes kept 60 s) filled by the start-up walk's EXEC events of
  ``--live`` processes: systemd and its services, ssh and tmux sessions, a
  recursive ``make`` with 16 sub-makes, and a few hundred containers
  (shim, application master, its workers) with argv, exe and container ids;
- ``--seconds`` of kernel time of lifecycle events at ``--rate`` events/s,
  a build-like mix: the sub-makes run compiles (sh -> gcc -> cc1, as),
  links (gcc -> collect2 -> ld), shell steps and single tools (grep exits 1
  now and then); each container's health check (curl) every 5 s, one of
  them failing every other time; a shell prompt running git or ls; an OOM
  kill of a celery worker every 30 s (from 5 s), which its master replaces
  (comm is the name a program was run by, exe the file behind it, as the
  kernel reports them: gcc runs /usr/bin/x86_64-linux-gnu-gcc-12);
- delivered as the drain loop does: one batch per 100 ms of kernel time
  (about 600 events), applied to the table, then pruned;
- one sampler sweep per second of kernel time over every live process with
  ProcessSample values: most idle, 3% busy (5-60% of a core), one node
  worker leaking 8 MiB/s of RSS, one gunicorn worker gaining 16 fds/s
  towards a limit of 1024; a 2-CPU host at load 1.9.

Measured with ``time.thread_time_ns`` (CPU of this thread), per repetition:

(a) per batch: ``apply_batch`` + ``prune`` + ``RulesEngine.emit``;
(b) peer, the same run without rules: ``apply_batch`` + ``prune``, the
    table work the agent pays anyway;
(c) per sweep: ``update_samples`` + ``RulesEngine.observe_sweep`` (the
    sweep listener the agent registers: it looks up the sweep's processes
    in the table and runs the sample rules over them);
(d) peer: ``update_samples`` alone.

The rules' cost is (a - b) per event and (c - d) per sweep; their total as %
of one core is (a - b) x 6,000 events/s + (c - d) x 1 sweep/s. Figures are
the median and min-max of ``--reps`` repetitions, the two runs of each
alternating which goes first, after waiting (up to ``--wait-quiet`` s) for
the host to be quiet, since other work on it inflates CPU time too. Cyclic
GC counts where it falls; its share is printed. Not counted: the SinkWorker
queue hop that hands batches to the engine, alert delivery beyond a list
append, and the sampler's /proc reads. Then each rule is run alone once
(``--no-by-rule`` skips it) to show where the cost goes, and which rules
fired is printed as a sanity check: memory_leak, fd_exhaustion and
oom_kill should, the fork rules should not (their rate in this load is
printed either way).

    .venv/bin/python -m bench.rules [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    HostCpu,
    Spread,
    bench_parser,
    median,
    print_table,
    report_target,
    run_bench,
    spread,
    wait_for_quiet,
)
from otel_linnix.agent import GC_THRESHOLDS
from otel_linnix.config import bundled_path
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey, ProcessSource
from otel_linnix.process_table import HostSample, ProcessSample, ProcessTable
from otel_linnix.rules.alerts import Alert
from otel_linnix.rules.engine import RulesEngine
from otel_linnix.rules.loader import load_rules
from otel_linnix.rules.model import Rule

_MODULE = "bench.rules"
_NS = 1_000_000_000
_MS = 1_000_000
_US = 1_000
_MIB = 1024 * 1024
_T0_NS = 86_400 * _NS  # the stream starts a day after boot
_BATCH_NS = 100 * _MS  # the drain loop's default interval
_TARGET_PCT = 5.0
_CPUS = 2
_SUB_MAKES = 16
_HEALTH_EVERY_S = 5
_OOM_FIRST_S, _OOM_EVERY_S = 5, 30
_LEAK_BYTES_PER_S = 8 * _MIB
_FD_GAIN_PER_S = 16
_BUSY_SHARE = 0.03
# The rules the load is built to trigger; the others should stay quiet.
_EXPECTED = ("memory_leak", "fd_exhaustion", "oom_kill")
_USERS = {0: "root", 33: "www-data", 82: "www-data", 101: "messagebus", 107: "postgres"}
_USERS.update({108: "redis", 996: "polkitd", 997: "systemd-resolve", 1000: "dev"})
_USERS.update({998: "systemd-network", 999: "app", 65534: "nobody"})

_GCC = "/usr/bin/x86_64-linux-gnu-gcc-12"
_DASH = "/usr/bin/dash"
_LD = "/usr/bin/x86_64-linux-gnu-ld.bfd"
# The parents of build jobs here; the default rules' build_job macro names them.
_BUILD_PARENTS = frozenset({"make", "gcc", "collect2"})
_LIBEXEC = "/usr/libexec/gcc/x86_64-linux-gnu/12"
_DIRS = ("core", "net", "util", "fs", "crypto", "db", "http", "json", "sched", "log")
_FILES = ("main", "buffer", "hash", "list", "parse", "io", "conn", "pool", "map", "str")


# ---- the synthetic host ---------------------------------------------------------------


@dataclass(slots=True)
class _Proc:
    """One process of the synthetic host, with what its samples are made of."""

    pid: int
    ppid: int
    start_ns: int
    parent_start_ns: int | None
    comm: str
    exe: str
    argv: tuple[str, ...]
    uid: int = 0
    cgroup_id: int = 0
    container_id: str | None = None
    role: str = "service"  # service, session, build, shim, master, worker
    profile: str = "idle"  # idle, busy, leak, fds
    cpu_pct: float = 0.0
    rss: int = 8 * _MIB
    fds: int = 12
    fd_limit: int = 1024
    threads: int = 1

    @property
    def key(self) -> ProcessKey:
        return ProcessKey.of(self.pid, self.start_ns)


@dataclass(frozen=True, slots=True)
class _AppKind:
    """A containerised application: a master process and its workers (same exe)."""

    name: str
    comm: str
    exe: str
    master_argv: tuple[str, ...]
    worker_argv: tuple[str, ...]
    workers: tuple[int, int]  # how many, at least and at most
    uid: int


_PY = "/usr/local/bin/python3"
_PG = "/usr/lib/postgresql/15/bin/postgres"
_GUNICORN = (_PY, "/usr/local/bin/gunicorn", "app.wsgi", "-w", "16", "-b", "0.0.0.0:8000")
_CELERY = (_PY, "/usr/local/bin/celery", "-A", "tasks", "worker", "--loglevel=INFO")
_APPS = (
    _AppKind("gunicorn", "gunicorn", _PY + ".11", _GUNICORN, _GUNICORN, (4, 24), 999),
    _AppKind(
        "php-fpm",
        "php-fpm",
        "/usr/local/sbin/php-fpm",
        ("php-fpm: master process (/usr/local/etc/php-fpm.conf)",),
        ("php-fpm: pool www",),
        (8, 40),
        82,
    ),
    _AppKind(
        "node",
        "node",
        "/usr/local/bin/node",
        ("node", "dist/server.js"),
        ("/usr/local/bin/node", "/app/dist/worker.js"),
        (2, 16),
        1000,
    ),
    _AppKind("celery", "celery", _PY + ".11", _CELERY, _CELERY, (4, 32), 999),
    _AppKind(
        "nginx",
        "nginx",
        "/usr/sbin/nginx",
        ("nginx: master process nginx -g daemon off;",),
        ("nginx: worker process",),
        (2, 8),
        101,
    ),
    _AppKind(
        "puma",
        "ruby",
        "/usr/local/bin/ruby",
        ("puma 6.4.0 (tcp://0.0.0.0:3000) [app]",),
        ("puma: cluster worker 0: 1 [app]",),
        (2, 12),
        1000,
    ),
    _AppKind(
        "postgres",
        "postgres",
        _PG,
        ("postgres", "-c", "config_file=/etc/postgresql/postgresql.conf"),
        ("postgres: app appdb 10.0.3.7(40212) idle",),
        (8, 30),
        999,
    ),
)

_SERVICES = (
    ("systemd-journal", "/usr/lib/systemd/systemd-journald", ("/lib/systemd/systemd-journald",)),
    ("systemd-udevd", "/usr/bin/udevadm", ("/lib/systemd/systemd-udevd",)),
    ("systemd-network", "/usr/lib/systemd/systemd-networkd", ("/lib/systemd/systemd-networkd",)),
    ("systemd-resolve", "/usr/lib/systemd/systemd-resolved", ("/lib/systemd/systemd-resolved",)),
    ("systemd-logind", "/usr/lib/systemd/systemd-logind", ("/lib/systemd/systemd-logind",)),
    ("dbus-daemon", "/usr/bin/dbus-daemon", ("/usr/bin/dbus-daemon", "--system", "--nofork")),
    ("cron", "/usr/sbin/cron", ("/usr/sbin/cron", "-f")),
    ("rsyslogd", "/usr/sbin/rsyslogd", ("/usr/sbin/rsyslogd", "-n", "-iNONE")),
    ("chronyd", "/usr/sbin/chronyd", ("/usr/sbin/chronyd", "-F", "1")),
    ("polkitd", "/usr/lib/polkit-1/polkitd", ("/usr/lib/polkit-1/polkitd", "--no-debug")),
    ("agetty", "/sbin/agetty", ("/sbin/agetty", "-o", "-p -- \\u", "--noclear", "-", "linux")),
    ("redis-server", "/usr/bin/redis-server", ("/usr/bin/redis-server 127.0.0.1:6379",)),
    ("node_exporter", "/usr/bin/prometheus-node-exporter", ("/usr/bin/prometheus-node-exporter",)),
    ("dockerd", "/usr/sbin/dockerd", ("/usr/sbin/dockerd", "-H", "fd://")),
    (
        "unattended-upgr",
        "/usr/bin/python3.11",
        ("/usr/bin/python3", "/usr/share/unattended-upgrades/unattended-upgrade-shutdown"),
    ),
)


def _event(kind: EventKind, ts: int, p: _Proc, **fields: Any) -> ProcessEvent:
    """An event about ``p`` as the kernel source reports it, with its container."""
    return ProcessEvent(
        kind,
        ts,
        p.pid,
        p.ppid,
        p.start_ns,
        p.comm,
        uid=p.uid,
        gid=p.uid,
        parent_start_time_ns=p.parent_start_ns,
        cgroup_id=p.cgroup_id,
        container_id=p.container_id,
        container_runtime="docker" if p.container_id else None,
        **fields,
    )


class _Host:
    """The live tree of the synthetic host; pids and start times grow as it is built."""

    def __init__(self, rng: random.Random, live: int) -> None:
        self.rng = rng
        self.procs: list[_Proc] = []
        self._pid = 0
        self._clock = _NS
        self._cgroup = 4000
        self.shims: list[_Proc] = []
        self.shells: list[_Proc] = []
        self.sub_makes: list[_Proc] = []
        self.masters: dict[str, list[_Proc]] = defaultdict(list)
        self.workers: dict[str, list[_Proc]] = defaultdict(list)
        self.parents = 0
        self._build_tree(live)

    # ---- the live tree, as the start-up walk finds it --------------------------------

    def _add(
        self,
        parent: _Proc | None,
        comm: str,
        exe: str,
        argv: tuple[str, ...],
        *,
        uid: int = 0,
        role: str = "service",
        container: tuple[str, int] | None = None,
        gap_s: float = 6.0,
    ) -> _Proc:
        rng = self.rng
        self._pid += rng.randint(1, 9)
        self._clock += int(rng.uniform(0.005, gap_s) * _NS)
        cid, cgroup = container if container is not None else (None, 0)
        proc = _Proc(
            self._pid,
            parent.pid if parent else 0,
            self._clock,
            parent.start_ns if parent else None,
            comm[:15],
            exe,
            argv,
            uid,
            cgroup,
            cid,
            role,
            rss=rng.randint(4, 300) * _MIB,
            fds=rng.randint(4, 120),
            fd_limit=1024 if role in ("session", "build") else 1_048_576,
            threads=rng.choice((1, 1, 1, 2, 4, 8, 17, 33)),
        )
        self.procs.append(proc)
        return proc

    def _build_tree(self, live: int) -> None:
        rng = self.rng
        init = self._add(None, "systemd", "/usr/lib/systemd/systemd", ("/sbin/init",))
        self._pid = 300  # after the kernel threads
        for comm, exe, argv in _SERVICES:
            self._add(init, comm, exe, argv, uid=rng.choice((0, 0, 101, 997, 998)))
        nginx = self._add(init, "nginx", "/usr/sbin/nginx", ("nginx: master process",))
        for _ in range(2):
            self._add(nginx, "nginx", "/usr/sbin/nginx", ("nginx: worker process",), uid=33)
        postgres = self._add(init, "postgres", _PG, (_PG, "-D", "/var/lib/postgresql/15/main"))
        for what in ("checkpointer", "background writer", "walwriter", "autovacuum launcher"):
            self._add(postgres, "postgres", _PG, (f"postgres: 15/main: {what}",), uid=107)
        for port in range(51230, 51236):
            argv = (f"postgres: 15/main: app appdb 10.0.0.5({port}) idle",)
            self._add(postgres, "postgres", _PG, argv, uid=107)
        sshd = self._add(init, "sshd", "/usr/sbin/sshd", ("sshd: /usr/sbin/sshd -D [listener]",))
        for tty in range(3):
            priv = self._add(sshd, "sshd", "/usr/sbin/sshd", ("sshd: dev [priv]",), role="session")
            user = self._add(
                priv, "sshd", "/usr/sbin/sshd", (f"sshd: dev@pts/{tty}",), uid=1000, role="session"
            )
            bash = self._add(user, "bash", "/usr/bin/bash", ("-bash",), uid=1000, role="session")
            self.shells.append(bash)
        user_systemd = self._add(
            init,
            "systemd",
            "/usr/lib/systemd/systemd",
            ("/lib/systemd/systemd", "--user"),
            uid=1000,
        )
        self._add(user_systemd, "(sd-pam)", "/usr/lib/systemd/systemd", ("(sd-pam)",), uid=1000)
        tmux = self._add(
            user_systemd,
            "tmux: server",
            "/usr/bin/tmux",
            ("tmux", "new-session", "-d", "-s", "work"),
            uid=1000,
            role="session",
        )
        windows = [
            self._add(tmux, "bash", "/usr/bin/bash", ("-bash",), uid=1000, role="session")
            for _ in range(4)
        ]
        self.shells.extend(windows)
        self._add(windows[1], "htop", "/usr/bin/htop", ("htop",), uid=1000, role="session")
        self._add(windows[2], "vim", "/usr/bin/vim.basic", ("vim", "src/net/conn.c"), uid=1000)
        make = self._add(
            windows[0], "make", "/usr/bin/make", ("make", "-j16", "all"), uid=1000, role="build"
        )
        for d in range(_SUB_MAKES):
            sub = self._add(
                make,
                "make",
                "/usr/bin/make",
                ("make", "-C", f"src/{_DIRS[d % len(_DIRS)]}{d}", "all"),
                uid=1000,
                role="build",
                gap_s=0.05,
            )
            self.sub_makes.append(sub)
        containerd = self._add(init, "containerd", "/usr/bin/containerd", ("/usr/bin/containerd",))
        n = 0
        while len(self.procs) < live:
            left = live - len(self.procs)
            if left < 3:  # a shim and a master need a worker to make a parent
                self._add(init, "cron", "/usr/sbin/cron", ("/usr/sbin/cron", "-f"))
                continue
            kind = _APPS[n] if n < len(_APPS) else rng.choice(_APPS)
            workers = min(rng.randint(*kind.workers), left - 2)
            self._container(containerd, kind, workers)
            n += 1
        self.parents = len({p.ppid for p in self.procs})
        self._assign_profiles()

    def _container(self, containerd: _Proc, kind: _AppKind, workers: int) -> None:
        rng = self.rng
        cid = f"{rng.getrandbits(256):064x}"
        self._cgroup += rng.randint(1, 40)
        shim_exe = "/usr/bin/containerd-shim-runc-v2"
        shim = self._add(
            containerd,
            "containerd-shim",
            shim_exe,
            (shim_exe, "-namespace", "moby", "-id", cid, "-address", "/run/containerd.sock"),
            role="shim",
        )
        self.shims.append(shim)
        inside = (cid, self._cgroup)
        master = self._add(
            shim,
            kind.comm,
            kind.exe,
            kind.master_argv,
            uid=kind.uid,
            role="master",
            container=inside,
            gap_s=0.5,
        )
        self.masters[kind.name].append(master)
        for _ in range(workers):
            worker = self._add(
                master,
                kind.comm,
                kind.exe,
                kind.worker_argv,
                uid=kind.uid,
                role="worker",
                container=inside,
                gap_s=0.2,
            )
            self.workers[kind.name].append(worker)

    def _assign_profiles(self) -> None:
        rng = self.rng
        leak = self.workers["node"][0]
        leak.profile, leak.rss = "leak", 300 * _MIB
        fds = self.workers["gunicorn"][0]
        fds.profile, fds.fds, fds.fd_limit = "fds", 200, 1024
        for proc in self.procs:
            if proc.profile == "idle" and rng.random() < _BUSY_SHARE:
                proc.profile, proc.cpu_pct = "busy", rng.uniform(5.0, 60.0)

    def bootstrap(self) -> list[ProcessEvent]:
        """The start-up walk's EXEC events, parents first, one second before the stream."""
        return [
            _event(
                EventKind.EXEC,
                _T0_NS - _NS,
                p,
                source=ProcessSource.PROCFS,
                exe=p.exe,
                argv=p.argv,
                bootstrap=True,
            )
            for p in sorted(self.procs, key=lambda p: (p.start_ns, p.pid))
        ]


class _Stream:
    """Lifecycle events of short jobs and the other things that happen on the host."""

    def __init__(self, host: _Host) -> None:
        self.host = host
        self.rng = host.rng
        self.events: list[ProcessEvent] = []
        self._pid = max(p.pid for p in host.procs) + 1000

    def fork(self, ts: int, parent: _Proc) -> _Proc:
        self._pid += 1 if self.rng.random() < 0.9 else self.rng.randint(2, 5)
        child = _Proc(
            self._pid,
            parent.pid,
            ts,
            parent.start_ns,
            parent.comm,
            parent.exe,
            parent.argv,
            parent.uid,
            parent.cgroup_id,
            parent.container_id,
            role="job",  # sampled, if caught alive, as a short job (see _sample)
        )
        # The child's comm is its parent's until it execs.
        self.events.append(_event(EventKind.FORK, ts, child))
        return child

    def exec(self, ts: int, p: _Proc, path: str, argv: tuple[str, ...], exe: str = "") -> None:
        """execve(path): comm is the name it was run by, exe the file (symlinks resolved)."""
        exe = exe or path
        p.comm, p.exe, p.argv = Path(path).name[:15], exe, argv
        self.events.append(_event(EventKind.EXEC, ts, p, exe=exe, argv=argv))

    def exit(self, ts: int, p: _Proc, code: int | None = 0, sig: int | None = None) -> None:
        self.events.append(
            _event(
                EventKind.EXIT,
                ts,
                p,
                exit_code=code,
                exit_signal=sig,
                cpu_time_ns=int((ts - p.start_ns) * self.rng.uniform(0.3, 0.95)),
                peak_rss_bytes=self.rng.randint(2, 120) * _MIB,
            )
        )

    # ---- build jobs --------------------------------------------------------------------

    def _source(self) -> tuple[str, str]:
        d, f = self.rng.choice(_DIRS), self.rng.choice(_FILES)
        return f"src/{d}/{f}.c", f"obj/{d}/{f}.o"

    def _gcc(self, t: int, make: _Proc, argv: tuple[str, ...]) -> _Proc:
        """make -> sh -c 'gcc ...' -> (exec) gcc: 3 events."""
        sh = self.fork(t, make)
        self.exec(t + 300 * _US, sh, "/bin/sh", ("/bin/sh", "-c", " ".join(argv)), _DASH)
        self.exec(t + 900 * _US, sh, "/usr/bin/gcc", argv, _GCC)
        return sh

    def compile(self, t: int, make: _Proc) -> int:
        """sh -> gcc; gcc -> cc1; gcc -> as: 10 events, 3 processes, none abnormal."""
        rng = self.rng
        src, obj = self._source()
        gcc = self._gcc(t, make, ("gcc", "-O2", "-g", "-Wall", "-Iinclude", "-c", "-o", obj, src))
        t += 1400 * _US
        cc1 = self.fork(t, gcc)
        asm = f"/tmp/cc{rng.getrandbits(32):08x}.s"
        self.exec(
            t + 300 * _US, cc1, f"{_LIBEXEC}/cc1", (f"{_LIBEXEC}/cc1", "-quiet", src, "-o", asm)
        )
        t += rng.randint(4, 60) * _MS
        self.exit(t, cc1)
        t += 200 * _US
        as_ = self.fork(t, gcc)
        argv = ("as", "--64", "-o", obj, asm)
        self.exec(t + 300 * _US, as_, "/usr/bin/as", argv, "/usr/bin/x86_64-linux-gnu-as")
        t += rng.randint(1, 5) * _MS
        self.exit(t, as_)
        self.exit(t + 300 * _US, gcc)
        return 0

    def link(self, t: int, make: _Proc) -> int:
        """sh -> gcc -> collect2 -> ld: 10 events, 3 processes, none abnormal."""
        rng = self.rng
        out = f"bin/{rng.choice(_DIRS)}"
        gcc = self._gcc(t, make, ("gcc", "-o", out, "obj/*.o", "-lpthread", "-lz"))
        t += 1400 * _US
        collect2 = self.fork(t, gcc)
        self.exec(t + 300 * _US, collect2, f"{_LIBEXEC}/collect2", ("collect2", "-o", out))
        t += 1 * _MS
        ld = self.fork(t, collect2)
        self.exec(t + 300 * _US, ld, "/usr/bin/ld", ("ld", "-o", out), _LD)
        t += rng.randint(20, 150) * _MS
        self.exit(t, ld)
        self.exit(t + 300 * _US, collect2)
        self.exit(t + 600 * _US, gcc)
        return 0

    def shell_step(self, t: int, make: _Proc) -> int:
        """make -> sh -c 'mkdir -p ... && echo ...' -> mkdir: 6 events, 2 processes."""
        _src, obj = self._source()
        folder = str(Path(obj).parent)
        sh = self.fork(t, make)
        script = f"mkdir -p {folder} && echo '  CC {obj}'"
        self.exec(t + 300 * _US, sh, "/bin/sh", ("/bin/sh", "-c", script), _DASH)
        mkdir = self.fork(t + 1 * _MS, sh)
        self.exec(t + 1300 * _US, mkdir, "/usr/bin/mkdir", ("mkdir", "-p", folder))
        self.exit(t + 2 * _MS, mkdir)
        self.exit(t + 2500 * _US, sh)
        return 0

    def tool(self, t: int, make: _Proc) -> int:
        """make -> grep/sed/install/...: 3 events; grep exits 1 a third of the time.
        Returns 1 for an abnormal exit."""
        rng = self.rng
        src, obj = self._source()
        exe, argv = rng.choice(
            (
                ("/usr/bin/grep", ("grep", "-q", "HAVE_CONFIG_H", src)),
                ("/usr/bin/sed", ("sed", "-e", "s/@VERSION@/1.4.2/", "version.h.in")),
                ("/usr/bin/install", ("install", "-m", "0644", obj, "dist/")),
                ("/usr/bin/rm", ("rm", "-f", obj)),
                ("/usr/bin/touch", ("touch", "obj/.stamp")),
            )
        )
        proc = self.fork(t, make)
        self.exec(t + 300 * _US, proc, exe, argv)
        failed = exe.endswith("grep") and rng.random() < 1 / 3
        self.exit(t + rng.randint(1, 4) * _MS, proc, 1 if failed else 0)
        return int(failed)

    # ---- the rest of the host ---------------------------------------------------------

    def health_check(self, t: int, shim: _Proc, *, failing: bool) -> None:
        """containerd-shim -> curl: 3 events; exit 7 when the service is down."""
        curl = self.fork(t, shim)
        argv = ("curl", "-fsS", "--max-time", "2", "http://127.0.0.1:8080/healthz")
        self.exec(t + 400 * _US, curl, "/usr/bin/curl", argv)
        self.exit(t + self.rng.randint(3, 15) * _MS, curl, 7 if failing else 0)

    def prompt(self, t: int, bash: _Proc) -> None:
        """bash -> git status or ls: 3 events."""
        exe, argv = self.rng.choice(
            (("/usr/bin/git", ("git", "status", "--porcelain")), ("/usr/bin/ls", ("ls", "-la")))
        )
        proc = self.fork(t, bash)
        self.exec(t + 300 * _US, proc, exe, argv)
        self.exit(t + self.rng.randint(2, 20) * _MS, proc)

    def oom_kill(self, t: int) -> None:
        """A celery worker OOM-killed (OOM_KILL, EXIT by SIGKILL); its master forks a new one."""
        host = self.host
        victim = host.workers["celery"].pop(0)
        master = next(m for m in host.masters["celery"] if m.pid == victim.ppid)
        self.events.append(_event(EventKind.OOM_KILL, t, victim, rss_bytes=1900 * _MIB))
        self.exit(t + 3 * _MS, victim, None, 9)
        worker = self.fork(t + 40 * _MS, master)  # a prefork pool: no exec
        worker.role = "worker"
        host.workers["celery"].append(worker)
        host.procs.append(worker)


# ---- the load: batches, sweeps, and what it holds --------------------------------------


@dataclass
class _Load:
    bootstrap: list[ProcessEvent]
    # per second of kernel time: its batches, then the sweep at its end
    seconds: list[list[list[ProcessEvent]]]
    sweeps: list[tuple[int, HostSample, dict[ProcessKey, ProcessSample]]]
    events: int
    kinds: Counter[str]
    forks_by_parent: Counter[str]  # by the forking parent's comm
    forks_per_s_max: float  # host-wide, over the busiest 5 s window
    other_forks_per_s_max: float  # the same, of parents that are not build tools
    parent_forks_per_s_max: float  # one parent, over its busiest 5 s window
    abnormal: Counter[str]
    samples_per_sweep: float
    table_entries: int
    tree: dict[str, int] = field(default_factory=dict)


def _job_mix(rng: random.Random) -> Callable[[_Stream, int, _Proc], int]:
    """A build job: compile 50%, shell step 26%, single tool 20%, link 4%."""
    r = rng.random()
    if r < 0.50:
        return _Stream.compile
    if r < 0.76:
        return _Stream.shell_step
    if r < 0.96:
        return _Stream.tool
    return _Stream.link


_MEAN_BUILD_EVENTS = 0.50 * 10 + 0.26 * 6 + 0.20 * 3 + 0.04 * 10


def _window_max(times: Sequence[int], window_ns: int) -> int:
    """The most of ``times`` (sorted) inside any window of ``window_ns``."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window_ns:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _sample(p: _Proc | None, k: int, ts: int, rng: random.Random) -> ProcessSample:
    if p is None:  # a short job caught alive: first read, no CPU % yet
        return ProcessSample(
            ts, rng.randint(1, 30) * _MS, None, rng.randint(1, 60) * _MIB, 4, 1024, 1, "R"
        )
    cpu: float | None = p.cpu_pct
    rss, fds = p.rss, p.fds
    if p.profile == "busy":
        cpu = min(85.0, max(0.0, rng.gauss(p.cpu_pct, p.cpu_pct * 0.3)))
        rss += rng.randint(-2 * _MIB, 2 * _MIB)
        fds += rng.randint(0, 3)
    elif p.profile == "leak":
        cpu = rng.uniform(2.0, 8.0)
        rss += k * _LEAK_BYTES_PER_S + rng.randint(-_MIB // 4, _MIB // 4)
    elif p.profile == "fds":
        cpu = rng.uniform(1.0, 5.0)
        fds += k * _FD_GAIN_PER_S
    if k == 1:
        cpu = None  # the first sweep has no earlier reading
    cpu_ns = int((p.cpu_pct / 100) * (ts - p.start_ns))
    state = "R" if cpu is not None and cpu >= 30 else "S"
    return ProcessSample(ts, cpu_ns, cpu, rss, fds, p.fd_limit, p.threads, state)


def _build_load(seed: int, live: int, seconds: int, rate: int) -> _Load:
    rng = random.Random(seed)  # noqa: S311 - a reproducible synthetic load, not secrets
    host = _Host(rng, live)
    bootstrap = host.bootstrap()
    stream = _Stream(host)
    end = _T0_NS + seconds * _NS
    abnormal: Counter[str] = Counter()
    # The host's own events: health checks (one container failing every other
    # check), two shell prompts a second, OOM kills.
    failing = host.shims[7]
    for shim in host.shims:
        phase = rng.randrange(_HEALTH_EVERY_S * _NS)
        for n, t in enumerate(range(_T0_NS + phase, end, _HEALTH_EVERY_S * _NS)):
            bad = shim is failing and n % 2 == 1
            stream.health_check(t, shim, failing=bad)
            abnormal["curl exit 7 (failing health check)"] += bad
    for t in range(_T0_NS + rng.randrange(_NS // 2), end, _NS // 2):
        stream.prompt(t, rng.choice(host.shells))
    for t in range(_T0_NS + _OOM_FIRST_S * _NS, end, _OOM_EVERY_S * _NS):
        stream.oom_kill(t)
        abnormal["SIGKILL after an OOM kill"] += 1
    host_events = sum(1 for ev in stream.events if ev.ts_ns < end)
    # Build jobs fill the rest of the rate, evenly spread with jitter.
    jobs_per_s = max(rate * seconds - host_events, 0) / seconds / _MEAN_BUILD_EVENTS
    step = _NS / jobs_per_s if jobs_per_s else float(end)
    i = 0
    while (start := _T0_NS + int((i + rng.random()) * step)) < end:
        job = _job_mix(rng)
        abnormal["grep exit 1 under make"] += job(stream, start, rng.choice(host.sub_makes))
        i += 1
    events = sorted((ev for ev in stream.events if ev.ts_ns < end), key=lambda ev: ev.ts_ns)
    events = [ev.stamp(seq) for seq, ev in enumerate(events, start=len(bootstrap) + 1)]

    forks = [ev for ev in events if ev.kind is EventKind.FORK]
    by_parent: dict[int, list[int]] = defaultdict(list)
    for ev in forks:
        by_parent[ev.ppid].append(ev.ts_ns)
    window = 5 * _NS
    slots: list[list[list[ProcessEvent]]] = [
        [[] for _ in range(_NS // _BATCH_NS)] for _ in range(seconds)
    ]
    for ev in events:
        off = ev.ts_ns - _T0_NS
        slots[off // _NS][(off % _NS) // _BATCH_NS].append(ev)
    batches = [[b for b in second if b] for second in slots]

    # Sweeps: the live processes as the table knows them at the end of each second.
    table = ProcessTable()
    table.apply_batch(bootstrap)
    profile = {p.key: p for p in host.procs}
    sweeps = []
    for k, second in enumerate(batches, start=1):
        for batch in second:
            table.apply_batch(batch)
            table.prune(batch[-1].ts_ns)
        now = _T0_NS + k * _NS
        srng = random.Random(seed * 1_000_003 + k)  # noqa: S311 - as above
        live_keys = sorted(table.live_keys().values())
        samples = {
            key: _sample(profile.get(key), k, now + i * 3 * _US, srng)
            for i, key in enumerate(live_keys)
        }
        psi = {"cpu.some": srng.uniform(20, 30), "memory.some": 0.4, "memory.full": 0.1}
        psi |= {"io.some": 2.0, "io.full": 0.8}
        host_sample = HostSample(now + 15 * _MS, _CPUS, srng.uniform(1.7, 2.1), psi)
        sweeps.append((host_sample.ts_ns, host_sample, samples))
    roles = Counter(p.role for p in host.procs[:live])
    return _Load(
        bootstrap=bootstrap,
        seconds=batches,
        sweeps=sweeps,
        events=len(events),
        kinds=Counter(ev.kind.value for ev in events),
        forks_by_parent=Counter(ev.comm for ev in forks),
        forks_per_s_max=_window_max([ev.ts_ns for ev in forks], window) / 5,
        other_forks_per_s_max=_window_max(
            [ev.ts_ns for ev in forks if ev.comm not in _BUILD_PARENTS], window
        )
        / 5,
        parent_forks_per_s_max=max(
            (_window_max(ts, window) / 5 for ts in by_parent.values()), default=0.0
        ),
        abnormal=abnormal,
        samples_per_sweep=sum(len(s) for _, _, s in sweeps) / max(len(sweeps), 1),
        table_entries=len(table),
        tree={
            "live": len(bootstrap),
            "parents": host.parents,
            "containers": len(host.shims),
            "services/sessions": roles["service"] + roles["session"],
            "build (make + sub-makes)": roles["build"],
        },
    )


# ---- one run ---------------------------------------------------------------------------


@dataclass
class _Run:
    events: int = 0
    batches: int = 0
    sweeps: int = 0
    table_ns: int = 0  # apply_batch + prune
    emit_ns: int = 0
    update_ns: int = 0  # update_samples
    observe_ns: int = 0
    sweep_max_ns: int = 0
    gc_ns: int = 0  # the cyclic collector, wherever it ran during the stream
    gc_full: int = 0
    transitions: list[tuple[str, str, int, str, str]] = field(default_factory=list)
    fired: Counter[str] = field(default_factory=Counter)

    @property
    def per_event_us(self) -> float:
        return (self.table_ns + self.emit_ns) / self.events / _US

    @property
    def per_sweep_ms(self) -> float:
        return (self.update_ns + self.observe_ns) / self.sweeps / _MS


class _GcTimer:
    """A gc callback: CPU time in the cyclic collector, and full collections."""

    def __init__(self) -> None:
        self.ns = 0
        self.full = 0
        self._started = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time_ns()
            return
        self.ns += time.thread_time_ns() - self._started
        self.full += info["generation"] == 2


def _run(load: _Load, rules: Sequence[Rule] | None) -> _Run:
    """One pass over the load: with ``rules`` (a, c), or the table alone (b, d)."""
    gc.collect()
    out = _Run()
    table = ProcessTable()
    engine: RulesEngine | None = None
    if rules is not None:

        def on_alert(a: Alert) -> None:
            out.transitions.append((a.rule, a.state, a.last_seen_ns, a.subject.key, a.message))

        engine = RulesEngine(rules, table, users=_USERS.get, on_alert=on_alert, host="bench")
    table.apply_batch(load.bootstrap)
    if engine is not None:
        engine.emit(load.bootstrap)
    collector = _GcTimer()
    gc.callbacks.append(collector)
    try:
        _stream(load, table, engine, out)
    finally:
        gc.callbacks.remove(collector)
    out.gc_ns, out.gc_full = collector.ns, collector.full
    if engine is not None:
        out.fired = Counter({name: n for (name, _sev), n in engine.fired.items()})
    return out


def _stream(load: _Load, table: ProcessTable, engine: RulesEngine | None, out: _Run) -> None:
    """The timed part of a run: every batch, every sweep."""
    clock = time.thread_time_ns
    for second, (now, host, samples) in zip(load.seconds, load.sweeps, strict=True):
        for batch in second:
            t0 = clock()
            table.apply_batch(batch)
            table.prune(batch[-1].ts_ns)
            t1 = clock()
            if engine is not None:
                engine.emit(batch)
            t2 = clock()
            out.table_ns += t1 - t0
            out.emit_ns += t2 - t1
            out.events += len(batch)
            out.batches += 1
        t0 = clock()
        table.update_samples(samples)
        t1 = clock()
        t2 = t1
        if engine is not None:
            engine.observe_sweep(now, host, samples)
            t2 = clock()
        out.update_ns += t1 - t0
        out.observe_ns += t2 - t1
        out.sweep_max_ns = max(out.sweep_max_ns, t2 - t0)
        out.sweeps += 1


# ---- report ----------------------------------------------------------------------------


def _pct(us_per_event: float, ms_per_sweep: float, rate: int) -> float:
    """% of one core: ``rate`` events and one sweep per second."""
    return (us_per_event * rate + ms_per_sweep * 1000.0) / 1e6 * 100.0


def _fmt(s: Spread, digits: int = 2) -> str:
    return s.fmt(digits)


def _describe_load(load: _Load, args: argparse.Namespace) -> None:
    tree = ", ".join(f"{v:,} {k}" for k, v in load.tree.items())
    print(f"live tree: {tree}")
    kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(load.kinds.items()))
    rate = load.events / args.seconds
    batch = load.events / sum(len(s) for s in load.seconds)
    print(
        f"stream: {load.events:,} events over {args.seconds} s of kernel time "
        f"({rate:,.0f}/s; {kinds}), batches of {batch:.0f} every {_BATCH_NS // _MS} ms"
    )
    by_parent = ", ".join(
        f"{comm} {n / args.seconds:,.1f}" for comm, n in load.forks_by_parent.most_common()
    )
    print(
        f"process creation: {load.kinds['fork'] / args.seconds:,.0f} forks/s "
        f"(busiest 5 s: {load.forks_per_s_max:,.0f}/s); by parent comm, per s: {by_parent}"
    )
    print(
        f"  forks by other parents than {', '.join(sorted(_BUILD_PARENTS))}: "
        f"{load.other_forks_per_s_max:,.0f}/s in the busiest 5 s; "
        f"busiest single parent {load.parent_forks_per_s_max:,.0f}/s"
    )
    abnormal = "; ".join(f"{k}: {n}" for k, n in load.abnormal.items())
    print(f"abnormal exits: {abnormal}")
    print(
        f"sweeps: {len(load.sweeps)}, {load.samples_per_sweep:,.0f} processes sampled each; "
        f"table at the end: {load.table_entries:,} entries (live and exited, default bounds)"
    )


def _fired_table(load: _Load, run: _Run, rules: Sequence[Rule], seconds: int) -> None:
    first: dict[str, tuple[int, str, str]] = {}
    resolved: Counter[str] = Counter()
    for name, state, ts, subject, message in run.transitions:
        if state == "firing" and name not in first:
            first[name] = (ts, subject, message)
        if state == "resolved":
            resolved[name] += 1
    rows: list[list[object]] = []
    for rule in rules:
        name = rule.name
        if name in first:
            ts, subject, message = first[name]
            at = f"{(ts - _T0_NS) / _NS:.1f}"
            text = message if len(message) <= 90 else message[:87] + "..."
        else:
            at, subject, text = "-", "", ""
        expected = "yes" if name in _EXPECTED else "no"
        rows.append([name, expected, run.fired[name], resolved[name], at, subject, text])
    print_table(
        f"Rules fired during the synthetic run ({seconds} s; sanity, not a target)",
        ["rule", "expected", "alerts", "resolved", "first at s", "subject", "message"],
        rows,
    )
    missing = [r for r in _EXPECTED if not run.fired[r]]
    unexpected = [r.name for r in rules if r.name not in _EXPECTED and run.fired[r.name]]
    print(
        "expected alerts: "
        + ("all raised" if not missing else f"NOT raised: {', '.join(missing)}")
        + f" ({', '.join(_EXPECTED)})"
    )
    if unexpected:
        print(f"also fired: {', '.join(unexpected)}")
    # The fork rules against what this build mix creates, fired or not.
    for rule in rules:
        if rule.detector not in ("fork_storm", "runaway_tree"):
            continue
        if rule.detector == "fork_storm" and rule.params.get("per") == "parent":
            measure = f"busiest single parent {load.parent_forks_per_s_max:,.0f} forks/s"
            threshold = f"{rule.params['threshold_per_s']:g}/s"
        elif rule.detector == "fork_storm":
            measure = (
                f"host {load.forks_per_s_max:,.0f} forks/s, "
                f"{load.other_forks_per_s_max:,.0f}/s by non-build parents"
            )
            threshold = f"{rule.params['threshold_per_s']:g}/s"
        else:
            measure = (
                f"{load.forks_per_s_max:,.0f} births/s under the top make, "
                f"{load.other_forks_per_s_max:,.0f}/s by non-build parents"
            )
            threshold = f"{rule.params['births_per_s']:g} births/s"
        condition = f", condition '{rule.condition_text}'" if rule.condition_text else ""
        outcome = "FIRED" if run.fired[rule.name] else "did not fire"
        print(
            f"{rule.name}: {outcome} (threshold {threshold}{condition}; "
            f"busiest 5 s of this load: {measure})"
        )


def _by_rule(load: _Load, rules: Sequence[Rule], rate: int) -> None:
    """Each rule alone over the same load, once: where the cost goes."""
    rows: list[list[object]] = []
    for rule in rules:
        run = _run(load, [rule])
        emit_us = run.emit_ns / run.events / _US
        observe_ms = run.observe_ns / run.sweeps / _MS
        rows.append(
            [
                rule.name,
                rule.detector,
                f"{emit_us:.2f}",
                f"{observe_ms:.2f}",
                f"{_pct(emit_us, observe_ms, rate):.2f}",
            ]
        )
    print_table(
        "Each rule alone, 1 run each (emit, and observe_sweep)",
        ["rule", "detector", "emit us/event", "observe ms/sweep", "% of a core"],
        rows,
    )


def body(args: argparse.Namespace) -> None:
    if args.quick:
        args.seconds = 10
    ruleset = load_rules(args.rules)
    rules = ruleset.enabled
    print(f"rules: {len(rules)} enabled of {len(ruleset.rules)} from {', '.join(ruleset.files)}")
    built = time.perf_counter()
    load = _build_load(args.seed, args.live, args.seconds, args.rate)
    _describe_load(load, args)
    # The load is static from here: keep the collector from rescanning it.
    gc.collect()
    gc.freeze()
    # The collector thresholds the running agent sets (Agent.start), so the
    # collections both runs pay are the agent's.
    gc.set_threshold(*GC_THRESHOLDS)
    print(f"gc thresholds: {gc.get_threshold()} (as the agent sets them)")
    print(f"(load built in {time.perf_counter() - built:.1f} s; {args.reps} repetitions follow)")
    if args.wait_quiet > 0:
        # CPU time is inflated on a busy host too (shared caches, SMT siblings).
        wait_for_quiet(args.wait_quiet, busy_pct=15.0)
    host_before = HostCpu.now()

    with_rules: list[_Run] = []
    peers: list[_Run] = []
    for rep in range(args.reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for rules_on in order:
            run = _run(load, rules if rules_on else None)
            (with_rules if rules_on else peers).append(run)
        print(
            f"  rep {rep + 1}: with rules {with_rules[-1].per_event_us:.2f} us/event, "
            f"{with_rules[-1].per_sweep_ms:.2f} ms/sweep; peer {peers[-1].per_event_us:.2f} "
            f"us/event, {peers[-1].per_sweep_ms:.2f} ms/sweep",
            flush=True,
        )

    busy = HostCpu.now().busy_pct_since(host_before)
    print(
        f"host busy while measuring: {busy:.0f}% of all {os.cpu_count()} CPUs "
        f"(this bench keeps one busy)"
    )
    rate = args.rate
    a = [r.per_event_us for r in with_rules]
    b = [r.per_event_us for r in peers]
    emit = [r.emit_ns / r.events / _US for r in with_rules]
    c = [r.per_sweep_ms for r in with_rules]
    d = [r.per_sweep_ms for r in peers]
    observe = [r.observe_ns / r.sweeps / _MS for r in with_rules]
    ev_add = [x - y for x, y in zip(a, b, strict=True)]
    sw_add = [x - y for x, y in zip(c, d, strict=True)]
    total_rules = [_pct(x, y, rate) for x, y in zip(a, c, strict=True)]
    total_peer = [_pct(x, y, rate) for x, y in zip(b, d, strict=True)]
    total_add = [_pct(x, y, rate) for x, y in zip(ev_add, sw_add, strict=True)]
    ratio = [x / y for x, y in zip(total_rules, total_peer, strict=True)]
    n = args.reps

    print_table(
        f"Per event: batches of ~{rate // 10} events every 100 ms, median (min-max) of {n} runs",
        ["pipeline", "us/event", f"% of a core at {rate:,}/s"],
        [
            [
                "(a) with rules: apply_batch + prune + emit",
                _fmt(spread(a)),
                _fmt(spread([x * rate / 1e4 for x in a])),
            ],
            [
                "(b) peer, no rules: apply_batch + prune",
                _fmt(spread(b)),
                _fmt(spread([x * rate / 1e4 for x in b])),
            ],
            [
                "rules add (a - b)",
                _fmt(spread(ev_add)),
                _fmt(spread([x * rate / 1e4 for x in ev_add])),
            ],
            [
                "  cross-check: emit alone, timed inside (a)",
                _fmt(spread(emit)),
                _fmt(spread([x * rate / 1e4 for x in emit])),
            ],
            ["ratio (a) / (b)", _fmt(spread([x / y for x, y in zip(a, b, strict=True)])), ""],
        ],
    )
    sweep_max = spread([r.sweep_max_ns / _MS for r in with_rules])
    peer_max = spread([r.sweep_max_ns / _MS for r in peers])
    print_table(
        f"Per sampler sweep: one a second over {load.samples_per_sweep:,.0f} processes, "
        f"median (min-max) of {n} runs",
        ["pipeline", "ms/sweep", "worst sweep ms", "% of a core at 1/s"],
        [
            [
                "(c) with rules: update_samples + observe_sweep",
                _fmt(spread(c)),
                _fmt(sweep_max),
                _fmt(spread([x / 10 for x in c])),
            ],
            [
                "(d) peer, no rules: update_samples",
                _fmt(spread(d)),
                _fmt(peer_max),
                _fmt(spread([x / 10 for x in d])),
            ],
            ["rules add (c - d)", _fmt(spread(sw_add)), "", _fmt(spread([x / 10 for x in sw_add]))],
            ["  of which: observe_sweep", _fmt(spread(observe)), "", ""],
            ["ratio (c) / (d)", _fmt(spread([x / y for x, y in zip(c, d, strict=True)])), "", ""],
        ],
    )
    print_table(
        f"Total at {rate:,} events/s and one sweep a second, % of one core, "
        f"median (min-max) of {n} runs",
        ["pipeline", "% of one core"],
        [
            ["with rules (a + c)", _fmt(spread(total_rules))],
            ["peer, no rules (b + d): table alone", _fmt(spread(total_peer))],
            ["rules add", _fmt(spread(total_add))],
            ["ratio with rules / peer", _fmt(spread(ratio))],
        ],
    )
    gc_rules = [r.gc_ns / 1e7 / args.seconds for r in with_rules]
    gc_peer = [r.gc_ns / 1e7 / args.seconds for r in peers]
    print(
        "cyclic GC inside the timed work above (wherever a collection fell), "
        f"% of one core: with rules {_fmt(spread(gc_rules))}, "
        f"{median([r.gc_full for r in with_rules]):.0f} full collections a run; "
        f"peer {_fmt(spread(gc_peer))}, {median([r.gc_full for r in peers]):.0f}"
    )
    if args.by_rule:
        _by_rule(load, rules, rate)
    _fired_table(load, with_rules[0], rules, args.seconds)
    print()
    added = spread(total_add)
    report_target(
        f"rules under {_TARGET_PCT:g}% of one core at {rate:,} events/s "
        f"with {args.live:,} live processes",
        added.median < _TARGET_PCT,
        f"{added.median:.2f}% of one core, {added.low:.2f}-{added.high:.2f} over {n} runs: "
        f"{spread(ev_add).median:.2f} us/event x {rate:,}/s + "
        f"{spread(sw_add).median:.2f} ms/sweep x 1/s; peer table alone "
        f"{spread(total_peer).median:.2f}%, with rules {spread(total_rules).median:.2f}% "
        f"({spread(ratio).median:.2f}x the peer)",
    )


def main() -> int:
    parser = bench_parser(_MODULE, (__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="kernel time to simulate")
    parser.add_argument("--rate", type=int, default=6000, help="lifecycle events per second")
    parser.add_argument("--live", type=int, default=5000, help="live processes in the table")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of both runs")
    parser.add_argument("--seed", type=int, default=1, help="of the synthetic load")
    parser.add_argument(
        "--rules", type=Path, default=bundled_path("config", "rules.yaml"), help="rules file"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="wait up to this many seconds for a quiet host before measuring (0: no wait)",
    )
    parser.add_argument(
        "--by-rule",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run each rule alone once",
    )
    parser.add_argument("--quick", action="store_true", help="10 s of kernel time")
    return run_bench(_MODULE, parser, body)


if __name__ == "__main__":
    raise SystemExit(main())
