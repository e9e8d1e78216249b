"""Sample-driven detectors: per-process CPU, memory and descriptors, host pressure.

Each detector is fed the sweep's readings (by process key) and host figures
after every sampler sweep and works out its findings there; ``findings``
returns that result. It asks ``admit`` for a process (its view, if the
rule's condition admits it) only when its reading matters. A process
missing from a sweep is forgotten, so state never outlives the processes
the table holds. Durations run on the samples' ``ts_ns`` (per
process) or the sweep's time (host figures), never on arrival.
"""

from __future__ import annotations

import abc
import heapq
import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter, itemgetter
from typing import Any

from otel_linnix.events import ProcessEvent, ProcessKey
from otel_linnix.process_table import ProcessSample
from otel_linnix.rules.detectors_events import (
    process_subject,
    register,
    resolve_params,
    with_defaults,
)
from otel_linnix.rules.model import (
    Admit,
    DetectorSpec,
    Finding,
    HostSample,
    Lineage,
    Param,
    Subject,
)

__all__ = [
    "CPU_SPIKE_PARAMS",
    "CPU_THRASHING_PARAMS",
    "FD_EXHAUSTION_PARAMS",
    "MEMORY_LEAK_PARAMS",
    "PSI_PRESSURE_PARAMS",
    "RSS_HIGH_PARAMS",
    "RUNAWAY_PROCESS_PARAMS",
    "CpuSpikeDetector",
    "CpuThrashingDetector",
    "FdExhaustionDetector",
    "MemoryLeakDetector",
    "PsiPressureDetector",
    "RssHighDetector",
    "SampleDetector",
    "fit_line",
]

_NS = 1_000_000_000
_MIB = 1024 * 1024
# Readings kept per process for a trend, whatever the sweep interval: a 30 s
# window at one sweep a second needs 31.
_MAX_SERIES = 256
# RLIMIT_NOFILE at or above this is "unlimited" (RLIM_INFINITY is 2**64 - 1).
_UNLIMITED = 2**62


class SampleDetector:
    """Base of detectors fed by sweeps: events carry nothing they count."""

    def __init__(self) -> None:
        self._findings: list[Finding] = []

    def observe_event(self, ev: ProcessEvent, accept: Callable[[ProcessEvent], bool]) -> None:
        """Lifecycle events are not counted here."""

    def findings(self, now_ns: int) -> list[Finding]:
        """What the last sweep found."""
        return list(self._findings)


def _seconds(ns: int) -> float:
    return ns / _NS


# ---- sustained per-process readings: cpu_spike, runaway_process, rss_high -----------


class _Run:
    """Consecutive readings at or above a threshold."""

    __slots__ = ("first_ns", "last", "last_ns", "n", "total")

    def __init__(self, ts_ns: int, value: float) -> None:
        self.first_ns = self.last_ns = ts_ns
        self.last = self.total = value
        self.n = 1

    def add(self, ts_ns: int, value: float) -> None:
        self.last_ns = ts_ns
        self.last = value
        self.total += value
        self.n += 1


class _SustainedReading(SampleDetector, abc.ABC):
    """A process whose reading stays at or above a threshold in every sweep for a while.

    A missing reading or a lower one ends the run. A reading not refreshed
    since the last sweep (same ``ts_ns``) neither extends nor ends it. The
    run starts at the first high reading's time, so it is measured
    conservatively (the interval that reading covers is not counted).
    """

    def __init__(self, threshold: float, duration_s: float) -> None:
        super().__init__()
        self._threshold = threshold
        self._duration_s = duration_s
        self._duration_ns = int(duration_s * _NS)
        self._runs: dict[ProcessKey, _Run] = {}

    @property
    def tracked(self) -> int:
        """Processes held (memory bounds, self-metrics)."""
        return len(self._runs)

    @abc.abstractmethod
    def _reading(self, sample: ProcessSample) -> float | None:
        """The figure compared with the threshold; None when the sample has none."""

    @abc.abstractmethod
    def _evidence(self, run: _Run) -> dict[str, Any]:
        """What a finding of ``run`` reports besides the common fields."""

    def observe_samples(
        self,
        now_ns: int,
        samples: Mapping[ProcessKey, ProcessSample],
        host: HostSample | None,
        admit: Admit,
    ) -> None:
        runs, threshold = self._runs, self._threshold
        kept: dict[ProcessKey, _Run] = {}
        found: list[Finding] = []
        reading = self._reading
        for key, sample in samples.items():
            value = reading(sample)
            if value is None or value < threshold:
                continue
            p = admit(key)
            if p is None:
                continue
            run = runs.get(key)
            if run is None:
                run = _Run(sample.ts_ns, value)
            elif sample.ts_ns > run.last_ns:
                run.add(sample.ts_ns, value)
            kept[key] = run
            if run.last_ns - run.first_ns >= self._duration_ns:
                evidence = {
                    **self._evidence(run),
                    "since_s": _seconds(run.last_ns - run.first_ns),
                    "duration_s": self._duration_s,
                    "pid": p.pid,
                    "comm": p.comm,
                }
                found.append(Finding(process_subject(p), float(run.last), evidence))
        self._runs = kept
        self._findings = found


