"""The rules engine and the alert store, driven by synthetic events over a real
process table and by sampler sweeps (``observe_sweep``).

Every clock here is the kernel's: alerts open, refresh, resolve and reopen on
the timestamps of events and sweeps, so seconds of kernel time pass in
microseconds of test time.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from otel_linnix.events import EventKind, ProcessEvent, ProcessKey
from otel_linnix.process_table import HostSample, ProcessInfo, ProcessSample, ProcessTable
from otel_linnix.recording import iso_time
from otel_linnix.rules.alerts import Alert, AlertStore, alert_id
from otel_linnix.rules.condition import compile_condition
from otel_linnix.rules.engine import RulesEngine
from otel_linnix.rules.loader import load_rules
from otel_linnix.rules.model import Admit, Detector, Finding, Rule, Severity, Subject
from tests.unit.conftest import make_event

S = 1_000_000_000
MS = 1_000_000
MIB = 1024 * 1024
GIB = 1024 * MIB
T0 = 1_000 * S  # the machine has been up for 1000 s
SHIPPED = Path(__file__).resolve().parents[2] / "config" / "rules.yaml"
FORK, EXEC, EXIT = EventKind.FORK, EventKind.EXEC, EventKind.EXIT
USERS = {0: "root", 1000: "alice"}


def make_rule(
    name: str,
    detector: str,
    params: dict[str, object] | None = None,
    *,
    condition: str | None = None,
    exceptions: Sequence[str] = (),
    message: str = "{rule}: {value:.1f}",
    cooldown_s: float = 60.0,
    resolve_after_s: float = 10.0,
    enabled: bool = True,
    severity: Severity = Severity.HIGH,
) -> Rule:
    return Rule(
        name=name,
        detector=detector,
        params=dict(params or {}),
        severity=severity,
        cooldown_s=cooldown_s,
        message=message,
        resolve_after_s=resolve_after_s,
        description=f"{name} for tests",
        tags=("test",),
        enabled=enabled,
        condition_text=condition,
        condition=compile_condition(condition) if condition is not None else None,
        exceptions=tuple(compile_condition(text) for text in exceptions),
        origin=f"test: rule {name!r}",
    )


def storm_rule(
    name: str = "storm",
    *,
    condition: str | None = None,
    exceptions: Sequence[str] = (),
    cooldown_s: float = 60.0,
    resolve_after_s: float = 10.0,
    enabled: bool = True,
) -> Rule:
    """Host-wide fork storm: 100 forks/s over 1 s."""
    return make_rule(
        name,
        "fork_storm",
        {"threshold_per_s": 100.0, "window_s": 1.0},
        message="{rate:.0f} forks/s ({count} in {window_s:g} s)",
        condition=condition,
        exceptions=exceptions,
        cooldown_s=cooldown_s,
        resolve_after_s=resolve_after_s,
        enabled=enabled,
    )


def snapshot(alert: Alert) -> Alert:
    return dataclasses.replace(alert, evidence=dict(alert.evidence))


class Host:
    """A real process table with init and a login shell, the engine over it,
    and every alert transition it delivered (as it was at the transition)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.table = ProcessTable(max_entries=100_000, exited_retention_ns=3600 * S)
        self.transitions: list[Alert] = []
        self.engine = RulesEngine(
            rules,
            self.table,
            users=USERS.get,
            on_alert=lambda alert: self.transitions.append(snapshot(alert)),
            host="node-1",
        )
        self._next_pid = 1000
        self.init = self.spawn(None, 1 * S, "systemd", "/usr/lib/systemd/systemd", pid=1)
        self.shell = self.spawn(self.init, 10 * S, "bash", "/usr/bin/bash", pid=100, uid=1000)

    def pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def spawn(
        self,
        parent: ProcessKey | None,
        ts: int,
        comm: str,
        exe: str,
        *,
        pid: int | None = None,
        uid: int = 0,
        **fields: Any,
    ) -> ProcessKey:
        """A running process the table knows (the engine never saw its birth)."""
        events = self.born(parent, ts, comm, exe, pid=pid, uid=uid, **fields)
        self.table.apply_batch(events)
        return events[0].key

    def born(
        self,
        parent: ProcessKey | None,
        ts: int,
        comm: str,
        exe: str | None,
        *,
        pid: int | None = None,
        uid: int = 0,
        **fields: Any,
    ) -> list[ProcessEvent]:
        """Fork (with the parent's comm) and, given ``exe``, exec."""
        pid = self.pid() if pid is None else pid
        parent_info = self.table.get(parent) if parent is not None else None
        fork = make_event(
            FORK,
            pid,
            ts,
            ppid=parent.pid if parent is not None else 0,
            parent_start_time_ns=parent.start_time_ns if parent is not None else None,
            comm=parent_info.comm if parent_info is not None else comm,
            uid=uid,
            **fields,
        )
        if exe is None:
            return [fork]
        exec_ = make_event(
            EXEC, pid, ts, ts_ns=ts + MS // 10, comm=comm, exe=exe, argv=(comm,), uid=uid, **fields
        )
        return [fork, exec_]

    def forks(
        self, parent: ProcessKey, start: int, count: int, every: int = 5 * MS
    ) -> list[ProcessEvent]:
        """``count`` children of ``parent``, one every ``every`` ns (200/s by default)."""
        events: list[ProcessEvent] = []
        for i in range(count):
            events += self.born(parent, start + i * every, "", None)
        return events

    def send(self, events: Sequence[ProcessEvent]) -> None:
        """What the pipeline does: the table first, then the engine (a Sink)."""
        self.table.apply_batch(events)
        self.engine.emit(events)

    def storm(self, start: int, count: int = 400, batch: int = 50) -> list[list[ProcessEvent]]:
        """200 forks/s by the shell from ``start``, sent in batches; returns them."""
        events = self.forks(self.shell, start, count)
        batches = [events[i : i + batch] for i in range(0, len(events), batch)]
        for b in batches:
            self.send(b)
        return batches

    def sweep(self, now: int, processes: Sequence[ProcessInfo] = ()) -> None:
        """A sampler sweep that read ``processes`` (their samples), as the agent
        delivers it: the table takes the readings, then the engine."""
        samples = {p.key: p.sample for p in processes if p.sample is not None}
        self.table.update_samples(samples)
        self.engine.observe_sweep(now, None, samples)

    def states(self) -> list[tuple[str, str]]:
        return [(a.state, a.id) for a in self.transitions]


