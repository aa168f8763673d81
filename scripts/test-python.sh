#!/usr/bin/env bash
# The Python client's tests (clients/python): its codec, its behaviour
# against a scripted fake relay, and its promises against the real relay
# binary. Idempotent; exits non-zero on any failure.
#
# The relay binary is $SPILLWAY_BIN if set. Otherwise this builds the debug
# binary (`cargo build --bin spillway`: nothing to do right after
# `cargo test`) and uses it, so the tests never run a stale release build.
# SPILLWAY_SEED=N replays the kill scenario's schedule (it prints its seed).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - <<'PY'
import sys
if sys.version_info < (3, 9):
    sys.exit("python >= 3.9 needed for clients/python, found %s" % sys.version.split()[0])
PY

if [[ -z "${SPILLWAY_BIN:-}" ]]; then
    echo "== cargo build --bin spillway (for the Python client's tests)" >&2
    cargo build --quiet --bin spillway
    target_dir=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    export SPILLWAY_BIN="$target_dir/debug/spillway"
fi
echo "== python3 -m unittest (clients/python, relay $SPILLWAY_BIN)" >&2
# -B: no __pycache__ left in the source tree.
python3 -B -m unittest discover -s clients/python/tests -v
