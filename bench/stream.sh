#!/usr/bin/env bash
# bench/stream.sh -- spillway stream mode side by side with socat, nginx
# stream, HAProxy and HAProxy+splice, through ../shared/bench/stream-peers.sh
# (iperf3 1 and 8 streams, redis-benchmark c=50 / c=1000 / new connection per
# request), then memory per idle proxied connection (bench/idle_conns.py).
#
# Usage: bench/stream.sh [full|quick]     (default full: ~8 min)
# Env:   PEERS_SCRIPT   path to stream-peers.sh (default ../shared/bench/stream-peers.sh)
#        SPILLWAY_LOG   log level for the relay during the run (default warn: the
#                       per-connection close line is at info, and at 15k conn/s it
#                       is a measurable cost; set info to include it)
#        IDLE_CONNS     connections for the idle-memory test (default 9000: each needs
#                       2 descriptors in the relay, and the hard RLIMIT_NOFILE here is 20000)
#        SPILLWAY_BIN   a prebuilt binary to measure instead (no build): for an A/B of
#                       two builds on the same machine
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-full}
PEERS_SCRIPT=${PEERS_SCRIPT:-$ROOT/../shared/bench/stream-peers.sh}
[[ -x $PEERS_SCRIPT ]] || { echo "no $PEERS_SCRIPT" >&2; exit 2; }
if [[ -z ${SPILLWAY_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release --quiet)
fi
BIN=${SPILLWAY_BIN:-$ROOT/target/release/spillway}
LOG=${SPILLWAY_LOG:-warn}
EXTRA_PROXY_NAME=spillway \
EXTRA_PROXY_CMD="$BIN --log-level $LOG relay --listen 127.0.0.1:{listen} --to 127.0.0.1:{target}" \
  "$PEERS_SCRIPT" "$MODE"
echo
echo "## memory per idle proxied connection"
python3 "$ROOT/bench/idle_conns.py" --bin "$BIN" --count "${IDLE_CONNS:-9000}"
