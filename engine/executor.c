/*
 * executor.c - one shard of a model-parallel job (executor.h): a CPU
 * backend, the model of its stage's layers and TP slice, its UCX worker
 * with endpoints to its neighbours, TP group, DP group and the feeder, and
 * the loop that runs the job's events (training steps as the schedule's
 * action list, evaluations forward only) with a timeline of every action.
 * Everything here runs on the executor's own thread, except
 * mp_exec_cancel, which only sets an atomic flag.  With a device backend
 * (CUDA) every message and the DP allreduce go through host buffers
 * (download, transfer, upload); on the CPU the model's buffers are sent
 * and received directly.
 *
 * Legend: R = rows of a micro-batch, I = a chunk's input width, O = its
 * output width, L = labels per row (model.seq), m = micro-batches, S =
 * activation slots of a chunk, v = chunks of the stage.
 *
 * Chunks: a stage holds v model chunks (interleaved_1f1b; v = 1 for every
 * other schedule), chunk c being virtual stage c * pp + s of the cut
 * (parallel/sched.h "Chunks"), each with its own model, activation slots
 * and send buffers.  The neighbours are the previous and next stage on a
 * ring: with v > 1 the last stage's chunk c sends to the first stage's
 * chunk c + 1.  A message's sequence number is (seq + k) * v + c for
 * micro-batch k and the receiving chunk c, so each chunk's messages match
 * only their own receives.
 *
 * Messages: activations and gradients between stages are tagged by
 * sequence number (engine/job.h) so that a receive matches exactly one
 * micro-batch of one event; sends are posted without waiting (the
 * schedule assumes buffered sends) from buffers that stay untouched until
 * the send completes: a slot's output until the slot is reused, and a
 * per-slot copy of the input gradient (the model's gradient buffers are
 * reused by the next backward).
 *
 * Prefetch: the data of a training step is received ahead of need.  When
 * a step starts, the receives of all its input micro-batches (first stage)
 * and labels (last stage) are posted, and so are those of the next step,
 * into two sets of host buffers used in turn (bounded: two steps of data,
 * as the feeder sends at most two events ahead).  The transfers then run
 * while the stage computes (every wait of the worker progresses them), so
 * a forward finds its input already landed and only copies it into its
 * slot.
 */
#include "engine/executor.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "engine/internal.h"
#include "model/ckpt.h"
#include "model/model.h"
#include "model/train.h"
#include "parallel/partition.h"
#include "parallel/placement.h"
#include "transport/coll.h"

#define TP_GROUP_ID 1
#define DP_GROUP_ID 2

/* One model chunk of the stage (a virtual stage) and its buffers. */
typedef struct {
    int c, u;         /* chunk index, virtual stage c * pp + stage */
    bool first, last; /* the first / last virtual stage of the pipeline */
    mp_model_t *model;
    int64_t I, O;
    int nslots;
    /* Slots: which micro-batch holds each, its forward output, and the
     * sends still reading from it. */
    int *slot_of; /* [max(m, chunks)] micro-batch -> slot, -1 */
    int nslot_of;
    bool *busy;                             /* [S] */
    float **out;                            /* [S] */
    mp_xport_req_t **act_req;               /* [S] */
    float **gsend;                          /* [S] host [R, I] copies of input gradients */
    mp_xport_req_t **grad_req;              /* [S] */
    float **in_host, **out_host, **og_host; /* [S] [R, I], [R, O], [R, O]: staging */
    /* parallel.fuse_w: slots whose W waits to run in one mp_model_backward_weight_n. */
    int wq[MP_SPEC_MAX_FUSE_W];
    int nwq;
    int64_t wq_rows;
} chunk_t;

struct mp_exec {
    mp_exec_opts_t o;
    const mp_spec_t *spec;
    mp_engine_geom_t g;
    int rank, stage;
    bool first, last;
    int64_t timeout_ms;
    mp_part_t part;
    mp_tp_plan_t *plan;
    mp_sched_t *sched;
    mp_backend_t *be;
    int nchunks;         /* v */
    chunk_t *ch;         /* [v] */
    mp_model_t **models; /* [v] the chunks' models, for checkpoints */
    int64_t I, R;        /* I: the first chunk's input width (the feeder's on stage 0) */
    bool split;          /* the schedule splits this stage's backward into BWD and BWD_W */

    mp_xport_worker_t *w;
    mp_xport_ep_t *ep_prev, *ep_next, *ep_feeder;
    mp_xport_ep_t **ep_tp; /* [tp] */
    mp_xport_ep_t **ep_dp; /* [dp] */
    mp_coll_group_t *tp_group, *dp_group;
    atomic_bool cancel;

    int32_t *labels; /* [m, R * L] */
    /* Staging through host memory (a device backend). */
    bool staged;
    int32_t *labels_dev; /* [m, R * L] backend memory */
    float *grads_host;   /* [params of the largest chunk] for the DP allreduce */
    /* Prefetched training data, two steps' worth used in turn (event index
     * parity); pf[i].ev is the event whose receives are posted, or -1. */
    struct {
        int64_t ev;
        uint64_t seq;
        float *x;                      /* [m, R, I] inputs (first stage) */
        int32_t *y;                    /* [m, R * L] labels (last stage) */
        mp_xport_req_t **xreq, **yreq; /* [m] */
    } pf[2];
    int pf_cur;      /* the set of the running step */
    int64_t it_next; /* the event iterator after the running event */

    mp_exec_span_t *spans;
    int nspans, cap_spans;
    mp_status_t coll_st; /* the TP collective's own error, for the message */
    uint64_t seq;        /* the current event's first sequence number */
    int64_t step;        /* the current event's step (header field) */
    int phase;           /* mp_exec_phase_t of the current event */
    mp_engine_pub_t pub; /* what it is doing, for mp_exec_probe */

    mp_ckptw_t *writer; /* checkpoints: the writer thread and its snapshot */
    mp_ckpt_snap_t *snap;
    uint64_t ckpt_pause_ns;
    int64_t ckpt_count;
};

/* ---- small helpers ---------------------------------------------------- */

static uint64_t deadline(const mp_exec_t *ex)
{
    return mp_engine_now_ns() + (uint64_t)ex->timeout_ms * 1000000ull;
}

/* A wait begins (peer -1: a group) or ends (MP_EXEC_WAIT_NONE). */
static void pub_wait(mp_exec_t *ex, mp_exec_wait_t wait, int peer)
{
    mp_engine_pub_wait(&ex->pub, wait, peer);
}

/* A new action; the worker's byte counts go with it. */
static void pub_action(mp_exec_t *ex, int op, int mb)
{
    mp_xport_worker_stats_t ws;
    mp_xport_worker_stats(ex->w, &ws);
    mp_engine_pub_bytes(&ex->pub, ws.bytes_sent, ws.bytes_received);
    mp_engine_pub_action(&ex->pub, ex->phase, ex->step, op, mb);
}

void mp_exec_probe(const mp_exec_t *ex, mp_exec_probe_t *probe_p)
{
    mp_engine_pub_read(&ex->pub, probe_p);
}

static int peer_rank(const mp_exec_t *ex, int stage, int tp_rank, int dp_rank)
{
    return mp_place_rank(ex->g.pp, ex->g.tp, stage, tp_rank, dp_rank);
}

/* Sets err for a failure of this shard involving `peer` (-1: none). */
static mp_status_t fail(mp_exec_t *ex, mp_errbuf_t *err, mp_status_t st, int peer, const char *what)
{
    char who[96] = "";
    if (peer >= 0 && (uint32_t)peer == ex->g.feeder_rank) {
        snprintf(who, sizeof(who), " with the feeder (rank %d)", peer);
    } else if (peer >= 0) {
        int s, t, d;
        mp_place_coords(ex->g.pp, ex->g.tp, peer, &s, &t, &d);
        snprintf(who, sizeof(who), " with rank %d (stage %d, tp %d, dp %d)", peer, s, t, d);
    }
    return mp_errbuf_set(err, st, "rank %d (stage %d, tp %d, dp %d): %s%s failed: %s", ex->rank,
                         ex->stage, ex->o.tp_rank, ex->o.dp_rank, what, who, mp_strerror(st));
}

