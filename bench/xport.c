/*
 * xport.c - mpar-bench-xport: the UCX data plane against its peers, in one
 * run on one machine.
 *
 *   p2p_bw, p2p_lat      mpar tensor send/recv between two processes
 *                        against `ucx_perftest -t tag_bw` / `-t tag_lat`,
 *                        with UCX_TLS unset ("default") and UCX_TLS=tcp;
 *   allreduce_busbw      mp_coll_allreduce_sum_f32 over n processes
 *                        against OpenMPI's MPI_Allreduce (bench/mpi_allreduce.c
 *                        under mpirun), busbw = 2(n-1)/n * bytes / time;
 *   wakeup_latency       how long a sleeping receive takes to notice a
 *                        message, per UCX_TLS, against a pipe's one-way
 *                        wake-up between two processes (median of 21);
 *   allreduce_switch     (--switch) ring and recursive halving-doubling
 *                        against recursive doubling by size and group, the
 *                        measurement behind the MP_COLL_*_THRESHOLD_DEFAULTs.
 *
 * Every number is the best of a few alternating repetitions (the machine is
 * shared), mpar and peer measured back to back.  Ratios are oriented so that
 * higher is better for mpar: bandwidth mpar/peer, time peer/mpar.
 * The parent process only forks and parses; UCX runs in the children.
 *
 * Usage: mpar-bench-xport [--quick] [--switch] [--only p2p|p2p-tcp|wakeup|allreduce] [--bytes N] [--spin-us N] [-o json]
 * (--spin-us: the workers' busy-progress burst before they sleep; default theirs.
 *  --bytes: p2p at one of its sizes only, 8, 65536, 1048576 or 16777216.)
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "tests/unit/test_xport_harness.h"
#include "transport/coll.h"
#include "transport/ucx.h"
#include "transport/ucx_internal.h"
#include "util.h"

#define JOB 1
#define MB_ACK 8000000u

/* Results the children hand back: one slot per rank. */
static double *g_out;

static int g_quick;
static int g_json;
static int g_spin_us;      /* worker spin before sleeping; 0 = the worker's default */
static const char *g_only; /* run only the cases whose test name starts with this */
static int g_port;
static size_t g_bytes; /* --bytes: run p2p at this size only; 0 = every size */

/* ---- mpar p2p ---- */

typedef struct {
    size_t bytes;
    int iters;
    int warm;
    int window;
} p2p_arg_t;

static mp_xport_hdr_t hdr_bytes(size_t bytes, uint32_t mb)
{
    mp_xport_hdr_t h = {.job = JOB,
                        .micro_batch = mb % MP_XPORT_MB_MAX,
                        .kind = MP_XPORT_KIND_USER,
                        .dtype = MP_XPORT_DTYPE_U8,
                        .ndim = 1,
                        .shape = {bytes}};
    return h;
}

static int ack(mp_xport_ep_t *ep, int send)
{
    char c = 1;
    mp_xport_hdr_t h = hdr_bytes(1, MB_ACK);
    if (send) {
        return mp_xport_send_wait(ep, &h, &c, 0) == MP_OK ? 0 : 1;
    }
    return mp_xport_recv_wait(ep, JOB, MP_XPORT_KIND_USER, MB_ACK, &c, 1, 0, NULL) == MP_OK ? 0 : 1;
}

/* Rank 0 streams iters messages with up to window in flight; rank 1 keeps window receives posted.
 */
