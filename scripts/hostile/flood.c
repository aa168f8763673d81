// flood producer: numbered 100-byte lines as fast as possible, blocking writes,
// for at most SECS seconds or N lines. usage: flood PORT START N SECS
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <time.h>
#include <signal.h>
int main(int argc, char **argv) {
  int port = atoi(argv[1]); long start = atol(argv[2]); long n = atol(argv[3]); double secs = atof(argv[4]);
  signal(SIGPIPE, SIG_IGN);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(port); a.sin_addr.s_addr = htonl(0x7f000001);
  if (connect(s, (void*)&a, sizeof a)) { perror("connect"); return 1; }
  const int per = 10000; char *buf = malloc(per * 100);
  struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
  long next = start, sent_lines = 0;
  while (next < start + n) {
    int k = 0;
    for (; k < per && next < start + n; k++, next++) {
      char *l = buf + k * 100; int m = snprintf(l, 100, "%010ld ", next); memset(l + m, '.', 99 - m); l[99] = '\n';
    }
    size_t len = k * 100, off = 0;
    while (off < len) { ssize_t w = write(s, buf + off, len - off); if (w <= 0) { fprintf(stderr, "write error after %ld bytes\n", sent_lines*100+off); goto out; } off += w; }
    sent_lines += k;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 > secs) break;
  }
out:
  fprintf(stderr, "flood: wrote lines %ld..%ld\n", start, start + sent_lines);
  shutdown(s, SHUT_WR);
  char tmp[4096]; while (read(s, tmp, sizeof tmp) > 0) {}
  close(s);
  return 0;
}
