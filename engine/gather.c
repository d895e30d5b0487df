/*
 * gather.c - the weight gather of gather.h: shards of DP replica 0 send
 * their parameter blocks to a gatherer over UCX, which assembles the full
 * tensors and writes them as .npy files.  Owns, on each side, one UCX
 * worker and its endpoints; every function runs on the thread that made
 * the worker (a shard's thread, or the gatherer's thread).
 */
#include "engine/gather.h"

#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "model/npy.h"
#include "parallel/partition.h"
#include "parallel/placement.h"

#define META_N 10 /* int64 of placement before each block's floats */

struct mp_gather {
    const mp_spec_t *spec;
    uint32_t job;
    int64_t timeout_ms;
    int pp, tp, nranks;
    mp_part_t part;
    mp_xport_worker_t *worker;
    float *full[MP_SPEC_MAX_LAYERS][MP_SPEC_MAX_PARAMS];
    size_t max_msg; /* bytes of the largest message */
};

/* Parameters of stage s: the messages one of its shards sends. */
static int stage_params(const mp_spec_t *spec, const mp_part_t *part, int s)
{
    int n = 0;
    for (int l = 0; l < spec->model.nlayers; l++) {
        if (mp_part_stage_runs(part, spec->parallel.pp, s, l)) {
            n += mp_layer_nparams(&spec->model.layers[l]);
        }
    }
    return n;
}

mp_status_t mp_gather_create(mp_xport_ctx_t *ctx, const mp_spec_t *spec, uint32_t job,
                             int64_t timeout_ms, mp_gather_t **gather_p, mp_errbuf_t *err)
{
    mp_gather_t *g = mp_calloc(1, sizeof(*g));
    if (g == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "gather: out of memory");
    }
    g->spec = spec;
    g->job = job;
    g->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    g->pp = spec->parallel.pp;
    g->tp = spec->parallel.tp;
    g->nranks = g->pp * g->tp * spec->parallel.dp;
    mp_status_t st = mp_part_build(spec, &g->part, err);
    if (st != MP_OK) {
        mp_free(g);
        return st;
    }
    for (int l = 0; l < spec->model.nlayers; l++) {
        for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(&spec->model.layers[l], p, &rows, &cols);
            size_t bytes = (size_t)(rows * cols) * sizeof(float);
            g->full[l][p] = mp_calloc((size_t)(rows * cols), sizeof(float));
            if (g->full[l][p] == NULL) {
                mp_gather_destroy(g);
                return mp_errbuf_set(err, MP_ERR_NOMEM, "gather: out of memory for the weights");
            }
            if (bytes + META_N * sizeof(int64_t) > g->max_msg) {
                g->max_msg = bytes + META_N * sizeof(int64_t);
            }
        }
    }
    mp_xport_worker_opts_t wo = {.rank = (uint32_t)g->nranks + 1, .timeout_ms = g->timeout_ms};
    st = mp_xport_worker_create(ctx, &wo, &g->worker);
    if (st != MP_OK) {
        mp_gather_destroy(g);
        return mp_errbuf_set(err, st, "gather: cannot create a UCX worker: %s", mp_strerror(st));
    }
    *gather_p = g;
    return MP_OK;
}

mp_status_t mp_gather_address(mp_gather_t *g, void **addr_p, size_t *len_p)
{
    return mp_xport_worker_address(g->worker, addr_p, len_p);
}

