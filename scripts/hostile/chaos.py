"""Many misbehaving consumers against one steady producer; then a clean drain,
SIGTERM, restart and drain again. Every line the relay's TCP acknowledged
from the producer must reach some consumer (resets are covered by the
redelivery window because every consumer's receive buffer is small)."""
import sys, os, time, signal, shutil, random, threading, struct
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *

seed = int(os.environ.get("SEED", str(random.randrange(1 << 30))))
random.seed(seed)
print("seed", seed)
NCONS = int(os.environ.get("NCONS", "12"))
DUR = float(os.environ.get("DUR", "20"))
work = "/tmp/h/w_ch"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
pp, cp, ap = free_ports(3)
spool = work + "/spool"
extra = os.environ.get("EXTRA", 'memory = "1MiB"\nsegment_size = "256KiB"\nfsync = "100ms"').replace("\\n", "\n")
glob = 'drain_timeout = "2s"'
r = Relay(qconfig(pp, cp, spool, extra + '\nwrite_stall_timeout = "2s"', admin=ap, drain="2s"), work)
r.wait_log("queue route ready")

results = []  # (conn id, behaviour, numbers, ended_clean)
lock = threading.Lock()
stop = False
events = []

def chaos_consumer(k):
    rnd = random.Random(seed * 1000 + k)
    cid = 0
    while not stop:
        cid += 1
        beh = rnd.choice(os.environ.get("BEHS", "clean,reset,fin_then_reset,stall,garbage,slow,close_unread").split(","))
        try:
            s = consumer(cp, rcvbuf=rnd.choice([4096, 16384, 65536]))
        except OSError:
            time.sleep(0.05); continue
        s.settimeout(0.05)
        t_start = time.time()
        buf = bytearray()
        t_end = time.time() + rnd.uniform(0.05, 1.5)
        clean = False
        err = None
        try:
            while time.time() < t_end:
                if beh == "stall" and rnd.random() < 0.02:
                    time.sleep(rnd.uniform(0.2, 2.5))
                if beh == "garbage" and rnd.random() < 0.3:
                    s.send(os.urandom(rnd.randint(1, 3000)))
                try:
                    d = s.recv(rnd.choice([1, 7, 100, 4096, 65536]))
                    if not d:
                        err = "eof"; break
                    buf += d
                except socket.timeout:
                    pass
                if beh == "slow":
                    time.sleep(0.01)
            if beh in ("clean", "stall", "garbage", "slow"):
                if beh == "garbage":
                    s.send(b"bye\n")
                s.shutdown(socket.SHUT_WR)
                s.settimeout(15)
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    buf += d
                clean = True
                s.close()
            elif beh == "reset":
                reset(s)
            elif beh == "fin_then_reset":
                s.shutdown(socket.SHUT_WR)
                time.sleep(rnd.uniform(0, 0.3))
                try:
                    d = s.recv(rnd.choice([100, 4096]))
                    buf += d
                except OSError:
                    pass
                reset(s)
            elif beh == "close_unread":
                s.close()  # kernel sends RST if unread data
        except OSError as e:
            err = str(e)
            try: s.close()
            except OSError: pass
        tail = len(buf) % LINE
        try:
            nums = numbers(bytes(buf[:len(buf) - tail]))
        except AssertionError as e:
            nums = []
            events.append(("TORN", k, cid, beh, str(e)[:200]))
        if clean and tail:
            events.append(("PARTIAL at clean end", k, cid, beh, tail))
        with lock:
            results.append((k, cid, beh, nums, clean, err, t_start, time.time(), len(buf)))

prod = ReProducer(pp, rate_sleep=0.003)
threads = [threading.Thread(target=chaos_consumer, args=(k,), daemon=True) for k in range(NCONS)]
for t in threads: t.start()
if os.environ.get("MIDTERM"):
    time.sleep(DUR / 2)
    prod.stop()
    time.sleep(0.5)
    r.signal(signal.SIGTERM)
    print("mid SIGTERM exit", r.wait_exit(60))
    r = Relay(qconfig(pp, cp, spool, extra + '\nwrite_stall_timeout = "2s"', admin=ap, drain="2s"), work, name="relay_mid")
    r.wait_log("queue route ready")
    time.sleep(DUR / 2)
else:
    time.sleep(DUR)
    prod.stop()
stop = True
for t in threads: t.join(60)
acked = prod.acked()
m = metrics(ap)
print("metrics:", {k.split("{")[0] + ("{" + k.split("{")[1] if "tier" in k or "reason" in k else ""): v for k, v in m.items() if ("depth" in k or "lost" in k or "closed_total" in k or "redelivered" in k) and v})
# clean drain
got1 = drain(cp, len(acked), have=set(n for x in results for n in x[3]), limit=60)
seen = set(n for x in results for n in x[3]) | set(numbers(got1))
print("after chaos + drain: acked", len(acked), "seen", len(seen & acked), "missing", len(acked - seen))
m = metrics(ap)
print("gauges now", {k: v for k, v in metrics(ap).items() if "active" in k or "consumers" in k or "producers" in k})
print("depth now", {k: v for k, v in m.items() if "depth_messages" in k})
r.signal(signal.SIGTERM)
print("exit", r.wait_exit(60))
r2 = Relay(qconfig(pp, cp, spool, extra, admin=ap, drain="2s"), work, name="relay2")
r2.wait_log("queue route ready")
got2 = drain(cp, 10**9, limit=30, quiet=3)
n2 = numbers(got2)
print("after restart: got", len(n2), "already seen", len(set(n2) & seen))
seen |= set(n2)
lost = sorted(acked - seen)
print("LOST", len(lost), lost[:20])
_all = [n for x in results for n in x[3]] + numbers(got1) + n2
print("received total", len(_all), "distinct", len(set(_all)), "DUPLICATES", len(_all) - len(set(_all)))
print("events", events[:10])
behs = {}
for x in results:
    behs[x[2]] = behs.get(x[2], 0) + 1
print("behaviours", behs, "producer conns", prod.conns, prod.errors[:2])
r2.signal(signal.SIGTERM); print("r2 exit", r2.wait_exit(30)); r2.kill(); r.kill()
for l in (r.log() + r2.log()).splitlines():
    if "ERROR" in l or "panic" in l:
        print("  ", l[:250])

import json
json.dump({"lost": lost, "results": [[x[0], x[1], x[2], (x[3][0] if x[3] else None), (x[3][-1] if x[3] else None), len(x[3]), x[4], x[5], x[6], x[7], x[8], x[3]] for x in results]}, open(work + "/results.json", "w"))
