"""A /stream client for tests: a raw socket, a thread, parsed frames, a stop flag."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any


def _dechunk(raw: bytes) -> tuple[bytes, bytes]:
    """Decode the complete chunks of a chunked body; returns (data, rest)."""
    out = b""
    while True:
        size_line, sep, rest = raw.partition(b"\r\n")
        if not sep:
            return out, raw
        size = int(size_line.split(b";")[0] or b"0", 16)
        if len(rest) < size + 2:
            return out, raw
        out += rest[:size]
        raw = rest[size + 2 :]


@dataclass
class Frame:
    event: str
    id: int | None
    data: Any
    at_ns: int = 0  # wall clock when the frame was parsed


@dataclass
class SseReader:
    """Reads ``path`` from the agent on ``port`` until stopped; keeps every frame.

    ``keep_data=False`` keeps only ids and kinds (for many concurrent clients).
    """

    port: int
    path: str = "/stream"
    headers: dict[str, str] = field(default_factory=dict)
    keep_data: bool = True
    frames: list[Frame] = field(default_factory=list)
    status: int | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Accept: text/event-stream\r\n{extra}\r\n"
        )
        self._sock.sendall(request.encode())
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raw = b""  # bytes as received
        body = b""  # de-chunked stream content
        header_done = chunked = False
        try:
            while not self._stop.is_set():
                try:
                    chunk = self._sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                raw += chunk
                if not header_done:
                    head, sep, rest = raw.partition(b"\r\n\r\n")
                    if not sep:
                        continue
                    self.status = int(head.split()[1])
                    chunked = b"transfer-encoding: chunked" in head.lower()
                    header_done = True
                    raw = rest
                if chunked:
                    decoded, raw = _dechunk(raw)
                    body += decoded
                else:
                    body, raw = body + raw, b""
                body = self._parse(body)
        finally:
            self._sock.close()
            with self._cond:
                self._cond.notify_all()

    def _parse(self, buf: bytes) -> bytes:
        while b"\n\n" in buf:
            block, _, buf = buf.partition(b"\n\n")
            event, ident, data = "message", None, []
            for raw in block.split(b"\n"):
                line = raw.decode("utf-8", "replace").strip("\r")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    ident = int(line[4:])
                elif line.startswith("data: "):
                    data.append(line[6:])
            if data or ident is not None:
                payload = json.loads("\n".join(data)) if data and self.keep_data else None
                with self._cond:
                    self.frames.append(Frame(event, ident, payload, time.time_ns()))
                    self._cond.notify_all()
        return buf

    def wait_for(self, predicate: Any, timeout_s: float = 20.0) -> list[Frame]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.frames):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"stream condition not met within {timeout_s} s "
                        f"({len(self.frames)} frames, status {self.status})"
                    )
                self._cond.wait(min(left, 0.5))
            return list(self.frames)

    def ids(self) -> list[int]:
        with self._cond:
            return [f.id for f in self.frames if f.id is not None]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