static int bw_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n, void *arg)
{
    (void)w;
    (void)n;
    p2p_arg_t *a = arg;
    char *buf = mp_aligned_alloc(a->bytes > 0 ? a->bytes : 1);
    mp_xport_req_t **reqs = mp_calloc((size_t)a->window, sizeof(*reqs));
    if (buf == NULL || reqs == NULL) {
        return 2;
    }
    memset(buf, 1, a->bytes);
    int total = a->warm + a->iters;
    double t0 = 0;
    for (int phase = 0; phase < 2; phase++) {
        int from = phase == 0 ? 0 : a->warm, to = phase == 0 ? a->warm : total;
        if (phase == 1) {
            if (rank == 0 ? ack(eps[1], 0) : ack(eps[0], 1)) {
                return 3;
            }
            t0 = mp_bench_now_s();
        }
        for (int i = from; i < to; i++) {
            mp_xport_req_t **slot = &reqs[i % a->window];
            if (*slot != NULL && mp_xport_wait(*slot, 0, NULL) != MP_OK) {
                return 4;
            }
            *slot = NULL;
            mp_status_t st;
            if (rank == 0) {
                mp_xport_hdr_t h = hdr_bytes(a->bytes, (uint32_t)i);
                st = mp_xport_send(eps[1], &h, buf, slot);
            } else {
                st = mp_xport_recv(eps[0], JOB, MP_XPORT_KIND_USER, (uint32_t)i % MP_XPORT_MB_MAX,
                                   buf, a->bytes, slot);
            }
            if (st != MP_OK) {
                return 5;
            }
        }
        if (mp_xport_wait_all(reqs, (size_t)a->window, 0) != MP_OK) {
            return 6;
        }
    }
    /* The receiver has everything: stop the clock when it says so. */
    if (rank == 0 ? ack(eps[1], 0) : ack(eps[0], 1)) {
        return 7;
    }
    if (rank == 0) {
        g_out[0] = (double)a->bytes * a->iters / (mp_bench_now_s() - t0);
    }
    mp_free(reqs);
    mp_free(buf);
    return 0;
}

/* Ping-pong; the answer's receive is posted before the ping goes out. */
static int lat_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n, void *arg)
{
    (void)w;
    (void)n;
    p2p_arg_t *a = arg;
    char *sbuf = mp_aligned_alloc(a->bytes), *rbuf = mp_aligned_alloc(a->bytes);
    if (sbuf == NULL || rbuf == NULL) {
        return 2;
    }
    memset(sbuf, 2, a->bytes);
    mp_xport_ep_t *peer = eps[rank == 0 ? 1 : 0];
    double t0 = 0;
    int total = a->warm + a->iters;
    for (int i = 0; i < total; i++) {
        if (i == a->warm) {
            t0 = mp_bench_now_s();
        }
        mp_xport_hdr_t h = hdr_bytes(a->bytes, (uint32_t)i);
        mp_xport_req_t *r;
        if (mp_xport_recv(peer, JOB, MP_XPORT_KIND_USER, (uint32_t)i % MP_XPORT_MB_MAX, rbuf,
                          a->bytes, &r) != MP_OK) {
            return 3;
        }
        if (rank == 0) {
            if (mp_xport_send_wait(peer, &h, sbuf, 0) != MP_OK ||
                mp_xport_wait(r, 0, NULL) != MP_OK) {
                return 4;
            }
        } else {
            if (mp_xport_wait(r, 0, NULL) != MP_OK ||
                mp_xport_send_wait(peer, &h, sbuf, 0) != MP_OK) {
                return 5;
            }
        }
    }
    if (rank == 0) {
        g_out[0] = (mp_bench_now_s() - t0) / a->iters / 2.0;
    }
    mp_free(sbuf);
    mp_free(rbuf);
    return 0;
}

static void set_tls(const char *tls)
{
    if (tls == NULL) {
        unsetenv("UCX_TLS");
    } else {
        setenv("UCX_TLS", tls, 1);
    }
}

static double run_mpar(uint32_t n, xh_rank_fn fn, void *arg, const xh_opts_t *o)
{
    int codes[XH_MAX_RANKS];
    for (uint32_t i = 0; i < XH_MAX_RANKS; i++) {
        g_out[i] = -1;
    }
    xh_opts_t def = {0};
    if (o == NULL) {
        def.spin_us = g_spin_us;
        o = &def;
    }
    if (xh_run_procs(n, fn, arg, o, codes) != 0) {
        fprintf(stderr, "mpar-bench-xport: a rank failed (codes %d %d %d %d)\n", codes[0], codes[1],
                n > 2 ? codes[2] : 0, n > 3 ? codes[3] : 0);
        return -1;
    }
    return g_out[0];
}

/* ---- ucx_perftest ---- */

