"""Reloads that move the ports and change memory/segment/max_disk/fsync, with a
slow steady producer and two consumers that follow the ports."""
import sys, os, time, signal, shutil, random
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
seed = int(os.environ.get("SEED", str(random.randrange(1 << 30)))); random.seed(seed); print("seed", seed)
work = "/tmp/h/w_rp"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
ports = {"pp": None, "cp": None}
ports["pp"], ports["cp"], ap = free_ports(3)
spool = work + "/spool"
variants = [
    'memory = 0\nfsync = "always"\nsegment_size = "64KiB"',
    'memory = "1MiB"\nfsync = "100ms"\nsegment_size = "1MiB"',
    'memory = "256KiB"\nfsync = "never"\nmax_disk = "8MiB"\nmax_message = "4KiB"\nsegment_size = "128KiB"',
    'memory = "4MiB"\nfsync = "10ms"\nredeliver_on_reset = 0',
]
r = Relay(qconfig(ports["pp"], ports["cp"], spool, variants[0], admin=ap), work)
r.wait_log("queue route ready")
prod = ReProducer(lambda: ports["pp"], rate_sleep=0.004, chunk=100)
c1 = ReConsumer(lambda: ports["cp"], pause=0.001)
c2 = ReConsumer(lambda: ports["cp"], rcvbuf=8192, pause=0.002)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 8
for i in range(N):
    time.sleep(random.uniform(0.3, 1.5))
    if random.random() < 0.5:
        ports["pp"], ports["cp"] = free_ports(2)
    r.rewrite(qconfig(ports["pp"], ports["cp"], spool, random.choice(variants), admin=ap))
    r.signal(signal.SIGHUP)
    r.wait_log("configuration reloaded", i + 1, limit=30)
time.sleep(1)
prod.stop()
acked = prod.acked()
end = time.time() + 30
while time.time() < end and not acked <= (c1.seen() | c2.seen()):
    time.sleep(0.2)
c1.stop(); c2.stop()
seen = c1.seen() | c2.seen()
lost = sorted(acked - seen)
print("reloads", N, "producer conns", prod.conns, "acked", len(acked), "LOST", len(lost), lost[:10])
print("consumer errors", (c1.errors + c2.errors)[:5])
print("relay alive", r.p.poll() is None)
print([l[28:220] for l in r.log().splitlines() if "ERROR" in l or "failure" in l][:6])
r.signal(signal.SIGTERM); print("exit", r.wait_exit(30)); r.kill()
