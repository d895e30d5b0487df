/*
 * test_xport.c - the UCX tensor transport: round trips of self-describing
 * tensors between threads and between processes, receives posted before
 * and after their sends, out-of-order micro-batches, timeouts, dead peers,
 * the registered arena, and that an idle receive sleeps.
 * Registered twice in ctest: with UCX_TLS unset and with UCX_TLS=tcp.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/alloc.h"
#include "test_xport_harness.h"
#include "transport/ucx.h"
#include "transport/ucx_internal.h"

#define JOB 7
#define CTRL_MB 5000000u

static double secs(uint64_t a, uint64_t b)
{
    return (double)(b - a) / 1e9;
}

/* A tiny control message on kind USER (a distinct micro-batch per purpose). */
static int ctrl_send(mp_xport_ep_t *ep, uint32_t mb)
{
    float one = 1.0f;
    mp_xport_hdr_t h = {.job = JOB,
                        .micro_batch = mb,
                        .kind = MP_XPORT_KIND_USER,
                        .dtype = MP_XPORT_DTYPE_F32,
                        .ndim = 1,
                        .shape = {1}};
    return mp_xport_send_wait(ep, &h, &one, 0) == MP_OK ? 0 : 1;
}

static int ctrl_recv(mp_xport_ep_t *ep, uint32_t mb)
{
    float one = 0;
    return mp_xport_recv_wait(ep, JOB, MP_XPORT_KIND_USER, mb, &one, sizeof(one), 0, NULL) ==
                       MP_OK &&
                   one == 1.0f
               ? 0
               : 1;
}

/* After rank 1's failed wait, one control message each way between ranks 0
 * and 1 proves that both workers still work: 0, or the step that failed
 * (5, 6 on rank 1; 7, 8 on rank 0). */
static int still_usable(mp_xport_ep_t **eps, uint32_t rank)
{
    if (rank == 1) {
        if (ctrl_send(eps[0], CTRL_MB) != 0) {
            return 5;
        }
        return ctrl_recv(eps[0], CTRL_MB + 1) == 0 ? 0 : 6;
    }
    if (ctrl_recv(eps[1], CTRL_MB) != 0) {
        return 7;
    }
    return ctrl_send(eps[1], CTRL_MB + 1) == 0 ? 0 : 8;
}

/* Element counts around the inline limit and the rendezvous range. */
static const size_t sizes[] = {0, 1, 7, 2047, 2048, 2049, 10007, 262147, 1048576 + 3};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static mp_xport_hdr_t hdr_for(size_t count, uint32_t mb, uint32_t step)
{
    /* A 2-D shape when count factors as rows x 1..; keeps ndim honest. */
    mp_xport_hdr_t h = {.job = JOB,
                        .step = step,
                        .micro_batch = mb,
                        .kind = MP_XPORT_KIND_ACT,
                        .dtype = MP_XPORT_DTYPE_F32,
                        .ndim = 2,
                        .shape = {count, 1}};
    return h;
}

static int check_tensor(const float *got, const mp_xport_hdr_t *h, size_t count, uint32_t mb,
                        uint32_t step)
{
    if (h->job != JOB || h->micro_batch != mb || h->step != step || h->kind != MP_XPORT_KIND_ACT ||
        h->dtype != MP_XPORT_DTYPE_F32 || h->ndim != 2 || h->shape[0] != count ||
        h->shape[1] != 1) {
        return 20;
    }
    for (size_t i = 0; i < count; i++) {
        if (got[i] != xh_value(mb, step, i)) {
            return 21;
        }
    }
    return 0;
}