CPU_SPIKE_PARAMS: Mapping[str, Param] = {
    "threshold_pct": Param(float, 90.0, lo=0.0, doc="% of one core (a 4-thread spin reads 400)"),
    "duration_s": Param(float, 20.0, lo=0.0, hi=86_400.0, doc="how long, seconds"),
}
RUNAWAY_PROCESS_PARAMS: Mapping[str, Param] = {
    "threshold_pct": Param(float, 95.0, lo=0.0, doc="% of one core (a 4-thread spin reads 400)"),
    "duration_s": Param(float, 60.0, lo=0.0, hi=86_400.0, doc="how long, seconds"),
}


class CpuSpikeDetector(_SustainedReading):
    """A process at or above ``threshold_pct`` of one core in every sweep for ``duration_s``."""

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        p = resolve_params("cpu_spike", CPU_SPIKE_PARAMS, params)
        super().__init__(float(p["threshold_pct"]), float(p["duration_s"]))

    def _reading(self, sample: ProcessSample) -> float | None:
        return sample.cpu_percent

    def _evidence(self, run: _Run) -> dict[str, Any]:
        return {
            "cpu_percent": run.last,
            "avg_cpu_percent": run.total / run.n,
            "threshold_pct": self._threshold,
        }


_CPU_MESSAGE = (
    "{comm}({pid}) at {cpu_percent:.0f}% CPU for {since_s:.0f} s "
    "(average {avg_cpu_percent:.0f}%, threshold {threshold_pct:g}%)"
)
register(
    DetectorSpec(
        name="cpu_spike",
        doc="A process using at least threshold_pct of one core, continuously, for duration_s.",
        subject="process",
        params=CPU_SPIKE_PARAMS,
        factory=with_defaults("cpu_spike", CpuSpikeDetector, CPU_SPIKE_PARAMS),
        default_message=_CPU_MESSAGE,
        inputs=("sample",),
    )
)
register(
    DetectorSpec(
        name="runaway_process",
        doc="cpu_spike with a higher bar and a longer wait: a process spinning for minutes.",
        subject="process",
        params=RUNAWAY_PROCESS_PARAMS,
        factory=with_defaults("runaway_process", CpuSpikeDetector, RUNAWAY_PROCESS_PARAMS),
        default_message=_CPU_MESSAGE,
        inputs=("sample",),
    )
)


RSS_HIGH_PARAMS: Mapping[str, Param] = {
    "threshold_bytes": Param(int, 1024 * _MIB, lo=1, hi=2**62, doc="resident set size, bytes"),
    "duration_s": Param(float, 30.0, lo=0.0, hi=86_400.0, doc="how long, seconds"),
}


class RssHighDetector(_SustainedReading):
    """A process whose resident memory stays at or above ``threshold_bytes`` for ``duration_s``."""

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        p = resolve_params("rss_high", RSS_HIGH_PARAMS, params)
        super().__init__(int(p["threshold_bytes"]), float(p["duration_s"]))

    def _reading(self, sample: ProcessSample) -> float | None:
        return sample.rss_bytes

    def _evidence(self, run: _Run) -> dict[str, Any]:
        return {
            "rss_bytes": int(run.last),
            "avg_rss_bytes": round(run.total / run.n),
            "threshold_bytes": int(self._threshold),
            "rss_mib": run.last / _MIB,
            "threshold_mib": self._threshold / _MIB,
        }


