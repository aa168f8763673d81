#!/usr/bin/env bash
# The whole test suite: dependencies, formatting, lints, then every test of
# the workspace (unit, property, integration against real sockets and child
# processes). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
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