/* Rank 0 sends; rank 1 receives, half posted before the send and half after. */
static int roundtrip_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                          void *arg)
{
    (void)n;
    (void)arg;
    float *buf = mp_aligned_alloc((sizes[NSIZES - 1] + 16) * sizeof(float));
    if (buf == NULL) {
        return 2;
    }
    int code = 0;
    for (uint32_t k = 0; k < NSIZES && code == 0; k++) {
        size_t count = sizes[k];
        uint32_t mb = 100 + k;
        int before = k % 2 == 0;
        if (rank == 0) {
            for (size_t i = 0; i < count; i++) {
                buf[i] = xh_value(mb, k, i);
            }
            mp_xport_hdr_t h = hdr_for(count, mb, k);
            mp_xport_req_t *req;
            if (before && ctrl_recv(eps[1], CTRL_MB + k) != 0) {
                code = 3;
            } else if (mp_xport_send(eps[1], &h, buf, &req) != MP_OK) {
                code = 4;
            } else {
                /* A large send completes only once its receive exists: tell the receiver first. */
                if (!before && ctrl_send(eps[1], CTRL_MB + k) != 0) {
                    code = 5;
                }
                if (mp_xport_wait(req, 0, NULL) != MP_OK && code == 0) {
                    code = 9;
                }
            }
        } else {
            mp_xport_req_t *req;
            mp_xport_hdr_t h;
            memset(buf, 0xff, (count + 16) * sizeof(float));
            if (before) {
                /* Posted first, then the sender is told to go. */
                if (mp_xport_recv(eps[0], JOB, MP_XPORT_KIND_ACT, mb, buf,
                                  (count + 16) * sizeof(float), &req) != MP_OK ||
                    ctrl_send(eps[0], CTRL_MB + k) != 0 || mp_xport_wait(req, 0, &h) != MP_OK) {
                    code = 6;
                }
            } else {
                /* The sender has finished sending before this receive exists. */
                mp_status_t st = MP_OK;
                if (ctrl_recv(eps[0], CTRL_MB + k) != 0) {
                    code = 7;
                } else if ((st = mp_xport_recv_wait(eps[0], JOB, MP_XPORT_KIND_ACT, mb, buf,
                                                    (count + 16) * sizeof(float), 0, &h)) !=
                           MP_OK) {
                    fprintf(stderr, "roundtrip: receive after send: %s\n", mp_strerror(st));
                    code = 8;
                }
            }
            if (code == 0) {
                code = check_tensor(buf, &h, count, mb, k);
            }
        }
        if (code != 0) {
            fprintf(stderr, "roundtrip: rank %u failed with %d at count %zu (%s the send)\n", rank,
                    code, count, before ? "posted before" : "posted after");
        }
    }
    mp_free(buf);
    return code;
}

Test(xport, roundtrip_threads_before_and_after_send)
{
    int codes[2];
    int bad = xh_run_threads(2, roundtrip_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "rank codes %d %d", codes[0], codes[1]);
}

Test(xport, roundtrip_processes_before_and_after_send)
{
    int codes[2];
    int bad = xh_run_procs(2, roundtrip_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "rank codes %d %d", codes[0], codes[1]);
}

/* Micro-batches sent 0..M-1, received (and waited for) in reverse order. */
#define NMB 6
static int out_of_order_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                             void *arg)
{
    (void)w;
    (void)n;
    size_t count = *(size_t *)arg;
    float *bufs[NMB];
    mp_xport_req_t *reqs[NMB];
    int code = 0;
    for (int m = 0; m < NMB; m++) {
        bufs[m] = mp_aligned_alloc(count * sizeof(float) + 64);
        if (bufs[m] == NULL) {
            return 2;
        }
    }
    if (rank == 0) {
        mp_xport_hdr_t hs[NMB];
        for (int m = 0; m < NMB && code == 0; m++) {
            for (size_t i = 0; i < count; i++) {
                bufs[m][i] = xh_value((uint32_t)m, 3, i);
            }
            hs[m] = hdr_for(count, (uint32_t)m, 3);
            if (mp_xport_send(eps[1], &hs[m], bufs[m], &reqs[m]) != MP_OK) {
                code = 3;
            }
        }
        if (code == 0 && mp_xport_wait_all(reqs, NMB, 0) != MP_OK) {
            code = 4;
        }
    } else {
        for (int m = NMB - 1; m >= 0 && code == 0; m--) {
            if (mp_xport_recv(eps[0], JOB, MP_XPORT_KIND_ACT, (uint32_t)m, bufs[m],
                              count * sizeof(float) + 64, &reqs[m]) != MP_OK) {
                code = 5;
            }
        }
        for (int m = NMB - 1; m >= 0 && code == 0; m--) {
            mp_xport_hdr_t h;
            if (mp_xport_wait(reqs[m], 0, &h) != MP_OK) {
                code = 6;
            } else {
                code = check_tensor(bufs[m], &h, count, (uint32_t)m, 3);
            }
        }
    }
    for (int m = 0; m < NMB; m++) {
        mp_free(bufs[m]);
    }
    return code;
}

