"""TLS consumers (to_tls on the listen side) that misbehave."""
import sys, os, time, signal, shutil, random, ssl, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
seed = int(os.environ.get("SEED", str(random.randrange(1 << 30)))); print("seed", seed)
work = "/tmp/h/w_tls"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
pp, cp, ap = free_ports(3)
extra = '''memory = "1MiB"
segment_size = "256KiB"
write_stall_timeout = "2s"
[route.to_tls]
cert = "/tmp/h/tls/cert.pem"
key = "/tmp/h/tls/key.pem"
'''
r = Relay(qconfig(pp, cp, work + "/spool", extra, admin=ap), work)
r.wait_log("queue route ready")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
BEHS = os.environ.get("BEHS", "clean,reset,fin_then_reset,stall,slow,close_unread").split(",")
results = []; stop = False; events = []
def fin(s):
    d = socket.socket(fileno=os.dup(s.fileno()))
    d.shutdown(socket.SHUT_WR)
    d.close()
def tc(k):
    rnd = random.Random(seed * 100 + k)
    while not stop:
        beh = rnd.choice(BEHS)
        raw = socket.socket(); raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rnd.choice([8192, 32768]))
        try:
            raw.connect(("127.0.0.1", cp))
            s = ctx.wrap_socket(raw)
        except OSError:
            time.sleep(0.05); continue
        s.settimeout(0.05); buf = bytearray(); t_end = time.time() + rnd.uniform(0.1, 1.2); clean = False
        try:
            while time.time() < t_end:
                if beh == "stall" and rnd.random() < 0.03: time.sleep(rnd.uniform(0.3, 3))
                try:
                    d = s.recv(rnd.choice([7, 100, 4096, 16384]))
                    if not d: break
                    buf += d
                except (socket.timeout, ssl.SSLWantReadError):
                    pass
                if beh == "slow": time.sleep(0.01)
            if beh in ("clean", "stall", "slow"):
                fin(s)  # FIN without close_notify
                s.settimeout(15)
                while True:
                    try:
                        d = s.recv(65536)
                    except ssl.SSLError as e:
                        events.append(("ssl err at clean end", str(e))); break
                    if not d: break
                    buf += d
                clean = True
            elif beh == "reset":
                reset(s)
            elif beh == "fin_then_reset":
                fin(s); time.sleep(rnd.uniform(0, 0.2)); reset(s)
            else:
                s.close()
        except OSError as e:
            events.append((beh, str(e)[:80]))
        try:
            nums = numbers(bytes(buf[:len(buf) - len(buf) % LINE]))
        except AssertionError as e:
            nums = []; events.append(("TORN", beh, str(e)[:100]))
        if clean and len(buf) % LINE: events.append(("PARTIAL", beh, len(buf) % LINE))
        results.append((beh, nums))
prod = ReProducer(pp, rate_sleep=0.003)
ts = [threading.Thread(target=tc, args=(k,), daemon=True) for k in range(6)]
for t in ts: t.start()
time.sleep(float(os.environ.get("DUR", "15")))
prod.stop(); stop = True
for t in ts: t.join(60)
acked = prod.acked()
# final clean TLS drain
raw = socket.create_connection(("127.0.0.1", cp)); s = ctx.wrap_socket(raw); s.settimeout(3); buf = bytearray()
try:
    while True:
        d = s.recv(65536)
        if not d: break
        buf += d
except (socket.timeout, ssl.SSLError, OSError) as e:
    pass
fin(s); s.settimeout(10)
try:
    while True:
        d = s.recv(65536)
        if not d: break
        buf += d
except (ssl.SSLError, OSError) as e:
    events.append(("final", str(e)[:80]))
seen = set(n for b, ns in results for n in ns) | set(numbers(bytes(buf[:len(buf) - len(buf) % LINE])))
lost = sorted(acked - seen)
behs = {}
for b, ns in results: behs[b] = behs.get(b, 0) + 1
print("acked", len(acked), "seen", len(seen & acked), "LOST", len(lost), lost[:5], behs)
print("events", events[:8])
m = metrics(ap)
print({k: v for k, v in m.items() if ("closed_total" in k or "tls" in k or "redeliv" in k) and v})
r.signal(signal.SIGTERM); print("exit", r.wait_exit(30)); r.kill()
print([l[28:200] for l in r.log().splitlines() if "ERROR" in l or "panic" in l][:5])
