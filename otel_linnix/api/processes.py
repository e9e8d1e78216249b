"""/processes, /processes/<pid> and /graph/<pid>."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable

from flask import Blueprint, Response, current_app, jsonify

from otel_linnix.api.context import ApiContext
from otel_linnix.api.errors import ApiError, float_param, int_param, str_param
from otel_linnix.api.serialize import graph_json, listed_processes_body, process_json
from otel_linnix.events import ProcessKey
from otel_linnix.process_table import ProcessInfo

__all__ = ["bp"]

bp = Blueprint("processes", __name__)


def _cpu(info: ProcessInfo) -> float:
    sample = info.sample
    return (sample.cpu_percent or 0.0) if sample is not None else 0.0


def _rss(info: ProcessInfo) -> int:
    sample = info.sample
    return (sample.rss_bytes or 0) if sample is not None else 0


def _fds(info: ProcessInfo) -> int:
    sample = info.sample
    return (sample.fd_count or 0) if sample is not None else 0


# Filters and sort keys read the snapshot, not the JSON: only the processes
# that are returned are serialised (a limit of 20 of 5,000 builds 20 objects).
_SORT_KEYS: dict[str, Callable[[ProcessInfo], float]] = {
    "cpu": _cpu,
    "rss": _rss,
    "fds": _fds,
    # The later a process started, the younger it is.
    "age": lambda p: -p.start_time_ns,
    "pid": lambda p: p.key.pid,
}
# Linnix spellings: sort=cpu_pct:desc, filter=cpu_pct>N
_LINNIX_SORT = {"cpu_pct": "cpu", "mem_pct": "rss"}
_LINNIX_FILTER = re.compile(r"^(cpu_pct|mem_pct)\s*>\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")


def _ctx() -> ApiContext:
    ctx: ApiContext = current_app.extensions["linnix"]
    return ctx


def _glob(pattern: str) -> Callable[[str | None], bool]:
    if any(c in pattern for c in "*?["):
        return lambda value: value is not None and fnmatch.fnmatchcase(value, pattern)
    return lambda value: (
        value is not None and (value == pattern or os.path.basename(value) == pattern)
    )


def _filters(ctx: ApiContext) -> list[Callable[[ProcessInfo], bool]]:
    return _identity_filters(ctx) + _resource_filters(ctx)


def _identity_filters(ctx: ApiContext) -> list[Callable[[ProcessInfo], bool]]:
    checks: list[Callable[[ProcessInfo], bool]] = []
    if (comm := str_param("comm")) is not None:
        match_comm = _glob(comm)
        checks.append(lambda p: match_comm(p.comm))
    if (exe := str_param("exe")) is not None:
        match_exe = _glob(exe)
        checks.append(lambda p: match_exe(p.exe))
    if (container := str_param("container")) is not None:
        if container == "none":
            checks.append(lambda p: p.container_id is None)
        else:
            checks.append(lambda p: (p.container_id or "").startswith(container))
    if (user := str_param("user")) is not None:
        if user.isascii() and user.isdigit():
            uid = int(user)
            checks.append(lambda p: p.uid == uid)
        else:
            checks.append(lambda p: ctx.users.name(p.uid) == user)
    return checks


def _resource_filters(ctx: ApiContext) -> list[Callable[[ProcessInfo], bool]]:
    checks: list[Callable[[ProcessInfo], bool]] = []
    if (min_cpu := float_param("min_cpu", lo=0)) is not None:
        checks.append(lambda p: _cpu(p) >= min_cpu)
    if (min_rss := int_param("min_rss")) is not None:
        checks.append(lambda p: _rss(p) >= min_rss)
    if (legacy := str_param("filter")) is not None:
        m = _LINNIX_FILTER.match(legacy)
        if m is None:
            raise ApiError(
                400, f"query parameter 'filter': expected cpu_pct>N or mem_pct>N, got {legacy!r}"
            )
        bound = float(m.group(2))
        if m.group(1) == "cpu_pct":
            checks.append(lambda p: _cpu(p) > bound)
        else:
            total = ctx.mem_total_bytes or 1
            checks.append(lambda p: _rss(p) * 100.0 / total > bound)
    return checks


def _sort_spec() -> tuple[str, bool]:
    raw = str_param("sort") or "pid"
    name, _, direction = raw.partition(":")
    name = _LINNIX_SORT.get(name, name)
    if name not in _SORT_KEYS:
        raise ApiError(
            400,
            f"query parameter 'sort': expected one of {', '.join(sorted(_SORT_KEYS))}, got {raw!r}",
        )
    order = str_param("order") or direction or ("asc" if name == "pid" else "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"query parameter 'order': expected asc or desc, got {order!r}")
    return name, order == "desc"


@bp.get("/processes")
def list_processes() -> Response:
    ctx = _ctx()
    checks = _filters(ctx)
    sort_key, descending = _sort_spec()
    limit = int_param("limit", lo=1, hi=1_000_000)
    include_exited = str_param("include_exited") in ("1", "true", "yes")
    infos = ctx.pipeline.table.snapshot(include_exited=include_exited)
    if checks:
        infos = [p for p in infos if all(check(p) for check in checks)]
    infos.sort(key=_SORT_KEYS[sort_key], reverse=descending)
    if limit is not None:
        infos = infos[:limit]
    now = ctx.boot_clock()
    offset = ctx.wall_from_boot(0)
    return Response(listed_processes_body(infos, ctx, now, offset), mimetype="application/json")


def _find(pid: int) -> ProcessInfo:
    table = _ctx().pipeline.table
    start = int_param("start_time_ns")
    info = table.get(ProcessKey.of(pid, start)) if start is not None else table.find_pid(pid)
    if info is None:
        detail = f" started at {start}" if start is not None else ""
        raise ApiError(404, f"no process with pid {pid}{detail} (live or recently exited)")
    return info


@bp.get("/processes/<int:pid>")
def one_process(pid: int) -> Response:
    ctx = _ctx()
    return jsonify(process_json(_find(pid), ctx, ctx.boot_clock()))


@bp.get("/graph/<int:pid>")
def graph(pid: int) -> Response:
    limit = int_param("max_descendants", lo=1, hi=1_000_000) or 10_000
    return jsonify(graph_json(_ctx().pipeline.table, _find(pid), limit))
