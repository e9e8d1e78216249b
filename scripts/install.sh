#!/usr/bin/env bash
# Prepares this machine to run otel-linnix and builds .venv. Idempotent: every
# step checks before it acts, so a second run on a prepared machine takes a
# second or two. Used by `make install`, `make test` and the container image.
#
#   scripts/install.sh          agent and its runtime dependencies
#   scripts/install.sh --dev    also test and lint tools
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
dev=0
[ "${1:-}" = "--dev" ] && dev=1
venv=${LINNIX_VENV:-$here/.venv}
say() { printf 'install: %s\n' "$*"; }

# --- Debian packages (bcc comes only from Debian; PyPI's "bcc" is unrelated) --
apt_pkgs=(python3-bpfcc bpftool linux-headers-amd64 python3-venv)
# prometheus: the metrics acceptance test starts its own server on a free
# loopback port with its own storage; a service the package may start on :9090
# is never used (--no-install-recommends keeps node-exporter out).
[ "$dev" = 1 ] && apt_pkgs+=(gcc libc6-dev curl prometheus)
if [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi

  # bcc compiles against a kernel header tree even though our programs read
  # no kernel struct through it (offsets come from BTF). Debian ships 6.1
  # headers only; bcc needs both links or it fails on kconfig.h.
  kdir=/lib/modules/$(uname -r)
  hdr_arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  hdr_common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$hdr_arch" ] && [ -n "$hdr_common" ]; then
    mkdir -p "$kdir"
    [ -e "$kdir/build/include" ] || { ln -sfn "$hdr_arch" "$kdir/build"; say "linked $kdir/build"; }
    [ -e "$kdir/source/include" ] || { ln -sfn "$hdr_common" "$kdir/source"; say "linked $kdir/source"; }
  else
    say "warning: no kernel header tree under /usr/src; eBPF capture will be unavailable"
  fi

  if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null && say "mounted tracefs" \
      || say "warning: could not mount tracefs at /sys/kernel/tracing"
  fi
else
  say "not root: skipping Debian packages, header links and tracefs (the agent will run on /proc)"
fi

# --- the virtual environment --------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  /usr/bin/python3 -m venv "$venv"
fi
# Let the venv see Debian's bcc and nothing else from Debian: a .pth entry
# pointing at a folder that holds only a link to the bcc package.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$venv/debian-bcc"
if [ -d /usr/lib/python3/dist-packages/bcc ]; then
  ln -sfn /usr/lib/python3/dist-packages/bcc "$venv/debian-bcc/bcc"
fi
echo "$venv/debian-bcc" > "$site/debian_bcc.pth"

# Reinstall Python packages only when the pins or the project metadata changed.
extra=""
[ "$dev" = 1 ] && extra="[dev]"
stamp="$venv/.installed$( [ "$dev" = 1 ] && echo -dev)"
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python dependencies (pinned by requirements.lock)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -c requirements.lock -e ".$extra"
  echo "$want" > "$stamp"
fi
say "ready: $venv/bin/otel-linnix"
