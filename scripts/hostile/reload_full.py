import sys, os, time, signal, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
MNT = "/tmp/h/mnt_rf"; work = "/tmp/h/w_rf"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
tmpfs(MNT, "8m")
r = None
try:
    pp, cp, ap = free_ports(3)
    spool = MNT + "/spool"
    r = Relay(qconfig(pp, cp, spool, 'memory = "2MiB"\nsegment_size = "512KiB"', admin=ap), work); r.wait_log("queue route ready")
    p = Producer(pp)
    end = time.time() + 30
    while p.stalled_for() < 2 and time.time() < end: time.sleep(0.1)
    p.stopped = True; p.t.join()
    acked = p.acked_lines()
    print("acked", acked, "free", df(MNT))
    for mem in ["1MiB", "3MiB", "0", "2MiB"]:
        r.rewrite(qconfig(pp, cp, spool, 'memory = "%s"\nsegment_size = "512KiB"' % mem, admin=ap))
        r.signal(signal.SIGHUP)
        r.wait_log("configuration reloaded", ["1MiB", "3MiB", "0", "2MiB"].index(mem) + 1, limit=30)
        time.sleep(0.5)
        print("reload memory", mem, "alive", r.p.poll() is None, "free", df(MNT), "reserved", metrics(ap).get('spillway_spool_memory_reserved_bytes{route="q"}'))
    p.close()
    got = drain(cp, acked, limit=60)
    seen = set(numbers(got))
    print("received", len(seen), "missing of acked", len([i for i in range(acked) if i not in seen]))
    print("lost logged", sum(int(l.split("lost=")[1].split()[0]) for l in r.log().splitlines() if "could not be queued" in l))
    r.signal(signal.SIGTERM); print("exit", r.wait_exit(30))
    print([l[28:230] for l in r.log().splitlines() if "ERROR" in l or "WARN" in l][:8])
finally:
    if r: r.kill()
    umount(MNT)
