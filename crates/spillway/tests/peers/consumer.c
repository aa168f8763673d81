/*
 * consumer -- the slow consumer of issue 4, that leaves and comes back.
 *
 * usage: consumer (--connect HOST:PORT | --listen PORT) --count N [options]
 *
 *   --connect HOST:PORT  dial the relay (spillway --to listen:); a refused or
 *                        failed connect is retried every 20 ms (the relay may be
 *                        restarting). IPv4 literal.
 *   --listen PORT        be the server (spillway --to connect:); one session per
 *                        accepted connection. Prints "listening port=P".
 *   --count N            messages expected, numbered 0 .. N-1 (see producer.c).
 *   --framing lines|len32, --size B, --prefix S, --max-size B, --seed S
 *                        the producer's format, to verify every byte (--size
 *                        with len32: fixed-size frames, as producer.c).
 *   --read MIN:MAX       bytes asked per read(), uniform (default 300:10240)
 *   --sleep-us MIN:MAX   pause after each read, uniform (default 2000:8000)
 *   --rcvbuf B           SO_RCVBUF, set before connecting (default 65536; 0 =
 *                        the kernel's autotuning). A small receive buffer keeps
 *                        the TCP window small, like a real slow program's.
 *   --leave MIN:MAX      after reading a uniform random number of bytes in
 *                        [MIN, MAX] in a session, leave gracefully:
 *                        shutdown(SHUT_WR), read to EOF at the same slow pace
 *                        (counting what still arrives: whatever the relay had
 *                        already written into its socket), close, stay away
 *                        --away-ms, reconnect.
 *                        0:0 (default) = never leave before the end.
 *   --away-ms MIN:MAX    time away between sessions (default 10:100)
 *   --crash-ok           the relay is expected to crash: duplicates and torn
 *                        session tails are allowed (still: no gap, no reorder).
 *   --no-reconnect       stop at the end of the first session (direct test).
 *   --progress STEP      print "progress unique=N" whenever N crosses a multiple
 *                        of STEP (the test paces kills on it).
 *   --rng S              seed of this program's own choices (default 7).
 *   --timeout SEC        bound on the whole run (default 120).
 *
 * Every message is checked whole: a line must be exactly what producer.c
 * formats for its number; a len32 frame must carry a length in range and the
 * payload producer.c derives from its number. Then, per number n:
 *   first arrival: unique++; if n < the highest number seen so far,
 *                  reordered++; if n skips numbers, gaps++ (one per skip);
 *   again:         dups++;
 *   malformed or out of range: bad++.
 * fnv = FNV-1a 64 over the bytes of first arrivals in arrival order; equal to
 * the producer's fnv iff everything arrived once, whole, in order.
 * A session that ends (EOF or error) inside a message: torn++ and the partial
 * message is discarded (the relay restarts at a message boundary); if that
 * session was one this consumer left gracefully, cut_partial++ instead (the
 * clean cut promised a finished message) -- unless --crash-ok, where the
 * relay may have been killed while the consumer drained to EOF.
 *
 * When all N numbers were seen, it leaves gracefully one last time (so late
 * duplicates would still be counted) and prints one line:
 *   unique= dups= gaps= reordered= bad= torn= cut_partial= sessions= left=
 *   relay_closed= resets= last_errno= bytes= fnv= t_first_ns= t_last_ns= status=
 * (t_first_ns: first byte received, t_last_ns: the last new message completed;
 * CLOCK_MONOTONIC, comparable with producer.c's).
 * status=ok (exit 0) iff unique == N, gaps == reordered == bad == cut_partial
 * == 0 and, unless --crash-ok, dups == torn == 0. Otherwise status is
 * incomplete | timeout | disorder, exit 1. Usage/socket errors exit 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "format.h"

#define LINE_CAP 8192
#define MAX_NOTES 10

enum framing { LINES, LEN32 };

static struct {
    int listen_port; /* -1: connect mode */
    char host[64];
    int port;
    uint64_t count;
    enum framing framing;
    size_t size;
    const char *prefix;
    size_t max_size;
    uint64_t seed;
    size_t read_min, read_max;
    unsigned sleep_min, sleep_max;
    int rcvbuf;
    uint64_t leave_min, leave_max;
    unsigned away_min, away_max;
    int crash_ok, no_reconnect;
    uint64_t progress;
    uint64_t rng;
    int timeout_s;
} opt = {-1, "", 0, 0, LINES, 0, "", 1u << 20, 1, 300, 10240, 2000, 8000, 65536,
         0, 0, 10, 100, 0, 0, 0, 7, 120};