def sampled(info: ProcessInfo | None, ts: int, **reading: object) -> ProcessInfo:
    """``info`` carrying one sampler reading taken at ``ts``."""
    assert info is not None
    values: dict[str, object] = {
        "cpu_time_ns": None,
        "cpu_percent": 1.0,
        "rss_bytes": 10 * MIB,
        "fd_count": 10,
        "fd_limit": 1024,
        "threads": 1,
        "state": "S",
    }
    values.update(reading)
    return info._replace(sample=ProcessSample(ts, **values))  # type: ignore[arg-type]


# ---- one incident, one alert ------------------------------------------------------------


def test_a_fork_storm_fires_one_alert_with_a_stable_id() -> None:
    host = Host([storm_rule()])
    fired_at: int | None = None
    events = host.forks(host.shell, T0, 400)
    batches = [events[i : i + 50] for i in range(0, len(events), 50)]
    for batch in batches:
        host.send(batch)
        if host.transitions and fired_at is None:
            fired_at = batch[-1].ts_ns
    assert fired_at is not None
    assert fired_at < batches[-1][-1].ts_ns  # it fired before the storm ended
    (alert,) = host.transitions  # refreshes are not transitions
    assert alert.state == "firing"
    assert alert.rule == "storm"
    assert alert.subject == Subject("host", "host")
    assert alert.first_seen_ns == alert.last_seen_ns == fired_at
    assert alert.id == alert_id("storm", "host", fired_at)
    assert alert.reopened == 0
    assert alert.severity is Severity.HIGH
    assert alert.host == "node-1"
    assert alert.tags == ("test",)
    assert alert.description == "storm for tests"
    assert alert.resolved_ns is None


