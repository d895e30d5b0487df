/*
 * feeder.c - streams a job's data to its shards (feeder.h): per training
 * step, the global batch of the serial trainer's order, cut into replicas
 * and micro-batches; per evaluation, the test split in chunks.  Owns the
 * data sets, three batch buffers (an event's sends read them until they
 * complete) and a UCX worker; runs on the feeder's own thread.
 *
 * Legend: B = global batch, D = input width, L = labels per sample (the
 * positions of a text window, else 1), R = rows of a micro-batch.
 */
#include "engine/feeder.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "engine/internal.h"
#include "model/data.h"
#include "model/train.h"
#include "parallel/placement.h"

#define NBUF 3  /* batch buffers in rotation */
#define AHEAD 2 /* events sent before the shards acknowledge */

typedef struct {
    int rank, dp_rank;
    bool first, last; /* wants inputs / labels */
    mp_xport_ep_t *ep;
} dest_t;

typedef struct {
    mp_xport_req_t **req;
    int *rank; /* the shard each send goes to */
    int n, cap;
} reqs_t;

struct mp_feeder {
    mp_feeder_opts_t o;
    mp_engine_geom_t g;
    int64_t timeout_ms;
    mp_dataset_t train, test;
    int64_t *perm;
    int64_t perm_epoch;
    float *xb[NBUF];
    int32_t *yb[NBUF];
    reqs_t pending[NBUF];
    /* The work of the event in each buffer, in training steps (an
     * evaluation of many chunks counts for several), which scales the time
     * its acknowledgement may take. */
    int64_t steps_of[NBUF];
    dest_t *dest;
    int ndest;
    mp_xport_worker_t *w;
    atomic_bool cancel;
};

static uint64_t deadline(const mp_feeder_t *f)
{
    return mp_engine_now_ns() + (uint64_t)f->timeout_ms * 1000000ull;
}

mp_status_t mp_feeder_create(mp_xport_ctx_t *ctx, const mp_feeder_opts_t *opts,
                             mp_feeder_t **feeder_p, mp_errbuf_t *err)
{
    mp_feeder_t *f = mp_calloc(1, sizeof(*f));
    if (f == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "feeder: out of memory");
    }
    f->o = *opts;
    f->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 30000;
    f->perm_epoch = -1;
    atomic_init(&f->cancel, false);
    mp_status_t st = mp_train_load_data(opts->spec, &f->train, &f->test, err);
    if (st != MP_OK) {
        mp_free(f);
        return st;
    }
    st = mp_engine_geom_init(opts->spec, f->train.n, f->test.n, &f->g, err);
    if (st != MP_OK) {
        goto err_free;
    }
    const mp_engine_geom_t *g = &f->g;
    f->perm = mp_malloc((size_t)f->train.n * sizeof(int64_t));
    if (f->perm == NULL) {
        goto err_nomem;
    }
    for (int b = 0; b < NBUF; b++) {
        f->xb[b] = mp_malloc((size_t)(g->batch * f->train.dim) * sizeof(float));
        f->yb[b] = mp_malloc((size_t)(g->batch * g->label_dim) * sizeof(int32_t));
        if (f->xb[b] == NULL || f->yb[b] == NULL) {
            goto err_nomem;
        }
    }
    /* Every first- and last-stage shard, by rank (one entry when both). */
    f->dest = mp_calloc((size_t)g->nranks, sizeof(dest_t));
    if (f->dest == NULL) {
        goto err_nomem;
    }
    for (int d = 0; d < g->dp; d++) {
        for (int s = 0; s < g->pp; s++) {
            if (s != 0 && s != g->pp - 1) {
                continue;
            }
            for (int t = 0; t < g->tp; t++) {
                dest_t *x = &f->dest[f->ndest++];
                x->rank = mp_place_rank(g->pp, g->tp, s, t, d);
                x->dp_rank = d;
                x->first = s == 0;
                x->last = s == g->pp - 1;
            }
        }
    }
    mp_xport_worker_opts_t wo = {.rank = g->feeder_rank, .timeout_ms = f->timeout_ms};
    st = mp_xport_worker_create(ctx, &wo, &f->w);
    if (st != MP_OK) {
        mp_errbuf_set(err, st, "feeder: cannot create its UCX worker: %s", mp_strerror(st));
        goto err_free;
    }
    *feeder_p = f;
    return MP_OK;

