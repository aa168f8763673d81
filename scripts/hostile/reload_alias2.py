import sys, os, time, signal, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
work = "/tmp/h/w_ra"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
pp, cp, ap = free_ports(3)
spool = work + "/spool"
alias = sys.argv[1] if len(sys.argv) > 1 else spool + "/"
if alias == "link":
    os.makedirs(spool); os.symlink(spool, work + "/link"); alias = work + "/link"
r = Relay(qconfig(pp, cp, spool, 'memory = "1MiB"', admin=ap), work)
r.wait_log("queue route ready")
produce(pp, lines(0, 20000))
c = consumer(cp, rcvbuf=4096)  # a stalled consumer makes the old route's drain take up to drain_timeout
time.sleep(0.5)
pp2, cp2 = free_ports(2)
r.rewrite(qconfig(pp2, cp2, alias, 'memory = "2MiB"', admin=ap))
r.signal(signal.SIGHUP)
r.wait_log("configuration reloaded")
time.sleep(3)
for l in r.log().splitlines()[5:]:
    print("  ", l[28:260])
try:
    produce(pp2, lines(0, 10)); print("producer connect OK")
except OSError as e:
    print("producer connect:", e)
print("status", http_get(ap, "/status")[1][:300])
print("readyz", http_get(ap, "/readyz"))
r.signal(signal.SIGTERM); print("exit", r.wait_exit(30)); r.kill()