def test_a_firing_alert_is_refreshed_in_place() -> None:
    host = Host([storm_rule()])
    batches = host.storm(T0)
    (at_firing,) = host.transitions
    (live,) = host.engine.firing()
    assert live.id == at_firing.id
    assert live.first_seen_ns == at_firing.first_seen_ns
    assert live.last_seen_ns == batches[-1][-1].ts_ns
    assert live.evidence["count"] > at_firing.evidence["count"]
    assert live.evidence["count"] in (200, 201)  # the last second of a 200/s storm
    assert live.message == f"{live.evidence['rate']:.0f} forks/s ({live.evidence['count']} in 1 s)"
    assert live.message != at_firing.message
    assert host.engine.stats()["fired"] == 1


@pytest.mark.parametrize("clock", ["events", "sweeps"])
def test_an_alert_resolves_after_resolve_after_s_of_kernel_time(clock: str) -> None:
    host = Host([storm_rule(resolve_after_s=10.0)])
    batches = host.storm(T0)
    last = batches[-1][-1].ts_ns
    quiet = host.spawn(host.shell, T0 - S, "idle", "/usr/bin/idle")

    def tick(now: int) -> None:
        if clock == "events":  # anything but forks: the storm is over
            host.send([make_event(EXEC, quiet.pid, quiet.start_time_ns, ts_ns=now, comm="idle")])
        else:
            host.sweep(now)

    tick(last + 5 * S)
    tick(last + 10 * S - 1)
    assert [a.state for a in host.transitions] == ["firing"]
    tick(last + 10 * S)
    assert [a.state for a in host.transitions] == ["firing", "resolved"]
    resolved = host.transitions[-1]
    assert resolved.id == host.transitions[0].id
    assert resolved.resolved_ns == last + 10 * S
    assert resolved.last_seen_ns == last
    assert host.engine.firing() == []
    tick(last + 20 * S)
    assert len(host.transitions) == 2  # resolved once
    assert host.engine.stats()["resolved"] == 1


def test_a_flare_up_within_the_cooldown_reopens_the_same_alert() -> None:
    host = Host([storm_rule(cooldown_s=60.0)])
    first = host.storm(T0)[-1][-1].ts_ns
    host.sweep(first + 10 * S)  # resolved
    second = host.storm(first + 40 * S)[-1][-1].ts_ns
    assert [a.state for a in host.transitions] == ["firing", "resolved", "firing"]
    opened, _, reopened = host.transitions
    assert reopened.id == opened.id
    assert reopened.reopened == 1
    assert reopened.first_seen_ns == opened.first_seen_ns
    assert reopened.resolved_ns is None
    assert reopened.last_seen_ns > first + 40 * S
    host.sweep(second + 10 * S)
    assert host.states()[-1] == ("resolved", opened.id)
    stats = host.engine.stats()
    assert (stats["fired"], stats["resolved"]) == (1, 2)


def test_after_the_cooldown_a_flare_up_is_a_new_alert() -> None:
    host = Host([storm_rule(cooldown_s=60.0)])
    first = host.storm(T0)[-1][-1].ts_ns
    host.sweep(first + 10 * S)  # resolved
    host.sweep(first + 71 * S)  # 61 s after resolution: past the cooldown
    batches = host.storm(first + 100 * S)
    assert [a.state for a in host.transitions] == ["firing", "resolved", "firing"]
    old, new = host.transitions[0], host.transitions[2]
    assert new.id != old.id
    assert new.id == alert_id("storm", "host", new.first_seen_ns)
    assert first + 100 * S < new.first_seen_ns <= batches[-1][-1].ts_ns
    assert new.reopened == 0
    assert host.engine.stats()["fired"] == 2


