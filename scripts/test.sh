#!/usr/bin/env bash
# The whole test suite: dependencies, formatting, lints, then every test of
# the workspace (unit, property, integration against real sockets and child
# processes). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean build has no use for incremental caches, and they take gigabytes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The tests write spools under the temp dir; a full disk fails them with
# ENOSPC, so say up front how much room there is.
df -h "${TMPDIR:-/tmp}" . >&2 || true
scripts/install-test-deps.sh
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test" >&2
cargo test --workspace --all-targets
cargo test --workspace --doc
echo "== python client tests" >&2
scripts/test-python.sh
