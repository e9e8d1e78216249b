# otel-linnix: the agent as a container image.
#
# Build (the base is a build argument: any Debian 12 image):
#   docker build -t otel-linnix .
#   podman build --format docker -t otel-linnix .      (podman keeps HEALTHCHECK
#                                                      only in the docker format)
#   ... --build-arg BASE=localhost/debian:bookworm     (e.g. a base made with
#        debootstrap where no registry is reachable; tests/kernel/test_container_image.py)
#
# Run: the agent watches the HOST's processes from the host's kernel:
#   docker run -d --name otel-linnix --privileged --pid=host --network=host \
#       --cgroupns=host -v /sys/kernel:/sys/kernel -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
#       otel-linnix
#   curl -s 127.0.0.1:3000/health          -> {"status": "ok", "source": "ebpf", ...}
#
# With a token the API listens on every address (0.0.0.0:3000), without one on
# loopback only (127.0.0.1:3000; the host's loopback with --network=host):
#   docker run ... -e LINNIX_API_TOKEN=<secret> otel-linnix
# $LINNIX_API_BIND_ADDRESS sets the address outright; a non-loopback address
# without a token is refused (exit 78). Other settings: mount your own
# /etc/linnix (linnix.toml, rules.yaml) or use the variables in
# docs/configuration.md. `docker run ... otel-linnix check-config` validates.
# HEALTHCHECK: healthy while /health says "ok" (kernel capture running, no
# event lost in the last minute); an agent that fell back to /proc is unhealthy.
#
# What it needs, as verified with podman 4.3 and crun on a 6.18 kernel
# (no Docker engine or AppArmor there; their default profiles are unverified):
# - --privileged works as shown, even without -v /sys/kernel (the entrypoint
#   mounts tracefs itself then). Instead of --privileged, add to the runtime's
#   default capabilities: BPF and PERFMON (load the program, attach the
#   tracepoints, read kernel memory), SYS_ADMIN (podman's default seccomp
#   profile allows bpf() only with it; it also mounts tracefs when the host has
#   not) and SYS_PTRACE (the executable path of the host's processes; without
#   it `exe` is null for them). With --security-opt seccomp=unconfined and the
#   host's tracefs mounted in, BPF and PERFMON alone load the program.
#   SYS_RESOURCE is not needed: since 5.11 BPF memory is charged to the memory
#   cgroup, not to RLIMIT_MEMLOCK (the program with its 8 MiB ring buffer
#   loaded with a hard memlock limit of 64 KiB and without SYS_RESOURCE).
# - --pid=host: without it /proc is the container's own: processes already
#   running on the host are missing, and new ones, which still arrive from the
#   kernel, get no figures from /proc (CPU, memory, fds).
# - -v /sys/kernel:/sys/kernel (:ro is enough when the host has tracefs
#   mounted): the host's BTF and tracefs.
# - --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:ro: container attribution
#   of new processes (their cgroup v2 directory names the container).
# - /lib/modules: do NOT mount the host's. bcc needs a kernel header tree at
#   /lib/modules/$(uname -r)/{build,source}; the entrypoint links the image's
#   Debian headers there at every start (scripts/install.sh --host-only), for
#   whatever kernel the container runs on. Struct offsets come from the host's
#   BTF, so the headers' version does not matter. With --read-only, add
#   --tmpfs /lib/modules.
# - --network=host only to serve the API on the host's addresses; capture does
#   not need it.
# MALLOC_ARENA_MAX=2: measured, it flattens the agent's RSS growth under fork
# storms (glibc otherwise gives each busy thread an arena of its own).

ARG BASE=debian:bookworm
FROM ${BASE}

WORKDIR /opt/otel-linnix

# No documentation from the packages installed below (copyright notices stay).
RUN printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
        'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' \
        > /etc/dpkg/dpkg.cfg.d/01-otel-linnix-nodoc

# The same installation as `make run`. This step depends only on what the
# Debian packages and pip need, so changing the agent's code, its BPF sources
# or the documentation rebuilds in seconds: the project is installed editable
# (its code is copied next), and packaging only needs README.md and bpf/ to
# exist (the long description; the wheel's copy of the BPF sources, which the
# agent does not read when its source tree is there).
COPY scripts/install.sh scripts/
COPY pyproject.toml requirements.lock ./
COPY otel_linnix/__init__.py otel_linnix/
# Behind a TLS-inspecting proxy, give pip the proxy's CA as a build secret:
#   --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt
# It is used for this step only and is not stored in the image.
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && touch README.md && mkdir -p bpf \
 && PIP_NO_CACHE_DIR=1 scripts/install.sh --image \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log

COPY bpf bpf/
COPY otel_linnix otel_linnix/
RUN .venv/bin/python -m compileall -q otel_linnix

# The configuration in /etc/linnix; the image's linnix.toml names the rules
# file next to it, so mounting your own /etc/linnix replaces both. The shipped
# copies stay in config/ too: a linnix.toml that names no rules file gets the
# default rules from there, as outside the image.
COPY config/linnix.toml config/rules.yaml config/
COPY config/linnix.toml config/rules.yaml /etc/linnix/
RUN sed -i 's|^# config_path = "/etc/linnix/rules.yaml"|config_path = "/etc/linnix/rules.yaml"|' \
        /etc/linnix/linnix.toml \
 && grep -q '^config_path = "/etc/linnix/rules.yaml"' /etc/linnix/linnix.toml \
 && .venv/bin/otel-linnix check-config --config /etc/linnix/linnix.toml >/dev/null

COPY scripts/container-entrypoint.sh scripts/container_health.py scripts/

ENV LINNIX_CONFIG=/etc/linnix/linnix.toml \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1
EXPOSE 3000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/opt/otel-linnix/scripts/container-entrypoint.sh", "healthcheck"]
ENTRYPOINT ["/opt/otel-linnix/scripts/container-entrypoint.sh"]
CMD ["run"]