def test_after_the_cooldown_a_flare_up_is_a_new_alert_with_no_evaluation_between() -> None:
    # The storm after the quiet spell arrives in one batch: no evaluation ran
    # between the resolution and this finding (an event-only recording, a
    # sampler that is off). The cooldown has long passed all the same.
    host = Host([storm_rule(cooldown_s=60.0)])
    first = host.storm(T0)[-1][-1].ts_ns
    host.sweep(first + 10 * S)  # resolved
    host.storm(first + 900 * S, batch=400)
    assert [a.state for a in host.transitions] == ["firing", "resolved", "firing"]
    old, new = host.transitions[0], host.transitions[2]
    assert new.reopened == 0
    assert new.id != old.id


# ---- which processes count -----------------------------------------------------------


@pytest.mark.parametrize(
    ("parent", "fired"),
    [("make", {"everything"}), ("bash", {"everything", "not_make", "not_under_make"})],
)
def test_condition_and_exceptions_exclude_processes(parent: str, fired: set[str]) -> None:
    host = Host(
        [
            storm_rule("everything"),
            storm_rule("not_make", condition="not comm = make"),
            storm_rule("not_under_make", exceptions=["parent.exe_name = make"]),
        ]
    )
    forker = (
        host.spawn(host.shell, T0 - S, "make", "/usr/bin/make") if parent == "make" else host.shell
    )
    host.send(host.forks(forker, T0, 300))  # children of make are "make" until they exec
    assert {a.rule for a in host.transitions} == fired


@pytest.mark.parametrize(("image", "fires"), [("make", False), ("sleep", True)])
def test_fork_facts_come_from_the_table_with_the_exec_image(image: str, fires: bool) -> None:
    host = Host([storm_rule(condition="not comm = make")])
    events: list[ProcessEvent] = []
    for i in range(300):
        # the fork record says "bash" (inherited); the table already knows the exec
        events += host.born(host.shell, T0 + i * 5 * MS, image, f"/usr/bin/{image}")
    assert {ev.comm for ev in events if ev.kind is FORK} == {"bash"}
    host.send(events)
    assert bool(host.transitions) is fires


@pytest.mark.parametrize(
    ("condition", "fires"),
    [
        ("exe_name = worker and user = alice and parent.comm = bash", True),
        ("exe = /opt/app/worker and parent.exe_name = bash and uid = 1000", True),
        ("exe_name = other", False),
        ("user = root", False),
        ("parent.comm = systemd", False),
    ],
)
def test_exit_facts_come_from_the_table(condition: str, fires: bool) -> None:
    host = Host(
        [
            make_rule(
                "loop",
                "crash_loop",
                {"min_exits": 5, "window_s": 10.0, "group_by": "comm"},
                condition=condition,
                message="{comm} exited {exits} times ({last_status})",
            )
        ]
    )
    events: list[ProcessEvent] = []
    for i in range(5):
        born = host.born(host.shell, T0 + i * S, "worker", "/opt/app/worker", uid=1000)
        key = born[0].key
        # exit records carry no executable: only the table knows it
        exit_ = make_event(
            EXIT,
            key.pid,
            key.start_time_ns,
            ts_ns=T0 + i * S + 100 * MS,
            comm="worker",
            exit_code=3,
        )
        events += [*born, exit_]
    assert all(ev.exe is None for ev in events if ev.kind is EXIT)
    host.send(events)
    if fires:
        (alert,) = host.transitions
        assert alert.message == "worker exited 5 times (status 3)"
        assert alert.subject.kind == "executable"
    else:
        assert host.transitions == []


def test_disabled_rules_never_fire() -> None:
    host = Host([storm_rule("off", enabled=False), storm_rule("on")])
    host.storm(T0)
    host.sweep(T0 + 2 * S)
    assert {a.rule for a in host.transitions} == {"on"}
    assert host.engine.stats()["rules"] == 1


