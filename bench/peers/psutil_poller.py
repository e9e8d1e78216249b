"""The polling peer: a psutil sweep of every process each ``--interval`` seconds.

``python -m bench.peers.psutil_poller --out FILE`` writes one JSON line per
process it sees for the first time (by pid and create time):
``{"pid": ..., "create_time": ..., "cmdline": [...]}``. It prints ``ready``
after its first sweep and stops on SIGINT or SIGTERM. This is what a
psutil-based monitor can know about short-lived processes: only those alive
at the instant of a sweep.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

import psutil

_ATTRS = ["pid", "create_time", "cmdline"]


def sweep(seen: set[tuple[int, float]], out: list[str]) -> None:
    for proc in psutil.process_iter(_ATTRS, ad_value=None):
        info = proc.info
        key = (info["pid"], info["create_time"])
        if key in seen:
            continue
        seen.add(key)
        out.append(
            json.dumps(
                {"pid": info["pid"], "create_time": info["create_time"], "cmdline": info["cmdline"]}
            )
        )


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.psutil_poller")
    p.add_argument("--out", required=True, help="JSON Lines output file")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between sweeps")
    args = p.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: stop.set())
    seen: set[tuple[int, float]] = set()
    with open(args.out, "w", encoding="utf-8") as fh:
        lines: list[str] = []
        sweeps = 0
        next_at = time.monotonic()
        while not stop.is_set():
            sweep(seen, lines)
            sweeps += 1
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            lines.clear()
            if sweeps == 1:
                print("ready", flush=True)
            next_at += args.interval
            stop.wait(max(0.0, next_at - time.monotonic()))
    print(f"sweeps={sweeps} processes={len(seen)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