err_nomem:
    st = mp_errbuf_set(err, MP_ERR_NOMEM, "feeder: out of memory");
err_free:
    mp_feeder_destroy(f);
    return st;
}

void mp_feeder_sizes(const mp_feeder_t *f, int64_t *train_n_p, int64_t *test_n_p)
{
    *train_n_p = f->train.n;
    *test_n_p = f->test.n;
}

const mp_engine_geom_t *mp_feeder_geom(const mp_feeder_t *f)
{
    return &f->g;
}

mp_status_t mp_feeder_address(mp_feeder_t *f, void **addr_p, size_t *len_p)
{
    return mp_xport_worker_address(f->w, addr_p, len_p);
}

mp_status_t mp_feeder_connect(mp_feeder_t *f, const void *const *addrs, const size_t *lens,
                              mp_errbuf_t *err)
{
    for (int i = 0; i < f->ndest; i++) {
        dest_t *x = &f->dest[i];
        mp_status_t st = addrs[x->rank] == NULL
                             ? MP_ERR_INVAL
                             : mp_xport_ep_connect(f->w, addrs[x->rank], lens[x->rank],
                                                   (uint32_t)x->rank, &x->ep);
        if (st != MP_OK) {
            mp_feeder_disconnect(f);
            return mp_errbuf_set(err, st, "feeder: connecting to rank %d failed: %s", x->rank,
                                 mp_strerror(st));
        }
    }
    return MP_OK;
}

void mp_feeder_disconnect(mp_feeder_t *f)
{
    for (int i = 0; i < f->ndest; i++) {
        if (f->dest[i].ep != NULL) {
            mp_xport_ep_destroy(f->dest[i].ep);
            f->dest[i].ep = NULL;
        }
    }
}

void mp_feeder_cancel(mp_feeder_t *f)
{
    atomic_store(&f->cancel, true);
}

/* ---- sending ----------------------------------------------------------- */

static mp_status_t send_one(mp_feeder_t *f, reqs_t *rs, const dest_t *x, uint32_t kind,
                            uint64_t seq, uint64_t step, const void *data, int64_t rows,
                            int64_t cols, mp_errbuf_t *err)
{
    if (rs->n == rs->cap) {
        int cap = rs->cap ? 2 * rs->cap : 64;
        mp_xport_req_t **r = mp_realloc(rs->req, (size_t)cap * sizeof(*r));
        if (r != NULL) {
            rs->req = r;
        }
        int *rk = r != NULL ? mp_realloc(rs->rank, (size_t)cap * sizeof(*rk)) : NULL;
        if (rk == NULL) {
            return mp_errbuf_set(err, MP_ERR_NOMEM, "feeder: out of memory");
        }
        rs->rank = rk;
        rs->cap = cap;
    }
    mp_xport_hdr_t hdr =
        mp_engine_hdr(f->o.job, kind, seq, step, rows, cols, kind == MP_XPORT_KIND_LABEL);
    mp_status_t st = mp_xport_send(x->ep, &hdr, data, &rs->req[rs->n]);
    if (st != MP_OK) {
        return mp_errbuf_set(err, st, "feeder: sending to rank %d failed: %s", x->rank,
                             mp_strerror(st));
    }
    rs->rank[rs->n++] = x->rank;
    return MP_OK;
}