Test(xport, out_of_order_micro_batches_small_and_large)
{
    size_t counts[] = {100, 300001};
    for (int c = 0; c < 2; c++) {
        int codes[2];
        int bad = xh_run_procs(2, out_of_order_rank, &counts[c], NULL, codes);
        cr_assert_eq(bad, 0, "count %zu: rank codes %d %d", counts[c], codes[0], codes[1]);
        bad = xh_run_threads(2, out_of_order_rank, &counts[c], NULL, codes);
        cr_assert_eq(bad, 0, "threads, count %zu: rank codes %d %d", counts[c], codes[0], codes[1]);
    }
}

/* Rank 1 waits 1 s for a tensor that rank 0 sends after sleeping: it must sleep, not spin. */
static int idle_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                     void *arg)
{
    (void)n;
    double *cpu_out = arg;
    float v[4] = {1, 2, 3, 4};
    mp_xport_hdr_t h = {.job = JOB,
                        .micro_batch = 1,
                        .kind = MP_XPORT_KIND_GRAD,
                        .dtype = MP_XPORT_DTYPE_F32,
                        .ndim = 1,
                        .shape = {4}};
    if (rank == 0) {
        usleep(1000000);
        return mp_xport_send_wait(eps[1], &h, v, 0) == MP_OK ? 0 : 3;
    }
    float got[4] = {0};
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    uint64_t t0 = mp_xport_now_ns();
    mp_status_t st =
        mp_xport_recv_wait(eps[0], JOB, MP_XPORT_KIND_GRAD, 1, got, sizeof(got), 5000, NULL);
    uint64_t t1 = mp_xport_now_ns();
    getrusage(RUSAGE_SELF, &r1);
    double cpu = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec + r1.ru_stime.tv_sec -
                          r0.ru_stime.tv_sec) +
                 (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec + r1.ru_stime.tv_usec -
                          r0.ru_stime.tv_usec) /
                     1e6;
    mp_xport_worker_stats_t ws;
    mp_xport_worker_stats(w, &ws);
    if (cpu_out != NULL) {
        *cpu_out = cpu;
    }
    if (st != MP_OK || memcmp(got, v, sizeof(v)) != 0) {
        return 4;
    }
    if (secs(t0, t1) < 0.8) {
        return 5; /* it did not wait at all: the test proves nothing */
    }
    if (ws.sleeps == 0) {
        return 6;
    }
    /* The measurement goes to the log either way: it is what the test is about. */
    fprintf(stderr,
            "idle: %.3f s CPU over %.3f s; %llu sleeps (%llu woken by events, %llu by timers)\n",
            cpu, secs(t0, t1), (unsigned long long)ws.sleeps, (unsigned long long)ws.event_wakeups,
            (unsigned long long)ws.timer_wakeups);
    fflush(stderr);
    return cpu < 0.1 ? 0 : 7;
}

Test(xport, idle_receive_of_one_second_uses_under_a_tenth_of_cpu)
{
    int codes[2];
    int bad = xh_run_procs(2, idle_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "rank codes %d %d (7: too much CPU while idle)", codes[0], codes[1]);
}

/* A receive with nothing sent times out in about its timeout, and the worker goes on working. */
static int timeout_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                        void *arg)
{
    (void)w;
    (void)n;
    (void)arg;
    float buf[8];
    if (rank == 1) {
        uint64_t t0 = mp_xport_now_ns();
        mp_status_t st =
            mp_xport_recv_wait(eps[0], JOB, MP_XPORT_KIND_ACT, 9, buf, sizeof(buf), 300, NULL);
        double el = secs(t0, mp_xport_now_ns());
        if (st != MP_ERR_TIMEOUT) {
            return 3;
        }
        if (el < 0.29 || el > 3.0) {
            return 4;
        }
    }
    return still_usable(eps, rank);
}

