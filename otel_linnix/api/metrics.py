"""GET /metrics: the Prometheus text exposition of the agent's meter provider."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from otel_linnix.api.context import ApiContext
from otel_linnix.api.errors import ApiError

__all__ = ["bp"]

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """The same instruments the OTLP exporter sends, rendered for Prometheus."""
    ctx: ApiContext = current_app.extensions["linnix"]
    source = ctx.metrics
    if source is None:
        raise ApiError(404, "Prometheus exposition is off ([export] prometheus = false)")
    return Response(source.exposition(), status=200, content_type=source.content_type)
