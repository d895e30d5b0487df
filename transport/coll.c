/*
 * coll.c - collectives over the UCX transport: ring reduce-scatter and
 * allgather (bandwidth-bound), recursive doubling allreduce (latency-bound)
 * and Rabenseifner's recursive halving-doubling allreduce, both with the
 * non-power-of-two fold, binomial-tree broadcast and a dissemination
 * barrier.
 *
 * Owns each group's endpoint list (borrowed pointers), its sequence number
 * and scratch buffers.  Runs on the thread of the group's worker.  Every
 * message of a collective is tagged (group id, sequence, step, source), so
 * that messages of different groups, operations and steps never match each
 * other, whatever order they arrive in.  A wait that fails cancels the
 * operation's other requests and fails the group, so nothing of it lingers
 * in the next operation.
 */
#include "transport/coll.h"

#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "transport/ucx_internal.h"

struct mp_coll_group {
    mp_xport_worker_t *worker;
    uint16_t id;
    uint16_t seq;
    uint32_t size;
    uint32_t rank;
    mp_status_t status;
    size_t ring_threshold;
    size_t rhd_threshold;
    mp_xport_ep_t **eps;
    float *scratch; /* receive staging */
    size_t scratch_cap;
    float *work; /* reduce-scatter working copy */
    size_t work_cap;
};

mp_status_t mp_coll_group_create(mp_xport_worker_t *worker, uint16_t group_id, uint32_t size,
                                 uint32_t rank, mp_xport_ep_t *const *eps,
                                 mp_coll_group_t **group_p)
{
    if (worker == NULL || size == 0 || size > MP_COLL_GROUP_MAX || rank >= size ||
        (size > 1 && eps == NULL)) {
        mp_err("coll: invalid group (size %u, rank %u)", size, rank);
        return MP_ERR_INVAL;
    }
    for (uint32_t i = 0; i < size; i++) {
        if (i != rank && eps[i] == NULL) {
            mp_err("coll: group %u has no endpoint for member %u", group_id, i);
            return MP_ERR_INVAL;
        }
    }
    mp_coll_group_t *g = mp_calloc(1, sizeof(*g));
    if (g == NULL) {
        return MP_ERR_NOMEM;
    }
    g->eps = mp_calloc(size, sizeof(*g->eps));
    if (g->eps == NULL) {
        mp_free(g);
        return MP_ERR_NOMEM;
    }
    for (uint32_t i = 0; i < size; i++) {
        g->eps[i] = i == rank ? NULL : eps[i];
    }
    g->worker = worker;
    g->id = group_id;
    g->size = size;
    g->rank = rank;
    g->ring_threshold = MP_COLL_RING_THRESHOLD_DEFAULT;
    g->rhd_threshold = MP_COLL_RHD_THRESHOLD_DEFAULT;
    *group_p = g;
    return MP_OK;
}

void mp_coll_group_destroy(mp_coll_group_t *g)
{
    if (g == NULL) {
        return;
    }
    mp_free(g->scratch);
    mp_free(g->work);
    mp_free(g->eps);
    mp_free(g);
}

uint32_t mp_coll_group_size(const mp_coll_group_t *g)
{
    return g->size;
}
uint32_t mp_coll_group_rank(const mp_coll_group_t *g)
{
    return g->rank;
}
mp_status_t mp_coll_group_status(const mp_coll_group_t *g)
{
    return g->status;
}
void mp_coll_group_set_thresholds(mp_coll_group_t *g, size_t rhd_bytes, size_t ring_bytes)
{
    g->rhd_threshold = rhd_bytes;
    g->ring_threshold = ring_bytes;
}

void mp_coll_block(size_t count, uint32_t size, uint32_t b, size_t *off_p, size_t *len_p)
{
    size_t base = count / size, extra = count % size;
    *off_p = (size_t)b * base + (b < extra ? b : extra);
    *len_p = base + (b < extra ? 1 : 0);
}

/* ---- plumbing ---- */

static mp_status_t grow(float **p, size_t *cap, size_t count)
{
    if (*cap >= count) {
        return MP_OK;
    }
    float *n = mp_aligned_alloc(count * sizeof(float));
    if (n == NULL) {
        return MP_ERR_NOMEM;
    }
    mp_free(*p);
    *p = n;
    *cap = count;
    return MP_OK;
}

