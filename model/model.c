/*
 * model.c - a range of a spec's layers on one backend, whole or as one TP
 * rank's shard: parameters, gradients and optimizer state (one allocation
 * each, carved per tensor), activation slots, forward, loss, backward and
 * the optimizer step.  The tensor-parallel steps around each layer (slice,
 * AllGather, AllReduce, bias and residual after the reduce) follow the
 * plan of parallel/tpplan.h; the collectives go through the caller's hook
 * table on host memory.  Owned by one thread at a time (a serial trainer or
 * a shard executor).
 *
 * Legend: B = rows, I = in width, O = out width, H = mlp hidden, F = mlp ffn,
 * Il/Ol/Fl = this rank's share of a split width.
 */
#include "model/model.h"

#include <math.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "gpu/init.h"
#include "gpu/layers.h"

typedef struct {
    mp_tp_layer_t plan; /* this layer's TP plan (tp = 1: all whole, no collectives) */
    int index;          /* index in the spec's model.layers */
    int nparams;
    int64_t off[MP_TP_MAX_PARAMS]; /* element offsets into the flat parameter buffer */
    mp_tp_slice_t slice[MP_TP_MAX_PARAMS];
    int64_t split_col0; /* first full column/row of this rank's share of the split width */
} model_layer_t;

typedef struct {
    float **act;   /* [count + 1]: act[0] input, act[i + 1] output of layer i (after fwd_post) */
    float **xs;    /* [count]: row-parallel layer's sliced input [B, Il] (NULL otherwise) */
    float **h_pre; /* [count]: mlp_block pre-activation [B, Fl] (NULL otherwise) */
    float **h_act; /* [count]: mlp_block gelu output [B, Fl] */
    float *out_grad;
} model_slot_t;

struct mp_model {
    mp_backend_t *be;
    const mp_spec_t *spec;
    int first, count, nslots, tp, tp_rank;
    mp_model_coll_t coll;
    int64_t max_rows, max_width, max_ffn, nparams_total, slot_bytes;
    model_layer_t *layers;
    model_slot_t *slots;
    float *params, *grads, *state1, *state2;
    float *bwd_a, *bwd_b;   /* ping-pong activation gradients [max_rows, max_width] */
    float *tp_tmp;          /* TP scratch [max_rows, max_width]: local shard before a gather */
    float *dh_act, *dh_pre; /* mlp_block backward scratch [max_rows, max_ffn] */
    float *probs;           /* softmax output [max_rows, out_dim] */
    float *host_a, *host_b; /* TP host staging [max_rows * max_width] each (tp > 1) */
    void **allocs;          /* every backend allocation, for destroy */
    int nallocs, cap_allocs;
};

static float *model_alloc(mp_model_t *m, int64_t elems)
{
    if (m->nallocs == m->cap_allocs) {
        int cap = m->cap_allocs ? 2 * m->cap_allocs : 32;
        void **a = mp_realloc(m->allocs, (size_t)cap * sizeof(void *));
        if (a == NULL) {
            return NULL;
        }
        m->allocs = a;
        m->cap_allocs = cap;
    }
    size_t bytes = (size_t)(elems > 0 ? elems : 1) * sizeof(float);
    float *p = m->be->ops->alloc(m->be, bytes);
    if (p != NULL) {
        m->allocs[m->nallocs++] = p;
    }
    return p;
}

/* A slot buffer: counted in slot_bytes. */
static float *slot_alloc(mp_model_t *m, int64_t elems)
{
    m->slot_bytes += elems * (int64_t)sizeof(float);
    return model_alloc(m, elems);
}

static float layer_bound(const mp_tp_layer_t *l, int param)
{
    /* nn.Linear: weight and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
     * fan_in of the FULL layer, so a shard draws the serial values. */
    int64_t fan_in = l->in_dim;
    if (l->kind == MP_LAYER_MLP_BLOCK && param >= 2) {
        fan_in = l->ffn;
    }
    return 1.0f / sqrtf((float)fan_in);
}