static mp_status_t span_push(mp_exec_t *ex, mp_sched_op_t op, int mb, int chunk, uint64_t t0)
{
    if (ex->nspans == ex->cap_spans) {
        int cap = ex->cap_spans ? 2 * ex->cap_spans : 64;
        mp_exec_span_t *s = mp_realloc(ex->spans, (size_t)cap * sizeof(*s));
        if (s == NULL) {
            return MP_ERR_NOMEM;
        }
        ex->spans = s;
        ex->cap_spans = cap;
    }
    ex->spans[ex->nspans++] = (mp_exec_span_t){op, mb, t0, mp_engine_now_ns(), chunk};
    return MP_OK;
}

/* ---- TP collectives for the model (host memory: the CPU backend) ------ */

static mp_status_t tp_allreduce(void *ctx, float *buf, int64_t n)
{
    mp_exec_t *ex = ctx;
    pub_wait(ex, MP_EXEC_WAIT_TP, -1);
    mp_status_t st = mp_coll_allreduce_sum_f32(ex->tp_group, buf, (size_t)n, ex->timeout_ms);
    pub_wait(ex, MP_EXEC_WAIT_NONE, -1);
    ex->coll_st = st;
    return st;
}

static mp_status_t tp_allgather(void *ctx, const float *in, float *out, int64_t n_per_rank)
{
    mp_exec_t *ex = ctx;
    pub_wait(ex, MP_EXEC_WAIT_TP, -1);
    mp_status_t st = mp_coll_allgather_f32(ex->tp_group, in, out, (size_t)(n_per_rank * ex->g.tp),
                                           ex->timeout_ms);
    pub_wait(ex, MP_EXEC_WAIT_NONE, -1);
    ex->coll_st = st;
    return st;
}

/* ---- creation --------------------------------------------------------- */

static mp_status_t alloc_staging(mp_exec_t *ex)
{
    int64_t params = 0;
    for (int c = 0; c < ex->nchunks; c++) {
        chunk_t *ch = &ex->ch[c];
        int S = ch->nslots;
        ch->in_host = mp_calloc((size_t)S, sizeof(float *));
        ch->out_host = mp_calloc((size_t)S, sizeof(float *));
        ch->og_host = mp_calloc((size_t)S, sizeof(float *));
        if (ch->in_host == NULL || ch->out_host == NULL || ch->og_host == NULL) {
            return MP_ERR_NOMEM;
        }
        for (int s = 0; s < S; s++) {
            ch->in_host[s] = mp_malloc((size_t)(ex->R * ch->I) * sizeof(float));
            ch->out_host[s] = mp_malloc((size_t)(ex->R * ch->O) * sizeof(float));
            ch->og_host[s] = mp_malloc((size_t)(ex->R * ch->O) * sizeof(float));
            if (ch->in_host[s] == NULL || ch->out_host[s] == NULL || ch->og_host[s] == NULL) {
                return MP_ERR_NOMEM;
            }
        }
        int64_t n = mp_model_param_count(ch->model);
        params = n > params ? n : params;
    }
    ex->labels_dev = ex->be->ops->alloc(
        ex->be, (size_t)(ex->g.m * ex->R * ex->g.label_dim) * sizeof(int32_t));
    if (ex->labels_dev == NULL) {
        return MP_ERR_NOMEM;
    }
    if (ex->g.dp > 1) {
        ex->grads_host = mp_malloc((size_t)params * sizeof(float));
        if (ex->grads_host == NULL) {
            return MP_ERR_NOMEM;
        }
    }
    return MP_OK;
}

/* Chunk c's model and buffers (virtual stage c * pp + stage of the cut). */
static mp_status_t chunk_create(mp_exec_t *ex, int c, mp_errbuf_t *err)
{
    const mp_engine_geom_t *g = &ex->g;
    chunk_t *ch = &ex->ch[c];
    ch->c = c;
    ch->u = c * g->pp + ex->stage;
    ch->first = ch->u == 0;
    ch->last = ch->u == g->pp * ex->nchunks - 1;
    ch->nslots = mp_sched_slots(ex->sched, ex->stage, c);
    mp_model_coll_t coll = {tp_allreduce, tp_allgather, ex};
    mp_status_t st = mp_model_create_shard(ex->be, ex->spec, ex->plan, ex->part.first[ch->u],
                                           ex->part.count[ch->u], ex->o.tp_rank, &coll, ch->nslots,
                                           ex->R, &ch->model);
    if (st != MP_OK) {
        return mp_errbuf_set(err, st, "rank %d: cannot build the model of stage %d%s: %s", ex->rank,
                             ex->stage, ex->nchunks > 1 ? " (a chunk)" : "", mp_strerror(st));
    }
    ch->I = mp_model_in_dim(ch->model);
    ch->O = mp_model_out_dim(ch->model);
    int S = ch->nslots;
    int64_t chunks = mp_engine_geom_replica_chunks(g, ex->o.dp_rank);
    ch->nslot_of = (int)(g->m > chunks ? g->m : chunks);
    ch->slot_of = mp_calloc((size_t)ch->nslot_of, sizeof(int));
    ch->busy = mp_calloc((size_t)S, sizeof(bool));
    ch->out = mp_calloc((size_t)S, sizeof(float *));
    ch->act_req = mp_calloc((size_t)S, sizeof(mp_xport_req_t *));
    ch->gsend = mp_calloc((size_t)S, sizeof(float *));
    ch->grad_req = mp_calloc((size_t)S, sizeof(mp_xport_req_t *));
    if (ch->slot_of == NULL || ch->busy == NULL || ch->out == NULL || ch->act_req == NULL ||
        ch->gsend == NULL || ch->grad_req == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "executor: out of memory");
    }
    for (int s = 0; s < S && !ch->first; s++) {
        ch->gsend[s] = mp_malloc((size_t)(ex->R * ch->I) * sizeof(float));
        if (ch->gsend[s] == NULL) {
            return mp_errbuf_set(err, MP_ERR_NOMEM, "executor: out of memory");
        }
    }
    return MP_OK;
}

static void chunk_free(chunk_t *ch)
{
    for (int s = 0; s < ch->nslots; s++) {
        if (ch->in_host != NULL) {
            mp_free(ch->in_host[s]);
        }
        if (ch->out_host != NULL) {
            mp_free(ch->out_host[s]);
        }
        if (ch->og_host != NULL) {
            mp_free(ch->og_host[s]);
        }
        if (ch->gsend != NULL) {
            mp_free(ch->gsend[s]);
        }
    }
    mp_free(ch->in_host);
    mp_free(ch->out_host);
    mp_free(ch->og_host);
    mp_model_destroy(ch->model);
    mp_free(ch->gsend);
    mp_free(ch->grad_req);
    mp_free(ch->act_req);
    mp_free(ch->out);
    mp_free(ch->busy);
    mp_free(ch->slot_of);
}

