/*
 * producer -- the fragile fast producer of issue 4, for the queue-mode tests.
 *
 * usage: producer (--listen PORT | --connect HOST:PORT) --count N [options]
 *
 *   --listen PORT        be a TCP server (spillway dials it with --from connect:);
 *                        PORT 0 picks a free port. Prints "listening port=P" on
 *                        stdout as soon as it listens, then serves ONE connection.
 *   --connect HOST:PORT  be a TCP client (spillway --from listen:). IPv4 literal.
 *   --count N            messages to send, numbered 0 .. N-1.
 *   --framing lines|len32   (default lines)
 *   --size BYTES         lines: pad every line to BYTES (incl. '\n'), see below;
 *                        len32: every frame is BYTES long (prefix included).
 *                        At most 4096.
 *   --prefix STR         lines: put STR before the number (several producers).
 *   --max-size BYTES     len32: largest frame incl. the 4-byte prefix (1 MiB).
 *   --seed S             len32: seed of the sizes and payloads (default 1).
 *   --rate MSGS          send at most MSGS messages per second (0 = unpaced,
 *                        the default): a steady fast producer, paced every 1 ms.
 *   --on-eagain give-up|block   (default give-up) what a full send buffer means.
 *   --sndbuf BYTES       SO_SNDBUF (default 65536; the kernel doubles it; 0 =
 *                        the kernel's autotuning, for a benchmark generator).
 *   --timeout SEC        bound on the whole run (default 120).
 *
 * THE scenario: the socket is non-blocking and, with --on-eagain give-up, the
 * moment send() reports EAGAIN/EWOULDBLOCK the producer treats it as fatal, as
 * the real program in the issue does: it prints "gave_up_at=<k>" (k = messages
 * completely handed to the kernel), resets the connection (SO_LINGER 0) and
 * exits 3. A partial send is not a failure: the rest of the same message is
 * sent by the next send() call (and only if that one reports EAGAIN does the
 * producer give up). With --on-eagain block it waits in poll() for POLLOUT
 * instead and counts how often it had to ("blocked=<n>").
 *
 * Formats (shared with consumer.c; keep them in sync):
 *   lines  "<prefix><n>\n", or with --size S: "<prefix><n> " + padding + "\n",
 *          S bytes in all, the padding byte at line offset p being
 *          'a' + (n + p) % 26 (a line never gets shorter than prefix, number,
 *          space, one padding byte and '\n').
 *   len32  a 4-byte big-endian length L, then L payload bytes: payload bytes
 *          0..7 are n (big-endian u64), then the outputs of xorshift64
 *          seeded with mix(seed, n), 8 little-endian bytes per step (the last
 *          step truncated). L is drawn from mix(seed ^ 0x5eed, n): log-uniform
 *          in [8, max-size - 4], and every 50th message
 *          (n % 50 == 49) has the largest size, so both tiny and 1 MiB frames
 *          occur. With --size, every L is size - 4 instead.
 *
 * On success: shutdown(SHUT_WR), wait (bounded) until the peer acknowledged
 * every byte (SIOCOUTQ == 0), close, print
 *   "sent=<n> bytes=<b> fnv=<16 hex digits> blocked=<n> t_start_ns=<t> t_end_ns=<t>"
 * and exit 0. fnv is FNV-1a 64 over every byte sent; t_start_ns (connection
 * established) and t_end_ns (everything acknowledged) are CLOCK_MONOTONIC,
 * comparable with consumer.c's timestamps (the benchmark uses them). Exit codes: 0 sent everything,
 * 2 usage/socket setup error, 3 gave up on EAGAIN, 4 send failed (reset,
 * EPIPE...: "send_failed_at=<k> errno=<e>"), 5 timeout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "format.h"

#define BATCH_CAP (64u << 10) /* bytes formatted per send() attempt */

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
    uint64_t rate;
    int block;
    int sndbuf;
    int timeout_s;
} opt = {-1, "", 0, 0, LINES, 0, "", 1u << 20, 1, 0, 0, 65536, 120};

static void die(const char *what) {
    fprintf(stderr, "producer: %s: %s\n", what, strerror(errno));
    exit(2);
}

static size_t payload_len(uint64_t n) {
    return fmt_payload_len(n, opt.size, opt.max_size, opt.seed);
}

static size_t format_line(char *p, uint64_t n) {
    return fmt_line(p, n, opt.prefix, opt.size);
}

static size_t frame_len(uint64_t n) {
    return opt.framing == LEN32 ? 4 + payload_len(n) : 0;
}

static void format_frame(unsigned char *p, uint64_t n) {
    fmt_frame(p, n, opt.size, opt.max_size, opt.seed);
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
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
        else if (!strcmp(a, "--rate")) opt.rate = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--on-eagain")) {
            if (!strcmp(v, "give-up")) opt.block = 0;
            else if (!strcmp(v, "block")) opt.block = 1;
            else goto usage;
        } else if (!strcmp(a, "--sndbuf")) opt.sndbuf = atoi(v);
        else if (!strcmp(a, "--timeout")) opt.timeout_s = atoi(v);
        else goto usage;
    }
    if ((opt.listen_port < 0) == (opt.host[0] == 0)) goto usage;
    if (opt.framing == LEN32 && opt.size && (opt.size < 12 || opt.size > opt.max_size)) goto usage;
    if (opt.size > 4096 || strlen(opt.prefix) > 64 || opt.max_size < 12 ||
        opt.max_size > (64u << 20))
        goto usage;
    return;
