/* jspeer -- bench/jetstream.sh's light producer and consumer: as little work
 * per message as ackbench's raw JetStream publisher does (copy a template,
 * write the id), so that on a small box the peers take as little CPU from the
 * relay and the servers as the raw run's client does.
 *
 *   jspeer gen   HOST:PORT FRAMING SIZE COUNT [TIMEOUT_S]
 *   jspeer count HOST:PORT FRAMING SIZE COUNT [TIMEOUT_S]
 *
 * FRAMING lines: a message is 16 hex digits of its id (0 .. COUNT-1), 'x'
 *   padding, '\n': SIZE bytes in all. len32: a u32 big-endian length SIZE-4,
 *   then 16 hex digits of the id and 'x' padding: SIZE bytes with the prefix.
 *   SIZE >= 20.
 * gen: connects, sends COUNT messages with large blocking writes (1 MiB
 *   buffers), shuts down its side, waits (bounded) until the peer acknowledged
 *   every byte (SIOCOUTQ == 0), prints
 *     sent=N bytes=B t_start_ns=T t_end_ns=T
 *   (CLOCK_MONOTONIC; start = connected, end = everything acknowledged).
 * count: connects (retrying a refused connect for 5 s), reads and splits the
 *   stream, and per message checks the framing and the id: first arrival
 *   unique++, again dups++, below the highest id so far reordered++, skipping
 *   ids gaps++ (one per skip), malformed bad++. Stops when every id arrived
 *   (or at EOF / timeout) and prints
 *     unique= dups= reordered= gaps= bad= bytes= t_first_ns= t_last_ns= status=
 *   status=ok (exit 0) iff unique == COUNT and nothing else counted.
 * The payload bytes after the id are not checked (consumer.c in
 * crates/spillway/tests/peers checks every byte; bench/jetstream.sh runs it
 * with PEERS=verify).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int dial(const char *hostport, int retry) {
    char host[64];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host) return -1;
    memcpy(host, hostport, colon - hostport);
    host[colon - hostport] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return -1;
    for (int i = 0; i < (retry ? 250 : 1); i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0) return -1;
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) return s;
        close(s);
        if (errno != ECONNREFUSED) return -1;
        usleep(20000);
    }
    return -1;
}

static const char HEX[] = "0123456789abcdef";

static void put_id(char *p, uint64_t id) {
    for (int j = 15; j >= 0; j--, id >>= 4) p[j] = HEX[id & 15];
}

static int get_id(const char *p, uint64_t *id) {
    uint64_t v = 0;
    for (int j = 0; j < 16; j++) {
        char c = p[j];
        unsigned d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else return 0;
        v = v << 4 | d;
    }
    *id = v;
    return 1;
}

static int gen(int s, int len32, size_t size, uint64_t count) {
    size_t cap = (1 << 20) / size * size;
    char *buf = malloc(cap), *tmpl = malloc(size);
    memset(tmpl, 'x', size);
    size_t at = 0; /* where the id goes */
    if (len32) {
        uint32_t l = htonl((uint32_t)(size - 4));
        memcpy(tmpl, &l, 4);
        at = 4;
    } else {
        tmpl[size - 1] = '\n';
    }
    for (size_t off = 0; off < cap; off += size) memcpy(buf + off, tmpl, size);
    long long t0 = now_ns();
    uint64_t id = 0, bytes = 0;
    while (id < count) {
        size_t n = 0;
        for (; n < cap && id < count; n += size, id++) put_id(buf + n + at, id);
        for (size_t w = 0; w < n;) {
            ssize_t r = write(s, buf + w, n - w);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) { perror("write"); return 4; }
            w += r;
        }
        bytes += n;
    }
    shutdown(s, SHUT_WR);
    for (int i = 0; i < 60000; i++) { /* <= 60 s */
        int q = 0;
        if (ioctl(s, SIOCOUTQ, &q) < 0 || q == 0) break;
        usleep(1000);
    }
    long long t1 = now_ns();
    printf("sent=%llu bytes=%llu t_start_ns=%lld t_end_ns=%lld\n", (unsigned long long)count,
           (unsigned long long)bytes, t0, t1);
    close(s);
    return 0;
}

static int count_msgs(int s, int len32, size_t size, uint64_t count) {
    uint8_t *seen = calloc(count / 8 + 1, 1);
    size_t cap = 1 << 20;
    char *buf = malloc(cap + size);
    size_t have = 0;
    uint64_t unique = 0, dups = 0, reordered = 0, gaps = 0, bad = 0, bytes = 0;
    int64_t highest = -1;
    long long first = 0, last = 0;
    while (unique < count) {
        ssize_t r = read(s, buf + have, cap - have);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        if (!first) first = now_ns();
        bytes += r;
        have += r;
        size_t off = 0;
        while (have - off >= size) {
            const char *m = buf + off;
            const char *id_at = m;
            int ok = 1;
            if (len32) {
                uint32_t l;
                memcpy(&l, m, 4);
                ok = ntohl(l) == size - 4;
                id_at = m + 4;
            } else {
                ok = m[size - 1] == '\n';
            }
            uint64_t id;
            if (!ok || !get_id(id_at, &id) || id >= count) {
                bad++; /* framing lost: give up on the rest */
                goto out;
            }
            if (seen[id >> 3] & (1 << (id & 7))) {
                dups++;
            } else {
                seen[id >> 3] |= 1 << (id & 7);
                unique++;
                if ((int64_t)id < highest) reordered++;
                else if ((int64_t)id > highest + 1) gaps++;
            }
            if ((int64_t)id > highest) highest = id;
            off += size;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
        last = now_ns();
    }
out:
    close(s);
    const char *status = unique < count ? "incomplete" : (dups || reordered || gaps || bad) ? "disorder" : "ok";
    printf("unique=%llu dups=%llu reordered=%llu gaps=%llu bad=%llu bytes=%llu t_first_ns=%lld t_last_ns=%lld "
           "status=%s\n",
           (unsigned long long)unique, (unsigned long long)dups, (unsigned long long)reordered,
           (unsigned long long)gaps, (unsigned long long)bad, (unsigned long long)bytes, first, last, status);
    return strcmp(status, "ok") ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 6 || argc > 7) {
        fprintf(stderr, "usage: jspeer gen|count HOST:PORT lines|len32 SIZE COUNT [TIMEOUT_S]\n");
        return 2;
    }
    int len32 = !strcmp(argv[3], "len32");
    size_t size = strtoull(argv[4], 0, 10);
    uint64_t count = strtoull(argv[5], 0, 10);
    if ((!len32 && strcmp(argv[3], "lines")) || size < 20 || size > (1 << 20) || !count) {
        fprintf(stderr, "jspeer: bad FRAMING, SIZE (20 .. 1 MiB) or COUNT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    alarm(argc == 7 ? atoi(argv[6]) : 300);
    int gen_mode = !strcmp(argv[1], "gen");
    if (!gen_mode && strcmp(argv[1], "count")) return 2;
    int s = dial(argv[2], !gen_mode);
    if (s < 0) { perror("connect"); return 2; }
    return gen_mode ? gen(s, len32, size, count) : count_msgs(s, len32, size, count);
}
