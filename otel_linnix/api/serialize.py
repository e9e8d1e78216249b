"""JSON shapes of the API: processes and lineage graphs.

Field names follow Linnix where its clients depend on them (``cpu_pct``,
``mem_pct``, ``age_sec``, the /graph node shape) and say their unit
everywhere else.
"""

from __future__ import annotations

from typing import Any

from otel_linnix.api.context import ApiContext
from otel_linnix.process_table import ProcessInfo, ProcessTable
from otel_linnix.recording import iso_time

__all__ = ["STATE_NAMES", "graph_json", "listed_processes_json", "process_json"]

# /proc state letters as words (the OTel process.state values where they exist).
STATE_NAMES = {
    "R": "running",
    "S": "sleeping",
    "D": "disk-sleep",
    "T": "stopped",
    "t": "stopped",
    "Z": "defunct",
    "X": "dead",
    "I": "idle",
    "P": "parked",
    "W": "waking",
}


def process_json(
    info: ProcessInfo, ctx: ApiContext, now_ns: int, wall_offset_ns: int | None = None
) -> dict[str, Any]:
    """One process, live or exited, as /processes and /processes/<pid> return it.

    ``wall_offset_ns`` (boot clock to Unix epoch) is read once per request by
    callers serialising many processes.
    """
    # One unpacking into locals: this runs for every process of a listing.
    (
        key,
        ppid,
        _parent,
        start,
        comm,
        exe,
        argv,
        argv_truncated,
        uid,
        gid,
        cgroup_id,
        container_id,
        container_runtime,
        pod_uid,
        kernel_thread,
        bootstrap,
        source,
        _execs,
        exited,
        exit_ts,
        exit_code,
        exit_signal,
        core_dumped,
        _inferred,
        exit_cpu_ns,
        _peak,
        oom_killed,
        sample,
        traceparent,
        trace_id,
        span_id,
        parent_span_id,
    ) = info
    if sample is not None:
        _ts, cpu_time_ns, cpu, rss, fds, fd_limit, threads, letter = sample
    else:
        cpu_time_ns, cpu, rss, fds, fd_limit, threads, letter = exit_cpu_ns, *_NO_SAMPLE
    age_s = max(0.0, ((exit_ts if exited and exit_ts else now_ns) - start) / 1e9)
    total = ctx.mem_total_bytes
    offset = ctx.wall_from_boot(0) if wall_offset_ns is None else wall_offset_ns
    state = "exited" if exited else STATE_NAMES.get(letter, letter) if letter else "unknown"
    return {
        "pid": key.pid,
        "ppid": ppid,
        "start_time_ns": start,
        "start_time": iso_time(start + offset),
        "comm": comm,
        "exe": exe,
        "argv": list(argv) if argv is not None else None,
        "argv_truncated": argv_truncated,
        "uid": uid,
        "gid": gid,
        "user": ctx.users.name(uid),
        "container_id": container_id,
        "container_runtime": container_runtime,
        "pod_uid": pod_uid,
        "cgroup_id": cgroup_id,
        "cpu_percent": cpu,
        "cpu_pct": cpu,
        "cpu_time_ns": cpu_time_ns,
        "rss_bytes": rss,
        "mem_pct": rss * 100.0 / total if rss is not None and total else None,
        "open_fds": fds,
        "fd_limit": fd_limit,
        "threads": threads,
        "state": state,
        "age_s": age_s,
        "age_sec": int(age_s),
        "bootstrap": bootstrap,
        "kernel_thread": kernel_thread,
        "source": source.value,
        "exited": exited,
        "exit_code": exit_code,
        "exit_signal": exit_signal,
        "core_dumped": core_dumped,
        "exit_time": iso_time(exit_ts + offset) if exit_ts else None,
        "oom_killed": oom_killed,
        "traceparent": traceparent,
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_span_id,
    }


_NO_SAMPLE = (None, None, None, None, None, None)