register(
    DetectorSpec(
        name="rss_high",
        doc="A process holding at least threshold_bytes resident, continuously, for duration_s.",
        subject="process",
        params=RSS_HIGH_PARAMS,
        factory=with_defaults("rss_high", RssHighDetector, RSS_HIGH_PARAMS),
        default_message=(
            "{comm}({pid}) resident memory {rss_mib:.0f} MiB for {since_s:.0f} s "
            "(threshold {threshold_mib:.0f} MiB)"
        ),
        inputs=("sample",),
    )
)


# ---- trends: memory_leak, fd_exhaustion -------------------------------------------------


def fit_line(ts_ns: Sequence[int], values: Sequence[int]) -> tuple[float, float]:
    """Least-squares slope (per second) and R² of ``values`` over ``ts_ns``.

    (0.0, 0.0) when there is no spread in time or in values.
    """
    n = len(ts_ns)
    t0 = ts_ns[0]
    xs = [(t - t0) / _NS for t in ts_ns]
    mx = math.fsum(xs) / n
    my = math.fsum(values) / n
    sxx = sxy = syy = 0.0
    for x, y in zip(xs, values, strict=True):
        dx, dy = x - mx, y - my
        sxx += dx * dx
        sxy += dx * dy
        syy += dy * dy
    if sxx == 0.0 or syy == 0.0:
        return 0.0, 0.0
    return sxy / sxx, sxy * sxy / (sxx * syy)


class _Series:
    """One process's readings, oldest first, in two flat int arrays: the window's,
    and at most one window's worth before it (dropped in one go). ``changed_ns``
    is when the reading last changed."""

    __slots__ = ("changed_ns", "ts", "values")

    def __init__(self, ts: array[int], values: array[int], changed_ns: int) -> None:
        self.ts = ts
        self.values = values
        self.changed_ns = changed_ns

    def trim(self, start_ns: int) -> None:
        """Drop readings before ``start_ns``, and the oldest beyond ``_MAX_SERIES``."""
        ts = self.ts
        cut = max(bisect_left(ts, start_ns), len(ts) - _MAX_SERIES)
        del ts[:cut]
        del self.values[:cut]


class _Flat:
    """A process whose reading has not changed for a whole window (or since it
    was first read): the value and the sweeps it was read in (indices into the
    detector's sweep times), instead of one array entry per reading. Most
    processes of a host are idle, so most are held this way; a sweep costs
    them one comparison."""

    __slots__ = ("first", "last", "value")

    def __init__(self, value: int, first: int, last: int) -> None:
        self.value = value
        self.first = first
        self.last = last


