#!/usr/bin/env bash
# scripts/status-screenshot.sh -- makes docs/status.png: a relay with a
# queue route and a stream route (one upstream up, one down) under about a
# minute of uneven traffic (a producer at a varying rate, a consumer that
# arrives late and reads slowly, stream clients in bursts), then headless
# Chromium's screenshot of the status page at http://ADMIN/.
#
# Usage: scripts/status-screenshot.sh [OUT.png]     (~75 s; loopback only)
# Env:   SPILLWAY_BIN  a prebuilt binary (default: build this checkout)
#        SECONDS_OF_TRAFFIC (default 60)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/docs/status.png}
"$ROOT/scripts/install-test-deps.sh"
if [[ -z ${SPILLWAY_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release --quiet)
fi
BIN=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/spillway}
D=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$D"' EXIT
# An echo upstream, and a port bound by nobody for the dead one.
python3 - "$D/echo.port" <<'PY' &
import socket, sys, threading
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
PIDS+=($!)
for _ in $(seq 50); do [[ -s $D/echo.port ]] && break; sleep 0.1; done
DEAD=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$D/spillway.toml" <<EOF
[admin]
listen = "127.0.0.1:0"

[[route]]
name = "app-logs"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "$D/spool"
memory = "4MiB"
max_disk = "256MiB"

[[route]]
name = "web"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:$(cat "$D/echo.port")", "127.0.0.1:$DEAD"]

[route.health_check]
interval = "1s"
EOF
"$BIN" --ready-file "$D/ready.json" run --config "$D/spillway.toml" 2>"$D/relay.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $D/ready.json ]] && break; sleep 0.1; done
python3 - "$D/ready.json" "${SECONDS_OF_TRAFFIC:-60}" <<'PY' &
import json, math, socket, sys, threading, time
r = json.load(open(sys.argv[1])); total = float(sys.argv[2])
addr = lambda a: (a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1]))
q, web = r["routes"]["app-logs"], r["routes"]["web"]["client"]
start = time.time(); stop = start + total
def producer():
    s = socket.create_connection(addr(q["source"])); n = 0
    while time.time() < stop:
        t = time.time() - start
        rate = 20000 + 15000 * math.sin(t / 6)         # lines per second
        batch = int(rate / 20)
        s.sendall(b"".join(b'{"seq":%d,"level":"info","msg":"request served"}\n' % (n + i) for i in range(batch)))
        n += batch; time.sleep(0.05)
    s.close()
def consumer():
    time.sleep(total / 3)                               # arrives late
    s = socket.create_connection(addr(q["sink"]))
    while time.time() < stop + 15:
        t = time.time() - start
        s.recv(65536 if t > total * 0.8 else 4096)       # slow, then faster
        time.sleep(0.005)
def web_clients():
    while time.time() < stop:
        for _ in range(int(5 + 4 * math.sin((time.time() - start) / 4))):
            try:
                c = socket.create_connection(addr(web)); c.sendall(b"x" * 200000)
                c.shutdown(socket.SHUT_WR)
                while c.recv(65536): pass
                c.close()
            except OSError: pass
        time.sleep(0.5)
ts = [threading.Thread(target=f, daemon=True) for f in (producer, consumer, web_clients)]
[t.start() for t in ts]; time.sleep(total + 15)
PY
PIDS+=($!)
# The picture is taken while the traffic still flows.
sleep "$(( ${SECONDS_OF_TRAFFIC:-60} - 3 ))"
ADMIN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$D/ready.json")
CHROME=$(command -v chromium || command -v chromium-browser)
timeout 60 "$CHROME" --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --no-first-run --user-data-dir="$D/profile" --hide-scrollbars --window-size=1280,900 \
  --virtual-time-budget=3000 --screenshot="$OUT" "http://$ADMIN/" 2>/dev/null
echo "wrote $OUT"
