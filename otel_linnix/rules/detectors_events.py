"""Event-driven detectors: fork storms, runaway process trees, crash loops, OOM kills.

Each detector fulfils :class:`~otel_linnix.rules.model.Detector` for one rule
and reports only the current truth; the engine owns alert lifecycle, cooldown
and deduplication. Windows are measured on the kernel's ``ts_ns``, never on
arrival time, so a batch delivered late is counted in the window where it
happened. Importing this module registers the detectors in ``DETECTORS``
(``import otel_linnix.rules.detectors`` registers every detector).

Memory is bounded per rule, and every bound is a named constant below.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from operator import itemgetter
from typing import Any, Generic, TypeVar

from otel_linnix.console import describe_exit
from otel_linnix.errors import ConfigError
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey
from otel_linnix.process_table import ProcessInfo, ProcessSample
from otel_linnix.rules.model import (
    DETECTORS,
    Admit,
    Detector,
    DetectorSpec,
    Finding,
    HostSample,
    Lineage,
    Param,
    Subject,
)

__all__ = [
    "CRASH_LOOP_PARAMS",
    "FORK_STORM_PARAMS",
    "OOM_KILL_PARAMS",
    "RUNAWAY_TREE_PARAMS",
    "CrashLoopDetector",
    "EventDetector",
    "ForkStormDetector",
    "OomKillDetector",
    "RunawayTreeDetector",
    "WindowCounts",
    "event_subject",
    "key_subject",
    "process_subject",
    "register",
    "resolve_params",
    "with_defaults",
]

_NS = 1_000_000_000
_FORK, _EXIT, _OOM = EventKind.FORK, EventKind.EXIT, EventKind.OOM_KILL

# A window is cut into this many buckets; the bucket the window's start falls
# into is counted pro rata, so a steady rate reads exactly and the error at the
# edge is bounded by how uneven arrivals were inside one tenth of the window.
_BUCKETS_PER_WINDOW = 10
# Distinct keys (parents, ancestors) one bucket tracks. Past it, the bucket
# still counts towards the host total, but the new key is not credited: the
# keys that matter in a storm are the ones credited on every event, so they are
# in the bucket long before it fills.
_MAX_KEYS_PER_BUCKET = 16_384
# runaway_tree: subtree roots tracked, and live processes whose credited
# ancestors are remembered (so an exit un-credits exactly what its fork did).
_MAX_TREE_NODES = 100_000
_MAX_CREDITED = 65_536
# A child subtree holding this share of its parent's births (or live
# descendants) makes the child, not the parent, the place the burst branches.
_DOMINANT_SHARE = 0.8
# pid 1 (init) and pid 2 (kthreadd) are ancestors of everything: never a root.
_NEVER_ROOTS = frozenset((1, 2))
# crash_loop: exit timestamps kept per group, and groups kept in all.
_MIN_EXITS_KEPT = 64
_EXITS_KEPT_TOTAL = 262_144
_LAST_PIDS = 5
# oom_kill: victims held at once.
_MAX_OOM_HELD = 1_024

K = TypeVar("K", bound=Hashable)


# ---- shared by every detector module ---------------------------------------------


def register(spec: DetectorSpec) -> DetectorSpec:
    """Put ``spec`` in the registry rules name detectors from."""
    DETECTORS[spec.name] = spec
    return spec


def resolve_params(
    name: str, spec: Mapping[str, Param], params: Mapping[str, Any]
) -> dict[str, Any]:
    """Every parameter of ``spec``: the given value, else the default."""
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ConfigError(f"detector {name}: unknown parameter(s) {', '.join(unknown)}")
    return {key: params.get(key, param.default) for key, param in spec.items()}


def with_defaults(
    name: str,
    build: Callable[[Mapping[str, Any], Lineage], Detector],
    spec: Mapping[str, Param],
) -> Callable[[Mapping[str, Any], Lineage], Detector]:
    """A factory that fills ``spec``'s defaults before building: the same class can
    be registered under several names with different defaults."""

    def factory(params: Mapping[str, Any], lineage: Lineage) -> Detector:
        return build(resolve_params(name, spec, params), lineage)

    return factory


def process_subject(info: ProcessInfo, kind: str = "process") -> Subject:
    """The subject for one process, keyed by its (tick-truncated) identity."""
    key = info.key
    return Subject(
        kind, f"process:{key}", key.pid, key.start_time_ns, info.comm, info.exe, info.container_id
    )


def key_subject(
    key: ProcessKey,
    info: ProcessInfo | None,
    kind: str = "process",
    fallback: tuple[str | None, str | None, str | None] = (None, None, None),
) -> Subject:
    """The subject for ``key``: from the table when it still knows the process,
    else from ``fallback`` (comm, exe, container id)."""
    if info is not None:
        return process_subject(info, kind)
    comm, exe, container_id = fallback
    return Subject(kind, f"process:{key}", key.pid, key.start_time_ns, comm, exe, container_id)


def event_subject(ev: ProcessEvent, lineage: Lineage, kind: str = "process") -> Subject:
    """The subject for the process an event is about."""
    key = ev.key
    return key_subject(key, lineage.get(key), kind, (ev.comm, ev.exe, ev.container_id))


class EventDetector:
    """Base of detectors that only react to lifecycle events."""

    def observe_samples(
        self,
        now_ns: int,
        samples: Mapping[ProcessKey, ProcessSample],
        host: HostSample | None,
        admit: Admit,
    ) -> None:
        """Sweeps carry nothing these detectors count."""


# ---- a sliding window of counts ----------------------------------------------------


class WindowCounts(Generic[K]):
    """Counts of occurrences, overall and per key, over a sliding window of kernel time.

    The window is cut into ``_BUCKETS_PER_WINDOW`` buckets (0.5 s for a 5 s
    window). A bucket wholly before the window is dropped and subtracted from
    the running totals; the one the window's start falls into is counted pro
    rata. Cost per occurrence: one dict update per key. Memory: at most
    ``_BUCKETS_PER_WINDOW + 1`` buckets (more only for timestamps ahead of
    ``now``) of at most ``max_keys`` keys each. Occurrences older than the
    window's start (as of the newest occurrence or ``advance`` seen) are
    ignored: their window is over.

    :meth:`count` and :meth:`count_all` are exact once :meth:`advance` has
    been called with the same ``now_ns``.
    """

    __slots__ = (
        "_bucket_ns",
        "_bucket_totals",
        "_buckets",
        "_floor",
        "_max_keys",
        "_window_ns",
        "dropped_keys",
        "total",
        "totals",
    )

    def __init__(self, window_ns: int, max_keys: int = _MAX_KEYS_PER_BUCKET) -> None:
        self._window_ns = window_ns
        self._bucket_ns = max(window_ns // _BUCKETS_PER_WINDOW, 1)
        self._max_keys = max_keys
        self._buckets: dict[int, dict[K, int]] = {}
        self._bucket_totals: dict[int, int] = {}
        self._floor: int | None = None  # buckets below this index are gone
        self.totals: dict[K, int] = {}  # per key, over every bucket still held
        self.total = 0
        self.dropped_keys = 0

    @property
    def bucket_ns(self) -> int:
        return self._bucket_ns

    @property
    def held(self) -> int:
        """Buckets plus (bucket, key) entries held: what memory grows with."""
        return len(self._buckets) + sum(len(b) for b in self._buckets.values())

    def add(self, ts_ns: int, keys: Iterable[K] = ()) -> bool:
        """Count one occurrence at ``ts_ns``, credited to each of ``keys``.

        False when it is older than the window. Buckets it pushes out of the
        window are expired here; a caller that needs the keys that fell to
        zero calls :meth:`advance` with ``ts_ns`` first.
        """
        idx = ts_ns // self._bucket_ns
        floor = self._floor
        if floor is not None and idx < floor:
            return False
        bucket = self._buckets.get(idx)
        if bucket is None:
            bucket = self._buckets[idx] = {}
            self._bucket_totals[idx] = 0
            # Expire here too, so memory stays bounded between findings calls.
            self.advance(ts_ns)
        self._bucket_totals[idx] += 1
        self.total += 1
        totals = self.totals
        for key in keys:
            n = bucket.get(key)
            if n is None:
                if len(bucket) >= self._max_keys:
                    self.dropped_keys += 1
                    continue
                bucket[key] = 1
            else:
                bucket[key] = n + 1
            totals[key] = totals.get(key, 0) + 1
        return True

    def advance(self, now_ns: int) -> list[K]:
        """Drop buckets that ended before the window ending at ``now_ns``;
        returns the keys whose count fell to zero."""
        floor = (now_ns - self._window_ns) // self._bucket_ns
        if self._floor is not None and floor <= self._floor:
            return []
        self._floor = floor
        zeroed: list[K] = []
        totals = self.totals
        for idx in [i for i in self._buckets if i < floor]:
            self.total -= self._bucket_totals.pop(idx)
            for key, n in self._buckets.pop(idx).items():
                left = totals[key] - n
                if left:
                    totals[key] = left
                else:
                    del totals[key]
                    zeroed.append(key)
        return zeroed

    def _edge(self, now_ns: int) -> tuple[int, float]:
        """(index of the bucket the window's start falls into, its share outside)."""
        start = now_ns - self._window_ns
        idx = start // self._bucket_ns
        return idx, (start - idx * self._bucket_ns) / self._bucket_ns

    def count(self, key: K, now_ns: int) -> float:
        n = self.totals.get(key, 0)
        if not n:
            return 0.0
        idx, outside = self._edge(now_ns)
        edge = self._buckets.get(idx)
        return n - outside * edge.get(key, 0) if edge else float(n)

    def count_all(self, now_ns: int) -> float:
        idx, outside = self._edge(now_ns)
        return self.total - outside * self._bucket_totals.get(idx, 0)


# ---- fork_storm ----------------------------------------------------------------------


FORK_STORM_PARAMS: Mapping[str, Param] = {
    "threshold_per_s": Param(float, 200.0, lo=1e-6, doc="forks per second that make a storm"),
    "window_s": Param(float, 5.0, lo=0.5, hi=3600.0, doc="sliding window, seconds"),
    "per": Param(
        str, "host", choices=("host", "parent"), doc="count host-wide, or per forking parent"
    ),
}


class ForkStormDetector(EventDetector):
    """New processes per second over a sliding window, host-wide or per parent.

    Host-wide findings name the three busiest parents. Forks whose parent is
    unknown count host-wide only.
    """

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        p = resolve_params("fork_storm", FORK_STORM_PARAMS, params)
        self._threshold = float(p["threshold_per_s"])
        self._window_s = float(p["window_s"])
        self._per_parent = p["per"] == "parent"
        self._lineage = lineage
        self._counts: WindowCounts[ProcessKey] = WindowCounts(int(self._window_s * _NS))

    @property
    def tracked(self) -> int:
        """Entries held (memory bounds, self-metrics)."""
        return self._counts.held

    def observe_event(self, ev: ProcessEvent, accept: Callable[[ProcessEvent], bool]) -> None:
        if ev.kind is not _FORK or not accept(ev):
            return
        parent = ev.parent_key
        if parent is None:
            # The table links a child to the live holder of its ppid.
            info = self._lineage.get(ev.key)
            parent = info.parent_key if info is not None else None
        self._counts.add(ev.ts_ns, () if parent is None else (parent,))

    def findings(self, now_ns: int) -> list[Finding]:
        counts = self._counts
        counts.advance(now_ns)
        window_s, threshold = self._window_s, self._threshold
        base = {"window_s": window_s, "threshold_per_s": threshold}
        if not self._per_parent:
            n = counts.count_all(now_ns)
            if n / window_s < threshold:
                return []
            # Ranked on running totals (one C-level pass over thousands of
            # parents in a fork bomb); shown with their counts in the window.
            top = heapq.nlargest(3, counts.totals.items(), key=itemgetter(1))
            named = ", ".join(
                f"{self._comm(k)}({k.pid})={round(counts.count(k, now_ns))}" for k, _ in top
            )
            evidence = {"rate": n / window_s, "count": round(n), **base, "top_parents": named}
            return [Finding(Subject("host", "host"), n / window_s, evidence)]
        out: list[Finding] = []
        # totals never undercount, so they pick the candidates cheaply; the
        # largest is found in C, and on a healthy host it is below the bar.
        least = threshold * window_s * (1 - 1e-9)
        totals = counts.totals
        if not totals or max(totals.values()) < least:
            return out
        for key in [k for k, total in totals.items() if total >= least]:
            n = counts.count(key, now_ns)
            if n / window_s >= threshold:
                subject = key_subject(key, self._lineage.get(key), "parent")
                evidence = {
                    "rate": n / window_s,
                    "count": round(n),
                    **base,
                    "pid": key.pid,
                    "comm": subject.comm or "?",
                }
                out.append(Finding(subject, n / window_s, evidence))
        return out

    def _comm(self, key: ProcessKey) -> str:
        info = self._lineage.get(key)
        return info.comm if info is not None else "?"


register(
    DetectorSpec(
        name="fork_storm",
        doc="Processes created per second over a sliding window, host-wide or per parent.",
        subject="host",
        params=FORK_STORM_PARAMS,
        factory=with_defaults("fork_storm", ForkStormDetector, FORK_STORM_PARAMS),
        default_message=(
            "{rate:.0f} processes/s created over {window_s:g} s (threshold {threshold_per_s:g}/s)"
        ),
        inputs=("event",),
        event_kinds=("fork",),
    )
)


# ---- runaway_tree --------------------------------------------------------------------

_MAX_CHAINS = 4096  # cached ancestor chains (one per forking parent)


RUNAWAY_TREE_PARAMS: Mapping[str, Param] = {
    "births_per_s": Param(float, 100.0, lo=1e-6, doc="births below one root per second"),
    "window_s": Param(float, 5.0, lo=0.5, hi=3600.0, doc="sliding window for births, seconds"),
    "max_live_descendants": Param(
        int, 2000, lo=0, hi=10_000_000, doc="live descendants that make a runaway (0: off)"
    ),
    "max_depth": Param(int, 16, lo=1, hi=64, doc="ancestors credited per birth"),
}


class _Node:
    """A subtree root that has been credited with births or live descendants."""

    __slots__ = ("born_ns", "children", "comm", "container_id", "exe", "live", "parent")

    def __init__(self, info: ProcessInfo | None) -> None:
        self.born_ns = info.start_time_ns if info is not None else -1
        self.comm = info.comm if info is not None else None
        self.exe = info.exe if info is not None else None
        self.container_id = info.container_id if info is not None else None
        self.live = 0
        self.parent: ProcessKey | None = None
        self.children: set[ProcessKey] = set()  # tracked children only


class RunawayTreeDetector(EventDetector):
    """The branching point of a burst of births, or of a tree of too many live processes.

    Every accepted fork credits one birth (windowed) and one live descendant
    to each of the new process's ancestors, up to ``max_depth``. Which
    ancestors were credited is remembered per live process (bounded by
    ``_MAX_CREDITED``) rather than re-walked at exit: by then an ancestor may
    have been pruned from the table, and processes that predate the agent
    must not be un-credited.

    A root qualifies when its births or live descendants reach the limits
    and no single child subtree holds ``_DOMINANT_SHARE`` of them (so the
    shell above a fork bomb does not qualify: the bomb's root holds all of
    its births). Of the qualifying roots, only the topmost of each chain is
    reported, so a fork bomb is one finding, not one per level.
    """

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        p = resolve_params("runaway_tree", RUNAWAY_TREE_PARAMS, params)
        self._births_per_s = float(p["births_per_s"])
        self._window_s = float(p["window_s"])
        self._window_ns = int(self._window_s * _NS)
        # Candidates are picked on running totals, which never undercount; the
        # slack keeps float rounding from losing one exactly at the limit.
        self._births_limit = self._births_per_s * self._window_s * (1 - 1e-9)
        self._max_live = int(p["max_live_descendants"])
        self._max_depth = int(p["max_depth"])
        self._lineage = lineage
        self._births: WindowCounts[ProcessKey] = WindowCounts(self._window_ns)
        self._nodes: dict[ProcessKey, _Node] = {}
        # pid -> (process, ancestors credited with it as a live descendant)
        self._credited: dict[int, tuple[ProcessKey, tuple[ProcessKey, ...]]] = {}
        self._hot: set[ProcessKey] = set()  # nodes that may be over a limit
        # parent -> the nodes credited for a birth under it (parent first);
        # dropped whenever a node is forgotten or one of them exits.
        self._chains: dict[ProcessKey, tuple[ProcessKey, ...]] = {}
        # hot node -> (bucket it was worked out in, top child births, top child live)
        # root -> (bucket epoch, its largest child by births, by live descendants)
        self._shares: dict[ProcessKey, tuple[int, ProcessKey | None, ProcessKey | None]] = {}
        self.nodes_dropped = 0
        self.uncredited = 0

    @property
    def tracked(self) -> int:
        """Entries held (memory bounds, self-metrics)."""
        return len(self._nodes) + len(self._credited) + self._births.held

    def observe_event(self, ev: ProcessEvent, accept: Callable[[ProcessEvent], bool]) -> None:
        kind = ev.kind
        if kind is _EXIT:
            self._on_exit(ev)
            return
        if kind is not _FORK or not accept(ev):
            return
        key = ev.key
        held = self._credited.get(key.pid)
        if held is not None:
            if held[0] == key:
                return  # the same fork seen twice (a bootstrap racing the probe)
            # The pid was reused: the earlier holder's exit was lost.
            del self._credited[key.pid]
            self._release(held[1])
        # Expire first, so no node is forgotten between being linked and credited.
        self._expire(ev.ts_ns)
        credited = self._credit_chain(key, ev.parent_key)
        if credited is None:
            return
        self._births.add(ev.ts_ns, credited)
        remember = len(self._credited) < _MAX_CREDITED
        if remember:
            self._credited[key.pid] = (key, credited)
        else:
            self.uncredited += 1
        nodes, totals = self._nodes, self._births.totals
        births_limit, max_live = self._births_limit, self._max_live
        for a in credited:
            node = nodes[a]
            if remember:
                node.live += 1
            if totals.get(a, 0) >= births_limit or (max_live and node.live >= max_live):
                self._hot.add(a)

    def _on_exit(self, ev: ProcessEvent) -> None:
        held = self._credited.get(ev.pid)
        if held is not None and held[0] == ev.key:
            del self._credited[ev.pid]
            self._release(held[1])
        if self._chains and ev.key in self._nodes:
            # Its children are re-parented: chains through it are stale.
            self._chains.clear()

    def _credit_chain(
        self, key: ProcessKey, parent: ProcessKey | None
    ) -> tuple[ProcessKey, ...] | None:
        """The nodes a birth of ``key`` under ``parent`` credits, parent first."""
        chains = self._chains
        credited = chains.get(parent) if parent is not None else None
        if credited is not None:
            return credited
        chain = self._lineage.ancestor_keys(key, self._max_depth)
        if not chain:
            return None
        credited = self._link(chain)
        # Siblings share the chain: a fork storm's children are credited
        # without walking the table and re-linking the nodes each time.
        if chain[0] == parent:
            if len(chains) >= _MAX_CHAINS:
                chains.clear()
            chains[chain[0]] = credited
        return credited

    def _link(self, chain: list[ProcessKey]) -> tuple[ProcessKey, ...]:
        """The nodes of ``chain`` (created as needed, linked child to parent)."""
        nodes = self._nodes
        out: list[ProcessKey] = []
        below: _Node | None = None
        below_key: ProcessKey | None = None
        for a in chain:
            node = nodes.get(a)
            if node is None:
                if len(nodes) >= _MAX_TREE_NODES:
                    self.nodes_dropped += 1
                    below = below_key = None
                    continue
                node = nodes[a] = _Node(self._lineage.get(a))
            if below is not None and below_key is not None and below.parent != a:
                below.parent = a
                node.children.add(below_key)
            out.append(a)
            below, below_key = node, a
        return tuple(out)

    def _release(self, credited: tuple[ProcessKey, ...]) -> None:
        nodes, totals = self._nodes, self._births.totals
        for a in credited:
            node = nodes.get(a)
            if node is not None:
                node.live -= 1
                if node.live <= 0 and a not in totals:
                    self._forget(a, node)

    def _forget(self, key: ProcessKey, node: _Node) -> None:
        del self._nodes[key]
        self._chains.clear()
        self._hot.discard(key)
        self._shares.pop(key, None)
        if node.parent is not None:
            parent = self._nodes.get(node.parent)
            if parent is not None:
                parent.children.discard(key)
        for child_key in node.children:
            child = self._nodes.get(child_key)
            if child is not None and child.parent == key:
                child.parent = None  # relinked by the next fork below it

    def _expire(self, now_ns: int) -> None:
        for key in self._births.advance(now_ns):
            node = self._nodes.get(key)
            if node is not None and node.live <= 0:
                self._forget(key, node)

    def findings(self, now_ns: int) -> list[Finding]:
        births = self._births
        nodes = self._nodes
        self._expire(now_ns)
        window_start = now_ns - self._window_ns
        qualified: dict[ProcessKey, tuple[float, str, float]] = {}
        for key in list(self._hot):
            node = nodes.get(key)
            over_live = bool(self._max_live) and node is not None and node.live >= self._max_live
            if node is None or (births.totals.get(key, 0) < self._births_limit and not over_live):
                self._hot.discard(key)
                self._shares.pop(key, None)
                continue
            if key.pid in _NEVER_ROOTS:
                continue
            n = births.count(key, now_ns)
            top_births, top_live = self._top_shares(key, node, now_ns, window_start)
            if n / self._window_s >= self._births_per_s and top_births < _DOMINANT_SHARE * n:
                qualified[key] = (n, "births", top_births / n)
            elif over_live and top_live < _DOMINANT_SHARE * node.live:
                qualified[key] = (n, "live", top_live / node.live)
        return [
            self._finding(key, nodes[key], *figures)
            for key, figures in qualified.items()
            if not self._below_qualified(key, qualified)
        ]

    def _top_shares(
        self, key: ProcessKey, node: _Node, now_ns: int, window_start: int
    ) -> tuple[float, float]:
        """(births, live) of the largest child subtree.

        Which child is largest is worked out at most once per bucket (the root of
        a wide tree has thousands of children, and findings are asked for after
        every batch); that child's figures are read fresh every time, since a
        burst adds thousands of births within one bucket.
        """
        epoch = now_ns // self._births.bucket_ns
        cached = self._shares.get(key)
        if cached is None or cached[0] != epoch:
            cached = self._shares[key] = (
                epoch,
                self._largest_child(node, lambda c: self._child_births(c, now_ns, window_start)),
                self._largest_child(node, self._child_live),
            )
        _, by_births, by_live = cached
        births = self._child_births(by_births, now_ns, window_start) if by_births else 1.0
        live = self._child_live(by_live) if by_live else 1.0
        return max(births, 1.0), max(live, 1.0)

    def _largest_child(self, node: _Node, size: Callable[[ProcessKey], float]) -> ProcessKey | None:
        best, best_size = None, -1.0
        for child_key in node.children:
            if child_key in self._nodes:
                child_size = size(child_key)
                if child_size > best_size:
                    best, best_size = child_key, child_size
        return best

    def _child_births(self, child_key: ProcessKey, now_ns: int, window_start: int) -> float:
        # A child's share is its subtree's births plus its own birth.
        child = self._nodes.get(child_key)
        if child is None:
            return 0.0
        born = 1 if child.born_ns > window_start else 0
        return self._births.count(child_key, now_ns) + born

    def _child_live(self, child_key: ProcessKey) -> float:
        child = self._nodes.get(child_key)
        if child is None:
            return 0.0
        held = self._credited.get(child_key.pid)
        alive = 1 if held is not None and held[0] == child_key else 0
        return float(child.live + alive)

    def _below_qualified(self, key: ProcessKey, qualified: Mapping[ProcessKey, Any]) -> bool:
        parent = self._nodes[key].parent
        for _ in range(self._max_depth):
            if parent is None:
                return False
            if parent in qualified:
                return True
            node = self._nodes.get(parent)
            parent = node.parent if node is not None else None
        return False

    def _finding(
        self, key: ProcessKey, node: _Node, births: float, trigger: str, top_share: float
    ) -> Finding:
        subject = key_subject(
            key, self._lineage.get(key), "process", (node.comm, node.exe, node.container_id)
        )
        rate = births / self._window_s
        evidence = {
            "births": round(births),
            "rate": rate,
            "live_descendants": node.live,
            "window_s": self._window_s,
            "births_per_s": self._births_per_s,
            "max_live_descendants": self._max_live,
            "trigger": trigger,
            "top_child_share": round(top_share, 3),
            "pid": key.pid,
            "comm": subject.comm or "?",
        }
        return Finding(subject, rate if trigger == "births" else float(node.live), evidence)


register(
    DetectorSpec(
        name="runaway_tree",
        doc=(
            "The branching point of a burst of births (or of too many live descendants), "
            "not every ancestor above it."
        ),
        subject="process",
        params=RUNAWAY_TREE_PARAMS,
        factory=with_defaults("runaway_tree", RunawayTreeDetector, RUNAWAY_TREE_PARAMS),
        default_message=(
            "{comm}({pid}) spawned {births} processes in {window_s:g} s ({rate:.0f}/s); "
            "{live_descendants} live descendants"
        ),
        inputs=("event",),
        event_kinds=("fork", "exit"),
    )
)


# ---- crash_loop ----------------------------------------------------------------------


CRASH_LOOP_PARAMS: Mapping[str, Param] = {
    "min_exits": Param(int, 5, lo=1, hi=10_000, doc="exits in the window that make a loop"),
    "window_s": Param(float, 20.0, lo=0.5, hi=86_400.0, doc="sliding window, seconds"),
    "abnormal_only": Param(bool, True, doc="count only exits by signal or non-zero status"),
    "max_lifetime_ms": Param(
        float,
        None,
        lo=0.0,
        hi=86_400_000.0,
        nullable=True,
        doc="count only processes that lived at most this long",
    ),
    "group_by": Param(str, "exe", choices=("exe", "comm"), doc="what makes exits the same program"),
}


class _ExitGroup:
    __slots__ = ("comm", "exe", "exits", "last", "last_status", "last_ts")

    def __init__(self, cap: int) -> None:
        self.exits: deque[int] = deque(maxlen=cap)  # timestamps, arrival order
        self.last: deque[tuple[int, int]] = deque(maxlen=_LAST_PIDS)  # (ts, pid)
        self.last_ts = -1
        self.last_status = ""
        self.comm = ""
        self.exe: str | None = None


class CrashLoopDetector(EventDetector):
    """Exits of one program (by executable or comm) piling up in a sliding window.

    Keeps the exit timestamps of each group, at most ``max(min_exits, 64)``:
    enough to decide exactly, so the reported count saturates there. Groups
    are bounded so that all groups together keep at most ``_EXITS_KEPT_TOTAL``
    timestamps; past that the oldest group is dropped.
    """

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        p = resolve_params("crash_loop", CRASH_LOOP_PARAMS, params)
        self._min_exits = int(p["min_exits"])
        self._window_s = float(p["window_s"])
        self._window_ns = int(self._window_s * _NS)
        self._abnormal_only = bool(p["abnormal_only"])
        lifetime = p["max_lifetime_ms"]
        self._max_lifetime_ms: float | None = None if lifetime is None else float(lifetime)
        self._max_lifetime_ns = None if lifetime is None else int(float(lifetime) * 1_000_000)
        self._by_exe = p["group_by"] == "exe"
        self._lineage = lineage
        self._cap = max(self._min_exits, _MIN_EXITS_KEPT)
        self._max_groups = max(_EXITS_KEPT_TOTAL // self._cap, 16)
        self._groups: dict[str, _ExitGroup] = {}
        self._horizon_ns: int | None = None  # exits at or before this are out of every window
        self.groups_dropped = 0

    @property
    def tracked(self) -> int:
        """Entries held (memory bounds, self-metrics)."""
        return len(self._groups) + sum(len(g.exits) for g in self._groups.values())

    def observe_event(self, ev: ProcessEvent, accept: Callable[[ProcessEvent], bool]) -> None:
        if ev.kind is not _EXIT:
            return
        if self._abnormal_only and ev.exit_signal is None and not ev.exit_code:
            return
        ts = ev.ts_ns
        if self._max_lifetime_ns is not None and ts - ev.start_time_ns > self._max_lifetime_ns:
            return
        horizon = self._horizon_ns
        if horizon is not None and ts <= horizon:
            return
        if not accept(ev):
            return
        exe = ev.exe
        if exe is None and self._by_exe:
            info = self._lineage.get(ev.key)
            exe = info.exe if info is not None else None
        name = (exe or ev.comm) if self._by_exe else ev.comm
        group = self._groups.get(name)
        if group is None:
            group = self._new_group(name, ts)
        group.exits.append(ts)
        group.last.append((ts, ev.pid))
        if ts >= group.last_ts:
            group.last_ts = ts
            group.last_status = describe_exit(ev)
            group.comm = ev.comm
            group.exe = exe if self._by_exe else None
        if horizon is None or ts - self._window_ns > horizon:
            self._horizon_ns = ts - self._window_ns

    def _new_group(self, name: str, now_ns: int) -> _ExitGroup:
        if len(self._groups) >= self._max_groups:
            self._expire(now_ns)
        while len(self._groups) >= self._max_groups:
            del self._groups[next(iter(self._groups))]
            self.groups_dropped += 1
        group = self._groups[name] = _ExitGroup(self._cap)
        return group

    def _expire(self, now_ns: int) -> None:
        start = now_ns - self._window_ns
        for name, group in list(self._groups.items()):
            exits = group.exits
            # Arrival order is kernel order but for stragglers, which the
            # count below filters anyway.
            while exits and exits[0] <= start:
                exits.popleft()
            if not exits:
                del self._groups[name]

    def findings(self, now_ns: int) -> list[Finding]:
        self._expire(now_ns)
        start = now_ns - self._window_ns
        out: list[Finding] = []
        for name, group in self._groups.items():
            exits = sum(1 for ts in group.exits if ts > start)
            if exits < self._min_exits:
                continue
            recent = sorted((e for e in group.last if e[0] > start), reverse=True)
            evidence = {
                "exits": exits,
                "window_s": self._window_s,
                "min_exits": self._min_exits,
                "abnormal_only": self._abnormal_only,
                "max_lifetime_ms": self._max_lifetime_ms,
                "last_status": group.last_status,
                "last_pids": ",".join(str(pid) for _, pid in recent),
                "executable": name,
            }
            subject = Subject("executable", f"executable:{name}", comm=group.comm, exe=group.exe)
            out.append(Finding(subject, float(exits), evidence))
        return out


register(
    DetectorSpec(
        name="crash_loop",
        doc="Exits of one program piling up: a crash loop, or a flood of short jobs.",
        subject="executable",
        params=CRASH_LOOP_PARAMS,
        factory=with_defaults("crash_loop", CrashLoopDetector, CRASH_LOOP_PARAMS),
        default_message=(
            "{executable} exited {exits} times in {window_s:g} s "
            "(last: {last_status}; pids {last_pids})"
        ),
        inputs=("event",),
        event_kinds=("exit",),
    )
)


# ---- oom_kill ------------------------------------------------------------------------


OOM_KILL_PARAMS: Mapping[str, Param] = {
    "hold_s": Param(float, 60.0, lo=0.0, hi=86_400.0, doc="how long a kill stays a finding"),
}


class OomKillDetector(EventDetector):
    """Each OOM kill is a finding about its victim for ``hold_s`` after it happened.

    At most ``_MAX_OOM_HELD`` victims are held; past that the oldest is dropped.
    """

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        p = resolve_params("oom_kill", OOM_KILL_PARAMS, params)
        self._hold_s = float(p["hold_s"])
        self._hold_ns = int(self._hold_s * _NS)
        self._lineage = lineage
        self._held: OrderedDict[ProcessKey, tuple[int, Finding]] = OrderedDict()

    @property
    def tracked(self) -> int:
        """Entries held (memory bounds, self-metrics)."""
        return len(self._held)

    def observe_event(self, ev: ProcessEvent, accept: Callable[[ProcessEvent], bool]) -> None:
        if ev.kind is not _OOM or not accept(ev):
            return
        key = ev.key
        previous = self._held.get(key)
        if previous is not None and previous[0] >= ev.ts_ns:
            return
        subject = event_subject(ev, self._lineage)
        if ev.container_id is not None:
            # The kernel record names the cgroup at the kill; the table may not know it.
            subject = subject._replace(container_id=ev.container_id)
        evidence = {
            "pid": ev.pid,
            "comm": ev.comm,
            "rss_bytes": ev.rss_bytes,
            # for messages: rss_bytes is null when the kernel record lacked it
            "resident": (
                f"{ev.rss_bytes / 2**20:.0f} MiB" if ev.rss_bytes is not None else "unknown memory"
            ),
            "container_id": subject.container_id,
            "hold_s": self._hold_s,
        }
        self._held[key] = (ev.ts_ns, Finding(subject, float(ev.rss_bytes or 0), evidence))
        self._held.move_to_end(key)
        while len(self._held) > _MAX_OOM_HELD:
            self._held.popitem(last=False)

    def findings(self, now_ns: int) -> list[Finding]:
        hold = self._hold_ns
        for key in [k for k, (ts, _) in self._held.items() if now_ns > ts + hold]:
            del self._held[key]
        return [finding for _, finding in self._held.values()]


register(
    DetectorSpec(
        name="oom_kill",
        doc="The kernel's OOM killer chose a victim (a finding for hold_s after the kill).",
        subject="process",
        params=OOM_KILL_PARAMS,
        factory=with_defaults("oom_kill", OomKillDetector, OOM_KILL_PARAMS),
        default_message="OOM killer killed {comm}({pid}) holding {resident} resident",
        inputs=("event",),
        event_kinds=("oom_kill",),
    )
)
