"""Detectors driven by synthetic events and sweeps over a real process table.

Each detector is built through the registry (as the engine does) and must fire
exactly at its threshold, show the numbers that explain it, window on kernel
timestamps, stop when the condition clears, honour the rule's ``accept`` and
forget what has left its window.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import pytest

import otel_linnix.rules.detectors  # noqa: F401 - fills DETECTORS
from otel_linnix.errors import ConfigError
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey
from otel_linnix.process_table import ProcessInfo, ProcessSample, ProcessTable
from otel_linnix.rules.detectors import (
    CpuSpikeDetector,
    CpuThrashingDetector,
    CrashLoopDetector,
    FdExhaustionDetector,
    ForkStormDetector,
    MemoryLeakDetector,
    OomKillDetector,
    PsiPressureDetector,
    RssHighDetector,
    RunawayTreeDetector,
)
from otel_linnix.rules.detectors_samples import fit_line
from otel_linnix.rules.model import DETECTORS, Detector, Finding, HostSample, render_message
from tests.unit.conftest import make_event

S = 1_000_000_000
MS = 1_000_000
MIB = 1024 * 1024
GIB = 1024 * MIB
T0 = 1_000 * S  # "now" in these tests: a machine up for 1000 s
FORK, EXEC, EXIT, OOM = EventKind.FORK, EventKind.EXEC, EventKind.EXIT, EventKind.OOM_KILL

D = TypeVar("D")


def yes(_: object) -> bool:
    return True


def observe(
    detector: Detector,
    now_ns: int,
    infos: Sequence[ProcessInfo],
    host: HostSample | None,
    accept: Callable[[ProcessInfo], bool],
) -> None:
    """A sweep of ``infos`` as the engine hands it over: readings by key, and
    the process behind a key when ``accept`` admits it."""
    by_key = {p.key: p for p in infos}

    def admit(key: ProcessKey) -> ProcessInfo | None:
        p = by_key.get(key)
        return p if p is not None and accept(p) else None

    samples = {p.key: p.sample for p in infos if p.sample is not None}
    detector.observe_samples(now_ns, samples, host, admit)


def build(cls: type[D], name: str, table: ProcessTable, **params: Any) -> D:
    """The detector a rule naming ``name`` gets (defaults filled by the registry)."""
    detector = DETECTORS[name].factory(params, table)
    assert isinstance(detector, cls)
    return detector


def assert_renders(name: str, finding: Finding) -> str:
    """The default message fills every placeholder from evidence + subject, as the engine does."""
    subject = finding.subject
    values = {**finding.evidence, "pid": subject.pid, "comm": subject.comm, "exe": subject.exe}
    text = render_message(DETECTORS[name].default_message, values)
    assert "{" not in text, text
    return text


class World:
    """A real ProcessTable with init and a login shell, and a pid allocator.

    Events go to the table first (the engine's order), then to the detectors.
    """

    def __init__(self) -> None:
        self.table = ProcessTable(max_entries=500_000, exited_retention_ns=3600 * S)
        self._next_pid = 1000
        self.init = self.spawn(None, T0 - 900 * S, "systemd", pid=1)
        self.shell = self.spawn(self.init, T0 - 600 * S, "bash", exe="/usr/bin/bash", pid=100)

    def pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def fork(
        self, parent: ProcessKey | None, ts: int, comm: str = "proc", pid: int | None = None
    ) -> ProcessEvent:
        return make_event(
            FORK,
            self.pid() if pid is None else pid,
            ts,
            ppid=parent.pid if parent is not None else 0,
            parent_start_time_ns=parent.start_time_ns if parent is not None else None,
            comm=comm,
        )

    def exit(
        self,
        key: ProcessKey,
        ts: int,
        comm: str = "proc",
        code: int | None = 0,
        sig: int | None = None,
    ) -> ProcessEvent:
        return make_event(
            EXIT, key.pid, key.start_time_ns, ts_ns=ts, comm=comm, exit_code=code, exit_signal=sig
        )

    def spawn(
        self,
        parent: ProcessKey | None,
        ts: int,
        comm: str,
        exe: str | None = None,
        pid: int | None = None,
    ) -> ProcessKey:
        """A process applied to the table only (detectors do not see its birth)."""
        ev = self.fork(parent, ts, comm, pid)
        self.table.apply(ev)
        if exe is not None:
            self.table.apply(
                make_event(EXEC, ev.pid, ts, ts_ns=ts + 1, comm=comm, exe=exe, argv=(comm,))
            )
        return ev.key

    def feed(
        self,
        events: Iterable[ProcessEvent],
        *detectors: Any,
        accept: Callable[[ProcessEvent], bool] = yes,
    ) -> None:
        for ev in events:
            self.table.apply(ev)
            for detector in detectors:
                detector.observe_event(ev, accept)


def subjects(findings: Sequence[Finding]) -> list[str]:
    return sorted(f.subject.key for f in findings)


# ---- the registry --------------------------------------------------------------------


def test_registry_holds_every_detector_with_bounded_params() -> None:
    assert set(DETECTORS) == {
        "fork_storm",
        "runaway_tree",
        "crash_loop",
        "oom_kill",
        "cpu_spike",
        "runaway_process",
        "rss_high",
        "memory_leak",
        "fd_exhaustion",
        "cpu_thrashing",
        "psi_pressure",
    }
    for name, spec in DETECTORS.items():
        assert spec.name == name
        assert spec.inputs in (("event",), ("sample",))
        for pname, param in spec.params.items():
            numeric = param.kind in (int, float)
            assert not numeric or param.lo is not None, f"{name}.{pname} has no lower bound"
            assert param.default is None or isinstance(param.default, param.kind)
            assert param.nullable or param.default is not None
            assert not param.choices or param.default in param.choices
    assert DETECTORS["runaway_process"].params["threshold_pct"].default == 95.0
    assert DETECTORS["runaway_process"].params["duration_s"].default == 60.0
    assert DETECTORS["cpu_spike"].params["threshold_pct"].default == 90.0


def test_runaway_process_is_cpu_spike_with_its_own_defaults() -> None:
    world = World()
    runaway = build(CpuSpikeDetector, "runaway_process", world.table)
    key = world.spawn(world.shell, T0 - 100 * S, "spin")
    for i in range(61):
        observe(runaway, T0 + i * S, [with_sample(world, key, T0 + i * S, cpu=95.0)], None, yes)
        assert bool(runaway.findings(T0 + i * S)) == (i >= 60)
    # cpu_spike's defaults (90 %, 20 s) would have fired long before at 94.9 %.
    runaway = build(CpuSpikeDetector, "runaway_process", world.table)
    for i in range(61):
        observe(runaway, T0 + i * S, [with_sample(world, key, T0 + i * S, cpu=94.9)], None, yes)
    assert runaway.findings(T0 + 60 * S) == []


def test_unknown_parameter_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"fork_storm.*threshold"):
        DETECTORS["fork_storm"].factory({"threshold": 5}, ProcessTable())


# ---- fork_storm ----------------------------------------------------------------------


def forks_from(
    world: World, parent: ProcessKey, n: int, start: int, span: int, *, comm: str = "make"
) -> list[ProcessEvent]:
    """``n`` forks of ``parent`` evenly over [start, start + span)."""
    return [world.fork(parent, start + i * span // n, comm) for i in range(n)]


@pytest.mark.parametrize(("n", "fires"), [(999, False), (1000, True)])
def test_fork_storm_fires_at_threshold_rate(n: int, fires: bool) -> None:
    world = World()
    make = world.spawn(world.shell, T0 - 10 * S, "make", exe="/usr/bin/make")
    storm = build(ForkStormDetector, "fork_storm", world.table)
    events = forks_from(world, make, n, T0, 5 * S)
    world.feed(events, storm)
    found = storm.findings(events[-1].ts_ns)
    assert bool(found) == fires
    if fires:
        (finding,) = found
        assert finding.subject.kind == "host"
        assert finding.value == pytest.approx(200.0)
        assert finding.evidence["count"] == 1000
        assert finding.evidence["window_s"] == 5.0
        assert finding.evidence["threshold_per_s"] == 200.0
        assert finding.evidence["top_parents"] == f"make({make.pid})=1000"
        assert "200 processes/s" in assert_renders("fork_storm", finding)


def test_fork_storm_windows_on_kernel_time_not_arrival() -> None:
    world = World()
    make = world.spawn(world.shell, T0 - 10 * S, "make")
    storm = build(ForkStormDetector, "fork_storm", world.table)
    # 500 forks in the second half of the window arrive first, the 500 of the
    # first half arrive late: they still belong to this window.
    late = forks_from(world, make, 500, T0, 2500 * MS)
    recent = forks_from(world, make, 500, T0 + 2500 * MS, 2500 * MS)
    world.feed(recent + late, storm)
    now = recent[-1].ts_ns
    assert storm.findings(now)[0].evidence["count"] == 1000
    # Five seconds later the same forks no longer count...
    assert storm.findings(now + 5 * S) == []
    # ...and forks stamped inside that expired window are ignored when they arrive.
    world.feed(forks_from(world, make, 2000, T0, 2 * S), storm)
    assert storm.findings(now + 5 * S) == []
    assert storm.tracked <= 2


@pytest.mark.parametrize("per", ["host", "parent"])
def test_fork_storm_counts_over_a_sliding_window(per: str) -> None:
    world = World()
    make = world.spawn(world.shell, T0 - 10 * S, "make")
    storm = build(ForkStormDetector, "fork_storm", world.table, threshold_per_s=100.0, per=per)
    # 100 forks/s for 10 s, evaluated after each batch of ten: wherever the
    # window falls (on a bucket edge or not), the rate reads 100/s.
    events = forks_from(world, make, 1000, T0, 10 * S)
    rates: list[float] = []
    for i in range(0, 1000, 10):
        world.feed(events[i : i + 10], storm)
        found = storm.findings(events[i + 9].ts_ns)
        rates.append(found[0].value if found else 0.0)
    assert rates[:49] == [0.0] * 49  # under 5 s of forks: under 100/s
    assert rates[49:] == pytest.approx([100.0] * 51, rel=0.02)
    assert storm.findings(T0 + 12 * S) == []  # the rate over (7 s, 12 s] is 60/s


def test_fork_storm_per_parent_and_accept() -> None:
    world = World()
    make = world.spawn(world.shell, T0 - 10 * S, "make", exe="/usr/bin/make")
    ninja = world.spawn(world.shell, T0 - 10 * S, "ninja", exe="/usr/bin/ninja")
    events = forks_from(world, make, 600, T0, 5 * S) + forks_from(
        world, ninja, 400, T0, 5 * S, comm="ninja"
    )
    events.sort(key=lambda ev: ev.ts_ns)
    per_parent = build(
        ForkStormDetector, "fork_storm", world.table, threshold_per_s=100.0, per="parent"
    )
    host = build(ForkStormDetector, "fork_storm", world.table)
    picky = build(ForkStormDetector, "fork_storm", world.table, per="parent")
    world.feed(events, per_parent, host)
    world.feed([], picky)
    for ev in events:
        picky.observe_event(ev, lambda ev: ev.comm != "make")
    now = T0 + 5 * S - 1
    found = per_parent.findings(now)
    assert subjects(found) == [f"process:{make}"]  # ninja: 80/s
    (finding,) = found
    assert finding.subject.kind == "parent"
    assert (finding.subject.pid, finding.subject.comm) == (make.pid, "make")
    assert finding.subject.exe == "/usr/bin/make"
    assert finding.evidence["count"] == 600
    assert finding.value == pytest.approx(120.0)
    (total,) = host.findings(now)
    assert total.evidence["count"] == 1000
    assert total.evidence["top_parents"] == f"make({make.pid})=600, ninja({ninja.pid})=400"
    # The rule rejects make's children: nothing left that reaches 200/s.
    assert picky.findings(now) == []


def test_fork_storm_forgets_thousands_of_parents() -> None:
    world = World()
    storm = build(ForkStormDetector, "fork_storm", world.table, per="parent")
    parents = [world.spawn(world.shell, T0 - 10 * S, "worker") for _ in range(3000)]
    world.feed((world.fork(p, T0 + i * MS) for i, p in enumerate(parents)), storm)
    assert storm.findings(T0 + 3 * S) == []
    assert storm.tracked > 3000
    assert storm.findings(T0 + 60 * S) == []
    assert storm.tracked == 0


def build_pattern(world: World, jobs: int, span: int) -> tuple[list[ProcessEvent], ProcessKey]:
    """make running ``jobs`` compile jobs over ``span``: each job is sh -> cc1, then as.

    Every job exits cleanly; several overlap, as under ``make -j8``.
    """
    make = world.spawn(world.shell, T0 - S, "make", exe="/usr/bin/make")
    events: list[ProcessEvent] = []
    for j in range(jobs):
        start = T0 + j * span // jobs
        sh = world.fork(make, start, "make")
        cc1 = world.fork(sh.key, start + 5 * MS, "sh")
        as_ = world.fork(sh.key, start + 900 * MS, "sh")
        events += [
            sh,
            cc1,
            world.exit(cc1.key, start + 850 * MS, "cc1"),
            as_,
            world.exit(as_.key, start + 990 * MS, "as"),
            world.exit(sh.key, start + 995 * MS, "sh"),
        ]
    events.sort(key=lambda ev: ev.ts_ns)
    return events, make


def test_parallel_build_fires_nothing_with_defaults() -> None:
    world = World()
    events, _ = build_pattern(world, jobs=300, span=60 * S)
    detectors: list[Detector] = [
        build(ForkStormDetector, "fork_storm", world.table),
        build(ForkStormDetector, "fork_storm", world.table, per="parent"),
        build(RunawayTreeDetector, "runaway_tree", world.table),
        build(CrashLoopDetector, "crash_loop", world.table),
    ]
    evaluated = 0
    for i in range(0, len(events), 10):  # batches, evaluated after each as the engine does
        batch = events[i : i + 10]
        world.feed(batch, *detectors)
        for detector in detectors:
            assert detector.findings(batch[-1].ts_ns) == []
            evaluated += 1
    assert evaluated > 300
    # A build that forks 1200 processes in about 2 s is a storm: the test can fail.
    world = World()
    events, _ = build_pattern(world, jobs=400, span=S)
    storm = build(ForkStormDetector, "fork_storm", world.table)
    world.feed(events, storm)
    assert storm.findings(events[-1].ts_ns) != []


# ---- runaway_tree --------------------------------------------------------------------


def test_runaway_tree_reports_the_parent_of_a_wide_fan_out_only() -> None:
    world = World()
    sshd = world.spawn(world.init, T0 - 300 * S, "sshd")
    shell = world.spawn(sshd, T0 - 200 * S, "bash")
    spawner = world.fork(shell, T0 - 500 * MS, "spawner")
    tree = build(RunawayTreeDetector, "runaway_tree", world.table)
    children = forks_from(world, spawner.key, 1000, T0, 4 * S, comm="spawner")
    world.feed([spawner, *children], tree)
    found = tree.findings(children[-1].ts_ns)
    assert subjects(found) == [f"process:{spawner.key}"]
    (finding,) = found
    ev = finding.evidence
    assert (ev["births"], ev["live_descendants"], ev["trigger"]) == (1000, 1000, "births")
    assert ev["rate"] == pytest.approx(200.0)
    assert ev["window_s"] == 5.0
    assert ev["births_per_s"] == 100.0
    assert ev["max_live_descendants"] == 2000
    assert ev["top_child_share"] == pytest.approx(0.001)
    assert finding.subject.comm == "spawner"
    assert "spawner" in assert_renders("runaway_tree", finding)


def fork_bomb(
    world: World, root: ProcessKey, depth: int, start: int, step: int
) -> list[ProcessEvent]:
    """Every process forks two children, ``depth`` levels below ``root``."""
    events: list[ProcessEvent] = []
    level = [root]
    ts = start
    for _ in range(depth):
        below: list[ProcessKey] = []
        for parent in level:
            for _child in range(2):
                ev = world.fork(parent, ts, "bomb")
                events.append(ev)
                below.append(ev.key)
                ts += step
        level = below
    return events


def test_runaway_tree_reports_the_root_of_a_fork_bomb_not_the_shell_or_each_level() -> None:
    world = World()
    bomb = world.fork(world.shell, T0 - 100 * MS, "bomb")
    tree = build(RunawayTreeDetector, "runaway_tree", world.table)
    events = fork_bomb(world, bomb.key, depth=9, start=T0, step=3 * MS)
    assert len(events) == 1022
    world.feed([bomb, *events], tree)
    found = tree.findings(events[-1].ts_ns)
    assert subjects(found) == [f"process:{bomb.key}"]
    ev = found[0].evidence
    assert ev["births"] == 1022
    assert ev["top_child_share"] == pytest.approx(511 / 1022, abs=0.001)


def test_runaway_tree_reports_each_of_two_bombs_under_init_but_never_init() -> None:
    world = World()
    first = world.fork(world.init, T0 - 100 * MS, "bomb")
    second = world.fork(world.init, T0 - 90 * MS, "bomb")
    tree = build(RunawayTreeDetector, "runaway_tree", world.table)
    a = fork_bomb(world, first.key, depth=9, start=T0, step=2 * MS)
    b = fork_bomb(world, second.key, depth=9, start=T0 + MS, step=2 * MS)
    world.feed([first, second, *sorted(a + b, key=lambda e: e.ts_ns)], tree)
    found = tree.findings(T0 + 2100 * MS)
    assert subjects(found) == sorted([f"process:{first.key}", f"process:{second.key}"])


@pytest.mark.parametrize(("n", "fires"), [(499, False), (500, True)])
def test_runaway_tree_births_threshold(n: int, fires: bool) -> None:
    world = World()
    parent = world.spawn(world.shell, T0 - 100 * S, "spawner")
    tree = build(RunawayTreeDetector, "runaway_tree", world.table)
    events = forks_from(world, parent, n, T0, 5 * S)
    world.feed(events, tree)
    assert bool(tree.findings(events[-1].ts_ns)) == fires


def test_runaway_tree_live_descendants_rise_and_fall_with_exits() -> None:
    world = World()
    parent = world.spawn(world.shell, T0 - 100 * S, "supervisor")
    tree = build(RunawayTreeDetector, "runaway_tree", world.table, max_live_descendants=50)
    # 50 children over 50 s: a birth rate of 1/s, but they all stay alive.
    children = forks_from(world, parent, 50, T0, 50 * S)
    world.feed(children[:-1], tree)
    assert tree.findings(T0 + 50 * S) == []
    world.feed(children[-1:], tree)
    (finding,) = tree.findings(T0 + 50 * S)
    assert finding.subject.pid == parent.pid
    assert (finding.evidence["trigger"], finding.value) == ("live", 50.0)
    world.feed([world.exit(children[0].key, T0 + 51 * S)], tree)
    assert tree.findings(T0 + 51 * S) == []
    world.feed([world.exit(c.key, T0 + 52 * S) for c in children[1:]], tree)
    assert tree.findings(T0 + 60 * S) == []
    assert tree.tracked == 0


def test_runaway_tree_credits_siblings_right_when_an_ancestor_exits_mid_storm() -> None:
    """Siblings share a cached ancestor chain; an ancestor's exit must not leave a
    stale chain behind (its node is credited, released and forgotten as usual)."""
    world = World()
    middle = world.spawn(world.shell, T0 - 100 * S, "supervisor")
    spawner = world.spawn(middle, T0 - 50 * S, "spawner")
    tree = build(RunawayTreeDetector, "runaway_tree", world.table)
    children = forks_from(world, spawner, 600, T0, 4 * S, comm="spawner")
    world.feed(children[:300], tree)
    world.feed([world.exit(middle, T0 + 2 * S, comm="supervisor")], tree)
    world.feed(children[300:], tree)
    (finding,) = tree.findings(children[-1].ts_ns)
    assert finding.subject.pid == spawner.pid
    assert (finding.evidence["births"], finding.evidence["live_descendants"]) == (600, 600)
    world.feed([world.exit(c.key, T0 + 5 * S, comm="spawner") for c in children], tree)
    assert tree.findings(T0 + 20 * S) == []
    assert tree.tracked == 0


def test_runaway_tree_ignores_processes_the_rule_rejects() -> None:
    world = World()
    bomb = world.fork(world.shell, T0 - 100 * MS, "bomb")
    tree = build(RunawayTreeDetector, "runaway_tree", world.table)
    everything = build(RunawayTreeDetector, "runaway_tree", world.table)
    events = fork_bomb(world, bomb.key, depth=9, start=T0, step=3 * MS)
    for ev in [bomb, *events]:
        world.table.apply(ev)
        tree.observe_event(ev, lambda ev: ev.comm != "bomb")
        everything.observe_event(ev, yes)
    assert tree.findings(events[-1].ts_ns) == []
    assert everything.findings(events[-1].ts_ns) != []


def test_runaway_tree_forgets_thousands_of_short_lived_trees() -> None:
    world = World()
    tree = build(RunawayTreeDetector, "runaway_tree", world.table)
    for i in range(3000):  # 10 jobs a second, each a process that runs a child
        ts = T0 + i * 100 * MS
        parent = world.fork(world.shell, ts, "job")
        child = world.fork(parent.key, ts + 1, "job")
        world.feed(
            [parent, child, world.exit(child.key, ts + 2), world.exit(parent.key, ts + 3)],
            tree,
        )
        if i % 10 == 0:
            assert tree.findings(ts + 3) == []
            assert tree.tracked < 1000  # what left the window was forgotten
    assert tree.findings(T0 + 400 * S) == []
    assert tree.tracked == 0


def test_runaway_tree_credits_a_reused_pid_once() -> None:
    world = World()
    parent = world.spawn(world.shell, T0 - 100 * S, "supervisor")
    tree = build(RunawayTreeDetector, "runaway_tree", world.table, max_live_descendants=2)
    first = world.fork(parent, T0, "a", pid=5000)
    # The exit of the first 5000 is lost; a new 5000 is born a second later.
    second = world.fork(parent, T0 + S, "b", pid=5000)
    world.feed([first, first, second], tree)
    assert tree.findings(T0 + S) == []  # one live child, not three
    third = world.fork(parent, T0 + S + 1, "c")
    world.feed([third], tree)
    assert tree.findings(T0 + S + 1)[0].evidence["live_descendants"] == 2


# ---- crash_loop ----------------------------------------------------------------------


def crashes(
    world: World,
    n: int,
    start: int,
    step: int,
    *,
    comm: str = "crashy",
    exe: str = "/usr/bin/crashy",
    code: int | None = None,
    sig: int | None = 11,
    lifetime: int = 50 * MS,
) -> list[ProcessEvent]:
    """``n`` runs of a program, each exiting ``lifetime`` after it started."""
    events: list[ProcessEvent] = []
    for i in range(n):
        born = start + i * step - lifetime
        fork = world.fork(world.shell, born, "bash")
        exec_ = make_event(EXEC, fork.pid, born, ts_ns=born + 1, comm=comm, exe=exe, argv=(comm,))
        events += [fork, exec_, world.exit(fork.key, born + lifetime, comm, code, sig)]
    return events


@pytest.mark.parametrize(("n", "fires"), [(4, False), (5, True)])
def test_crash_loop_fires_at_min_exits(n: int, fires: bool) -> None:
    world = World()
    loop = build(CrashLoopDetector, "crash_loop", world.table)
    events = crashes(world, n, T0, 4 * S)
    world.feed(events, loop)
    found = loop.findings(events[-1].ts_ns)
    assert bool(found) == fires
    if fires:
        (finding,) = found
        assert finding.subject.kind == "executable"
        assert finding.subject.key == "executable:/usr/bin/crashy"
        assert (finding.subject.comm, finding.subject.exe) == ("crashy", "/usr/bin/crashy")
        ev = finding.evidence
        assert (ev["exits"], ev["window_s"], ev["min_exits"]) == (5, 20.0, 5)
        assert ev["last_status"] == "signal SIGSEGV"
        pids = [e.pid for e in events if e.kind is EXIT]
        assert ev["last_pids"] == ",".join(str(p) for p in reversed(pids))
        assert "crashy exited 5 times" in assert_renders("crash_loop", finding)


def test_crash_loop_window_and_clean_exits() -> None:
    world = World()
    loop = build(CrashLoopDetector, "crash_loop", world.table)
    # Exits with status 0 are not crashes...
    world.feed(crashes(world, 10, T0, S, code=0, sig=None), loop)
    assert loop.findings(T0 + 10 * S) == []
    # ...exits with a status are: 5 within 20 s, the first of them 19.9 s before now.
    events = crashes(world, 5, T0 + 20 * S, 4975 * MS, code=3, sig=None)
    world.feed(events, loop)
    now = events[-1].ts_ns
    (finding,) = loop.findings(now)
    assert finding.evidence["last_status"] == "status 3"
    first_exit = next(ev for ev in events if ev.kind is EXIT)
    assert loop.findings(first_exit.ts_ns + 20 * S - 1) != []
    assert loop.findings(first_exit.ts_ns + 20 * S) == []  # the first left the window
    assert loop.findings(now + 20 * S) == []
    assert loop.tracked == 0
    # An exit stamped in a window that is over is ignored when it arrives late.
    world.feed(crashes(world, 5, T0, S), loop)
    assert loop.tracked == 0
    assert loop.findings(now + 20 * S) == []


def test_crash_loop_counts_any_short_lived_exit_when_asked() -> None:
    world = World()
    jobs = build(
        CrashLoopDetector,
        "crash_loop",
        world.table,
        abnormal_only=False,
        max_lifetime_ms=1000.0,
        group_by="comm",
    )
    world.feed(crashes(world, 5, T0, S, comm="cron-job", code=0, sig=None, lifetime=2 * S), jobs)
    assert jobs.findings(T0 + 5 * S) == []  # each lived 2 s
    events = crashes(world, 5, T0 + 5 * S, S, comm="cron-job", code=0, sig=None, lifetime=S)
    world.feed(events, jobs)
    (finding,) = jobs.findings(events[-1].ts_ns)
    assert finding.subject.key == "executable:cron-job"
    assert finding.evidence["last_status"] == "status 0"
    assert finding.evidence["max_lifetime_ms"] == 1000.0


def test_crash_loop_accept_and_grouping_by_executable() -> None:
    world = World()
    loop = build(CrashLoopDetector, "crash_loop", world.table)
    a = crashes(world, 5, T0, S, exe="/opt/a/worker", comm="worker")
    b = crashes(world, 5, T0, S, exe="/opt/b/worker", comm="worker")
    world.feed(
        sorted(a + b, key=lambda e: e.ts_ns),
        loop,
        accept=lambda ev: ev.pid not in {e.pid for e in b},
    )
    found = loop.findings(T0 + 5 * S)
    assert subjects(found) == ["executable:/opt/a/worker"]


def test_crash_loop_forgets_thousands_of_programs() -> None:
    world = World()
    loop = build(CrashLoopDetector, "crash_loop", world.table)
    events: list[ProcessEvent] = []
    for i in range(3000):
        events += crashes(world, 1, T0 + i * MS, S, exe=f"/usr/bin/p{i}", comm=f"p{i}")
    world.feed(events, loop)
    assert loop.tracked == 6000
    assert loop.findings(T0 + 30 * S) == []
    assert loop.tracked == 0


# ---- oom_kill ------------------------------------------------------------------------


def test_oom_kill_is_a_finding_for_hold_s() -> None:
    world = World()
    victim = world.spawn(world.shell, T0 - 100 * S, "java", exe="/usr/bin/java")
    oom = build(OomKillDetector, "oom_kill", world.table)
    kill = make_event(
        OOM,
        victim.pid,
        victim.start_time_ns,
        ts_ns=T0,
        comm="java",
        rss_bytes=3 * GIB,
        container_id="c0ffee",
    )
    world.feed([kill], oom)
    (finding,) = oom.findings(T0)
    assert finding.subject.key == f"process:{victim}"
    assert finding.subject.exe == "/usr/bin/java"
    assert finding.value == 3 * GIB
    assert finding.evidence == {
        "pid": victim.pid,
        "comm": "java",
        "rss_bytes": 3 * GIB,
        "resident": "3072 MiB",
        "container_id": "c0ffee",
        "hold_s": 60.0,
    }
    assert assert_renders("oom_kill", finding).startswith("OOM killer killed java")
    assert oom.findings(T0 + 60 * S) != []
    assert oom.findings(T0 + 60 * S + 1) == []
    assert oom.tracked == 0
    # A kill that arrives after its hold is over is never a finding.
    world.feed([kill], oom)
    assert oom.findings(T0 + 61 * S) == []


def test_oom_kill_respects_accept() -> None:
    world = World()
    victim = world.spawn(world.shell, T0 - 100 * S, "java")
    oom = build(OomKillDetector, "oom_kill", world.table, hold_s=5.0)
    kill = make_event(OOM, victim.pid, victim.start_time_ns, ts_ns=T0, comm="java")
    world.feed([kill], oom, accept=lambda ev: ev.comm != "java")
    assert oom.findings(T0) == []
    world.feed([kill], oom)
    assert oom.findings(T0) != []


# ---- sweeps --------------------------------------------------------------------------


def with_sample(
    world: World,
    key: ProcessKey,
    ts: int,
    *,
    cpu: float | None = None,
    rss: int | None = None,
    fds: int | None = None,
    limit: int | None = None,
    state: str = "S",
) -> ProcessInfo:
    """The table's entry for ``key`` with one sampler reading applied."""
    world.table.update_samples({key: ProcessSample(ts, None, cpu, rss, fds, limit, 1, state)})
    info = world.table.get(key)
    assert info is not None and info.sample is not None
    return info


def run_sweeps(
    detector: Any,
    world: World,
    readings: Mapping[int, Sequence[tuple[ProcessKey, dict[str, Any]]]],
    host: Callable[[int], HostSample | None] = lambda ts: None,
    accept: Callable[[ProcessInfo], bool] = yes,
) -> dict[int, list[Finding]]:
    """Sweep at each ts (in order); returns the findings after each."""
    out: dict[int, list[Finding]] = {}
    for ts in sorted(readings):
        infos = [with_sample(world, key, ts, **fields) for key, fields in readings[ts]]
        observe(detector, ts, infos, host(ts), accept)
        out[ts] = detector.findings(ts)
    return out


def test_cpu_spike_needs_every_sweep_above_for_duration() -> None:
    world = World()
    spin = world.spawn(world.shell, T0 - 100 * S, "spin", exe="/usr/bin/spin")
    idle = world.spawn(world.shell, T0 - 100 * S, "idle")
    spike = build(CpuSpikeDetector, "cpu_spike", world.table)
    cpu = [90.0 if i % 2 else 100.0 for i in range(21)]
    found = run_sweeps(
        spike,
        world,
        {T0 + i * S: [(spin, {"cpu": cpu[i]}), (idle, {"cpu": 1.0})] for i in range(21)},
    )
    assert [bool(found[T0 + i * S]) for i in range(21)] == [False] * 20 + [True]
    (finding,) = found[T0 + 20 * S]
    assert finding.subject.key == f"process:{spin}"
    assert finding.value == 100.0
    ev = finding.evidence
    assert (ev["cpu_percent"], ev["since_s"], ev["threshold_pct"], ev["duration_s"]) == (
        100.0,
        20.0,
        90.0,
        20.0,
    )
    assert ev["avg_cpu_percent"] == pytest.approx(sum(cpu) / 21)
    assert "spin" in assert_renders("cpu_spike", finding)
    # One reading below, or none at all, starts the count again.
    for gap in ({"cpu": 89.9}, {"cpu": None}):
        found = run_sweeps(
            spike,
            world,
            {T0 + (21 + i) * S: [(spin, gap if i == 0 else {"cpu": 95.0})] for i in range(22)},
        )
        assert not found[T0 + 41 * S]
        assert found[T0 + 42 * S]
    # A process missing from a sweep has gone: forgotten.
    run_sweeps(spike, world, {T0 + 60 * S: [(idle, {"cpu": 1.0})]})
    assert spike.findings(T0 + 60 * S) == []
    assert spike.tracked == 0


def test_cpu_spike_counts_a_reading_once() -> None:
    world = World()
    spin = world.spawn(world.shell, T0 - 100 * S, "spin")
    spike = build(CpuSpikeDetector, "cpu_spike", world.table)
    first = with_sample(world, spin, T0, cpu=100.0)
    observe(spike, T0, [first], None, yes)
    # The sampler did not refresh this process: the same reading again.
    observe(spike, T0 + 10 * S, [first], None, yes)
    last = with_sample(world, spin, T0 + 20 * S, cpu=90.0)
    observe(spike, T0 + 20 * S, [last], None, yes)
    (finding,) = spike.findings(T0 + 20 * S)
    assert finding.evidence["avg_cpu_percent"] == 95.0
    assert finding.evidence["since_s"] == 20.0


def test_cpu_spike_respects_accept() -> None:
    world = World()
    spin = world.spawn(world.shell, T0 - 100 * S, "spin")
    spike = build(CpuSpikeDetector, "cpu_spike", world.table, duration_s=0.0)
    found = run_sweeps(spike, world, {T0: [(spin, {"cpu": 100.0})]}, accept=lambda p: False)
    assert found[T0] == []
    found = run_sweeps(spike, world, {T0 + S: [(spin, {"cpu": 100.0})]})
    assert found[T0 + S] != []


@pytest.mark.parametrize(("rss", "fires"), [(GIB - 1, False), (GIB, True)])
def test_rss_high_threshold_and_duration(rss: int, fires: bool) -> None:
    world = World()
    hog = world.spawn(world.shell, T0 - 100 * S, "hog")
    high = build(RssHighDetector, "rss_high", world.table)
    found = run_sweeps(high, world, {T0 + i * S: [(hog, {"rss": rss})] for i in range(31)})
    assert not found[T0 + 29 * S]
    assert bool(found[T0 + 30 * S]) == fires
    if fires:
        ev = found[T0 + 30 * S][0].evidence
        assert (ev["rss_bytes"], ev["threshold_bytes"], ev["since_s"]) == (GIB, GIB, 30.0)
        assert "1024 MiB" in assert_renders("rss_high", found[T0 + 30 * S][0])


def leak_readings(
    key: ProcessKey, start: int, n: int, rss: Callable[[int], int]
) -> dict[int, list[tuple[ProcessKey, dict[str, Any]]]]:
    return {start + i * S: [(key, {"rss": rss(i)})] for i in range(n)}


def test_memory_leak_fires_on_steady_growth_only() -> None:
    world = World()
    leaky = world.spawn(world.shell, T0 - 100 * S, "leaky")
    leak = build(MemoryLeakDetector, "memory_leak", world.table)
    base = 200 * MIB
    # 2 MiB/s for 30 s, 31 sweeps: 60 MiB of growth.
    found = run_sweeps(leak, world, leak_readings(leaky, T0, 31, lambda i: base + i * 2 * MIB))
    (finding,) = found[T0 + 30 * S]
    ev = finding.evidence
    assert ev["rate_bytes_per_s"] == pytest.approx(2 * MIB)
    assert ev["growth_bytes"] == 60 * MIB
    assert ev["r2"] == pytest.approx(1.0)
    assert ev["rss_bytes"] == base + 60 * MIB
    assert ev["window_s"] == 30.0
    assert ev["samples"] == 31
    assert "grew 60 MiB" in assert_renders("memory_leak", finding)
    # Growth of 50 MiB is needed: 25 sweeps of 2 MiB is 48 MiB, 26 is 50.
    assert not found[T0 + 24 * S]
    assert found[T0 + 25 * S]
    # When memory stops growing, the finding goes once the window has moved on.
    top = base + 60 * MIB
    later = run_sweeps(leak, world, leak_readings(leaky, T0 + 31 * S, 31, lambda i: top))
    assert later[T0 + 31 * S]
    assert later[T0 + 61 * S] == []


def test_memory_leak_rejects_noise_and_slow_growth() -> None:
    world = World()
    leak = build(MemoryLeakDetector, "memory_leak", world.table)
    base = 200 * MIB
    sawtooth = world.spawn(world.shell, T0 - 100 * S, "gc")
    slow = world.spawn(world.shell, T0 - 100 * S, "slow")
    readings: dict[int, list[tuple[ProcessKey, dict[str, Any]]]] = {}
    for i in range(31):
        # Big swings with an upward drift of 2 MiB/s: R² far below 0.9.
        drift = base + (i % 5) * 40 * MIB + i * 2 * MIB
        # 48 MB in 30 s: under 50 MiB.
        readings[T0 + i * S] = [(sawtooth, {"rss": drift}), (slow, {"rss": base + i * 1_600_000})]
    found = run_sweeps(leak, world, readings)
    assert all(f == [] for f in found.values())
    # With R² not asked for, the sawtooth is a leak: the test can fail.
    leak = build(MemoryLeakDetector, "memory_leak", world.table, min_r2=0.0)
    found = run_sweeps(leak, world, readings)
    assert subjects(found[T0 + 30 * S]) == [f"process:{sawtooth}"]


@pytest.mark.parametrize(("min_samples", "fires"), [(8, False), (7, True)])
def test_memory_leak_needs_min_samples(min_samples: int, fires: bool) -> None:
    world = World()
    sparse = world.spawn(world.shell, T0 - 100 * S, "sparse")
    leak = build(MemoryLeakDetector, "memory_leak", world.table, min_samples=min_samples)
    # A sweep every 5 s: 7 readings in the 30 s window.
    readings = {T0 + i * 5 * S: [(sparse, {"rss": 100 * MIB + i * 50 * MIB})] for i in range(7)}
    found = run_sweeps(leak, world, readings)
    assert bool(found[T0 + 30 * S]) == fires


def test_fit_line() -> None:
    ts = [T0 + i * S for i in range(5)]
    assert fit_line(ts, [10, 12, 14, 16, 18]) == pytest.approx((2.0, 1.0))
    assert fit_line(ts, [7, 7, 7, 7, 7]) == (0.0, 0.0)
    assert fit_line([T0] * 5, [1, 2, 3, 4, 5]) == (0.0, 0.0)
    slope, r2 = fit_line(ts, [10, 30, 10, 30, 20])
    assert slope == pytest.approx(2.0)
    assert r2 == pytest.approx(0.1)


def test_memory_leak_with_no_growth_asked_for_handles_flat_memory() -> None:
    world = World()
    flat = world.spawn(world.shell, T0 - 100 * S, "flat")
    leak = build(
        MemoryLeakDetector, "memory_leak", world.table, min_growth_bytes=0, min_rate_bytes_per_s=0.0
    )
    found = run_sweeps(leak, world, leak_readings(flat, T0, 31, lambda i: 100 * MIB))
    assert found[T0 + 30 * S] == []
    leak = build(
        MemoryLeakDetector, "memory_leak", world.table, min_growth_bytes=0, min_rate_bytes_per_s=0.0
    )
    found = run_sweeps(leak, world, leak_readings(flat, T0 + 31 * S, 8, lambda i: 100 * MIB + i))
    assert found[T0 + 38 * S] != []


def test_memory_leak_memory_is_bounded() -> None:
    world = World()
    keys = [world.spawn(world.shell, T0 - 100 * S, "p") for _ in range(2000)]
    leak = build(MemoryLeakDetector, "memory_leak", world.table, window_s=10.0)
    for i in range(30):
        infos = [with_sample(world, k, T0 + i * S, rss=MIB * (1 + i)) for k in keys]
        observe(leak, T0 + i * S, infos, None, yes)
    # The readings of the last 10 s per process, and at most 10 s of older ones.
    assert 2000 * 11 <= leak.tracked <= 2000 * 21
    observe(leak, T0 + 31 * S, [], None, yes)
    assert leak.tracked == 0


def test_fd_exhaustion_by_ratio() -> None:
    world = World()
    server = world.spawn(world.shell, T0 - 100 * S, "server")
    unlimited = world.spawn(world.shell, T0 - 100 * S, "unlimited")
    unknown = world.spawn(world.shell, T0 - 100 * S, "unknown")
    fds = build(FdExhaustionDetector, "fd_exhaustion", world.table)
    found = run_sweeps(
        fds,
        world,
        {
            T0: [
                (server, {"fds": 818, "limit": 1024}),  # 79.9 %
                (unlimited, {"fds": 10**6, "limit": 2**63 - 1}),
                (unknown, {"fds": 10**6, "limit": None}),
            ],
            T0 + S: [(server, {"fds": 820, "limit": 1024})],  # 80.1 %
        },
    )
    assert found[T0] == []
    (finding,) = found[T0 + S]
    ev = finding.evidence
    assert (ev["fds"], ev["limit"], ev["trigger"], ev["eta_s"]) == (820, 1024, "ratio", None)
    assert ev["ratio_used"] == pytest.approx(820 / 1024)
    assert "820 of 1024" in assert_renders("fd_exhaustion", finding)


@pytest.mark.parametrize(("per_s", "fires"), [(10, False), (20, True)])
def test_fd_exhaustion_by_trend(per_s: int, fires: bool) -> None:
    world = World()
    leaky = world.spawn(world.shell, T0 - 100 * S, "leaky")
    fds = build(FdExhaustionDetector, "fd_exhaustion", world.table)
    readings = {T0 + i * S: [(leaky, {"fds": 100 + per_s * i, "limit": 1024})] for i in range(5)}
    found = run_sweeps(fds, world, readings)
    assert not found[T0 + 3 * S]  # four readings: no trend yet
    # 10/s from 140 reaches 1024 in 88 s (beyond 60 s); 20/s from 180 in 42 s.
    assert bool(found[T0 + 4 * S]) == fires
    if fires:
        ev = found[T0 + 4 * S][0].evidence
        assert ev["trigger"] == "trend"
        assert ev["rate_per_s"] == pytest.approx(20.0)
        assert ev["eta_s"] == pytest.approx((1024 - 180) / 20)


def host_at(**psi: float) -> Callable[[int], HostSample]:
    return lambda ts: HostSample(ts, 8, 1.0, {k.replace("_", "."): v for k, v in psi.items()})


def test_cpu_thrashing_with_psi() -> None:
    world = World()
    burners = [world.spawn(world.shell, T0 - 100 * S, f"burn{i}") for i in range(7)]
    thrash = build(CpuThrashingDetector, "cpu_thrashing", world.table)
    readings = {
        T0 + i * S: [(k, {"cpu": 99.0 - j}) for j, k in enumerate(burners)] for i in range(31)
    }
    found = run_sweeps(thrash, world, readings, host=host_at(cpu_some=70.0))
    assert not found[T0 + 29 * S]
    (finding,) = found[T0 + 30 * S]
    ev = finding.evidence
    assert (ev["measure"], ev["figure"], ev["threshold"], ev["since_s"]) == (
        "psi_cpu_some_pct",
        70.0,
        70.0,
        30.0,
    )
    expected = ", ".join(f"burn{j}({k.pid}) {99 - j}%" for j, k in enumerate(burners[:5]))
    assert ev["top_consumers"] == expected
    assert "psi_cpu_some_pct 70.0" in assert_renders("cpu_thrashing", finding)
    # 69.9 % is below, and so is a sweep without host figures.
    thrash = build(CpuThrashingDetector, "cpu_thrashing", world.table)
    found = run_sweeps(thrash, world, readings, host=host_at(cpu_some=69.9))
    assert not any(found.values())
    # The rule's condition narrows the consumers named.
    thrash = build(CpuThrashingDetector, "cpu_thrashing", world.table, duration_s=0.0)
    found = run_sweeps(
        thrash,
        world,
        {T0: readings[T0]},
        host=host_at(cpu_some=90.0),
        accept=lambda p: p.comm == "burn3",
    )
    assert found[T0][0].evidence["top_consumers"] == f"burn3({burners[3].pid}) 96%"


def test_cpu_thrashing_names_consumers_the_rule_keeps_among_many() -> None:
    world = World()
    busy = [world.spawn(world.shell, T0 - 100 * S, f"job{i}") for i in range(40)]
    thrash = build(CpuThrashingDetector, "cpu_thrashing", world.table, duration_s=0.0, top=2)
    readings = {T0: [(k, {"cpu": 50.0 + i}) for i, k in enumerate(busy)]}
    kept = {busy[0].pid, busy[1].pid, busy[30].pid}
    found = run_sweeps(
        thrash, world, readings, host=host_at(cpu_some=90.0), accept=lambda p: p.pid in kept
    )
    assert found[T0][0].evidence["top_consumers"] == (
        f"job30({busy[30].pid}) 80%, job1({busy[1].pid}) 51%"
    )


@pytest.mark.parametrize(("load1", "fires"), [(15.9, False), (16.0, True)])
def test_cpu_thrashing_falls_back_to_load_per_cpu(load1: float, fires: bool) -> None:
    world = World()
    thrash = build(CpuThrashingDetector, "cpu_thrashing", world.table)
    found = run_sweeps(
        thrash,
        world,
        {T0 + i * S: [] for i in range(31)},
        host=lambda ts: HostSample(ts, 8, load1, {}),
    )
    assert bool(found[T0 + 30 * S]) == fires
    if fires:
        ev = found[T0 + 30 * S][0].evidence
        assert (ev["measure"], ev["figure"], ev["load1"], ev["cpus"]) == (
            "load_per_cpu",
            2.0,
            16.0,
            8,
        )
    # A sweep without host figures breaks the run.
    observe(thrash, T0 + 31 * S, [], None, yes)
    assert thrash.findings(T0 + 31 * S) == []


def test_psi_pressure_sustained_and_absent() -> None:
    world = World()
    mem = build(PsiPressureDetector, "psi_pressure", world.table)
    sweeps: dict[int, list[tuple[ProcessKey, dict[str, Any]]]] = {T0 + i * S: [] for i in range(31)}
    found = run_sweeps(mem, world, sweeps, host=host_at(memory_full=40.0, memory_some=90.0))
    assert not found[T0 + 29 * S]
    (finding,) = found[T0 + 30 * S]
    assert finding.evidence == {
        "pressure_pct": 40.0,
        "resource": "memory",
        "kind": "full",
        "threshold_pct": 40.0,
        "since_s": 30.0,
        "duration_s": 30.0,
    }
    assert "memory pressure (full) at 40.0%" in assert_renders("psi_pressure", finding)
    mem = build(PsiPressureDetector, "psi_pressure", world.table)
    assert not any(run_sweeps(mem, world, sweeps, host=host_at(memory_full=39.9)).values())
    io = build(PsiPressureDetector, "psi_pressure", world.table, resource="io", kind="some")
    assert not any(run_sweeps(io, world, sweeps, host=host_at()).values())  # no PSI
    assert run_sweeps(io, world, sweeps, host=host_at(io_some=99.0))[T0 + 30 * S]


def _naive_trend(
    readings: Sequence[tuple[int, int]], now: int, window_s: float
) -> tuple[int, int, float, float] | None:
    """(samples, growth, slope, R²) over the window from every reading ever kept."""
    inside = [(t, v) for t, v in readings if t >= now - int(window_s * S)]
    if not inside:
        return None
    ts, values = [t for t, _ in inside], [v for _, v in inside]
    slope, r2 = fit_line(ts, values) if len(inside) > 1 else (0.0, 0.0)
    return len(inside), values[-1] - values[0], slope, r2


@pytest.mark.parametrize("seed", range(6))
def test_trend_series_held_flat_or_dense_fit_the_same_points(seed: int) -> None:
    # Idle stretches are held as one flat run and rebuilt at the sweep times
    # when the reading changes: every finding must equal a fit over every reading.
    rng = random.Random(seed)  # noqa: S311 - reproducible shapes, not secrets
    world = World()
    key = world.spawn(world.shell, T0 - 100 * S, "shape")
    leak = build(MemoryLeakDetector, "memory_leak", world.table, window_s=10.0, min_samples=4)
    rss, readings = 100 * MIB, list[tuple[int, int]]()
    phases = [(rng.choice(("flat", "ramp", "step")), rng.randint(3, 25)) for _ in range(8)]
    now, fired = T0, 0
    for shape, length in phases:
        for _ in range(length):
            now += S
            if shape == "ramp":
                rss += 20 * MIB
            elif shape == "step" and rng.random() < 0.2:
                rss += rng.choice((-1, 1)) * 30 * MIB
            readings.append((now, rss))
            observe(leak, now, [with_sample(world, key, now, rss=rss)], None, yes)
            found = leak.findings(now)
            naive = _naive_trend(readings, now, 10.0)
            assert naive is not None
            samples, growth, slope, r2 = naive
            fires = samples >= 4 and growth >= 50 * MIB and slope >= MIB and r2 >= 0.9
            assert bool(found) == fires, (shape, now, naive)
            if found:
                fired += 1
                evidence = found[0].evidence
                assert (evidence["samples"], evidence["growth_bytes"]) == (samples, growth)
                assert evidence["rate_bytes_per_s"] == pytest.approx(slope)
                assert evidence["r2"] == pytest.approx(r2)
    # Every shape leaks somewhere: a ramp of 4 s or more passes all the bars.
    assert fired or not any(shape == "ramp" and n >= 4 for shape, n in phases), phases
    # Flat for a whole window: folded back to one held reading.
    for _ in range(12):
        now += S
        observe(leak, now, [with_sample(world, key, now, rss=rss)], None, yes)
    assert leak.tracked == 1


def test_fd_limit_share_fires_for_a_process_that_never_changes() -> None:
    world = World()
    key = world.spawn(world.shell, T0 - 100 * S, "steady")
    fd = build(FdExhaustionDetector, "fd_exhaustion", world.table)
    for i in range(40):  # 900 of 1024 from the first reading on, never changing
        observe(
            fd, T0 + i * S, [with_sample(world, key, T0 + i * S, fds=900, limit=1024)], None, yes
        )
        (finding,) = fd.findings(T0 + i * S)
        assert finding.evidence["trigger"] == "ratio"
        assert finding.evidence["eta_s"] is None
    assert fd.tracked == 1