mp_status_t mp_exec_create(mp_xport_ctx_t *ctx, const mp_exec_opts_t *opts, mp_exec_t **exec_p,
                           mp_errbuf_t *err)
{
    const mp_spec_t *spec = opts->spec;
    mp_exec_t *ex = mp_calloc(1, sizeof(*ex));
    if (ex == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "executor: out of memory");
    }
    ex->o = *opts;
    ex->spec = spec;
    ex->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 30000;
    atomic_init(&ex->cancel, false);
    mp_engine_pub_phase(&ex->pub, MP_EXEC_PHASE_SETUP);
    mp_status_t st = mp_engine_geom_init(spec, opts->train_n, opts->test_n, &ex->g, err);
    if (st != MP_OK) {
        goto err_free;
    }
    const mp_engine_geom_t *g = &ex->g;
    if (opts->stage < 0 || opts->stage >= g->pp || opts->tp_rank < 0 || opts->tp_rank >= g->tp ||
        opts->dp_rank < 0 || opts->dp_rank >= g->dp) {
        st = mp_errbuf_set(err, MP_ERR_INVAL,
                           "executor: shard (stage %d, tp %d, dp %d) is outside "
                           "the grid pp %d x tp %d x dp %d",
                           opts->stage, opts->tp_rank, opts->dp_rank, g->pp, g->tp, g->dp);
        goto err_free;
    }
    ex->stage = opts->stage;
    ex->rank = peer_rank(ex, opts->stage, opts->tp_rank, opts->dp_rank);
    ex->first = ex->stage == 0;
    ex->last = ex->stage == g->pp - 1;
    ex->R = g->mb_rows;

    st = mp_part_build(spec, &ex->part, err);
    if (st != MP_OK) {
        goto err_free;
    }
    ex->plan = mp_malloc(sizeof(*ex->plan));
    if (ex->plan == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "executor: out of memory");
        goto err_free;
    }
    st = mp_tp_plan_build(spec, &ex->part, ex->plan, err);
    if (st != MP_OK) {
        goto err_free;
    }
    ex->nchunks = mp_part_nparts(spec) / g->pp;
    st = mp_sched_build_for(spec, g->pp, ex->nchunks, &ex->sched, err);
    if (st != MP_OK) {
        goto err_free;
    }
    st = mp_sched_simulate(ex->sched, NULL, NULL, err);
    if (st != MP_OK) {
        goto err_free;
    }
    ex->split = mp_sched_stage_splits(ex->sched, ex->stage);

    if (opts->device_kind == MP_BACKEND_CUDA) {
        st = mp_backend_cuda_create(opts->device, opts->tf32, &ex->be);
    } else {
        st = mp_backend_cpu_create(opts->threads > 0 ? opts->threads : 1, &ex->be);
    }
    if (st != MP_OK) {
        mp_errbuf_set(err, st, "rank %d: cannot create its %s backend: %s", ex->rank,
                      opts->device_kind == MP_BACKEND_CUDA ? "CUDA" : "CPU", mp_strerror(st));
        goto err_free;
    }
    ex->staged = ex->be->kind != MP_BACKEND_CPU || opts->stage_through_host;
    ex->ch = mp_calloc((size_t)ex->nchunks, sizeof(chunk_t));
    if (ex->ch == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "executor: out of memory");
        goto err_free;
    }
    for (int c = 0; c < ex->nchunks; c++) {
        st = chunk_create(ex, c, err);
        if (st != MP_OK) {
            goto err_free;
        }
    }
    ex->models = mp_calloc((size_t)ex->nchunks, sizeof(mp_model_t *));
    if (ex->models == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "executor: out of memory");
        goto err_free;
    }
    for (int c = 0; c < ex->nchunks; c++) {
        ex->models[c] = ex->ch[c].model;
    }
    ex->I = ex->ch[0].I;
    if (ex->first && ex->I != g->in_dim) {
        /* A sample is seq positions: the first stage must take all of them. */
        st = mp_errbuf_set(err, MP_ERR_SPEC,
                           "rank %d: the model takes %lld inputs per sample, but a sample of "
                           "the data set has %lld (model.input x model.seq)",
                           ex->rank, (long long)ex->I, (long long)g->in_dim);
        goto err_free;
    }

    ex->labels = mp_calloc((size_t)(g->m * ex->R * g->label_dim), sizeof(int32_t));
    ex->ep_tp = mp_calloc((size_t)g->tp, sizeof(mp_xport_ep_t *));
    ex->ep_dp = mp_calloc((size_t)g->dp, sizeof(mp_xport_ep_t *));
    if (ex->labels == NULL || ex->ep_tp == NULL || ex->ep_dp == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "executor: out of memory");
        goto err_free;
    }
    for (int i = 0; i < 2; i++) {
        ex->pf[i].ev = -1;
        ex->pf[i].xreq = mp_calloc((size_t)g->m, sizeof(mp_xport_req_t *));
        ex->pf[i].yreq = mp_calloc((size_t)g->m, sizeof(mp_xport_req_t *));
        if (ex->first) {
            ex->pf[i].x = mp_malloc((size_t)(g->m * ex->R * ex->I) * sizeof(float));
        }
        if (ex->last) {
            ex->pf[i].y = mp_malloc((size_t)(g->m * ex->R * g->label_dim) * sizeof(int32_t));
        }
        if (ex->pf[i].xreq == NULL || ex->pf[i].yreq == NULL ||
            (ex->first && ex->pf[i].x == NULL) || (ex->last && ex->pf[i].y == NULL)) {
            st = mp_errbuf_set(err, MP_ERR_NOMEM, "executor: out of memory for prefetch buffers");
            goto err_free;
        }
    }
    if (ex->staged) {
        st = alloc_staging(ex);
        if (st != MP_OK) {
            mp_errbuf_set(err, st, "executor: out of memory for host staging buffers");
            goto err_free;
        }
    }
    mp_xport_worker_opts_t wo = {.rank = (uint32_t)ex->rank, .timeout_ms = ex->timeout_ms};
    st = mp_xport_worker_create(ctx, &wo, &ex->w);
    if (st != MP_OK) {
        mp_errbuf_set(err, st, "rank %d: cannot create its UCX worker: %s", ex->rank,
                      mp_strerror(st));
        goto err_free;
    }
    /* Cancellation reaches every wait of the worker, a TP or DP collective's
     * included, not only the executor's own message waits. */
    mp_xport_worker_set_abort(ex->w, &ex->cancel);
    *exec_p = ex;
    return MP_OK;

err_free:
    mp_exec_destroy(ex);
    return st;
}

mp_status_t mp_exec_address(mp_exec_t *ex, void **addr_p, size_t *len_p)
{
    return mp_xport_worker_address(ex->w, addr_p, len_p);
}

int mp_exec_rank(const mp_exec_t *ex)
{
    return ex->rank;
}
const mp_engine_geom_t *mp_exec_geom(const mp_exec_t *ex)
{
    return &ex->g;
}
/* With several chunks: their slots together, at their mean size. */
int64_t mp_exec_slot_bytes(const mp_exec_t *ex)
{
    int64_t bytes = 0;
    for (int c = 0; c < ex->nchunks; c++) {
        bytes += mp_model_slot_bytes(ex->ch[c].model) * ex->ch[c].nslots;
    }
    int n = mp_exec_slots(ex);
    return n > 0 ? bytes / n : 0;
}
int mp_exec_slots(const mp_exec_t *ex)
{
    int n = 0;
    for (int c = 0; c < ex->nchunks; c++) {
        n += ex->ch[c].nslots;
    }
    return n;
}

void mp_exec_cancel(mp_exec_t *ex)
{
    atomic_store(&ex->cancel, true);
}

/* ---- connection -------------------------------------------------------- */

static mp_status_t connect_one(mp_exec_t *ex, const void *const *addrs, const size_t *lens,
                               int peer, mp_xport_ep_t **ep_p, mp_errbuf_t *err)
{
    if (addrs[peer] == NULL) {
        return fail(ex, err, MP_ERR_INVAL, peer, "connecting (no address)");
    }
    mp_status_t st = mp_xport_ep_connect(ex->w, addrs[peer], lens[peer], (uint32_t)peer, ep_p);
    return st == MP_OK ? MP_OK : fail(ex, err, st, peer, "connecting");
}

