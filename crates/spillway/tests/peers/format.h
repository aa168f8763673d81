/* The message formats shared by producer.c and consumer.c: the producer
 * generates messages with these functions and the consumer regenerates
 * them to check every byte. One definition, so the two cannot drift.
 * See producer.c's header for the formats themselves. */
#ifndef SPILLWAY_PEERS_FORMAT_H
#define SPILLWAY_PEERS_FORMAT_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* splitmix64 finaliser: a well-mixed per-message seed from (seed, n) */
static inline uint64_t mix(uint64_t seed, uint64_t n) {
    uint64_t z = seed ^ (n + 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z ? z : 1;
}

static inline uint64_t xorshift(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* len32 payload length of message n; `size` != 0 means fixed-size frames */
static inline size_t fmt_payload_len(uint64_t n, size_t size, size_t max_size, uint64_t seed) {
    size_t max = max_size - 4;
    if (size) return size - 4;
    if (n % 50 == 49) return max;
    uint64_t r = mix(seed ^ 0x5eed, n);
    unsigned bits = 3 + (unsigned)(r % 18); /* 2^3 .. 2^20 */
    size_t len = 8 + (size_t)((r >> 8) % (1ull << bits));
    return len > max ? max : len;
}

/* formats line n at p (room for it guaranteed by the caller); returns its length */
static inline size_t fmt_line(char *p, uint64_t n, const char *prefix, size_t size) {
    size_t k = (size_t)sprintf(p, "%s%llu", prefix, (unsigned long long)n);
    if (size == 0) {
        p[k] = '\n';
        return k + 1;
    }
    p[k++] = ' ';
    size_t len = size > k + 1 ? size : k + 2;
    for (; k < len - 1; k++) p[k] = (char)('a' + (n + k) % 26);
    p[len - 1] = '\n';
    return len;
}

/* formats len32 frame n at p (room for it guaranteed by the caller) */
static inline void fmt_frame(unsigned char *p, uint64_t n, size_t size, size_t max_size,
                             uint64_t seed) {
    size_t len = fmt_payload_len(n, size, max_size, seed);
    p[0] = (unsigned char)(len >> 24);
    p[1] = (unsigned char)(len >> 16);
    p[2] = (unsigned char)(len >> 8);
    p[3] = (unsigned char)len;
    for (int i = 0; i < 8; i++) p[4 + i] = (unsigned char)(n >> (56 - 8 * i));
    uint64_t x = mix(seed, n);
    for (size_t j = 8; j < len; j += 8) { /* 8 bytes per step, little-endian */
        uint64_t w = xorshift(&x);
        for (size_t b = 0; b < 8 && j + b < len; b++) p[4 + j + b] = (unsigned char)(w >> (8 * b));
    }
}

#endif
