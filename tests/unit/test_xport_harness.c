/*
 * test_xport_harness.c - N UCX ranks as threads or forked processes for the
 * xport and coll tests (see test_xport_harness.h).  The parent of the
 * process mode never touches UCX: contexts are made after fork, in each
 * child, since UCX is not fork-safe.
 */
#include "test_xport_harness.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"

float xh_value(uint32_t seed, uint32_t rank, size_t i)
{
    uint64_t x = ((uint64_t)seed * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)rank << 40) ^ (uint64_t)i;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (float)((double)(x >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

/* The addresses of the current run, as seen by the calling rank. */
static __thread void *const *tl_addr;
static __thread const size_t *tl_len;
static __thread uint32_t tl_n;

int xh_peer_address(uint32_t j, const void **addr_p, size_t *len_p)
{
    if (j >= tl_n || tl_addr == NULL || tl_addr[j] == NULL) {
        return -1;
    }
    *addr_p = tl_addr[j];
    *len_p = tl_len[j];
    return 0;
}

static int64_t opt_timeout(const xh_opts_t *o)
{
    return o != NULL && o->timeout_ms > 0 ? o->timeout_ms : 10000;
}

/* ---- threads ---- */

typedef struct {
    uint32_t n;
    xh_rank_fn fn;
    void *arg;
    int64_t timeout_ms;
    int backstop_ms, spin_us;
    mp_xport_ctx_t *ctx;
    pthread_barrier_t bar;
    void *addr[XH_MAX_RANKS];
    size_t len[XH_MAX_RANKS];
    int code[XH_MAX_RANKS];
} th_shared_t;

typedef struct {
    th_shared_t *sh;
    uint32_t rank;
} th_arg_t;

static void *th_main(void *p)
{
    th_arg_t *a = p;
    th_shared_t *sh = a->sh;
    uint32_t r = a->rank;
    mp_xport_worker_t *w = NULL;
    mp_xport_ep_t *eps[XH_MAX_RANKS] = {0};
    mp_xport_worker_opts_t wo = {.rank = r,
                                 .timeout_ms = sh->timeout_ms,
                                 .backstop_ms = sh->backstop_ms,
                                 .spin_us = sh->spin_us};
    int ok = mp_xport_worker_create(sh->ctx, &wo, &w) == MP_OK &&
             mp_xport_worker_address(w, &sh->addr[r], &sh->len[r]) == MP_OK;
    pthread_barrier_wait(&sh->bar);
    for (uint32_t j = 0; ok && j < sh->n; j++) {
        if (j != r && (sh->addr[j] == NULL ||
                       mp_xport_ep_connect(w, sh->addr[j], sh->len[j], j, &eps[j]) != MP_OK)) {
            ok = 0;
        }
    }
    pthread_barrier_wait(&sh->bar);
    tl_addr = sh->addr;
    tl_len = sh->len;
    tl_n = sh->n;
    sh->code[r] = ok ? sh->fn(w, eps, r, sh->n, sh->arg) : -2;
    pthread_barrier_wait(&sh->bar);
    for (uint32_t j = 0; j < sh->n; j++) {
        mp_xport_ep_destroy(eps[j]);
    }
    pthread_barrier_wait(&sh->bar);
    mp_xport_worker_destroy(w);
    return NULL;
}

int xh_run_threads(uint32_t n, xh_rank_fn fn, void *arg, const xh_opts_t *opts, int codes[])
{
    th_shared_t sh = {.n = n,
                      .fn = fn,
                      .arg = arg,
                      .timeout_ms = opt_timeout(opts),
                      .backstop_ms = opts != NULL ? opts->backstop_ms : 0,
                      .spin_us = opts != NULL ? opts->spin_us : 0};
    if (n == 0 || n > XH_MAX_RANKS || mp_xport_ctx_create(NULL, &sh.ctx) != MP_OK) {
        return -1;
    }
    pthread_barrier_init(&sh.bar, NULL, n);
    pthread_t t[XH_MAX_RANKS];
    th_arg_t ta[XH_MAX_RANKS];
    for (uint32_t i = 0; i < n; i++) {
        ta[i] = (th_arg_t){.sh = &sh, .rank = i};
        pthread_create(&t[i], NULL, th_main, &ta[i]);
    }
    int bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        codes[i] = sh.code[i];
        bad += sh.code[i] != 0;
        mp_free(sh.addr[i]);
    }
    pthread_barrier_destroy(&sh.bar);
    mp_xport_ctx_destroy(sh.ctx);
    return bad;
}

/* ---- processes ---- */

static int full_write(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return -1;
        }
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static int full_read(int fd, void *p, size_t n)
{
    char *c = p;
    while (n > 0) {
        ssize_t k = read(fd, c, n);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return -1;
        }
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static int child_main(uint32_t n, uint32_t r, int up, int down, xh_rank_fn fn, void *arg,
                      const xh_opts_t *opts)
{
    mp_xport_ctx_t *ctx;
    mp_xport_worker_t *w;
    void *addr;
    size_t len;
    mp_xport_worker_opts_t wo = {.rank = r,
                                 .timeout_ms = opt_timeout(opts),
                                 .backstop_ms = opts != NULL ? opts->backstop_ms : 0,
                                 .spin_us = opts != NULL ? opts->spin_us : 0};
    if (mp_xport_ctx_create(NULL, &ctx) != MP_OK || mp_xport_worker_create(ctx, &wo, &w) != MP_OK ||
        mp_xport_worker_address(w, &addr, &len) != MP_OK) {
        return 100;
    }
    uint64_t l64 = len;
    if (full_write(up, &l64, sizeof(l64)) != 0 || full_write(up, addr, len) != 0) {
        return 101;
    }
    mp_free(addr);
    mp_xport_ep_t *eps[XH_MAX_RANKS] = {0};
    static void *addrs[XH_MAX_RANKS];
    static size_t lens[XH_MAX_RANKS];
    for (uint32_t j = 0; j < n; j++) {
        if (full_read(down, &l64, sizeof(l64)) != 0 || l64 > 65536) {
            return 102;
        }
        addrs[j] = mp_malloc(l64);
        lens[j] = l64;
        if (addrs[j] == NULL || full_read(down, addrs[j], l64) != 0) {
            return 103;
        }
        if (j != r && mp_xport_ep_connect(w, addrs[j], l64, j, &eps[j]) != MP_OK) {
            return 104;
        }
    }
    tl_addr = addrs;
    tl_len = lens;
    tl_n = n;
    char c = 'r';
    if (full_write(up, &c, 1) != 0 || full_read(down, &c, 1) != 0) {
        return 105;
    }
    int code = fn(w, eps, r, n, arg);
    c = 'd';
    if (full_write(up, &c, 1) != 0 || full_read(down, &c, 1) != 0) {
        return code != 0 ? code : 106;
    }
    for (uint32_t j = 0; j < n; j++) {
        mp_xport_ep_destroy(eps[j]);
    }
    mp_xport_worker_destroy(w);
    mp_xport_ctx_destroy(ctx);
    return code;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Reads one byte from each live fd (EOF counts as an answer) before the deadline. */
static void gather_bytes(uint32_t n, const int *fds, uint64_t deadline)
{
    int seen[XH_MAX_RANKS] = {0};
    uint32_t left = n;
    while (left > 0 && now_ms() < deadline) {
        struct pollfd p[XH_MAX_RANKS];
        for (uint32_t i = 0; i < n; i++) {
            p[i] = (struct pollfd){.fd = seen[i] ? -1 : fds[i], .events = POLLIN};
        }
        if (poll(p, n, 100) <= 0) {
            continue;
        }
        for (uint32_t i = 0; i < n; i++) {
            if (!seen[i] && p[i].revents != 0) {
                char c;
                if (read(fds[i], &c, 1) < 0 && errno == EINTR) {
                    continue;
                }
                seen[i] = 1;
                left--;
            }
        }
    }
}

int xh_run_procs(uint32_t n, xh_rank_fn fn, void *arg, const xh_opts_t *opts, int codes[])
{
    if (n == 0 || n > XH_MAX_RANKS) {
        return -1;
    }
    int kill_rank = opts != NULL && opts->kill_after_ms > 0 ? opts->kill_rank : -1;
    uint64_t deadline =
        now_ms() +
        1000ull * (uint64_t)(opts != NULL && opts->deadline_s > 0 ? opts->deadline_s : 60);
    signal(SIGPIPE, SIG_IGN);
    int up[XH_MAX_RANKS], down[XH_MAX_RANKS];
    pid_t pid[XH_MAX_RANKS];
    for (uint32_t i = 0; i < n; i++) {
        int u[2], d[2];
        if (pipe(u) != 0 || pipe(d) != 0) {
            return -1;
        }
        pid[i] = fork();
        if (pid[i] == 0) {
            close(u[0]);
            close(d[1]);
            for (uint32_t j = 0; j < i; j++) {
                close(up[j]);
                close(down[j]);
            }
            _exit(child_main(n, i, u[1], d[0], fn, arg, opts) & 0x7f);
        }
        close(u[1]);
        close(d[0]);
        up[i] = u[0];
        down[i] = d[1];
    }
    /* Every address to every child. */
    void *addr[XH_MAX_RANKS] = {0};
    uint64_t len[XH_MAX_RANKS] = {0};
    int setup_ok = 1;
    for (uint32_t i = 0; i < n && setup_ok; i++) {
        if (full_read(up[i], &len[i], sizeof(len[i])) != 0 || len[i] > 65536 ||
            (addr[i] = malloc(len[i])) == NULL || full_read(up[i], addr[i], len[i]) != 0) {
            setup_ok = 0;
        }
    }
    for (uint32_t i = 0; i < n && setup_ok; i++) {
        for (uint32_t j = 0; j < n; j++) {
            full_write(down[i], &len[j], sizeof(len[j]));
            full_write(down[i], addr[j], len[j]);
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        free(addr[i]);
    }
    if (setup_ok) {
        gather_bytes(n, up, deadline);
        for (uint32_t i = 0; i < n; i++) {
            full_write(down[i], "g", 1);
        }
        if (kill_rank >= 0 && (uint32_t)kill_rank < n) {
            usleep((useconds_t)opts->kill_after_ms * 1000);
            kill(pid[kill_rank], SIGKILL);
        }
        gather_bytes(n, up, deadline);
        for (uint32_t i = 0; i < n; i++) {
            full_write(down[i], "f", 1);
        }
    }
    int bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        int ws = 0;
        pid_t got = 0;
        while ((got = waitpid(pid[i], &ws, WNOHANG)) == 0 && now_ms() < deadline) {
            usleep(10000);
        }
        if (got == 0) {
            kill(pid[i], SIGKILL);
            waitpid(pid[i], &ws, 0);
            codes[i] = -1;
        } else {
            codes[i] = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
        }
        if (!setup_ok && codes[i] == 0) {
            codes[i] = -2;
        }
        bad += codes[i] != 0;
        close(up[i]);
        close(down[i]);
    }
    return bad;
}
