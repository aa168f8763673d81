#!/usr/bin/env bash
# bench/cold.sh -- a cold backlog: SIZE_MIB of len:u32be frames queued with
# --memory 0 while no consumer is connected, the page cache dropped
# (sync; echo 3 > /proc/sys/vm/drop_caches: needs root), then drained by a
# consumer that counts bytes and discards them. The drain rate (first byte
# -> last byte at the consumer) is compared with this disk's sequential
# read rate measured in the same run: dd of a file of the same size with
# iflag=direct, and a buffered dd from a cold cache.
#
# Usage: bench/cold.sh                 (~1-2 min)
# Env:   SIZE_MIB (default 1024), FRAME bytes per frame incl. the 4-byte
#        prefix (default 4096, the producer's largest), FSYNC (default 100ms),
#        CARGO_TARGET_DIR is honoured (built from this checkout); SPILLWAY_BIN
#        measures a prebuilt binary instead (no build). WARM=1 keeps the
#        page cache before the drain (the same drain from memory: what the
#        relay and the consumer cost without the disk). Writes under
#        target/ (the project disk).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
FRAME=${FRAME:-4096}
FSYNC=${FSYNC:-100ms}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
BIN=${SPILLWAY_BIN:-$TARGET/release/spillway}
COUNT=$((SIZE_MIB * 1048576 / FRAME))
LP=${LP:-23411}
TP=${TP:-23412}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ -z ${SPILLWAY_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi
mkdir -p "$ROOT/target"
WORK=$(mktemp -d "$ROOT/target/cold-bench.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

drop_caches() {
  sync
  if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then echo cold; else echo "warm (drop_caches refused)"; fi
}
dd_rate() { # MB/s from dd's summary line on stderr
  grep -o '[0-9.,]* [MG]B/s' | tail -1 | awk '{ v = $1; gsub(",", ".", v); if ($2 == "GB/s") v *= 1000; print v }'
}

cc -O2 -Wall -o "$WORK/producer" "$ROOT/crates/spillway/tests/peers/producer.c"
cc -O2 -Wall -o "$WORK/sink" "$ROOT/bench/sink.c"

log "disk: ${SIZE_MIB} MiB reference file"
dd if=/dev/zero of="$WORK/ref" bs=1M count="$SIZE_MIB" conv=fdatasync status=none
state=$(drop_caches)
DIRECT=$(dd if="$WORK/ref" of=/dev/null bs=1M iflag=direct 2>&1 | dd_rate)
drop_caches >/dev/null
BUFFERED=$(dd if="$WORK/ref" of=/dev/null bs=1M 2>&1 | dd_rate)
rm -f "$WORK/ref"
log "  dd iflag=direct ${DIRECT} MB/s, buffered from a $state cache ${BUFFERED} MB/s"

log "fill: $COUNT frames of $FRAME B, --memory 0, no consumer"
"$BIN" --log-level info queue --from "listen:127.0.0.1:$LP" --to "connect:127.0.0.1:$TP" \
  --framing len:u32be --memory 0 --fsync "$FSYNC" --spool "$WORK/spool" 2>"$WORK/relay.log" &
RELAY=$!
PIDS+=("$RELAY")
for _ in $(seq 100); do ss -Hltn "sport = :$LP" | grep -q . && break; sleep 0.05; done
t0=$(date +%s%N)
"$WORK/producer" --connect "127.0.0.1:$LP" --framing len32 --size "$FRAME" --count "$COUNT" \
  --on-eagain block --sndbuf 0 --timeout 600 >"$WORK/producer.out" 2>&1
for _ in $(seq 6000); do grep -q 'producer closed' "$WORK/relay.log" && break; sleep 0.05; done
FILL=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
sleep 0.5
SPOOL=$(du -s -B1 "$WORK/spool" | awk '{print $1}')
if [[ ${WARM:-0} == 1 ]]; then sync; state=warm; else state=$(drop_caches); fi
log "  filled in ${FILL}s; spool $((SPOOL / 1048576)) MiB; page cache: $state"

log "drain"
WANT=$((COUNT * FRAME))
"$WORK/sink" "$TP" "$WANT" >"$WORK/sink.out" &
SINK=$!
PIDS+=("$SINK")
wait "$SINK" || log "WARN: the sink did not get every byte"
read -r CPU < <(awk '{print ($14 + $15) / 100}' "/proc/$RELAY/stat")
kill -TERM "$RELAY"; wait "$RELAY" || true
BYTES=$(grep -o 'bytes=[0-9]*' "$WORK/sink.out" | cut -d= -f2)
RATE=$(awk -v s="$(grep -o 't_first_ns=[0-9]*' "$WORK/sink.out" | cut -d= -f2)" \
  -v e="$(grep -o 't_last_ns=[0-9]*' "$WORK/sink.out" | cut -d= -f2)" -v b="$BYTES" \
  'BEGIN { printf "%.0f", b / ((e - s) / 1e9) / 1e6 }')

echo "# spillway cold backlog drain, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "- spillway ${SPILLWAY_BIN:-$(git -C "$ROOT" describe --always --dirty)}, $COUNT frames of $FRAME B (len:u32be), --memory 0 --fsync $FSYNC; page cache before the drain: $state"
echo
echo "| measure | MB/s | ratio to dd iflag=direct |"
echo "|---|---|---|"
echo "| dd bs=1M iflag=direct (this disk's sequential read) | $DIRECT | 1 |"
echo "| dd bs=1M buffered, cold cache | $BUFFERED | $(awk -v a="$BUFFERED" -v b="$DIRECT" 'BEGIN { printf "%.2f", a / b }') |"
echo "| spillway drain to a discarding consumer ($BYTES bytes) | $RATE | $(awk -v a="$RATE" -v b="$DIRECT" 'BEGIN { printf "%.2f", a / b }') |"
echo
echo "relay CPU over fill and drain: ${CPU}s; fill ${FILL}s"
