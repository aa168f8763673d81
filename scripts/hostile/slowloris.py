import sys, os, time, signal, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
work = "/tmp/h/w_sl"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
pp, cp, ap = free_ports(3)
r = Relay(qconfig(pp, cp, work + "/spool", "", admin=ap), work); r.wait_log("queue route ready")
def rss():
    with open("/proc/%d/status" % r.p.pid) as f:
        for l in f:
            if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
N = int(sys.argv[1]); size = int(sys.argv[2])
print("start RSS", rss())
cs = []
chunk = b"a" * size
for i in range(N):
    s = socket.create_connection(("127.0.0.1", pp)); s.sendall(chunk); cs.append(s)
time.sleep(3)
print(N, "producers holding", size, "bytes of an unfinished line each: RSS MiB", rss())
t0 = time.time(); print("metrics ok", metrics(ap).get('spillway_connections_active{route="q",role="producer"}'), "%.2fs" % (time.time() - t0))
for s in cs: s.close()
time.sleep(2)
print("after close RSS", rss())
r.signal(signal.SIGTERM); print("exit", r.wait_exit(30)); r.kill()