/* Runs ucx_perftest server + client; returns the client's CSV value in column col, or -1. */
static double run_perftest(const char *test, size_t bytes, int iters, int warm, int window, int col)
{
    char port[16], size[32], n[16], w[16], o[16];
    g_port++;
    snprintf(port, sizeof(port), "%d", g_port);
    snprintf(size, sizeof(size), "%zu", bytes);
    snprintf(n, sizeof(n), "%d", iters);
    snprintf(w, sizeof(w), "%d", warm);
    snprintf(o, sizeof(o), "%d", window);
    pid_t server = fork();
    if (server == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execlp("ucx_perftest", "ucx_perftest", "-p", port, (char *)NULL);
        _exit(127);
    }
    double result = -1;
    for (int attempt = 0; attempt < 20 && result < 0; attempt++) {
        usleep(200000);
        int pfd[2];
        if (pipe(pfd) != 0) {
            break;
        }
        pid_t client = fork();
        if (client == 0) {
            dup2(pfd[1], 1);
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, 2);
            close(pfd[0]);
            if (window > 0) {
                execlp("ucx_perftest", "ucx_perftest", "127.0.0.1", "-p", port, "-t", test, "-s",
                       size, "-n", n, "-w", w, "-O", o, "-v", (char *)NULL);
            } else {
                execlp("ucx_perftest", "ucx_perftest", "127.0.0.1", "-p", port, "-t", test, "-s",
                       size, "-n", n, "-w", w, "-v", (char *)NULL);
            }
            _exit(127);
        }
        close(pfd[1]);
        FILE *f = fdopen(pfd[0], "r");
        char line[512];
        double last = -1;
        while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
            /* The final CSV line:
             * iterations,p50,avg_lat,overall_lat,avg_bw,overall_bw,avg_mr,overall_mr */
            char *p = line;
            while (*p == ' ') {
                p++;
            }
            if (*p < '0' || *p > '9') {
                continue;
            }
            long it = atol(p);
            char *tok = strtok(p, ",");
            for (int c = 0; tok != NULL && c < col; c++) {
                tok = strtok(NULL, ",");
            }
            if (tok != NULL && it == iters) {
                last = atof(tok);
            }
        }
        if (f != NULL) {
            fclose(f);
        }
        int ws;
        waitpid(client, &ws, 0);
        if (WIFEXITED(ws) && WEXITSTATUS(ws) == 0 && last > 0) {
            result = last;
        } else if (WIFEXITED(ws) && WEXITSTATUS(ws) == 127) {
            break;
        }
    }
    kill(server, SIGTERM);
    waitpid(server, NULL, 0);
    return result;
}

/* ---- allreduce ---- */

typedef struct {
    size_t bytes;
    int iters;
    int warm;
    mp_coll_algo_t algo;
} ar_arg_t;

static int ar_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n, void *arg)
{
    ar_arg_t *a = arg;
    mp_coll_group_t *g;
    if (mp_coll_group_create(w, 1, n, rank, eps, &g) != MP_OK) {
        return 2;
    }
    size_t count = a->bytes / sizeof(float);
    float *buf = mp_aligned_alloc(count * sizeof(float) + 64);
    if (buf == NULL) {
        return 3;
    }
    for (size_t i = 0; i < count; i++) {
        buf[i] = (float)((i + rank) % 7) * 0.25f;
    }
    for (int i = 0; i < a->warm; i++) {
        if (mp_coll_allreduce_sum_f32_algo(g, buf, count, a->algo, 0) != MP_OK) {
            return 4;
        }
    }
    if (mp_coll_barrier(g, 0) != MP_OK) {
        return 5;
    }
    double t0 = mp_bench_now_s();
    for (int i = 0; i < a->iters; i++) {
        if (mp_coll_allreduce_sum_f32_algo(g, buf, count, a->algo, 0) != MP_OK) {
            return 6;
        }
    }
    g_out[rank] = (mp_bench_now_s() - t0) / a->iters;
    mp_free(buf);
    mp_coll_group_destroy(g);
    return 0;
}

static double run_allreduce(uint32_t n, ar_arg_t *a)
{
    if (run_mpar(n, ar_rank, a, NULL) < 0) {
        return -1;
    }
    double slowest = 0;
    for (uint32_t r = 0; r < n; r++) {
        slowest = g_out[r] > slowest ? g_out[r] : slowest;
    }
    return slowest;
}

static char g_mpi_exe[PATH_MAX];

static double run_mpi(uint32_t n, size_t bytes, int iters, int warm)
{
    char cmd[PATH_MAX + 256];
    snprintf(cmd, sizeof(cmd),
             "env -u UCX_TLS timeout 120 mpirun --allow-run-as-root --oversubscribe --bind-to none "
             "-np %u %s %zu %d %d "
             "2>/dev/null",
             n, g_mpi_exe, bytes, iters, warm);
    FILE *f = popen(cmd, "r");
    if (f == NULL) {
        return -1;
    }
    char line[512];
    double t = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *p = strstr(line, "avg_s=");
        if (p != NULL) {
            t = atof(p + 6);
        }
    }
    pclose(f);
    return t;
}

