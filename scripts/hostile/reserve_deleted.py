"""Reserve deleted while running (an operator freeing space on a full disk), disk
refills, SIGTERM: is the memory tier kept?"""
import sys, os, time, signal
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *

MNT = "/tmp/h/mnt_rd"
work = "/tmp/h/w_rd"
os.makedirs(work, exist_ok=True)
tmpfs(MNT, "8m")
r = None
try:
    pp, cp, ap = free_ports(3)
    spool = MNT + "/spool"
    r = Relay(qconfig(pp, cp, spool, 'memory = "2MiB"\nwhen_full = "block"\nsegment_size = "1MiB"', admin=ap), work)
    r.wait_log("queue route ready")
    print("after start, free", df(MNT), os.listdir(spool), os.path.getsize(spool + "/reserve"))
    p = Producer(pp)
    # wait until the relay pushes back (disk full)
    end = time.time() + 30
    while p.stalled_for() < 2 and time.time() < end:
        time.sleep(0.1)
    print("stalled; acked lines", p.acked_lines(), "free", df(MNT))
    m = metrics(ap)
    print({k: v for k, v in m.items() if "depth" in k or "reserved" in k or "enospc" in k})
    if "--delete" in sys.argv:
        os.remove(spool + "/reserve")
        print("reserve deleted; free", df(MNT))
    elif "--truncate" in sys.argv:
        os.truncate(spool + "/reserve", 0)
        print("reserve truncated; free", df(MNT))
    end = time.time() + 30
    time.sleep(0.5)
    while p.stalled_for() < 2 and time.time() < end:
        time.sleep(0.1)
    print("stalled again; acked lines", p.acked_lines(), "free", df(MNT))
    m = metrics(ap)
    print({k: v for k, v in m.items() if "depth" in k or "reserved" in k or "enospc" in k})
    acked = p.acked_lines()
    r.signal(signal.SIGTERM)
    t0 = time.time()
    rc = r.wait_exit(60)
    print("exit", rc, "after", round(time.time() - t0, 1), "s")
    p.stop()
    p.close()
    print("\n".join(l for l in r.log().splitlines()[-12:]))
    # restart and drain
    r2 = Relay(qconfig(pp, cp, spool, 'memory = "2MiB"\nwhen_full = "block"\nsegment_size = "1MiB"', admin=ap), work, name="relay2")
    r2.wait_log("queue route ready")
    got = drain(cp, acked, limit=60)
    seen = set(numbers(got))
    missing = [i for i in range(acked) if i not in seen]
    print("acked", acked, "received", len(seen), "missing", len(missing), missing[:5], missing[-5:] if missing else "")
    r2.signal(signal.SIGTERM)
    print("r2 exit", r2.wait_exit(30))
    r2.kill()
finally:
    if r:
        r.kill()
    umount(MNT)
