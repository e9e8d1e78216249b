"""The default rules over the recorded scenarios in tests/fixtures/rule_scenarios.

Each ``<scenario>.jsonl.gz`` was recorded on a real kernel with
``otel-linnix record --samples`` around a real workload (re-record with
``record_fixtures.py`` there); ``<scenario>.test.yaml`` includes the default
rules and says, in ``expect:``, which must fire and which must not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otel_linnix.cli import main
from otel_linnix.rules.loader import load_rules

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "fixtures" / "rule_scenarios"
SPECS = sorted(SCENARIOS.glob("*.test.yaml"))


def _recording(spec: Path) -> Path:
    return spec.with_name(spec.name.removesuffix(".test.yaml") + ".jsonl.gz")


@pytest.mark.parametrize("spec", SPECS, ids=[s.name.removesuffix(".test.yaml") for s in SPECS])
def test_default_rules_on_a_recorded_scenario(
    spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = _recording(spec)
    assert recording.exists(), f"{spec.name} has no recording {recording.name}"
    code = main(["rules", "test", str(spec), "--events", str(recording)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "bad line" not in out.err, out.err


def test_every_default_rule_fires_in_some_fixture_and_each_fixture_checks_every_rule() -> None:
    shipped = {r.name for r in load_rules(ROOT / "config" / "rules.yaml").rules}
    must_fire: set[str] = set()
    for spec in SPECS:
        expectations = load_rules(spec).expectations
        # Each fixture says something about every default rule: what must not fire matters.
        assert {e.rule for e in expectations} == shipped, spec.name
        must_fire |= {e.rule for e in expectations if e.min_count >= 1}
    assert must_fire == shipped


@pytest.mark.parametrize("spec", SPECS, ids=[s.name.removesuffix(".test.yaml") for s in SPECS])
def test_each_incident_is_one_alert_that_resolves(
    spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["rules", "test", str(spec), "--events", str(_recording(spec)), "--json"])
    transitions = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_id: dict[str, list[str]] = {}
    for t in transitions:
        by_id.setdefault(t["id"], []).append(t["transition"])
    # Recorded long enough after the workload for every alert to clear.
    assert all(states[-1] == "resolved" for states in by_id.values()), by_id
    # One incident, one alert: no flare-up reopened any of them.
    assert all(states == ["firing", "resolved"] for states in by_id.values()), by_id
