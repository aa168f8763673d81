import sys, os, time, signal, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
work = "/tmp/h/w_sf"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
pp, cp, ap = free_ports(3)
r = Relay(qconfig(pp, cp, work + "/spool", 'memory = "64MiB"\nfsync = "never"', admin=ap), work)
r.wait_log("queue route ready")
import subprocess
subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "flood"), str(pp), "0", "8000000", "30"], stderr=subprocess.DEVNULL)  # 800 MB backlog
time.sleep(1)
def rss():
    with open("/proc/%d/status" % r.p.pid) as f:
        for l in f:
            if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
print("backlog queued; RSS MiB", rss())
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
cs = []
for i in range(N):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024); s.connect(("127.0.0.1", cp)); cs.append(s)
time.sleep(5)
print(N, "stalled consumers; RSS MiB", rss())
for i in range(3):
    t0 = time.time()
    try:
        m = metrics(ap); print("metrics took %.2fs" % (time.time() - t0), {k: v for k, v in m.items() if "depth_messages" in k})
    except OSError as e:
        print("metrics failed after %.2fs: %s" % (time.time() - t0, e))
    t0 = time.time()
    try:
        print("healthz", http_get(ap, "/healthz")[0], "%.2fs" % (time.time() - t0))
    except OSError as e:
        print("healthz failed after %.2fs: %s" % (time.time() - t0, e))
    cpu = open("/proc/%d/stat" % r.p.pid).read().split()
    print("utime+stime ticks", int(cpu[13]) + int(cpu[14]))
    time.sleep(1)
for s in cs: reset(s)
time.sleep(2)
print("after they reset; RSS MiB", rss())
r.signal(signal.SIGTERM); print("exit", r.wait_exit(60)); r.kill()
shutil.rmtree(work, ignore_errors=True)
