"""JSON errors, query-parameter parsing and bearer-token checks for every route."""

from __future__ import annotations

import hmac
import math
import re
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

__all__ = ["ApiError", "float_param", "install", "int_param", "str_param"]

# Plain ASCII decimal integers only (int() also takes " 5", "1_000", "٣").
_INTEGER = re.compile(r"-?[0-9]+\Z")
# Routes that answer without a token: liveness and readiness must work for
# any prober (a kubelet httpGet probe cannot send a header from a Secret).
# They tell only whether the agent runs and captures, as /health does.
_OPEN_ROUTES = frozenset({"/health", "/healthz", "/readyz"})


class ApiError(Exception):
    """An error with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_error(status: int, message: str, **extra: Any) -> Response:
    response = jsonify({"error": message, **extra})
    response.status_code = status
    return response


def str_param(name: str) -> str | None:
    value = request.args.get(name)
    return value if value not in (None, "") else None


def float_param(name: str, lo: float | None = None) -> float | None:
    raw = str_param(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r}: expected a number, got {raw!r}") from None
    if math.isnan(value) or (lo is not None and value < lo):
        raise ApiError(400, f"query parameter {name!r}: expected a number >= {lo}, got {raw!r}")
    return value


def int_param(name: str, lo: int = 0, hi: int = 2**63 - 1) -> int | None:
    raw = str_param(name)
    if raw is None:
        return None
    if not _INTEGER.match(raw):
        raise ApiError(400, f"query parameter {name!r}: expected an integer, got {raw!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError(400, f"query parameter {name!r}: expected {lo}..{hi}, got {value}")
    return value


def _check_token() -> Response | None:
    token: str | None = current_app.config.get("LINNIX_TOKEN")
    if not token or request.path in _OPEN_ROUTES:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    response = _json_error(401, "missing or wrong bearer token")
    response.headers["WWW-Authenticate"] = 'Bearer realm="otel-linnix"'
    return response


def install(app: Flask) -> None:
    """Token check before every request; every error as JSON."""
    app.before_request(_check_token)

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return _json_error(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.code == 404:
            return _json_error(404, f"no such route: {request.path}")
        if exc.code == 405:
            response = _json_error(405, f"method {request.method} not allowed on {request.path}")
            # RFC 9110: a 405 lists the methods that are allowed.
            for name, value in exc.get_headers():
                if name.lower() == "allow":
                    response.headers["Allow"] = value
            return response
        return _json_error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Response:
        app.logger.exception("request failed: %s %s", request.method, request.path)
        return _json_error(500, f"internal error: {type(exc).__name__}")
