#!/usr/bin/env bash
# bench/faults.sh -- what each network fault does to spillway's throughput
# and delivery, on 127.0.0.1 only.
#
# Runs crates/spillway/examples/faultbench.rs, which starts the release
# binary (one relay per case, as a child process) with the test tree's
# fault-injection proxy (crates/spillway/tests/faultproxy) on its links:
#   stream  client -> spillway -> proxy -> upstream; the client uploads a
#           pattern, the upstream checks every byte (FNV-1a). Throughput is
#           bytes / (connect -> upstream read EOF).
#   queue   producer -> proxy -> spillway -> proxy -> consumer; 64-byte
#           numbered lines; the consumer counts lost, duplicated and
#           reordered lines over all its connections. Throughput is
#           lines / (producer start -> last line at the consumer).
# Faults: latency, bandwidth limit, 1-7 byte writes, a 1 s stall then
# resume, a reset in mid-stream (queue: the consumer reconnects), a black
# hole, and an unplugged link (no FIN, no RST, no ACK) found by keepalive /
# TCP_USER_TIMEOUT.
#
# Usage: bench/faults.sh [full|quick] [stream|queue|all]   (default full all;
#        full ~2 min, quick ~1 min on 2 cores)
# Env:   CARGO_TARGET_DIR is honoured. RESULTS_DIR (default
#        ${TMPDIR:-/tmp}/spillway-bench-results) keeps a copy of the table.
# Output: a markdown table on stdout; build progress on stderr.
# Every wait in the driver is bounded (60 s) and every relay it starts is
# killed when its case ends.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-full}
WHAT=${2:-all}
case "$MODE" in
  full|quick) ;;
  -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "usage: $0 [full|quick] [stream|queue|all]" >&2; exit 2 ;;
esac
case "$WHAT" in
  stream|queue|all) ;;
  *) echo "usage: $0 [full|quick] [stream|queue|all]" >&2; exit 2 ;;
esac
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
RESULTS_DIR=${RESULTS_DIR:-${TMPDIR:-/tmp}/spillway-bench-results}

cd "$ROOT"
echo "== building (release)" >&2
cargo build --release -p spillway --bin spillway --example faultbench >&2
mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/faults-$(date +%Y%m%d-%H%M%S).md
echo "== running ($MODE, $WHAT)" >&2
ARG=""
[[ $MODE == quick ]] && ARG=quick
timeout 600 "$TARGET/release/examples/faultbench" "$TARGET/release/spillway" "$WHAT" $ARG | tee "$OUT"
echo "== saved $OUT" >&2