# ---- sweeps ----------------------------------------------------------------------------


def test_a_leak_seen_in_sweeps_fires_and_resolves_on_sweep_time() -> None:
    host = Host(
        [
            make_rule(
                "leak",
                "memory_leak",
                {"window_s": 30.0, "min_samples": 8, "min_growth_bytes": 50 * MIB},
                message="{comm} ({pid}) RSS grows {rate_bytes_per_s:.0f} B/s",
                resolve_after_s=5.0,
            )
        ]
    )
    leaker = host.spawn(host.shell, T0 - 60 * S, "leaker", "/opt/leaker", pid=4242)
    steady = host.spawn(host.shell, T0 - 60 * S, "steady", "/opt/steady")
    for i in range(10):
        now = T0 + i * S
        host.sweep(
            now,
            [
                sampled(host.table.get(leaker), now, rss_bytes=100 * MIB + i * 20 * MIB),
                sampled(host.table.get(steady), now, rss_bytes=500 * MIB),
            ],
        )
        assert bool(host.transitions) is (i >= 7), i  # 8 samples and 140 MiB of growth
    (alert,) = host.transitions
    assert alert.first_seen_ns == T0 + 7 * S
    assert alert.subject.key == f"process:{leaker}"
    assert alert.subject.pid == 4242
    assert alert.message == "leaker (4242) RSS grows 20971520 B/s"
    assert alert.evidence["growth_bytes"] == 7 * 20 * MIB
    (live,) = host.engine.firing()
    assert live.last_seen_ns == T0 + 9 * S
    assert live.evidence["growth_bytes"] == 9 * 20 * MIB
    # The leaker is gone from the sweeps: resolved 5 s of sweep time later.
    host.sweep(T0 + 14 * S - 1)
    assert len(host.transitions) == 1
    host.sweep(T0 + 14 * S)
    assert host.states() == [("firing", alert.id), ("resolved", alert.id)]


def test_sample_rules_apply_conditions_and_exceptions() -> None:
    host = Host(
        [
            make_rule(
                "big",
                "rss_high",
                {"threshold_bytes": GIB, "duration_s": 0.0},
                condition="parent.comm = bash",
                exceptions=["exe_name = postgres"],
            )
        ]
    )
    db = host.spawn(host.shell, T0 - S, "postgres", "/usr/lib/postgresql/bin/postgres")
    app = host.spawn(host.shell, T0 - S, "java", "/usr/bin/java")
    daemon = host.spawn(host.init, T0 - S, "java", "/usr/bin/java")
    host.sweep(
        T0,
        [sampled(host.table.get(k), T0, rss_bytes=2 * GIB) for k in (db, app, daemon)],
    )
    assert [a.subject.key for a in host.transitions] == [f"process:{app}"]


def test_observe_sweep_reads_samples_from_the_table() -> None:
    host = Host([make_rule("big", "rss_high", {"threshold_bytes": GIB, "duration_s": 2.0})])
    java = host.spawn(host.shell, T0 - S, "java", "/usr/bin/java")
    for i in range(3):
        now = T0 + i * S
        reading = ProcessSample(now, None, 5.0, 2 * GIB, 50, 1024, 30, "S")
        host.table.update_samples({java: reading})
        host.engine.observe_sweep(now, HostSample(now, 2, 0.5, {}), {java: reading})
    (alert,) = host.transitions
    assert alert.first_seen_ns == T0 + 2 * S
    assert alert.subject.key == f"process:{java}"


# ---- messages and stats ----------------------------------------------------------------


