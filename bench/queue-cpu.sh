#!/usr/bin/env bash
# bench/queue-cpu.sh -- the relay's own cost per message in queue mode:
# producer.c (lines of SIZE bytes) -> spillway -> a consumer that only
# counts bytes (no verification, so the relay is what is measured).
#   live     the consumer is connected first; rate = COUNT / (first ->
#            last byte at the consumer), relay CPU over the whole run;
#   backlog  everything is queued with no consumer (the default 64 MiB
#            memory tier, the rest on disk), then the consumer connects;
#            rate = COUNT / (first -> last byte), relay CPU during the drain.
# Context switches: all the relay's threads, voluntary and involuntary
# (/proc/PID/task/*/status), over the same span as the CPU.
# For an A/B, run it alternately with SPILLWAY_BIN pointing at each build.
#
# Usage: bench/queue-cpu.sh [ROUNDS]         (default 2; ~10 s per round)
# Env:   COUNT (5000000), SIZE (64), SPILLWAY_BIN (default: build this
#        checkout, CARGO_TARGET_DIR honoured)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-2}
COUNT=${COUNT:-5000000}
SIZE=${SIZE:-64}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
if [[ -z ${SPILLWAY_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release --quiet)
fi
BIN=${SPILLWAY_BIN:-$TARGET/release/spillway}
WORK=$(mktemp -d /tmp/spillway-queue-cpu.XXXXXX)
RELAY=0
cleanup() {
  ((RELAY)) && kill -KILL "$RELAY" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
cc -O2 -o "$WORK/producer" "$ROOT/crates/spillway/tests/peers/producer.c"
cc -O2 -Wall -o "$WORK/sink" "$ROOT/bench/sink.c"
LP=${LP:-24611}
TP=${TP:-24612}
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
# Context switches of all the relay's threads (voluntary + involuntary).
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches/ { n += $2 } END { print n + 0 }'
}
start_relay() {
  rm -rf "$WORK/spool"
  "$BIN" --log-level info queue --from "listen:127.0.0.1:$LP" --to "connect:127.0.0.1:$TP" \
    --framing lines --spool "$WORK/spool" --fsync 100ms 2>"$WORK/relay.log" &
  RELAY=$!
  for _ in $(seq 100); do ss -Hltn "sport = :$LP" | grep -q . && return; sleep 0.05; done
  echo "relay did not listen" >&2; exit 1
}
stop_relay() { kill -INT "$RELAY"; wait "$RELAY" 2>/dev/null || true; RELAY=0; }
produce() {
  "$WORK/producer" --connect "127.0.0.1:$LP" --count "$COUNT" --size "$SIZE" \
    --on-eagain block --sndbuf 0 >"$WORK/producer.out"
}
ns() { grep -o "$1=[0-9]*" "$WORK/sink.out" | cut -d= -f2; }
report() { # report SCENARIO T0_NS T1_NS CPU_S SWITCHES
  awk -v s="$1" -v a="$2" -v b="$3" -v c="$4" -v w="$5" -v n="$COUNT" \
    'BEGIN { printf "| %s | %.2f M | %.2f | %.3f | %.2f |\n", s, n / ((b - a) / 1e9) / 1e6, c, c * 1e6 / n, w * 1000 / n }'
}
echo "# spillway queue relay cost, $COUNT lines of $SIZE B, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "- binary: $BIN"
echo
echo "| scenario | msgs/s | relay CPU s | µs per message | context switches per 1,000 messages |"
echo "|---|---|---|---|---|"
for ((r = 1; r <= ROUNDS; r++)); do
  # live
  "$WORK/sink" "$TP" $((COUNT * SIZE)) >"$WORK/sink.out" &
  SINK=$!
  start_relay
  sleep 0.5
  w0=$(switches "$RELAY")
  produce
  wait "$SINK"
  c=$(cpu "$RELAY")
  w1=$(switches "$RELAY")
  stop_relay
  report "live, round $r" "$(ns t_first_ns)" "$(ns t_last_ns)" "$c" $((w1 - w0))
  # backlog
  start_relay
  produce
  for _ in $(seq 1200); do grep -q 'producer closed' "$WORK/relay.log" && break; sleep 0.05; done
  c0=$(cpu "$RELAY")
  w0=$(switches "$RELAY")
  "$WORK/sink" "$TP" $((COUNT * SIZE)) >"$WORK/sink.out"
  c1=$(cpu "$RELAY")
  w1=$(switches "$RELAY")
  stop_relay
  report "backlog drain, round $r" "$(ns t_first_ns)" "$(ns t_last_ns)" "$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" $((w1 - w0))
done
