"""/alerts: firing and recently resolved alerts as JSON, or as SSE on request."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

from flask import Blueprint, Response, current_app, jsonify, request

from otel_linnix.api.context import ApiContext
from otel_linnix.api.errors import ApiError, str_param
from otel_linnix.api.stream import ALERT_KIND, sse_response

__all__ = ["bp"]

bp = Blueprint("alerts", __name__)

_STATES = ("firing", "resolved")


def _since_ns() -> int | None:
    """?since= as epoch seconds or an RFC 3339 time."""
    raw = str_param("since")
    if raw is None:
        return None
    bad = ApiError(
        400, f"query parameter 'since': expected epoch seconds or an RFC 3339 time, got {raw!r}"
    )
    try:
        # Decimal, not float: epoch seconds with a fraction keep full precision.
        seconds = Decimal(raw)
    except InvalidOperation:
        pass
    else:
        if not seconds.is_finite():
            raise bad
        return int(seconds * 1_000_000_000)
    try:
        stamp = datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
    except ValueError:
        raise bad from None
    if stamp.tzinfo is None:
        raise ApiError(
            400, f"query parameter 'since': {raw!r} has no time zone offset (use Z or +HH:MM)"
        )
    return int(stamp.timestamp()) * 1_000_000_000 + stamp.microsecond * 1000


@bp.get("/alerts")
def alerts() -> Response:
    ctx: ApiContext = current_app.extensions["linnix"]
    if request.accept_mimetypes.best == "text/event-stream":
        return sse_response(ctx, lambda item: item.kind == ALERT_KIND)
    state = str_param("state")
    if state is not None and state not in _STATES:
        raise ApiError(400, f"query parameter 'state': expected firing or resolved, got {state!r}")
    return jsonify(list(ctx.alert_source.alerts(state, _since_ns())))
