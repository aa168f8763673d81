"""Flooding producers, SIGTERM: how long does the drain take, how much memory?"""
import sys, os, time, signal, subprocess, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
work = "/tmp/h/w_ft"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
nprod = int(sys.argv[1]) if len(sys.argv) > 1 else 2
pp, cp, ap = free_ports(3)
spool = work + "/spool"
extra = sys.argv[2] if len(sys.argv) > 2 else 'memory = "64MiB"\nfsync = "never"'
r = Relay(qconfig(pp, cp, spool, extra, admin=ap, drain="2s"), work)
r.wait_log("queue route ready")
procs = [subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), "flood"), str(pp), str(i * 10**8), str(10**9), os.environ.get("SECS","20")], stderr=subprocess.PIPE) for i in range(nprod)]
time.sleep(1.5)
r.signal(signal.SIGTERM)
t0 = time.time()
peak = 0
while r.p.poll() is None and time.time() - t0 < 30:
    try:
        with open("/proc/%d/status" % r.p.pid) as f:
            for l in f:
                if l.startswith("VmRSS"):
                    peak = max(peak, int(l.split()[1]))
    except FileNotFoundError:
        break
    time.sleep(0.05)
rc = r.wait_exit(1)
print("exit", rc, "after %.1fs" % (time.time() - t0), "peak RSS during drain %d MiB" % (peak // 1024))
r.kill()
for p in procs:
    p.kill(); p.wait(); print(p.stderr.read().decode().strip())
for l in r.log().splitlines():
    if "producer closed" in l or "stopped" in l or "lost" in l or "drain" in l:
        print("  ", l[:250])
