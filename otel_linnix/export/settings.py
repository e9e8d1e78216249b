"""Where and how to export: ``[export]`` merged with the standard OTEL_* variables.

The variables win over the file, as the OpenTelemetry specification asks, and
per-signal variables win over the general ones. Values are checked here, once,
at start-up: a malformed header list, an unknown protocol or an endpoint that
is not a URL is a ConfigError naming the variable or key, never a silent
default. The metric exporter is built from the result by ``make_metric_exporter``.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from otel_linnix.config import ExportConfig
from otel_linnix.errors import ConfigError

__all__ = [
    "SIGNALS",
    "ExportSettings",
    "OtlpTarget",
    "make_metric_exporter",
    "parse_key_values",
    "resolve_export",
]

SIGNALS = ("metrics", "logs", "traces")
PROTOCOLS = ("grpc", "http/protobuf")
_HTTP_PATHS = {"metrics": "v1/metrics", "logs": "v1/logs", "traces": "v1/traces"}


@dataclass(frozen=True, slots=True)
class OtlpTarget:
    """One signal's OTLP destination."""

    signal: str
    endpoint: str  # http/protobuf: the full URL; grpc: scheme://host:port
    protocol: str
    headers: Mapping[str, str]
    timeout_s: float

    @property
    def insecure(self) -> bool:
        """gRPC without TLS: an http:// endpoint (the specification's rule)."""
        return self.endpoint.startswith("http://")


@dataclass(frozen=True, slots=True)
class ExportSettings:
    """Everything the export layer needs, resolved and checked."""

    service_name: str
    resource_attributes: Mapping[str, str]
    metrics: OtlpTarget | None
    logs: OtlpTarget | None
    traces: OtlpTarget | None
    metrics_interval_s: float
    prometheus: bool
    config: ExportConfig


def parse_key_values(text: str, where: str) -> dict[str, str]:
    """``k=v,k2=v2`` (values percent-decoded) as OTEL_RESOURCE_ATTRIBUTES and
    OTEL_EXPORTER_OTLP_HEADERS spell them; ConfigError on a malformed entry."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"{where}: expected key=value pairs separated by commas, got {item!r}"
            )
        out[urllib.parse.unquote(key)] = urllib.parse.unquote(value.strip())
    return out


def _check_endpoint(value: str, where: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {value!r}")
    try:
        _ = parsed.port
    except ValueError:
        raise ConfigError(f"{where}: invalid port in {value!r}") from None
    return value


def _seconds_from_ms(text: str, where: str) -> float:
    try:
        ms = float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected milliseconds, got {text!r}") from None
    if not math.isfinite(ms) or ms <= 0:
        raise ConfigError(f"{where}: expected a positive number of milliseconds, got {text!r}")
    return ms / 1000


def _endpoint(signal: str, protocol: str, cfg: ExportConfig, env: Mapping[str, str]) -> str | None:
    """The signal's URL. Precedence: its own variable, the general variable, its
    own key, the general key. A signal's own endpoint is used as given; the
    general one gets the signal's path appended for http/protobuf (the
    specification's rule)."""
    own_var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    own_key = f"{signal}_endpoint"
    candidates = (
        (env.get(own_var) or None, own_var, True),
        (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None, "OTEL_EXPORTER_OTLP_ENDPOINT", False),
        (getattr(cfg, own_key), f"[export] {own_key}", True),
        (cfg.endpoint, "[export] endpoint", False),
    )
    for value, where, as_given in candidates:
        if value is not None:
            endpoint = _check_endpoint(value.strip(), where)
            if not as_given and protocol == "http/protobuf":
                endpoint = endpoint.rstrip("/") + "/" + _HTTP_PATHS[signal]
            return endpoint
    return None


def _target(signal: str, cfg: ExportConfig, env: Mapping[str, str]) -> OtlpTarget | None:
    upper = signal.upper()
    protocol_var = f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL"
    protocol, where = cfg.protocol, "[export] protocol"
    for var in ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol_var):
        if env.get(var):
            protocol, where = env[var].strip(), var
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")

    endpoint = _endpoint(signal, protocol, cfg, env)
    if endpoint is None:
        return None
    headers = parse_key_values(cfg.headers, "[export] headers")
    for var in ("OTEL_EXPORTER_OTLP_HEADERS", f"OTEL_EXPORTER_OTLP_{upper}_HEADERS"):
        if env.get(var):
            headers.update(parse_key_values(env[var], var))

    timeout_s = cfg.timeout_s
    for var in ("OTEL_EXPORTER_OTLP_TIMEOUT", f"OTEL_EXPORTER_OTLP_{upper}_TIMEOUT"):
        if env.get(var):
            timeout_s = _seconds_from_ms(env[var], var)
    return OtlpTarget(signal, endpoint, protocol, headers, timeout_s)


def resolve_export(cfg: ExportConfig, env: Mapping[str, str]) -> ExportSettings:
    """``[export]`` and the environment -> ExportSettings (ConfigError when malformed)."""
    attributes = parse_key_values(cfg.resource_attributes, "[export] resource_attributes")
    if env.get("OTEL_RESOURCE_ATTRIBUTES"):
        attributes.update(
            parse_key_values(env["OTEL_RESOURCE_ATTRIBUTES"], "OTEL_RESOURCE_ATTRIBUTES")
        )
    # OTEL_SERVICE_NAME wins over a service.name in the attributes; the file's
    # service_name is the default under both.
    service = (
        env.get("OTEL_SERVICE_NAME", "").strip()
        or (attributes.get("service.name") if env.get("OTEL_RESOURCE_ATTRIBUTES") else None)
        or cfg.service_name
    )
    attributes.pop("service.name", None)
    interval = cfg.metrics_interval_s
    if env.get("OTEL_METRIC_EXPORT_INTERVAL"):
        interval = _seconds_from_ms(
            env["OTEL_METRIC_EXPORT_INTERVAL"], "OTEL_METRIC_EXPORT_INTERVAL"
        )
    targets: dict[str, OtlpTarget | None] = {}
    for signal in SIGNALS:
        enabled = getattr(cfg, signal)
        targets[signal] = _target(signal, cfg, env) if enabled else None
    return ExportSettings(
        service_name=service,
        resource_attributes=attributes,
        metrics=targets["metrics"],
        logs=targets["logs"],
        traces=targets["traces"],
        metrics_interval_s=interval,
        prometheus=cfg.prometheus,
        config=cfg,
    )


def make_metric_exporter(target: OtlpTarget) -> Any:
    """The SDK's OTLP metric exporter for ``target`` (gRPC or HTTP/protobuf).

    Logs and spans do not go through the SDK's exporters: the agent encodes
    them itself (wire.py) and sends them with transport.py.
    """
    # Imported here: the exporters pull in grpc and requests, which only an
    # agent that exports needs.
    # ruff: noqa: PLC0415
    headers = dict(target.headers)
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(
            endpoint=target.endpoint,
            insecure=target.insecure,
            headers=headers,
            timeout=target.timeout_s,
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(endpoint=target.endpoint, headers=headers, timeout=target.timeout_s)
