"""SIGTERM while a producer is actively sending (the relay keeps up): every
line the relay's TCP acknowledged must be queued ("what their sockets already
held is queued")."""
import sys, os, time, signal, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
work = "/tmp/h/w_sa"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
pp, cp, ap = free_ports(3)
spool = work + "/spool"
extra = sys.argv[1].replace("\\n", "\n") if len(sys.argv) > 1 else 'memory = 0\nfsync = "always"'
r = Relay(qconfig(pp, cp, spool, extra, drain="2s"), work)
r.wait_log("queue route ready")
prod = ReProducer(pp, rate_sleep=float(os.environ.get("RATE", "0")))
time.sleep(float(os.environ.get("T", "2")))
r.signal(signal.SIGTERM)
rc = r.wait_exit(60)
prod.stopped = True
prod.t.join(30)
acked = prod.acked()
print("exit", rc, "acked ranges", prod.acked_ranges[:3])
for l in r.log().splitlines():
    if "producer closed" in l or "partial" in l or "lost" in l:
        print("  ", l[:250])
r2 = Relay(qconfig(pp, cp, spool, extra, drain="2s"), work, name="relay2")
r2.wait_log("queue route ready")
got = drain(cp, len(acked), limit=60)
seen = set(numbers(got))
lost = sorted(acked - seen)
print("acked", len(acked), "received", len(seen), "LOST", len(lost), lost[:3], lost[-3:])
r2.signal(signal.SIGTERM); r2.wait_exit(30); r2.kill()