/* An operation in progress: its deadline and tag sequence. */
typedef struct {
    mp_coll_group_t *g;
    uint16_t seq;
    uint64_t deadline;
} op_t;

static mp_status_t group_check(void *arg)
{
    mp_coll_group_t *g = arg;
    for (uint32_t i = 0; i < g->size; i++) {
        if (g->eps[i] != NULL && mp_xport_ep_status(g->eps[i]) != MP_OK) {
            return MP_ERR_PEER;
        }
    }
    return MP_OK;
}

static mp_status_t op_begin(mp_coll_group_t *g, int64_t timeout_ms, op_t *op)
{
    if (g->status != MP_OK) {
        return MP_ERR_STATE;
    }
    if (timeout_ms <= 0) {
        timeout_ms = mp_xport_worker_timeout_ms(g->worker);
    }
    op->g = g;
    op->seq = g->seq++;
    op->deadline = mp_xport_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    return MP_OK;
}

static mp_status_t op_fail(op_t *op, mp_status_t st, const char *what)
{
    mp_coll_group_t *g = op->g;
    if (g->status == MP_OK) {
        g->status = st;
        mp_warn("coll: %s on group %u (rank %u of %u, op %u) failed: %s", what, g->id, g->rank,
                g->size, op->seq, mp_strerror(st));
    }
    return st;
}

/* One step: optionally send (to, sbuf, sbytes) and receive (from, rbuf, rbytes), then wait for
 * both. */
static mp_status_t op_xchg(op_t *op, uint32_t step, int to, const void *sbuf, size_t sbytes,
                           int from, void *rbuf, size_t rbytes)
{
    mp_coll_group_t *g = op->g;
    mp_xport_req_t *reqs[2] = {NULL, NULL};
    mp_status_t st = MP_OK;
    if (from >= 0) {
        st =
            mp_xport_raw_recv(g->eps[from], mp_xport_tag_coll(g->id, op->seq, step, (uint32_t)from),
                              rbuf, rbytes, &reqs[0]);
    }
    if (st == MP_OK && to >= 0) {
        st = mp_xport_raw_send(g->eps[to], mp_xport_tag_coll(g->id, op->seq, step, g->rank), sbuf,
                               sbytes, &reqs[1]);
    }
    mp_status_t wst =
        mp_xport_wait_set(g->worker, reqs, 2, st == MP_OK ? op->deadline : 0, group_check, g);
    return st != MP_OK ? st : wst;
}

static void add_f32(float *restrict dst, const float *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dst[i] += src[i];
    }
}

/* ---- ring ---- */

/* In place on buf: afterwards rank r's block r holds the group's sum. Steps [step0, step0 + n-1).
 */
static mp_status_t ring_reduce_scatter(op_t *op, float *buf, size_t count, uint32_t step0)
{
    mp_coll_group_t *g = op->g;
    uint32_t n = g->size, r = g->rank;
    int left = (int)((r + n - 1) % n), right = (int)((r + 1) % n);
    size_t maxb = count / n + 1;
    mp_status_t st = grow(&g->scratch, &g->scratch_cap, maxb);
    if (st != MP_OK) {
        return st;
    }
    for (uint32_t s = 0; s + 1 < n; s++) {
        uint32_t sb = (r + 2 * n - s - 1) % n, rb = (r + 2 * n - s - 2) % n;
        size_t soff, slen, roff, rlen;
        mp_coll_block(count, n, sb, &soff, &slen);
        mp_coll_block(count, n, rb, &roff, &rlen);
        st = op_xchg(op, step0 + s, right, buf + soff, slen * sizeof(float), left, g->scratch,
                     rlen * sizeof(float));
        if (st != MP_OK) {
            return st;
        }
        add_f32(buf + roff, g->scratch, rlen);
    }
    return MP_OK;
}

