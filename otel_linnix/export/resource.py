"""The OpenTelemetry Resource every signal of the agent carries."""

from __future__ import annotations

import socket
from pathlib import Path

from opentelemetry.sdk.resources import Resource

from otel_linnix.export.settings import ExportSettings

__all__ = ["build_resource", "host_id"]

_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def host_id(files: tuple[str, ...] = _MACHINE_ID_FILES) -> str | None:
    """The machine id (what semconv's host.id asks for on Linux), or None."""
    for name in files:
        try:
            value = Path(name).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if value:
            return value
    return None


def build_resource(settings: ExportSettings) -> Resource:
    """service.name, host.name, host.id, os.type, then the configured attributes.

    ``Resource.create`` is not used: it would also read OTEL_RESOURCE_ATTRIBUTES
    and OTEL_SERVICE_NAME itself, which ``resolve_export`` already merged (and
    checked) with the file's values in the documented order.
    """
    attributes: dict[str, str] = {
        "service.name": settings.service_name,
        "host.name": socket.gethostname(),
        "os.type": "linux",
    }
    machine = host_id()
    if machine is not None:
        attributes["host.id"] = machine
    attributes.update(settings.resource_attributes)
    attributes["service.name"] = settings.service_name
    return Resource(attributes)