static mp_status_t model_init_params(mp_model_t *m)
{
    int64_t n = m->nparams_total;
    float *host = mp_malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (host == NULL) {
        return MP_ERR_NOMEM;
    }
    for (int i = 0; i < m->count; i++) {
        model_layer_t *l = &m->layers[i];
        for (int p = 0; p < l->nparams; p++) {
            const mp_tp_slice_t *s = &l->slice[p];
            mp_init_uniform_block(host + l->off[p], m->spec->train.seed, (uint32_t)l->index,
                                  (uint32_t)p, s->full_cols, s->row0, s->rows, s->col0, s->cols,
                                  layer_bound(&l->plan, p));
        }
    }
    mp_status_t st = m->be->ops->upload(m->be, m->params, host, (size_t)n * sizeof(float));
    mp_free(host);
    return st;
}

/* The tp = 1 plan: every layer whole, no collective. */
static mp_status_t serial_plan(const mp_spec_t *spec, mp_tp_plan_t **plan_p)
{
    mp_spec_t *one = mp_malloc(sizeof(*one));
    mp_tp_plan_t *plan = mp_malloc(sizeof(*plan));
    if (one == NULL || plan == NULL) {
        mp_free(one);
        mp_free(plan);
        return MP_ERR_NOMEM;
    }
    memcpy(one, spec, sizeof(*one));
    one->parallel.tp = 1;
    mp_errbuf_t err;
    mp_status_t st = mp_tp_plan_build(one, NULL, plan, &err);
    mp_free(one);
    if (st != MP_OK) {
        mp_err("model: %s", err.msg);
        mp_free(plan);
        return st;
    }
    *plan_p = plan;
    return MP_OK;
}

static mp_status_t model_alloc_slot(mp_model_t *m, model_slot_t *sl)
{
    int64_t R = m->max_rows;
    sl->act = mp_calloc((size_t)m->count + 1, sizeof(float *));
    sl->xs = mp_calloc((size_t)m->count, sizeof(float *));
    sl->h_pre = mp_calloc((size_t)m->count, sizeof(float *));
    sl->h_act = mp_calloc((size_t)m->count, sizeof(float *));
    if (sl->act == NULL || sl->xs == NULL || sl->h_pre == NULL || sl->h_act == NULL) {
        return MP_ERR_NOMEM;
    }
    sl->act[0] = slot_alloc(m, R * m->layers[0].plan.in_local);
    if (sl->act[0] == NULL) {
        return MP_ERR_NOMEM;
    }
    for (int i = 0; i < m->count; i++) {
        const mp_tp_layer_t *pl = &m->layers[i].plan;
        sl->act[i + 1] = slot_alloc(m, R * pl->out_local);
        if (sl->act[i + 1] == NULL) {
            return MP_ERR_NOMEM;
        }
        if (pl->split == MP_TP_SPLIT_ROW && pl->fwd_pre == MP_TP_COMM_SLICE) {
            sl->xs[i] = slot_alloc(m, R * pl->split_local);
            if (sl->xs[i] == NULL) {
                return MP_ERR_NOMEM;
            }
        }
        if (pl->kind == MP_LAYER_MLP_BLOCK) {
            sl->h_pre[i] = slot_alloc(m, R * pl->split_local);
            sl->h_act[i] = slot_alloc(m, R * pl->split_local);
            if (sl->h_pre[i] == NULL || sl->h_act[i] == NULL) {
                return MP_ERR_NOMEM;
            }
        }
    }
    sl->out_grad = slot_alloc(m, R * m->layers[m->count - 1].plan.out_local);
    return sl->out_grad == NULL ? MP_ERR_NOMEM : MP_OK;
}

mp_status_t mp_model_create(mp_backend_t *be, const mp_spec_t *spec, int first, int count,
                            int slots, int64_t max_rows, mp_model_t **model_p)
{
    return mp_model_create_shard(be, spec, NULL, first, count, 0, NULL, slots, max_rows, model_p);
}

