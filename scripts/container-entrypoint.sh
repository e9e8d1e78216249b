#!/bin/sh
# Entrypoint of the container image (see the Dockerfile for how to run it).
#
#   container-entrypoint.sh [otel-linnix arguments]   host steps, then the agent
#   container-entrypoint.sh healthcheck               the image's HEALTHCHECK
#
# The API address: $LINNIX_API_BIND_ADDRESS when set; else 0.0.0.0:3000 when a
# token is given ($LINNIX_API_TOKEN), so other hosts and pods can reach it;
# else the configuration's, 127.0.0.1:3000 by default (the host's loopback
# with --network=host). The agent itself refuses a non-loopback address
# without a token (exit 78).
set -eu

app=/opt/otel-linnix

if [ -z "${LINNIX_API_BIND_ADDRESS:-}" ] && [ -n "${LINNIX_API_TOKEN:-}" ]; then
  export LINNIX_API_BIND_ADDRESS=0.0.0.0:3000
fi

if [ "${1:-}" = healthcheck ]; then
  # Same address rule as the agent's start, hence here and not in the image's
  # HEALTHCHECK line.
  exec "$app/.venv/bin/python" "$app/scripts/container_health.py"
fi

# The kernel header links under /lib/modules/$(uname -r) and tracefs depend on
# the kernel this container runs on, not on the one that built the image.
"$app/scripts/install.sh" --host-only

exec "$app/.venv/bin/otel-linnix" "$@"