/* Places one received block into its full tensor, checking it fits. */
static mp_status_t place_block(mp_gather_t *g, int rank, int stage, int tp_rank, const uint8_t *msg,
                               size_t n, mp_errbuf_t *err)
{
    int64_t m[META_N];
    if (n < sizeof(m)) {
        return mp_errbuf_set(err, MP_ERR_PROTO, "gather: rank %d sent a short block", rank);
    }
    memcpy(m, msg, sizeof(m));
    int64_t layer = m[0], param = m[1], row0 = m[2], col0 = m[3], rows = m[4], cols = m[5];
    bool replicated = m[6] != 0;
    int64_t parts = m[8] > 1 ? m[8] : 1, stride = m[9];
    const mp_part_t *part = &g->part;
    if (layer < 0 || layer >= g->spec->model.nlayers ||
        !mp_part_stage_runs(part, g->pp, stage, (int)layer) || param < 0 ||
        param >= mp_layer_nparams(&g->spec->model.layers[layer])) {
        return mp_errbuf_set(err, MP_ERR_PROTO, "gather: rank %d sent layer %lld param %lld", rank,
                             (long long)layer, (long long)param);
    }
    int64_t frows, fcols;
    mp_layer_param_shape(&g->spec->model.layers[layer], (int)param, &frows, &fcols);
    /* The last column a block touches: its last part's end. */
    int64_t col_end = parts > 1 ? col0 + (parts - 1) * stride + cols / parts : col0 + cols;
    if (row0 < 0 || col0 < 0 || rows < 0 || cols < 0 || row0 + rows > frows || col_end > fcols ||
        parts > 16 || cols % parts != 0 || (parts > 1 && stride < cols / parts) ||
        n != sizeof(m) + (size_t)(rows * cols) * sizeof(float)) {
        return mp_errbuf_set(err, MP_ERR_PROTO,
                             "gather: rank %d: block of layer %lld param %lld does not fit", rank,
                             (long long)layer, (long long)param);
    }
    if (replicated && tp_rank != 0) {
        return MP_OK; /* the same tensor as tp rank 0's */
    }
    mp_tp_slice_t s = {.full_rows = frows, .full_cols = fcols, .row0 = row0, .rows = rows,
                       .col0 = col0, .cols = cols, .parts = (int)parts, .part_stride = stride};
    mp_tp_slice_scatter(&s, (const float *)(msg + sizeof(m)), g->full[layer][param]);
    return MP_OK;
}

mp_status_t mp_gather_run(mp_gather_t *g, const void *const *addrs, const size_t *lens,
                          mp_errbuf_t *err)
{
    uint8_t *buf = mp_malloc(g->max_msg > 0 ? g->max_msg : 1);
    if (buf == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "gather: out of memory");
    }
    mp_status_t st = MP_OK;
    /* Replica 0's ranks are 0 .. pp * tp - 1. */
    for (int r = 0; r < g->pp * g->tp && st == MP_OK; r++) {
        int stage, t, d;
        mp_place_coords(g->pp, g->tp, r, &stage, &t, &d);
        mp_xport_ep_t *ep = NULL;
        st = mp_xport_ep_connect(g->worker, addrs[r], lens[r], (uint32_t)r, &ep);
        if (st != MP_OK) {
            mp_errbuf_set(err, st, "gather: cannot reach rank %d: %s", r, mp_strerror(st));
            break;
        }
        int n = stage_params(g->spec, &g->part, stage);
        for (int k = 0; k < n && st == MP_OK; k++) {
            mp_xport_hdr_t hdr;
            st = mp_xport_recv_wait(ep, g->job, MP_XPORT_KIND_USER, (uint32_t)k, buf, g->max_msg,
                                    g->timeout_ms, &hdr);
            if (st != MP_OK) {
                mp_errbuf_set(err, st, "gather: parameters of rank %d (stage %d, tp %d): %s", r,
                              stage, t, mp_strerror(st));
                break;
            }
            size_t nbytes = 0;
            if (hdr.dtype != MP_XPORT_DTYPE_U8 || mp_xport_hdr_nbytes(&hdr, &nbytes) != MP_OK) {
                st = mp_errbuf_set(err, MP_ERR_PROTO, "gather: rank %d sent a bad header", r);
                break;
            }
            st = place_block(g, r, stage, t, buf, nbytes, err);
        }
        mp_xport_ep_destroy(ep);
    }
    mp_free(buf);
    return st;
}

const float *mp_gather_param(const mp_gather_t *g, int layer, int param)
{
    return g->full[layer][param];
}

mp_status_t mp_gather_save(const mp_gather_t *g, const char *dir, mp_errbuf_t *err)
{
    return mp_npy_save_weights(dir, g->spec, g->full, err);
}

void mp_gather_destroy(mp_gather_t *g)
{
    if (g == NULL) {
        return;
    }
    if (g->worker != NULL) {
        mp_xport_worker_destroy(g->worker);
    }
    for (int l = 0; l < MP_SPEC_MAX_LAYERS; l++) {
        for (int p = 0; p < MP_SPEC_MAX_PARAMS; p++) {
            mp_free(g->full[l][p]);
        }
    }
    mp_free(g);
}

