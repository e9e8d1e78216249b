"""The fields a rule condition tests, for one process and (lazily) its parent."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from otel_linnix.events import ProcessEvent, ProcessKey
from otel_linnix.process_table import FactsRow, ProcessInfo

__all__ = ["FactsLookup", "ProcessFacts", "UserName"]

# The table's facts row of a process (ProcessTable.facts_row): a condition
# reads a handful of fields, so no full ProcessInfo is built for it.
FactsLookup = Callable[[ProcessKey], FactsRow | None]
UserName = Callable[[int], str | None]

# Positions in a FactsRow.
_COMM: Final = 0
_EXE: Final = 1
_ARGV: Final = 2
_UID: Final = 3
_CONTAINER: Final = 4
_RUNTIME: Final = 5
_PARENT: Final = 6


class ProcessFacts:
    """Facts of one process; ``parent.*`` fields are looked up on first use."""

    __slots__ = ("_lookup", "_parent", "_parent_loaded", "_pid", "_row", "_users")

    def __init__(self, pid: int, row: FactsRow, lookup: FactsLookup, users: UserName) -> None:
        self._pid = pid
        self._row = row
        self._lookup = lookup
        self._users = users
        self._parent: ProcessFacts | None = None
        self._parent_loaded = False

    @classmethod
    def of_info(cls, info: ProcessInfo, lookup: FactsLookup, users: UserName) -> ProcessFacts:
        row = (
            info.comm,
            info.exe,
            info.argv,
            info.uid,
            info.container_id,
            info.container_runtime,
            info.parent_key,
        )
        return cls(info.key.pid, row, lookup, users)

    @classmethod
    def of_event(cls, ev: ProcessEvent, lookup: FactsLookup, users: UserName) -> ProcessFacts:
        """Facts of the event's process: what the table knows of it (its exec
        image, for a fork or exit record), else what the event carries."""
        row = lookup(ev.key)
        if row is None:
            row = (
                ev.comm,
                ev.exe,
                ev.argv,
                ev.uid,
                ev.container_id,
                ev.container_runtime,
                ev.parent_key,
            )
        return cls(ev.pid, row, lookup, users)

    def _parent_facts(self) -> ProcessFacts | None:
        if not self._parent_loaded:
            self._parent_loaded = True
            parent_key = self._row[_PARENT]
            if parent_key is not None:
                row = self._lookup(parent_key)
                if row is not None:
                    self._parent = ProcessFacts(parent_key.pid, row, self._lookup, self._users)
        return self._parent

    def get(self, name: str) -> str | int | None:
        if name.startswith("parent."):
            parent = self._parent_facts()
            return parent.get(name[7:]) if parent is not None else None
        getter = _GETTERS.get(name)
        return getter(self) if getter is not None else None


def _exe_name(f: ProcessFacts) -> str | None:
    exe = f._row[_EXE]
    return os.path.basename(exe) if exe else None


def _cmdline(f: ProcessFacts) -> str | None:
    argv = f._row[_ARGV]
    return " ".join(argv) if argv else None


_GETTERS: dict[str, Callable[[ProcessFacts], str | int | None]] = {
    "comm": lambda f: f._row[_COMM],
    "exe": lambda f: f._row[_EXE],
    "exe_name": _exe_name,
    "cmdline": _cmdline,
    "user": lambda f: f._users(f._row[_UID]),
    "uid": lambda f: f._row[_UID],
    "container": lambda f: f._row[_CONTAINER] or "",
    "container_runtime": lambda f: f._row[_RUNTIME],
    "pid": lambda f: f._pid,
}