mp_status_t mp_model_create_shard(mp_backend_t *be, const mp_spec_t *spec, const mp_tp_plan_t *plan,
                                  int first, int count, int tp_rank, const mp_model_coll_t *coll,
                                  int slots, int64_t max_rows, mp_model_t **model_p)
{
    if (first < 0 || count < 1 || first + count > spec->model.nlayers || slots < 1 ||
        max_rows < 1) {
        mp_err("model: bad layer range [%d, %d) of %d layers or %d slots", first, first + count,
               spec->model.nlayers, slots);
        return MP_ERR_INVAL;
    }
    mp_tp_plan_t *own_plan = NULL;
    if (plan == NULL) {
        MP_TRY(serial_plan(spec, &own_plan));
        plan = own_plan;
        tp_rank = 0;
    }
    int tp = plan->tp;
    if (plan->nlayers != spec->model.nlayers || tp_rank < 0 || tp_rank >= tp ||
        (tp > 1 && (coll == NULL || coll->allreduce_sum == NULL || coll->allgather == NULL)) ||
        plan->layer[first].in_layout != MP_TP_LAYOUT_REPLICATED ||
        plan->layer[first + count - 1].out_layout != MP_TP_LAYOUT_REPLICATED) {
        mp_err("model: layers [%d, %d) of TP rank %d of %d do not fit the plan (%d layers), or "
               "the collectives are missing",
               first, first + count, tp_rank, tp, plan->nlayers);
        mp_free(own_plan);
        return MP_ERR_INVAL;
    }
    mp_model_t *m = mp_calloc(1, sizeof(*m));
    if (m == NULL) {
        mp_free(own_plan);
        return MP_ERR_NOMEM;
    }
    m->be = be;
    m->spec = spec;
    m->first = first;
    m->count = count;
    m->nslots = slots;
    m->max_rows = max_rows;
    m->tp = tp;
    m->tp_rank = tp_rank;
    if (coll != NULL) {
        m->coll = *coll;
    }
    m->layers = mp_calloc((size_t)count, sizeof(*m->layers));
    m->slots = mp_calloc((size_t)slots, sizeof(*m->slots));
    if (m->layers == NULL || m->slots == NULL) {
        goto err_nomem;
    }

    int64_t off = 0;
    for (int i = 0; i < count; i++) {
        model_layer_t *l = &m->layers[i];
        l->plan = plan->layer[first + i];
        l->index = first + i;
        l->nparams = l->plan.nparams;
        for (int p = 0; p < l->nparams; p++) {
            if (mp_tp_param_slice(plan, first + i, p, tp_rank, &l->slice[p]) != MP_OK) {
                mp_err("model: no parameter slice for layer %d param %d", first + i, p);
                goto err_inval;
            }
            l->off[p] = off;
            off += l->slice[p].rows * l->slice[p].cols;
        }
        int64_t split_full = l->plan.split == MP_TP_SPLIT_ROW ? l->plan.in_dim : l->plan.out_dim;
        int64_t cols;
        mp_tp_shard_range(split_full, tp, tp_rank, &l->split_col0, &cols);
        int64_t widths[2] = {l->plan.in_dim, l->plan.out_dim};
        for (int w = 0; w < 2; w++) {
            if (widths[w] > m->max_width) {
                m->max_width = widths[w];
            }
        }
        if (l->plan.kind == MP_LAYER_MLP_BLOCK && l->plan.split_local > m->max_ffn) {
            m->max_ffn = l->plan.split_local;
        }
    }
    mp_free(own_plan);
    own_plan = NULL;
    m->nparams_total = off;

    m->params = model_alloc(m, off);
    m->grads = model_alloc(m, off);
    if (m->params == NULL || m->grads == NULL) {
        goto err_nomem;
    }
    if (spec->train.optimizer == MP_OPTIM_ADAMW || spec->train.momentum != 0.0) {
        m->state1 = model_alloc(m, off);
        if (m->state1 == NULL) {
            goto err_nomem;
        }
    }
    if (spec->train.optimizer == MP_OPTIM_ADAMW) {
        m->state2 = model_alloc(m, off);
        if (m->state2 == NULL) {
            goto err_nomem;
        }
    }

    for (int s = 0; s < slots; s++) {
        if (model_alloc_slot(m, &m->slots[s]) != MP_OK) {
            goto err_nomem;
        }
    }
    m->slot_bytes /= slots;
    int64_t out_dim = mp_model_out_dim(m);
    m->bwd_a = model_alloc(m, max_rows * m->max_width);
    m->bwd_b = model_alloc(m, max_rows * m->max_width);
    m->probs = model_alloc(m, max_rows * out_dim);
    if (m->bwd_a == NULL || m->bwd_b == NULL || m->probs == NULL) {
        goto err_nomem;
    }
    if (m->max_ffn > 0) {
        m->dh_act = model_alloc(m, max_rows * m->max_ffn);
        m->dh_pre = model_alloc(m, max_rows * m->max_ffn);
        if (m->dh_act == NULL || m->dh_pre == NULL) {
            goto err_nomem;
        }
    }
    if (tp > 1) {
        m->tp_tmp = model_alloc(m, max_rows * m->max_width);
        m->host_a = mp_malloc((size_t)(max_rows * m->max_width) * sizeof(float));
        m->host_b = mp_malloc((size_t)(max_rows * m->max_width) * sizeof(float));
        if (m->tp_tmp == NULL || m->host_a == NULL || m->host_b == NULL) {
            goto err_nomem;
        }
    }

    mp_status_t st = model_init_params(m);
    if (st == MP_OK) {
        st = mp_model_zero_grad(m);
    }
    if (st == MP_OK && m->state1 != NULL) {
        st = be->ops->zero(be, m->state1, (size_t)off * sizeof(float));
    }
    if (st == MP_OK && m->state2 != NULL) {
        st = be->ops->zero(be, m->state2, (size_t)off * sizeof(float));
    }
    if (st != MP_OK) {
        mp_model_destroy(m);
        return st;
    }
    *model_p = m;
    return MP_OK;

err_inval:
    mp_free(own_plan);
    mp_model_destroy(m);
    return MP_ERR_INVAL;
err_nomem:
    mp_err("model: out of %s memory for layers [%d, %d)", be->ops->name, first, first + count);
    mp_free(own_plan);
    mp_model_destroy(m);
    return MP_ERR_NOMEM;
}

