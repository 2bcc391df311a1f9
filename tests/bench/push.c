/*
 * push.c: the sender of tests/bench/compare.sh.
 *
 *   push ENDPOINT COUNT [SENT_AT]
 *
 * Connects a libzmq PUSH socket to ENDPOINT, sends COUNT messages as fast as the
 * peer takes them (blocking zmq_send) and exits once every message has been
 * handed to the peer's connection (ZMQ_LINGER -1: zmq_ctx_term waits for that).
 *
 * Message i is what the host's own generator makes (host/src/publish.rs,
 * generated_message):
 *
 *   {"id":<i>,"level":"<info|debug|warn|error>","sent_at":<unix s, 6 decimals>,
 *    "msg":"generated message number <i>","value":<i%100>}
 *
 * Like the host's generator, sent_at is read once per 1024 messages. With SENT_AT
 * given, every message carries that value instead (the correctness check needs
 * two runs to send identical messages).
 *
 * Prints one line to stderr at the end: messages sent and the time it took.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

static double unix_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double mono_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "push: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(1);
}

int main(int argc, char **argv)
{
    static const char *const levels[4] = {"info", "debug", "warn", "error"};

    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s ENDPOINT COUNT [SENT_AT]\n", argv[0]);
        return 2;
    }
    const char *endpoint = argv[1];
    unsigned long long count = strtoull(argv[2], NULL, 10);
    int fixed = argc == 4;
    double fixed_sent_at = fixed ? strtod(argv[3], NULL) : 0.0;

    void *ctx = zmq_ctx_new();
    if (!ctx)
        die("zmq_ctx_new");
    void *sock = zmq_socket(ctx, ZMQ_PUSH);
    if (!sock)
        die("zmq_socket");
    int hwm = 100000; /* generous: the sender never waits on its own queue */
    int linger = -1;  /* close waits until everything is sent: nothing dropped */
    if (zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0)
        die("ZMQ_SNDHWM");
    if (zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0)
        die("ZMQ_LINGER");
    if (zmq_connect(sock, endpoint) != 0)
        die("zmq_connect");

    double start = mono_secs();
    double sent_at = fixed_sent_at;
    char buf[256];
    for (unsigned long long i = 0; i < count; i++) {
        if (!fixed && i % 1024 == 0)
            sent_at = unix_secs();
        int n = snprintf(buf, sizeof buf,
                         "{\"id\":%llu,\"level\":\"%s\",\"sent_at\":%.6f,"
                         "\"msg\":\"generated message number %llu\",\"value\":%llu}",
                         i, levels[i % 4], sent_at, i, i % 100);
        /* A PUSH socket with no peer yet, or a full queue, blocks here. */
        while (zmq_send(sock, buf, (size_t)n, 0) < 0) {
            if (zmq_errno() != EINTR)
                die("zmq_send");
        }
    }
    double queued = mono_secs();
    if (zmq_close(sock) != 0)
        die("zmq_close");
    while (zmq_ctx_term(ctx) != 0) { /* blocks until the queue is flushed */
        if (zmq_errno() != EINTR)
            die("zmq_ctx_term");
    }
    double done = mono_secs();
    fprintf(stderr, "push: sent %llu messages to %s: queued in %.3f s, flushed in %.3f s\n",
            count, endpoint, queued - start, done - start);
    return 0;
}
