/*
 * test_coll.c - collectives over UCX workers: allreduce (each algorithm
 * and the automatic choice), allgather, reduce-scatter, broadcast and
 * barrier on N = 1..4 ranks as threads and as processes, with element
 * counts 0, 1, primes, random ones and counts not divisible by N, each
 * checked against a float64 reference; overlapping groups (TP and DP) on
 * one worker; a rank killed mid-allreduce.
 *
 * Tolerance: a sum of N fp32 values in [-1, 1) in any order is within
 * N * 2^-23 * sum|x_i| of the exact sum; we allow 1e-6 * sum|x_i| + 1e-7
 * (N <= 4 gives 4.8e-7 * sum|x_i|).  Allgather and broadcast move bits,
 * so they must be exact, and every rank's allreduce result must have
 * the same bits.
 *
 * Registered twice in ctest: with UCX_TLS unset and with UCX_TLS=tcp.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "test_xport_harness.h"
#include "transport/coll.h"
#include "transport/ucx_internal.h"

static const size_t fixed_counts[] = {0, 1, 2, 3, 5, 13, 97, 1021, 4099, 16411, 65537, 262147};
#define NFIXED (sizeof(fixed_counts) / sizeof(fixed_counts[0]))
#define NRANDOM 4

typedef struct {
    uint32_t seed;
} coll_arg_t;

/* Whether got is element i of the sum over the ranks k in `members` (a bit
 * mask) of their data xh_value(seed, k, i), within the tolerance above. */
static int is_sum(float got, uint32_t seed, uint32_t members, size_t i)
{
    double ref = 0, abs_sum = 0;
    for (uint32_t k = 0; k < 32; k++) {
        if (members & (1u << k)) {
            double x = xh_value(seed, k, i);
            ref += x;
            abs_sum += fabs(x);
        }
    }
    return fabs((double)got - ref) <= 1e-6 * abs_sum + 1e-7;
}

static uint64_t bits_hash(const float *v, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *c = (const unsigned char *)v;
    for (size_t i = 0; i < n * sizeof(float); i++) {
        h = (h ^ c[i]) * 1099511628211ull;
    }
    return h;
}

/* Every rank's hash equal (exchanged with an allgather, which moves bits). */
static int same_everywhere(mp_coll_group_t *g, uint64_t h)
{
    uint32_t n = mp_coll_group_size(g), r = mp_coll_group_rank(g);
    float all[2 * 8];
    float mine[2];
    memcpy(mine, &h, sizeof(h));
    size_t off, len;
    mp_coll_block(2 * n, n, r, &off, &len);
    if (mp_coll_allgather_f32(g, mine, all, 2 * n, 0) != MP_OK) {
        return 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (memcmp(&all[2 * i], &h, sizeof(h)) != 0) {
            return 0;
        }
    }
    return 1;
}

static int check_allreduce(mp_coll_group_t *g, uint32_t seed, size_t count, mp_coll_algo_t algo,
                           float *buf)
{
    uint32_t n = mp_coll_group_size(g), r = mp_coll_group_rank(g);
    for (size_t i = 0; i < count; i++) {
        buf[i] = xh_value(seed, r, i);
    }
    if (mp_coll_allreduce_sum_f32_algo(g, buf, count, algo, 0) != MP_OK) {
        return 10 + (int)algo;
    }
    for (size_t i = 0; i < count; i++) {
        if (!is_sum(buf[i], seed, (1u << n) - 1, i)) {
            return 20 + (int)algo;
        }
    }
    return same_everywhere(g, bits_hash(buf, count)) ? 0 : 30 + (int)algo;
}

static int check_allgather(mp_coll_group_t *g, uint32_t seed, size_t count, float *all, float *mine)
{
    uint32_t n = mp_coll_group_size(g), r = mp_coll_group_rank(g);
    size_t off, len;
    mp_coll_block(count, n, r, &off, &len);
    for (size_t i = 0; i < len; i++) {
        mine[i] = xh_value(seed, 0, off + i);
    }
    memset(all, 0xff, count * sizeof(float));
    if (mp_coll_allgather_f32(g, mine, all, count, 0) != MP_OK) {
        return 40;
    }
    for (size_t i = 0; i < count; i++) {
        if (all[i] != xh_value(seed, 0, i)) {
            return 41;
        }
    }
    return 0;
}

