"""OpenTelemetry metrics: one MeterProvider behind /metrics and OTLP.

The provider feeds a Prometheus reader on a private prometheus_client
registry (never the global one: prometheus_client's own ``process_*``
self-metrics would collide with the monitored processes' ``process_*``
series) and, when an OTLP metrics endpoint is configured, a periodic OTLP
reader. Every instrument about processes is observable: its callback reads
one snapshot of the process table, built once per collection, so a process
that exited is simply not reported and its series leave the next scrape.

Cardinality: per-process series only for the top N processes by CPU and by
RSS (``[export] top_processes``) plus every process a firing alert names;
every other live process counts towards its executable's aggregate series
(the same metric names, with ``process.executable.name`` and no pid). At
most ``MAX_GROUPS`` executable names get series of their own; later ones
share ``OTHER_GROUP``.
"""

from __future__ import annotations

import heapq
import logging
import os
import resource
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics as otel_api
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from otel_linnix.events import EventKind, ProcessEvent, ProcessKey, executable_name
from otel_linnix.export.resource import build_resource
from otel_linnix.export.settings import ExportSettings, make_metric_exporter
from otel_linnix.pipeline import AgentStatus, Pipeline
from otel_linnix.process_table import ProcessSample, ProcessTable
from otel_linnix.threads import AgentThread

__all__ = [
    "LIFETIME_BUCKETS_S",
    "MAX_GROUPS",
    "OTHER_GROUP",
    "PROMETHEUS_CONTENT_TYPE",
    "CountingMetricExporter",
    "ExitRecorder",
    "MetricsTelemetry",
    "exit_class",
]

log = logging.getLogger(__name__)

# Text exposition 0.0.4: what Prometheus 2.x and every scraper read.
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MAX_GROUPS = 256
OTHER_GROUP = "_other"
# Process lifetimes span from a 1 ms `true` to daemons running for days.
LIFETIME_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# /proc state letters -> semconv process.state values; others are not counted.
_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "sleeping",
    "I": "sleeping",
    "T": "stopped",
    "t": "stopped",
    "Z": "defunct",
}
# A process that vanished without its exit event reaching us (dropped from a
# full queue) is forgotten after this many collections.
_VANISHED_COLLECTIONS = 3
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Exits whose final CPU time waits for the next collection, at most.
_MAX_PENDING_EXITS = 100_000

_EXEC = EventKind.EXEC
_EXIT = EventKind.EXIT

PID = "process.pid"
EXE = "process.executable.name"
CONTAINER = "container.id"


def exit_class(ev: ProcessEvent) -> str:
    """``signal`` (killed), ``error`` (non-zero status) or ``ok``."""
    if ev.exit_signal is not None:
        return "signal"
    return "error" if ev.exit_code else "ok"


class _GroupNames:
    """The bounded set of executable names that keep series of their own.

    The first ``MAX_GROUPS`` names seen keep their own series; any later one
    is ``OTHER_GROUP``, so a host running endless distinct executables cannot
    grow the series count without bound.
    """

    def __init__(self, limit: int = MAX_GROUPS) -> None:
        self._limit = limit
        self._groups: set[str] = set()
        self._lock = threading.Lock()

    def group(self, name: str) -> str:
        if name in self._groups:
            return name
        with self._lock:
            if len(self._groups) < self._limit:
                self._groups.add(name)
                return name
        return OTHER_GROUP


# (executable name, its group, container id) of one process
_Identity = tuple[str, str, str | None]


