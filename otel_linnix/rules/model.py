"""What rules, detectors and alerts are made of. No I/O, no threads.

A rule pairs a *detector* (a windowed measurement over events or samples,
keyed by a subject) with a condition that selects which processes count,
a severity, a cooldown and a message. Detectors report *findings*: the
subjects whose condition is met right now, with the numbers that show it.
The engine turns findings into alerts with a lifecycle (firing -> resolved).
"""

from __future__ import annotations

import enum
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from otel_linnix.events import ProcessEvent, ProcessKey
from otel_linnix.process_table import HostSample, ProcessInfo, ProcessSample

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorSpec",
    "Facts",
    "Finding",
    "HostSample",
    "Lineage",
    "Param",
    "Predicate",
    "Rule",
    "Severity",
    "Subject",
    "render_message",
]


class Severity(enum.IntEnum):
    """Ordered: ``Severity.HIGH > Severity.LOW``."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class Facts(Protocol):
    """The fields a condition can test, for one process (see condition.py)."""

    def get(self, name: str) -> str | int | None: ...


Predicate = Callable[[Facts], bool]


class Subject(NamedTuple):
    """What an alert is about. ``key`` is stable across agent restarts."""

    kind: str  # process, parent, executable, container, host
    key: str
    pid: int | None = None
    start_time_ns: int | None = None
    comm: str | None = None
    exe: str | None = None
    container_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "pid": self.pid,
            "start_time_ns": self.start_time_ns,
            "comm": self.comm,
            "exe": self.exe,
            "container_id": self.container_id,
        }


class Finding(NamedTuple):
    """A subject whose detector condition holds now, and the evidence."""

    subject: Subject
    value: float
    evidence: Mapping[str, Any]


class Lineage(Protocol):
    """Read access to the process tree that detectors need (the process table)."""

    def get(self, key: ProcessKey) -> ProcessInfo | None: ...

    def ancestor_keys(self, key: ProcessKey, max_depth: int) -> list[ProcessKey]: ...


# The process behind a sampled key, if it is still live and the rule's
# condition admits it; else None.
Admit = Callable[[ProcessKey], ProcessInfo | None]


class Detector(Protocol):
    """A windowed measurement for one rule.

    ``accept`` and ``admit`` apply the rule's compiled condition (and
    exceptions): events and processes it rejects are not counted. A sweep
    hands over the readings by process key; a detector works on the numbers
    and asks ``admit`` for the process only when a reading matters (a sweep
    of thousands of idle processes builds no process views). Windows use
    kernel timestamps (``ts_ns``), never the time of arrival.
    """

    def observe_event(self, ev: ProcessEvent, accept: Callable[[ProcessEvent], bool]) -> None: ...

    def observe_samples(
        self,
        now_ns: int,
        samples: Mapping[ProcessKey, ProcessSample],
        host: HostSample | None,
        admit: Admit,
    ) -> None: ...

    def findings(self, now_ns: int) -> list[Finding]: ...


@dataclass(frozen=True)
class Rule:
    """One loaded, validated rule."""

    name: str
    detector: str
    params: Mapping[str, Any]
    severity: Severity
    cooldown_s: float
    message: str
    # A firing alert resolves once its condition has been absent this long.
    resolve_after_s: float = 10.0
    description: str = ""
    tags: tuple[str, ...] = ()
    enabled: bool = True
    condition_text: str | None = None
    condition: Predicate | None = field(default=None, compare=False)
    exceptions: tuple[Predicate, ...] = field(default=(), compare=False)
    # Where it came from, for messages: "rules.yaml: rule 'fork_storm'".
    origin: str = ""

    def matches(self, facts: Facts) -> bool:
        """The condition holds and no exception does."""
        if self.condition is not None and not self.condition(facts):
            return False
        return not any(exc(facts) for exc in self.exceptions)


class _SafeFormatter(string.Formatter):
    """``{name}`` and ``{name:spec}`` only: no attribute or index access, so a
    message template from a rules file cannot reach into objects."""

    def get_field(
        self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[Any, str]:
        if not field_name.isidentifier():
            return "{" + field_name + "}", field_name
        return kwargs.get(field_name, "{" + field_name + "}"), field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        try:
            return str(super().format_field(value, format_spec))
        except (ValueError, TypeError):
            return str(value)


_FORMATTER = _SafeFormatter()


def render_message(template: str, values: Mapping[str, Any]) -> str:
    """The template with ``{name}`` placeholders filled; unknown names stay as written."""
    try:
        return str(_FORMATTER.vformat(template, (), dict(values)))
    except (ValueError, IndexError, KeyError, TypeError):
        # A template is checked at load; a figure of the wrong type (null) must
        # still not lose the alert: the raw template carries the rule's meaning.
        return template


@dataclass(frozen=True)
class Param:
    """One detector parameter: its type, default and bounds (checked by the loader)."""

    kind: type  # float, int, bool or str
    default: Any
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    doc: str = ""


@dataclass(frozen=True)
class DetectorSpec:
    """A detector kind: what a rule's ``detector:`` names."""

    name: str
    doc: str
    subject: str  # process, parent, executable, container or host
    params: Mapping[str, Param]
    factory: Callable[[Mapping[str, Any], Lineage], Detector]
    default_message: str
    # "event": reacts to lifecycle events; "sample": to sampler sweeps.
    inputs: tuple[str, ...] = ("event",)
    # The event kinds the detector reads (by value: "fork", "exit", ...);
    # empty means every kind. The engine hands it nothing else, which spares a
    # call per event and rule on the drain's busiest path.
    event_kinds: tuple[str, ...] = ()


# Filled in by otel_linnix.rules.detectors at import.
DETECTORS: dict[str, DetectorSpec] = {}