mp_status_t mp_exec_connect(mp_exec_t *ex, const void *const *addrs, const size_t *lens,
                            mp_errbuf_t *err)
{
    const mp_engine_geom_t *g = &ex->g;
    int t = ex->o.tp_rank, d = ex->o.dp_rank;
    mp_status_t st = MP_OK;
    /* With chunks the stages form a ring: the last stage's chunk c feeds
     * the first stage's chunk c + 1.  At pp = 2 both neighbours are one
     * peer, and one endpoint serves both ways. */
    bool ring = ex->nchunks > 1;
    int prev = (ex->stage + g->pp - 1) % g->pp, next = (ex->stage + 1) % g->pp;
    if (!ex->first || ring) {
        st = connect_one(ex, addrs, lens, peer_rank(ex, prev, t, d), &ex->ep_prev, err);
    }
    if (st == MP_OK && (!ex->last || ring)) {
        if (ring && next == prev) {
            ex->ep_next = ex->ep_prev;
        } else {
            st = connect_one(ex, addrs, lens, peer_rank(ex, next, t, d), &ex->ep_next, err);
        }
    }
    if (st == MP_OK && (ex->first || ex->last)) {
        st = connect_one(ex, addrs, lens, (int)g->feeder_rank, &ex->ep_feeder, err);
    }
    for (int r = 0; r < g->tp && st == MP_OK && g->tp > 1; r++) {
        if (r != t) {
            st = connect_one(ex, addrs, lens, peer_rank(ex, ex->stage, r, d), &ex->ep_tp[r], err);
        }
    }
    for (int r = 0; r < g->dp && st == MP_OK && g->dp > 1; r++) {
        if (r != d) {
            st = connect_one(ex, addrs, lens, peer_rank(ex, ex->stage, t, r), &ex->ep_dp[r], err);
        }
    }
    if (st == MP_OK && g->tp > 1) {
        st = mp_coll_group_create(ex->w, TP_GROUP_ID, (uint32_t)g->tp, (uint32_t)t, ex->ep_tp,
                                  &ex->tp_group);
        if (st != MP_OK) {
            st = fail(ex, err, st, -1, "creating the TP group");
        }
    }
    if (st == MP_OK && g->dp > 1) {
        st = mp_coll_group_create(ex->w, DP_GROUP_ID, (uint32_t)g->dp, (uint32_t)d, ex->ep_dp,
                                  &ex->dp_group);
        if (st != MP_OK) {
            st = fail(ex, err, st, -1, "creating the DP group");
        }
    }
    if (st != MP_OK) {
        mp_exec_disconnect(ex);
    }
    return st;
}

void mp_exec_disconnect(mp_exec_t *ex)
{
    mp_coll_group_destroy(ex->tp_group);
    mp_coll_group_destroy(ex->dp_group);
    ex->tp_group = ex->dp_group = NULL;
    if (ex->ep_next == ex->ep_prev) {
        ex->ep_next = NULL; /* the same endpoint (a ring of two) */
    }
    mp_xport_ep_t **one[3] = {&ex->ep_prev, &ex->ep_next, &ex->ep_feeder};
    for (int i = 0; i < 3; i++) {
        if (*one[i] != NULL) {
            mp_xport_ep_destroy(*one[i]);
            *one[i] = NULL;
        }
    }
    for (int r = 0; ex->ep_tp != NULL && r < ex->g.tp; r++) {
        if (ex->ep_tp[r] != NULL) {
            mp_xport_ep_destroy(ex->ep_tp[r]);
            ex->ep_tp[r] = NULL;
        }
    }
    for (int r = 0; ex->ep_dp != NULL && r < ex->g.dp; r++) {
        if (ex->ep_dp[r] != NULL) {
            mp_xport_ep_destroy(ex->ep_dp[r]);
            ex->ep_dp[r] = NULL;
        }
    }
}

/* ---- messages ---------------------------------------------------------- */

static bool cancelled(mp_exec_t *ex)
{
    return atomic_load_explicit(&ex->cancel, memory_order_relaxed);
}

static mp_status_t wait_tensor(mp_exec_t *ex, mp_xport_ep_t *ep, mp_xport_req_t **req, int64_t rows,
                               int64_t cols, bool i32, mp_exec_wait_t wait, const char *what,
                               mp_errbuf_t *err);

/* Receives a [rows, cols] tensor of `kind` with sequence number seq from ep. */
static mp_status_t recv_tensor(mp_exec_t *ex, mp_xport_ep_t *ep, uint32_t kind, uint64_t seq,
                               void *buf, int64_t rows, int64_t cols, bool i32, mp_exec_wait_t wait,
                               const char *what, mp_errbuf_t *err)
{
    mp_xport_req_t *req;
    mp_status_t st = mp_xport_recv(ep, ex->o.job & MP_XPORT_JOB_MAX, kind, mp_engine_tag_mb(seq),
                                   buf, (size_t)(rows * cols) * 4, &req);
    if (st != MP_OK) {
        return fail(ex, err, st, (int)mp_xport_ep_peer_rank(ep), what);
    }
    return wait_tensor(ex, ep, &req, rows, cols, i32, wait, what, err);
}

/* Waits for a posted receive of a [rows, cols] tensor and checks its header. */
static mp_status_t wait_tensor(mp_exec_t *ex, mp_xport_ep_t *ep, mp_xport_req_t **req, int64_t rows,
                               int64_t cols, bool i32, mp_exec_wait_t wait, const char *what,
                               mp_errbuf_t *err)
{
    int peer = (int)mp_xport_ep_peer_rank(ep);
    mp_xport_hdr_t hdr;
    pub_wait(ex, wait, peer);
    mp_status_t st = mp_engine_wait(*req, deadline(ex), &ex->cancel, &hdr);
    pub_wait(ex, MP_EXEC_WAIT_NONE, -1);
    *req = NULL;
    if (st != MP_OK) {
        return fail(ex, err, st, peer, what);
    }
    uint64_t want_cols = (uint64_t)cols;
    if (hdr.ndim != 2 || hdr.shape[0] != (uint64_t)rows || hdr.shape[1] != want_cols ||
        hdr.dtype != (i32 ? MP_XPORT_DTYPE_I32 : MP_XPORT_DTYPE_F32)) {
        return mp_errbuf_set(err, MP_ERR_PROTO,
                             "rank %d: %s from rank %d: got a %u-d tensor [%llu, %llu], expected "
                             "[%lld, %lld]",
                             ex->rank, what, peer, hdr.ndim, (unsigned long long)hdr.shape[0],
                             (unsigned long long)hdr.shape[1], (long long)rows, (long long)cols);
    }
    return MP_OK;
}

static mp_status_t send_tensor(mp_exec_t *ex, mp_xport_ep_t *ep, uint32_t kind, uint64_t seq,
                               const void *buf, int64_t rows, int64_t cols, mp_xport_req_t **req_p,
                               const char *what, mp_errbuf_t *err)
{
    mp_xport_hdr_t hdr = mp_engine_hdr(ex->o.job, kind, seq, (uint64_t)ex->step, rows, cols, false);
    mp_status_t st = mp_xport_send(ep, &hdr, buf, req_p);
    return st == MP_OK ? MP_OK : fail(ex, err, st, (int)mp_xport_ep_peer_rank(ep), what);
}

/* Waits for a pending send (a buffer about to be reused). */
static mp_status_t settle(mp_exec_t *ex, mp_xport_req_t **req, int peer, const char *what,
                          mp_errbuf_t *err)
{
    if (*req == NULL) {
        return MP_OK;
    }
    pub_wait(ex, MP_EXEC_WAIT_SEND, peer);
    mp_status_t st = mp_engine_wait(*req, deadline(ex), &ex->cancel, NULL);
    pub_wait(ex, MP_EXEC_WAIT_NONE, -1);
    *req = NULL;
    return st == MP_OK ? MP_OK : fail(ex, err, st, peer, what);
}

static int next_rank(const mp_exec_t *ex)
{
    return ex->ep_next != NULL ? (int)mp_xport_ep_peer_rank(ex->ep_next) : -1;
}