/* ---- wake-up latency ---- */

#define WAKE_SAMPLES 21
#define WAKE_GAP_US 20000

/*
 * Rank 0 waits WAKE_GAP_US (so that rank 1 is asleep in its receive, not
 * spinning), stamps the time and sends one byte; rank 1 notes how long after
 * the stamp its receive returned.  Each sample is acknowledged before the
 * next.  The median of WAKE_SAMPLES goes to g_out[0].
 */
static int wake_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                     void *arg)
{
    (void)w;
    (void)n;
    (void)arg;
    char c = 0;
    mp_xport_hdr_t h = hdr_bytes(1, 1);
    double lat[WAKE_SAMPLES];
    for (int i = 0; i < WAKE_SAMPLES; i++) {
        if (rank == 0) {
            usleep(WAKE_GAP_US);
            g_out[2] = mp_bench_now_s();
            if (mp_xport_send_wait(eps[1], &h, &c, 0) != MP_OK || ack(eps[1], 0) != 0) {
                return 3;
            }
        } else {
            if (mp_xport_recv_wait(eps[0], JOB, MP_XPORT_KIND_USER, 1, &c, 1, 0, NULL) != MP_OK) {
                return 4;
            }
            lat[i] = mp_bench_now_s() - g_out[2];
            if (ack(eps[0], 1) != 0) {
                return 5;
            }
        }
    }
    if (rank == 1) {
        g_out[0] = mp_bench_median(lat, WAKE_SAMPLES);
    }
    return 0;
}

/*
 * The operating system's own wake-up, measured the same way: a process
 * blocked in read() on a pipe, woken by another process's write().  The
 * median one-way time of WAKE_SAMPLES, or -1.
 */
static double run_pipe_wakeup(void)
{
    int down[2], up[2];
    if (pipe(down) != 0) {
        return -1;
    }
    if (pipe(up) != 0) {
        close(down[0]);
        close(down[1]);
        return -1;
    }
    pid_t child = fork();
    if (child < 0) {
        return -1;
    }
    char c = 0;
    if (child == 0) {
        close(down[1]);
        close(up[0]);
        double lat[WAKE_SAMPLES];
        int i = 0;
        while (i < WAKE_SAMPLES && read(down[0], &c, 1) == 1) {
            lat[i++] = mp_bench_now_s() - g_out[3];
            if (write(up[1], &c, 1) != 1) {
                break;
            }
        }
        g_out[1] = i == WAKE_SAMPLES ? mp_bench_median(lat, WAKE_SAMPLES) : -1;
        _exit(i == WAKE_SAMPLES ? 0 : 1);
    }
    close(down[0]);
    close(up[1]);
    int ok = 1;
    for (int i = 0; i < WAKE_SAMPLES && ok; i++) {
        usleep(WAKE_GAP_US);
        g_out[3] = mp_bench_now_s();
        ok = write(down[1], &c, 1) == 1 && read(up[0], &c, 1) == 1;
    }
    close(down[1]);
    close(up[0]);
    int ws;
    waitpid(child, &ws, 0);
    return ok && WIFEXITED(ws) && WEXITSTATUS(ws) == 0 ? g_out[1] : -1;
}

/* ---- output ---- */

static json_t *g_results;

static void emit(const char *test, const char *key, json_int_t bytes, json_int_t ranks,
                 const char *tls, double mpar, double peer, const char *unit, int higher_better)
{
    json_t *r = json_object();
    json_object_set_new(r, "test", json_string(test));
    if (key != NULL) {
        json_object_set_new(r, key, json_integer(bytes));
    }
    if (ranks > 0) {
        json_object_set_new(r, "ranks", json_integer(ranks));
    }
    if (tls != NULL) {
        json_object_set_new(r, "tls", json_string(tls));
    }
    json_object_set_new(r, "mpar", mpar >= 0 ? json_real(mpar) : json_null());
    json_object_set_new(r, "peer", peer >= 0 ? json_real(peer) : json_null());
    json_object_set_new(r, "unit", json_string(unit));
    double ratio = -1;
    if (mpar > 0 && peer > 0) {
        ratio = higher_better ? mpar / peer : peer / mpar;
    }
    json_object_set_new(r, "ratio", ratio >= 0 ? json_real(ratio) : json_null());
    json_array_append_new(g_results, r);
    fprintf(g_json ? stderr : stdout,
            "%-18s %10lld B %2lld ranks %-8s mpar %12.3f  peer %12.3f %-5s ratio %.3f\n", test,
            (long long)bytes, (long long)ranks, tls != NULL ? tls : "-", mpar, peer, unit, ratio);
}

