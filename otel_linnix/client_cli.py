"""``linnix-cli``: the agent's command-line client (stream, processes, tree, alerts, status)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from otel_linnix.client import AgentClient, ClientError
from otel_linnix.console import event_line, one_line
from otel_linnix.errors import DataError
from otel_linnix.recording import event_from_dict, parse_iso_time

__all__ = ["main"]

ENV_TOKEN = "LINNIX_API_TOKEN"  # noqa: S105 - the variable's name
ENV_URL = "LINNIX_URL"
_SEVERITY_COLOURS = {
    "critical": "\033[1;31m",
    "high": "\033[31m",
    "medium": "\033[33m",
    "low": "\033[36m",
    "info": "\033[37m",
}
_RESET = "\033[0m"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.1f}M"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _alert_line(alert: dict[str, Any], colour: bool) -> str:
    severity = str(alert.get("severity", "info")).lower()
    label = severity.upper()
    if colour:
        label = f"{_SEVERITY_COLOURS.get(severity, '')}{label}{_RESET}"
    subject = alert.get("subject") or {}
    who = f" pid={subject.get('pid')} {subject.get('comm', '')}" if subject.get("pid") else ""
    state = f" ({alert['state']})" if alert.get("state") else ""
    text = one_line(f"{alert.get('rule', '?')}{state}{who} - {alert.get('message', '')}")
    return f"[{label}] {text}"


def cmd_stream(client: AgentClient, args: argparse.Namespace, colour: bool) -> int:
    params = {"kind": args.kind, "comm": args.comm, "pid": args.pid, "container": args.container}
    for msg in client.stream("/stream", params):
        if args.json:
            print(msg.data, flush=True)
            continue
        try:
            data = json.loads(msg.data)
        except ValueError:
            print(f"linnix-cli: unreadable event {msg.id}: {msg.data[:80]}", file=sys.stderr)
            continue
        if msg.event == "lost":
            print(
                f"linnix-cli: {data.get('lost')} events lost ({data.get('reason')})",
                file=sys.stderr,
                flush=True,
            )
        elif msg.event == "alert":
            print(_alert_line(data, colour), flush=True)
        else:
            try:
                event = event_from_dict(data)
            except DataError as exc:
                print(f"linnix-cli: event {msg.id}: {exc}", file=sys.stderr)
                continue
            wall = parse_iso_time(data["time"]) if data.get("time") else None
            print(event_line(event, wall, colour=colour), flush=True)
    return 0


def cmd_processes(client: AgentClient, args: argparse.Namespace, _colour: bool) -> int:
    rows = client.get_json(
        "/processes", {"sort": args.sort, "limit": args.limit, "comm": args.comm, "user": args.user}
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'PID':>7} {'PPID':>7} {'USER':<10} {'CPU%':>6} {'RSS':>8} {'FDS':>5} "
        f"{'THR':>4} {'STATE':<10} {'AGE':>5} COMMAND"
    )
    for p in rows:
        cpu = "-" if p["cpu_percent"] is None else f"{p['cpu_percent']:.1f}"
        fds = "-" if p["open_fds"] is None else str(p["open_fds"])
        thr = "-" if p["threads"] is None else str(p["threads"])
        cmd = one_line(" ".join(p["argv"]) if p["argv"] else f"[{p['comm']}]")
        user = p["user"] or str(p["uid"])
        print(
            f"{p['pid']:>7} {p['ppid']:>7} {user[:10]:<10} {cpu:>6} {_mib(p['rss_bytes']):>8} "
            f"{fds:>5} {thr:>4} {p['state'][:10]:<10} {_age(p['age_s']):>5} {cmd[:120]}"
        )
    return 0


def cmd_tree(client: AgentClient, args: argparse.Namespace, _colour: bool) -> int:
    graph = client.get_json(f"/graph/{args.pid}")
    nodes = graph["nodes"]
    by_key = {(n["pid"], n["start_time_ns"]): n for n in nodes}
    children: dict[tuple[int, int | None], list[dict[str, Any]]] = {}
    has_parent = set()
    for edge in graph["edges"]:
        parent = (edge["from"], edge["from_start_time_ns"])
        child = (edge["to"], edge["to_start_time_ns"])
        if child in by_key:
            children.setdefault(parent, []).append(by_key[child])
            has_parent.add(child)
    roots = [n for n in nodes if (n["pid"], n["start_time_ns"]) not in has_parent]

    def label(n: dict[str, Any]) -> str:
        if n["relationship"] == "virtual_root":
            return f"{n['pid']} (not observed)"
        mark = " <==" if n["relationship"] == "self" else ""
        ended = ""
        if n["exited"]:
            ended = (
                f" [exited: signal {n['exit_signal']}]"
                if n["exit_signal"] is not None
                else f" [exited: status {n['exit_code']}]"
            )
        return f"{n['pid']} {one_line(n['comm'] or '')}{ended}{mark}"

    def walk(n: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        print(label(n) if top else f"{prefix}{'└── ' if last else '├── '}{label(n)}")
        kids = sorted(
            children.get((n["pid"], n["start_time_ns"]), []),
            key=lambda c: (c["start_time_ns"] or 0, c["pid"]),
        )
        inner = "" if top else prefix + ("    " if last else "│   ")
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    if graph.get("truncated"):
        print("(descendants truncated)")
    return 0


def cmd_alerts(client: AgentClient, args: argparse.Namespace, colour: bool) -> int:
    alerts = client.get_json("/alerts", {"state": args.state, "since": args.since})
    if args.json:
        print(json.dumps(alerts, indent=2))
    elif not alerts:
        print("no alerts")
    for alert in alerts if not args.json else []:
        print(_alert_line(alert, colour))
    return 0


def cmd_status(client: AgentClient, args: argparse.Namespace, _colour: bool) -> int:
    st = client.get_json("/status")
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(st["events_by_kind"].items())) or "none"
    print(
        f"status:      {st['status']}" + (f" ({'; '.join(st['reasons'])})" if st["reasons"] else "")
    )
    print(
        f"source:      {st['source']}    uptime: {_age(st['uptime_s'])}    version: {st['version']}"
    )
    print(f"events:      {st['events_total']} ({kinds})")
    print(f"lost:        {st['lost_events']}    queue drops: {sum(st['queue_drops'].values())}")
    procs = st["processes"]
    print(f"processes:   {procs['live']} live, {procs['exited_retained']} exited (retained)")
    print(
        f"stream:      {st['stream']['subscribers']} clients, {st['stream']['lost']} events "
        "lost to slow clients"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linnix-cli", description="Client of the otel-linnix API.")
    p.add_argument(
        "--url",
        default=os.environ.get(ENV_URL, "http://127.0.0.1:3000"),
        help="agent URL (default: $LINNIX_URL or http://127.0.0.1:3000)",
    )
    p.add_argument("--no-color", action="store_true")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    st = sub.add_parser("stream", help="follow lifecycle events and alerts")
    st.add_argument("--kind", help="comma-separated: fork,exec,exit,oom_kill,alert")
    st.add_argument("--comm", help="command name (glob)")
    st.add_argument("--pid", type=int, help="only this process and its descendants")
    st.add_argument("--container", help="container id prefix")
    st.add_argument("--json", action="store_true", help="print each event's JSON")
    st.set_defaults(func=cmd_stream)
    pr = sub.add_parser("processes", help="list live processes")
    pr.add_argument("--sort", default="cpu", choices=["cpu", "rss", "fds", "age", "pid"])
    pr.add_argument("--limit", type=int, default=30)
    pr.add_argument("--comm")
    pr.add_argument("--user")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_processes)
    tr = sub.add_parser("tree", help="the process tree around PID")
    tr.add_argument("pid", type=int)
    tr.set_defaults(func=cmd_tree)
    al = sub.add_parser("alerts", help="firing and recently resolved alerts")
    al.add_argument("--state", choices=["firing", "resolved"])
    al.add_argument("--since", help="epoch seconds or RFC 3339 time")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_alerts)
    ss = sub.add_parser("status", help="agent status")
    ss.add_argument("--json", action="store_true")
    ss.set_defaults(func=cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    client = AgentClient(args.url, os.environ.get(ENV_TOKEN), args.timeout)
    colour = sys.stdout.isatty() and not args.no_color
    try:
        result: int = args.func(client, args, colour)
    except ClientError as exc:
        print(f"linnix-cli: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