static int prev_rank(const mp_exec_t *ex)
{
    return ex->ep_prev != NULL ? (int)mp_xport_ep_peer_rank(ex->ep_prev) : -1;
}

/* The sequence number of micro-batch (or evaluation chunk) k's activation
 * or gradient for the stage's chunk c: each chunk has its own. */
static uint64_t msg_seq(const mp_exec_t *ex, int k, int c)
{
    return (ex->seq + (uint64_t)k) * (uint64_t)ex->nchunks + (uint64_t)c;
}

/* The chunk of the neighbour a message of virtual stage u goes to (+1: the
 * next one, activations; -1: the previous one, gradients). */
static int peer_chunk(const mp_exec_t *ex, int u, int dir)
{
    return (u + dir) / ex->g.pp;
}

/* Aborts every request still pending (after an error). */
static void drain(mp_exec_t *ex)
{
    for (int c = 0; ex->ch != NULL && c < ex->nchunks; c++) {
        chunk_t *ch = &ex->ch[c];
        for (int s = 0; ch->act_req != NULL && s < ch->nslots; s++) {
            mp_engine_abort(ch->act_req[s]);
            mp_engine_abort(ch->grad_req[s]);
            ch->act_req[s] = ch->grad_req[s] = NULL;
            ch->busy[s] = false;
        }
        ch->nwq = 0;
    }
    for (int i = 0; i < 2; i++) {
        for (int k = 0; ex->pf[i].xreq != NULL && k < ex->g.m; k++) {
            mp_engine_abort(ex->pf[i].xreq[k]);
            mp_engine_abort(ex->pf[i].yreq[k]);
            ex->pf[i].xreq[k] = ex->pf[i].yreq[k] = NULL;
        }
        ex->pf[i].ev = -1;
    }
}

static mp_status_t model_fail(mp_exec_t *ex, mp_status_t st, const char *what, mp_errbuf_t *err);

/* Runs the W actions chunk ch has queued (parallel.fuse_w) as one
 * mp_model_backward_weight_n, and frees their slots. */
static mp_status_t w_flush(mp_exec_t *ex, chunk_t *ch, mp_errbuf_t *err)
{
    if (ch->nwq == 0) {
        return MP_OK;
    }
    mp_status_t st = mp_model_backward_weight_n(ch->model, ch->wq, ch->nwq, ch->wq_rows);
    if (st != MP_OK) {
        return model_fail(ex, st, "weight gradient", err);
    }
    for (int j = 0; j < ch->nwq; j++) {
        ch->busy[ch->wq[j]] = false;
    }
    ch->nwq = 0;
    return MP_OK;
}

/* Takes a free slot of chunk ch for micro-batch (or evaluation chunk) k,
 * once its last send is done. */
static mp_status_t slot_take(mp_exec_t *ex, chunk_t *ch, int k, int *slot_p, mp_errbuf_t *err)
{
    /* Round robin from k: an evaluation, whose slots free at once, then
     * finds the oldest send, most likely done, rather than the newest. */
    int s = -1;
    for (int i = 0; i < ch->nslots && s < 0; i++) {
        int c = (k + i) % ch->nslots;
        if (!ch->busy[c]) {
            s = c;
        }
    }
    if (s < 0) {
        return mp_errbuf_set(err, MP_ERR_STATE,
                             "rank %d: no free activation slot for "
                             "micro-batch %d (%d slots)",
                             ex->rank, k, ch->nslots);
    }
    mp_status_t st = settle(ex, &ch->act_req[s], next_rank(ex), "sending an activation", err);
    if (st != MP_OK) {
        return st;
    }
    ch->busy[s] = true;
    ch->slot_of[k] = s;
    *slot_p = s;
    return MP_OK;
}

/* Posts the receives of a training event's inputs and labels into prefetch set i. */
static mp_status_t prefetch_post(mp_exec_t *ex, const mp_engine_ev_t *ev, int i, mp_errbuf_t *err)
{
    int64_t R = ex->R, L = ex->g.label_dim;
    uint32_t job = ex->o.job & MP_XPORT_JOB_MAX;
    uint64_t seq = mp_engine_geom_seq(&ex->g, ex->o.dp_rank, ev);
    mp_status_t st = MP_OK;
    for (int k = 0; k < ex->g.m && st == MP_OK; k++) {
        uint32_t tag = mp_engine_tag_mb(seq + (uint64_t)k);
        if (ex->first) {
            st = mp_xport_recv(ex->ep_feeder, job, MP_XPORT_KIND_INPUT, tag,
                               ex->pf[i].x + (int64_t)k * R * ex->I,
                               (size_t)(R * ex->I) * sizeof(float), &ex->pf[i].xreq[k]);
        }
        if (st == MP_OK && ex->last) {
            st = mp_xport_recv(ex->ep_feeder, job, MP_XPORT_KIND_LABEL, tag,
                               ex->pf[i].y + k * R * L, (size_t)(R * L) * sizeof(int32_t),
                               &ex->pf[i].yreq[k]);
        }
    }
    if (st != MP_OK) {
        return fail(ex, err, st, (int)ex->g.feeder_rank, "posting input and label receives");
    }
    ex->pf[i].ev = ev->index;
    ex->pf[i].seq = seq;
    return MP_OK;
}

/*
 * Makes sure the receives of this training event and of the next event, if
 * it trains too, are posted; the running event's data is set pf_cur.
 */
static mp_status_t prefetch(mp_exec_t *ex, const mp_engine_ev_t *ev, mp_errbuf_t *err)
{
    if (ex->ep_feeder == NULL) {
        return MP_OK;
    }
    int cur = (int)(ev->index & 1);
    ex->pf_cur = cur;
    mp_status_t st = MP_OK;
    if (ex->pf[cur].ev != ev->index) {
        st = prefetch_post(ex, ev, cur, err);
    }
    int64_t it = ex->it_next;
    mp_engine_ev_t next;
    mp_engine_geom_next(&ex->g, &it, &next);
    if (st == MP_OK && next.kind == MP_ENGINE_EV_TRAIN && ex->pf[1 - cur].ev != next.index) {
        st = prefetch_post(ex, &next, 1 - cur, err);
    }
    return st;
}

/* The input of micro-batch (or evaluation chunk) k into a fresh slot of
 * chunk ch: from the feeder on the first virtual stage (prefetched in a
 * training step), else from the previous stage. */
static mp_status_t recv_input(mp_exec_t *ex, chunk_t *ch, int k, int64_t rows, bool train,
                              mp_errbuf_t *err)
{
    int s = 0;
    mp_status_t st = slot_take(ex, ch, k, &s, err);
    if (st != MP_OK) {
        return st;
    }
    float *in = mp_model_input(ch->model, s);
    float *buf = ex->staged ? ch->in_host[s] : in;
    if (ch->first && train) {
        int i = ex->pf_cur;
        const float *x = ex->pf[i].x + (int64_t)k * rows * ch->I;
        size_t bytes = (size_t)(rows * ch->I) * sizeof(float);
        st = wait_tensor(ex, ex->ep_feeder, &ex->pf[i].xreq[k], rows, ch->I, false,
                         MP_EXEC_WAIT_INPUT, "receiving an input micro-batch", err);
        if (st == MP_OK && ex->staged) {
            st = ex->be->ops->upload(ex->be, in, x, bytes);
            if (st != MP_OK) {
                return fail(ex, err, st, -1, "uploading an input");
            }
        } else if (st == MP_OK) {
            memcpy(in, x, bytes);
        }
        return st;
    }
    if (ch->first) {
        st = recv_tensor(ex, ex->ep_feeder, MP_XPORT_KIND_INPUT, ex->seq + (uint64_t)k, buf, rows,
                         ch->I, false, MP_EXEC_WAIT_INPUT, "receiving an input micro-batch", err);
    } else {
        st = recv_tensor(ex, ex->ep_prev, MP_XPORT_KIND_ACT, msg_seq(ex, k, ch->c), buf, rows,
                         ch->I, false, MP_EXEC_WAIT_ACT, "receiving an activation", err);
    }
    if (st == MP_OK && ex->staged) {
        st = ex->be->ops->upload(ex->be, in, buf, (size_t)(rows * ch->I) * sizeof(float));
        if (st != MP_OK) {
            return fail(ex, err, st, -1, "uploading an input");
        }
    }
    return st;
}