void mp_model_destroy(mp_model_t *m)
{
    if (m == NULL) {
        return;
    }
    for (int i = 0; i < m->nallocs; i++) {
        m->be->ops->free(m->be, m->allocs[i]);
    }
    mp_free(m->allocs);
    if (m->slots != NULL) {
        for (int s = 0; s < m->nslots; s++) {
            mp_free(m->slots[s].act);
            mp_free(m->slots[s].xs);
            mp_free(m->slots[s].h_pre);
            mp_free(m->slots[s].h_act);
        }
    }
    mp_free(m->host_a);
    mp_free(m->host_b);
    mp_free(m->slots);
    mp_free(m->layers);
    mp_free(m);
}

int64_t mp_model_in_dim(const mp_model_t *m)
{
    return m->layers[0].plan.in_dim;
}
int64_t mp_model_out_dim(const mp_model_t *m)
{
    return m->layers[m->count - 1].plan.out_dim;
}
int64_t mp_model_param_count(const mp_model_t *m)
{
    return m->nparams_total;
}
int mp_model_first_layer(const mp_model_t *m)
{
    return m->first;
}
int mp_model_layer_count(const mp_model_t *m)
{
    return m->count;
}
int64_t mp_model_slot_bytes(const mp_model_t *m)
{
    return m->slot_bytes;
}
float *mp_model_input(mp_model_t *m, int slot)
{
    return m->slots[slot].act[0];
}
float *mp_model_output_grad(mp_model_t *m, int slot)
{
    return m->slots[slot].out_grad;
}
float *mp_model_grads(mp_model_t *m)
{
    return m->grads;
}

/* ---- TP steps around a layer ------------------------------------------ */

