/* The benchmark's low-overhead SSE client (live mode only): recv() and a timestamp, nothing else.
 *
 * Built by bench_client.py with the system C compiler when there is one. It connects N sockets to
 * one event stream, sends the request, reads each response head, prints "ready", then loops
 * epoll_wait -> recv -> clock_gettime(CLOCK_MONOTONIC) (what Python's time.monotonic_ns() reads),
 * appending (t_poll, t_recv, fd, bytes) to memory, plus a substring count of the end marker that
 * says when a stream is done. It prints "done", then writes the records to a file; bench_client.py
 * parses them after the run (bench_sse), as it does its own records.
 *
 * argv: host port request_file clients end_count timeout_s out_file
 * out_file: "SCR1", u32 count of fds in connect order, i32 fds..., then records
 * (i64 t_poll, i64 t_recv, i32 fd, u32 len, bytes); heads are records with t_poll == t_recv.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RECV_SIZE (256 * 1024)
static const char END_MARKER[] = "event: turn.completed";
static const char CHUNKED_END[] = "\r\n0\r\n\r\n";

static char *records;
static size_t used, capacity;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void record(int64_t t_poll, int64_t t_recv, int32_t fd, const char *data, uint32_t len) {
    size_t need = 8 + 8 + 4 + 4 + (size_t)len;
    if (used + need > capacity) {
        capacity = (capacity + need) * 2;
        records = realloc(records, capacity);
        if (!records) die("realloc");
    }
    char *p = records + used;
    memcpy(p, &t_poll, 8);
    memcpy(p + 8, &t_recv, 8);
    memcpy(p + 16, &fd, 4);
    memcpy(p + 20, &len, 4);
    memcpy(p + 24, data, len);
    used += need;
}

static size_t count(const char *hay, size_t n, const char *needle) {
    size_t k = strlen(needle), found = 0;
    const char *p = hay, *end = hay + n;
    while (p + k <= end && (p = memmem(p, (size_t)(end - p), needle, k)) != NULL) {
        found++;
        p += k;
    }
    return found;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: host port request_file clients end_count timeout_s out_file\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), clients = atoi(argv[4]), end_count = atoi(argv[5]);
    double timeout = atof(argv[6]);
    FILE *rf = fopen(argv[3], "rb");
    if (!rf) die("request file");
    char request[8192];
    size_t request_len = fread(request, 1, sizeof request, rf);
    fclose(rf);

    int *fds = calloc((size_t)clients, sizeof(int));
    int *counts = calloc((size_t)clients, sizeof(int));
    char (*tails)[32] = calloc((size_t)clients, 32);
    int max_fd = 0;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    for (int i = 0; i < clients; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fds[i] = fd;
        if (fd > max_fd) max_fd = fd;
    }
    int *slot = calloc((size_t)max_fd + 1, sizeof(int));
    for (int i = 0; i < clients; i++) {
        slot[fds[i]] = i;
        if (send(fds[i], request, request_len, 0) != (ssize_t)request_len) die("send");
    }
    static char buf[RECV_SIZE];
    for (int i = 0; i < clients; i++) {  /* the response head (and whatever came with it) */
        size_t have = 0;
        while (!memmem(buf, have, "\r\n\r\n", 4)) {
            ssize_t n = recv(fds[i], buf + have, sizeof buf - have, 0);
            if (n <= 0) die("the server closed the stream");
            have += (size_t)n;
        }
        if (!memmem(buf, have < 16 ? have : 16, " 200", 4)) {
            fprintf(stderr, "unexpected response: %.200s\n", buf);
            return 2;
        }
        int64_t t = now_ns();
        record(t, t, fds[i], buf, (uint32_t)have);
    }
    printf("ready\n");
    fflush(stdout);

    int ep = epoll_create1(0);
    for (int i = 0; i < clients; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) die("epoll_ctl");
    }
    int remaining = clients;
    int64_t deadline = now_ns() + (int64_t)(timeout * 1e9);
    size_t keep = sizeof END_MARKER - 2;
    struct epoll_event ready[256];
    char joined[RECV_SIZE + 32];
    while (remaining > 0) {
        int64_t left = deadline - now_ns();
        if (left <= 0) break;
        int n = epoll_wait(ep, ready, 256, (int)(left / 1000000) + 1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        int64_t t_poll = now_ns();
        for (int k = 0; k < n; k++) {
            int fd = ready[k].data.fd;
            ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
            int64_t t_recv = now_ns();
            if (got < 0) got = 0;
            record(t_poll, t_recv, fd, buf, (uint32_t)got);
            int i = slot[fd];
            size_t tail_len = strnlen(tails[i], keep);
            memcpy(joined, tails[i], tail_len);
            memcpy(joined + tail_len, buf, (size_t)got);
            counts[i] += (int)count(joined, tail_len + (size_t)got, END_MARKER);
            size_t total = tail_len + (size_t)got, take = total < keep ? total : keep;
            memset(tails[i], 0, 32);
            memcpy(tails[i], joined + total - take, take);
            int ended = got == 0 || (got >= 7 && memcmp(buf + got - 7, CHUNKED_END, 7) == 0);
            if (counts[i] >= end_count || ended) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                remaining--;
            }
        }
    }
    printf("done\n");
    fflush(stdout);
    FILE *out = fopen(argv[7], "wb");
    if (!out) die("out file");
    uint32_t nfds = (uint32_t)clients;
    fwrite("SCR1", 1, 4, out);
    fwrite(&nfds, 4, 1, out);
    fwrite(fds, sizeof(int32_t), (size_t)clients, out);
    fwrite(records, 1, used, out);
    fclose(out);
    for (int i = 0; i < clients; i++) close(fds[i]);
    return 0;
}
