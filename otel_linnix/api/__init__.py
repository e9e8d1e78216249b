"""The HTTP API: a Flask application factory, one blueprint per area.

A thin read-only view over snapshots of the pipeline; it never blocks the
drain loop. Served by ``otel_linnix.api.server.ApiServer`` (waitress).
"""

from __future__ import annotations

from flask import Flask

from otel_linnix.api import alerts, errors, health, metrics, processes, stream
from otel_linnix.api.context import ApiContext
from otel_linnix.api.json_provider import OrjsonProvider

__all__ = ["ApiContext", "create_app"]


def create_app(ctx: ApiContext) -> Flask:
    """The API over ``ctx``; the token (if any) comes from ``ctx.config.api``."""
    app = Flask("otel_linnix")
    app.json = OrjsonProvider(app)
    app.config["LINNIX_TOKEN"] = ctx.config.api.auth_token
    app.extensions["linnix"] = ctx
    errors.install(app)
    for module in (health, processes, stream, alerts, metrics):
        app.register_blueprint(module.bp)
    return app
