#!/usr/bin/env bash
# Prepares this machine to run otel-linnix and builds .venv. Idempotent: every
# step checks before it acts, so a second run on a prepared machine takes a
# second or two. Used by `make install`, `make test` and the container image.
#
#   scripts/install.sh              agent and its runtime dependencies
#   scripts/install.sh --dev        also test and lint tools
#   scripts/install.sh --image      Debian packages and .venv only (a container
#                                   image build: the host steps below depend on
#                                   the kernel the container will run on)
#   scripts/install.sh --host-only  the host steps only: kernel header links and
#                                   tracefs (the container entrypoint, at start)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
dev=0 packages=1 host=1 venv_step=1
case "${1:-}" in
  "") ;;
  --dev) dev=1 ;;
  --image) host=0 ;;
  --host-only) packages=0 venv_step=0 ;;
  *) echo "usage: $0 [--dev | --image | --host-only]" >&2; exit 64 ;;
esac
venv=${LINNIX_VENV:-$here/.venv}
say() { printf 'install: %s\n' "$*"; }

# --- Debian packages (bcc comes only from Debian; PyPI's "bcc" is unrelated) --
install_packages() {
  local apt_pkgs=(python3-bpfcc bpftool linux-headers-amd64 python3-venv)
  # prometheus: the metrics acceptance test starts its own server on a free
  # loopback port with its own storage; a service the package may start on :9090
  # is never used (--no-install-recommends keeps node-exporter out).
  # podman, debootstrap: the container image test builds its base image with
  # debootstrap (no registry is needed) and the image with podman; as root and
  # without recommends podman brings crun, conmon and the CNI plugins, which is
  # all it needs here (native overlayfs, no user namespaces).
  if [ "$dev" = 1 ]; then apt_pkgs+=(gcc libc6-dev curl prometheus podman debootstrap); fi
  local missing=() p
  for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# --- host steps: they depend on the running kernel ---------------------------
# bcc compiles against a kernel header tree even though our programs read
# no kernel struct through it (offsets come from BTF). Debian ships 6.1
# headers only; bcc needs both links or it fails on kconfig.h. A tree that is
# already there (the kernel's own headers) is left alone. A failure is only a
# warning: the agent then says why it runs on /proc instead.
link_kernel_headers() {
  local kdir hdr_arch hdr_common
  kdir=/lib/modules/$(uname -r)
  hdr_arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  hdr_common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$hdr_arch" ] || [ -z "$hdr_common" ]; then
    say "warning: no kernel header tree under /usr/src; eBPF capture will be unavailable"
    return 0
  fi
  mkdir -p "$kdir" 2>/dev/null || true
  link_tree "$hdr_arch" "$kdir/build"
  link_tree "$hdr_common" "$kdir/source"
}

link_tree() {
  [ -e "$2/include" ] && return 0
  if ln -sfn "$1" "$2" 2>/dev/null; then
    say "linked $2"
  else
    say "warning: could not link $2 -> $1; eBPF capture will be unavailable"
  fi
}

mount_tracefs() {
  [ -d /sys/kernel/tracing/events ] && return 0
  if mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; then
    say "mounted tracefs"
  else
    say "warning: could not mount tracefs at /sys/kernel/tracing"
  fi
}

# --- the virtual environment --------------------------------------------------
build_venv() {
  if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    /usr/bin/python3 -m venv "$venv"
  fi
  # Let the venv see Debian's bcc and nothing else from Debian: a .pth entry
  # pointing at a folder that holds only a link to the bcc package.
  local site extra="" stamp="$venv/.installed" want
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$venv/debian-bcc"
  if [ -d /usr/lib/python3/dist-packages/bcc ]; then
    ln -sfn /usr/lib/python3/dist-packages/bcc "$venv/debian-bcc/bcc"
  fi
  echo "$venv/debian-bcc" > "$site/debian_bcc.pth"

  # Reinstall Python packages only when the pins or the project metadata changed.
  # (A failing test in $(...) would fail the assignment and, under set -e, the
  # script: plain ifs only.)
  if [ "$dev" = 1 ]; then extra="[dev]" stamp="$venv/.installed-dev"; fi
  want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python dependencies (pinned by requirements.lock)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      -c requirements.lock -e ".$extra"
    echo "$want" > "$stamp"
  fi
  say "ready: $venv/bin/otel-linnix"
}

if [ "$(id -u)" = 0 ]; then
  if [ "$packages" = 1 ]; then install_packages; fi
  if [ "$host" = 1 ]; then
    link_kernel_headers
    mount_tracefs
  fi
else
  say "not root: skipping Debian packages, header links and tracefs (the agent will run on /proc)"
fi
if [ "$venv_step" = 1 ]; then build_venv; fi