/* The slot's forward output as host memory for a send (staged: a copy). */
static mp_status_t host_output(mp_exec_t *ex, chunk_t *ch, int s, int64_t rows,
                               const float **host_p, mp_errbuf_t *err)
{
    if (!ex->staged) {
        *host_p = ch->out[s];
        return MP_OK;
    }
    mp_status_t st = ex->be->ops->download(ex->be, ch->out_host[s], ch->out[s],
                                           (size_t)(rows * ch->O) * sizeof(float));
    if (st != MP_OK) {
        return fail(ex, err, st, -1, "downloading an activation");
    }
    *host_p = ch->out_host[s];
    return MP_OK;
}

/* Labels [rows, L] of micro-batch k from host memory, as the backend's loss wants them. */
static mp_status_t labels_for(mp_exec_t *ex, int64_t k, const int32_t *host, int64_t rows,
                              const int32_t **dev_p, mp_errbuf_t *err)
{
    if (!ex->staged) {
        *dev_p = host;
        return MP_OK;
    }
    int64_t L = ex->g.label_dim;
    int32_t *dev = ex->labels_dev + k * ex->R * L;
    mp_status_t st =
        ex->be->ops->upload(ex->be, dev, host, (size_t)(rows * L) * sizeof(int32_t));
    if (st != MP_OK) {
        return fail(ex, err, st, -1, "uploading labels");
    }
    *dev_p = dev;
    return MP_OK;
}

static mp_status_t model_fail(mp_exec_t *ex, mp_status_t st, const char *what, mp_errbuf_t *err)
{
    if (ex->coll_st != MP_OK) {
        int d = ex->o.dp_rank;
        return mp_errbuf_set(err, ex->coll_st,
                             "rank %d (stage %d, tp %d, dp %d): %s: the TP group's collective "
                             "(ranks %d..%d) failed: %s",
                             ex->rank, ex->stage, ex->o.tp_rank, d, what,
                             peer_rank(ex, ex->stage, 0, d),
                             peer_rank(ex, ex->stage, ex->g.tp - 1, d), mp_strerror(ex->coll_st));
    }
    return fail(ex, err, st, -1, what);
}

/* ---- one training step ------------------------------------------------- */

static mp_status_t train_action(mp_exec_t *ex, const mp_sched_action_t *a, double *loss_sum,
                                mp_errbuf_t *err)
{
    int k = a->mb;
    int64_t R = ex->R;
    chunk_t *ch = &ex->ch[a->chunk > 0 ? a->chunk : 0];
    mp_status_t st = MP_OK;
    switch (a->op) {
    case MP_SCHED_RECV_ACT:
        return recv_input(ex, ch, k, R, true, err);
    case MP_SCHED_FWD: {
        int s = ch->slot_of[k];
        st = mp_model_forward(ch->model, s, R, &ch->out[s]);
        if (st != MP_OK) {
            return model_fail(ex, st, "forward", err);
        }
        if (ch->last) {
            int i = ex->pf_cur;
            st = wait_tensor(ex, ex->ep_feeder, &ex->pf[i].yreq[k], R, ex->g.label_dim, true,
                             MP_EXEC_WAIT_LABELS, "receiving labels", err);
            if (st != MP_OK) {
                return st;
            }
            const int32_t *labels;
            st = labels_for(ex, k, ex->pf[i].y + k * R * ex->g.label_dim, R, &labels, err);
            if (st != MP_OK) {
                return st;
            }
            /* The mean over the global batch's positions, as the serial trainer. */
            st = mp_model_loss(ch->model, s, labels, R,
                               1.0f / (float)(ex->g.batch * ex->g.label_dim), loss_sum, NULL);
            if (st != MP_OK) {
                return fail(ex, err, st, -1, "loss");
            }
            if (!isfinite(*loss_sum)) {
                /* A diverged job FAILs at this micro-batch, before its
                 * backward sends a non-finite gradient to the stage before
                 * (which would then blame its gradient). */
                return mp_errbuf_set(err, MP_ERR_NONFINITE,
                                     "rank %d (stage %d, tp %d, dp %d): loss is %s at step %lld",
                                     ex->rank, ex->stage, ex->o.tp_rank, ex->o.dp_rank,
                                     mp_train_nonfinite_name(*loss_sum), (long long)ex->step);
            }
        }
        return MP_OK;
    }
    case MP_SCHED_SEND_ACT: {
        int s = ch->slot_of[k];
        const float *out;
        st = host_output(ex, ch, s, R, &out, err);
        if (st != MP_OK) {
            return st;
        }
        return send_tensor(ex, ex->ep_next, MP_XPORT_KIND_ACT,
                           msg_seq(ex, k, peer_chunk(ex, ch->u, 1)), out, R, ch->O, &ch->act_req[s],
                           "sending an activation", err);
    }
    case MP_SCHED_RECV_GRAD: {
        int s = ch->slot_of[k];
        float *og = mp_model_output_grad(ch->model, s);
        float *buf = ex->staged ? ch->og_host[s] : og;
        st = recv_tensor(ex, ex->ep_next, MP_XPORT_KIND_GRAD, msg_seq(ex, k, ch->c), buf, R, ch->O,
                         false, MP_EXEC_WAIT_GRAD, "receiving a gradient", err);
        if (st == MP_OK && ex->staged) {
            st = ex->be->ops->upload(ex->be, og, buf, (size_t)(R * ch->O) * sizeof(float));
            if (st != MP_OK) {
                return fail(ex, err, st, -1, "uploading a gradient");
            }
        }
        return st;
    }
    case MP_SCHED_BWD: {
        int s = ch->slot_of[k];
        float *dx = NULL;
        /* Split (zero_bubble): B now, the slot's W later frees it. */
        st = ex->split ? mp_model_backward_input(ch->model, s, R, ch->first ? NULL : &dx)
                       : mp_model_backward(ch->model, s, R, ch->first ? NULL : &dx);
        if (st != MP_OK) {
            return model_fail(ex, st, "backward", err);
        }
        ch->busy[s] = ex->split;
        if (!ch->first) {
            /* The model's gradient buffers serve the next backward: copy. */
            st = settle(ex, &ch->grad_req[s], prev_rank(ex), "sending a gradient", err);
            if (st != MP_OK) {
                return st;
            }
            st = ex->be->ops->download(ex->be, ch->gsend[s], dx,
                                       (size_t)(R * ch->I) * sizeof(float));
            if (st != MP_OK) {
                return fail(ex, err, st, -1, "downloading a gradient");
            }
        }
        return MP_OK;
    }
    case MP_SCHED_BWD_W: {
        /* A run of W's that the schedule groups (parallel.fuse_w) waits for
         * its last, which runs them all as one GEMM per weight, so that a
         * weight gradient is read and written once for them. */
        if (ch->nwq == MP_SPEC_MAX_FUSE_W) {
            return mp_errbuf_set(err, MP_ERR_STATE, "rank %d: more than %d W's in one run",
                                 ex->rank, MP_SPEC_MAX_FUSE_W);
        }
        ch->wq[ch->nwq++] = ch->slot_of[k];
        ch->wq_rows = R;
        return a->fuse > 0 ? w_flush(ex, ch, err) : MP_OK;
    }
    case MP_SCHED_SEND_GRAD: {
        int s = ch->slot_of[k];
        return send_tensor(ex, ex->ep_prev, MP_XPORT_KIND_GRAD,
                           msg_seq(ex, k, peer_chunk(ex, ch->u, -1)), ch->gsend[s], R, ch->I,
                           &ch->grad_req[s], "sending a gradient", err);
    }
    case MP_SCHED_DP_ALLREDUCE:
        for (int c = 0; c < ex->nchunks && ex->dp_group != NULL; c++) {
            mp_model_t *model = ex->ch[c].model;
            float *grads = mp_model_grads(model);
            size_t n = (size_t)mp_model_param_count(model);
            float *buf = ex->staged ? ex->grads_host : grads;
            if (ex->staged) {
                st = ex->be->ops->download(ex->be, buf, grads, n * sizeof(float));
            }
            if (st == MP_OK) {
                pub_wait(ex, MP_EXEC_WAIT_DP, -1);
                st = mp_coll_allreduce_sum_f32(ex->dp_group, buf, n, ex->timeout_ms);
                pub_wait(ex, MP_EXEC_WAIT_NONE, -1);
            }
            if (st == MP_OK && ex->staged) {
                st = ex->be->ops->upload(ex->be, grads, buf, n * sizeof(float));
            }
            if (st != MP_OK) {
                int t = ex->o.tp_rank;
                return mp_errbuf_set(err, st,
                                     "rank %d (stage %d, tp %d, dp %d): the DP gradient allreduce "
                                     "with ranks %d, %d, ... failed: %s",
                                     ex->rank, ex->stage, t, ex->o.dp_rank,
                                     peer_rank(ex, ex->stage, t, 0), peer_rank(ex, ex->stage, t, 1),
                                     mp_strerror(st));
            }
        }
        return MP_OK;
    case MP_SCHED_OPT_STEP:
        for (int c = 0; c < ex->nchunks && st == MP_OK; c++) {
            st = mp_model_step(ex->ch[c].model, ex->step);
        }
        if (st == MP_ERR_NONFINITE) {
            return mp_errbuf_set(err, st,
                                 "rank %d (stage %d, tp %d, dp %d): a gradient is not finite "
                                 "(NaN or ±Inf) at step %lld",
                                 ex->rank, ex->stage, ex->o.tp_rank, ex->o.dp_rank,
                                 (long long)ex->step);
        }
        return st == MP_OK ? MP_OK : fail(ex, err, st, -1, "optimizer step");
    }
    return MP_ERR_INVAL;
}

