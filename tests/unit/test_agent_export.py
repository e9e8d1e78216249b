"""The Agent wires the OTLP log and span exporters only when an endpoint is set.

Runs the real Agent on the /proc polling source (no root needed): its
start-up walk yields an exec record per process on this host.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from otel_linnix.agent import Agent
from otel_linnix.config import ApiConfig, CaptureConfig, Config, ExportConfig, RulesConfig
from otel_linnix.rules.loader import load_rules
from tests.otlp_receiver import OtlpReceiver
from tests.unit.conftest import wait_until

OTEL_VARS = [name for name in os.environ if name.startswith("OTEL_")]


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def agent_config(export: ExportConfig) -> Config:
    return Config(
        api=ApiConfig(bind_address="127.0.0.1:0"),
        capture=CaptureConfig(source="procfs"),
        rules=RulesConfig(enabled=False),
        export=export,
    )


def test_without_an_endpoint_nothing_is_exported() -> None:
    agent = Agent(agent_config(ExportConfig(traces=True)))
    agent.start()
    try:
        assert agent.logs is None and agent.spans is None
        assert "logs" not in agent.export_stats and "traces" not in agent.export_stats
    finally:
        agent.stop(1.0)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_agent_exports_its_start_up_walk_and_stops_in_time_with_a_stuck_collector(
    receiver: OtlpReceiver, protocol: str
) -> None:
    agent = Agent(
        agent_config(
            ExportConfig(
                endpoint=receiver.endpoint(protocol), protocol=protocol, metrics=False, traces=True
            )
        )
    )
    agent.start()
    try:
        records = receiver.wait_for_logs(
            lambda rs: any(r.attributes.get("process.pid") == os.getpid() for r in rs), 15
        )
        mine = next(r for r in records if r.attributes["process.pid"] == os.getpid())
        assert mine.event_name == "linnix.process.exec"
        assert mine.attributes["linnix.process.bootstrap"] is True
        assert len(mine.trace_id) == 32 and len(mine.span_id) == 16
        assert mine.resource["service.name"] == "otel-linnix"
        assert wait_until(lambda: agent.export_stats["logs"]()["exported"] >= 1)
        assert set(agent.export_stats["traces"]()) >= {"exported", "dropped", "failed"}
        receiver.mode = "slow"
        receiver.delay_s = 30.0
    finally:
        started = time.monotonic()
        agent.stop(1.5)
        took = time.monotonic() - started
    assert took < 2.5


def test_every_enabled_rule_has_an_alert_counter_from_the_start() -> None:
    config = Config(
        api=ApiConfig(bind_address="127.0.0.1:0"), capture=CaptureConfig(source="procfs")
    )
    agent = Agent(config)
    agent.start()
    try:
        text = agent.metrics.exposition().decode()
        enabled = load_rules(config.rules_path()).enabled
        assert enabled
        for rule in enabled:
            line = (
                f'linnix_alerts_total{{linnix_alert_rule="{rule.name}",'
                f'linnix_alert_severity="{rule.severity.label}"}} 0.0'
            )
            assert line in text
    finally:
        agent.stop(1.0)