def listed_processes_json(
    infos: list[ProcessInfo], ctx: ApiContext, now_ns: int, wall_offset_ns: int
) -> list[dict[str, Any]]:
    """``process_json`` for many processes, reusing what did not change.

    A process whose facts and last sample (its timestamp aside) are what they
    were at the previous listing gets a copy of that listing's object with a
    new age: most processes on a host are idle between two requests, and
    building the object is most of the cost of /processes.
    """
    cache = ctx.json_cache
    if len(cache) > 2 * len(infos) + 1024:
        cache.clear()  # bounded: entries of gone processes go with it
    out = []
    for info in infos:
        sample = info.sample
        # Everything but the key and the sample (whose timestamp alone may move).
        tag = (info[1:27], sample[1:] if sample is not None else None, info[28:])
        hit = cache.get(info.key)
        if hit is not None and hit[0] == tag:
            obj = hit[1].copy()
            end = info.exit_ts_ns if info.exited and info.exit_ts_ns else now_ns
            age_s = max(0.0, (end - info.start_time_ns) / 1e9)
            obj["age_s"] = age_s
            obj["age_sec"] = int(age_s)
        else:
            obj = process_json(info, ctx, now_ns, wall_offset_ns)
            cache[info.key] = (tag, obj.copy())
        out.append(obj)
    return out


def _node(info: ProcessInfo, relationship: str, level: int) -> dict[str, Any]:
    (
        key,
        ppid,
        _parent,
        start,
        comm,
        exe,
        _argv,
        _trunc,
        uid,
        gid,
        _cgroup,
        container_id,
        _runtime,
        _pod,
        _kthread,
        bootstrap,
        _source,
        exec_count,
        exited,
        _exit_ts,
        exit_code,
        exit_signal,
        *_rest,
    ) = info
    if exited:
        event_type = "exit"
    elif exec_count or bootstrap:
        event_type = "exec"
    else:
        event_type = "fork"
    return {
        "pid": key.pid,
        "ppid": ppid,
        "start_time_ns": start,
        "comm": comm,
        "exe": exe,
        "uid": uid,
        "gid": gid,
        "event_type": event_type,
        "relationship": relationship,
        "level": level,
        "exited": exited,
        "exit_code": exit_code,
        "exit_signal": exit_signal,
        "container_id": container_id,
        "trace_id": info.trace_id,
        "span_id": info.span_id,
        "parent_span_id": info.parent_span_id,
    }


def graph_json(table: ProcessTable, focus: ProcessInfo, max_descendants: int) -> dict[str, Any]:
    """Ancestors to the oldest known one, siblings and descendants of ``focus``.

    Levels: the process 0, ancestors -1, -2..., siblings 0, descendants 1, 2...
    A parent that is not in the table (it exited before the retention window,
    or before the agent started) becomes a ``virtual_root`` node, as in Linnix.
    """
    members: list[tuple[ProcessInfo, str, int]] = [(focus, "self", 0)]
    ancestors = table.ancestors(focus.key)
    members.extend((info, "ancestor", -depth) for depth, info in enumerate(ancestors, start=1))
    members.extend((info, "sibling", 0) for info in table.siblings(focus.key))
    # One more than asked tells whether the subtree was cut.
    below = table.descendants(focus.key, limit=max_descendants + 1)
    truncated = len(below) > max_descendants
    members.extend((info, "descendant", depth) for info, depth in below[:max_descendants])
    nodes = [_node(info, rel, level) for info, rel, level in members]
    # Keys are tick-truncated; edges carry the nodes' exact start times.
    present = {info.key: info for info, _, _ in members}
    edges: list[dict[str, int | None]] = [
        {
            "from": info.parent_key.pid,
            "to": info.pid,
            "from_start_time_ns": present[info.parent_key].start_time_ns,
            "to_start_time_ns": info.start_time_ns,
        }
        for info, _, _ in members
        if info.parent_key is not None and info.parent_key in present
    ]
    top = ancestors[-1] if ancestors else focus
    if top.ppid > 0 and (top.parent_key is None or top.parent_key not in present):
        nodes.append(
            {
                "pid": top.ppid,
                "ppid": None,
                "start_time_ns": None,
                "comm": None,
                "exe": None,
                "uid": None,
                "gid": None,
                "event_type": None,
                "relationship": "virtual_root",
                "level": -len(ancestors) - 1,
                "exited": None,
                "exit_code": None,
                "exit_signal": None,
                "container_id": None,
                "trace_id": None,
                "span_id": None,
                "parent_span_id": None,
            }
        )
        edges.append(
            {
                "from": top.ppid,
                "to": top.pid,
                "from_start_time_ns": None,
                "to_start_time_ns": top.start_time_ns,
            }
        )
    return {
        "root": focus.pid,
        "start_time_ns": focus.start_time_ns,
        "nodes": nodes,
        "edges": edges,
        "truncated": truncated,
    }
