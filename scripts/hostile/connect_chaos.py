"""to = connect:  -- the relay dials our consumer server, which misbehaves:
reads then resets, stalls, half-closes, closes unread. from = connect: too:
the relay dials our producer server, which sends numbered lines and sometimes
resets mid-line."""
import sys, os, time, signal, shutil, random, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
seed = int(os.environ.get("SEED", str(random.randrange(1 << 30)))); print("seed", seed)
rnd = random.Random(seed)
DUR = float(os.environ.get("DUR", "15"))
work = "/tmp/h/w_cc"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
ps, cs, ap = free_ports(3)
spool = work + "/spool"
BEHS = os.environ.get("BEHS", "clean,reset,stall,close_unread,fin_then_reset,slow").split(",")
cfg = """[global]
drain_timeout = "2s"
[admin]
listen = "127.0.0.1:%d"
[[route]]
name = "q"
mode = "queue"
from = "connect:127.0.0.1:%d"
to = "connect:127.0.0.1:%d"
spool = "%s"
memory = "512KiB"
segment_size = "128KiB"
write_stall_timeout = "1s"
[route.backoff]
base = "10ms"
cap = "200ms"
reset_after = "1s"
""" % (ap, ps, cs, spool)
results = []
stop = False
# producer server: each accepted connection sends lines from `next`, a
# connection may be reset mid-stream.
pstate = {"next": 0, "ranges": []}
pl = socket.socket(); pl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); pl.bind(("127.0.0.1", ps)); pl.listen(8)
cl = socket.socket(); cl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); cl.bind(("127.0.0.1", cs)); cl.listen(8)
def pserver():
    import select
    pl.settimeout(0.2)
    while not stop:
        try:
            s, _ = pl.accept()
        except socket.timeout:
            continue
        base = pstate["next"]; nxt = base; written = 0
        t_end = time.time() + rnd.uniform(0.2, 3)
        how = rnd.choice(["fin", "rst", "rst_mid"])
        s.setblocking(False)
        pending = b""
        err = None
        while time.time() < t_end and not stop:
            if not pending:
                pending = lines(nxt, nxt + 200); nxt += 200
                time.sleep(0.002)
            try:
                n = s.send(pending); pending = pending[n:]; written += n
            except BlockingIOError:
                select.select([], [s], [], 0.05)
            except OSError as e:
                err = e; break
        if how == "rst_mid" and err is None:
            try:
                s.send(b"00000000")  # half a line
                written += 8
            except OSError:
                pass
        if how == "fin" and err is None:
            end = time.time() + 5
            while outq(s) and time.time() < end: time.sleep(0.01)
        acked = written - outq(s)
        if how == "fin":
            s.shutdown(socket.SHUT_WR); s.close()
        else:
            reset(s)
        pstate["ranges"].append((base, base + acked // LINE))
        pstate["next"] = base + acked // LINE
def cserver():
    cl.settimeout(0.2)
    while not stop:
        try:
            s, _ = cl.accept()
        except socket.timeout:
            continue
        beh = rnd.choice(BEHS)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.settimeout(0.05); buf = bytearray(); t_end = time.time() + rnd.uniform(0.1, 1.5)
        try:
            while time.time() < t_end:
                if beh == "stall" and rnd.random() < 0.05:
                    time.sleep(rnd.uniform(0.5, 2.0))
                try:
                    d = s.recv(4096)
                    if not d: break
                    buf += d
                except socket.timeout:
                    pass
                if beh == "slow": time.sleep(0.01)
            if beh in ("clean", "stall", "slow"):
                s.shutdown(socket.SHUT_WR); s.settimeout(10)
                while True:
                    d = s.recv(65536)
                    if not d: break
                    buf += d
                s.close()
            elif beh == "reset":
                reset(s)
            elif beh == "fin_then_reset":
                s.shutdown(socket.SHUT_WR); time.sleep(rnd.uniform(0, 0.2)); reset(s)
            else:
                s.close()
        except OSError:
            pass
        results.append((beh, numbers(bytes(buf[:len(buf) - len(buf) % LINE]))))
tp = threading.Thread(target=pserver, daemon=True); tp.start()
tc = threading.Thread(target=cserver, daemon=True); tc.start()
r = Relay(cfg, work); r.wait_log("queue route ready")
time.sleep(DUR)
stop = True
tp.join(10); tc.join(10)
# final: clean consumer server that reads everything
stop = False
final = bytearray()
def final_server():
    cl.settimeout(0.5)
    end = time.time() + 30
    last = time.time()
    while time.time() < end and time.time() - last < 4:
        try:
            s, _ = cl.accept()
        except socket.timeout:
            continue
        s.settimeout(2)
        buf = bytearray()
        try:
            while True:
                d = s.recv(65536)
                if not d: break
                buf.extend(d); last = time.time()
        except socket.timeout:
            try:
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                while True:
                    d = s.recv(65536)
                    if not d: break
                    buf.extend(d)
            except OSError: pass
        except OSError as e:
            print("final server:", e)
        s.close()
        final.extend(buf[:len(buf) - len(buf) % LINE])
tf = threading.Thread(target=final_server); tf.start(); tf.join(30)
seen = set(n for b, ns in results for n in ns) | set(numbers(bytes(final[:len(final) - len(final) % LINE])))
acked = set(i for a, b in pstate["ranges"] for i in range(a, b))
lost = sorted(acked - seen)
print("producer conns", len(pstate["ranges"]), "consumer conns", len(results), "acked", len(acked), "seen", len(seen & acked), "LOST", len(lost), lost[:10])
behs = {}
for b, ns in results: behs[b] = behs.get(b, 0) + 1
print(behs)
m = metrics(ap)
print({k: v for k, v in m.items() if ("closed_total" in k or "lost" in k or "partial" in k or "dial_errors" in k) and v})
r.signal(signal.SIGTERM); print("exit", r.wait_exit(30)); r.kill()
print([l[28:220] for l in r.log().splitlines() if "ERROR" in l][:5])