static int check_reduce_scatter(mp_coll_group_t *g, uint32_t seed, size_t count, float *in,
                                float *mine)
{
    uint32_t n = mp_coll_group_size(g), r = mp_coll_group_rank(g);
    for (size_t i = 0; i < count; i++) {
        in[i] = xh_value(seed, r, i);
    }
    size_t off, len;
    mp_coll_block(count, n, r, &off, &len);
    if (mp_coll_reduce_scatter_sum_f32(g, in, mine, count, 0) != MP_OK) {
        return 50;
    }
    for (size_t i = 0; i < len; i++) {
        if (!is_sum(mine[i], seed, (1u << n) - 1, off + i)) {
            return 51;
        }
    }
    /* The input is left as it was. */
    for (size_t i = 0; i < count; i++) {
        if (in[i] != xh_value(seed, r, i)) {
            return 52;
        }
    }
    return 0;
}

static int check_bcast(mp_coll_group_t *g, uint32_t seed, size_t count, float *buf)
{
    uint32_t n = mp_coll_group_size(g), r = mp_coll_group_rank(g), root = seed % n;
    for (size_t i = 0; i < count; i++) {
        buf[i] = r == root ? xh_value(seed, 9, i) : -7.0f;
    }
    if (mp_coll_bcast(g, buf, count * sizeof(float), root, 0) != MP_OK) {
        return 60;
    }
    for (size_t i = 0; i < count; i++) {
        if (buf[i] != xh_value(seed, 9, i)) {
            return 61;
        }
    }
    return 0;
}

static int all_collectives_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank,
                                uint32_t n, void *arg)
{
    coll_arg_t *a = arg;
    mp_coll_group_t *g;
    if (mp_coll_group_create(w, 1, n, rank, eps, &g) != MP_OK) {
        return 2;
    }
    size_t counts[NFIXED + NRANDOM];
    memcpy(counts, fixed_counts, sizeof(fixed_counts));
    /* Random counts, the same on every rank (same seed). */
    uint64_t x = a->seed * 2654435761ull + 1;
    for (int i = 0; i < NRANDOM; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        counts[NFIXED + i] = (size_t)((x >> 33) % 200000);
    }
    size_t maxc = 0;
    for (size_t i = 0; i < NFIXED + NRANDOM; i++) {
        maxc = counts[i] > maxc ? counts[i] : maxc;
    }
    float *b1 = mp_aligned_alloc((maxc + 1) * sizeof(float));
    float *b2 = mp_aligned_alloc((maxc + 1) * sizeof(float));
    int code = b1 != NULL && b2 != NULL ? 0 : 3;
    for (size_t k = 0; k < NFIXED + NRANDOM && code == 0; k++) {
        uint32_t seed = a->seed + (uint32_t)k;
        size_t c = counts[k];
        for (int algo = MP_COLL_ALGO_AUTO; algo <= MP_COLL_ALGO_RHD && code == 0; algo++) {
            code = check_allreduce(g, seed, c, (mp_coll_algo_t)algo, b1);
        }
        if (code == 0) {
            code = check_allgather(g, seed, c, b1, b2);
        }
        if (code == 0) {
            code = check_reduce_scatter(g, seed, c, b1, b2);
        }
        if (code == 0) {
            code = check_bcast(g, seed, c, b1);
        }
        if (code == 0 && mp_coll_barrier(g, 0) != MP_OK) {
            code = 70;
        }
        if (code != 0) {
            fprintf(stderr, "coll test: rank %u of %u failed with code %d at count %zu\n", rank, n,
                    code, c);
        }
    }
    if (code == 0 && mp_coll_group_status(g) != MP_OK) {
        code = 4;
    }
    mp_free(b1);
    mp_free(b2);
    mp_coll_group_destroy(g);
    return code;
}

Test(coll, all_collectives_threads_n1_to_n4)
{
    for (uint32_t n = 1; n <= 4; n++) {
        int codes[4] = {0};
        coll_arg_t a = {.seed = 1000 * n};
        int bad = xh_run_threads(n, all_collectives_rank, &a, NULL, codes);
        cr_assert_eq(bad, 0, "n=%u: rank codes %d %d %d %d", n, codes[0], codes[1], codes[2],
                     codes[3]);
    }
}

