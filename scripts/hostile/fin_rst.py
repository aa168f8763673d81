"""Consumer: reads a little, its receive buffer fills (the relay's TCP sees it
all acknowledged), half-closes, then resets DELAY s later. README: 'consumer
half-closes, then resets: what it had not acknowledged goes back at once,
with the redeliver_on_reset window'."""
import sys, os, time, signal, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
work = "/tmp/h/w_fr"; shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
pp, cp = free_ports(2)
r = Relay(qconfig(pp, cp, work + "/spool", 'memory = "64MiB"'), work)
r.wait_log("queue route ready")
N = int(os.environ.get("N", "20000"))
produce(pp, lines(0, N))
r.wait_log("producer closed")
c = consumer(cp, rcvbuf=65536)
c.settimeout(5)
first = c.recv(100)
time.sleep(0.5)
c.shutdown(socket.SHUT_WR)
time.sleep(delay)
reset(c)
time.sleep(0.3)
got = drain(cp, N, limit=20)
seen = set(numbers(first)) | set(numbers(got))
lost = [i for i in range(N) if i not in seen]
print("first consumer read", len(numbers(first)), "lines; second got", len(numbers(got)), "first line", numbers(got)[:1])
print("LOST", len(lost), lost[:3], lost[-3:] if lost else "")
for l in r.log().splitlines():
    if "consumer closed" in l:
        print("  ", l[60:250])
r.signal(signal.SIGTERM); r.wait_exit(20); r.kill()
