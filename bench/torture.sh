#!/usr/bin/env bash
# bench/torture.sh -- torture soak of the release binary in queue mode: does
# a queue route ever lose a message it accepted, tear one, or exit when it
# should not? On 127.0.0.1 only, bounded in time.
#
# Runs crates/spillway/examples/torture.rs against target/release/spillway
# (`spillway run --config FILE`, one queue route, framing lines,
# when_full = block, an [admin] endpoint), with its spool on a small tmpfs
# (default 16m) so the disk really fills (ENOSPC) and drains:
#   - 4 producers that reconnect often, write messages cut anywhere, and end
#     each connection cleanly (shutdown + read to EOF), with a reset, or
#     with a plain close;
#   - 4 consumers with a small SO_RCVBUF that read random-sized pieces with
#     pauses, stall, and leave cleanly (half-close, read to EOF), reset
#     (SO_LINGER 0), reset right after their FIN, or stay until cut;
#   - a seeded schedule of 100 kill -9 + restart, 50 SIGHUP reloads with
#     changed route settings (memory, segment_size, redeliver_on_reset,
#     max_disk below and above the tmpfs, fsync, write_stall_timeout,
#     max_lifetime) and 50 SIGTERM + restart (must exit 0), interleaved at
#     random times, plus "flood" phases where consumers are slow. Before
#     each kill -9 the running config is reloaded to memory = 0 and
#     fsync = always (and the reload waited for), so a kill may lose nothing
#     the relay appended.
# Then producers stop, a well-behaved consumer drains the queue, SIGTERM,
# restart, drain again, SIGTERM. The checker prints sent / accepted (a lower
# bound knowable from outside) / received / lost / duplicated / reordered /
# partial / unexpected exits (see the driver's header for the definitions).
#
# Usage: bench/torture.sh [--seed N] [--duration SECS] [--kills N]
#                         [--reloads N] [--terms N] [--rate N] [...]
#        Flags go to the driver (crates/spillway/examples/torture.rs);
#        defaults: a fresh seed (printed), 600 s, 100 / 50 / 50.
#        --seed N replays the same schedule of signals, reloads and floods
#        (the peers' interleaving with the relay still varies with timing).
# Env:   TMPFS_SIZE (default 16m), WORK (default a new /tmp/spillway-torture.*:
#        relay logs, timeline, summary), CARGO_TARGET_DIR is honoured.
# Needs root for the tmpfs; without it the spool is a plain directory and
# only max_disk bounds it (said loudly).
# Exit status: the driver's: 0 pass; 1 lost > 0, partial > 0 or an
# unexpected relay exit; 2 set-up error.
# Process hygiene: the driver owns the relay (one at a time, pid in
# $WORK/relay.pid); this script kills that pid if it outlives the driver and
# unmounts the tmpfs on exit.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in
  -h|--help|help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
esac
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
TMPFS_SIZE=${TMPFS_SIZE:-16m}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "building (release): spillway and examples/torture"
(cd "$ROOT" && cargo build --release -p spillway --bin spillway --example torture) >&2 \
  || { log "ERROR: build failed"; exit 2; }

WORK=${WORK:-$(mktemp -d /tmp/spillway-torture.XXXXXX)}
mkdir -p "$WORK"
SPOOL_MNT=$WORK/spool-fs
mkdir -p "$SPOOL_MNT"
MOUNTED=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -f $WORK/relay.pid ]]; then
    local pid
    pid=$(cat "$WORK/relay.pid")
    # Only the relay the driver started, and only if it is still that binary.
    if [[ -n $pid ]] && [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$TARGET/release/spillway" ]]; then
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
  if [[ $MOUNTED == 1 ]]; then
    umount "$SPOOL_MNT" 2>/dev/null || umount -l "$SPOOL_MNT" 2>/dev/null \
      || log "WARN: could not unmount $SPOOL_MNT"
  fi
  log "logs kept in $WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TMPFS_ARGS=()
if [[ $EUID -eq 0 ]] && mount -t tmpfs -o "size=$TMPFS_SIZE" tmpfs "$SPOOL_MNT"; then
  MOUNTED=1
  BYTES=$(df -B1 --output=size "$SPOOL_MNT" | tail -n 1 | tr -d ' ')
  TMPFS_ARGS=(--tmpfs-size "$BYTES" --tmpfs-mount "$SPOOL_MNT")
  log "spool on a tmpfs of $TMPFS_SIZE ($BYTES bytes) at $SPOOL_MNT"
else
  log "=================================================================="
  log "WARNING: cannot mount a tmpfs (not root, or mount failed)."
  log "WARNING: the spool is a PLAIN DIRECTORY: the disk will not really"
  log "WARNING: fill; only max_disk (8-12 MiB) bounds the spool. ENOSPC"
  log "WARNING: paths are NOT exercised in this run."
  log "=================================================================="
fi

# Every wait in the driver is bounded; this is the backstop.
DURATION=600
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do
  [[ ${ARGS[$i]} == --duration ]] && DURATION=${ARGS[$((i + 1))]:-600}
done
timeout --signal=INT $((DURATION + 900)) "$TARGET/release/examples/torture" \
  --bin "$TARGET/release/spillway" --spool "$SPOOL_MNT/q" --work "$WORK" \
  "${TMPFS_ARGS[@]}" "$@"