class _TrendDetector(SampleDetector, abc.ABC):
    """Keeps a window of one integer reading per live process.

    A process's readings are held as a ``_Flat`` run while they do not change
    and as a ``_Series`` once they do; a series flat for a whole window folds
    back. Unfolding rebuilds the run's readings at the times of the sweeps it
    spans, so a fit sees the same points either way. Readings that left the
    window are dropped once they are a window older still (or past
    _MAX_SERIES), so most sweeps only append and bisect.
    """

    def __init__(self, window_s: float) -> None:
        super().__init__()
        self._window_s = window_s
        self._window_ns = int(window_s * _NS)
        self._series: dict[ProcessKey, _Series | _Flat] = {}
        self._times = array("q")  # the recent sweeps' times, oldest first
        self._base = 0  # the sweep index of _times[0]
        self._sweep = -1  # the current sweep's index

    @property
    def tracked(self) -> int:
        """Readings held over all processes (memory bounds, self-metrics)."""
        return sum(len(s.ts) if isinstance(s, _Series) else 1 for s in self._series.values())

    def _begin_sweep(self, now_ns: int) -> None:
        times = self._times
        if times and now_ns <= times[-1]:
            now_ns = times[-1] + 1  # keep the times increasing (a replay may repeat one)
        self._sweep += 1
        times.append(now_ns)
        cut = max(bisect_left(times, now_ns - 2 * self._window_ns), len(times) - _MAX_SERIES)
        if cut > 0:
            del times[:cut]
            self._base += cut

    def _track(
        self, key: ProcessKey, held: _Series | _Flat | None, ts: int, value: int, start: int
    ) -> _Series | None:
        """Record one reading (``held`` is what the process had); its series when
        the reading changed within the last window, else None."""
        if held is None:
            self._series[key] = _Flat(value, self._sweep, self._sweep)
            return None
        if isinstance(held, _Flat):
            if value == held.value:
                held.last = self._sweep
                return None
            held = self._series[key] = self._unfold(held)
        series_ts, values = held.ts, held.values
        if not series_ts or ts > series_ts[-1]:
            if values and value != values[-1]:
                held.changed_ns = ts
            series_ts.append(ts)
            values.append(value)
        if series_ts[0] < start - self._window_ns or len(series_ts) > _MAX_SERIES:
            held.trim(start)
        if held.changed_ns < start:
            # Unchanged for a whole window: nothing to fit until it changes.
            first = bisect_left(self._times, held.changed_ns) + self._base
            self._series[key] = _Flat(value, first, self._sweep)
            return None
        return held

    def _unfold(self, flat: _Flat) -> _Series:
        """The readings of a flat run, at the times of the sweeps it spans."""
        lo = max(flat.first, self._base) - self._base
        hi = flat.last - self._base + 1
        ts = self._times[lo:hi] if hi > lo else array("q")
        values = array("q", [flat.value]) * len(ts)
        return _Series(ts, values, ts[0] if ts else 0)

    def _forget_missing(self, samples: Mapping[ProcessKey, ProcessSample]) -> None:
        """Drop what is held for processes this sweep did not read (exited, or a
        reading without the figure): the set difference runs in C."""
        series = self._series
        for key in series.keys() - samples.keys():
            del series[key]

    # The hooks of a trend detector. ``_reading`` runs for every process of
    # every sweep: a subclass may make it a C-level getter.

    @abc.abstractmethod
    def _reading(self, sample: ProcessSample) -> int | None:
        """The integer reading followed for this sample; None skips the process."""

    # Whether a reading that did not change can still make a finding (so a
    # flat process is judged too); False spares a call per idle process.
    _FLAT_CAN_FIND = False

    def _flat_finds(self, sample: ProcessSample, value: int) -> bool:
        return False

    @abc.abstractmethod
    def _judge(
        self,
        key: ProcessKey,
        sample: ProcessSample,
        value: int,
        held: _Series | None,
        first: int,
        *,
        admit: Admit,
    ) -> Finding | None:
        """The finding for one process whose reading changed within the window
        (``held.ts[first:]`` and ``held.values[first:]`` are the window's
        readings), or that ``_flat_finds`` (``held`` None when flat)."""

    def observe_samples(
        self,
        now_ns: int,
        samples: Mapping[ProcessKey, ProcessSample],
        host: HostSample | None,
        admit: Admit,
    ) -> None:
        self._begin_sweep(now_ns)
        start = now_ns - self._window_ns
        series_get, sweep, track = self._series.get, self._sweep, self._track
        reading, judge = self._reading, self._judge
        flat_finds = self._flat_finds if self._FLAT_CAN_FIND else None
        found: list[Finding] = []
        for key, sample in samples.items():
            value = reading(sample)
            if value is None:
                continue
            held = series_get(key)
            if (
                held.__class__ is _Flat
                and held.value == value
                and (flat_finds is None or not flat_finds(sample, value))
            ):
                held.last = sweep
                continue  # the common case, written out: no call
            s = track(key, held, sample.ts_ns, value, start)
            if s is None and flat_finds is None:
                continue
            first = bisect_left(s.ts, start) if s is not None else 0
            finding = judge(key, sample, value, s, first, admit=admit)
            if finding is not None:
                found.append(finding)
        self._forget_missing(samples)
        self._findings = found


MEMORY_LEAK_PARAMS: Mapping[str, Param] = {
    "window_s": Param(float, 30.0, lo=1.0, hi=86_400.0, doc="trend window, seconds"),
    "min_samples": Param(int, 8, lo=3, hi=_MAX_SERIES, doc="readings needed in the window"),
    "min_growth_bytes": Param(int, 50 * _MIB, lo=0, hi=2**62, doc="growth across the window"),
    "min_rate_bytes_per_s": Param(float, float(_MIB), lo=0.0, doc="least-squares slope"),
    "min_r2": Param(float, 0.9, lo=0.0, hi=1.0, doc="how straight the growth must be"),
}


