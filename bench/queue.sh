#!/usr/bin/env bash
# bench/queue.sh -- spillway queue mode, end to end on 127.0.0.1.
#
# Part 1: ../shared/bench/queue-peers.sh through its EXTRA_QUEUE_CMD hook:
#   64-byte lines (qgen -> relay -> qsink), live (sink keeping up) and backlog
#   (sink absent while everything is queued, then the drain rate), side by side
#   in one run with a direct connection, rsyslog (disk-assisted, disk) and
#   syslog-ng (disk-buffer reliable and not). The spillway row's "spool B/line"
#   (backlog) is the spool size on disk per 64-byte line.
# Part 2: 1 KiB len:u32be messages, with the queue tests' own peers
#   (crates/spillway/tests/peers/{producer,consumer}.c, compiled here):
#   direct     producer -> consumer, no relay (the limit of this box for these
#              two programs: both generate/verify every payload byte);
#   live       consumer listening, relay started, producer sends COUNT frames;
#              msgs/s = COUNT / (producer start -> last frame at the consumer);
#   backlog    relay started with no consumer; producer sends everything; when
#              the relay logged "producer closed" (all appended) the consumer
#              starts; drain msgs/s = COUNT / (first byte -> last frame).
#   The consumer verifies every frame byte for byte (payload derived from its
#   number) and the order: lost / dups / reordered / gaps / bad are exact.
#
# Usage: bench/queue.sh [full|quick]      (default full; full ~9 min, quick ~3 min)
# Env:   PEERS_SCRIPT   path to queue-peers.sh (default ../shared/bench/queue-peers.sh)
#        FSYNC          spillway --fsync for both parts (default 100ms; queue-peers
#                       runs the others without fsync: see its header)
#        SPILLWAY_LOG   log level in part 1 (default warn)
#        MEMORY         if set, --memory MEMORY for spillway in parts 1 and 2 (default:
#                       spillway's default, 64MiB: a quick run's 64 MB backlog then
#                       stays in memory; the --memory 0 line below always measures disk)
#        LEN_COUNT, LEN_ROUNDS   part 2 size (full 400000 x 2, quick 200000 x 1)
#        SKIP_PEERS=1   only part 2;  KEEP_TMP=1 keep the temp dir
#        CARGO_TARGET_DIR is honoured (the binary is $CARGO_TARGET_DIR/release/spillway;
#        it is built from THIS checkout, whatever the target dir held before).
#        SPILLWAY_BIN   a prebuilt binary to measure instead (no build): for an A/B of
#                       two commits, build each in its own worktree and pass its binary.
# Output: markdown on stdout (also saved under RESULTS_DIR, default
# ${TMPDIR:-/tmp}/spillway-bench-results); progress on stderr.
# Process hygiene: every process is started in its own process group, stopped by
# that group (TERM, then KILL) after its run and in an EXIT trap.
set -uo pipefail
set +m

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-full}
case "$MODE" in
  full)  LEN_COUNT=${LEN_COUNT:-400000}; LEN_ROUNDS=${LEN_ROUNDS:-2}; RUN_TIMEOUT=${RUN_TIMEOUT:-90} ;;
  quick) LEN_COUNT=${LEN_COUNT:-200000}; LEN_ROUNDS=${LEN_ROUNDS:-1}; RUN_TIMEOUT=${RUN_TIMEOUT:-60} ;;
  -h|--help|help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "usage: $0 [full|quick]" >&2; exit 2 ;;
esac
PEERS_SCRIPT=${PEERS_SCRIPT:-$ROOT/../shared/bench/queue-peers.sh}
FSYNC=${FSYNC:-100ms}
LOG=${SPILLWAY_LOG:-warn}
LEN_SIZE=1024
LEN_BASE_PORT=${LEN_BASE_PORT:-23500}
RESULTS_DIR=${RESULTS_DIR:-${TMPDIR:-/tmp}/spillway-bench-results}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
BIN=${SPILLWAY_BIN:-$TARGET/release/spillway}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ -z ${SPILLWAY_BIN:-} ]]; then
  log "building release"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "no $BIN"

WORK=$(mktemp -d /tmp/spillway-queue-bench.XXXXXX)
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
OUT_MD="$RESULTS_DIR/queue-$MODE-$STAMP.md"
START=$(date +%s)

# ------------------------------------------------------------ part 1 ---
if [[ ${SKIP_PEERS:-0} != 1 ]]; then
  [[ -x $PEERS_SCRIPT ]] || die "no $PEERS_SCRIPT"
  CMD="$BIN --log-level $LOG queue --from listen:127.0.0.1:{listen} --to connect:127.0.0.1:{target} --framing lines --spool {spool} --fsync $FSYNC${MEMORY:+ --memory $MEMORY}"
  log "part 1: $PEERS_SCRIPT $MODE with spillway: $CMD"
  EXTRA_QUEUE_NAME=spillway EXTRA_QUEUE_CMD="$CMD" "$PEERS_SCRIPT" "$MODE" >"$WORK/peers.md" \
    || log "WARN: queue-peers.sh exited with $?"
