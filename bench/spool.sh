#!/usr/bin/env bash
# bench/spool.sh -- the spool engine against this disk's limits, measured in
# the same run: ../shared/bench/disk-limit.sh on the project disk, then the
# spool summary (crates/spillway-spool/examples/spool_bench.rs) with the
# measured sequential fdatasync bandwidth as its reference.
#
# Usage: bench/spool.sh            (~3 min)
# Env:   DISK_LIMIT  path to disk-limit.sh (default ../shared/bench/disk-limit.sh)
#        REPS        disk-limit repetitions (default 2)
#        SPOOL_BENCH_DIR  where the spool bench writes (default: the repo's disk)
# Criterion micro-benchmarks (append/read/recovery per size and policy):
#        cargo bench -p spillway-spool
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DISK_LIMIT=${DISK_LIMIT:-$ROOT/../shared/bench/disk-limit.sh}
[[ -x $DISK_LIMIT ]] || { echo "no $DISK_LIMIT" >&2; exit 2; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
(cd "$ROOT" && cargo build --release --quiet -p spillway-spool --example spool_bench)
echo "## disk limits (disk-limit.sh on $ROOT)"
REPS=${REPS:-2} SEQ_MIB=${SEQ_MIB:-1024} RESULTS_DIR=$OUT "$DISK_LIMIT" "$ROOT" | tee "$OUT/disk.md"
# The median of "dd 1M conv=fdatasync" for the project dir (first number in the row).
MBPS=$(grep -m1 '^| dd 1M conv=fdatasync |' "$OUT/disk.md" | awk -F'|' '{print $3}' | awk '{print $1}')
[[ -n "$MBPS" ]] || { echo "could not read the fdatasync bandwidth" >&2; exit 1; }
echo
echo "## spool (reference: sequential write + fdatasync = $MBPS MB/s, measured above)"
SEQ_FDATASYNC_MBPS=$MBPS SPOOL_BENCH_DIR=${SPOOL_BENCH_DIR:-$ROOT} \
  "$ROOT/target/release/examples/spool_bench"
