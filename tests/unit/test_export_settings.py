"""[export] merged with the OTEL_* variables: precedence, endpoints, headers, errors."""

from __future__ import annotations

import pytest

from otel_linnix.config import ExportConfig
from otel_linnix.errors import ConfigError
from otel_linnix.export.settings import make_metric_exporter, parse_key_values, resolve_export

BASE = "http://collector:4318"


def test_nothing_configured_means_no_otlp_and_prometheus_on() -> None:
    settings = resolve_export(ExportConfig(), {})
    assert (settings.metrics, settings.logs, settings.traces) == (None, None, None)
    assert settings.prometheus is True
    assert settings.service_name == "otel-linnix"
    assert settings.metrics_interval_s == 10.0


def test_general_endpoint_gets_the_signal_path_for_http() -> None:
    settings = resolve_export(ExportConfig(endpoint=BASE + "/", traces=True), {})
    assert settings.metrics is not None and settings.logs is not None
    assert settings.traces is not None
    assert settings.metrics.endpoint == BASE + "/v1/metrics"
    assert settings.logs.endpoint == BASE + "/v1/logs"
    assert settings.traces.endpoint == BASE + "/v1/traces"
    assert settings.metrics.protocol == "http/protobuf"


def test_grpc_endpoint_is_used_as_given_and_insecure_follows_the_scheme() -> None:
    settings = resolve_export(
        ExportConfig(),
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        },
    )
    assert settings.metrics is not None
    assert settings.metrics.endpoint == "http://collector:4317"
    assert settings.metrics.insecure
    tls = resolve_export(ExportConfig(endpoint="https://collector:4317", protocol="grpc"), {})
    assert tls.metrics is not None and not tls.metrics.insecure


def test_precedence_signal_variable_then_general_variable_then_signal_key_then_key() -> None:
    cfg = ExportConfig(endpoint=BASE, metrics_endpoint="http://file-metrics:1/m")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://env-metrics:9/custom",
    }
    settings = resolve_export(cfg, env)
    assert settings.metrics is not None and settings.logs is not None
    assert settings.metrics.endpoint == "http://env-metrics:9/custom"  # as given, no path added
    assert settings.logs.endpoint == "http://env:4318/v1/logs"
    del env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]
    assert resolve_export(cfg, env).metrics.endpoint == "http://env:4318/v1/metrics"  # type: ignore[union-attr]
    del env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    settings = resolve_export(cfg, env)
    assert settings.metrics is not None and settings.logs is not None
    assert settings.metrics.endpoint == "http://file-metrics:1/m"
    assert settings.logs.endpoint == BASE + "/v1/logs"


def test_per_signal_protocol_and_timeout_override_the_general_ones() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": BASE,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "500",
    }
    settings = resolve_export(ExportConfig(), env)
    assert settings.metrics is not None and settings.logs is not None
    assert settings.logs.protocol == "grpc"
    assert settings.logs.endpoint == BASE  # gRPC takes no path
    assert settings.metrics.protocol == "http/protobuf"
    assert settings.metrics.timeout_s == 0.5
    assert settings.logs.timeout_s == 2.5


def test_disabled_signal_has_no_target_even_with_an_endpoint() -> None:
    settings = resolve_export(ExportConfig(metrics=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE})
    assert settings.metrics is None
    assert settings.logs is not None


def test_headers_merge_file_then_general_then_signal_and_are_percent_decoded() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": BASE,
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc, x-team = core",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-team=metrics",
    }
    settings = resolve_export(ExportConfig(headers="x-file=1,x-team=file"), env)
    assert settings.metrics is not None and settings.logs is not None
    assert dict(settings.metrics.headers) == {
        "x-file": "1",
        "authorization": "Bearer abc",
        "x-team": "metrics",
    }
    assert settings.logs.headers["x-team"] == "core"


def test_parse_key_values_accepts_empty_items_and_empty_values() -> None:
    assert parse_key_values("a=1,,b=,c=x%3Dy", "where") == {"a": "1", "b": "", "c": "x=y"}
    assert parse_key_values("", "where") == {}


def test_service_name_and_resource_attributes_precedence() -> None:
    cfg = ExportConfig(service_name="from-file", resource_attributes="team=a,region=eu")
    assert resolve_export(cfg, {}).service_name == "from-file"
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,team=b"}
    settings = resolve_export(cfg, env)
    assert settings.service_name == "from-attrs"
    assert dict(settings.resource_attributes) == {"team": "b", "region": "eu"}
    env["OTEL_SERVICE_NAME"] = "from-env"
    assert resolve_export(cfg, env).service_name == "from-env"


def test_metric_export_interval_variable_is_in_milliseconds() -> None:
    settings = resolve_export(ExportConfig(), {"OTEL_METRIC_EXPORT_INTERVAL": "1500"})
    assert settings.metrics_interval_s == 1.5


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"OTEL_EXPORTER_OTLP_LOGS_HEADERS": "=x"}, "OTEL_EXPORTER_OTLP_LOGS_HEADERS"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "udp"}, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:99999"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "ftp://c/v1/logs"},
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        ),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "nan"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "-5"}, "OTEL_METRIC_EXPORT_INTERVAL"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team"}, "OTEL_RESOURCE_ATTRIBUTES"),
    ],
)
def test_bad_values_are_config_errors_naming_the_variable(env: dict[str, str], named: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, **env}
    with pytest.raises(ConfigError) as caught:
        resolve_export(ExportConfig(), env)
    assert named in str(caught.value)


def test_bad_file_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"\[export\] headers"):
        resolve_export(ExportConfig(endpoint=BASE, headers="broken"), {})
    with pytest.raises(ConfigError, match=r"\[export\] metrics_endpoint"):
        resolve_export(ExportConfig(metrics_endpoint="nowhere"), {})
    with pytest.raises(ConfigError, match=r"\[export\] resource_attributes"):
        resolve_export(ExportConfig(resource_attributes="x"), {})


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_make_metric_exporter_builds_the_sdk_exporter_for_the_protocol(protocol: str) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    target = resolve_export(ExportConfig(), env).metrics
    assert target is not None
    module = "grpc" if protocol == "grpc" else "http"
    exporter = make_metric_exporter(target)
    try:
        assert f".proto.{module}.metric_exporter" in type(exporter).__module__
    finally:
        exporter.shutdown()