class MemoryLeakDetector(_TrendDetector):
    """Resident memory growing steadily: slope, growth and R² of a least-squares line.

    Only processes that grew by ``min_growth_bytes`` across the window are
    fitted, so a sweep of thousands of flat processes costs one subtraction
    each. Readings kept per process: ``_MAX_SERIES``.
    """

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        p = resolve_params("memory_leak", MEMORY_LEAK_PARAMS, params)
        super().__init__(float(p["window_s"]))
        self._min_samples = int(p["min_samples"])
        self._min_growth = int(p["min_growth_bytes"])
        self._min_rate = float(p["min_rate_bytes_per_s"])
        self._min_r2 = float(p["min_r2"])

    _reading = staticmethod(attrgetter("rss_bytes"))  # type: ignore[assignment]

    def _judge(
        self,
        key: ProcessKey,
        sample: ProcessSample,
        value: int,
        held: _Series | None,
        first: int,
        *,
        admit: Admit,
    ) -> Finding | None:
        if held is None:
            return None
        ts, values = held.ts, held.values
        growth = values[-1] - values[first]
        if len(ts) - first < self._min_samples or growth < self._min_growth:
            return None
        rate, r2 = fit_line(ts[first:], values[first:])
        if rate < self._min_rate or r2 < self._min_r2:
            return None
        p = admit(key)
        if p is None:
            return None
        evidence = {
            "rate_bytes_per_s": rate,
            "growth_bytes": growth,
            "r2": r2,
            "rss_bytes": values[-1],
            "samples": len(ts) - first,
            "span_s": _seconds(ts[-1] - ts[first]),
            "window_s": self._window_s,
            "min_growth_bytes": self._min_growth,
            "min_rate_bytes_per_s": self._min_rate,
            "min_r2": self._min_r2,
            "growth_mib": growth / _MIB,
            "rate_mib_per_s": rate / _MIB,
            "rss_mib": values[-1] / _MIB,
            "pid": p.pid,
            "comm": p.comm,
        }
        return Finding(process_subject(p), rate, evidence)


register(
    DetectorSpec(
        name="memory_leak",
        doc="Resident memory growing steadily (least-squares slope, growth and R² over a window).",
        subject="process",
        params=MEMORY_LEAK_PARAMS,
        factory=with_defaults("memory_leak", MemoryLeakDetector, MEMORY_LEAK_PARAMS),
        default_message=(
            "{comm}({pid}) memory grew {growth_mib:.0f} MiB in {span_s:.0f} s "
            "({rate_mib_per_s:.1f} MiB/s, R² {r2:.2f})"
        ),
        inputs=("sample",),
    )
)


FD_EXHAUSTION_PARAMS: Mapping[str, Param] = {
    "ratio": Param(float, 0.8, lo=0.01, hi=1.0, doc="share of the fd limit in use"),
    "horizon_s": Param(float, 60.0, lo=0.0, hi=86_400.0, doc="projected time to the limit"),
    "window_s": Param(float, 30.0, lo=1.0, hi=86_400.0, doc="trend window, seconds"),
    "min_samples": Param(int, 5, lo=3, hi=_MAX_SERIES, doc="readings needed for a trend"),
    "min_r2": Param(float, 0.8, lo=0.0, hi=1.0, doc="how straight the growth must be"),
}


class FdExhaustionDetector(_TrendDetector):
    """Open descriptors near RLIMIT_NOFILE, or growing towards it within ``horizon_s``.

    Processes whose limit is unknown or unlimited are skipped. Readings kept
    per process: ``_MAX_SERIES``.
    """

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        p = resolve_params("fd_exhaustion", FD_EXHAUSTION_PARAMS, params)
        super().__init__(float(p["window_s"]))
        self._ratio = float(p["ratio"])
        self._horizon_s = float(p["horizon_s"])
        self._min_samples = int(p["min_samples"])
        self._min_r2 = float(p["min_r2"])

    def _reading(self, sample: ProcessSample) -> int | None:
        limit = sample.fd_limit
        if limit is None or limit <= 0 or limit >= _UNLIMITED:
            return None  # no limit known, or none to exhaust
        return sample.fd_count

    # Near the limit is a finding whether or not the count moves.
    _FLAT_CAN_FIND = True

    def _flat_finds(self, sample: ProcessSample, value: int) -> bool:
        return value / sample.fd_limit >= self._ratio  # type: ignore[operator]

    def _judge(
        self,
        key: ProcessKey,
        sample: ProcessSample,
        value: int,
        held: _Series | None,
        first: int,
        *,
        admit: Admit,
    ) -> Finding | None:
        limit: int = sample.fd_limit  # type: ignore[assignment]  # _reading checked it
        used = value / limit
        rate, eta = 0.0, None
        if (
            held is not None
            and len(held.ts) - first >= self._min_samples
            and held.values[-1] > held.values[first]
        ):
            slope, r2 = fit_line(held.ts[first:], held.values[first:])
            rate = slope
            if slope > 0 and r2 >= self._min_r2:
                eta = max(limit - value, 0) / slope
        if used < self._ratio and (eta is None or eta > self._horizon_s):
            return None
        p = admit(key)
        if p is None:
            return None
        evidence = {
            "fds": value,
            "limit": limit,
            "ratio_used": used,
            "rate_per_s": rate,
            "eta_s": eta,
            # eta_s is null without a steady rise; messages read this instead
            "outlook": (
                f"limit in {eta:.0f} s at {rate:.1f}/s" if eta is not None else "not growing"
            ),
            "trigger": "ratio" if used >= self._ratio else "trend",
            "ratio": self._ratio,
            "horizon_s": self._horizon_s,
            "window_s": self._window_s,
            "pid": p.pid,
            "comm": p.comm,
        }
        return Finding(process_subject(p), used, evidence)