/* dst[B, cols] = columns [col0, col0 + cols) of src[B, n]. */
static mp_status_t copy_cols(mp_model_t *m, float *dst, const float *src, int64_t rows, int64_t n,
                             int64_t col0, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        MP_TRY(m->be->ops->copy(m->be, dst + r * cols, src + r * n + col0,
                                (size_t)cols * sizeof(float)));
    }
    return MP_OK;
}

/* In place over the TP group: buf (n floats, backend memory) becomes the sum. */
static mp_status_t tp_allreduce(mp_model_t *m, float *buf, int64_t n)
{
    mp_backend_t *be = m->be;
    if (be->kind == MP_BACKEND_CPU) {
        return m->coll.allreduce_sum(m->coll.ctx, buf, n);
    }
    size_t bytes = (size_t)n * sizeof(float);
    MP_TRY(be->ops->download(be, m->host_a, buf, bytes));
    MP_TRY(m->coll.allreduce_sum(m->coll.ctx, m->host_a, n));
    return be->ops->upload(be, buf, m->host_a, bytes);
}

/* out[B, c * tp] = the ranks' in[B, c] side by side along the feature axis:
 * the transport's rank-major blocks [tp][B x c] interleaved row by row. */
static mp_status_t tp_allgather(mp_model_t *m, const float *in, float *out, int64_t rows, int64_t c)
{
    mp_backend_t *be = m->be;
    const float *hin = in;
    if (be->kind != MP_BACKEND_CPU) {
        MP_TRY(be->ops->download(be, m->host_a, in, (size_t)(rows * c) * sizeof(float)));
        hin = m->host_a;
    }
    MP_TRY(m->coll.allgather(m->coll.ctx, hin, m->host_b, rows * c));
    int64_t n = c * m->tp;
    for (int t = 0; t < m->tp; t++) {
        for (int64_t r = 0; r < rows; r++) {
            MP_TRY(be->ops->upload(be, out + r * n + t * c, m->host_b + (t * rows + r) * c,
                                   (size_t)c * sizeof(float)));
        }
    }
    return MP_OK;
}

/* ---- forward / loss / backward ---------------------------------------- */

static mp_status_t layer_forward(mp_model_t *m, model_slot_t *sl, int i, int64_t B)
{
    mp_backend_t *be = m->be;
    const model_layer_t *l = &m->layers[i];
    const mp_tp_layer_t *pl = &l->plan;
    const float *P = m->params;
    const float *x = sl->act[i];
    float *y = sl->act[i + 1];
    int64_t I = pl->in_dim, O = pl->out_dim;
    switch (pl->split) {
    case MP_TP_SPLIT_REPLICATE:
        return mp_linear_fwd(be, y, x, P + l->off[0], P + l->off[1], B, I, O);
    case MP_TP_SPLIT_COLUMN: {
        /* Z_r = X·W_r + b_r; all-gathered, or kept sharded for a row layer. */
        int64_t Ol = pl->split_local;
        float *z = pl->fwd_post == MP_TP_COMM_ALLGATHER ? m->tp_tmp : y;
        MP_TRY(mp_linear_fwd(be, z, x, P + l->off[0], P + l->off[1], B, I, Ol));
        if (pl->fwd_post == MP_TP_COMM_ALLGATHER) {
            MP_TRY(tp_allgather(m, z, y, B, Ol));
        }
        return MP_OK;
    }
    case MP_TP_SPLIT_ROW: {
        /* Z = sum_r X_r·W_r, then the whole bias once, after the sum. */
        int64_t Il = pl->split_local;
        if (pl->fwd_pre == MP_TP_COMM_SLICE) {
            MP_TRY(copy_cols(m, sl->xs[i], x, B, I, l->split_col0, Il));
            x = sl->xs[i];
        }
        MP_TRY(mp_linear_fwd(be, y, x, P + l->off[0], NULL, B, Il, O));
        if (pl->fwd_post == MP_TP_COMM_ALLREDUCE) {
            MP_TRY(tp_allreduce(m, y, B * O));
        }
        return be->ops->bias_add(be, y, P + l->off[1], B, O);
    }
    case MP_TP_SPLIT_ELEMENTWISE:
        if (pl->kind == MP_LAYER_GELU) {
            return mp_gelu_fwd(be, y, x, B * pl->in_local);
        }
        return mp_relu_fwd(be, y, x, B * pl->in_local);
    case MP_TP_SPLIT_MLP: {
        /* y = x + gelu(x·W1_r + b1_r)·W2_r summed over ranks, + b2. */
        int64_t H = pl->in_dim, Fl = pl->split_local;
        MP_TRY(mp_mlp_block_fc1_fwd(be, sl->h_pre[i], sl->h_act[i], x, P + l->off[0], P + l->off[1],
                                    B, H, Fl));
        MP_TRY(mp_mlp_block_fc2_fwd(be, y, sl->h_act[i], P + l->off[2], B, Fl, H));
        if (pl->fwd_post == MP_TP_COMM_ALLREDUCE) {
            MP_TRY(tp_allreduce(m, y, B * H));
        }
        return mp_mlp_block_residual_fwd(be, y, x, P + l->off[3], B, H);
    }
    }
    return MP_ERR_INVAL;
}