/* In place on buf, rank r holding block r: afterwards every block everywhere. */
static mp_status_t ring_allgather(op_t *op, float *buf, size_t count, uint32_t step0)
{
    mp_coll_group_t *g = op->g;
    uint32_t n = g->size, r = g->rank;
    int left = (int)((r + n - 1) % n), right = (int)((r + 1) % n);
    for (uint32_t s = 0; s + 1 < n; s++) {
        uint32_t sb = (r + n - s) % n, rb = (r + 2 * n - s - 1) % n;
        size_t soff, slen, roff, rlen;
        mp_coll_block(count, n, sb, &soff, &slen);
        mp_coll_block(count, n, rb, &roff, &rlen);
        mp_status_t st = op_xchg(op, step0 + s, right, buf + soff, slen * sizeof(float), left,
                                 buf + roff, rlen * sizeof(float));
        if (st != MP_OK) {
            return st;
        }
    }
    return MP_OK;
}

/* ---- recursive doubling and recursive halving-doubling ---- */

/* The group rank behind rank pn of the p = 2^k ranks left after the fold. */
static int unfolded(uint32_t pn, uint32_t rem)
{
    return (int)(pn < rem ? pn * 2 + 1 : pn + rem);
}

/*
 * Folds a group of n = p + rem ranks into p: each of the first rem even
 * ranks hands its tensor to the odd rank after it and sits out
 * (*newrank_p = -1); the odd rank receives it whole into the scratch
 * buffer.  Step 0.
 */
static mp_status_t fold_in(op_t *op, float *buf, size_t count, uint32_t p, int *newrank_p)
{
    mp_coll_group_t *g = op->g;
    uint32_t r = g->rank, rem = g->size - p;
    size_t bytes = count * sizeof(float);
    mp_status_t st = MP_OK;
    if (r >= 2 * rem) {
        *newrank_p = (int)(r - rem);
    } else if (r % 2 == 0) {
        st = op_xchg(op, 0, (int)r + 1, buf, bytes, -1, NULL, 0);
        *newrank_p = -1;
    } else {
        st = grow(&g->scratch, &g->scratch_cap, count);
        if (st == MP_OK) {
            st = op_xchg(op, 0, -1, NULL, 0, (int)r - 1, g->scratch, bytes);
        }
        if (st == MP_OK) {
            add_f32(buf, g->scratch, count);
        }
        *newrank_p = (int)(r / 2);
    }
    return st;
}

/* Hands the result back to the ranks that sat out. */
static mp_status_t fold_out(op_t *op, float *buf, size_t count, uint32_t p, uint32_t step)
{
    mp_coll_group_t *g = op->g;
    uint32_t r = g->rank, rem = g->size - p;
    size_t bytes = count * sizeof(float);
    if (r >= 2 * rem) {
        return MP_OK;
    }
    if (r % 2 == 0) {
        return op_xchg(op, step, -1, NULL, 0, (int)r + 1, buf, bytes);
    }
    return op_xchg(op, step, (int)r - 1, buf, bytes, -1, NULL, 0);
}

static uint32_t pow2_floor(uint32_t n, uint32_t *rounds_p)
{
    uint32_t p = 1, rounds = 0;
    while (p * 2 <= n) {
        p *= 2;
        rounds++;
    }
    *rounds_p = rounds;
    return p;
}

/* log2(p) rounds, each exchanging and adding the whole tensor. */
static mp_status_t rd_allreduce(op_t *op, float *buf, size_t count)
{
    mp_coll_group_t *g = op->g;
    size_t bytes = count * sizeof(float);
    mp_status_t st = grow(&g->scratch, &g->scratch_cap, count);
    if (st != MP_OK) {
        return st;
    }
    uint32_t rounds, p = pow2_floor(g->size, &rounds), rem = g->size - p;
    int newrank;
    if ((st = fold_in(op, buf, count, p, &newrank)) != MP_OK) {
        return st;
    }
    if (newrank >= 0) {
        uint32_t k = 0;
        for (uint32_t mask = 1; mask < p; mask <<= 1, k++) {
            int partner = unfolded((uint32_t)newrank ^ mask, rem);
            st = op_xchg(op, 1 + k, partner, buf, bytes, partner, g->scratch, bytes);
            if (st != MP_OK) {
                return st;
            }
            /* a + b == b + a in IEEE arithmetic, so both partners hold the same bits. */
            add_f32(buf, g->scratch, count);
        }
    }
    return fold_out(op, buf, count, p, 1 + rounds);
}