register(
    DetectorSpec(
        name="fd_exhaustion",
        doc="Open file descriptors near the process's limit, or growing to reach it soon.",
        subject="process",
        params=FD_EXHAUSTION_PARAMS,
        factory=with_defaults("fd_exhaustion", FdExhaustionDetector, FD_EXHAUSTION_PARAMS),
        default_message=(
            "{comm} ({pid}) has {fds} of {limit} file descriptors open "
            "({ratio_used:.0%}; {outlook})"
        ),
        inputs=("sample",),
    )
)


# ---- host-wide: cpu_thrashing, psi_pressure ---------------------------------------------


class _Since:
    """When a host-wide condition started holding, across consecutive sweeps."""

    __slots__ = ("start_ns",)

    def __init__(self) -> None:
        self.start_ns: int | None = None

    def update(self, holds: bool, ts_ns: int) -> int | None:
        """How long it has held (ns), or None when it does not hold now."""
        if not holds:
            self.start_ns = None
            return None
        if self.start_ns is None or ts_ns < self.start_ns:
            self.start_ns = ts_ns
        return ts_ns - self.start_ns


def _top_consumers(samples: Mapping[ProcessKey, ProcessSample], admit: Admit, top: int) -> str:
    """'comm(pid) 97%, ...': the busiest admitted processes of this sweep."""
    if top <= 0:
        return ""
    busy = [(s.cpu_percent, k) for k, s in samples.items() if s.cpu_percent]
    # The condition usually admits most processes: rank a few, sort all only if
    # it rejected too many of them.
    ranked = heapq.nlargest(4 * top, busy, key=itemgetter(0))
    out = _named(ranked, admit, top)
    if len(out) < top < len(busy) and len(ranked) < len(busy):
        busy.sort(key=itemgetter(0), reverse=True)
        out = _named(busy, admit, top)
    return ", ".join(out)


def _named(ranked: Sequence[tuple[float, ProcessKey]], admit: Admit, top: int) -> list[str]:
    out: list[str] = []
    for cpu, key in ranked:
        p = admit(key)
        if p is not None:
            out.append(f"{p.comm}({p.pid}) {cpu:.0f}%")
            if len(out) == top:
                break
    return out


CPU_THRASHING_PARAMS: Mapping[str, Param] = {
    "psi_some_pct": Param(float, 70.0, lo=0.0, hi=100.0, doc="cpu.some avg10, when PSI exists"),
    "load_per_cpu": Param(float, 2.0, lo=0.0, hi=1000.0, doc="load1 per CPU, without PSI"),
    "duration_s": Param(float, 30.0, lo=0.0, hi=86_400.0, doc="how long, seconds"),
    "top": Param(int, 5, lo=0, hi=50, doc="top CPU consumers named in the evidence"),
}