mp_status_t mp_gather_send(mp_xport_ctx_t *ctx, mp_exec_t *exec, const mp_spec_t *spec,
                           uint32_t job, const void *addr, size_t len, int64_t timeout_ms,
                           mp_errbuf_t *err)
{
    const mp_engine_geom_t *geom = mp_exec_geom(exec);
    int rank = mp_exec_rank(exec);
    int stage, t, d;
    mp_place_coords(geom->pp, geom->tp, rank, &stage, &t, &d);
    mp_part_t part;
    mp_status_t st = mp_part_build(spec, &part, err);
    if (st != MP_OK) {
        return st;
    }
    int n = stage_params(spec, &part, stage);
    uint8_t **msgs = mp_calloc((size_t)n + 1, sizeof(*msgs));
    mp_xport_req_t **reqs = mp_calloc((size_t)n + 1, sizeof(*reqs));
    mp_xport_worker_t *w = NULL;
    mp_xport_ep_t *ep = NULL;
    int posted = 0;
    if (msgs == NULL || reqs == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "gather: out of memory");
        goto free_bufs;
    }
    mp_xport_worker_opts_t wo = {.rank = (uint32_t)rank,
                                 .timeout_ms = timeout_ms > 0 ? timeout_ms : 30000};
    st = mp_xport_worker_create(ctx, &wo, &w);
    if (st != MP_OK) {
        mp_errbuf_set(err, st, "gather: cannot create a UCX worker: %s", mp_strerror(st));
        goto free_bufs;
    }
    st = mp_xport_ep_connect(w, addr, len, (uint32_t)geom->nranks + 1, &ep);
    if (st != MP_OK) {
        mp_errbuf_set(err, st, "gather: cannot reach the gatherer: %s", mp_strerror(st));
        goto destroy_worker;
    }
    int k = 0;
    for (int l = 0; l < spec->model.nlayers && st == MP_OK; l++) {
        if (!mp_part_stage_runs(&part, spec->parallel.pp, stage, l)) {
            continue;
        }
        for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++, k++) {
            int64_t rows, cols;
            mp_layer_param_shape(&spec->model.layers[l], p, &rows, &cols);
            /* The full shape bounds the block; the slice says its real size. */
            size_t cap = sizeof(int64_t) * META_N + (size_t)(rows * cols) * sizeof(float);
            msgs[k] = mp_malloc(cap);
            if (msgs[k] == NULL) {
                st = mp_errbuf_set(err, MP_ERR_NOMEM, "gather: out of memory");
                break;
            }
            mp_tp_slice_t s;
            st = mp_exec_param_download(exec, l, p, (float *)(msgs[k] + sizeof(int64_t) * META_N),
                                        &s);
            if (st != MP_OK) {
                mp_errbuf_set(err, st, "gather: reading layer %d param %d: %s", l, p,
                              mp_strerror(st));
                break;
            }
            int64_t m[META_N] = {
                l, p, s.row0, s.col0, s.rows, s.cols, s.replicated ? 1 : 0, s.full_cols,
                s.parts, s.part_stride};
            memcpy(msgs[k], m, sizeof(m));
            mp_xport_hdr_t hdr = {
                .job = job,
                .micro_batch = (uint32_t)k,
                .kind = MP_XPORT_KIND_USER,
                .dtype = MP_XPORT_DTYPE_U8,
                .ndim = 1,
                .shape = {sizeof(m) + (uint64_t)(s.rows * s.cols) * sizeof(float)}};
            st = mp_xport_send(ep, &hdr, msgs[k], &reqs[posted]);
            if (st != MP_OK) {
                mp_errbuf_set(err, st, "gather: sending layer %d param %d: %s", l, p,
                              mp_strerror(st));
                break;
            }
            posted++;
        }
    }
    mp_status_t wst = mp_xport_wait_all(reqs, (size_t)posted, timeout_ms);
    if (st == MP_OK && wst != MP_OK) {
        st = mp_errbuf_set(err, wst, "gather: delivering the parameters: %s", mp_strerror(wst));
    }
    mp_xport_ep_destroy(ep);
destroy_worker:
    mp_xport_worker_destroy(w);
free_bufs:
    for (int i = 0; msgs != NULL && i < n; i++) {
        mp_free(msgs[i]);
    }
    mp_free(msgs);
    mp_free(reqs);
    return st;
}
