"""Disk physically full (tmpfs) for longer than drain_timeout, then SIGTERM, and
space is freed right after the signal (another program deletes a file).
README: a batch read from a producer is retried until drain_timeout; what is
lost is counted exactly. Checks: lost count vs. the producer's TCP-acked lines."""
import sys, os, time, signal
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *

MNT = "/tmp/h/mnt_fs"
work = "/tmp/h/w_fs"
os.makedirs(work, exist_ok=True)
stall_wait = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
free_after = "--free" in sys.argv
tmpfs(MNT, "16m")
r = None
try:
    with open(MNT + "/filler", "wb") as f:
        f.write(b"x" * (10 << 20))
    pp, cp, ap = free_ports(3)
    spool = MNT + "/spool"
    extra = 'memory = 0\nwhen_full = "block"\nsegment_size = "1MiB"'
    r = Relay(qconfig(pp, cp, spool, extra, admin=ap, drain="5s"), work)
    r.wait_log("queue route ready")
    p = Producer(pp)
    end = time.time() + 30
    while p.stalled_for() < 1 and time.time() < end:
        time.sleep(0.1)
    time.sleep(stall_wait)
    acked = p.acked_lines()
    print("stalled; acked lines", acked, "free", df(MNT))
    r.signal(signal.SIGTERM)
    if free_after:
        time.sleep(0.1)
        os.remove(MNT + "/filler")
        print("filler removed, free", df(MNT))
    t0 = time.time()
    rc = r.wait_exit(60)
    print("exit", rc, "after", round(time.time() - t0, 1), "s")
    p.stop()
    p.close()
    for l in r.log().splitlines():
        if "lost" in l or "closed" in l or "stopped" in l:
            print("  ", l[:300])
    r2 = Relay(qconfig(pp, cp, spool, extra, admin=ap), work, name="relay2")
    r2.wait_log("queue route ready")
    got = drain(cp, acked, limit=60)
    seen = set(numbers(got))
    missing = [i for i in range(acked) if i not in seen]
    print("acked", acked, "received", len(seen), "missing", len(missing), missing[:3], missing[-3:] if missing else "")
    r2.signal(signal.SIGTERM)
    r2.wait_exit(30)
    r2.kill()
finally:
    if r:
        r.kill()
    umount(MNT)
