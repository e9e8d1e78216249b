"""JSON shapes of the API: processes and lineage graphs.

Field names follow Linnix where its clients depend on them (``cpu_pct``,
``mem_pct``, ``age_sec``, the /graph node shape) and say their unit
everywhere else.
"""

from __future__ import annotations

from typing import Any

import orjson

from otel_linnix.api.context import ApiContext
from otel_linnix.events import ProcessKey
from otel_linnix.process_table import (
    GRAPH_FIELDS,
    GraphRow,
    GraphRows,
    ProcessInfo,
    ProcessTable,
)
from otel_linnix.recording import iso_time

__all__ = ["STATE_NAMES", "graph_json", "listed_processes_body", "process_json"]

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


# Stands for the age fields while a listed process's JSON is cached: argv,
# comm and paths are C strings, so no real value holds a NUL.
_AGE_MARK = "\x00age\x00"
_AGE_MARK_JSON = orjson.dumps(_AGE_MARK)


def listed_processes_body(
    infos: list[ProcessInfo], ctx: ApiContext, now_ns: int, wall_offset_ns: int
) -> bytes:
    """The JSON array of ``process_json`` for many processes, reusing what did
    not change.

    A process whose facts and last sample (its timestamp aside) are what they
    were at the previous listing is served from that listing's JSON with a new
    age spliced in: most processes on a host are idle between two requests,
    and building and encoding their objects is most of the cost of /processes.
    """
    cache = ctx.json_cache
    if len(cache) > 2 * len(infos) + 1024:
        cache.clear()  # bounded: entries of gone processes go with it
    dumps = orjson.dumps
    out: list[bytes] = []
    for info in infos:
        sample = info.sample
        # Everything but the key and the sample (whose timestamp alone may move).
        tag = (info[1:27], sample[1:] if sample is not None else None, info[28:])
        end = info.exit_ts_ns if info.exited and info.exit_ts_ns else now_ns
        age_s = max(0.0, (end - info.start_time_ns) / 1e9)
        hit = cache.get(info.key)
        if hit is None or hit[0] != tag:
            obj = process_json(info, ctx, now_ns, wall_offset_ns)
            obj["age_s"] = obj["age_sec"] = _AGE_MARK
            head, middle, tail = dumps(obj).split(_AGE_MARK_JSON)
            cache[info.key] = (tag, head, middle, tail)
        else:
            _tag, head, middle, tail = hit
        out.append(head + dumps(age_s) + middle + str(int(age_s)).encode() + tail)
    return b"[" + b",".join(out) + b"]"


class _GraphBuilder:
    """Nodes and edges of one graph, appended level by level."""

    def __init__(self, starts: dict[ProcessKey, int]) -> None:
        self.starts = starts  # key -> exact start time of every node's process
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[dict[str, int | None]] = []

    def add(self, rows: list[GraphRow], relationship: str, level: int) -> None:
        """The node of every row, and its edge from a parent in the graph.

        Runs for every node of a graph: one tuple unpacking, one dict literal.
        """
        starts, nodes, edges = self.starts, self.nodes, self.edges
        for (
            key,
            ppid,
            parent_key,
            start,
            comm,
            exe,
            uid,
            gid,
            exec_count,
            bootstrap,
            exited,
            exit_code,
            exit_signal,
            container_id,
            trace_id,
            span_id,
            parent_span_id,
        ) in rows:
            pid = key.pid
            nodes.append(
                {
                    "pid": pid,
                    "ppid": ppid,
                    "start_time_ns": start,
                    "comm": comm,
                    "exe": exe,
                    "uid": uid,
                    "gid": gid,
                    "event_type": "exit"
                    if exited
                    else "exec"
                    if exec_count or bootstrap
                    else "fork",
                    "relationship": relationship,
                    "level": level,
                    "exited": exited,
                    "exit_code": exit_code,
                    "exit_signal": exit_signal,
                    "container_id": container_id,
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "parent_span_id": parent_span_id,
                }
            )
            # Keys are tick-truncated; edges carry the nodes' exact start times.
            if parent_key is not None and parent_key in starts:
                edges.append(
                    {
                        "from": parent_key.pid,
                        "to": pid,
                        "from_start_time_ns": starts[parent_key],
                        "to_start_time_ns": start,
                    }
                )

    def add_virtual_root(self, top: GraphRow, level: int) -> None:
        """The parent of ``top`` that is not in the table, as Linnix shows it."""
        top_key, ppid, _parent_key, top_start = top[:4]
        node: dict[str, Any] = dict.fromkeys(self.nodes[0])  # the same keys, in order
        node.update(pid=ppid, relationship="virtual_root", level=level)
        self.nodes.append(node)
        self.edges.append(
            {
                "from": ppid,
                "to": top_key.pid,
                "from_start_time_ns": None,
                "to_start_time_ns": top_start,
            }
        )


def graph_json(table: ProcessTable, focus: ProcessInfo, max_descendants: int) -> dict[str, Any]:
    """Ancestors to the oldest known one, siblings and descendants of ``focus``.

    Levels: the process 0, ancestors -1, -2..., siblings 0, descendants 1, 2...
    A parent that is not in the table (it exited before the retention window,
    or before the agent started) becomes a ``virtual_root`` node, as in Linnix.
    """
    rows = table.graph_rows(focus.key, max_descendants)
    if rows is None:  # pruned between the lookup and now: a graph of one
        rows = GraphRows(GRAPH_FIELDS(focus), [], [], [], False)
    everyone = [rows.focus, *rows.ancestors, *rows.siblings]
    for level_rows in rows.levels:
        everyone.extend(level_rows)
    graph = _GraphBuilder({row[0]: row[3] for row in everyone})
    graph.add([rows.focus], "self", 0)
    for depth, row in enumerate(rows.ancestors, start=1):
        graph.add([row], "ancestor", -depth)
    graph.add(rows.siblings, "sibling", 0)
    for depth, level_rows in enumerate(rows.levels, start=1):
        graph.add(level_rows, "descendant", depth)
    top = rows.ancestors[-1] if rows.ancestors else rows.focus
    if top[1] > 0 and (top[2] is None or top[2] not in graph.starts):
        graph.add_virtual_root(top, -len(rows.ancestors) - 1)
    return {
        "root": focus.pid,
        "start_time_ns": focus.start_time_ns,
        "nodes": graph.nodes,
        "edges": graph.edges,
        "truncated": rows.truncated,
    }