static double best(double a, double b, int higher_better)
{
    if (a < 0) {
        return b;
    }
    if (b < 0) {
        return a;
    }
    return higher_better ? (a > b ? a : b) : (a < b ? a : b);
}

static void bench_p2p(const char *tls_name, const char *tls, int reps)
{
    static const size_t sizes[] = {8, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024};
    set_tls(tls);
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t b = sizes[k];
        if (g_bytes != 0 && b != g_bytes) {
            continue;
        }
        int bw_iters = b <= 65536 ? (g_quick ? 2000 : 10000)
                                  : (b <= 1048576 ? (g_quick ? 300 : 1000) : (g_quick ? 30 : 100));
        int lat_iters = b <= 65536 ? (g_quick ? 2000 : 10000) : (g_quick ? 100 : 300);
        if (b >= 16 * 1024 * 1024) {
            lat_iters = g_quick ? 20 : 60;
        }
        p2p_arg_t bw = {.bytes = b, .iters = bw_iters, .warm = bw_iters / 10 + 1, .window = 16};
        p2p_arg_t lat = {.bytes = b, .iters = lat_iters, .warm = lat_iters / 10 + 1, .window = 1};
        double mb = -1, pb = -1, ml = -1, pl = -1;
        for (int r = 0; r < reps; r++) {
            mb = best(mb, run_mpar(2, bw_rank, &bw, NULL), 1);
            double p = run_perftest("tag_bw", b, bw.iters, bw.warm, bw.window, 5);
            pb = best(pb, p > 0 ? p * 1048576.0 : -1, 1);
            ml = best(ml, run_mpar(2, lat_rank, &lat, NULL), 0);
            p = run_perftest("tag_lat", b, lat.iters, lat.warm, 0, 3);
            pl = best(pl, p > 0 ? p * 1e-6 : -1, 0);
        }
        emit("p2p_bw", "bytes", (json_int_t)b, 0, tls_name, mb > 0 ? mb / 1e9 : -1,
             pb > 0 ? pb / 1e9 : -1, "GB/s", 1);
        emit("p2p_lat", "bytes", (json_int_t)b, 0, tls_name, ml > 0 ? ml * 1e6 : -1,
             pl > 0 ? pl * 1e6 : -1, "us", 0);
    }
    set_tls(NULL);
}

/* A sleeping receive woken by a message, against a pipe's one-way wake-up in the same run. */
static void bench_wakeup(const char *tls_name, const char *tls)
{
    set_tls(tls);
    /* A backstop of a second: a receive that waits for it shows as ~1e6 us. */
    xh_opts_t o = {.backstop_ms = 1000, .spin_us = -1};
    double wl = -1, pw = -1;
    for (int r = 0; r < 2; r++) {
        wl = best(wl, run_mpar(2, wake_rank, NULL, &o), 0);
        pw = best(pw, run_pipe_wakeup(), 0);
    }
    emit("wakeup_latency", NULL, 0, 0, tls_name, wl > 0 ? wl * 1e6 : -1, pw > 0 ? pw * 1e6 : -1,
         "us", 0);
    set_tls(NULL);
}

static void bench_allreduce(int reps)
{
    static const size_t sizes[] = {4096, 1024 * 1024, 64 * 1024 * 1024};
    static const uint32_t ranks[] = {2, 4};
    for (size_t i = 0; i < 2; i++) {
        for (size_t k = 0; k < 3; k++) {
            size_t b = sizes[k];
            uint32_t n = ranks[i];
            int iters = b <= 4096 ? (g_quick ? 1000 : 5000)
                                  : (b <= 1048576 ? (g_quick ? 50 : 200) : (g_quick ? 3 : 10));
            int warm = iters / 10 + 1;
            ar_arg_t a = {.bytes = b, .iters = iters, .warm = warm, .algo = MP_COLL_ALGO_AUTO};
            double mt = -1, pt = -1;
            for (int r = 0; r < reps; r++) {
                mt = best(mt, run_allreduce(n, &a), 0);
                pt = best(pt, run_mpi(n, b, iters, warm), 0);
            }
            double f = 2.0 * (n - 1) / n * (double)b;
            emit("allreduce_busbw", "bytes", (json_int_t)b, n, "default",
                 mt > 0 ? f / mt / 1e9 : -1, pt > 0 ? f / pt / 1e9 : -1, "GB/s", 1);
        }
    }
}

