"""The process table: links, out-of-order events, PID reuse, retention and bounds."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from otel_linnix.events import NS_PER_TICK, EventKind, ProcessKey
from otel_linnix.process_table import ProcessInfo, ProcessSample, ProcessTable
from tests.unit.conftest import make_event

S = 1_000_000_000
FORK, EXEC, EXIT, OOM = EventKind.FORK, EventKind.EXEC, EventKind.EXIT, EventKind.OOM_KILL

# A shell (10) runs make (20), which runs two compilers (30, 31).
SHELL, MAKE, CC1, CC2 = 1 * S, 2 * S, 3 * S, 3 * S + 50 * NS_PER_TICK
K_SHELL = ProcessKey.of(10, SHELL)
K_MAKE = ProcessKey.of(20, MAKE)
K_CC1 = ProcessKey.of(30, CC1)
K_CC2 = ProcessKey.of(31, CC2)


def pids(infos: Iterable[ProcessInfo]) -> list[int]:
    return sorted(p.pid for p in infos)


@pytest.fixture
def tree() -> ProcessTable:
    table = ProcessTable()
    table.apply_batch(
        [
            make_event(FORK, 10, SHELL, ppid=1, parent_start_time_ns=0, comm="login"),
            make_event(
                EXEC,
                10,
                SHELL,
                ts_ns=SHELL + 1,
                ppid=1,
                parent_start_time_ns=0,
                comm="sh",
                exe="/bin/sh",
                argv=("sh",),
            ),
            make_event(FORK, 20, MAKE, ppid=10, parent_start_time_ns=SHELL, comm="sh"),
            make_event(
                EXEC,
                20,
                MAKE,
                ts_ns=MAKE + 1,
                ppid=10,
                parent_start_time_ns=SHELL,
                comm="make",
                exe="/usr/bin/make",
                argv=("make", "all"),
            ),
            make_event(FORK, 30, CC1, ppid=20, parent_start_time_ns=MAKE, comm="make"),
            make_event(FORK, 31, CC2, ppid=20, parent_start_time_ns=MAKE, comm="make"),
            make_event(
                EXEC,
                30,
                CC1,
                ts_ns=CC1 + 1,
                ppid=20,
                parent_start_time_ns=MAKE,
                comm="cc",
                exe="/usr/bin/cc",
                argv=("cc", "-c", "a.c"),
            ),
            make_event(
                EXIT,
                30,
                CC1,
                ts_ns=CC1 + S,
                ppid=20,
                parent_start_time_ns=MAKE,
                comm="cc",
                exit_code=0,
                cpu_time_ns=5_000_000,
                peak_rss_bytes=4096,
            ),
        ]
    )
    return table


def test_fork_exec_exit_builds_a_linked_tree(tree: ProcessTable) -> None:
    assert pids(tree.children(K_SHELL)) == [20]
    assert pids(tree.children(K_MAKE)) == [30, 31]
    assert [p.pid for p in tree.ancestors(K_CC1)] == [20, 10]
    assert [
        (p.pid, depth) for p, depth in sorted(tree.descendants(K_SHELL), key=lambda pd: pd[0].pid)
    ] == [(20, 1), (30, 2), (31, 2)]
    assert pids(tree.siblings(K_CC1)) == [31]
    assert tree.siblings(K_SHELL) == []  # its parent is not in the table


def test_fork_exec_exit_fields(tree: ProcessTable) -> None:
    make = tree.get(K_MAKE)
    assert make is not None
    assert (make.comm, make.exe, make.argv, make.exec_count) == (
        "make",
        "/usr/bin/make",
        ("make", "all"),
        1,
    )
    assert make.parent_key == K_SHELL
    assert not make.exited
    cc1 = tree.get(K_CC1)
    assert cc1 is not None
    assert cc1.exited and not cc1.exit_inferred
    assert (cc1.exit_code, cc1.exit_signal, cc1.exit_ts_ns) == (0, None, CC1 + S)
    assert (cc1.cpu_time_ns, cc1.peak_rss_bytes) == (5_000_000, 4096)
    st = tree.stats()
    assert (st.live, st.exited) == (3, 1)


def test_exit_before_exec_keeps_both() -> None:
    table = ProcessTable()
    table.apply(
        make_event(
            EXIT, 30, CC1, ts_ns=CC1 + S, ppid=20, parent_start_time_ns=MAKE, comm="cc", exit_code=1
        )
    )
    table.apply(
        make_event(
            EXEC,
            30,
            CC1,
            ts_ns=CC1 + 1,
            ppid=20,
            parent_start_time_ns=MAKE,
            comm="cc",
            exe="/usr/bin/cc",
            argv=("cc",),
        )
    )
    info = table.get(K_CC1)
    assert info is not None
    assert info.exited
    assert (info.exit_code, info.exe, info.argv, info.comm) == (1, "/usr/bin/cc", ("cc",), "cc")
    assert table.stats().live == 0
    assert table.find_pid(30) == info


def test_child_before_parent_is_linked_when_the_parent_arrives() -> None:
    table = ProcessTable()
    table.apply(make_event(EXEC, 20, MAKE, ppid=10, parent_start_time_ns=SHELL, comm="make"))
    assert table.ancestors(K_MAKE) == []
    table.apply(make_event(EXEC, 10, SHELL, ppid=1, parent_start_time_ns=0, comm="sh"))
    assert [p.pid for p in table.ancestors(K_MAKE)] == [10]
    assert pids(table.children(K_SHELL)) == [20]
    assert [p.pid for p, _ in table.descendants(K_SHELL)] == [20]


def test_child_without_parent_start_links_to_the_live_holder_of_ppid() -> None:
    table = ProcessTable()
    table.apply(make_event(EXEC, 10, SHELL, comm="sh"))
    table.apply(make_event(EXEC, 20, MAKE, ppid=10, comm="make"))
    make = table.get(K_MAKE)
    assert make is not None
    assert make.parent_key == K_SHELL


def test_late_link_fills_a_missing_parent() -> None:
    table = ProcessTable()
    table.apply(make_event(EXEC, 20, MAKE, ppid=10, comm="make"))  # parent unknown
    table.apply(make_event(EXIT, 20, MAKE, ts_ns=MAKE + S, ppid=10, parent_start_time_ns=SHELL))
    make = table.get(K_MAKE)
    assert make is not None
    assert make.parent_key == K_SHELL
    assert pids(table.children(K_SHELL)) == [20]


def test_bootstrap_exec_after_kernel_exit_leaves_it_exited() -> None:
    table = ProcessTable()
    table.apply(make_event(EXIT, 30, CC1, ts_ns=CC1 + S, comm="cc", exit_signal=9))
    table.apply(
        make_event(
            EXEC,
            30,
            CC1,
            ts_ns=CC1 + 2 * S,
            comm="cc",
            exe="/usr/bin/cc",
            argv=("cc",),
            bootstrap=True,
        )
    )
    info = table.get(K_CC1)
    assert info is not None
    assert info.exited
    assert info.exit_signal == 9
    assert info.exec_count == 0  # a bootstrap record is not an exec that happened
    assert table.live_keys() == {}
    assert table.stats().live == 0


def test_pid_reuse_keeps_two_entries_and_infers_the_old_exit() -> None:
    old_start, new_start = 1 * S, 9 * S
    old, new = ProcessKey.of(500, old_start), ProcessKey.of(500, new_start)
    table = ProcessTable()
    table.apply(make_event(EXEC, 500, old_start, comm="old", argv=("old",)))
    table.apply(make_event(FORK, 500, new_start, ts_ns=new_start, ppid=1, comm="new"))

    old_info, new_info = table.get(old), table.get(new)
    assert old_info is not None and new_info is not None
    assert old_info.exited and old_info.exit_inferred
    assert old_info.exit_ts_ns == new_start
    assert not new_info.exited
    assert table.stats().exits_inferred == 1
    assert table.live_keys() == {500: new}
    assert [p.key for p in table.all_for_pid(500)] == [old, new]

    # The real exit of the old process arrives late: it replaces the guess.
    table.apply(make_event(EXIT, 500, old_start, ts_ns=new_start - 5, comm="old", exit_code=7))
    old_info = table.get(old)
    assert old_info is not None
    assert old_info.exited and not old_info.exit_inferred
    assert (old_info.exit_code, old_info.exit_ts_ns) == (7, new_start - 5)
    assert table.live_keys() == {500: new}


def test_a_late_record_of_the_older_process_does_not_retire_the_newer() -> None:
    old_start, new_start = 1 * S, 9 * S
    table = ProcessTable()
    table.apply(make_event(FORK, 500, new_start, comm="new"))
    table.apply(make_event(EXEC, 500, old_start, ts_ns=2 * S, comm="old"))
    old_info = table.get(ProcessKey.of(500, old_start))
    assert old_info is not None and old_info.exited and old_info.exit_inferred
    assert table.live_keys() == {500: ProcessKey.of(500, new_start)}


def test_older_exec_does_not_overwrite_newer_argv() -> None:
    table = ProcessTable()
    table.apply(
        make_event(
            EXEC, 40, S, ts_ns=5 * S, comm="new", exe="/bin/new", argv=("new", "--flag"), uid=1000
        )
    )
    table.apply(
        make_event(
            EXEC,
            40,
            S,
            ts_ns=4 * S,
            comm="old",
            exe="/bin/old",
            argv=("old",),
            uid=0,
            bootstrap=True,
        )
    )
    info = table.get(ProcessKey.of(40, S))
    assert info is not None
    assert (info.comm, info.exe, info.argv, info.uid) == (
        "new",
        "/bin/new",
        ("new", "--flag"),
        1000,
    )


def test_newer_exec_replaces_argv() -> None:
    table = ProcessTable()
    table.apply(make_event(EXEC, 40, S, ts_ns=4 * S, comm="sh", exe="/bin/sh", argv=("sh",)))
    table.apply(make_event(EXEC, 40, S, ts_ns=5 * S, comm="ls", exe="/bin/ls", argv=("ls",)))
    info = table.get(ProcessKey.of(40, S))
    assert info is not None
    assert (info.comm, info.exe, info.argv, info.exec_count) == ("ls", "/bin/ls", ("ls",), 2)


def test_prune_removes_exited_entries_past_retention_only() -> None:
    table = ProcessTable(exited_retention_ns=10 * S)
    table.apply_batch(
        [
            make_event(EXEC, 1, 0, comm="live"),
            make_event(EXEC, 2, 0, comm="early"),
            make_event(EXEC, 3, 0, comm="late"),
            make_event(EXIT, 2, 0, ts_ns=1 * S),
            make_event(EXIT, 3, 0, ts_ns=5 * S),
        ]
    )
    assert table.prune(12 * S) == 1
    assert table.get(ProcessKey.of(2, 0)) is None
    assert table.get(ProcessKey.of(3, 0)) is not None
    assert table.prune(15 * S - 1) == 0  # 1 ns inside the retention
    assert table.prune(15 * S) == 1
    assert table.get(ProcessKey.of(3, 0)) is None
    assert table.prune(10_000 * S) == 0
    assert table.get(ProcessKey.of(1, 0)) is not None
    assert len(table) == 1
    assert table.stats().exited == 0


def test_pruned_child_leaves_its_parents_children() -> None:
    table = ProcessTable(exited_retention_ns=S)
    table.apply_batch(
        [
            make_event(EXEC, 10, SHELL, comm="sh"),
            make_event(FORK, 20, MAKE, ppid=10, parent_start_time_ns=SHELL),
            make_event(EXIT, 20, MAKE, ts_ns=MAKE + 1, ppid=10, parent_start_time_ns=SHELL),
        ]
    )
    table.prune(MAKE + 1 + S)
    assert table.children(K_SHELL) == []
    assert table.descendants(K_SHELL) == []


def test_bound_evicts_exited_first_then_oldest_live() -> None:
    table = ProcessTable(max_entries=3)
    table.apply_batch(
        [
            make_event(EXEC, 1, 0, comm="a"),
            make_event(EXEC, 2, 0, comm="b"),
            make_event(EXEC, 3, 0, comm="c"),
            make_event(EXIT, 3, 0, ts_ns=S),
        ]
    )
    table.apply(make_event(EXEC, 4, 0, comm="d"))
    assert table.get(ProcessKey.of(3, 0)) is None  # the exited one went first
    assert pids(table.snapshot()) == [1, 2, 4]
    st = table.stats()
    assert (st.evicted_exited, st.evicted_live) == (1, 0)

    table.apply(make_event(EXEC, 5, 0, comm="e"))
    assert table.get(ProcessKey.of(1, 0)) is None  # then the oldest live one
    assert table.find_pid(1) is None
    assert pids(table.snapshot()) == [2, 4, 5]
    st = table.stats()
    assert (st.evicted_exited, st.evicted_live, st.live) == (1, 1, 3)
    assert len(table) == 3


def test_find_pid_prefers_the_live_process() -> None:
    table = ProcessTable()
    dead, live = ProcessKey.of(7, S), ProcessKey.of(7, 5 * S)
    table.apply(make_event(EXEC, 7, 5 * S, ts_ns=5 * S, comm="live"))
    # A late exit of an older process that had the same pid.
    table.apply(make_event(EXIT, 7, S, ts_ns=6 * S, comm="dead", exit_code=0))
    found = table.find_pid(7)
    assert found is not None
    assert found.key == live
    assert not found.exited
    assert [p.key for p in table.all_for_pid(7)] == [dead, live]


def test_exit_of_a_newer_process_retires_the_older_holder_of_its_pid() -> None:
    table = ProcessTable()
    old, new = ProcessKey.of(7, S), ProcessKey.of(7, 5 * S)
    table.apply(make_event(EXEC, 7, S, comm="old"))
    # The newer process's only record is its exit: the old one must be gone.
    table.apply(make_event(EXIT, 7, 5 * S, ts_ns=6 * S, comm="new", exit_code=0))
    old_info, new_info = table.get(old), table.get(new)
    assert old_info is not None and old_info.exited and old_info.exit_inferred
    assert new_info is not None and new_info.exited and not new_info.exit_inferred
    assert table.stats().live == 0
    assert table.stats().exits_inferred == 1


def test_find_pid_falls_back_to_the_newest_exited() -> None:
    table = ProcessTable()
    table.apply_batch(
        [
            make_event(EXIT, 7, 1 * S, ts_ns=2 * S),
            make_event(EXIT, 7, 3 * S, ts_ns=4 * S),
        ]
    )
    found = table.find_pid(7)
    assert found is not None
    assert found.key == ProcessKey.of(7, 3 * S)
    assert table.find_pid(8) is None


def test_update_samples_ignores_exited_and_unknown_keys() -> None:
    table = ProcessTable()
    live, dead, unknown = ProcessKey.of(1, 0), ProcessKey.of(2, 0), ProcessKey.of(3, 0)
    table.apply_batch(
        [
            make_event(EXEC, 1, 0),
            make_event(EXEC, 2, 0),
            make_event(EXIT, 2, 0, ts_ns=S),
        ]
    )
    sample = ProcessSample(
        ts_ns=2 * S,
        cpu_time_ns=1,
        cpu_percent=1.0,
        rss_bytes=4096,
        fd_count=3,
        fd_limit=1024,
        threads=1,
        state="S",
    )
    table.update_samples({live: sample, dead: sample, unknown: sample})
    live_info, dead_info = table.get(live), table.get(dead)
    assert live_info is not None and dead_info is not None
    assert live_info.sample == sample
    assert dead_info.sample is None
    assert table.get(unknown) is None


def test_oom_kill_marks_the_entry() -> None:
    table = ProcessTable()
    table.apply(make_event(EXEC, 9, S, comm="leak"))
    table.apply(make_event(OOM, 9, S, ts_ns=2 * S, rss_bytes=1 << 30))
    info = table.get(ProcessKey.of(9, S))
    assert info is not None
    assert info.oom_killed and not info.exited


@pytest.mark.timeout(10)
def test_a_cycle_in_parent_links_does_not_hang() -> None:
    a, b = ProcessKey.of(10, S), ProcessKey.of(20, 2 * S)
    table = ProcessTable()
    table.apply_batch(
        [
            make_event(EXEC, 10, S, ppid=20, parent_start_time_ns=2 * S),
            make_event(EXEC, 20, 2 * S, ppid=10, parent_start_time_ns=S),
            make_event(EXEC, 30, 3 * S, ppid=30, parent_start_time_ns=3 * S),  # its own parent
        ]
    )
    assert [p.key for p in table.ancestors(a)] == [b]
    assert [p.key for p in table.ancestors(b)] == [a]
    assert [p.key for p, _ in table.descendants(a)] == [b]
    assert table.ancestors(ProcessKey.of(30, 3 * S)) == []
    assert table.descendants(ProcessKey.of(30, 3 * S)) == []
