"""Sending encoded OTLP requests, and the bounded queue + thread that does it.

``OtlpSender`` posts one already-encoded request over gRPC or HTTP/protobuf
with a hard per-request timeout and no hidden retries: the caller decides
what to retry, so every failure is counted and shutdown can cut a request in
flight. ``ExportQueue`` is what a signal exporter hands encoded records to:
bounded, non-blocking, with a share kept for records that must not be lost
to a flood (exits, OOM kills, alerts), one thread sending batches, retries
with backoff while the collector is down, and counters for everything.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import http.client
import logging
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from otel_linnix.export.settings import OtlpTarget
from otel_linnix.threads import AgentThread

__all__ = ["ExportError", "ExportQueue", "OtlpSender"]

log = logging.getLogger(__name__)

_GRPC_SERVICES = {
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}
# What the OTLP specification says a client retries.
_HTTP_RETRYABLE = frozenset({429, 502, 503, 504})
_GRPC_RETRYABLE = frozenset(
    {"CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "OUT_OF_RANGE",
     "UNAVAILABLE", "DATA_LOSS"}
)  # fmt: skip
_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 5.0


class ExportError(Exception):
    """One request failed; ``retryable`` as the OTLP specification defines it."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


def _env(signal: str, name: str, env: Mapping[str, str]) -> str | None:
    """OTEL_EXPORTER_OTLP_<SIGNAL>_<NAME>, else OTEL_EXPORTER_OTLP_<NAME>."""
    return env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}") or env.get(
        f"OTEL_EXPORTER_OTLP_{name}"
    )


