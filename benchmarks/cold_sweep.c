/* Cold caches at every wake-up, for valgrind's cache simulation (issue 19, i19-p50g).
 *
 * LD_PRELOADed into a broker under ``valgrind --tool=callgrind --cache-sim=yes``:
 * after every blocking ``epoll_wait``/``epoll_pwait`` (timeout != 0: where the live
 * broker's vCPU halts to the host at 1,000 msg/s) it runs ``cold_sweep()``, which
 * executes 64 KiB of distinct code (evicts the simulated I1) and then reads and writes
 * a buffer twice the simulated LL (evicts D1 and LL), so the next message starts with
 * every simulated cache cold. ``cold_sweep`` is also exported for ctypes (in-process:
 * ``callgrind_path.py --cold``). Its own misses are in this object's functions, which
 * ``cold_footprint.py`` leaves out. Build: gcc -O2 -shared -fPIC -o cold_sweep.so
 * cold_sweep.c -ldl. COLD_SWEEP_BYTES sets the buffer (default 4 MiB, for --LL=2 MiB).
 *
 * COLD_SWEEP_TO_FORWARD=N (issue 19, i19-lat4; with ``--collect-atstart=no``): count
 * only what lies on a message's latency path. Callgrind's event collection is switched
 * on after each sweep and off again at the first ``write``/``writev``/``send``/``sendmsg``
 * of at least N bytes (the forward; a PUBACK is 4), at the first ``read``/``recv`` of the
 * wake-up if its first byte is not a PUBLISH's (0x3_: the subscriber's PUBACK, which
 * nothing waits for), or at the next blocking ``epoll_wait``. The cache simulation runs all the
 * time: only the counting stops.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>
#include <valgrind/callgrind.h>

static volatile unsigned char *buffer;
static size_t buffer_bytes;
static unsigned long sweeps;

__attribute__((noinline)) static void cold_sled(void) {
    __asm__ volatile(".p2align 6\n.rept 65536\nnop\n.endr\n");
}

__attribute__((noinline)) void cold_sweep(void) {
    if (buffer == NULL) {
        const char *env = getenv("COLD_SWEEP_BYTES");
        buffer_bytes = env ? strtoul(env, NULL, 10) : (4u << 20);
        buffer = calloc(buffer_bytes, 1);
        if (buffer == NULL) return;
    }
    cold_sled();
    for (size_t i = 0; i < buffer_bytes; i += 64) buffer[i] += 1;
    sweeps++;
}

unsigned long cold_sweeps(void) { return sweeps; }

__attribute__((destructor)) static void cold_report(void) {
    if (getenv("COLD_SWEEP_REPORT")) fprintf(stderr, "cold_sweep: %lu sweeps\n", sweeps);
}

/* COLD_SWEEP_TO_FORWARD: -1 unread, 0 off, else the forward's least size. */
static long to_forward = -1;
static int collecting;   /* callgrind's collection is on (we switched it on) */
static int first_read;   /* no read yet in this wake-up */

static void collect(int on) {
    if (on != collecting) {
        CALLGRIND_TOGGLE_COLLECT;
        collecting = on;
    }
}

static void woke(int timeout, int r) {
    if (to_forward < 0) {
        const char *env = getenv("COLD_SWEEP_TO_FORWARD");
        to_forward = env ? strtol(env, NULL, 10) : 0;
    }
    if (timeout != 0 && r > 0) {
        cold_sweep();
        if (to_forward > 0) {
            collect(1);
            first_read = 1;
        }
    }
}

static void wrote(ssize_t n) {
    if (collecting && n >= to_forward) collect(0);
}

static void got(const void *buf, ssize_t n) {
    if (collecting && first_read && n > 0) {
        first_read = 0;
        if ((((const unsigned char *)buf)[0] & 0xF0) != 0x30) collect(0);
    }
}

ssize_t write(int fd, const void *buf, size_t count) {
    static ssize_t (*real)(int, const void *, size_t);
    if (real == NULL) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    ssize_t r = real(fd, buf, count);
    wrote(r);
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    static ssize_t (*real)(int, const struct iovec *, int);
    if (real == NULL) real = (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    ssize_t r = real(fd, iov, iovcnt);
    wrote(r);
    return r;
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    static ssize_t (*real)(int, const void *, size_t, int);
    if (real == NULL) real = (ssize_t (*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    ssize_t r = real(fd, buf, len, flags);
    wrote(r);
    return r;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    static ssize_t (*real)(int, const struct msghdr *, int);
    if (real == NULL) real = (ssize_t (*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
    ssize_t r = real(fd, msg, flags);
    wrote(r);
    return r;
}

ssize_t read(int fd, void *buf, size_t count) {
    static ssize_t (*real)(int, void *, size_t);
    if (real == NULL) real = (ssize_t (*)(int, void *, size_t))dlsym(RTLD_NEXT, "read");
    ssize_t r = real(fd, buf, count);
    got(buf, r);
    return r;
}

ssize_t recv(int fd, void *buf, size_t len, int flags) {
    static ssize_t (*real)(int, void *, size_t, int);
    if (real == NULL) real = (ssize_t (*)(int, void *, size_t, int))dlsym(RTLD_NEXT, "recv");
    ssize_t r = real(fd, buf, len, flags);
    got(buf, r);
    return r;
}

int epoll_wait(int fd, struct epoll_event *ev, int n, int timeout) {
    static int (*real)(int, struct epoll_event *, int, int);
    if (real == NULL) real = (int (*)(int, struct epoll_event *, int, int))dlsym(RTLD_NEXT, "epoll_wait");
    if (timeout != 0) collect(0);
    int r = real(fd, ev, n, timeout);
    woke(timeout, r);
    return r;
}

int epoll_pwait(int fd, struct epoll_event *ev, int n, int timeout, const sigset_t *mask) {
    static int (*real)(int, struct epoll_event *, int, int, const sigset_t *);
    if (real == NULL)
        real = (int (*)(int, struct epoll_event *, int, int, const sigset_t *))dlsym(RTLD_NEXT, "epoll_pwait");
    if (timeout != 0) collect(0);
    int r = real(fd, ev, n, timeout, mask);
    woke(timeout, r);
    return r;
}