mp_status_t mp_model_forward(mp_model_t *m, int slot, int64_t rows, float **out_p)
{
    if (rows > m->max_rows || rows < 0 || slot < 0 || slot >= m->nslots) {
        return MP_ERR_INVAL;
    }
    model_slot_t *sl = &m->slots[slot];
    for (int i = 0; i < m->count; i++) {
        MP_TRY(layer_forward(m, sl, i, rows));
    }
    MP_TRY(m->be->ops->zero(m->be, sl->out_grad,
                            (size_t)(rows * mp_model_out_dim(m)) * sizeof(float)));
    *out_p = sl->act[m->count];
    return MP_OK;
}

mp_status_t mp_model_loss(mp_model_t *m, int slot, const int32_t *labels, int64_t rows, float scale,
                          double *loss_sum_p, int64_t *correct_p)
{
    if (rows > m->max_rows || rows < 0 || slot < 0 || slot >= m->nslots) {
        return MP_ERR_INVAL;
    }
    model_slot_t *sl = &m->slots[slot];
    int64_t C = mp_model_out_dim(m);
    double loss = 0.0;
    int64_t correct = 0;
    MP_TRY(
        m->be->ops->xent_fwd(m->be, m->probs, sl->act[m->count], labels, rows, C, &loss, &correct));
    if (scale != 0.0f) {
        MP_TRY(m->be->ops->xent_bwd(m->be, sl->out_grad, m->probs, labels, rows, C, scale));
    }
    if (loss_sum_p != NULL) {
        *loss_sum_p += loss;
    }
    if (correct_p != NULL) {
        *correct_p += correct;
    }
    return MP_OK;
}

/* Backward of layer i: dy is dL/d(its output) as laid out after fwd_post;
 * dx (NULL when nobody needs it) was zeroed, and receives dL/d(its input)
 * as laid out when it arrived. */