static struct {
    uint64_t unique, dups, gaps, reordered, bad, torn, cut_partial;
    uint64_t sessions, left, relay_closed, resets, bytes;
    int last_errno;
    uint64_t fnv;
    int64_t max_seen;
    uint64_t t_first, t_last;
} st = {.fnv = 0xcbf29ce484222325ull, .max_seen = -1};

static unsigned char *seen; /* bitmap of numbers seen */
static unsigned notes;

/* ---- formats (format.h, shared with producer.c) ---- */

static size_t payload_len(uint64_t n) {
    return fmt_payload_len(n, opt.size, opt.max_size, opt.seed);
}

static size_t format_line(char *p, uint64_t n) {
    return fmt_line(p, n, opt.prefix, opt.size);
}

static void format_frame(unsigned char *p, uint64_t n) {
    fmt_frame(p, n, opt.size, opt.max_size, opt.seed);
}

/* ---- helpers ---- */

static uint64_t rnd(uint64_t lo, uint64_t hi) { /* uniform in [lo, hi] */
    return hi <= lo ? lo : lo + xorshift(&opt.rng) % (hi - lo + 1);
}

static void sleep_us(uint64_t us) {
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void note(const char *fmt, unsigned long long a, unsigned long long b) {
    if (notes++ < MAX_NOTES) {
        fprintf(stderr, "consumer: ");
        fprintf(stderr, fmt, a, b);
        fputc('\n', stderr);
    }
}

static void die(const char *what) {
    fprintf(stderr, "consumer: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ---- accounting ---- */

static void record(uint64_t n, const unsigned char *msg, size_t len) {
    if (n >= opt.count) {
        st.bad++;
        note("number %llu out of range (count %llu)", n, opt.count);
        return;
    }
    if (seen[n / 8] & (1u << (n % 8))) {
        st.dups++;
        note("duplicate %llu (highest so far %llu)", n, (unsigned long long)st.max_seen);
        return;
    }
    seen[n / 8] |= (unsigned char)(1u << (n % 8));
    st.unique++;
    if ((int64_t)n < st.max_seen) {
        st.reordered++;
        note("%llu arrived after %llu", n, (unsigned long long)st.max_seen);
    } else {
        if ((int64_t)n > st.max_seen + 1) {
            st.gaps++;
            note("gap: %llu follows %llu", n, (unsigned long long)st.max_seen);
        }
        st.max_seen = (int64_t)n;
    }
    st.t_last = now_ns();
    for (size_t i = 0; i < len; i++) {
        st.fnv ^= msg[i];
        st.fnv *= 0x100000001b3ull;
    }
    if (opt.progress && st.unique % opt.progress == 0) {
        printf("progress unique=%llu\n", (unsigned long long)st.unique);
        fflush(stdout);
    }
}

/* ---- parsers: bytes in, whole messages checked and recorded ---- */

static unsigned char *msg;   /* the message being assembled */
static size_t msg_len;       /* bytes of it received so far */
static size_t msg_need;      /* len32: full frame length once the header is in */
static unsigned char *expect; /* scratch for the expected message */
static int overflow;         /* lines: the current line is longer than LINE_CAP */

static void check_line(void) {
    size_t k, plen = strlen(opt.prefix);
    uint64_t n = 0;
    int ok = !overflow && msg_len > plen + 1 && !memcmp(msg, opt.prefix, plen);
    for (k = plen; ok && k < msg_len && msg[k] >= '0' && msg[k] <= '9' && k < plen + 20; k++)
        n = n * 10 + (uint64_t)(msg[k] - '0');
    ok = ok && k > plen;
    if (ok) {
        size_t elen = format_line((char *)expect, n);
        ok = elen == msg_len && !memcmp(expect, msg, msg_len);
    }
    if (!ok) {
        st.bad++;
        note("malformed line (%llu bytes) after %llu", (unsigned long long)msg_len,
             (unsigned long long)st.max_seen);
        return;
    }
    record(n, msg, msg_len);
}

static void feed_lines(const unsigned char *p, size_t n) {
    while (n > 0) {
        const unsigned char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) + 1 : n;
        /* a line longer than LINE_CAP is only counted (and later reported) */
        if (overflow || msg_len + take > LINE_CAP) overflow = 1;
        else memcpy(msg + msg_len, p, take);
        msg_len += take;
        p += take;
        n -= take;
        if (nl) {
            check_line();
            msg_len = 0;
            overflow = 0;
        }
    }
}

/* returns 0 on a frame length that cannot be resynchronised from */
static int feed_len32(const unsigned char *p, size_t n) {
    while (n > 0) {
        size_t want = msg_len < 4 ? 4 - msg_len : msg_need - msg_len;
        size_t take = n < want ? n : want;
        memcpy(msg + msg_len, p, take);
        msg_len += take;
        p += take;
        n -= take;
        if (msg_len == 4) {
            size_t l = (size_t)msg[0] << 24 | (size_t)msg[1] << 16 | (size_t)msg[2] << 8 | msg[3];
            if (l < 8 || l > opt.max_size - 4) {
                st.bad++;
                note("frame length %llu out of range (after %llu)", (unsigned long long)l,
                     (unsigned long long)st.max_seen);
                return 0;
            }
            msg_need = 4 + l;
        } else if (msg_len > 4 && msg_len == msg_need) {
            uint64_t num = 0;
            for (int i = 0; i < 8; i++) num = num << 8 | msg[4 + i];
            if (num >= opt.count) {
                record(num, msg, msg_len); /* counts it as bad */
            } else {
                format_frame(expect, num);
                if (payload_len(num) + 4 != msg_len || memcmp(expect, msg, msg_len)) {
                    st.bad++;
                    note("frame %llu has wrong content (%llu bytes)", (unsigned long long)num,
                         (unsigned long long)msg_len);
                } else {
                    record(num, msg, msg_len);
                }
            }
            msg_len = msg_need = 0;
        }
    }
    return 1;
}

/* ---- sessions ---- */

static void set_rcvbuf(int fd) {
    if (opt.rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &opt.rcvbuf, sizeof opt.rcvbuf);
}

static int listener = -1;

/* a connected socket, or -1 at the deadline */
static int open_session(uint64_t deadline) {
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if (opt.listen_port >= 0) {
        if (listener < 0) {
            int one = 1;
            listener = socket(AF_INET, SOCK_STREAM, 0);
            if (listener < 0) die("socket");
            setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            set_rcvbuf(listener); /* inherited by accepted sockets */
            sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            sa.sin_port = htons((uint16_t)opt.listen_port);
            if (bind(listener, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
            if (listen(listener, 4) < 0) die("listen");
            socklen_t sl = sizeof sa;
            getsockname(listener, (struct sockaddr *)&sa, &sl);
            printf("listening port=%d\n", ntohs(sa.sin_port));
            fflush(stdout);
        }
        while (now_ns() < deadline) {
            struct pollfd p = {.fd = listener, .events = POLLIN};
            if (poll(&p, 1, 200) > 0) {
                int fd = accept(listener, NULL, NULL);
                if (fd >= 0) return fd;
            }
        }
        return -1;
    }
    sa.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "consumer: not an IPv4 literal: %s\n", opt.host);
        exit(2);
    }
    while (now_ns() < deadline) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        set_rcvbuf(fd);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
        close(fd);
        sleep_us(20000);
    }
    return -1;
}

/* one session: returns 0 when the run must stop (deadline, unrecoverable) */
static int run_session(int fd, uint64_t deadline) {
    uint64_t got = 0, leave_at = opt.leave_max ? rnd(opt.leave_min, opt.leave_max) : UINT64_MAX;
    int leaving = 0, sync_lost = 0;
    unsigned char *buf = malloc(opt.read_max);
    if (!buf) die("malloc");
    st.sessions++;
    for (;;) {
        if (now_ns() > deadline) {
            free(buf);
            close(fd);
            return 0;
        }
        /* leave when the session's quota is read or when everything is in */
        if (!leaving && (got >= leave_at || st.unique == opt.count)) {
            shutdown(fd, SHUT_WR);
            leaving = 1;
            st.left++;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, 200);
        if (pr == 0 || (pr < 0 && errno == EINTR)) continue;
        size_t want = (size_t)rnd(opt.read_min, opt.read_max);
        ssize_t r = read(fd, buf, want);
        if (r > 0) {
            if (!st.t_first) st.t_first = now_ns();
            got += (uint64_t)r;
            st.bytes += (uint64_t)r;
            if (!sync_lost) {
                if (opt.framing == LINES) feed_lines(buf, (size_t)r);
                else if (!feed_len32(buf, (size_t)r)) sync_lost = 1;
            }
            sleep_us(rnd(opt.sleep_min, opt.sleep_max));
            continue;
        }
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        /* the session is over: EOF (r == 0) or an error such as ECONNRESET */
        if (r < 0) {
            st.resets++;
            st.last_errno = errno;
            note("read failed: errno %llu after %llu", (unsigned long long)errno,
                 (unsigned long long)st.max_seen);
        } else if (!leaving) {
            st.relay_closed++;
        }
        if (msg_len > 0 || sync_lost) {
            /* with --crash-ok the relay may have died while we drained */
            if (leaving && r == 0 && !opt.crash_ok) {
                st.cut_partial++;
                note("graceful leave ended inside a message (%llu bytes) after %llu",
                     (unsigned long long)msg_len, (unsigned long long)st.max_seen);
            } else {
                st.torn++;
            }
        }
        msg_len = msg_need = 0;
        overflow = 0;
        free(buf);
        close(fd);
        return 1;
    }
}

static void parse_range(const char *v, uint64_t *lo, uint64_t *hi) {
    char *end;
    *lo = strtoull(v, &end, 10);
    *hi = *end == ':' ? strtoull(end + 1, NULL, 10) : *lo;
    if (*hi < *lo) *hi = *lo;
}

static void parse_args(int argc, char **argv) {
    uint64_t lo, hi;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--crash-ok")) { opt.crash_ok = 1; continue; }
        if (!strcmp(a, "--no-reconnect")) { opt.no_reconnect = 1; continue; }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        i++;
        if (!strcmp(a, "--listen")) opt.listen_port = atoi(v);
        else if (!strcmp(a, "--connect")) {
            const char *colon = strrchr(v, ':');
            if (!colon || (size_t)(colon - v) >= sizeof opt.host) goto usage;
            memcpy(opt.host, v, (size_t)(colon - v));
            opt.host[colon - v] = 0;
            opt.port = atoi(colon + 1);
        } else if (!strcmp(a, "--count")) opt.count = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--framing")) {
            if (!strcmp(v, "lines")) opt.framing = LINES;
            else if (!strcmp(v, "len32")) opt.framing = LEN32;
            else goto usage;
        } else if (!strcmp(a, "--size")) opt.size = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--prefix")) opt.prefix = v;
        else if (!strcmp(a, "--max-size")) opt.max_size = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--seed")) opt.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--read")) {
            parse_range(v, &lo, &hi);
            opt.read_min = lo ? lo : 1;
            opt.read_max = hi ? hi : 1;
        } else if (!strcmp(a, "--sleep-us")) {
            parse_range(v, &lo, &hi);
            opt.sleep_min = (unsigned)lo;
            opt.sleep_max = (unsigned)hi;
        } else if (!strcmp(a, "--rcvbuf")) opt.rcvbuf = atoi(v);
        else if (!strcmp(a, "--leave")) parse_range(v, &opt.leave_min, &opt.leave_max);
        else if (!strcmp(a, "--away-ms")) {
            parse_range(v, &lo, &hi);
            opt.away_min = (unsigned)lo;
            opt.away_max = (unsigned)hi;
        } else if (!strcmp(a, "--progress")) opt.progress = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--rng")) opt.rng = strtoull(v, NULL, 10) | 1;
        else if (!strcmp(a, "--timeout")) opt.timeout_s = atoi(v);
        else goto usage;
    }
    if ((opt.listen_port < 0) == (opt.host[0] == 0) || opt.count == 0) goto usage;
    if (opt.framing == LEN32 && opt.size && (opt.size < 12 || opt.size > opt.max_size)) goto usage;
    if (opt.size > 4096 || strlen(opt.prefix) > 64 || opt.max_size < 12 ||
        opt.max_size > (64u << 20) || opt.read_max > (16u << 20))
        goto usage;
    return;