/* Waits for every send of the event, then tells the feeder it is done
 * (its flow control: it sends at most two events ahead). */
static mp_status_t finish_event(mp_exec_t *ex, const mp_engine_ev_t *ev, mp_errbuf_t *err)
{
    for (int c = 0; c < ex->nchunks; c++) {
        chunk_t *ch = &ex->ch[c];
        for (int s = 0; s < ch->nslots; s++) {
            mp_status_t st =
                settle(ex, &ch->act_req[s], next_rank(ex), "sending an activation", err);
            if (st == MP_OK) {
                st = settle(ex, &ch->grad_req[s], prev_rank(ex), "sending a gradient", err);
            }
            if (st != MP_OK) {
                return st;
            }
        }
    }
    if (ex->ep_feeder == NULL) {
        return MP_OK;
    }
    int32_t token = (int32_t)ev->index;
    mp_xport_hdr_t hdr = mp_engine_hdr(ex->o.job, MP_XPORT_KIND_USER, (uint64_t)ev->index,
                                       (uint64_t)ex->step, 1, 1, true);
    mp_xport_req_t *req;
    mp_status_t st = mp_xport_send(ex->ep_feeder, &hdr, &token, &req);
    if (st == MP_OK) {
        pub_wait(ex, MP_EXEC_WAIT_FEEDER, (int)ex->g.feeder_rank);
        st = mp_engine_wait(req, deadline(ex), &ex->cancel, NULL);
        pub_wait(ex, MP_EXEC_WAIT_NONE, -1);
    }
    return st == MP_OK ? MP_OK : fail(ex, err, st, (int)ex->g.feeder_rank, "acknowledging data");
}

static mp_status_t run_train(mp_exec_t *ex, const mp_engine_ev_t *ev, mp_exec_report_t *rep,
                             mp_errbuf_t *err)
{
    int64_t R = ex->R;
    double loss_sum = 0.0;
    ex->nspans = 0;
    mp_status_t st = MP_OK;
    for (int c = 0; c < ex->nchunks && st == MP_OK; c++) {
        st = mp_model_zero_grad(ex->ch[c].model);
    }
    if (st != MP_OK) {
        return fail(ex, err, st, -1, "zeroing gradients");
    }
    st = prefetch(ex, ev, err);
    if (st != MP_OK) {
        return st;
    }
    int n = ex->sched->count[ex->stage];
    const mp_sched_action_t *list = ex->sched->action[ex->stage];
    for (int i = 0; i < n && st == MP_OK; i++) {
        if (cancelled(ex)) {
            return fail(ex, err, MP_ERR_CANCELLED, -1, "the step");
        }
        const mp_sched_action_t *a = &list[i];
        uint64_t t0 = mp_engine_now_ns();
        if (a->op == MP_SCHED_FWD && ex->ch[a->chunk].first) {
            /* The first stage's input comes from the feeder. */
            pub_action(ex, MP_SCHED_RECV_ACT, a->mb);
            st = recv_input(ex, &ex->ch[0], a->mb, R, true, err);
            if (st == MP_OK) {
                st = span_push(ex, MP_SCHED_RECV_ACT, a->mb, a->chunk, t0);
            }
            t0 = mp_engine_now_ns();
        }
        pub_action(ex, (int)a->op, a->mb);
        if (st == MP_OK) {
            st = train_action(ex, a, &loss_sum, err);
        }
        if (st == MP_OK) {
            st = span_push(ex, a->op, a->mb, a->chunk, t0);
        }
    }
    if (st == MP_OK) {
        st = finish_event(ex, ev, err);
    }
    if (st != MP_OK) {
        return st;
    }
    rep->has_loss = ex->last && ex->o.tp_rank == 0;
    rep->loss_sum = loss_sum;
    rep->samples = ex->g.replica_rows;
    rep->nspans = ex->nspans;
    rep->spans = ex->spans;
    return MP_OK;
}

/* ---- one evaluation: forward only over this replica's chunks ---------- */

static mp_status_t run_eval(mp_exec_t *ex, const mp_engine_ev_t *ev, mp_exec_report_t *rep,
                            mp_errbuf_t *err)
{
    const mp_engine_geom_t *g = &ex->g;
    int d = ex->o.dp_rank;
    int64_t chunks = mp_engine_geom_replica_chunks(g, d);
    double loss_sum = 0.0;
    int64_t correct = 0, samples = 0;
    /* Each data chunk goes through the stage's model chunks in order: a
     * chunk's input is the previous virtual stage's output for the same
     * data, which never waits on anything later. */
    for (int64_t ci = 0; ci < chunks; ci++) {
        for (int c = 0; c < ex->nchunks; c++) {
            if (cancelled(ex)) {
                return fail(ex, err, MP_ERR_CANCELLED, -1, "the evaluation");
            }
            chunk_t *ch = &ex->ch[c];
            int64_t rows = mp_engine_geom_chunk_rows(g, ci * g->dp + d);
            int k = (int)ci;
            pub_action(ex, MP_SCHED_FWD, k);
            mp_status_t st = recv_input(ex, ch, k, rows, false, err);
            if (st != MP_OK) {
                return st;
            }
            int s = ch->slot_of[k];
            st = mp_model_forward(ch->model, s, rows, &ch->out[s]);
            if (st != MP_OK) {
                return model_fail(ex, st, "evaluation forward", err);
            }
            if (ch->last) {
                st = recv_tensor(ex, ex->ep_feeder, MP_XPORT_KIND_LABEL, ex->seq + (uint64_t)k,
                                 ex->labels, rows, g->label_dim, true, MP_EXEC_WAIT_LABELS,
                                 "receiving labels", err);
                if (st == MP_OK) {
                    const int32_t *labels;
                    st = labels_for(ex, 0, ex->labels, rows, &labels, err);
                    if (st != MP_OK) {
                        return st;
                    }
                    st = mp_model_loss(ch->model, s, labels, rows, 0.0f, &loss_sum, &correct);
                    if (st != MP_OK) {
                        return fail(ex, err, st, -1, "evaluation loss");
                    }
                }
                samples += rows;
            } else {
                const float *out;
                st = host_output(ex, ch, s, rows, &out, err);
                if (st == MP_OK) {
                    st = send_tensor(ex, ex->ep_next, MP_XPORT_KIND_ACT,
                                     msg_seq(ex, k, peer_chunk(ex, ch->u, 1)), out, rows, ch->O,
                                     &ch->act_req[s], "sending an activation", err);
                }
            }
            ch->busy[s] = false;
            if (st != MP_OK) {
                return st;
            }
        }
    }
    mp_status_t st = finish_event(ex, ev, err);
    if (st != MP_OK) {
        return st;
    }
    rep->has_loss = ex->last && ex->o.tp_rank == 0;
    rep->loss_sum = loss_sum;
    rep->correct = correct;
    rep->samples = samples;
    return MP_OK;
}

