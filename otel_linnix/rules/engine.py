"""The rules engine: feeds detectors, turns findings into alerts with a lifecycle.

It is a Sink (events arrive on its own SinkWorker thread, never on the
drain loop) and a sweep listener (samples arrive on the sampler thread);
one lock serialises the two. Time is the kernel's: event timestamps and the
sweep time, both CLOCK_BOOTTIME.

Lifecycle of an alert, per (rule, subject):
- a finding with no alert, or after the cooldown since the last one was
  resolved -> a new alert fires;
- a finding again within the cooldown -> the resolved alert fires again
  (same id, ``reopened`` + 1): one incident stays one alert;
- no finding for ``resolve_after_s`` -> the alert resolves.
Only transitions are delivered (``on_alert``); a firing alert's evidence and
last-seen time are refreshed in place.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import otel_linnix.rules.detectors  # noqa: F401 - fills DETECTORS
from otel_linnix.events import EventKind, ProcessEvent, ProcessKey
from otel_linnix.process_table import HostSample, ProcessInfo, ProcessSample, ProcessTable
from otel_linnix.rules.alerts import Alert, alert_id
from otel_linnix.rules.facts import ProcessFacts, UserName
from otel_linnix.rules.model import DETECTORS, Admit, Detector, Finding, Rule, render_message

__all__ = ["RulesEngine"]

_NS = 1_000_000_000
Accept = Callable[[ProcessEvent], bool]
_FORK, _EXEC, _EXIT = EventKind.FORK, EventKind.EXEC, EventKind.EXIT


@dataclass
class _Armed:
    rule: Rule
    detector: Detector
    accept_event: Accept
    admit: Admit


def _always(_: object) -> bool:
    return True


class RulesEngine:
    """Runs enabled rules over events and sweeps; delivers alert transitions."""

    name = "rules"

    def __init__(
        self,
        rules: Sequence[Rule],
        table: ProcessTable,
        *,
        users: UserName,
        on_alert: Callable[[Alert], None],
        host: str = "",
    ) -> None:
        self._table = table
        self._users = users
        self._on_alert = on_alert
        self._host = host
        self._lock = threading.Lock()
        self._event_rules: list[_Armed] = []
        self._sample_rules: list[_Armed] = []
        # Rules with the same condition and exceptions share one acceptor, so
        # the condition is evaluated once per event however many rules use it.
        self._acceptors: dict[tuple[object, ...], tuple[Accept, Admit]] = {}
        self._by_kind: dict[EventKind, list[_Armed]] = {kind: [] for kind in EventKind}
        for rule in rules:
            if not rule.enabled:
                continue
            spec = DETECTORS[rule.detector]
            armed = self._arm(rule, spec.factory(rule.params, table))
            if "event" in spec.inputs:
                self._event_rules.append(armed)
                for kind in EventKind:
                    if not spec.event_kinds or kind.value in spec.event_kinds:
                        self._by_kind[kind].append(armed)
            if "sample" in spec.inputs:
                self._sample_rules.append(armed)
        self._alerts: dict[tuple[str, str], Alert] = {}
        # Facts of the event being dispatched, shared by every rule.
        self._event: ProcessEvent | None = None
        self._event_facts: ProcessFacts | None = None
        self._info_facts: dict[ProcessKey, ProcessFacts] = {}
        self._infos: dict[ProcessKey, ProcessInfo | None] = {}  # this sweep's lookups
        self.fired: collections.Counter[tuple[str, str]] = collections.Counter()
        self.resolved = 0
        self.evaluations = 0
        self.sweeps = 0

    # ---- acceptance: the rule's condition and exceptions --------------------------

    def _arm(self, rule: Rule, detector: Detector) -> _Armed:
        if rule.condition is None and not rule.exceptions:
            return _Armed(rule, detector, _always, self._live_info)
        signature = (rule.condition_text, *(id(e) for e in rule.exceptions))
        shared = self._acceptors.get(signature)
        if shared is None:
            shared = self._acceptors[signature] = self._acceptor(rule)
        return _Armed(rule, detector, shared[0], shared[1])

    def _acceptor(self, rule: Rule) -> tuple[Accept, Admit]:
        """accept (events) and admit (sampled processes) for ``rule``'s condition,
        remembering the last event's answer and this sweep's answers."""
        last: list[Any] = [None, False]  # the event last asked about, the answer
        answers: dict[ProcessKey, bool] = {}
        sweep = [-1]

        def accept_event(ev: ProcessEvent) -> bool:
            if last[0] is not ev:
                last[0] = ev
                last[1] = rule.matches(self._facts_of_event(ev))
            return bool(last[1])

        def admit(key: ProcessKey) -> ProcessInfo | None:
            info = self._live_info(key)
            if info is None:
                return None
            if sweep[0] != self.sweeps:
                sweep[0] = self.sweeps
                answers.clear()
            answer = answers.get(key)
            if answer is None:
                facts = self._info_facts.get(key)
                if facts is None:
                    facts = ProcessFacts.of_info(info, self._table.facts_row, self._users)
                    self._info_facts[key] = facts
                answer = answers[key] = rule.matches(facts)
            return info if answer else None

        return accept_event, admit

    def _live_info(self, key: ProcessKey) -> ProcessInfo | None:
        """The table's view of a sampled process, once per sweep; None once it exited."""
        infos = self._infos
        if key in infos:
            return infos[key]
        info = self._table.get(key)
        infos[key] = info = info if info is not None and not info.exited else None
        return info

    def _facts_of_event(self, ev: ProcessEvent) -> ProcessFacts:
        if self._event is not ev or self._event_facts is None:
            self._event = ev
            self._event_facts = ProcessFacts.of_event(ev, self._table.facts_row, self._users)
        return self._event_facts

    # ---- inputs ------------------------------------------------------------------

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        """Sink: lifecycle events in kernel order."""
        if not events or not self._event_rules:
            return
        by_kind = self._by_kind
        # Compared by identity: hashing an Enum member runs Python code.
        forks, execs, exits = by_kind[_FORK], by_kind[_EXEC], by_kind[_EXIT]
        others = by_kind[EventKind.OOM_KILL]
        with self._lock:
            for ev in events:
                kind = ev.kind
                armed_rules = (
                    forks
                    if kind is _FORK
                    else exits
                    if kind is _EXIT
                    else execs
                    if kind is _EXEC
                    else others
                )
                for armed in armed_rules:
                    armed.detector.observe_event(ev, armed.accept_event)
            self._event = self._event_facts = None
            self._evaluate(events[-1].ts_ns, self._event_rules)

    def observe_sweep(
        self, now_ns: int, host: HostSample | None, samples: Mapping[ProcessKey, ProcessSample]
    ) -> None:
        """Sweep listener: the readings of every sweep, after the table has them
        (the live agent, and a replayed recording's sweep records)."""
        with self._lock:
            self.sweeps += 1
            try:
                for armed in self._sample_rules:
                    armed.detector.observe_samples(now_ns, samples, host, armed.admit)
            finally:
                self._infos = {}
                self._info_facts = {}
            # Every rule is evaluated on the sweep: windows of event rules
            # expire and their alerts resolve even when no event arrives.
            self._evaluate(now_ns, self._event_rules + self._sample_rules)

    # ---- lifecycle ----------------------------------------------------------------

    def _evaluate(self, now_ns: int, rules: Sequence[_Armed]) -> None:
        self.evaluations += 1
        seen: set[tuple[str, str]] = set()
        evaluated: set[str] = set()
        for armed in rules:
            if armed.rule.name in evaluated:
                continue  # a rule fed by both inputs is evaluated once
            evaluated.add(armed.rule.name)
            for finding in armed.detector.findings(now_ns):
                key = (armed.rule.name, finding.subject.key)
                seen.add(key)
                self._found(armed.rule, key, finding, now_ns)
        for key, alert in list(self._alerts.items()):
            if key[0] not in evaluated or key in seen:
                continue
            rule = self._rule(key[0])
            if rule is None:
                continue
            if (
                alert.state == "firing"
                and now_ns - alert.last_seen_ns >= rule.resolve_after_s * _NS
            ):
                alert.state = "resolved"
                alert.resolved_ns = now_ns
                self.resolved += 1
                self._on_alert(alert)
            elif (
                alert.state == "resolved"
                and alert.resolved_ns is not None
                and (now_ns - alert.resolved_ns > rule.cooldown_s * _NS)
            ):
                del self._alerts[key]  # past the cooldown: the next finding is a new incident

    def _rule(self, name: str) -> Rule | None:
        for armed in self._event_rules + self._sample_rules:
            if armed.rule.name == name:
                return armed.rule
        return None

    def _message(self, rule: Rule, finding: Finding) -> str:
        subject = finding.subject
        values: dict[str, Any] = {
            **finding.evidence,
            "value": finding.value,
            "rule": rule.name,
            "pid": subject.pid,
            "comm": subject.comm,
            "exe": subject.exe,
            "container": subject.container_id,
            "subject": subject.key,
        }
        return render_message(rule.message, values)

    def _found(self, rule: Rule, key: tuple[str, str], finding: Finding, now_ns: int) -> None:
        alert = self._alerts.get(key)
        if (
            alert is not None
            and alert.resolved_ns is not None
            and now_ns - alert.resolved_ns > rule.cooldown_s * _NS
        ):
            # Past the cooldown, even if no evaluation ran since the resolution
            # (one batch after a quiet spell): a new incident, not a flare-up.
            alert = None
        if alert is None:
            alert = Alert(
                id=alert_id(rule.name, finding.subject.key, now_ns),
                rule=rule.name,
                severity=rule.severity,
                subject=finding.subject,
                message=self._message(rule, finding),
                evidence=dict(finding.evidence),
                first_seen_ns=now_ns,
                last_seen_ns=now_ns,
                tags=rule.tags,
                description=rule.description,
                host=self._host,
            )
            self._alerts[key] = alert
            self.fired[(rule.name, rule.severity.label)] += 1
            self._on_alert(alert)
            return
        alert.last_seen_ns = now_ns
        alert.evidence = dict(finding.evidence)
        alert.message = self._message(rule, finding)
        if alert.state == "resolved":
            # Within the cooldown: the same incident flaring up again.
            alert.state = "firing"
            alert.resolved_ns = None
            alert.reopened += 1
            self._on_alert(alert)

    def flush(self, timeout_s: float) -> None:
        """Nothing is buffered: alerts are delivered as they happen."""

    def shutdown(self, timeout_s: float) -> None:
        """Nothing to release."""

    # ---- views --------------------------------------------------------------------

    def firing(self) -> list[Alert]:
        with self._lock:
            return [a for a in self._alerts.values() if a.state == "firing"]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rules": len({a.rule.name for a in self._event_rules + self._sample_rules}),
                "firing": sum(1 for a in self._alerts.values() if a.state == "firing"),
                "fired": sum(self.fired.values()),
                "resolved": self.resolved,
                "evaluations": self.evaluations,
            }