Test(coll, all_collectives_processes_n1_to_n4)
{
    for (uint32_t n = 1; n <= 4; n++) {
        int codes[4] = {0};
        coll_arg_t a = {.seed = 7000 * n + 1};
        int bad = xh_run_procs(n, all_collectives_rank, &a, NULL, codes);
        cr_assert_eq(bad, 0, "n=%u: rank codes %d %d %d %d", n, codes[0], codes[1], codes[2],
                     codes[3]);
    }
}

/* Four ranks as a 2x2 grid: TP groups {0,1},{2,3} (id 1), DP groups {0,2},{1,3} (id 2), and the
 * world (id 3), all on the same workers, used in turns. */
static int grid_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                     void *arg)
{
    (void)n;
    (void)arg;
    uint32_t tp_peer = rank ^ 1u, dp_peer = rank ^ 2u;
    mp_xport_ep_t *tp_eps[2] = {NULL, NULL}, *dp_eps[2] = {NULL, NULL};
    tp_eps[tp_peer & 1u] = eps[tp_peer];
    dp_eps[(dp_peer >> 1) & 1u] = eps[dp_peer];
    mp_coll_group_t *tp, *dp, *world;
    if (mp_coll_group_create(w, 1, 2, rank & 1u, tp_eps, &tp) != MP_OK ||
        mp_coll_group_create(w, 2, 2, (rank >> 1) & 1u, dp_eps, &dp) != MP_OK ||
        mp_coll_group_create(w, 3, 4, rank, eps, &world) != MP_OK) {
        return 2;
    }
    int code = 0;
    size_t count = 5003;
    float *b = mp_aligned_alloc(count * sizeof(float));
    for (uint32_t round = 0; round < 9 && code == 0; round++) {
        mp_coll_group_t *g = round % 3 == 0 ? tp : (round % 3 == 1 ? dp : world);
        uint32_t peer = round % 3 == 0 ? tp_peer : dp_peer;
        for (size_t i = 0; i < count; i++) {
            b[i] = xh_value(round, rank, i);
        }
        mp_coll_algo_t algo =
            round < 3 ? MP_COLL_ALGO_RING : (round < 6 ? MP_COLL_ALGO_RD : MP_COLL_ALGO_RHD);
        if (mp_coll_allreduce_sum_f32_algo(g, b, count, algo, 0) != MP_OK) {
            code = 3;
            break;
        }
        uint32_t members = g == world ? 0xfu : (1u << rank) | (1u << peer);
        for (size_t i = 0; i < count && code == 0; i++) {
            if (!is_sum(b[i], round, members, i)) {
                code = 4;
            }
        }
    }
    mp_free(b);
    mp_coll_group_destroy(tp);
    mp_coll_group_destroy(dp);
    mp_coll_group_destroy(world);
    return code;
}

Test(coll, tp_and_dp_groups_share_a_worker)
{
    int codes[4];
    int bad = xh_run_threads(4, grid_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "threads: rank codes %d %d %d %d", codes[0], codes[1], codes[2], codes[3]);
    bad = xh_run_procs(4, grid_rank, NULL, NULL, codes);
    cr_assert_eq(bad, 0, "processes: rank codes %d %d %d %d", codes[0], codes[1], codes[2],
                 codes[3]);
}

Test(coll, rejects_bad_groups)
{
    mp_coll_group_t *g;
    mp_xport_ep_t *eps[2] = {NULL, NULL};
    cr_assert_eq(mp_coll_group_create(NULL, 1, 1, 0, NULL, &g), MP_ERR_INVAL);
    mp_xport_worker_t *w = (mp_xport_worker_t *)&g; /* never dereferenced: the checks come first */
    cr_assert_eq(mp_coll_group_create(w, 1, 0, 0, NULL, &g), MP_ERR_INVAL);
    cr_assert_eq(mp_coll_group_create(w, 1, 2, 2, eps, &g), MP_ERR_INVAL);
    cr_assert_eq(mp_coll_group_create(w, 1, 2, 0, eps, &g), MP_ERR_INVAL,
                 "missing endpoint accepted");
    cr_assert_eq(mp_coll_group_create(w, 1, MP_COLL_GROUP_MAX + 1, 0, eps, &g), MP_ERR_INVAL);
    size_t off, len, total = 0;
    for (uint32_t b = 0; b < 4; b++) {
        mp_coll_block(10, 4, b, &off, &len);
        cr_assert_eq(off, total);
        cr_assert_eq(len, b < 2 ? 3u : 2u);
        total += len;
    }
    cr_assert_eq(total, 10u);
}

