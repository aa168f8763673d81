#!/usr/bin/env bash
# Installs, idempotently, what the test suite needs beyond the Rust toolchain,
# Python 3 and gcc: the Debian packages of the real peers the tests talk to.
# Safe to run again; installs only what is missing.
set -euo pipefail
# chromium: the status page's browser test (tests/status_page.rs).
PKGS=(socat procps systemd chromium fonts-liberation)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