usage:
    fprintf(stderr, "usage: consumer (--connect HOST:PORT | --listen PORT) --count N "
                    "[--framing lines|len32] [--size B] [--prefix S] [--max-size B] [--seed S] "
                    "[--read MIN:MAX] [--sleep-us MIN:MAX] [--rcvbuf B] [--leave MIN:MAX] "
                    "[--away-ms MIN:MAX] [--crash-ok] [--no-reconnect] [--progress STEP] "
                    "[--rng S] [--timeout SEC]\n");
    exit(2);
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)opt.timeout_s + 10); /* backstop; the loops check the deadline */
    uint64_t deadline = now_ns() + (uint64_t)opt.timeout_s * 1000000000ull;
    seen = calloc(opt.count / 8 + 1, 1);
    size_t cap = opt.framing == LEN32 ? opt.max_size : LINE_CAP;
    msg = malloc(cap);
    expect = malloc(cap + 128);
    if (!seen || !msg || !expect) die("malloc");

    int timed_out = 0;
    while (st.unique < opt.count) {
        int fd = open_session(deadline);
        if (fd < 0 || !run_session(fd, deadline)) {
            timed_out = 1;
            break;
        }
        if (opt.no_reconnect) break;
        if (st.unique < opt.count) sleep_us(1000ull * rnd(opt.away_min, opt.away_max));
    }

    int disorder = st.gaps || st.reordered || st.bad || st.cut_partial ||
                   (!opt.crash_ok && (st.dups || st.torn));
    const char *status = disorder                  ? "disorder"
                         : st.unique == opt.count ? "ok"
                         : timed_out              ? "timeout"
                                                  : "incomplete";
    printf("unique=%llu dups=%llu gaps=%llu reordered=%llu bad=%llu torn=%llu cut_partial=%llu "
           "sessions=%llu left=%llu relay_closed=%llu resets=%llu last_errno=%d bytes=%llu "
           "fnv=%016llx t_first_ns=%llu t_last_ns=%llu status=%s\n",
           (unsigned long long)st.unique, (unsigned long long)st.dups,
           (unsigned long long)st.gaps, (unsigned long long)st.reordered,
           (unsigned long long)st.bad, (unsigned long long)st.torn,
           (unsigned long long)st.cut_partial, (unsigned long long)st.sessions,
           (unsigned long long)st.left, (unsigned long long)st.relay_closed,
           (unsigned long long)st.resets, st.last_errno, (unsigned long long)st.bytes,
           (unsigned long long)st.fnv, (unsigned long long)st.t_first,
           (unsigned long long)st.t_last, status);
    return strcmp(status, "ok") ? 1 : 0;
}