def test_message_placeholders_come_from_evidence_and_subject() -> None:
    message = (
        "{rule}: {comm}({pid}) exe={exe} in {container} at {value:.0f}/s "
        "({count} forks, threshold {threshold_per_s:g}) {nope} {pid.real} {subject}"
    )
    host = Host(
        [
            make_rule(
                "by_parent",
                "fork_storm",
                {"threshold_per_s": 100.0, "window_s": 1.0, "per": "parent"},
                message=message,
            )
        ]
    )
    boxed = host.spawn(
        host.shell,
        T0 - S,
        "runner",
        "/usr/bin/runner",
        pid=700,
        cgroup_id=77,
        container_id="c0ffee",
        container_runtime="docker",
    )
    host.send(host.forks(boxed, T0, 150))
    (alert,) = host.transitions
    assert alert.subject.kind == "parent"
    assert alert.message == (
        f"by_parent: runner(700) exe=/usr/bin/runner in c0ffee at {alert.evidence['rate']:.0f}/s "
        f"({alert.evidence['count']} forks, threshold 100) {{nope}} {{pid.real}} "
        f"process:{boxed}"
    )


def test_stats_count_rules_alerts_and_evaluations() -> None:
    host = Host([storm_rule("a"), storm_rule("b", enabled=False), make_rule("c", "psi_pressure")])
    assert host.engine.stats() == {
        "rules": 2,
        "firing": 0,
        "fired": 0,
        "resolved": 0,
        "evaluations": 0,
    }
    batches = host.storm(T0)
    host.sweep(T0 + 30 * S)
    assert host.engine.stats() == {
        "rules": 2,
        "firing": 0,
        "fired": 1,
        "resolved": 1,
        "evaluations": len(batches) + 1,
    }
    assert host.engine.fired == {("a", "high"): 1}
    host.engine.emit([])  # nothing to evaluate
    assert host.engine.stats()["evaluations"] == len(batches) + 1


# ---- two threads ---------------------------------------------------------------------


class Guarded:
    """A detector wrapper that notices two calls into the engine's detectors at once."""

    def __init__(self, inner: Detector, probe: threading.Lock, overlaps: list[str]) -> None:
        self.inner = inner
        self.probe = probe
        self.overlaps = overlaps

    def _run(self, what: str, call: Callable[[], object]) -> object:
        entered = self.probe.acquire(blocking=False)
        if not entered:
            self.overlaps.append(what)
        try:
            return call()
        finally:
            if entered:
                self.probe.release()

    def observe_event(self, ev: ProcessEvent, accept: Callable[[ProcessEvent], bool]) -> None:
        self._run("event", lambda: self.inner.observe_event(ev, accept))

    def observe_samples(
        self,
        now_ns: int,
        samples: Mapping[ProcessKey, ProcessSample],
        host: HostSample | None,
        admit: Admit,
    ) -> None:
        self._run("samples", lambda: self.inner.observe_samples(now_ns, samples, host, admit))

    def findings(self, now_ns: int) -> list[Finding]:
        found: list[Finding] = []
        self._run("findings", lambda: found.extend(self.inner.findings(now_ns)))
        return found


def test_emit_and_observe_sweep_from_two_threads_are_serialised() -> None:
    host = Host(
        [
            make_rule("storm", "fork_storm", {"threshold_per_s": 50.0, "window_s": 5.0}),
            make_rule("hot", "cpu_spike", {"threshold_pct": 50.0, "duration_s": 0.0}),
        ]
    )
    probe, overlaps = threading.Lock(), list[str]()
    for armed in host.engine._event_rules + host.engine._sample_rules:
        armed.detector = Guarded(armed.detector, probe, overlaps)
    spinners = [host.spawn(host.shell, T0 - S, "spin", "/usr/bin/spin") for _ in range(200)]
    sweeps = [
        (now, [sampled(host.table.get(k), now, cpu_percent=99.0) for k in spinners])
        for now in (T0 + j * 25 * MS for j in range(40))
    ]
    events = host.forks(host.shell, T0, 1000, every=MS)
    batches = [events[i : i + 25] for i in range(0, len(events), 25)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(work: Iterable[Callable[[], None]]) -> None:
        try:
            start.wait()
            for step in work:
                step()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    def emit_all() -> None:
        run(partial(host.send, b) for b in batches)

    def sweep_all() -> None:
        run(partial(host.sweep, now, infos) for now, infos in sweeps)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=emit_all), threading.Thread(target=sweep_all)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sys.setswitchinterval(previous)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert overlaps == []
    stats = host.engine.stats()
    assert stats["evaluations"] == len(batches) + len(sweeps)
    # One storm alert and one per spinning process, each delivered exactly once.
    assert stats["fired"] == stats["firing"] == 201
    assert len(host.transitions) == 201
    assert len({a.id for a in host.transitions}) == 201
    assert host.engine.fired == {("storm", "high"): 1, ("hot", "high"): 200}