class CpuThrashingDetector(SampleDetector):
    """The CPU is oversubscribed for a while: PSI cpu.some if the kernel has PSI,
    else load1 per CPU. The evidence names the busiest processes of the last sweep."""

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        super().__init__()
        p = resolve_params("cpu_thrashing", CPU_THRASHING_PARAMS, params)
        self._psi = float(p["psi_some_pct"])
        self._load = float(p["load_per_cpu"])
        self._duration_s = float(p["duration_s"])
        self._top = int(p["top"])
        self._since = _Since()

    def observe_samples(
        self,
        now_ns: int,
        samples: Mapping[ProcessKey, ProcessSample],
        host: HostSample | None,
        admit: Admit,
    ) -> None:
        self._findings = []
        if host is None or (host.cpus <= 0 and "cpu.some" not in host.psi):
            self._since.update(False, now_ns)
            return
        psi = host.psi.get("cpu.some")
        if psi is not None:
            measure, figure, threshold = "psi_cpu_some_pct", psi, self._psi
        else:
            measure, figure, threshold = "load_per_cpu", host.load1 / host.cpus, self._load
        held = self._since.update(figure >= threshold, host.ts_ns)
        if held is None or held < self._duration_s * _NS:
            return
        evidence = {
            "measure": measure,
            "figure": figure,
            "threshold": threshold,
            "load1": host.load1,
            "cpus": host.cpus,
            "since_s": _seconds(held),
            "duration_s": self._duration_s,
            "top_consumers": _top_consumers(samples, admit, self._top),
        }
        self._findings = [Finding(Subject("host", "host"), figure, evidence)]


register(
    DetectorSpec(
        name="cpu_thrashing",
        doc="CPU oversubscribed for duration_s: PSI cpu.some, else load1 per CPU.",
        subject="host",
        params=CPU_THRASHING_PARAMS,
        factory=with_defaults("cpu_thrashing", CpuThrashingDetector, CPU_THRASHING_PARAMS),
        default_message=(
            "CPU oversubscribed for {since_s:.0f} s ({measure} {figure:.1f}, "
            "threshold {threshold:g}); top: {top_consumers}"
        ),
        inputs=("sample",),
    )
)


PSI_PRESSURE_PARAMS: Mapping[str, Param] = {
    "resource": Param(str, "memory", choices=("memory", "io", "cpu"), doc="/proc/pressure file"),
    "kind": Param(str, "full", choices=("full", "some"), doc="the some or the full line"),
    "threshold_pct": Param(float, 40.0, lo=0.0, hi=100.0, doc="avg10, percent"),
    "duration_s": Param(float, 30.0, lo=0.0, hi=86_400.0, doc="how long, seconds"),
}


class PsiPressureDetector(SampleDetector):
    """A pressure-stall average (avg10) at or above a threshold for a while.
    Without PSI (or without that line, e.g. cpu.full on older kernels) it never fires."""

    def __init__(self, params: Mapping[str, Any], lineage: Lineage) -> None:
        super().__init__()
        p = resolve_params("psi_pressure", PSI_PRESSURE_PARAMS, params)
        self._resource = str(p["resource"])
        self._kind = str(p["kind"])
        self._line = f"{self._resource}.{self._kind}"
        self._threshold = float(p["threshold_pct"])
        self._duration_s = float(p["duration_s"])
        self._since = _Since()

    def observe_samples(
        self,
        now_ns: int,
        samples: Mapping[ProcessKey, ProcessSample],
        host: HostSample | None,
        admit: Admit,
    ) -> None:
        self._findings = []
        pressure = host.psi.get(self._line) if host is not None else None
        ts = host.ts_ns if host is not None else now_ns
        held = self._since.update(pressure is not None and pressure >= self._threshold, ts)
        if pressure is None or held is None or held < self._duration_s * _NS:
            return
        evidence = {
            "pressure_pct": pressure,
            "resource": self._resource,
            "kind": self._kind,
            "threshold_pct": self._threshold,
            "since_s": _seconds(held),
            "duration_s": self._duration_s,
        }
        self._findings = [Finding(Subject("host", "host"), pressure, evidence)]


register(
    DetectorSpec(
        name="psi_pressure",
        doc="Pressure stall information (memory, io or cpu; some or full) sustained high.",
        subject="host",
        params=PSI_PRESSURE_PARAMS,
        factory=with_defaults("psi_pressure", PsiPressureDetector, PSI_PRESSURE_PARAMS),
        default_message=(
            "{resource} pressure ({kind}) at {pressure_pct:.1f}% for {since_s:.0f} s "
            "(threshold {threshold_pct:g}%)"
        ),
        inputs=("sample",),
    )
)
