#!/usr/bin/env bash
# bench/stream-profile.sh -- where stream mode's time goes on the two rows of
# the peer benchmark that are about connections (issue 17): redis-benchmark
# through `spillway relay` to a local redis-server, either a new connection
# per request (churn) or 1,000 concurrent connections (c1000). Prints the
# benchmark's CSV line and the relay's CPU per request; optionally records
# the relay with perf or counts its syscalls with strace.
#
# Usage: bench/stream-profile.sh BIN [churn|c1000] [none|perf|strace]
#   perf    writes $OUT/perf.data (perf record -F 1999 -g): read it with
#           perf report -i $OUT/perf.data --children -g none --stdio
#   strace  writes $OUT/strace.txt (strace -c -f): calls per request =
#           calls / requests (churn: 20,000 requests = 20,000 connections)
# Env:   OUT (default /tmp/spillway-profile), N (requests; churn 20000,
#        c1000 100000)
# Needs redis-server and redis-benchmark (`../shared/bench/stream-peers.sh
# install`), perf (linux-perf) or strace for those modes. For an A/B, run
# it alternately with each binary; on 2 shared cores single runs vary by
# 10-20 %, so compare several pairs.
set -euo pipefail
BIN=${1:?usage: bench/stream-profile.sh BIN [churn|c1000] [none|perf|strace]}
KIND=${2:-churn}
MODE=${3:-none}
OUT=${OUT:-/tmp/spillway-profile}
mkdir -p "$OUT"
RP=$((26100 + RANDOM % 400 * 2))
PP=$((RP + 1))
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    { kill -KILL "$p" && wait "$p"; } 2>/dev/null || true
  done
  redis-cli -p "$RP" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
PIDS+=($!)
"$BIN" --log-level warn relay --listen "127.0.0.1:$PP" --to "127.0.0.1:$RP" 2>"$OUT/relay.log" &
RELAY=$!
PIDS+=("$RELAY")
for _ in $(seq 100); do ss -Hltn "sport = :$PP" | grep -q . && break; sleep 0.05; done
ss -Hltnp "sport = :$PP" | grep -q "pid=$RELAY," || { echo "the relay did not listen" >&2; exit 1; }
TRACER=0
case $MODE in
  perf) perf record -F 1999 -g -p "$RELAY" -o "$OUT/perf.data" 2>/dev/null & TRACER=$! ;;
  strace) strace -c -f -p "$RELAY" -o "$OUT/strace.txt" 2>/dev/null & TRACER=$! ;;
  none) ;;
  *) echo "mode: none, perf or strace" >&2; exit 2 ;;
esac
((TRACER)) && sleep 0.3
cpu() { awk '{print $14 + $15}' "/proc/$RELAY/stat"; }
c0=$(cpu)
case $KIND in
  churn) N=${N:-20000}; timeout 300 redis-benchmark -p "$PP" -k 0 -c 50 -n "$N" -t ping_mbulk --csv | tail -1 ;;
  c1000) N=${N:-100000}; timeout 300 redis-benchmark -p "$PP" -c 1000 -n "$N" -t ping_mbulk --csv | tail -1 ;;
  *) echo "kind: churn or c1000" >&2; exit 2 ;;
esac
c1=$(cpu)
echo "relay_cpu_us_per_request=$(awk -v a="$c0" -v b="$c1" -v n="$N" 'BEGIN { printf "%.1f", (b - a) * 1e4 / n }')"
if ((TRACER)); then
  kill -INT "$TRACER"
  wait "$TRACER" 2>/dev/null || true
  echo "written: $OUT/$([[ $MODE == perf ]] && echo perf.data || echo strace.txt)"
fi