class _Identities:
    """Executable name, group and container of each live process, by key.

    Kept between collections so a scrape does not read the table's row of
    every process: an exec (the only event that changes them) replaces the
    entry from the event itself, on the sink's thread. The collection fills
    missing entries with ``setdefault``, so whichever of the two comes last,
    the exec's values win.
    """

    def __init__(self, names: _GroupNames, table: ProcessTable) -> None:
        self._names = names
        self._table = table
        self.by_key: dict[ProcessKey, _Identity] = {}

    def learn(self, ev: ProcessEvent) -> None:
        name = executable_name(ev.exe, ev.comm)
        self.by_key[ev.key] = (name, self._names.group(name), ev.container_id)

    def of(self, key: ProcessKey) -> _Identity | None:
        found = self.by_key.get(key)
        if found is None:
            row = self._table.facts_row(key)
            if row is None:
                return None
            name = executable_name(row[1], row[0])
            found = self.by_key.setdefault(key, (name, self._names.group(name), row[4]))
        return found

    def forget(self, key: ProcessKey) -> _Identity | None:
        return self.by_key.pop(key, None)

    def keep_only(self, live: Iterable[ProcessKey]) -> None:
        """Drop the entries of processes that are gone (exits dropped from a full queue)."""
        by_key = self.by_key
        self.by_key = {k: v for k in live if (v := by_key.get(k)) is not None}


class ExitRecorder:
    """A Sink: exits by executable and status class, lifetimes, final CPU times.

    Runs on its own SinkWorker thread; the final CPU time of each exited
    process is handed to the collection side, which adds what the process
    used since it was last seen to its executable's CPU counter.
    """

    name = "metrics"

    def __init__(
        self,
        identities: _Identities,
        exits: otel_api.Counter,
        lifetime: otel_api.Histogram,
    ) -> None:
        self._identities = identities
        self._exits = exits
        self._lifetime = lifetime
        self._lock = threading.Lock()
        # (key, group, CPU ns at exit), taken by the next collection
        self._final_cpu: list[tuple[ProcessKey, str, int]] = []

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        finals: list[tuple[ProcessKey, str, int]] = []
        identities = self._identities
        # Exits are counted per batch and added once per (group, class): each
        # add() through the SDK costs microseconds, and a fork storm brings
        # thousands of exits of one executable per batch.
        exits: dict[tuple[str, str], int] = {}
        lifetime = self._lifetime
        attrs_of: dict[str, dict[str, str]] = {}
        for ev in events:
            kind = ev.kind
            if kind is _EXEC:
                identities.learn(ev)
                continue
            if kind is not _EXIT:
                continue
            key = ev.key
            identity = identities.forget(key) or identities.of(key)
            if identity is None:
                continue  # evicted from the table already: nothing names it
            group = identity[1]
            counted = (group, exit_class(ev))
            exits[counted] = exits.get(counted, 0) + 1
            attrs = attrs_of.get(group)
            if attrs is None:
                attrs = attrs_of[group] = {EXE: group}
            lifetime.record(max(0.0, (ev.ts_ns - ev.start_time_ns) / 1e9), attrs)
            if ev.cpu_time_ns is not None:
                finals.append((key, group, ev.cpu_time_ns))
        for (group, klass), n in exits.items():
            self._exits.add(n, {EXE: group, "linnix.exit.class": klass})
        if finals:
            with self._lock:
                # Taken by each collection; bounded for an agent nobody scrapes
                # (the aggregates then miss the last moments of those processes).
                room = _MAX_PENDING_EXITS - len(self._final_cpu)
                self._final_cpu.extend(finals[: max(0, room)])

    def take_final_cpu(self) -> list[tuple[ProcessKey, str, int]]:
        with self._lock:
            out, self._final_cpu = self._final_cpu, []
        return out

    def flush(self, timeout_s: float) -> None:
        """Nothing is buffered here: counts go straight to the instruments."""

    def shutdown(self, timeout_s: float) -> None:
        """The MeterProvider is shut down by its owner, after the pipeline."""


class CountingMetricExporter(MetricExporter):
    """An exporter that counts the failures of the one it wraps.

    The SDK logs a failed export and moves on; ``linnix.export.failures``
    needs the count.
    """

    def __init__(self, inner: MetricExporter) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self.exported = 0
        self.failed = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            self.failed += 1
            raise
        if result is MetricExportResult.SUCCESS:
            self.exported += 1
        else:
            self.failed += 1
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)

    def stats(self) -> dict[str, int]:
        return {"exported": self.exported, "failed": self.failed}