Test(xport, receive_times_out_and_worker_stays_usable)
{
    int codes[2];
    int bad = xh_run_threads(2, timeout_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "rank codes %d %d", codes[0], codes[1]);
}

/* An abort flag set from another thread ends a worker's waits (a single
 * wait and a wait on a set, as collectives use) with MP_ERR_CANCELLED long
 * before their timeout; with the flag unset the worker goes on working. */
static void *set_flag_later(void *arg)
{
    usleep(200 * 1000);
    atomic_store((atomic_bool *)arg, true);
    return NULL;
}

static int abort_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                      void *arg)
{
    (void)n;
    (void)arg;
    float buf[8];
    if (rank == 1) {
        static atomic_bool flag;
        mp_xport_worker_set_abort(w, &flag);
        for (int round = 0; round < 2; round++) {
            atomic_store(&flag, false);
            pthread_t t;
            pthread_create(&t, NULL, set_flag_later, &flag);
            uint64_t t0 = mp_xport_now_ns();
            mp_status_t st;
            if (round == 0) {
                st = mp_xport_recv_wait(eps[0], JOB, MP_XPORT_KIND_ACT, 9, buf, sizeof(buf), 10000,
                                        NULL);
            } else {
                mp_xport_req_t *req = NULL;
                st = mp_xport_recv(eps[0], JOB, MP_XPORT_KIND_ACT, 10, buf, sizeof(buf), &req);
                if (st == MP_OK) {
                    st = mp_xport_wait_all(&req, 1, 10000);
                }
            }
            double el = secs(t0, mp_xport_now_ns());
            pthread_join(t, NULL);
            if (st != MP_ERR_CANCELLED) {
                return 3;
            }
            if (el > 3.0) {
                return 4;
            }
        }
        mp_xport_worker_set_abort(w, NULL);
    }
    return still_usable(eps, rank);
}

Test(xport, abort_flag_ends_waits_before_their_timeout)
{
    int codes[2];
    int bad = xh_run_threads(2, abort_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "rank codes %d %d (3: not cancelled, 4: too slow)", codes[0], codes[1]);
}

/* Rank 0 is killed while rank 1 waits on it: rank 1 gets MP_ERR_PEER well before its timeout. */
static int dead_peer_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                          void *arg)
{
    (void)w;
    (void)n;
    (void)arg;
    if (rank == 0) {
        /* Keeps its worker busy until the kill. */
        float b[2];
        mp_xport_recv_wait(eps[1], JOB, MP_XPORT_KIND_ACT, 1, b, sizeof(b), 20000, NULL);
        return 0;
    }
    float big[1024];
    uint64_t t0 = mp_xport_now_ns();
    mp_status_t st =
        mp_xport_recv_wait(eps[0], JOB, MP_XPORT_KIND_ACT, 2, big, sizeof(big), 15000, NULL);
    double el = secs(t0, mp_xport_now_ns());
    if (st != MP_ERR_PEER) {
        return 3;
    }
    if (el > 10.0) {
        return 4;
    }
    /* Later operations on the dead endpoint fail at once. */
    return mp_xport_ep_status(eps[0]) == MP_ERR_PEER && ctrl_send(eps[0], 1) != 0 ? 0 : 5;
}

Test(xport, dead_peer_fails_pending_receive)
{
    int codes[2];
    xh_opts_t o = {.kill_rank = 0, .kill_after_ms = 300, .timeout_ms = 15000};
    int bad = xh_run_procs(2, dead_peer_rank, NULL, &o, codes);
    cr_assert_eq(bad, 1, "codes %d %d", codes[0], codes[1]);
    cr_assert_eq(codes[0], -1, "rank 0 was to be killed");
    cr_assert_eq(codes[1], 0, "survivor code %d (3: not MP_ERR_PEER, 4: too slow)", codes[1]);
}

/* A tensor larger than the receive buffer is refused with MP_ERR_TOOBIG; invalid headers are
 * refused. */
