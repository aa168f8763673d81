/* sink PORT BYTES: accept one connection, read and discard BYTES bytes;
 * print the first and last byte's times (CLOCK_MONOTONIC ns). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static long long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    long long want = atoll(argv[2]), got = 0, first = 0, last = 0;
    int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(l, (void *)&a, sizeof a) || listen(l, 1)) { perror("listen"); return 2; }
    printf("listening\n"); fflush(stdout);
    int c = accept(l, 0, 0);
    static char buf[1 << 20];
    while (got < want) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n <= 0) break;
        if (!first) first = now();
        got += n; last = now();
    }
    printf("bytes=%lld t_first_ns=%lld t_last_ns=%lld\n", got, first, last);
    return got == want ? 0 : 1;
}
