/*
 * pull.c: the bare libzmq baseline of tests/bench/compare.sh.
 *
 *   pull ENDPOINT COUNT
 *
 * Binds a libzmq PULL socket at ENDPOINT (default options), receives COUNT
 * messages (zmq_msg_recv, no copy, no parsing), counts them and exits.
 *
 * Prints one line to stdout when done:
 *
 *   received=<n> bytes=<total payload bytes> cpu_us=<user+system> done_us=<unix us>
 *
 * cpu_us is this process's CPU time (getrusage RUSAGE_SELF, every thread,
 * libzmq's I/O thread included) from just after the bind until the last message;
 * done_us is the wall-clock time (CLOCK_REALTIME, microseconds since the epoch)
 * at which the last message was received, for the script to compare with the
 * time it started the sender.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <zmq.h>

static long long cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000LL +
           ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

static void die(const char *what)
{
    fprintf(stderr, "pull: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s ENDPOINT COUNT\n", argv[0]);
        return 2;
    }
    const char *endpoint = argv[1];
    unsigned long long count = strtoull(argv[2], NULL, 10);

    void *ctx = zmq_ctx_new();
    if (!ctx)
        die("zmq_ctx_new");
    void *sock = zmq_socket(ctx, ZMQ_PULL);
    if (!sock)
        die("zmq_socket");
    if (zmq_bind(sock, endpoint) != 0)
        die("zmq_bind");

    long long cpu0 = cpu_us();
    unsigned long long received = 0, bytes = 0;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    while (received < count) {
        int n = zmq_msg_recv(&msg, sock, 0);
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            die("zmq_msg_recv");
        }
        received++;
        bytes += (unsigned long long)n;
    }
    long long cpu1 = cpu_us();
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    zmq_msg_close(&msg);

    printf("received=%llu bytes=%llu cpu_us=%lld done_us=%lld\n", received, bytes,
           cpu1 - cpu0, (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000);
    fflush(stdout);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return 0;
}
