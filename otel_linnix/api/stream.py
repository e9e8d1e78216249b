"""/stream: Server-Sent Events, one per lifecycle event (and alert).

Each client gets its own bounded queue in the StreamHub; this generator runs
on the client's server thread and only ever reads from that queue, so a slow
client slows nobody else. Filters are evaluated on the hub thread.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Callable, Iterable, Iterator

from flask import Blueprint, Response, current_app, request

from otel_linnix.api.context import ApiContext
from otel_linnix.api.errors import ApiError, int_param, str_param
from otel_linnix.events import EventKind
from otel_linnix.recording import iso_time
from otel_linnix.stream_hub import StreamHub, StreamItem, SubscriberLimit, Subscription

__all__ = ["ALERT_KIND", "bp", "sse_response"]

bp = Blueprint("stream", __name__)

ALERT_KIND = "alert"
_KINDS = frozenset({k.value for k in EventKind} | {ALERT_KIND})


def _ctx() -> ApiContext:
    ctx: ApiContext = current_app.extensions["linnix"]
    return ctx


def build_filter(ctx: ApiContext) -> Callable[[StreamItem], bool] | None:
    """The client's query parameters as one predicate (None: everything)."""
    checks: list[Callable[[StreamItem], bool]] = []
    if (kinds_raw := str_param("kind")) is not None:
        kinds = {k.strip() for k in kinds_raw.split(",") if k.strip()}
        unknown = kinds - _KINDS
        if unknown:
            raise ApiError(
                400,
                f"query parameter 'kind': unknown kind(s) "
                f"{', '.join(sorted(unknown))} (known: {', '.join(sorted(_KINDS))})",
            )
        checks.append(lambda it: it.kind in kinds)
    if (comm := str_param("comm")) is not None:
        checks.append(lambda it: it.event is not None and fnmatch.fnmatchcase(it.event.comm, comm))
    if (container := str_param("container")) == "none":
        checks.append(lambda it: it.event is not None and it.event.container_id is None)
    elif container is not None:
        checks.append(
            lambda it: it.event is not None and (it.event.container_id or "").startswith(container)
        )
    if (root := int_param("pid", lo=1)) is not None:
        table = ctx.pipeline.table
        # The subtree is read from the table when the event is offered: the
        # pipeline applies an event to the table before any sink sees it.
        checks.append(
            lambda it: (
                it.event is not None
                and (it.event.pid == root or table.has_ancestor_pid(it.event.key, root))
            )
        )
    if not checks:
        return None
    return lambda it: all(check(it) for check in checks)


def _last_event_id() -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit():
        raise ApiError(400, f"Last-Event-ID: expected an event id (an integer >= 0), got {raw!r}")
    return int(raw)


# Frames are sent in pieces of about this size, so a client that is far
# behind costs a bounded amount of memory per write, not its whole backlog.
_CHUNK_BYTES = 64 * 1024


def _lost_frame(lost: int, reason: str) -> bytes:
    data = json.dumps({"lost": lost, "reason": reason})
    return f": {lost} events lost ({reason})\nevent: lost\ndata: {data}\n\n".encode()


def _chunks(frames: Iterable[bytes]) -> Iterator[bytes]:
    part: list[bytes] = []
    size = 0
    for frame in frames:
        part.append(frame)
        size += len(frame)
        if size >= _CHUNK_BYTES:
            yield b"".join(part)
            part, size = [], 0
    if part:
        yield b"".join(part)


def _frames(hub: StreamHub, sub: Subscription, heartbeat_s: float) -> Iterator[bytes]:
    subscriber = sub.subscriber
    try:
        yield b"retry: 3000\n\n"
        if sub.restarted:
            yield (
                b": the requested id is from an earlier run of the agent; "
                b"event ids started again at 1\n\n"
            )
        if sub.gap:
            yield _lost_frame(sub.gap, "the requested id is older than the backlog")
        # Registration and the backlog snapshot are atomic in the hub, so the
        # replay and the live queue never overlap (ids are not in order:
        # alerts take theirs on another thread).
        yield from _chunks(it.frame() for it in sub.replay)
        while True:
            # Read the flag first: after close(), one last take() still sends
            # what was already queued for this client.
            closing = subscriber.closed
            items, lost = subscriber.take(heartbeat_s)
            if lost:
                yield _lost_frame(lost, "this client read too slowly")
            if items:
                yield from _chunks(it.frame() for it in items)
            elif not lost and not closing:
                yield f": keep-alive {iso_time(time.time_ns())}\n\n".encode()
            if closing:
                break
    finally:
        hub.unsubscribe(subscriber)


def sse_response(ctx: ApiContext, accept: Callable[[StreamItem], bool] | None) -> Response:
    """An SSE response subscribed to the hub with ``accept`` as filter."""
    try:
        sub = ctx.hub.subscribe(accept, _last_event_id())
    except SubscriberLimit as exc:
        raise ApiError(503, f"too many stream clients: {exc}") from None
    response = Response(
        _frames(ctx.hub, sub, ctx.config.api.heartbeat_interval_s), mimetype="text/event-stream"
    )
    # A generator that never starts (HEAD, a client gone before the first
    # byte) runs no finally: release the subscription when the response closes.
    response.call_on_close(lambda: ctx.hub.unsubscribe(sub.subscriber))
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # proxies must not buffer the stream
    return response


@bp.get("/stream")
@bp.get("/events")
def stream() -> Response:
    ctx = _ctx()
    return sse_response(ctx, build_filter(ctx))