/* Waits for the sends of one buffer; after an error, aborts them. */
static mp_status_t settle(mp_feeder_t *f, reqs_t *rs, mp_status_t why, mp_errbuf_t *err)
{
    mp_status_t st = MP_OK;
    for (int i = 0; i < rs->n; i++) {
        if (why != MP_OK || st != MP_OK) {
            mp_engine_abort(rs->req[i]);
            continue;
        }
        st = mp_engine_wait(rs->req[i], deadline(f), &f->cancel, NULL);
        if (st != MP_OK) {
            mp_errbuf_set(err, st, "feeder: sending data to rank %d failed: %s", rs->rank[i],
                          mp_strerror(st));
        }
    }
    rs->n = 0;
    return st;
}

/* Waits for every fed shard's acknowledgement of event `index`. */
static mp_status_t wait_acks(mp_feeder_t *f, int64_t index, mp_errbuf_t *err)
{
    for (int i = 0; i < f->ndest; i++) {
        const dest_t *x = &f->dest[i];
        int32_t token = -1;
        mp_xport_req_t *req;
        mp_status_t st =
            mp_xport_recv(x->ep, f->o.job & MP_XPORT_JOB_MAX, MP_XPORT_KIND_USER,
                          mp_engine_tag_mb((uint64_t)index), &token, sizeof(token), &req);
        if (st == MP_OK) {
            uint64_t allow = (uint64_t)f->steps_of[index % NBUF] * (uint64_t)f->timeout_ms;
            st = mp_engine_wait(req, mp_engine_now_ns() + allow * 1000000ull, &f->cancel, NULL);
        }
        if (st == MP_OK && token != (int32_t)index) {
            st = MP_ERR_PROTO;
        }
        if (st != MP_OK) {
            int s, t, d;
            mp_place_coords(f->g.pp, f->g.tp, x->rank, &s, &t, &d);
            return mp_errbuf_set(err, st,
                                 "feeder: waiting for rank %d (stage %d, tp %d, dp %d) to finish "
                                 "event %lld failed: %s",
                                 x->rank, s, t, d, (long long)index, mp_strerror(st));
        }
    }
    return MP_OK;
}

static mp_status_t feed_train(mp_feeder_t *f, const mp_engine_ev_t *ev, int b, mp_errbuf_t *err)
{
    const mp_engine_geom_t *g = &f->g;
    if (f->perm_epoch != ev->epoch) {
        mp_data_order(f->perm, f->train.n, f->o.spec->train.seed, ev->epoch,
                      f->o.spec->train.shuffle);
        f->perm_epoch = ev->epoch;
    }
    /* Batch k of the epoch: samples [k*B, (k+1)*B) of the order. */
    mp_data_gather(&f->train, f->perm, ev->step_in_epoch * g->batch, g->batch, f->xb[b], f->yb[b]);
    int64_t D = f->train.dim, L = g->label_dim, R = g->mb_rows;
    for (int i = 0; i < f->ndest; i++) {
        const dest_t *x = &f->dest[i];
        uint64_t seq = mp_engine_geom_seq(g, x->dp_rank, ev);
        for (int k = 0; k < g->m; k++) {
            int64_t row = x->dp_rank * g->replica_rows + k * R;
            mp_status_t st = MP_OK;
            if (x->first) {
                st = send_one(f, &f->pending[b], x, MP_XPORT_KIND_INPUT, seq + (uint64_t)k,
                              (uint64_t)ev->step, f->xb[b] + row * D, R, D, err);
            }
            if (st == MP_OK && x->last) {
                st = send_one(f, &f->pending[b], x, MP_XPORT_KIND_LABEL, seq + (uint64_t)k,
                              (uint64_t)ev->step, f->yb[b] + row * L, R, L, err);
            }
            if (st != MP_OK) {
                return st;
            }
        }
    }
    return MP_OK;
}

