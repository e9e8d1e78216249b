"""Alerts: what the engine raises, their JSON shape, and the bounded store behind /alerts."""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from otel_linnix.recording import iso_time
from otel_linnix.rules.model import Severity, Subject

__all__ = ["Alert", "AlertStore", "alert_id"]


def alert_id(rule: str, subject_key: str, first_seen_ns: int) -> str:
    """Stable: the same incident has the same id in /alerts, /stream and OTel logs."""
    digest = hashlib.sha256(f"{rule}\0{subject_key}\0{first_seen_ns}".encode()).hexdigest()
    return digest[:16]


@dataclass
class Alert:
    """One incident: a rule whose condition held for a subject.

    Times are on the kernel boot clock (``*_ns``); the JSON adds wall-clock
    RFC 3339 renderings. Mutable while firing (``last_seen_ns``, evidence);
    handed out only as JSON dictionaries or copies.
    """

    id: str
    rule: str
    severity: Severity
    subject: Subject
    message: str
    evidence: Mapping[str, Any]
    first_seen_ns: int
    last_seen_ns: int
    state: str = "firing"  # firing or resolved
    resolved_ns: int | None = None
    reopened: int = 0  # how often it fired again within the rule's cooldown
    tags: tuple[str, ...] = ()
    description: str = ""
    host: str = ""
    seq: int = 0  # the /stream id of its latest transition
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, wall_offset_ns: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "severity": self.severity.label,
            "state": self.state,
            "message": self.message,
            "host": self.host,
            "subject": self.subject.as_dict(),
            "evidence": dict(self.evidence),
            "first_seen": iso_time(self.first_seen_ns + wall_offset_ns),
            "last_seen": iso_time(self.last_seen_ns + wall_offset_ns),
            "resolved_at": (
                iso_time(self.resolved_ns + wall_offset_ns)
                if self.resolved_ns is not None
                else None
            ),
            "first_seen_ns": self.first_seen_ns,
            "last_seen_ns": self.last_seen_ns,
            "resolved_ns": self.resolved_ns,
            "reopened": self.reopened,
            "tags": list(self.tags),
            "description": self.description,
        }


class AlertStore:
    """Firing alerts and the most recently resolved ones, for /alerts.

    Bounded: at most ``max_resolved`` resolved alerts are kept (oldest
    dropped first, counted); firing ones are bounded by the engine (one per
    rule and subject).
    """

    def __init__(self, wall_offset_ns: Any, max_resolved: int = 1000) -> None:
        self._wall_offset_ns = wall_offset_ns
        self._firing: dict[str, dict[str, Any]] = {}
        self._resolved: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._max_resolved = max_resolved
        self._lock = threading.Lock()
        self.dropped = 0

    def record(self, alert: Alert) -> dict[str, Any]:
        """Store the alert's current state; returns its JSON."""
        data = alert.to_json(self._wall_offset_ns())
        with self._lock:
            if alert.state == "firing":
                self._resolved.pop(alert.id, None)
                self._firing[alert.id] = data
            else:
                self._firing.pop(alert.id, None)
                self._resolved[alert.id] = data
                self._resolved.move_to_end(alert.id)
                while len(self._resolved) > self._max_resolved:
                    self._resolved.popitem(last=False)
                    self.dropped += 1
        return data

    def alerts(self, state: str | None, since_ns: int | None) -> Sequence[dict[str, Any]]:
        """Newest first; ``since_ns`` (Unix epoch) keeps alerts seen at or after it."""
        with self._lock:
            pool: list[dict[str, Any]] = []
            if state in (None, "firing"):
                pool.extend(self._firing.values())
            if state in (None, "resolved"):
                pool.extend(self._resolved.values())
        if since_ns is not None:
            offset = self._wall_offset_ns()
            pool = [a for a in pool if a["last_seen_ns"] + offset >= since_ns]
        return sorted(pool, key=lambda a: a["last_seen_ns"], reverse=True)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "firing": len(self._firing),
                "resolved": len(self._resolved),
                "dropped": self.dropped,
            }