# ---- the shipped rules' messages -------------------------------------------------------


def test_shipped_crash_loop_message_names_a_program_that_never_exec_ed() -> None:
    host = Host(load_rules(SHIPPED).enabled)
    server = host.spawn(host.shell, T0 - 60 * S, "gunicorn", "/usr/bin/python3.11")
    events: list[ProcessEvent] = []
    for i in range(8):  # forked workers (no exec of their own) dying of SIGSEGV
        (fork,) = host.born(server, T0 + i * S, "", None)
        events += [
            fork,
            make_event(
                EXIT,
                fork.pid,
                fork.start_time_ns,
                ts_ns=fork.ts_ns + 200 * MS,
                comm="gunicorn",
                exit_signal=11,
            ),
        ]
    host.send(events)
    (alert,) = [a for a in host.transitions if a.rule == "crash_loop"]
    assert "gunicorn" in alert.message
    assert "None" not in alert.message, alert.message


def test_shipped_fd_exhaustion_message_without_a_trend() -> None:
    host = Host(load_rules(SHIPPED).enabled)
    hog = host.spawn(host.shell, T0 - 60 * S, "fdhog", "/opt/fdhog", pid=4343)
    for i in range(3):  # steady at 88 % of the limit: no growth, so no eta
        now = T0 + i * S
        host.sweep(now, [sampled(host.table.get(hog), now, fd_count=900, fd_limit=1024)])
    (alert,) = [a for a in host.transitions if a.rule == "fd_exhaustion"]
    assert alert.message.startswith("fdhog (4343) has 900 of 1024 file descriptors open")
    assert "None" not in alert.message, alert.message


# ---- the alert store --------------------------------------------------------------------

OFFSET = 1_700_000_000 * S  # boot clock -> wall clock


def make_alert(n: int, *, state: str = "firing", last: int | None = None) -> Alert:
    first = T0 + n * S
    return Alert(
        id=f"alert-{n}",
        rule="leak",
        severity=Severity.CRITICAL,
        subject=Subject("process", f"process:{4000 + n}@{T0}", 4000 + n, T0, "leaker", "/x"),
        message=f"leak {n}",
        evidence={"growth_bytes": n * MIB},
        first_seen_ns=first,
        last_seen_ns=first if last is None else last,
        state=state,
        resolved_ns=(first + 10 * S) if state == "resolved" else None,
        tags=("memory",),
        description="grows",
        host="node-1",
    )


def test_alert_json_shape() -> None:
    alert = make_alert(1, state="resolved", last=T0 + 3 * S)
    data = alert.to_json(OFFSET)
    assert data == {
        "id": "alert-1",
        "rule": "leak",
        "severity": "critical",
        "state": "resolved",
        "message": "leak 1",
        "host": "node-1",
        "subject": {
            "kind": "process",
            "key": f"process:4001@{T0}",
            "pid": 4001,
            "start_time_ns": T0,
            "comm": "leaker",
            "exe": "/x",
            "container_id": None,
        },
        "evidence": {"growth_bytes": MIB},
        "first_seen": iso_time(T0 + S + OFFSET),
        "last_seen": iso_time(T0 + 3 * S + OFFSET),
        "resolved_at": iso_time(T0 + 11 * S + OFFSET),
        "first_seen_ns": T0 + S,
        "last_seen_ns": T0 + 3 * S,
        "resolved_ns": T0 + 11 * S,
        "reopened": 0,
        "tags": ["memory"],
        "description": "grows",
    }
    assert data["first_seen"] == "2023-11-14T22:30:01.000000000Z"
    assert make_alert(2).to_json(OFFSET)["resolved_at"] is None