/*
 * Rabenseifner's allreduce: a reduce-scatter by recursive halving (each
 * round exchanges half of the range still held and keeps the other half,
 * reduced), then an allgather by recursive doubling that retraces the
 * halvings.  The ring's bandwidth (2(p-1)/p of the tensor) in 2 log2(p)
 * rounds instead of 2(p-1) steps.  Each element is reduced by one rank and
 * copied to the others, so every rank holds the same bits.
 */
static mp_status_t rhd_allreduce(op_t *op, float *buf, size_t count)
{
    mp_coll_group_t *g = op->g;
    mp_status_t st = grow(&g->scratch, &g->scratch_cap, count / 2 + 1);
    if (st != MP_OK) {
        return st;
    }
    uint32_t rounds, p = pow2_floor(g->size, &rounds), rem = g->size - p;
    int newrank;
    if ((st = fold_in(op, buf, count, p, &newrank)) != MP_OK) {
        return st;
    }
    if (newrank >= 0) {
        uint32_t nr = (uint32_t)newrank;
        size_t lo[32], hi[32], cl = 0, ch = count;
        for (uint32_t k = 0; k < rounds; k++) {
            uint32_t mask = p >> (k + 1);
            int partner = unfolded(nr ^ mask, rem);
            size_t mid = cl + (ch - cl) / 2;
            lo[k] = cl;
            hi[k] = ch;
            size_t kl = (nr & mask) ? mid : cl, kh = (nr & mask) ? ch : mid;
            size_t gl = (nr & mask) ? cl : mid, gh = (nr & mask) ? mid : ch;
            st = op_xchg(op, 1 + k, partner, buf + gl, (gh - gl) * sizeof(float), partner,
                         g->scratch, (kh - kl) * sizeof(float));
            if (st != MP_OK) {
                return st;
            }
            add_f32(buf + kl, g->scratch, kh - kl);
            cl = kl;
            ch = kh;
        }
        for (uint32_t k = rounds; k-- > 0;) {
            uint32_t mask = p >> (k + 1);
            int partner = unfolded(nr ^ mask, rem);
            size_t ol = cl == lo[k] ? ch : lo[k], oh = cl == lo[k] ? hi[k] : cl;
            st = op_xchg(op, 1 + rounds + (rounds - 1 - k), partner, buf + cl,
                         (ch - cl) * sizeof(float), partner, buf + ol, (oh - ol) * sizeof(float));
            if (st != MP_OK) {
                return st;
            }
            cl = lo[k];
            ch = hi[k];
        }
    }
    return fold_out(op, buf, count, p, 1 + 2 * rounds);
}

/* ---- public collectives ---- */

mp_status_t mp_coll_allreduce_sum_f32_algo(mp_coll_group_t *g, float *buf, size_t count,
                                           mp_coll_algo_t algo, int64_t timeout_ms)
{
    op_t op;
    mp_status_t st = op_begin(g, timeout_ms, &op);
    if (st != MP_OK) {
        return st;
    }
    if (g->size == 1 || count == 0) {
        return MP_OK;
    }
    if (algo == MP_COLL_ALGO_AUTO) {
        int pow2 = (g->size & (g->size - 1)) == 0;
        size_t bytes = count * sizeof(float);
        if (pow2 && bytes > g->rhd_threshold) {
            algo = MP_COLL_ALGO_RHD;
        } else if (!pow2 && bytes > g->ring_threshold && count >= g->size) {
            algo = MP_COLL_ALGO_RING;
        } else {
            algo = MP_COLL_ALGO_RD;
        }
    }
    if (algo == MP_COLL_ALGO_RING) {
        st = ring_reduce_scatter(&op, buf, count, 0);
        if (st == MP_OK) {
            st = ring_allgather(&op, buf, count, g->size - 1);
        }
    } else if (algo == MP_COLL_ALGO_RHD) {
        st = rhd_allreduce(&op, buf, count);
    } else {
        st = rd_allreduce(&op, buf, count);
    }
    return st == MP_OK ? MP_OK : op_fail(&op, st, "allreduce");
}

mp_status_t mp_coll_allreduce_sum_f32(mp_coll_group_t *g, float *buf, size_t count,
                                      int64_t timeout_ms)
{
    return mp_coll_allreduce_sum_f32_algo(g, buf, count, MP_COLL_ALGO_AUTO, timeout_ms);
}