static int toobig_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                       void *arg)
{
    (void)w;
    (void)n;
    (void)arg;
    float v[100] = {0};
    if (rank == 0) {
        mp_xport_hdr_t h = {.job = JOB,
                            .micro_batch = 3,
                            .kind = MP_XPORT_KIND_ACT,
                            .dtype = MP_XPORT_DTYPE_F32,
                            .ndim = 1,
                            .shape = {100}};
        mp_xport_hdr_t bad = h;
        bad.kind = 0;
        mp_xport_req_t *r;
        if (mp_xport_send(eps[1], &bad, v, &r) != MP_ERR_INVAL) {
            return 3;
        }
        bad = h;
        bad.dtype = 99;
        if (mp_xport_send(eps[1], &bad, v, &r) != MP_ERR_INVAL) {
            return 4;
        }
        return mp_xport_send_wait(eps[1], &h, v, 0) == MP_OK ? 0 : 5;
    }
    return mp_xport_recv_wait(eps[0], JOB, MP_XPORT_KIND_ACT, 3, v, 10 * sizeof(float), 0, NULL) ==
                   MP_ERR_TOOBIG
               ? 0
               : 6;
}

Test(xport, refuses_oversized_tensor_and_bad_header)
{
    int codes[2];
    int bad = xh_run_threads(2, toobig_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "rank codes %d %d", codes[0], codes[1]);
}

/* Tensors carved from a registered arena go through zero-copy and arrive intact. */
static int arena_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                      void *arg)
{
    (void)n;
    (void)arg;
    size_t count = 1u << 20;
    mp_xport_arena_t *a;
    if (mp_xport_arena_create(mp_xport_worker_ctx(w), 3 * count * sizeof(float), &a) != MP_OK) {
        return 2;
    }
    int code = 0;
    float *t = mp_xport_arena_alloc(a, count * sizeof(float));
    if (t == NULL || ((uintptr_t)t & 63) != 0 ||
        mp_xport_arena_alloc(a, 3 * count * sizeof(float)) != NULL) {
        code = 3;
    }
    mp_xport_hdr_t h = hdr_for(count, 11, 2);
    if (code == 0 && rank == 0) {
        for (size_t i = 0; i < count; i++) {
            t[i] = xh_value(11, 2, i);
        }
        code = mp_xport_send_wait(eps[1], &h, t, 0) == MP_OK ? 0 : 4;
    } else if (code == 0) {
        mp_xport_hdr_t got;
        code = mp_xport_recv_wait(eps[0], JOB, MP_XPORT_KIND_ACT, 11, t, count * sizeof(float), 0,
                                  &got) == MP_OK
                   ? check_tensor(t, &got, count, 11, 2)
                   : 5;
    }
    mp_xport_arena_destroy(a);
    return code;
}

Test(xport, arena_tensors_arrive_intact)
{
    int codes[2];
    int bad = xh_run_procs(2, arena_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "processes: rank codes %d %d", codes[0], codes[1]);
    bad = xh_run_threads(2, arena_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "threads: rank codes %d %d", codes[0], codes[1]);
}

Test(xport, arena_allocates_aligned_until_full)
{
    mp_xport_ctx_t *ctx;
    cr_assert_eq(mp_xport_ctx_create(NULL, &ctx), MP_OK);
    mp_xport_arena_t *a;
    cr_assert_eq(mp_xport_arena_create(ctx, 1000, &a), MP_OK);
    cr_assert_geq(mp_xport_arena_size(a), 1000);
    cr_assert_eq(mp_xport_arena_alloc(a, 8), mp_xport_arena_base(a));
    char *second = mp_xport_arena_alloc(a, 8);
    cr_assert_eq(second, (char *)mp_xport_arena_base(a) + 64);
    cr_assert_null(mp_xport_arena_alloc(a, mp_xport_arena_size(a)));
    mp_xport_arena_reset(a);
    cr_assert_eq(mp_xport_arena_alloc(a, 8), mp_xport_arena_base(a));
    mp_xport_arena_destroy(a);
    mp_xport_ctx_destroy(ctx);
}