def test_alert_ids_are_stable_and_distinct() -> None:
    assert alert_id("r", "host", 5) == alert_id("r", "host", 5)
    assert len(alert_id("r", "host", 5)) == 16
    assert len({alert_id("r", "host", 5), alert_id("r", "host", 6), alert_id("s", "host", 5)}) == 3
    assert alert_id("r", "process:1@2", 5) != alert_id("r", "process:1@3", 5)


def test_store_moves_alerts_between_firing_and_resolved() -> None:
    store = AlertStore(lambda: OFFSET)
    alert = make_alert(1)
    assert store.record(alert)["state"] == "firing"
    assert store.counts() == {"firing": 1, "resolved": 0, "dropped": 0}
    alert.state, alert.resolved_ns = "resolved", T0 + 20 * S
    assert store.record(alert)["resolved_at"] == iso_time(T0 + 20 * S + OFFSET)
    assert store.counts() == {"firing": 0, "resolved": 1, "dropped": 0}
    assert [a["state"] for a in store.alerts(None, None)] == ["resolved"]
    alert.state, alert.resolved_ns, alert.reopened = "firing", None, 1
    store.record(alert)  # reopened: the same id leaves the resolved list
    assert store.counts() == {"firing": 1, "resolved": 0, "dropped": 0}
    (only,) = store.alerts(None, None)
    assert (only["id"], only["reopened"]) == ("alert-1", 1)


def test_store_keeps_a_bounded_number_of_resolved_alerts() -> None:
    store = AlertStore(lambda: OFFSET, max_resolved=3)
    for n in range(5):
        store.record(make_alert(n, state="resolved"))
    store.record(make_alert(9))
    assert store.counts() == {"firing": 1, "resolved": 3, "dropped": 2}
    assert [a["id"] for a in store.alerts("resolved", None)] == ["alert-4", "alert-3", "alert-2"]
    assert [a["id"] for a in store.alerts("firing", None)] == ["alert-9"]


def test_store_lists_newest_first_and_filters_by_state_and_time() -> None:
    store = AlertStore(lambda: OFFSET)
    store.record(make_alert(1, last=T0 + 50 * S))
    store.record(make_alert(2, state="resolved", last=T0 + 40 * S))
    store.record(make_alert(3, last=T0 + 60 * S))
    store.record(make_alert(4, state="resolved", last=T0 + 70 * S))
    assert [a["id"] for a in store.alerts(None, None)] == [
        "alert-4",
        "alert-3",
        "alert-1",
        "alert-2",
    ]
    assert [a["id"] for a in store.alerts("firing", None)] == ["alert-3", "alert-1"]
    assert [a["id"] for a in store.alerts("resolved", None)] == ["alert-4", "alert-2"]
    since = OFFSET + T0 + 50 * S  # Unix-epoch ns
    assert [a["id"] for a in store.alerts(None, since)] == ["alert-4", "alert-3", "alert-1"]
    assert [a["id"] for a in store.alerts("resolved", since)] == ["alert-4"]
    assert store.alerts(None, since + 21 * S) == []


def test_store_renders_times_with_the_current_wall_offset() -> None:
    offsets = [OFFSET]
    store = AlertStore(lambda: offsets[-1])
    store.record(make_alert(1))
    offsets.append(OFFSET + 5 * S)  # the wall clock was stepped
    data = store.record(make_alert(2))
    assert data["first_seen"] == iso_time(T0 + 2 * S + OFFSET + 5 * S)
    first = store.alerts("firing", None)[-1]
    assert first["first_seen"] == iso_time(T0 + S + OFFSET)  # as rendered when recorded
