"""The container image's health check: the agent's /health says "ok".

"ok" means kernel capture runs and no event was lost in the last minute; a
"degraded" agent (running on /proc for lack of privileges, or losing events)
makes the container unhealthy. The address is the agent's own: its
configuration and environment, read the way the agent reads them.
Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import json
import sys
import urllib.request

from otel_linnix.config import load_config, parse_bind_address
from otel_linnix.errors import ConfigError

_TIMEOUT_S = 4.0


def health_url() -> str:
    host, port = parse_bind_address(load_config().api.bind_address)
    # A wildcard bind is reached on loopback, from inside the container.
    if host in ("0.0.0.0", ""):  # noqa: S104 - compared with, not bound to
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/health"


def main() -> int:
    try:
        url = health_url()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:  # noqa: S310 - http only
            body = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(body))
    return 0 if body.get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