static mp_status_t feed_eval(mp_feeder_t *f, const mp_engine_ev_t *ev, int b, mp_errbuf_t *err)
{
    const mp_engine_geom_t *g = &f->g;
    int64_t D = f->test.dim, L = g->label_dim;
    for (int i = 0; i < f->ndest; i++) {
        const dest_t *x = &f->dest[i];
        uint64_t seq = mp_engine_geom_seq(g, x->dp_rank, ev);
        int64_t chunks = mp_engine_geom_replica_chunks(g, x->dp_rank);
        for (int64_t ci = 0; ci < chunks; ci++) {
            int64_t c = ci * g->dp + x->dp_rank;
            int64_t row = c * g->eval_rows, rows = mp_engine_geom_chunk_rows(g, c);
            mp_status_t st = MP_OK;
            if (x->first) {
                st = send_one(f, &f->pending[b], x, MP_XPORT_KIND_INPUT, seq + (uint64_t)ci,
                              (uint64_t)ev->step, f->test.x + row * D, rows, D, err);
            }
            if (st == MP_OK && x->last) {
                st = send_one(f, &f->pending[b], x, MP_XPORT_KIND_LABEL, seq + (uint64_t)ci,
                              (uint64_t)ev->step, f->test.y + row * L, rows, L, err);
            }
            if (st != MP_OK) {
                return st;
            }
        }
    }
    return MP_OK;
}

mp_status_t mp_feeder_run(mp_feeder_t *f, mp_errbuf_t *err)
{
    int64_t it = mp_engine_geom_seek(&f->g, f->o.start_step);
    int64_t first = it, events = it;
    mp_status_t st = MP_OK;
    for (;;) {
        mp_engine_ev_t ev;
        mp_engine_geom_next(&f->g, &it, &ev);
        if (ev.kind == MP_ENGINE_EV_END) {
            break;
        }
        if (atomic_load(&f->cancel)) {
            st = mp_errbuf_set(err, MP_ERR_CANCELLED, "feeder: cancelled");
            break;
        }
        if (ev.index - first >= AHEAD) {
            st = wait_acks(f, ev.index - AHEAD, err);
            if (st != MP_OK) {
                break;
            }
        }
        /* The buffer's previous event is acknowledged, so its sends are done. */
        int b = (int)(ev.index % NBUF);
        st = settle(f, &f->pending[b], MP_OK, err);
        /* A training step may take the timeout; an evaluation of c chunks
         * (forward only, one micro-batch each) as long as c / m steps. */
        int64_t m = f->g.m > 0 ? f->g.m : 1;
        int64_t c = ev.kind == MP_ENGINE_EV_TRAIN ? 0 : mp_engine_geom_replica_chunks(&f->g, 0);
        f->steps_of[b] = c > m ? (c + m - 1) / m : 1;
        if (st == MP_OK) {
            st = ev.kind == MP_ENGINE_EV_TRAIN ? feed_train(f, &ev, b, err)
                                               : feed_eval(f, &ev, b, err);
        }
        if (st != MP_OK) {
            break;
        }
        events = ev.index + 1;
    }
    /* The shards' last acknowledgements: every event has been consumed. */
    for (int64_t e = events - AHEAD < first ? first : events - AHEAD; st == MP_OK && e < events;
         e++) {
        st = wait_acks(f, e, err);
    }
    for (int b = 0; b < NBUF; b++) {
        mp_status_t s2 = settle(f, &f->pending[b], st, err);
        if (st == MP_OK) {
            st = s2;
        }
    }
    return st;
}

void mp_feeder_destroy(mp_feeder_t *f)
{
    if (f == NULL) {
        return;
    }
    if (f->w != NULL) {
        for (int b = 0; b < NBUF; b++) {
            settle(f, &f->pending[b], MP_ERR_CANCELLED, NULL);
        }
        mp_feeder_disconnect(f);
        mp_xport_worker_destroy(f->w);
    }
    for (int b = 0; b < NBUF; b++) {
        mp_free(f->xb[b]);
        mp_free(f->yb[b]);
        mp_free(f->pending[b].req);
        mp_free(f->pending[b].rank);
    }
    mp_free(f->dest);
    mp_free(f->perm);
    mp_dataset_free(&f->train);
    mp_dataset_free(&f->test);
    mp_free(f);
}
