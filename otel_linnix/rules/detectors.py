"""Every detector kind a rule can name, registered into ``model.DETECTORS`` on import.

Event-driven detectors (fork_storm, runaway_tree, crash_loop, oom_kill) live
in :mod:`~otel_linnix.rules.detectors_events`; sample-driven ones
(cpu_spike, runaway_process, rss_high, memory_leak, fd_exhaustion,
cpu_thrashing, psi_pressure) in
:mod:`~otel_linnix.rules.detectors_samples`. Importing this module imports
both, which fills the registry.
"""

from __future__ import annotations

from otel_linnix.rules.detectors_events import (
    CrashLoopDetector,
    ForkStormDetector,
    OomKillDetector,
    RunawayTreeDetector,
)
from otel_linnix.rules.detectors_samples import (
    CpuSpikeDetector,
    CpuThrashingDetector,
    FdExhaustionDetector,
    MemoryLeakDetector,
    PsiPressureDetector,
    RssHighDetector,
)

__all__ = [
    "CpuSpikeDetector",
    "CpuThrashingDetector",
    "CrashLoopDetector",
    "FdExhaustionDetector",
    "ForkStormDetector",
    "MemoryLeakDetector",
    "OomKillDetector",
    "PsiPressureDetector",
    "RssHighDetector",
    "RunawayTreeDetector",
]