class OtlpSender:
    """Posts encoded OTLP requests to one target (thread-compatible: one sender
    thread calls ``send``; any thread may call ``abort``)."""

    def __init__(self, target: OtlpTarget, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.target = target
        self._gzip = (_env(target.signal, "COMPRESSION", env) or "none").strip().lower() == "gzip"
        self._cafile = _env(target.signal, "CERTIFICATE", env)
        self._lock = threading.Lock()
        self._closed = False
        self._http: http.client.HTTPConnection | None = None
        self._channel: Any = None
        self._call: Any = None
        url = urllib.parse.urlsplit(target.endpoint)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path or "/"
        if url.query:
            self._path += "?" + url.query

    # -- gRPC -------------------------------------------------------------

    def _grpc_call(self) -> Any:
        import grpc  # noqa: PLC0415 - only an agent exporting over gRPC needs it

        with self._lock:
            if self._closed:
                raise ExportError("exporter shut down", retryable=False)
            if self._call is None:
                # Reconnect quickly once the collector is back: gRPC's default
                # backoff grows to two minutes.
                options = [
                    ("grpc.initial_reconnect_backoff_ms", 500),
                    ("grpc.min_reconnect_backoff_ms", 500),
                    ("grpc.max_reconnect_backoff_ms", 5000),
                ]
                address = f"{self._host}:{self._port}"
                if self.target.insecure:
                    self._channel = grpc.insecure_channel(address, options=options)
                else:
                    roots = None
                    if self._cafile:
                        with open(self._cafile, "rb") as fh:
                            roots = fh.read()
                    creds = grpc.ssl_channel_credentials(root_certificates=roots)
                    self._channel = grpc.secure_channel(address, creds, options=options)
                # Requests are already encoded: no serializer, the bytes go as they are.
                self._call = self._channel.unary_unary(_GRPC_SERVICES[self.target.signal])
            return self._call

    def _send_grpc(self, payload: bytes, timeout_s: float) -> bytes:
        import grpc  # noqa: PLC0415

        call = self._grpc_call()
        metadata = [(k.lower(), v) for k, v in self.target.headers.items()]
        try:
            response: bytes = call(
                payload,
                timeout=timeout_s,
                metadata=metadata,
                compression=grpc.Compression.Gzip if self._gzip else None,
            )
        except grpc.RpcError as exc:
            code = exc.code()
            name = code.name if code is not None else "UNKNOWN"
            raise ExportError(
                f"gRPC {name}: {exc.details()}", retryable=name in _GRPC_RETRYABLE
            ) from None
        return response

    # -- HTTP/protobuf ----------------------------------------------------

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        with self._lock:
            if self._closed:
                raise ExportError("exporter shut down", retryable=False)
            if self._http is None:
                if self._https:
                    context = ssl.create_default_context(cafile=self._cafile)
                    self._http = http.client.HTTPSConnection(
                        self._host, self._port, timeout=timeout_s, context=context
                    )
                else:
                    self._http = http.client.HTTPConnection(
                        self._host, self._port, timeout=timeout_s
                    )
            self._http.timeout = timeout_s
            if self._http.sock is not None:
                self._http.sock.settimeout(timeout_s)
            return self._http

    def _drop_connection(self) -> None:
        with self._lock:
            conn, self._http = self._http, None
        if conn is not None:
            conn.close()

    def _send_http(self, payload: bytes, timeout_s: float) -> bytes:
        headers = {"Content-Type": "application/x-protobuf", **self.target.headers}
        if self._gzip:
            payload = gzip.compress(payload, 6)
            headers["Content-Encoding"] = "gzip"
        conn = self._connection(timeout_s)
        try:
            conn.request("POST", self._path, body=payload, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            # The connection is in an unknown state: start afresh next time.
            self._drop_connection()
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            raise ExportError(f"HTTP: {reason}", retryable=True) from None
        if response.will_close:
            self._drop_connection()
        if not 200 <= response.status < 300:
            raise ExportError(
                f"HTTP {response.status} {response.reason}",
                retryable=response.status in _HTTP_RETRYABLE,
            )
        return body

    # -- both ---------------------------------------------------------------

    def send(self, payload: bytes, timeout_s: float) -> bytes:
        """Post one request; the response body on success, ExportError otherwise."""
        if self.target.protocol == "grpc":
            return self._send_grpc(payload, timeout_s)
        return self._send_http(payload, timeout_s)

    def close(self) -> None:
        """Release the connection (from the sender thread, or once it ended)."""
        self.abort()
        self._drop_connection()

    def abort(self) -> None:
        """Cut any request in flight and refuse new ones (shutdown)."""
        with self._lock:
            self._closed = True
            channel, self._channel, self._call = self._channel, None, None
            conn = self._http
        if channel is not None:
            channel.close()  # cancels RPCs in flight
        if conn is not None and conn.sock is not None:
            # Wakes a recv() blocked in the sender thread; close() alone would not.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


class ExportQueue:
    """A bounded queue of encoded records and the thread that exports them.

    ``offer`` never blocks. Ordinary records are accepted while the queue is
    below three quarters of ``max_items``; the last quarter is kept for
    priority records, so a fork flood cannot crowd out exits. A batch is
    sent when ``batch_max`` records wait or ``linger_s`` after the first one.
    A retryable failure keeps the batch and retries with backoff (the queue
    keeps accepting, and dropping, meanwhile); a permanent one drops it.
    """

    def __init__(
        self,
        signal: str,
        sender: OtlpSender,
        envelope: Callable[[list[bytes]], bytes],
        max_items: int,
        batch_max: int,
        *,
        linger_s: float = 1.0,
    ) -> None:
        self.signal = signal
        self._sender = sender
        self._envelope = envelope
        self._max = max_items
        self._ordinary_max = max(1, max_items - max_items // 4)
        self._batch_max = max(1, batch_max)
        self._linger_s = linger_s
        self._queue: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._deadline: float | None = None  # monotonic; set while flushing for shutdown
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        # Counters (read without the lock: ints, written by one thread each).
        self.exported = 0  # records the collector accepted
        self.dropped = 0  # records lost: queue full, rejected, unsent at shutdown
        self.failed = 0  # failed requests (each attempt)
        self._last_error_log = 0.0

    def start(self) -> None:
        if self._thread is None:
            self._thread = AgentThread(self._run, f"linnix-otlp-{self.signal}")
            self._thread.start()

    def offer(self, record: bytes, *, priority: bool = False) -> bool:
        """Queue one encoded record; False (counted) when there is no room."""
        limit = self._max if priority else self._ordinary_max
        with self._cond:
            if len(self._queue) >= limit or self._stopping:
                self.dropped += 1
                return False
            self._queue.append(record)
            if len(self._queue) == 1 or len(self._queue) >= self._batch_max:
                self._cond.notify()
        return True

    def reject(self) -> None:
        """Count a record the caller did not offer because there was no room."""
        with self._cond:
            self.dropped += 1

    def has_room(self, *, priority: bool = False) -> bool:
        """Whether ``offer`` would accept now: lets callers skip encoding."""
        return len(self._queue) < (self._max if priority else self._ordinary_max)

    def __len__(self) -> int:
        return len(self._queue)

    def held_bytes(self) -> int:
        """Memory the queued records take (objects included): bounded by
        ``max_items`` times the largest record."""
        with self._cond:
            return sum(sys.getsizeof(record) for record in self._queue)

    def _take(self) -> list[bytes] | None:
        """The next batch, or None when stopping with nothing left."""
        with self._cond:
            first_wait = True
            while True:
                if self._stopping and not self._queue:
                    return None
                if len(self._queue) >= self._batch_max or (self._queue and self._stopping):
                    break
                if self._queue and not first_wait:
                    break  # lingered once: send what there is
                if self._queue:
                    first_wait = False
                    self._cond.wait(self._linger_s)
                else:
                    self._cond.wait()
            n = min(self._batch_max, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self._in_flight = n
            return batch

    def _timeout(self) -> float:
        timeout = self._sender.target.timeout_s
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - time.monotonic())
        return timeout

    def _run(self) -> None:
        backoff = _BACKOFF_MIN_S
        while True:
            batch = self._take()
            if batch is None:
                self._sender.close()
                return
            while True:
                timeout = self._timeout()
                if timeout <= 0:
                    self._lose(batch, "shutdown deadline reached")
                    break
                try:
                    self._sender.send(self._envelope(batch), timeout)
                except ExportError as exc:
                    self.failed += 1
                    if not exc.retryable:
                        self._lose(batch, str(exc))
                        break
                    self._log_failure(str(exc))
                    with self._cond:
                        # Interrupted by a shutdown, which sets its own deadline.
                        self._cond.wait(min(backoff, max(0.0, self._timeout())))
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)
                    continue
                except Exception:
                    self.failed += 1
                    log.exception("OTLP %s export failed", self.signal)
                    self._lose(batch, "unexpected error")
                    break
                self.exported += len(batch)
                backoff = _BACKOFF_MIN_S
                break
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()

    def _lose(self, batch: list[bytes], reason: str) -> None:
        with self._cond:
            self.dropped += len(batch)
        self._log_failure(f"{reason}; {len(batch)} records dropped")

    def _log_failure(self, message: str) -> None:
        # A collector that is down fails every request: one line every 10 s is enough.
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.warning(
                "OTLP %s export to %s: %s", self.signal, self._sender.target.endpoint, message
            )

    def flush(self, timeout_s: float) -> bool:
        """Send everything queued now within ``timeout_s`` (requests in flight
        and retries included); False when that was not enough."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            self._deadline = deadline
            self._cond.notify_all()
            try:
                while self._queue or self._in_flight:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._thread is None:
                        return False
                    self._cond.wait(min(left, 0.05))
                    self._cond.notify_all()  # cut a linger short
                return True
            finally:
                if not self._stopping:
                    self._deadline = None

    def shutdown(self, timeout_s: float) -> None:
        """Send what is queued within ``timeout_s``, then stop; what is left is
        dropped and counted. Never waits longer, whatever the collector does."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            self._deadline = deadline
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            # Leave a little of the budget to cut a request still in flight.
            self._thread.join(max(0.0, deadline - time.monotonic() - 0.05))
            if self._thread.is_alive():
                self._sender.abort()
                self._thread.join(0.05)
            if not self._thread.is_alive():
                self._sender.close()
        self._sender.abort()
        with self._cond:
            if self._queue:
                self._lose(list(self._queue), "not sent before shutdown")
                self._queue.clear()

    def stats(self) -> dict[str, int]:
        return {"exported": self.exported, "dropped": self.dropped, "failed": self.failed}
