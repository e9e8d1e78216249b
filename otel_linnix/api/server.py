"""Serves the API with waitress (a production WSGI server that streams).

Every /stream client occupies one server thread for as long as it is
connected, so the pool is sized for ``max_stream_clients`` plus request
threads. waitress buffers at most ``outbuf_high_watermark`` bytes for a
client that does not read; past that its thread waits, its hub queue fills
and it starts losing events, counted, while everyone else carries on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from flask import Flask
from waitress.channel import HTTPChannel
from waitress.server import create_server

from otel_linnix.config import parse_bind_address
from otel_linnix.threads import AgentThread

__all__ = ["ApiServer"]

log = logging.getLogger(__name__)

_REQUEST_THREADS = 8
_OUTBUF_HIGH_WATERMARK = 1 << 20


class ApiServer:
    """The listening socket and its threads; start/stop are idempotent."""

    def __init__(self, app: Flask, bind_address: str, stream_clients: int) -> None:
        host, port = parse_bind_address(bind_address)
        self._server: Any = create_server(
            app,
            host=host,
            port=port,
            threads=stream_clients + _REQUEST_THREADS,
            outbuf_high_watermark=_OUTBUF_HIGH_WATERMARK,
            ident="otel-linnix",
            clear_untrusted_proxy_headers=True,
            channel_timeout=300,
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.effective_port)

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    def start(self) -> None:
        if self._thread is None:
            self._thread = AgentThread(self._serve, "linnix-api")
            self._thread.start()
            log.info("API listening on http://%s:%d", self.host, self.port)

    def _serve(self) -> None:
        # close() from stop() ends the loop with EBADF on the listening socket.
        with contextlib.suppress(OSError):
            self._server.run()

    def stop(self, timeout_s: float) -> None:
        """Stop serving: end streams, let running requests finish, close.

        The caller closes the StreamHub first, which ends every stream whose
        client reads. A stream whose client stopped reading is blocked in
        waitress waiting for its buffer to drain: marking its channel
        disconnected and waking it makes it give up. Only then is the server
        closed, so no request thread writes to a closed server.
        """
        if self._thread is None:
            return
        for channel in list(self._server._map.values()):  # waitress keeps no public list
            if isinstance(channel, HTTPChannel):
                channel.cancel()
                with channel.outbuf_lock:
                    channel.outbuf_lock.notify_all()
        self._server.task_dispatcher.shutdown(timeout=timeout_s)
        self._server.close()
        self._thread.join(timeout_s)
        self._thread = None
        # A connection whose client hung up just before the loop ended is still in the map,
        # its socket open; with the loop gone nothing else would ever close it.
        for channel in list(self._server._map.values()):
            if isinstance(channel, HTTPChannel):
                channel.close()
