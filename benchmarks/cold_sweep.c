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
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>

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

int epoll_wait(int fd, struct epoll_event *ev, int n, int timeout) {
    static int (*real)(int, struct epoll_event *, int, int);
    if (real == NULL) real = (int (*)(int, struct epoll_event *, int, int))dlsym(RTLD_NEXT, "epoll_wait");
    int r = real(fd, ev, n, timeout);
    if (timeout != 0 && r > 0) cold_sweep();
    return r;
}

int epoll_pwait(int fd, struct epoll_event *ev, int n, int timeout, const sigset_t *mask) {
    static int (*real)(int, struct epoll_event *, int, int, const sigset_t *);
    if (real == NULL)
        real = (int (*)(int, struct epoll_event *, int, int, const sigset_t *))dlsym(RTLD_NEXT, "epoll_pwait");
    int r = real(fd, ev, n, timeout, mask);
    if (timeout != 0 && r > 0) cold_sweep();
    return r;
}
