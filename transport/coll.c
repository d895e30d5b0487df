/*
 * coll.c - collectives over the UCX transport: ring reduce-scatter and
 * allgather (bandwidth-bound), recursive doubling allreduce with the
 * non-power-of-two fold (latency-bound), binomial-tree broadcast and a
 * dissemination barrier.
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
void mp_coll_group_set_ring_threshold(mp_coll_group_t *g, size_t bytes)
{
    g->ring_threshold = bytes;
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

/* ---- recursive doubling ---- */

static mp_status_t rd_allreduce(op_t *op, float *buf, size_t count)
{
    mp_coll_group_t *g = op->g;
    uint32_t n = g->size, r = g->rank;
    size_t bytes = count * sizeof(float);
    mp_status_t st = grow(&g->scratch, &g->scratch_cap, count);
    if (st != MP_OK) {
        return st;
    }
    uint32_t p = 1, rounds = 0;
    while (p * 2 <= n) {
        p *= 2;
        rounds++;
    }
    uint32_t rem = n - p;
    int newrank;
    /* Fold the first 2*rem ranks pairwise so that p ranks remain. */
    if (r < 2 * rem) {
        if (r % 2 == 0) {
            st = op_xchg(op, 0, (int)r + 1, buf, bytes, -1, NULL, 0);
            newrank = -1;
        } else {
            st = op_xchg(op, 0, -1, NULL, 0, (int)r - 1, g->scratch, bytes);
            if (st == MP_OK) {
                add_f32(buf, g->scratch, count);
            }
            newrank = (int)(r / 2);
        }
        if (st != MP_OK) {
            return st;
        }
    } else {
        newrank = (int)(r - rem);
    }
    if (newrank >= 0) {
        uint32_t k = 0;
        for (uint32_t mask = 1; mask < p; mask <<= 1, k++) {
            uint32_t pn = (uint32_t)newrank ^ mask;
            int partner = (int)(pn < rem ? pn * 2 + 1 : pn + rem);
            st = op_xchg(op, 1 + k, partner, buf, bytes, partner, g->scratch, bytes);
            if (st != MP_OK) {
                return st;
            }
            /* a + b == b + a in IEEE arithmetic, so both partners hold the same bits. */
            add_f32(buf, g->scratch, count);
        }
    }
    if (r < 2 * rem) {
        if (r % 2 == 0) {
            st = op_xchg(op, 1 + rounds, -1, NULL, 0, (int)r + 1, buf, bytes);
        } else {
            st = op_xchg(op, 1 + rounds, (int)r - 1, buf, bytes, -1, NULL, 0);
        }
    }
    return st;
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
        algo = count * sizeof(float) > g->ring_threshold && count >= g->size ? MP_COLL_ALGO_RING
                                                                             : MP_COLL_ALGO_RD;
    }
    if (algo == MP_COLL_ALGO_RING) {
        st = ring_reduce_scatter(&op, buf, count, 0);
        if (st == MP_OK) {
            st = ring_allgather(&op, buf, count, g->size - 1);
        }
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