usage:
    fprintf(stderr, "usage: producer (--listen PORT | --connect HOST:PORT) --count N "
                    "[--framing lines|len32] [--size B] [--prefix S] [--max-size B] [--seed S] "
                    "[--rate MSGS] [--on-eagain give-up|block] [--sndbuf B] [--timeout SEC]\n");
    exit(2);
}

/* a connected, non-blocking socket with the small send buffer */
static int open_socket(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET};
    int fd;
    if (opt.listen_port >= 0) {
        int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (l < 0) die("socket");
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = htons((uint16_t)opt.listen_port);
        if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
        if (listen(l, 1) < 0) die("listen");
        socklen_t sl = sizeof sa;
        getsockname(l, (struct sockaddr *)&sa, &sl);
        printf("listening port=%d\n", ntohs(sa.sin_port));
        fflush(stdout);
        fd = accept(l, NULL, NULL); /* bounded by alarm() */
        if (fd < 0) die("accept");
        close(l);
    } else {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (opt.sndbuf > 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &opt.sndbuf, sizeof opt.sndbuf);
        sa.sin_port = htons((uint16_t)opt.port);
        if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1) {
            fprintf(stderr, "producer: not an IPv4 literal: %s\n", opt.host);
            exit(2);
        }
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    }
    if (opt.sndbuf > 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &opt.sndbuf, sizeof opt.sndbuf);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
    return fd;
}

/* resets the connection, as the fragile producer does on any trouble */
static void reset_and_close(int fd) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)opt.timeout_s + 5); /* backstop; the loops check the deadline */
    int fd = open_socket();
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)opt.timeout_s * 1000000000ull;

    size_t cap = opt.framing == LEN32 ? opt.max_size + BATCH_CAP : BATCH_CAP + 8192;
    unsigned char *buf = malloc(cap);
    if (!buf) die("malloc");
    uint64_t next = 0;     /* next message to format */
    uint64_t done = 0;     /* messages completely handed to the kernel */
    uint64_t bytes = 0, blocked = 0, fnv = 0xcbf29ce484222325ull;
    size_t off = 0, len = 0; /* pending bytes: buf[off..len) */
    /* ends[i]: message number whose last byte sits at batch end offset ends_off[i] */
    size_t nends = 0, ends_cap = 1 << 16;
    size_t *ends_off = malloc(ends_cap * sizeof *ends_off);
    if (!ends_off) die("malloc");
    size_t ends_done = 0;

    while (done < opt.count) {
        if (now_ns() > deadline) {
            printf("timeout sent=%llu\n", (unsigned long long)done);
            return 5;
        }
        if (off == len) {
            /* refill: as many messages as the pace allows, at most one batch */
            uint64_t allowed = opt.count;
            if (opt.rate) {
                uint64_t el = now_ns() - t0;
                allowed = (uint64_t)((double)el * (double)opt.rate / 1e9) + 1;
                if (allowed > opt.count) allowed = opt.count;
                if (allowed <= next) {
                    struct timespec ts = {0, 1000000}; /* 1 ms ticks */
                    nanosleep(&ts, NULL);
                    continue;
                }
            }
            off = len = nends = ends_done = 0;
            while (next < allowed && nends < ends_cap) {
                size_t need = opt.framing == LEN32 ? frame_len(next) : opt.size + 96;
                if (len > 0 && len + need > BATCH_CAP) break;
                if (opt.framing == LEN32) {
                    format_frame(buf + len, next);
                    len += need;
                } else {
                    len += format_line((char *)buf + len, next);
                }
                ends_off[nends++] = len;
                next++;
            }
        }
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            for (ssize_t i = 0; i < n; i++) {
                fnv ^= buf[off + (size_t)i];
                fnv *= 0x100000001b3ull;
            }
            off += (size_t)n;
            bytes += (uint64_t)n;
            while (ends_done < nends && ends_off[ends_done] <= off) {
                ends_done++;
                done++;
            }
            continue; /* a partial send: the next send() continues the same message */
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!opt.block) {
                printf("gave_up_at=%llu bytes=%llu\n", (unsigned long long)done,
                       (unsigned long long)bytes);
                fflush(stdout);
                reset_and_close(fd);
                return 3;
            }
            blocked++;
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, 100);
            continue;
        }
        printf("send_failed_at=%llu errno=%d (%s)\n", (unsigned long long)done,
               n < 0 ? errno : 0, n < 0 ? strerror(errno) : "send returned 0");
        fflush(stdout);
        close(fd);
        return 4;
    }

    /* everything is in the kernel: half-close and wait until the peer has
     * acknowledged every byte, so "sent" means "received by the peer's TCP" */
    shutdown(fd, SHUT_WR);
    for (;;) {
        int outq = 0;
        if (ioctl(fd, SIOCOUTQ, &outq) < 0 || outq == 0) break;
        if (now_ns() > deadline) {
            printf("timeout sent=%llu unacked=%d\n", (unsigned long long)done, outq);
            return 5;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    close(fd);
    printf("sent=%llu bytes=%llu fnv=%016llx blocked=%llu t_start_ns=%llu t_end_ns=%llu\n",
           (unsigned long long)done, (unsigned long long)bytes, (unsigned long long)fnv,
           (unsigned long long)blocked, (unsigned long long)t0, (unsigned long long)now_ns());
    return 0;
}