class _UntypedCounts(Collector):
    """Exposes semconv's ``*.count`` gauges (process_thread_count, ...) as untyped.

    Prometheus reserves the ``_count`` suffix for histograms and summaries
    (``promtool check metrics`` flags a gauge named so). The names stay what
    the OpenTelemetry-to-Prometheus translation gives, so dashboards read the
    same series whether they come from here or through a collector; Prometheus
    stores untyped samples as it stores gauges.
    """

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterable[Metric]:
        for family in self._inner.collect():
            if family.type == "gauge" and family.name.endswith("_count"):
                family.type = "unknown"
            yield family


_Attrs = dict[str, str | int]
# groups, (CPU %, key) and (RSS, key) of sampled processes, state counts, CPU used
_Pass = tuple[
    dict[str, "_Group"],
    list[tuple[float, ProcessKey]],
    list[tuple[int, ProcessKey]],
    dict[str, int],
    dict[ProcessKey, int],
]


@dataclass
class _Collection:
    """Every observation of one collection, computed in one pass over the table."""

    cpu: list[Observation] = field(default_factory=list)
    memory: list[Observation] = field(default_factory=list)
    fds: list[Observation] = field(default_factory=list)
    threads: list[Observation] = field(default_factory=list)
    uptime: list[Observation] = field(default_factory=list)
    group_count: list[Observation] = field(default_factory=list)
    states: list[Observation] = field(default_factory=list)
    alerts_firing: list[Observation] = field(default_factory=list)
    status: AgentStatus | None = None
    per_process: int = 0
    groups: int = 0


class _Group:
    __slots__ = ("count", "cpu_ns", "fds", "rss", "threads")

    def __init__(self) -> None:
        self.count = 0
        self.cpu_ns = 0
        self.rss = 0
        self.fds = 0
        self.threads = 0


def _alert_keys(
    alerts: Iterable[Mapping[str, Any]], live: Mapping[int, ProcessKey]
) -> set[ProcessKey]:
    """Keys of the live processes firing alerts name."""
    keys: set[ProcessKey] = set()
    for alert in alerts:
        subject = alert.get("subject") or {}
        pid = subject.get("pid")
        if not isinstance(pid, int):
            continue
        key = live.get(pid)
        start = subject.get("start_time_ns")
        if key is not None and (start is None or ProcessKey.of(pid, start) == key):
            keys.add(key)
    return keys