static void bench_switch(void)
{
    static const char *names[] = {"auto", "rd", "ring", "rhd"};
    for (uint32_t n = 2; n <= 4; n++) {
        for (size_t b = 1024; b <= 16 * 1024 * 1024; b *= 4) {
            int iters = b <= 65536 ? 300 : (b <= 1048576 ? 40 : 8);
            double t[4] = {-1, -1, -1, -1};
            for (int rep = 0; rep < 2; rep++) {
                for (int a = MP_COLL_ALGO_RD; a <= MP_COLL_ALGO_RHD; a++) {
                    ar_arg_t arg = {.bytes = b,
                                    .iters = iters,
                                    .warm = iters / 10 + 1,
                                    .algo = (mp_coll_algo_t)a};
                    t[a] = best(t[a], run_allreduce(n, &arg), 0);
                }
            }
            /* "peer" is recursive doubling: a ratio > 1 means the algorithm beats it. */
            for (int a = MP_COLL_ALGO_RING; a <= MP_COLL_ALGO_RHD; a++) {
                emit("allreduce_switch", "bytes", (json_int_t)b, n, NULL,
                     t[a] > 0 ? t[a] * 1e6 : -1,
                     t[MP_COLL_ALGO_RD] > 0 ? t[MP_COLL_ALGO_RD] * 1e6 : -1, "us", 0);
                json_object_set_new(json_array_get(g_results, json_array_size(g_results) - 1),
                                    "algo", json_string(names[a]));
                json_object_set_new(json_array_get(g_results, json_array_size(g_results) - 1),
                                    "peer_algo", json_string("rd"));
            }
        }
    }
}

int main(int argc, char **argv)
{
    int json = 0, do_switch = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            g_quick = 1;
        } else if (strcmp(argv[i], "--switch") == 0) {
            do_switch = 1;
        } else if (strcmp(argv[i], "--spin-us") == 0 && i + 1 < argc) {
            g_spin_us = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc) {
            g_bytes = (size_t)strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            g_only = argv[++i];
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc && strcmp(argv[i + 1], "json") == 0) {
            json = 1;
            g_json = 1;
            i++;
        } else {
            fprintf(
                stderr,
                "usage: %s [--quick] [--switch] [--only p2p|p2p-tcp|wakeup|allreduce] [--bytes N] [--spin-us N] [-o json]\n",
                argv[0]);
            return 2;
        }
    }
    g_out = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (g_out == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    g_port = 20000 + (int)(getpid() % 20000);
    ssize_t len = readlink("/proc/self/exe", g_mpi_exe, sizeof(g_mpi_exe) - 32);
    if (len <= 0) {
        return 1;
    }
    g_mpi_exe[len] = 0;
    char *slash = strrchr(g_mpi_exe, '/');
    snprintf(slash + 1, sizeof(g_mpi_exe) - (size_t)(slash + 1 - g_mpi_exe),
             "mpar-bench-xport-mpi");
    /* The bench's own environment decides nothing: each case sets UCX_TLS itself. */
    const char *user_tls = getenv("UCX_TLS");
    if (user_tls != NULL) {
        fprintf(stderr, "mpar-bench-xport: ignoring UCX_TLS=%s (each case sets its own)\n",
                user_tls);
    }
    g_results = json_array();
    int reps = g_quick ? 1 : 3;
    if (do_switch) {
        bench_switch();
    } else {
        if (g_only == NULL || strncmp(g_only, "p2p", 3) == 0) {
            if (g_only == NULL || strcmp(g_only, "p2p-tcp") != 0) {
                bench_p2p("default", NULL, reps);
            }
            bench_p2p("tcp", "tcp", reps);
        }
        if (g_only == NULL || strncmp(g_only, "wakeup", 6) == 0) {
            bench_wakeup("default", NULL);
            bench_wakeup("tcp", "tcp");
        }
        if (g_only == NULL || strncmp(g_only, "allreduce", 9) == 0) {
            bench_allreduce(g_quick ? 1 : 2);
        }
    }
    if (json) {
        json_t *doc = json_pack("{s:s, s:o}", "bench", "xport", "results", g_results);
        char *s = json_dumps(doc, JSON_INDENT(2));
        printf("%s\n", s);
        free(s);
        json_decref(doc);
    } else {
        json_decref(g_results);
    }
    munmap(g_out, 4096);
    return 0;
}