static mp_status_t layer_backward(mp_model_t *m, model_slot_t *sl, int i, int64_t B,
                                  const float *dy, float *dx)
{
    mp_backend_t *be = m->be;
    const model_layer_t *l = &m->layers[i];
    const mp_tp_layer_t *pl = &l->plan;
    const float *P = m->params;
    float *G = m->grads;
    const float *x = sl->act[i];
    int64_t I = pl->in_dim, O = pl->out_dim;
    switch (pl->split) {
    case MP_TP_SPLIT_REPLICATE:
        return mp_linear_bwd(be, dx, G + l->off[0], G + l->off[1], dy, x, P + l->off[0], B, I, O);
    case MP_TP_SPLIT_COLUMN: {
        /* The gradient of an all-gathered Z is whole: take this rank's
         * columns; dX = sum_r dZ_r·W_r^T is a partial sum to reduce. */
        int64_t Ol = pl->split_local;
        const float *dz = dy;
        if (pl->bwd_pre == MP_TP_COMM_SLICE) {
            MP_TRY(copy_cols(m, m->tp_tmp, dy, B, O, l->split_col0, Ol));
            dz = m->tp_tmp;
        }
        MP_TRY(mp_linear_bwd(be, dx, G + l->off[0], G + l->off[1], dz, x, P + l->off[0], B, I, Ol));
        if (dx != NULL && pl->bwd_post == MP_TP_COMM_ALLREDUCE) {
            MP_TRY(tp_allreduce(m, dx, B * I));
        }
        return MP_OK;
    }
    case MP_TP_SPLIT_ROW: {
        /* dW_r = X_r^T·dY, db = colsum(dY) on every rank; dX_r = dY·W_r^T is
         * this rank's columns of dX, gathered when X arrived whole. */
        int64_t Il = pl->split_local;
        bool sliced = pl->fwd_pre == MP_TP_COMM_SLICE;
        const float *xr = sliced ? sl->xs[i] : x;
        float *dxr = dx;
        if (dx != NULL && sliced) {
            dxr = m->tp_tmp;
            MP_TRY(be->ops->zero(be, dxr, (size_t)(B * Il) * sizeof(float)));
        }
        MP_TRY(
            mp_linear_bwd(be, dxr, G + l->off[0], G + l->off[1], dy, xr, P + l->off[0], B, Il, O));
        if (dx != NULL && sliced) {
            MP_TRY(tp_allgather(m, dxr, dx, B, Il));
        }
        return MP_OK;
    }
    case MP_TP_SPLIT_ELEMENTWISE:
        if (dx == NULL) {
            return MP_OK;
        }
        if (pl->kind == MP_LAYER_GELU) {
            return mp_gelu_bwd(be, dx, x, dy, B * pl->in_local);
        }
        return mp_relu_bwd(be, dx, x, dy, B * pl->in_local);
    case MP_TP_SPLIT_MLP: {
        int64_t H = pl->in_dim, Fl = pl->split_local;
        MP_TRY(mp_mlp_block_fc2_bwd(be, m->dh_act, G + l->off[2], G + l->off[3], dy, sl->h_act[i],
                                    P + l->off[2], B, Fl, H));
        MP_TRY(mp_mlp_block_fc1_bwd(be, dx, G + l->off[0], G + l->off[1], m->dh_pre, m->dh_act,
                                    sl->h_pre[i], x, P + l->off[0], B, H, Fl));
        if (dx != NULL && pl->bwd_post == MP_TP_COMM_ALLREDUCE) {
            MP_TRY(tp_allreduce(m, dx, B * H));
        }
        /* The residual's dy once, after the sum. */
        return mp_mlp_block_residual_bwd(be, dx, dy, B, H);
    }
    }
    return MP_ERR_INVAL;
}

mp_status_t mp_model_backward(mp_model_t *m, int slot, int64_t rows, float **in_grad_p)
{
    if (rows > m->max_rows || rows < 0 || slot < 0 || slot >= m->nslots) {
        return MP_ERR_INVAL;
    }
    model_slot_t *sl = &m->slots[slot];
    const float *dy = sl->out_grad;
    float *bufs[2] = {m->bwd_a, m->bwd_b};
    int which = 0;
    for (int i = m->count - 1; i >= 0; i--) {
        const mp_tp_layer_t *pl = &m->layers[i].plan;
        /* The first layer's input gradient is needed only by a previous stage. */
        float *dx = NULL;
        if (i > 0 || in_grad_p != NULL) {
            dx = bufs[which];
            which ^= 1;
            MP_TRY(m->be->ops->zero(m->be, dx, (size_t)(rows * pl->in_local) * sizeof(float)));
        }
        MP_TRY(layer_backward(m, sl, i, rows, dy, dx));
        dy = dx;
    }
    if (in_grad_p != NULL) {
        *in_grad_p = (float *)dy;
    }
    return MP_OK;
}

mp_status_t mp_model_zero_grad(mp_model_t *m)
{
    return m->be->ops->zero(m->be, m->grads, (size_t)m->nparams_total * sizeof(float));
}