class MetricsTelemetry:
    """The meter provider, its instruments and readers, and /metrics' text."""

    content_type = PROMETHEUS_CONTENT_TYPE

    def __init__(
        self,
        settings: ExportSettings,
        pipeline: Pipeline,
        *,
        clock: Callable[[], int],
        firing_alerts: Callable[[], Sequence[Mapping[str, Any]]] = lambda: (),
        stream_subscribers: Callable[[], int] = lambda: 0,
        export_stats: Mapping[str, Callable[[], Mapping[str, int]]] | None = None,
        extra_readers: Sequence[MetricReader] = (),
    ) -> None:
        self.settings = settings
        self._pipeline = pipeline
        self._table = pipeline.table
        self._clock = clock
        self._firing_alerts = firing_alerts
        self._stream_subscribers = stream_subscribers
        # Read at every collection: entries added later (other exporters) count too.
        self.export_stats: Mapping[str, Callable[[], Mapping[str, int]]] = (
            export_stats if export_stats is not None else {}
        )
        self.top_n = settings.config.top_processes
        self._identities = _Identities(_GroupNames(), self._table)
        self._lock = threading.Lock()
        self._current = _Collection()
        # CPU accounting of the executable aggregates: the CPU time each
        # process had when last seen, so each aggregate grows by what its
        # members used while not broken out per pid (monotonic, as a counter
        # must be, even as processes move in and out of the top N).
        self._last_cpu: dict[ProcessKey, int] = {}
        self._vanished: dict[ProcessKey, int] = {}
        self._group_cpu_ns: dict[str, int] = {}

        readers: list[MetricReader] = list(extra_readers)
        # Enough room for the budget: the SDK folds points past the limit
        # into one overflow series.
        limit = max(2000, 2 * self.top_n + MAX_GROUPS + 256)
        limits: dict[type, int] = {
            kind: limit
            for kind in (
                Counter,
                UpDownCounter,
                Histogram,
                ObservableCounter,
                ObservableGauge,
                ObservableUpDownCounter,
            )
        }
        self.registry: CollectorRegistry | None = None
        if settings.prometheus:
            otel_side = CollectorRegistry(auto_describe=False)
            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(_UntypedCounts(otel_side))
            readers.append(
                PrometheusMetricReader(
                    # Scope labels would add three constant labels to every series.
                    scope_info_enabled=False,
                    registry=otel_side,
                    cardinality_limits=limits,
                )
            )
        self.exporter: CountingMetricExporter | None = None
        if settings.metrics is not None:
            self.exporter = CountingMetricExporter(make_metric_exporter(settings.metrics))
            readers.append(
                PeriodicExportingMetricReader(
                    self.exporter,
                    export_interval_millis=settings.metrics_interval_s * 1000,
                    export_timeout_millis=settings.metrics.timeout_s * 1000,
                    cardinality_limits=limits,
                )
            )
        # shutdown_on_exit=False: an atexit flush to a dead collector would
        # hold up the process; the agent shuts the provider down, bounded.
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=build_resource(settings),
            shutdown_on_exit=False,
            # No spans are recorded around measurements: exemplars would only
            # cost a reservoir per point and collection.
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        meter = self.provider.get_meter("otel_linnix")
        self.sink = ExitRecorder(
            self._identities,
            meter.create_counter(
                "linnix.process.exits",
                "{process}",
                "Processes exited, by executable and status class (ok, error, signal).",
            ),
            meter.create_histogram(
                "linnix.process.lifetime",
                "s",
                "Lifetime of exited processes, by executable.",
                explicit_bucket_boundaries_advisory=LIFETIME_BUCKETS_S,
            ),
        )
        self._alerts_raised = meter.create_counter(
            "linnix.alerts", "{alert}", "Alerts raised (fired or reopened), by rule and severity."
        )
        self._instruments(meter)

    # ---- instruments -------------------------------------------------------------

    def _instruments(self, meter: Any) -> None:
        # Registered first: the SDK runs callbacks in registration order, so
        # this one builds the collection the others read.
        meter.create_observable_counter(
            "process.cpu.time",
            [self._collect_cpu],
            "s",
            "CPU time of the process (top N per pid, the rest per executable).",
        )
        gauges: list[tuple[str, str, str, Callable[[_Collection], list[Observation]]]] = [
            ("process.memory.usage", "By", "Resident memory.", lambda c: c.memory),
            ("process.uptime", "s", "Time since the process started.", lambda c: c.uptime),
        ]
        for name, unit, text, pick in gauges:
            meter.create_observable_gauge(name, [self._reader(pick)], unit, text)
        updowns: list[tuple[str, str, str, Callable[[_Collection], list[Observation]]]] = [
            (
                "process.unix.file_descriptor.count",
                "{file_descriptor}",
                "Open file descriptors.",
                lambda c: c.fds,
            ),
            ("process.thread.count", "{thread}", "Threads.", lambda c: c.threads),
            (
                "linnix.executable.process.count",
                "{process}",
                "Live processes per executable not broken out per pid.",
                lambda c: c.group_count,
            ),
            (
                "system.process.count",
                "{process}",
                "Live processes by state.",
                lambda c: c.states,
            ),
            (
                "linnix.alerts.firing",
                "{alert}",
                "Alerts firing now, by rule and severity.",
                lambda c: c.alerts_firing,
            ),
        ]
        for name, unit, text, pick in updowns:
            meter.create_observable_up_down_counter(name, [self._reader(pick)], unit, text)

        status_counters: list[tuple[str, str, str, Callable[[AgentStatus], list[Observation]]]] = [
            (
                "system.process.created",
                "{process}",
                "Processes created since the agent started.",
                lambda s: [Observation(s.events_by_kind.get("fork", 0))],
            ),
            (
                "linnix.oom.kills",
                "{process}",
                "Processes the kernel's OOM killer chose.",
                lambda s: [Observation(s.events_by_kind.get("oom_kill", 0))],
            ),
            (
                "linnix.events",
                "{event}",
                "Lifecycle events processed, by kind.",
                lambda s: [
                    Observation(n, {"linnix.event.kind": k}) for k, n in s.events_by_kind.items()
                ],
            ),
            (
                "linnix.events.lost",
                "{event}",
                "Kernel records lost (ring buffer full), by kind.",
                lambda s: [
                    Observation(n, {"linnix.event.kind": k}) for k, n in s.source_stats.lost.items()
                ],
            ),
            (
                "linnix.queue.dropped",
                "{event}",
                "Events dropped from a full sink queue, by sink.",
                lambda s: [Observation(n, {"linnix.sink": k}) for k, n in s.sink_dropped.items()],
            ),
            (
                "linnix.table.evictions",
                "{process}",
                "Process table entries evicted to stay within max_entries.",
                lambda s: [
                    Observation(s.table.evicted_exited, {"linnix.process.state": "exited"}),
                    Observation(s.table.evicted_live, {"linnix.process.state": "live"}),
                ],
            ),
        ]
        for name, unit, text, status_pick in status_counters:
            meter.create_observable_counter(name, [self._status_reader(status_pick)], unit, text)
        meter.create_observable_up_down_counter(
            "linnix.processes.live",
            [self._status_reader(lambda s: [Observation(s.table.live)])],
            "{process}",
            "Live processes in the table.",
        )
        meter.create_observable_up_down_counter(
            "linnix.stream.subscribers",
            [lambda _o: [Observation(self._stream_subscribers())]],
            "{subscriber}",
            "Clients connected to /stream.",
        )
        meter.create_observable_counter(
            "linnix.export.failures",
            [lambda _o: self._export_counts("failed")],
            "{batch}",
            "Export calls that failed, by signal.",
        )
        meter.create_observable_counter(
            "linnix.export.dropped",
            [lambda _o: self._export_counts("dropped")],
            "{record}",
            "Records dropped before export (queue full, rate limit), by signal.",
        )
        meter.create_observable_counter(
            "linnix.agent.cpu.time", [_agent_cpu], "s", "CPU time of the agent itself."
        )
        meter.create_observable_gauge(
            "linnix.agent.memory.usage", [_agent_rss], "By", "Resident memory of the agent."
        )

    def _reader(
        self, pick: Callable[[_Collection], list[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        return lambda _options: pick(self._current)

    def _status_reader(
        self, pick: Callable[[AgentStatus], list[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def read(_options: CallbackOptions) -> Iterable[Observation]:
            status = self._current.status
            return pick(status) if status is not None else []

        return read

    def _export_counts(self, what: str) -> list[Observation]:
        out: list[Observation] = []
        for signal, stats in list(self.export_stats.items()):
            try:
                value = stats().get(what)
            except Exception:
                log.exception("export stats of %s failed", signal)
                continue
            if value is not None:
                out.append(Observation(value, {"linnix.signal": signal}))
        return out

    def _collect_cpu(self, _options: CallbackOptions) -> Iterable[Observation]:
        self._current = self.collect()
        return self._current.cpu

    # ---- one collection ---------------------------------------------------------

    def collect(self) -> _Collection:
        """Every process observation, in one pass over the live processes."""
        with self._lock:
            return self._collect_locked()

    def _collect_locked(self) -> _Collection:
        now = self._clock()
        live = self._table.live_keys()
        # The last sweep's readings (the table holds the same objects), taken
        # once: the sampler replaces the mapping while this runs.
        swept = self._pipeline.sampler.last_samples
        groups, by_cpu, by_rss, states, used_now = self._one_pass(live, swept)
        # nlargest compares the tuples in C, without a key function.
        chosen = {k for _v, k in heapq.nlargest(self.top_n, by_cpu)}
        chosen.update(k for _v, k in heapq.nlargest(self.top_n, by_rss))
        alerts = list(self._firing_alerts())
        if alerts:
            chosen |= _alert_keys(alerts, live)

        out = _Collection(status=self._pipeline.status())
        for key in chosen:
            identity = self._identities.of(key)
            if identity is not None:
                sample = self._sample(key, swept)
                self._observe_process(
                    out, key, identity, sample=sample, groups=groups, used_now=used_now, now=now
                )
        self._account_exits(set(live.values()))
        if len(self._identities.by_key) > len(live) + 1024:
            self._identities.keep_only(live.values())
        group_cpu = self._group_cpu_ns
        for group_name, group in groups.items():
            if group.cpu_ns > 0:
                group_cpu[group_name] = group_cpu.get(group_name, 0) + group.cpu_ns
            if not group.count:
                continue  # every member has series of its own
            attrs = {EXE: group_name}
            out.memory.append(Observation(group.rss, attrs))
            out.fds.append(Observation(group.fds, attrs))
            out.threads.append(Observation(group.threads, attrs))
            out.group_count.append(Observation(group.count, attrs))
            out.groups += 1
        out.cpu.extend(Observation(ns / 1e9, {EXE: g}) for g, ns in group_cpu.items())
        out.states = [Observation(n, {"process.state": s}) for s, n in states.items()]
        firing: dict[tuple[str, str], int] = {}
        for alert in alerts:
            rule_key = (str(alert.get("rule")), str(alert.get("severity")))
            firing[rule_key] = firing.get(rule_key, 0) + 1
        out.alerts_firing = [
            Observation(n, {"linnix.alert.rule": r, "linnix.alert.severity": s})
            for (r, s), n in firing.items()
        ]
        return out

    def _sample(
        self, key: ProcessKey, swept: Mapping[ProcessKey, ProcessSample]
    ) -> ProcessSample | None:
        """The last sweep's reading, else the table's (a sweep capped by
        sample_max_processes does not cover every process)."""
        sample = swept.get(key)
        if sample is None:
            info = self._table.get(key)
            sample = info.sample if info is not None else None
        return sample

    def _one_pass(
        self, live: Mapping[int, ProcessKey], swept: Mapping[ProcessKey, ProcessSample]
    ) -> _Pass:
        """Every live process added to its executable's aggregate, the
        candidates for the top N, state counts, and CPU used since the last
        collection."""
        # One pass over every live process, adding each to its executable's
        # aggregate; the few selected for series of their own are taken out
        # of it afterwards. Locals and plain tuples: this loop is the cost of
        # a scrape with thousands of processes.
        swept_get = swept.get
        table_get = self._table.get
        identity_of = self._identities.of
        last_cpu = self._last_cpu
        last_cpu_get = last_cpu.get
        states_get = _STATES.get
        groups: dict[str, _Group] = {}
        by_cpu: list[tuple[float, ProcessKey]] = []
        by_rss: list[tuple[int, ProcessKey]] = []
        states: dict[str, int] = {}
        used_now: dict[ProcessKey, int] = {}
        for key in live.values():
            identity = identity_of(key)
            if identity is None:
                continue  # gone since live_keys()
            group = groups.get(identity[1])
            if group is None:
                group = groups[identity[1]] = _Group()
            group.count += 1
            sample = swept_get(key)
            if sample is None:
                info = table_get(key)
                if info is None or info.sample is None:
                    continue
                sample = info.sample
            rss = sample.rss_bytes or 0
            by_cpu.append((sample.cpu_percent or 0.0, key))
            by_rss.append((rss, key))
            group.rss += rss
            group.fds += sample.fd_count or 0
            group.threads += sample.threads or 0
            state = states_get(sample.state or "")
            if state is not None:
                states[state] = states.get(state, 0) + 1
            cpu_ns = sample.cpu_time_ns
            if cpu_ns is not None:
                used = cpu_ns - last_cpu_get(key, 0)
                if used > 0:
                    group.cpu_ns += used
                    used_now[key] = used
                last_cpu[key] = cpu_ns
        return groups, by_cpu, by_rss, states, used_now

    def _observe_process(
        self,
        out: _Collection,
        key: ProcessKey,
        identity: _Identity,
        *,
        sample: ProcessSample | None,
        groups: dict[str, _Group],
        used_now: Mapping[ProcessKey, int],
        now: int,
    ) -> None:
        """Series of its own for a selected process, taken out of its group's."""
        name, group_name, container_id = identity
        attrs: _Attrs = {PID: key.pid, EXE: name}
        if container_id:
            attrs[CONTAINER] = container_id
        out.per_process += 1
        out.uptime.append(Observation(max(0.0, (now - key.start_time_ns) / 1e9), attrs))
        group = groups[group_name]
        group.count -= 1
        if sample is None:
            return
        # Only CPU used while not broken out per pid counts towards the group.
        group.cpu_ns -= used_now.get(key, 0)
        group.rss -= sample.rss_bytes or 0
        group.fds -= sample.fd_count or 0
        group.threads -= sample.threads or 0
        if sample.cpu_time_ns is not None:
            out.cpu.append(Observation(sample.cpu_time_ns / 1e9, attrs))
        if sample.rss_bytes is not None:
            out.memory.append(Observation(sample.rss_bytes, attrs))
        if sample.fd_count is not None:
            out.fds.append(Observation(sample.fd_count, attrs))
        if sample.threads is not None:
            out.threads.append(Observation(sample.threads, attrs))

    def _account_exits(self, live: set[ProcessKey]) -> None:
        """CPU used between a process's last collection and its exit goes to its
        executable's aggregate, whether or not it had series of its own (those
        left with it)."""
        last_cpu = self._last_cpu
        group_cpu = self._group_cpu_ns
        for key, group_name, final_ns in self.sink.take_final_cpu():
            used = final_ns - last_cpu.pop(key, 0)
            self._vanished.pop(key, None)
            if used > 0:
                group_cpu[group_name] = group_cpu.get(group_name, 0) + used
        for key in [k for k in last_cpu if k not in live]:
            missed = self._vanished.get(key, 0) + 1
            if missed >= _VANISHED_COLLECTIONS:
                del last_cpu[key]
                self._vanished.pop(key, None)
            else:
                self._vanished[key] = missed

    # ---- the outside -------------------------------------------------------------

    def declare_rules(self, rules: Iterable[tuple[str, str]]) -> None:
        """Start the alert counter of every (rule, severity) at zero.

        A counter series that first appears at 1 hides its first increase
        from rate() and increase(): Prometheus has no earlier sample to
        compare with. Declaring the series up front makes the first alert
        of every rule count.
        """
        for rule, severity in rules:
            self._alerts_raised.add(
                0, {"linnix.alert.rule": rule, "linnix.alert.severity": severity}
            )

    def record_alert(self, rule: str, severity: str, state: str) -> None:
        """An alert transition (Agent delivers them); firing ones are counted."""
        if state == "firing":
            attrs = {"linnix.alert.rule": rule, "linnix.alert.severity": severity}
            self._alerts_raised.add(1, attrs)

    def exposition(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every instrument."""
        if self.registry is None:
            raise RuntimeError("Prometheus exposition is off ([export] prometheus = false)")
        return generate_latest(self.registry)

    def shutdown(self, timeout_s: float) -> bool:
        """Flush the OTLP reader and shut the provider down, within ``timeout_s``.

        Runs on a helper thread joined with the timeout: an exporter retrying a
        dead collector must not hold up the agent's stop. True when everything
        was flushed and shut down in time; otherwise the helper is a daemon
        thread and dies with the process.
        """
        done = threading.Event()
        clean: list[bool] = []

        def run() -> None:
            try:
                self.provider.shutdown(timeout_millis=max(1.0, timeout_s * 1000))
                clean.append(True)
            except Exception as exc:  # noqa: BLE001 - the SDK raises a bare Exception
                # The SDK raises when a reader ran out of time: expected with
                # a collector that is down, so one line, not a traceback.
                log.warning("metrics shutdown incomplete: %s", exc)
            finally:
                done.set()

        AgentThread(run, "linnix-metrics-shutdown").start()
        if not done.wait(timeout_s):
            log.warning("metrics export did not finish within %.1f s; not waiting", timeout_s)
            return False
        return bool(clean)


def _agent_cpu(_options: CallbackOptions) -> Iterable[Observation]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return [
        Observation(usage.ru_utime, {"cpu.mode": "user"}),
        Observation(usage.ru_stime, {"cpu.mode": "system"}),
    ]


def _agent_rss(_options: CallbackOptions) -> Iterable[Observation]:
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return []
    return [Observation(pages * _PAGE_SIZE)]