/* Rank DEAD is killed while everyone loops over allreduces; the survivors fail within the timeout,
 * the failed group refuses further work, and a new group of the survivors works. */
#define KILL_TIMEOUT_MS 4000
static int dead_rank_rank(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                          void *arg)
{
    uint32_t dead = *(uint32_t *)arg;
    mp_coll_group_t *g;
    if (mp_coll_group_create(w, 5, n, rank, eps, &g) != MP_OK) {
        return 2;
    }
    size_t count = 1u << 19;
    float *b = mp_aligned_alloc(count * sizeof(float));
    mp_status_t st = MP_OK;
    double fail_s = 0;
    uint64_t start = mp_xport_now_ns();
    while (st == MP_OK && mp_xport_now_ns() - start < 30ull * 1000000000ull) {
        for (size_t i = 0; i < count; i++) {
            b[i] = 1.0f;
        }
        uint64_t t0 = mp_xport_now_ns();
        /* The ring for 3 ranks, the automatic choice (recursive halving-doubling) for 4. */
        st = mp_coll_allreduce_sum_f32_algo(
            g, b, count, n == 3 ? MP_COLL_ALGO_RING : MP_COLL_ALGO_AUTO, KILL_TIMEOUT_MS);
        fail_s = (double)(mp_xport_now_ns() - t0) / 1e9;
        if (st == MP_OK && b[count - 1] != (float)n) {
            st = MP_ERR_FORMAT;
        }
    }
    if (rank == dead) {
        return 9; /* it was not killed in time */
    }
    int code = 0;
    if (st != MP_ERR_PEER && st != MP_ERR_TIMEOUT) {
        code = 3;
    } else if (fail_s > KILL_TIMEOUT_MS / 1000.0 + 2.0) {
        code = 4;
    } else if (mp_coll_allreduce_sum_f32(g, b, count, 100) != MP_ERR_STATE) {
        code = 5;
    }
    mp_coll_group_destroy(g);
    /* A new group of the survivors on the same worker, over fresh endpoints (as the engine would
     * make from addresses shipped again: both sides of a link must agree on which endpoint they
     * use). */
    mp_xport_ep_t *neps[8] = {NULL}, *fresh[8] = {NULL};
    uint32_t m = 0, myr = 0;
    /* Survivors take part in the new group whatever the first part found, so
     * that one rank's failure above is reported as itself, not as timeouts of the others. */
    int first_code = code;
    code = 0;
    for (uint32_t j = 0; j < n && code == 0; j++) {
        if (j == dead) {
            continue;
        }
        if (j == rank) {
            myr = m;
        } else {
            const void *addr;
            size_t len;
            if (xh_peer_address(j, &addr, &len) != 0 ||
                mp_xport_ep_connect(w, addr, len, j, &fresh[m]) != MP_OK) {
                code = 6;
            }
            neps[m] = fresh[m];
        }
        m++;
    }
    if (code == 0) {
        mp_coll_group_t *g2;
        if (mp_coll_group_create(w, 6, m, myr, neps, &g2) != MP_OK) {
            code = 7;
        } else {
            for (size_t i = 0; i < count; i++) {
                b[i] = 2.0f;
            }
            if (mp_coll_allreduce_sum_f32(g2, b, count, 10000) != MP_OK ||
                b[0] != 2.0f * (float)m || b[count - 1] != 2.0f * (float)m) {
                code = 8;
            }
            mp_coll_group_destroy(g2);
        }
    }
    for (uint32_t j = 0; j < 8; j++) {
        mp_xport_ep_destroy(fresh[j]);
    }
    mp_free(b);
    return first_code != 0 ? first_code : code;
}

Test(coll, killed_rank_fails_survivors_then_new_group_works)
{
    uint32_t ns[] = {3, 4};
    for (int t = 0; t < 2; t++) {
        uint32_t n = ns[t], dead = n - 2;
        int codes[4] = {0};
        xh_opts_t o = {
            .kill_rank = (int)dead, .kill_after_ms = 700, .timeout_ms = 10000, .deadline_s = 50};
        int bad = xh_run_procs(n, dead_rank_rank, &dead, &o, codes);
        cr_assert_eq(codes[dead], -1, "n=%u: rank %u not killed (code %d)", n, dead, codes[dead]);
        cr_assert_eq(bad, 1, "n=%u: rank codes %d %d %d %d", n, codes[0], codes[1], codes[2],
                     codes[3]);
    }
}
