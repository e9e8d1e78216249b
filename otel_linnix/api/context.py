"""What the API reads from: everything handed to create_app, in one place."""

from __future__ import annotations

import pwd
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from otel_linnix.config import Config
from otel_linnix.events import ProcessKey
from otel_linnix.pipeline import Pipeline
from otel_linnix.stream_hub import StreamHub

__all__ = ["AlertSource", "ApiContext", "MetricsSource", "NoAlerts", "UserNames"]


class AlertSource(Protocol):
    """Where /alerts reads from (the rules engine, when it runs)."""

    def alerts(self, state: str | None, since_ns: int | None) -> Sequence[dict[str, object]]: ...


class MetricsSource(Protocol):
    """Where /metrics reads from (the agent's meter provider, when Prometheus is on)."""

    content_type: str

    def exposition(self) -> bytes: ...


class NoAlerts:
    """The alert source while no rules engine runs: there are no alerts."""

    def alerts(self, state: str | None, since_ns: int | None) -> Sequence[dict[str, object]]:
        return []


class UserNames:
    """uid -> user name, cached (the passwd lookup reads files)."""

    def __init__(self, limit: int = 4096) -> None:
        self._names: dict[int, str | None] = {}
        self._limit = limit

    def name(self, uid: int) -> str | None:
        if uid not in self._names:
            if len(self._names) >= self._limit:
                self._names.clear()
            try:
                self._names[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._names[uid] = None
        return self._names[uid]


def _mem_total_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class ApiContext:
    """Collaborators of the API, stored in ``app.extensions["linnix"]``."""

    config: Config
    pipeline: Pipeline
    hub: StreamHub
    boot_clock: Callable[[], int]
    alert_source: AlertSource = field(default_factory=NoAlerts)
    metrics: MetricsSource | None = None
    users: UserNames = field(default_factory=UserNames)
    mem_total_bytes: int = field(default_factory=_mem_total_bytes)
    # ProcessKey -> (what its /processes JSON was built from, that JSON cut
    # around the age fields: before age_s, between age_s and age_sec, after)
    json_cache: dict[ProcessKey, tuple[object, bytes, bytes, bytes]] = field(default_factory=dict)
    version: str = "0.1.0"

    def wall_from_boot(self, ts_ns: int) -> int:
        return ts_ns + (time.time_ns() - self.boot_clock())