mp_status_t mp_model_step(mp_model_t *m, int64_t step)
{
    const mp_spec_t *s = m->spec;
    mp_optim_hp_t hp = {
        .lr = (float)s->train.lr,
        .momentum = (float)s->train.momentum,
        .dampening = (float)s->train.dampening,
        .weight_decay = (float)s->train.weight_decay,
        .nesterov = s->train.nesterov,
        .beta1 = (float)s->train.beta1,
        .beta2 = (float)s->train.beta2,
        .eps = (float)s->train.eps,
        .step = step,
    };
    /* Both optimizers are element-wise, so one call over the flat buffer
     * computes exactly what torch's per-tensor loop computes, on every
     * shard's slice alike. */
    int64_t n = m->nparams_total;
    if (s->train.optimizer == MP_OPTIM_ADAMW) {
        return m->be->ops->adamw_step(m->be, m->params, m->grads, m->state1, m->state2, n, &hp);
    }
    return m->be->ops->sgd_step(m->be, m->params, m->grads, m->state1, n, &hp);
}

mp_status_t mp_model_param_slice(const mp_model_t *m, int layer, int param, mp_tp_slice_t *slice_p)
{
    int i = layer - m->first;
    if (i < 0 || i >= m->count || param < 0 || param >= m->layers[i].nparams) {
        return MP_ERR_INVAL;
    }
    *slice_p = m->layers[i].slice[param];
    return MP_OK;
}

mp_status_t mp_model_param_download(mp_model_t *m, int layer, int param, float *host)
{
    mp_tp_slice_t s;
    MP_TRY(mp_model_param_slice(m, layer, param, &s));
    const model_layer_t *l = &m->layers[layer - m->first];
    return m->be->ops->download(m->be, host, m->params + l->off[param],
                                (size_t)(s.rows * s.cols) * sizeof(float));
}

/* Until the layer table splits each layer's backward, B runs the whole
 * backward and W has nothing left to do: the same sums, in the same order. */
mp_status_t mp_model_backward_input(mp_model_t *m, int slot, int64_t rows, float **in_grad_p)
{
    return mp_model_backward(m, slot, rows, in_grad_p);
}

mp_status_t mp_model_backward_weight(mp_model_t *m, int slot, int64_t rows)
{
    if (rows > m->max_rows || rows < 0 || slot < 0 || slot >= m->nslots) {
        return MP_ERR_INVAL;
    }
    return MP_OK;
}

/* The backend buffer of a parameter block: base + the block's offset. */
static mp_status_t param_block(mp_model_t *m, float *base, int layer, int param, float **p,
                               size_t *bytes)
{
    mp_tp_slice_t s;
    if (base == NULL) {
        return MP_ERR_INVAL;
    }
    MP_TRY(mp_model_param_slice(m, layer, param, &s));
    const model_layer_t *l = &m->layers[layer - m->first];
    *p = base + l->off[param];
    *bytes = (size_t)(s.rows * s.cols) * sizeof(float);
    return MP_OK;
}

mp_status_t mp_model_param_upload(mp_model_t *m, int layer, int param, const float *host)
{
    float *p;
    size_t bytes;
    MP_TRY(param_block(m, m->params, layer, param, &p, &bytes));
    return m->be->ops->upload(m->be, p, host, bytes);
}

bool mp_model_has_state(const mp_model_t *m, int which)
{
    return (which == 0 ? m->state1 : which == 1 ? m->state2 : NULL) != NULL;
}

mp_status_t mp_model_state_download(mp_model_t *m, int which, int layer, int param, float *host)
{
    float *p;
    size_t bytes;
    MP_TRY(param_block(m, which == 0 ? m->state1 : which == 1 ? m->state2 : NULL, layer, param,
                       &p, &bytes));
    return m->be->ops->download(m->be, host, p, bytes);
}

mp_status_t mp_model_state_upload(mp_model_t *m, int which, int layer, int param,
                                  const float *host)
{
    float *p;
    size_t bytes;
    MP_TRY(param_block(m, which == 0 ? m->state1 : which == 1 ? m->state2 : NULL, layer, param,
                       &p, &bytes));
    return m->be->ops->upload(m->be, p, host, bytes);
}
