#!/usr/bin/env bash
# bench/queue-callgrind.sh -- the relay's instructions per message in queue
# mode, live 64 B lines, counted by valgrind's callgrind: the same count for
# the same binary and inputs whatever else the machine does (within about
# 1 %), where CPU seconds on this 2-core VM vary by 10-20 % from run to run.
# For an A/B of two builds, when the difference is too small to time.
#
# valgrind runs the relay's threads one at a time, so batches are shaped
# differently than at full speed, kernel time is not counted, and
# `rep movsb` copies count one instruction per byte: read the figure as
# user-space work per message, compared between builds, not as time.
#
# MODE=backlog: COUNT lines are queued with no consumer (the default 64 MiB
# memory tier, the rest on disk), the counters are zeroed
# (callgrind_control -z), then bench/sink.c drains them: the count is the
# drain alone.
#
# MODE=ack: the ack protocol instead. COUNT lines (200000 by default) are
# queued first, then drained by the Python client (clients/python), which
# acknowledges each message; the count covers both phases.
#
# Usage: bench/queue-callgrind.sh BIN [OUT]   (OUT: the callgrind file,
#        default /tmp/spillway-callgrind.out; `callgrind_annotate OUT`
#        shows where the instructions went)
# Env:   MODE (live | backlog | ack), COUNT (2000000 live and backlog,
#        200000 ack), SIZE (64).
#        Needs valgrind (apt install valgrind).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$1
OUT=${2:-/tmp/spillway-callgrind.out}
MODE=${MODE:-live}
if [[ $MODE == ack ]]; then COUNT=${COUNT:-200000}; else COUNT=${COUNT:-2000000}; fi
SIZE=${SIZE:-64}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt install valgrind)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/spillway-callgrind.XXXXXX)
RELAY=0 SINK=0
cleanup() {
  [[ $RELAY != 0 ]] && kill -KILL "$RELAY" 2>/dev/null
  [[ $SINK != 0 ]] && kill -KILL "$SINK" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
cc -O2 -o "$WORK/producer" "$ROOT/crates/spillway/tests/peers/producer.c"
cc -O2 -o "$WORK/sink" "$ROOT/bench/sink.c"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
LP=$(free_port); TP=$(free_port)
LOG=warn
if [[ $MODE == ack ]]; then
  TO=(--to "listen:127.0.0.1:$TP" --to-protocol ack)
elif [[ $MODE == backlog ]]; then
  TO=(--to "connect:127.0.0.1:$TP")
  LOG=info # for "producer closed"
else
  "$WORK/sink" "$TP" $((COUNT * SIZE)) >"$WORK/sink.out" &
  SINK=$!
  TO=(--to "connect:127.0.0.1:$TP")
fi
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$BIN" --log-level "$LOG" queue \
  --from "listen:127.0.0.1:$LP" "${TO[@]}" --framing lines \
  --spool "$WORK/spool" --fsync 100ms 2>"$WORK/relay.log" &
RELAY=$!
for _ in $(seq 400); do ss -Hltn "sport = :$LP" | grep -q . && break; sleep 0.05; done
sleep 1
"$WORK/producer" --connect "127.0.0.1:$LP" --count "$COUNT" --size "$SIZE" \
  --on-eagain block --sndbuf 0 >"$WORK/producer.out"
if [[ $MODE == ack ]]; then
  sleep 2
  PYTHONPATH="$ROOT/clients/python" python3 - "127.0.0.1:$TP" "$COUNT" <<'PY'
import sys
import spillway
want, got = int(sys.argv[2]), 0
with spillway.Consumer(sys.argv[1], window=4096, timeout=20) as c:
    for m in c:
        m.ack()
        got += 1
        if got >= want:
            break
    c.flush()
if got != want:
    sys.exit(f"consumed {got} of {want}")
PY
  sleep 0.5
elif [[ $MODE == backlog ]]; then
  for _ in $(seq 2400); do grep -q 'producer closed' "$WORK/relay.log" && break; sleep 0.05; done
  grep -q 'producer closed' "$WORK/relay.log" || { echo "the relay did not finish queueing" >&2; exit 1; }
  callgrind_control -z "$RELAY" >/dev/null
  "$WORK/sink" "$TP" $((COUNT * SIZE)) >"$WORK/sink.out"
else
  wait "$SINK"
  SINK=0
fi
kill -INT "$RELAY"
wait "$RELAY" 2>/dev/null || true
RELAY=0
total=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
case $MODE in
  backlog) what="the drain and the stop" ;;
  *) what="start and stop included" ;;
esac
echo "instructions per message ($MODE): $((total / COUNT)) ($total for $COUNT messages of $SIZE B, $what)"