fi

# ------------------------------------------------------------ part 2 ---
PEER_SRC=$ROOT/crates/spillway/tests/peers
cc -O2 -Wall -o "$WORK/producer" "$PEER_SRC/producer.c" || die "cc producer.c"
cc -O2 -Wall -o "$WORK/consumer" "$PEER_SRC/consumer.c" || die "cc consumer.c"
FMT=(--framing len32 --size "$LEN_SIZE" --count "$LEN_COUNT" --seed 11)

LAST_PID=0
start_bg() {   # start_bg LOGFILE CMD...: own session and process group; sets LAST_PID
  local logf=$1; shift
  ( exec setsid "$@" ) >"$logf" 2>&1 </dev/null &
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
port_listening() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }
wait_port() {  # wait_port PORT PID: 0 when listening
  local i
  for ((i = 0; i < 200; i++)); do
    port_listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
kv() { grep -o "\b$2=[^ ]*" "$1" 2>/dev/null | tail -1 | cut -d= -f2; }
disk_bytes() { du -s -B1 "$1" 2>/dev/null | awk '{print $1 + 0}'; }
sampler() {    # sampler DIR OUT FLAG: peak du while FLAG exists
  local peak=0 cur
  while [[ -f $3 ]]; do
    cur=$(disk_bytes "$1"); ((cur > peak)) && peak=$cur
    sleep 0.25
  done
  echo "$peak" >"$2"
}
relay_stats() { # "CPU_SECONDS VMHWM_KB" of one pid
  local pid=$1 f t hwm
  f=$(cat "/proc/$pid/stat" 2>/dev/null) || { echo "0 0"; return; }
  f=${f##*) }
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
  # shellcheck disable=SC2086
  set -- $f
  t=$(( ${12} + ${13} ))
  awk -v t="$t" -v h="$(getconf CLK_TCK)" -v m="${hwm:-0}" 'BEGIN { printf "%.2f %d\n", t / h, m }'
}

TSV=$WORK/len.tsv
printf 'round\tscenario\tstatus\tunique\tlost\tdups\treordered\tgaps\tbad\tmsgs_s\tMB_s\tprod_msgs_s\tfill_s\tcpu_s\thwm_kb\tspool_peak\tspool_fill\n' >"$TSV"
RUN=0
run_len() {   # run_len ROUND SCENARIO
  local round=$1 scen=$2
  RUN=$((RUN + 1))
  local lp=$((LEN_BASE_PORT + 2 * RUN)) tp=$((LEN_BASE_PORT + 2 * RUN + 1)) d=$WORK/len-r$round-$scen
  mkdir -p "$d/spool"
  local relay=0 cons=0 sampler_pid=0 t0 fill_s="" spool_fill="" cpu=0 hwm=0 i
  for i in $lp $tp; do port_listening "$i" && { log "port $i busy: skipping $scen"; return; }; done
  log "part 2, round $round: $scen ($LEN_COUNT x $LEN_SIZE B len:u32be)"
  local cons_cmd=("$WORK/consumer" --listen "$tp" "${FMT[@]}" --read 65536:65536 --sleep-us 0:0
    --rcvbuf 0 --timeout "$RUN_TIMEOUT")
  local prod_cmd=("$WORK/producer" --connect "127.0.0.1:$lp" "${FMT[@]}" --on-eagain block
    --sndbuf 0 --timeout "$RUN_TIMEOUT")
  local relay_cmd=("$BIN" --log-level info queue --from "listen:127.0.0.1:$lp"
    --to "connect:127.0.0.1:$tp" --framing len:u32be --spool "$d/spool" --fsync "$FSYNC"
    ${MEMORY:+--memory "$MEMORY"})
  if [[ $scen == direct ]]; then prod_cmd[2]="127.0.0.1:$tp"; fi
  if [[ $scen != backlog ]]; then
    start_bg "$d/consumer.out" "${cons_cmd[@]}"; cons=$LAST_PID
    wait_port "$tp" "$cons" || { log "consumer did not listen"; stop_pg "$cons"; return; }
  fi
  if [[ $scen != direct ]]; then
    start_bg "$d/relay.log" "${relay_cmd[@]}"; relay=$LAST_PID
    wait_port "$lp" "$relay" || { log "relay did not listen:"; tail -5 "$d/relay.log" >&2; stop_pg "$relay"; stop_pg "$cons"; return; }
    [[ $scen == live ]] && sleep 0.5   # let it dial the consumer
    touch "$d/sampling"; sampler "$d/spool" "$d/spool_peak" "$d/sampling" & sampler_pid=$!
  fi
  t0=$(date +%s%N)
  timeout -k 5 $((RUN_TIMEOUT + 10)) "${prod_cmd[@]}" >"$d/producer.out" 2>&1
  if [[ $scen == backlog ]]; then
    for ((i = 0; i < RUN_TIMEOUT * 20; i++)); do
      grep -q 'producer closed' "$d/relay.log" && break
      sleep 0.05
    done
    fill_s=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    spool_fill=$(disk_bytes "$d/spool")
    start_bg "$d/consumer.out" "${cons_cmd[@]}"; cons=$LAST_PID
  fi
  for ((i = 0; i < (RUN_TIMEOUT + 20) * 10; i++)); do kill -0 "$cons" 2>/dev/null || break; sleep 0.1; done
  if ((relay)); then read -r cpu hwm < <(relay_stats "$relay"); fi
  rm -f "$d/sampling"; ((sampler_pid)) && wait "$sampler_pid" 2>/dev/null
  stop_pg "$relay"; stop_pg "$cons"
  local co=$d/consumer.out po=$d/producer.out
  grep -q '^unique=' "$co" || { log "consumer printed no result:"; tail -5 "$co" >&2; }
  grep -q '^sent=' "$po" || { log "producer printed no result:"; tail -5 "$po" >&2; }
  local unique rate mbs prod
  unique=$(kv "$co" unique); unique=${unique:-0}
  if [[ $scen == backlog ]]; then
    rate=$(awk -v s="$(kv "$co" t_first_ns)" -v e="$(kv "$co" t_last_ns)" -v u="$unique" \
      'BEGIN { if (e > s && s > 0) printf "%.0f", u / ((e - s) / 1e9); else print 0 }')
  else
    rate=$(awk -v s="$(kv "$po" t_start_ns)" -v e="$(kv "$co" t_last_ns)" -v u="$unique" \
      'BEGIN { if (e > s && s > 0) printf "%.0f", u / ((e - s) / 1e9); else print 0 }')
  fi
  prod=$(awk -v s="$(kv "$po" t_start_ns)" -v e="$(kv "$po" t_end_ns)" -v u="$(kv "$po" sent)" \
    'BEGIN { if (e > s && s > 0) printf "%.0f", u / ((e - s) / 1e9); else print 0 }')
  mbs=$(awk -v r="$rate" -v z="$LEN_SIZE" 'BEGIN { printf "%.1f", r * z / 1e6 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$round" "$scen" "$(kv "$co" status)" "$unique" "$((LEN_COUNT - unique))" "$(kv "$co" dups)" \
    "$(kv "$co" reordered)" "$(kv "$co" gaps)" "$(kv "$co" bad)" "$rate" "$mbs" "$prod" "$fill_s" \
    "$cpu" "$hwm" "$(cat "$d/spool_peak" 2>/dev/null || echo 0)" "$spool_fill" >>"$TSV"
  log "  -> $(head -c 200 "$po" | tr '\n' ' ')"
  log "  -> $(grep '^unique=' "$co" | cut -c1-200)"
  log "  -> $rate msgs/s ($mbs MB/s); relay cpu ${cpu}s VmHWM ${hwm} kB"
}

for ((r = 1; r <= LEN_ROUNDS; r++)); do
  for scen in direct live backlog; do run_len "$r" "$scen"; done
done

# Spool bytes per 64-byte line with every line on disk (--memory 0): the
# queue-peers row above runs with the default memory tier, which holds part
# of the backlog in RAM.
SPOOL_LINES=${SPOOL_LINES:-1000000}
SPOOL64=""
spool_per_line() {
  local d=$WORK/spool64 lp=$((LEN_BASE_PORT + 90)) tp=$((LEN_BASE_PORT + 91)) relay i du_b app_b
  mkdir -p "$d/spool"
  log "spool size: $SPOOL_LINES lines of 64 B, --memory 0, no consumer"
  start_bg "$d/relay.log" "$BIN" --log-level info queue --from "listen:127.0.0.1:$lp" \
    --to "connect:127.0.0.1:$tp" --framing lines --memory 0 --spool "$d/spool" --fsync "$FSYNC"
  relay=$LAST_PID
  wait_port "$lp" "$relay" || { log "relay did not listen"; stop_pg "$relay"; return; }
  timeout -k 5 $((RUN_TIMEOUT + 10)) "$WORK/producer" --connect "127.0.0.1:$lp" --count "$SPOOL_LINES" \
    --size 64 --on-eagain block --sndbuf 0 --timeout "$RUN_TIMEOUT" >"$d/producer.out" 2>&1
  for ((i = 0; i < RUN_TIMEOUT * 20; i++)); do
    grep -q 'producer closed' "$d/relay.log" && break
    sleep 0.05
  done
  sleep 0.3   # let a pending group commit land
  du_b=$(disk_bytes "$d/spool")
  app_b=$(du -s -B1 --apparent-size "$d/spool" | awk '{print $1 + 0}')
  stop_pg "$relay"
  SPOOL64=$(awk -v d="$du_b" -v a="$app_b" -v n="$SPOOL_LINES" \
    'BEGIN { printf "%.1f B/line on disk (du), %.1f B/line apparent size (%d lines, %d bytes)", d / n, a / n, n, d }')
  log "  -> $SPOOL64"
}
spool_per_line
ELAPSED=$(($(date +%s) - START))

# ------------------------------------------------------------ report ---
{
  echo "# spillway queue bench ($MODE), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- spillway ${SPILLWAY_BIN:-$(git -C "$ROOT" describe --always --dirty 2>/dev/null)}, release build, --fsync $FSYNC${MEMORY:+, --memory $MEMORY}; whole run ${ELAPSED}s"
  echo "- host: $(nproc) CPUs, kernel $(uname -r); load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  if [[ -f $WORK/peers.md ]]; then
    echo "## 64-byte lines: queue-peers.sh $MODE (spillway as the extra peer)"
    echo
    sed 's/^# /### /' "$WORK/peers.md"
    echo
    awk -F'|' '$2 ~ /spillway/ && $3 ~ /backlog/ { gsub(/ /, "", $16); print "spool bytes on disk per 64-byte line (spillway, backlog): " $16 }' "$WORK/peers.md"
    echo
  fi
  [[ -n $SPOOL64 ]] && { echo "spool size, every line on disk (--memory 0, --fsync $FSYNC): $SPOOL64"; echo; }
  echo "## 1 KiB len:u32be messages ($LEN_COUNT per run, $LEN_ROUNDS round(s))"
  echo
  echo "producer.c -> spillway (--from listen, --to connect, --framing len:u32be, --fsync $FSYNC) -> consumer.c; every frame verified."
  echo "live/direct msgs/s = COUNT / (producer start -> last frame at the consumer); backlog = drain rate,"
  echo "COUNT / (first byte -> last frame) after the relay appended everything (fill s = producer start -> 'producer closed')."
  echo "Median over rounds [min–max]. spool after fill = bytes on disk once everything was appended (the memory tier holds the rest)."
  echo
  python3 - "$TSV" "$LEN_COUNT" "$LEN_SIZE" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
count, size = int(sys.argv[2]), int(sys.argv[3])
def f(x):
    try: return float(x)
    except (TypeError, ValueError): return 0.0
def rng(vals, fmt='{:.0f}'):
    if not vals: return '–'
    s = fmt.format(statistics.median(vals))
    if len(vals) > 1: s += ' [' + fmt.format(min(vals)) + '–' + fmt.format(max(vals)) + ']'
    return s
def per(rs, k):
    v = [r[k] or '?' for r in rs]
    return v[0] if len(set(v)) == 1 else '/'.join(v)
print('| scenario | msgs/s | MB/s | lost | dups | reordered | gaps | bad | producer msgs/s | fill s | relay CPU s (µs/msg) | RSS MiB | spool peak MB | spool after fill MB | status |')
print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
for scen in ['direct', 'live', 'backlog']:
    rs = [r for r in rows if r['scenario'] == scen]
    if not rs: continue
    relay = scen != 'direct'
    cpu = [f(r['cpu_s']) for r in rs]
    print('| ' + ' | '.join([
        scen if relay else 'direct (no relay)',
        rng([f(r['msgs_s']) for r in rs]),
        rng([f(r['MB_s']) for r in rs], '{:.1f}'),
        per(rs, 'lost'), per(rs, 'dups'), per(rs, 'reordered'), per(rs, 'gaps'), per(rs, 'bad'),
        rng([f(r['prod_msgs_s']) for r in rs]),
        rng([f(r['fill_s']) for r in rs], '{:.2f}') if scen == 'backlog' else '–',
        (rng(cpu, '{:.2f}') + ' ({:.2f})'.format(statistics.median(cpu) * 1e6 / count)) if relay else '–',
        '{:.1f}'.format(max(f(r['hwm_kb']) for r in rs) / 1024) if relay else '–',
        '{:.1f}'.format(max(f(r['spool_peak']) for r in rs) / 1e6) if relay else '–',
        '{:.1f}'.format(statistics.median(f(r['spool_fill']) for r in rs) / 1e6) if scen == 'backlog' else '–',
        per(rs, 'status'),
    ]) + ' |')
EOF
} >"$OUT_MD"
cat "$OUT_MD"
log "saved $OUT_MD"
