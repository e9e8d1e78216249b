"""Health, readiness and status: /health, /healthz, /readyz, /status."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from otel_linnix.api.context import ApiContext
from otel_linnix.events import ProcessSource

__all__ = ["bp"]

bp = Blueprint("health", __name__)


def _ctx() -> ApiContext:
    ctx: ApiContext = current_app.extensions["linnix"]
    return ctx


@bp.get("/health")
def health() -> Response:
    """Always 200 while the agent runs; ``status`` says whether it is degraded."""
    ctx = _ctx()
    st = ctx.pipeline.status()
    return jsonify(
        {
            "status": "degraded" if st.degraded else "ok",
            "source": st.source.value,
            "reasons": list(st.degraded_reasons),
            "version": ctx.version,
            "uptime_s": round(st.uptime_s, 3),
        }
    )


@bp.get("/healthz")
def healthz() -> Response:
    """Linnix's liveness shape."""
    st = _ctx().pipeline.status()
    kernel = st.source is ProcessSource.EBPF
    return jsonify(
        {
            "status": "degraded" if st.degraded else "ok",
            "kernel_instrumentation": "active" if kernel else "unavailable",
            "transport": st.source.value,
        }
    )


@bp.get("/readyz")
def readyz() -> Response:
    """503 until the start-up walk is done, and while kernel capture is unavailable."""
    ctx = _ctx()
    st = ctx.pipeline.status()
    reason = None
    if not ctx.pipeline.ready:
        reason = "starting: the /proc start-up walk has not finished"
    elif ctx.pipeline.fallback_reason:
        reason = f"kernel capture unavailable: {ctx.pipeline.fallback_reason}"
    response = jsonify(
        {
            "ready": reason is None,
            "kernel_instrumentation": "active"
            if st.source is ProcessSource.EBPF
            else "unavailable",
            "transport": st.source.value,
            "reason": reason,
        }
    )
    response.status_code = 200 if reason is None else 503
    return response


@bp.get("/status")
def status() -> Response:
    ctx = _ctx()
    st = ctx.pipeline.status()
    src = st.source_stats
    return jsonify(
        {
            "version": ctx.version,
            "status": "degraded" if st.degraded else "ok",
            "reasons": list(st.degraded_reasons),
            "source": st.source.value,
            "uptime_s": round(st.uptime_s, 3),
            "events_by_kind": st.events_by_kind,
            "events_total": sum(st.events_by_kind.values()),
            "lost_events": src.lost_total,
            "lost_by_kind": dict(src.lost),
            "source_counters": dict(src.counters),
            "queue_drops": st.sink_dropped,
            "sink_failures": st.sink_failures,
            "processes": {
                "live": st.table.live,
                "exited_retained": st.table.exited,
                "bootstrap": st.bootstrap_processes,
                "evicted_exited": st.table.evicted_exited,
                "evicted_live": st.table.evicted_live,
                "exits_inferred": st.table.exits_inferred,
                "traceparent_invalid": st.table.traceparent_invalid,
            },
            "sampler": {
                "sweeps": st.sampler.sweeps,
                "last_sweep_ms": round(st.sampler.duration_s * 1000, 3),
                "last_sweep_cpu_ms": round(st.sampler.cpu_s * 1000, 3),
                "sampled": st.sampler.sampled,
            },
            "stream": ctx.hub.stats(),
            "cgroups": st.cgroups,
        }
    )