/* After training step `step`: DP replica 0 copies its blocks for the writer. */
static mp_status_t maybe_checkpoint(mp_exec_t *ex, int64_t step, mp_errbuf_t *err)
{
    if (ex->o.ckpt_dir == NULL || ex->o.ckpt_every <= 0 || step % ex->o.ckpt_every != 0 ||
        ex->o.dp_rank != 0) {
        return MP_OK;
    }
    uint64_t t0 = mp_engine_now_ns();
    mp_status_t st = MP_OK;
    if (ex->writer == NULL) {
        st = mp_ckpt_snap_create(ex->models, ex->nchunks, ex->spec, ex->stage, ex->o.tp_rank,
                                 &ex->snap);
        if (st == MP_OK) {
            st = mp_ckptw_create(ex->o.ckpt_dir, ex->o.on_checkpoint, ex->o.arg, &ex->writer);
        }
        if (st != MP_OK) {
            return fail(ex, err, st, -1, "setting up the checkpoint writer");
        }
    }
    mp_ckptw_wait_idle(ex->writer); /* the previous checkpoint still being written */
    st = mp_ckpt_snap_fill(ex->snap, ex->models, ex->nchunks, step);
    if (st != MP_OK) {
        return fail(ex, err, st, -1, "copying the checkpoint to host memory");
    }
    mp_ckptw_submit(ex->writer, ex->snap);
    ex->ckpt_pause_ns += mp_engine_now_ns() - t0;
    ex->ckpt_count++;
    return MP_OK;
}

uint64_t mp_exec_ckpt_pause_ns(const mp_exec_t *ex, int64_t *count_p)
{
    if (count_p != NULL) {
        *count_p = ex->ckpt_count;
    }
    return ex->ckpt_pause_ns;
}

mp_status_t mp_exec_resume(mp_exec_t *ex, const char *dir, mp_errbuf_t *err)
{
    mp_ckpt_t *ck;
    mp_status_t st = mp_ckpt_open_step(dir, ex->o.start_step, &ck, err);
    if (st != MP_OK) {
        return st;
    }
    st = mp_ckpt_check_spec(ck, ex->spec, err);
    for (int c = 0; c < ex->nchunks && st == MP_OK; c++) {
        st = mp_ckpt_load_model(ck, ex->ch[c].model, ex->spec, err);
    }
    mp_ckpt_close(ck);
    return st;
}

mp_status_t mp_exec_run(mp_exec_t *ex, mp_errbuf_t *err)
{
    int64_t it = mp_engine_geom_seek(&ex->g, ex->o.start_step);
    for (;;) {
        mp_engine_ev_t ev;
        mp_engine_geom_next(&ex->g, &it, &ev);
        if (ev.kind == MP_ENGINE_EV_END) {
            if (ex->writer != NULL) {
                mp_ckptw_wait_idle(ex->writer); /* the last checkpoint is durable */
            }
            mp_engine_pub_phase(&ex->pub, MP_EXEC_PHASE_DONE);
            return MP_OK;
        }
        ex->seq = mp_engine_geom_seq(&ex->g, ex->o.dp_rank, &ev);
        ex->step = ev.step;
        ex->it_next = it;
        ex->phase = ev.kind == MP_ENGINE_EV_TRAIN ? MP_EXEC_PHASE_TRAIN : MP_EXEC_PHASE_EVAL;
        mp_exec_report_t rep = {
            .rank = ex->rank,
            .stage = ex->stage,
            .tp_rank = ex->o.tp_rank,
            .dp_rank = ex->o.dp_rank,
            .ev = ev,
            .t0_ns = mp_engine_now_ns(),
        };
        mp_status_t st = ev.kind == MP_ENGINE_EV_TRAIN ? run_train(ex, &ev, &rep, err)
                                                       : run_eval(ex, &ev, &rep, err);
        if (st != MP_OK) {
            drain(ex);
            mp_engine_pub_phase(&ex->pub, MP_EXEC_PHASE_DONE);
            return st;
        }
        rep.t1_ns = mp_engine_now_ns();
        if (ex->o.on_report != NULL) {
            ex->o.on_report(&rep, ex->o.arg);
        }
        if (ev.kind == MP_ENGINE_EV_TRAIN) {
            st = maybe_checkpoint(ex, ev.step, err);
            if (st != MP_OK) {
                drain(ex);
                return st;
            }
        }
    }
}

mp_status_t mp_exec_param_download(mp_exec_t *ex, int layer, int param, float *host,
                                   mp_tp_slice_t *slice_p)
{
    /* The chunk whose layers hold `layer`. */
    mp_model_t *model = ex->ch[0].model;
    for (int c = 0; c < ex->nchunks; c++) {
        int first = mp_model_first_layer(ex->ch[c].model);
        if (layer >= first && layer < first + mp_model_layer_count(ex->ch[c].model)) {
            model = ex->ch[c].model;
        }
    }
    mp_tp_slice_t s;
    mp_status_t st = mp_model_param_slice(model, layer, param, &s);
    if (st == MP_OK) {
        st = mp_model_param_download(model, layer, param, host);
    }
    if (st == MP_OK) {
        *slice_p = s;
    }
    return st;
}

void mp_exec_destroy(mp_exec_t *ex)
{
    if (ex == NULL) {
        return;
    }
    if (ex->w != NULL) {
        drain(ex);
        mp_exec_disconnect(ex);
        mp_xport_worker_destroy(ex->w);
    }
    mp_ckptw_destroy(ex->writer); /* finishes a write in flight first */
    mp_ckpt_snap_free(ex->snap);
    mp_free(ex->grads_host);
    if (ex->labels_dev != NULL) {
        ex->be->ops->free(ex->be, ex->labels_dev);
    }
    for (int c = 0; ex->ch != NULL && c < ex->nchunks; c++) {
        chunk_free(&ex->ch[c]);
    }
    mp_free(ex->ch);
    mp_free(ex->models);
    mp_backend_destroy(ex->be);
    mp_sched_free(ex->sched);
    mp_free(ex->plan);
    mp_free(ex->labels);
    for (int i = 0; i < 2; i++) {
        mp_free(ex->pf[i].x);
        mp_free(ex->pf[i].y);
        mp_free(ex->pf[i].xreq);
        mp_free(ex->pf[i].yreq);
    }
    mp_free(ex->ep_tp);
    mp_free(ex->ep_dp);
    mp_free(ex->spans);
    mp_free(ex);
}
