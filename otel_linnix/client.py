"""A small HTTP client for the agent's API (JSON routes and the SSE stream).

Standard library only, so ``linnix-cli`` starts fast and works anywhere the
package is installed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AgentClient", "ClientError", "SseEvent"]


class ClientError(Exception):
    """The agent could not be reached or answered with an error; one line for the user."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    id: str | None
    data: str


class AgentClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout_s

    def _request(
        self, path: str, params: Mapping[str, object] | None, accept: str
    ) -> urllib.request.Request:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        full = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        req = urllib.request.Request(full, headers={"Accept": accept})  # noqa: S310 - http(s) URL given by the user
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        return req

    def _open(self, req: urllib.request.Request, timeout: float | None) -> Any:
        try:
            return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read().decode()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = exc.reason
            hint = " (set LINNIX_API_TOKEN)" if exc.code == 401 else ""
            raise ClientError(f"{req.full_url}: HTTP {exc.code}: {message}{hint}") from None
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach the agent at {self.url}: {exc.reason}") from None
        except (TimeoutError, ConnectionError) as exc:
            raise ClientError(f"cannot reach the agent at {self.url}: {exc}") from None

    def get_json(self, path: str, params: Mapping[str, object] | None = None) -> Any:
        with self._open(self._request(path, params, "application/json"), self._timeout) as resp:
            try:
                return json.loads(resp.read().decode())
            except ValueError as exc:
                raise ClientError(f"{self.url}{path}: the answer is not JSON: {exc}") from None

    def stream(
        self,
        path: str,
        params: Mapping[str, object] | None = None,
        last_event_id: str | None = None,
    ) -> Iterator[SseEvent]:
        """Server-Sent Events from ``path`` until the server closes the stream."""
        req = self._request(path, params, "text/event-stream")
        if last_event_id is not None:
            req.add_header("Last-Event-ID", last_event_id)
        resp = self._open(req, None)
        event, ident, data = "message", None, list[str]()
        with resp:
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        yield SseEvent(event, ident, "\n".join(data))
                    event, data = "message", []
                    continue
                if line.startswith(":"):
                    continue  # a comment: heartbeat or notice
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    ident = value