mp_status_t mp_coll_allgather_f32(mp_coll_group_t *g, const float *mine, float *all, size_t count,
                                  int64_t timeout_ms)
{
    op_t op;
    mp_status_t st = op_begin(g, timeout_ms, &op);
    if (st != MP_OK) {
        return st;
    }
    size_t off, len;
    mp_coll_block(count, g->size, g->rank, &off, &len);
    if (len > 0 && mine != all + off) {
        memmove(all + off, mine, len * sizeof(float));
    }
    if (g->size == 1 || count == 0) {
        return MP_OK;
    }
    st = ring_allgather(&op, all, count, 0);
    return st == MP_OK ? MP_OK : op_fail(&op, st, "allgather");
}

mp_status_t mp_coll_reduce_scatter_sum_f32(mp_coll_group_t *g, const float *in, float *mine,
                                           size_t count, int64_t timeout_ms)
{
    op_t op;
    mp_status_t st = op_begin(g, timeout_ms, &op);
    if (st != MP_OK) {
        return st;
    }
    size_t off, len;
    mp_coll_block(count, g->size, g->rank, &off, &len);
    if (g->size == 1 || count == 0) {
        if (len > 0 && mine != in + off) {
            memmove(mine, in + off, len * sizeof(float));
        }
        return MP_OK;
    }
    st = grow(&g->work, &g->work_cap, count);
    if (st != MP_OK) {
        return op_fail(&op, st, "reduce-scatter");
    }
    memcpy(g->work, in, count * sizeof(float));
    st = ring_reduce_scatter(&op, g->work, count, 0);
    if (st != MP_OK) {
        return op_fail(&op, st, "reduce-scatter");
    }
    if (len > 0) {
        memcpy(mine, g->work + off, len * sizeof(float));
    }
    return MP_OK;
}

mp_status_t mp_coll_bcast(mp_coll_group_t *g, void *buf, size_t bytes, uint32_t root,
                          int64_t timeout_ms)
{
    if (root >= g->size) {
        mp_err("coll: broadcast root %u outside a group of %u", root, g->size);
        return MP_ERR_INVAL;
    }
    op_t op;
    mp_status_t st = op_begin(g, timeout_ms, &op);
    if (st != MP_OK) {
        return st;
    }
    uint32_t n = g->size, vr = (g->rank + n - root) % n;
    if (n == 1 || bytes == 0) {
        return MP_OK;
    }
    /* Binomial tree over ranks relative to the root. */
    uint32_t mask = 1;
    while (mask < n) {
        if (vr & mask) {
            int parent = (int)((vr - mask + root) % n);
            st = op_xchg(&op, 0, -1, NULL, 0, parent, buf, bytes);
            if (st != MP_OK) {
                return op_fail(&op, st, "broadcast");
            }
            break;
        }
        mask <<= 1;
    }
    mp_xport_req_t *reqs[8 * sizeof(uint32_t)] = {NULL};
    size_t nreq = 0;
    for (mask >>= 1; mask > 0; mask >>= 1) {
        if (vr + mask < n) {
            int child = (int)((vr + mask + root) % n);
            st = mp_xport_raw_send(g->eps[child], mp_xport_tag_coll(g->id, op.seq, 0, g->rank), buf,
                                   bytes, &reqs[nreq]);
            if (st != MP_OK) {
                break;
            }
            nreq++;
        }
    }
    mp_status_t wst =
        mp_xport_wait_set(g->worker, reqs, nreq, st == MP_OK ? op.deadline : 0, group_check, g);
    if (st == MP_OK) {
        st = wst;
    }
    return st == MP_OK ? MP_OK : op_fail(&op, st, "broadcast");
}

mp_status_t mp_coll_barrier(mp_coll_group_t *g, int64_t timeout_ms)
{
    op_t op;
    mp_status_t st = op_begin(g, timeout_ms, &op);
    if (st != MP_OK) {
        return st;
    }
    uint32_t n = g->size, r = g->rank, k = 0;
    char out = 1, in = 0;
    for (uint32_t d = 1; d < n && st == MP_OK; d <<= 1, k++) {
        st = op_xchg(&op, k, (int)((r + d) % n), &out, 1, (int)((r + n - d) % n), &in, 1);
    }
    return st == MP_OK ? MP_OK : op_fail(&op, st, "barrier");
}
