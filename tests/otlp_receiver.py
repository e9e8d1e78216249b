"""A real OTLP receiver for tests: gRPC and HTTP/protobuf on loopback, in process.

It decodes the wire protocol with the generated OpenTelemetry protobuf classes,
so whatever the agent sends is checked by the same definitions a collector
uses. Both servers listen on free loopback ports chosen at the first start and
kept across ``stop()`` / ``start()``, so an exporter pointed at them sees a
collector that goes away and comes back. ``mode`` makes it answer normally,
slowly (``"slow"``, after ``delay_s``) or refuse every request (``"refuse"``:
gRPC UNAVAILABLE, HTTP 503).

Usage::

    with OtlpReceiver() as rx:
        endpoint = rx.http_endpoint      # or rx.grpc_endpoint
        ...
        records = rx.wait_for_logs(lambda rs: any(r.event_name == "x" for r in rs))
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = [
    "LogRecordView",
    "MetricPointView",
    "OtlpReceiver",
    "Received",
    "SpanView",
    "attributes_of",
    "decode_value",
]

Signal = Literal["logs", "metrics", "traces"]
Mode = Literal["ok", "slow", "refuse"]

_REQUEST_TYPES: dict[str, type[Message]] = {
    "logs": logs_service_pb2.ExportLogsServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "traces": trace_service_pb2.ExportTraceServiceRequest,
}
_RESPONSE_TYPES: dict[str, type[Message]] = {
    "logs": logs_service_pb2.ExportLogsServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "traces": trace_service_pb2.ExportTraceServiceResponse,
}
_HTTP_PATHS: dict[str, str] = {"/v1/logs": "logs", "/v1/metrics": "metrics", "/v1/traces": "traces"}


def decode_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as the Python value it carries (None when unset)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [decode_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, which)


def attributes_of(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """Repeated KeyValue -> dict (a repeated key keeps its last value, and is
    reported by ``duplicate_keys``)."""
    return {kv.key: decode_value(kv.value) for kv in pairs}


def _items(
    resources: Iterable[Any], scopes: str, items: str
) -> Iterator[tuple[dict[str, Any], Any, Any]]:
    """(resource attributes, scope, item) of every item of one OTLP request:
    the resource -> scope -> item nesting every signal shares (``scopes`` and
    ``items`` name the signal's repeated fields)."""
    for r in resources:
        resource = attributes_of(r.resource.attributes)
        for scoped in getattr(r, scopes):
            for item in getattr(scoped, items):
                yield resource, scoped.scope, item


def duplicate_keys(pairs: Iterable[KeyValue]) -> list[str]:
    seen: set[str] = set()
    dups = []
    for kv in pairs:
        if kv.key in seen:
            dups.append(kv.key)
        seen.add(kv.key)
    return dups


@dataclass(frozen=True)
class Received:
    """One export request as it arrived."""

    signal: str
    protocol: str  # "grpc" or "http/protobuf"
    headers: Mapping[str, str]  # lower-case names (gRPC metadata or HTTP headers)
    message: Any  # the decoded Export*ServiceRequest
    size: int  # bytes on the wire (before gunzip)
    at: float  # time.monotonic() at arrival


@dataclass(frozen=True)
class LogRecordView:
    resource: dict[str, Any]
    scope_name: str
    scope_version: str
    event_name: str
    time_unix_nano: int
    observed_time_unix_nano: int
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    duplicate_attributes: list[str]
    trace_id: str  # lower-case hex, "" when unset
    span_id: str
    flags: int
    protocol: str


@dataclass(frozen=True)
class SpanView:
    resource: dict[str, Any]
    scope_name: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    protocol: str


@dataclass(frozen=True)
class MetricPointView:
    resource: dict[str, Any]
    scope_name: str
    name: str
    description: str
    unit: str
    kind: str  # "sum", "gauge", "histogram", "exponential_histogram", "summary"
    monotonic: bool | None  # sums only
    temporality: int | None  # sums and histograms: 1 delta, 2 cumulative
    attributes: dict[str, Any]
    value: float | int | None  # sum/gauge points; histograms: their sum
    count: int | None  # histograms and summaries
    time_unix_nano: int
    protocol: str


class _Servicer:
    """One servicer object answers the three services (same method name)."""

    def __init__(self, receiver: OtlpReceiver, signal: str) -> None:
        self._receiver = receiver
        self._signal = signal

    def Export(self, request: Message, context: grpc.ServicerContext) -> Message:  # noqa: N802
        headers = {k.lower(): str(v) for k, v in context.invocation_metadata()}
        refuse = self._receiver._before_answer()
        if refuse:
            context.abort(grpc.StatusCode.UNAVAILABLE, "receiver refusing (test)")
        self._receiver._store(
            Received(self._signal, "grpc", headers, request, request.ByteSize(), time.monotonic())
        )
        return _RESPONSE_TYPES[self._signal]()


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        signal = _HTTP_PATHS.get(self.path)
        receiver = self.server.receiver
        if signal is None:
            self._reply(404, b"unknown path")
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/x-protobuf":
            self._reply(415, b"expected application/x-protobuf")
            return
        encoding = self.headers.get("Content-Encoding", "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(raw)
            elif encoding == "deflate":
                body = zlib.decompress(raw)
            else:
                body = raw
            message = _REQUEST_TYPES[signal].FromString(body)
        except (OSError, zlib.error, DecodeError) as exc:
            self._reply(400, str(exc).encode())
            return
        if receiver._before_answer():
            self._reply(503, b"receiver refusing (test)")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        receiver._store(
            Received(signal, "http/protobuf", headers, message, len(raw), time.monotonic())
        )
        self._reply(200, _RESPONSE_TYPES[signal]().SerializeToString(), "application/x-protobuf")


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: OtlpReceiver


class OtlpReceiver:
    """gRPC and HTTP/protobuf OTLP endpoints on loopback, recording what arrives."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.grpc_port = 0
        self.http_port = 0
        self.mode: Mode = "ok"
        self.delay_s = 1.0
        self.refused = 0  # requests answered with UNAVAILABLE / 503
        self._received: list[Received] = []
        # signal -> (requests looked at, their flattened items)
        self._flattened: dict[str, tuple[int, list[Any]]] = {}
        self._cond = threading.Condition()
        self._grpc: grpc.Server | None = None
        self._http: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- life cycle -------------------------------------------------------

    def start(self) -> OtlpReceiver:
        """Listen (again) on the same ports as before; free ones the first time."""
        if self._grpc is not None:
            return self
        self._stopping.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Servicer(self, "logs"), server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self, "metrics"), server
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self, "traces"), server
        )
        port = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {self.host}:{self.grpc_port}")
        self.grpc_port = port
        server.start()
        self._grpc = server
        http_server = _HttpServer((self.host, self.http_port), _HttpHandler)
        http_server.receiver = self
        self.http_port = http_server.server_address[1]
        self._http = http_server
        self._http_thread = threading.Thread(
            target=http_server.serve_forever, args=(0.05,), name="otlp-receiver-http", daemon=True
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; connections in progress are cut (a collector going down)."""
        self._stopping.set()  # wakes handlers delayed by "slow"
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(5)
            self._http_thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._grpc is not None

    @property
    def grpc_endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT takes for grpc (http:// = no TLS)."""
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """The base URL; the exporters append /v1/<signal>."""
        return f"http://{self.host}:{self.http_port}"

    def endpoint(self, protocol: str) -> str:
        return self.grpc_endpoint if protocol == "grpc" else self.http_endpoint

    # -- server side ------------------------------------------------------

    def _before_answer(self) -> bool:
        """Apply the mode; True when the request is to be refused."""
        if self.mode == "slow":
            self._stopping.wait(self.delay_s)
        if self.mode == "refuse":
            with self._cond:
                self.refused += 1
                self._cond.notify_all()
            return True
        return False

    def _store(self, item: Received) -> None:
        with self._cond:
            self._received.append(item)
            self._cond.notify_all()

    # -- what arrived -----------------------------------------------------

    def received(self, signal: str | None = None) -> list[Received]:
        with self._cond:
            return [r for r in self._received if signal is None or r.signal == signal]

    def clear(self) -> None:
        with self._cond:
            self._received.clear()
            self._flattened.clear()
            self.refused = 0

    def _flat(self, signal: str, flatten: Callable[[Received], list[Any]]) -> list[Any]:
        """Every item of ``signal`` so far; each request is flattened once (a
        wait polls this, and a storm of records must not make it quadratic)."""
        with self._cond:
            done, items = self._flattened.setdefault(signal, (0, []))
            new = self._received[done:]
            for req in new:
                if req.signal == signal:
                    items.extend(flatten(req))
            self._flattened[signal] = (done + len(new), items)
            return list(items)

    def log_records(self) -> list[LogRecordView]:
        return self._flat("logs", self._log_records_of)

    def spans(self) -> list[SpanView]:
        return self._flat("traces", self._spans_of)

    def metric_points(self) -> list[MetricPointView]:
        return self._flat("metrics", self._points_of)

    @staticmethod
    def _log_records_of(req: Received) -> list[LogRecordView]:
        return [
            LogRecordView(
                resource=resource,
                scope_name=scope.name,
                scope_version=scope.version,
                event_name=rec.event_name,
                time_unix_nano=rec.time_unix_nano,
                observed_time_unix_nano=rec.observed_time_unix_nano,
                severity_number=rec.severity_number,
                severity_text=rec.severity_text,
                body=decode_value(rec.body),
                attributes=attributes_of(rec.attributes),
                duplicate_attributes=duplicate_keys(rec.attributes),
                trace_id=rec.trace_id.hex(),
                span_id=rec.span_id.hex(),
                flags=rec.flags,
                protocol=req.protocol,
            )
            for resource, scope, rec in _items(
                req.message.resource_logs, "scope_logs", "log_records"
            )
        ]

    @staticmethod
    def _spans_of(req: Received) -> list[SpanView]:
        return [
            SpanView(
                resource=resource,
                scope_name=scope.name,
                name=span.name,
                kind=span.kind,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                start_time_unix_nano=span.start_time_unix_nano,
                end_time_unix_nano=span.end_time_unix_nano,
                attributes=attributes_of(span.attributes),
                status_code=span.status.code,
                status_message=span.status.message,
                protocol=req.protocol,
            )
            for resource, scope, span in _items(req.message.resource_spans, "scope_spans", "spans")
        ]

    @staticmethod
    def _points_of(req: Received) -> list[MetricPointView]:
        out: list[MetricPointView] = []
        for resource, scope, metric in _items(
            req.message.resource_metrics, "scope_metrics", "metrics"
        ):
            out.extend(_points(metric, resource, scope.name, req.protocol))
        return out

    def _wait(
        self,
        collect: Callable[[], list[Any]],
        predicate: Callable[[list[Any]], bool],
        timeout_s: float,
    ) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                items = collect()
                if predicate(items):
                    return items
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"condition not met within {timeout_s} s ({len(items)} items received)"
                    )
                self._cond.wait(min(left, 0.5))

    def wait_for_logs(
        self, predicate: Callable[[list[LogRecordView]], bool], timeout_s: float = 10.0
    ) -> list[LogRecordView]:
        """Every log record so far, once ``predicate`` holds for them (TimeoutError otherwise)."""
        return self._wait(self.log_records, predicate, timeout_s)

    def wait_for_spans(
        self, predicate: Callable[[list[SpanView]], bool], timeout_s: float = 10.0
    ) -> list[SpanView]:
        return self._wait(self.spans, predicate, timeout_s)

    def wait_for_metrics(
        self, predicate: Callable[[list[MetricPointView]], bool], timeout_s: float = 10.0
    ) -> list[MetricPointView]:
        return self._wait(self.metric_points, predicate, timeout_s)

    def wait_refused(self, count: int, timeout_s: float = 10.0) -> None:
        """Until at least ``count`` requests were refused."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.refused < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.refused} of {count} requests refused in time")
                self._cond.wait(left)


def _points(
    metric: Any, resource: dict[str, Any], scope: str, protocol: str
) -> list[MetricPointView]:
    kind = metric.WhichOneof("data")
    if kind is None:
        return []
    data = getattr(metric, kind)
    monotonic = data.is_monotonic if kind == "sum" else None
    temporality = data.aggregation_temporality if kind in ("sum", "histogram") else None
    out = []
    for point in data.data_points:
        value: float | int | None
        count: int | None = None
        if kind in ("sum", "gauge"):
            which = point.WhichOneof("value")
            value = getattr(point, which) if which else None
        else:
            value = point.sum
            count = point.count
        out.append(
            MetricPointView(
                resource=resource,
                scope_name=scope,
                name=metric.name,
                description=metric.description,
                unit=metric.unit,
                kind=kind,
                monotonic=monotonic,
                temporality=temporality,
                attributes=attributes_of(point.attributes),
                value=value,
                count=count,
                time_unix_nano=point.time_unix_nano,
                protocol=protocol,
            )
        )
    return out
