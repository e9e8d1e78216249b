#!/bin/sh
# Prometheus reads a bearer token from a file, never from its environment: write the
# agent's token (LINNIX_API_TOKEN, the one the agent itself is given) where
# prometheus.yml's credentials_file points, readable by Prometheus's user only, then
# become Prometheus.
set -eu
umask 077
printf '%s' "${LINNIX_API_TOKEN:?LINNIX_API_TOKEN is not set}" > /prometheus/linnix-api-token
exec /bin/prometheus "$@"
