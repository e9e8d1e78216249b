"""Rules over a recording: what ``otel-linnix rules test`` runs.

Events and sweep lines are fed in file order through a process table and the
real engine, with the recording's own kernel timestamps as the clock, so a
fixture replays exactly like the live agent saw it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from otel_linnix.events import ProcessEvent
from otel_linnix.process_table import ProcessTable
from otel_linnix.recording import SweepRecord, open_recording, read_records
from otel_linnix.rules.alerts import Alert
from otel_linnix.rules.engine import RulesEngine
from otel_linnix.rules.loader import Expectation
from otel_linnix.rules.model import Rule

__all__ = ["ExpectationResult", "ReplayResult", "check_expectations", "replay_rules"]

_BATCH = 512


@dataclass
class ReplayResult:
    transitions: list[tuple[str, Alert]] = field(default_factory=list)  # (state, alert copy)
    events: int = 0
    sweeps: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    def fired(self, rule: str) -> int:
        """How many distinct alerts of ``rule`` fired (reopenings are the same alert)."""
        return len({a.id for state, a in self.transitions if a.rule == rule and state == "firing"})


@dataclass(frozen=True)
class ExpectationResult:
    expectation: Expectation
    fired: int

    @property
    def met(self) -> bool:
        e = self.expectation
        return self.fired >= e.min_count and (e.max_count is None or self.fired <= e.max_count)

    def describe(self) -> str:
        e = self.expectation
        wanted = (
            "none"
            if e.max_count == 0
            else f"exactly {e.min_count}"
            if e.max_count == e.min_count
            else f"at least {e.min_count}"
            if e.max_count is None
            else f"{e.min_count}..{e.max_count}"
        )
        return (
            f"expect {e.rule}: {self.fired} alert(s), wanted {wanted}: "
            f"{'ok' if self.met else 'NOT MET'}"
        )


def replay_rules(
    rules: Sequence[Rule], path: str | Path, users: Callable[[int], str | None] = lambda _uid: None
) -> ReplayResult:
    """Run ``rules`` over the recording at ``path``; OSError if it cannot be read."""
    result = ReplayResult()
    table = ProcessTable()

    def on_alert(alert: Alert) -> None:
        result.transitions.append((alert.state, _copy(alert)))

    engine = RulesEngine(rules, table, users=users, on_alert=on_alert)
    pending: list[ProcessEvent] = []

    def flush() -> None:
        if pending:
            table.apply_batch(pending)
            engine.emit(pending)
            result.events += len(pending)
            pending.clear()

    with open_recording(path) as fh:
        for record in read_records(fh, lambda n, why: result.bad_lines.append((n, why))):
            if isinstance(record, SweepRecord):
                flush()
                _apply_sweep(table, engine, record)
                result.sweeps += 1
                continue
            pending.append(record)
            if len(pending) >= _BATCH:
                flush()
    flush()
    return result


def _apply_sweep(table: ProcessTable, engine: RulesEngine, sweep: SweepRecord) -> None:
    # As the live agent does: the table takes the readings, then the engine.
    samples = dict(sweep.samples)
    table.update_samples(samples)
    engine.observe_sweep(sweep.ts_ns, sweep.host, samples)


def _copy(alert: Alert) -> Alert:
    """A snapshot of the alert as it was at this transition."""
    return Alert(**{**alert.__dict__, "evidence": dict(alert.evidence)})


def check_expectations(
    result: ReplayResult, expectations: Sequence[Expectation]
) -> list[ExpectationResult]:
    return [ExpectationResult(e, result.fired(e.rule)) for e in expectations]
