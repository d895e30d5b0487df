/*
 * model.c - a range of a spec's layers on one backend, whole or as one TP
 * rank's shard: parameters, gradients and optimizer state (one allocation
 * each, carved per tensor), activation slots, forward, loss, backward (in
 * B and W halves) and the optimizer step.  Every layer is driven through
 * its kind's table (model/layer.h); this file knows no kind.  The TP
 * collectives go through the caller's hook table on host memory.  Owned
 * by one thread at a time (a serial trainer or a shard executor).
 *
 * Rows: the caller counts samples (rows); a sample of a sequence model is
 * T = spec model.seq positions, so the layers see R = rows*T rows.
 *
 * Legend: R = rows*T, MR = max_rows*T, V = vocab, Vl = its share here.
 */
#include "model/model.h"

#include <math.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "gpu/init.h"
#include "model/layer.h"
#include "model/layer_env.h"

typedef struct {
    mp_layer_t L;
    int64_t off[MP_LAYER_MAX_PARAMS]; /* element offsets into the flat parameter buffer */
    int64_t saved_elems;              /* per slot, at MR rows */
} model_layer_t;

typedef struct {
    float **act;   /* [count + 1]: act[0] input, act[i + 1] output of layer i */
    float **grad;  /* [count + 1]: dL/d act[i]; grad[count] is the output gradient */
    float **saved; /* [count]: what layer i keeps from forward (and B) for backward (and W) */
} model_slot_t;

struct mp_model {
    mp_backend_t *be;
    const mp_spec_t *spec;
    int first, count, nslots, tp, tp_rank;
    int64_t T, max_rows, MR, nparams_total, slot_bytes;
    bool vocab_parallel; /* the last layer's logits are vocab shards (sequence models) */
    mp_layer_env_t env;
    model_layer_t *layers;
    model_slot_t *slots;
    float *params, *grads, *state1, *state2;
    bool params_held;  /* told the backend (params_hold): written only through its ops */
    float *probs;      /* classic xent: softmax [MR, C] */
    float *loss_dev;   /* vocab-parallel xent: rowmax, sumexp, target, gmax, gsum [MR] each */
    float *loss_host;  /* [(tp + 4) * MR] host staging of the above */
    void **allocs;     /* every backend allocation, for destroy */
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

/* N(0, a^2) from two uniforms of the counter (Box-Muller, in double). */
static float init_normal(uint64_t seed, uint32_t layer, uint32_t param, uint64_t idx, float a)
{
    double u1 = mp_init_u01(seed, layer, param, 2 * idx);
    double u2 = mp_init_u01(seed, layer, param, 2 * idx + 1);
    double z = sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
    return (float)(a * z);
}

/* Fills dst (the slice's local block, row-major) with its elements of the
 * full tensor drawn as `how` says. */
static void init_block(float *dst, const mp_tp_slice_t *s, mp_layer_init_t how, uint64_t seed,
                       uint32_t layer, uint32_t param)
{
    int parts = s->parts > 1 ? s->parts : 1;
    int64_t w = s->cols / parts;
    for (int64_t r = 0; r < s->rows; r++) {
        for (int k = 0; k < parts; k++) {
            float *d = dst + r * s->cols + k * w;
            int64_t c0 = mp_tp_slice_full_col(s, k * w);
            if (how.kind == MP_INIT_UNIFORM) {
                mp_init_uniform_block(d, seed, layer, param, s->full_cols, s->row0 + r, 1, c0, w,
                                      how.a);
            }
            for (int64_t c = 0; c < w && how.kind != MP_INIT_UNIFORM; c++) {
                uint64_t idx = (uint64_t)((s->row0 + r) * s->full_cols + c0 + c);
                d[c] = how.kind == MP_INIT_CONST ? how.a
                                                 : init_normal(seed, layer, param, idx, how.a);
            }
        }
    }
}

static mp_status_t model_init_params(mp_model_t *m)
{
    int64_t n = m->nparams_total;
    float *host = mp_malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (host == NULL) {
        return MP_ERR_NOMEM;
    }
    for (int i = 0; i < m->count; i++) {
        model_layer_t *ml = &m->layers[i];
        const mp_layer_t *L = &ml->L;
        for (int p = 0; p < L->plan.nparams; p++) {
            init_block(host + ml->off[p], &L->slice[p], L->ops->param_init(L->spec, p),
                       m->spec->train.seed, (uint32_t)L->index, (uint32_t)p);
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
    int64_t MR = m->MR;
    sl->act = mp_calloc((size_t)m->count + 1, sizeof(float *));
    sl->grad = mp_calloc((size_t)m->count + 1, sizeof(float *));
    sl->saved = mp_calloc((size_t)m->count, sizeof(float *));
    if (sl->act == NULL || sl->grad == NULL || sl->saved == NULL) {
        return MP_ERR_NOMEM;
    }
    for (int i = 0; i <= m->count; i++) {
        int64_t w = i == 0 ? m->layers[0].L.plan.in_local : m->layers[i - 1].L.plan.out_local;
        sl->act[i] = slot_alloc(m, MR * w);
        sl->grad[i] = slot_alloc(m, MR * w);
        if (sl->act[i] == NULL || sl->grad[i] == NULL) {
            return MP_ERR_NOMEM;
        }
    }
    for (int i = 0; i < m->count; i++) {
        if (m->layers[i].saved_elems > 0) {
            sl->saved[i] = slot_alloc(m, m->layers[i].saved_elems);
            if (sl->saved[i] == NULL) {
                return MP_ERR_NOMEM;
            }
        }
    }
    return MP_OK;
}

mp_status_t mp_model_create(mp_backend_t *be, const mp_spec_t *spec, int first, int count,
                            int slots, int64_t max_rows, mp_model_t **model_p)
{
    return mp_model_create_shard(be, spec, NULL, first, count, 0, NULL, slots, max_rows, model_p);
}

/* Whether the range [first, first + count) of the plan starts and ends on
 * replicated activations (a sequence model's head may end on vocab shards). */
static bool range_fits(const mp_tp_plan_t *plan, int first, int count)
{
    const mp_tp_layer_t *last = &plan->layer[first + count - 1];
    bool end_ok = last->out_layout == MP_TP_LAYOUT_REPLICATED ||
                  (plan->vocab_parallel_loss && first + count == plan->nlayers);
    return plan->layer[first].in_layout == MP_TP_LAYOUT_REPLICATED && end_ok;
}

static mp_status_t model_setup_layer(mp_model_t *m, const mp_tp_plan_t *plan, int i,
                                     int64_t *off_p)
{
    model_layer_t *ml = &m->layers[i];
    mp_layer_t *L = &ml->L;
    int l = m->first + i;
    L->index = l;
    L->spec = &m->spec->model.layers[l];
    L->ops = mp_layer_ops(L->spec->kind);
    L->plan = plan->layer[l];
    L->tp = m->tp;
    L->tp_rank = m->tp_rank;
    L->seq = m->T;
    L->be = m->be;
    L->env = &m->env;
    if (L->ops == NULL) {
        mp_err("model: layer %d has no kind table", l);
        return MP_ERR_INVAL;
    }
    for (int p = 0; p < L->plan.nparams; p++) {
        if (mp_tp_param_slice(plan, l, p, m->tp_rank, &L->slice[p]) != MP_OK) {
            mp_err("model: no parameter slice for layer %d param %d", l, p);
            return MP_ERR_INVAL;
        }
        ml->off[p] = *off_p;
        *off_p += L->slice[p].rows * L->slice[p].cols;
    }
    int64_t split_full = L->plan.split == MP_TP_SPLIT_ROW ? L->plan.in_dim : L->plan.out_dim;
    int64_t cols;
    mp_tp_shard_range(split_full, m->tp, m->tp_rank, &L->split_col0, &cols);
    ml->saved_elems = L->ops->saved_elems != NULL ? L->ops->saved_elems(L, m->MR) : 0;
    return MP_OK;
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
        !range_fits(plan, first, count)) {
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
    m->T = spec->model.seq > 0 ? spec->model.seq : 1;
    m->MR = max_rows * m->T;
    m->tp = tp;
    m->tp_rank = tp_rank;
    m->vocab_parallel = first + count == spec->model.nlayers &&
                        spec->model.layers[0].kind == MP_LAYER_EMBEDDING;
    if (coll != NULL) {
        m->env.coll = *coll;
    }
    m->layers = mp_calloc((size_t)count, sizeof(*m->layers));
    m->slots = mp_calloc((size_t)slots, sizeof(*m->slots));
    if (m->layers == NULL || m->slots == NULL) {
        goto err_nomem;
    }

    int64_t off = 0, scratch = 0, max_width = 0, fuse_row = 0;
    for (int i = 0; i < count; i++) {
        if (model_setup_layer(m, plan, i, &off) != MP_OK) {
            mp_free(own_plan);
            mp_model_destroy(m);
            return MP_ERR_INVAL;
        }
        const mp_layer_t *L = &m->layers[i].L;
        int64_t sc = L->ops->scratch_elems != NULL ? L->ops->scratch_elems(L, m->MR) : 0;
        scratch = sc > scratch ? sc : scratch;
        int64_t widths[2] = {L->plan.in_dim, L->plan.out_dim};
        for (int w = 0; w < 2; w++) {
            max_width = widths[w] > max_width ? widths[w] : max_width;
        }
        int64_t fr = L->ops->fuse_row_elems != NULL ? L->ops->fuse_row_elems(L) : 0;
        fuse_row = fr > fuse_row ? fr : fuse_row;
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
    for (int i = 0; i < count; i++) {
        model_layer_t *ml = &m->layers[i];
        for (int p = 0; p < ml->L.plan.nparams; p++) {
            ml->L.P[p] = m->params + ml->off[p];
            ml->L.G[p] = m->grads + ml->off[p];
        }
    }

    for (int s = 0; s < slots; s++) {
        if (model_alloc_slot(m, &m->slots[s]) != MP_OK) {
            goto err_nomem;
        }
    }
    m->slot_bytes /= slots;
    int64_t out_local = m->layers[count - 1].L.plan.out_local;
    if (m->vocab_parallel) {
        m->loss_dev = model_alloc(m, 5 * m->MR);
        m->loss_host = mp_malloc((size_t)((tp + 4) * m->MR) * sizeof(float));
        if (m->loss_dev == NULL || m->loss_host == NULL) {
            goto err_nomem;
        }
    } else {
        m->probs = model_alloc(m, m->MR * out_local);
        if (m->probs == NULL) {
            goto err_nomem;
        }
    }
    if (scratch > 0) {
        m->env.scratch = model_alloc(m, scratch);
        if (m->env.scratch == NULL) {
            goto err_nomem;
        }
    }
    int fuse_n = spec->parallel.fuse_w < slots ? spec->parallel.fuse_w : slots;
    if (fuse_n > 1 && fuse_row > 0) {
        /* backward_weight_n gathers its widest pair of operands of fuse_n slots' rows. */
        m->env.fuse_elems = fuse_n * m->MR * fuse_row;
        m->env.fuse = model_alloc(m, m->env.fuse_elems);
        if (m->env.fuse == NULL) {
            goto err_nomem;
        }
    }
    if (tp > 1) {
        m->env.host_a = mp_malloc((size_t)(m->MR * max_width) * sizeof(float));
        m->env.host_b = mp_malloc((size_t)(m->MR * max_width) * sizeof(float));
        if (m->env.host_a == NULL || m->env.host_b == NULL) {
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
    /* Parameters change only through the backend's ops from here on
     * (optimizer steps, param_upload), so it may cache copies of them. */
    if (be->ops->params_hold != NULL && off > 0) {
        be->ops->params_hold(be, m->params, (size_t)off * sizeof(float));
        m->params_held = true;
    }
    *model_p = m;
    return MP_OK;

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
    if (m->params_held) {
        m->be->ops->params_release(m->be, m->params);
    }
    for (int i = 0; i < m->nallocs; i++) {
        m->be->ops->free(m->be, m->allocs[i]);
    }
    mp_free(m->allocs);
    if (m->slots != NULL) {
        for (int s = 0; s < m->nslots; s++) {
            mp_free(m->slots[s].act);
            mp_free(m->slots[s].grad);
            mp_free(m->slots[s].saved);
        }
    }
    mp_free(m->env.host_a);
    mp_free(m->env.host_b);
    mp_free(m->loss_host);
    mp_free(m->slots);
    mp_free(m->layers);
    mp_free(m);
}

int64_t mp_model_in_dim(const mp_model_t *m)
{
    return m->T * m->layers[0].L.plan.in_dim;
}
int64_t mp_model_out_dim(const mp_model_t *m)
{
    return m->T * m->layers[m->count - 1].L.plan.out_local;
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
    return m->slots[slot].grad[m->count];
}
float *mp_model_grads(mp_model_t *m)
{
    return m->grads;
}
int64_t mp_model_coll_bytes(const mp_model_t *m)
{
    return m->env.coll_bytes;
}

static bool slot_ok(const mp_model_t *m, int slot, int64_t rows)
{
    return rows <= m->max_rows && rows >= 0 && slot >= 0 && slot < m->nslots;
}

/* ---- forward / loss / backward ---------------------------------------- */

mp_status_t mp_model_forward(mp_model_t *m, int slot, int64_t rows, float **out_p)
{
    if (!slot_ok(m, slot, rows)) {
        return MP_ERR_INVAL;
    }
    model_slot_t *sl = &m->slots[slot];
    int64_t R = rows * m->T;
    for (int i = 0; i < m->count; i++) {
        mp_layer_t *L = &m->layers[i].L;
        MP_TRY(L->ops->forward(L, sl->saved[i], sl->act[i], sl->act[i + 1], R));
    }
    MP_TRY(m->be->ops->zero(m->be, sl->grad[m->count],
                            (size_t)(R * m->layers[m->count - 1].L.plan.out_local) *
                                sizeof(float)));
    *out_p = sl->act[m->count];
    return MP_OK;
}

/* Megatron's vocab-parallel cross-entropy over logits [R, Vl] (columns
 * [v0, v0 + Vl) of V): the row maxima are combined across the TP group
 * (an AllGather of R floats, then the max), then the exponent sums and the
 * target logits (one AllReduce of 2R floats); the loss and the gradient
 * follow locally.  At tp = 1 the same arithmetic without collectives. */
static mp_status_t loss_vocab_parallel(mp_model_t *m, model_slot_t *sl, const int32_t *labels,
                                       int64_t R, float scale, double *loss_p, int64_t *correct_p)
{
    mp_backend_t *be = m->be;
    mp_layer_t *L = &m->layers[m->count - 1].L;
    const float *logits = sl->act[m->count];
    int64_t Vl = L->plan.out_local, v0 = L->split_col0;
    if (L->plan.split != MP_TP_SPLIT_COLUMN) {
        v0 = 0;
    }
    int64_t MR = m->MR;
    float *rowmax = m->loss_dev, *sumexp = rowmax + MR, *target = sumexp + MR;
    float *gmax = target + MR, *gsum = gmax + MR;
    float *h_max = m->loss_host;               /* [tp * R] gathered maxima */
    float *h_g = h_max + (int64_t)m->tp * MR;  /* [R] global max */
    float *h_st = h_g + MR;                    /* [2R] sumexp | target */
    size_t rb = (size_t)R * sizeof(float);
    MP_TRY(be->ops->xent_vp_max(be, rowmax, logits, R, Vl));
    if (m->tp > 1) {
        MP_TRY(be->ops->download(be, h_g, rowmax, rb));
        m->env.coll_bytes += (int64_t)rb;
        MP_TRY(m->env.coll.allgather(m->env.coll.ctx, h_g, h_max, R));
        for (int64_t r = 0; r < R; r++) {
            float mx = h_max[r];
            for (int t = 1; t < m->tp; t++) {
                float v = h_max[(int64_t)t * R + r];
                mx = v > mx ? v : mx;
            }
            h_g[r] = mx;
        }
        MP_TRY(be->ops->upload(be, gmax, h_g, rb));
    } else {
        MP_TRY(be->ops->copy(be, gmax, rowmax, rb));
        MP_TRY(be->ops->download(be, h_g, rowmax, rb));
    }
    MP_TRY(be->ops->xent_vp_sumexp(be, sumexp, target, logits, gmax, labels, R, Vl, v0));
    MP_TRY(be->ops->download(be, h_st, sumexp, rb));
    MP_TRY(be->ops->download(be, h_st + R, target, rb));
    if (m->tp > 1) {
        m->env.coll_bytes += 2 * (int64_t)rb;
        MP_TRY(m->env.coll.allreduce_sum(m->env.coll.ctx, h_st, 2 * R));
    }
    double loss = 0.0;
    int64_t correct = 0;
    for (int64_t r = 0; r < R; r++) {
        /* -log softmax[label] = log(sum) - (logit[label] - max), in double. */
        loss += log((double)h_st[r]) - ((double)h_st[R + r] - (double)h_g[r]);
        correct += h_st[R + r] >= h_g[r];
    }
    if (scale != 0.0f) {
        MP_TRY(be->ops->upload(be, gsum, h_st, rb));
        MP_TRY(be->ops->xent_vp_bwd(be, sl->grad[m->count], logits, gmax, gsum, labels, R, Vl, v0,
                                    scale));
    }
    *loss_p = loss;
    *correct_p = correct;
    return MP_OK;
}

mp_status_t mp_model_loss(mp_model_t *m, int slot, const int32_t *labels, int64_t rows, float scale,
                          double *loss_sum_p, int64_t *correct_p)
{
    if (!slot_ok(m, slot, rows)) {
        return MP_ERR_INVAL;
    }
    model_slot_t *sl = &m->slots[slot];
    int64_t R = rows * m->T;
    double loss = 0.0;
    int64_t correct = 0;
    if (m->vocab_parallel) {
        MP_TRY(loss_vocab_parallel(m, sl, labels, R, scale, &loss, &correct));
    } else {
        int64_t C = m->layers[m->count - 1].L.plan.out_local;
        MP_TRY(m->be->ops->xent_fwd(m->be, m->probs, sl->act[m->count], labels, R, C, &loss,
                                    &correct));
        if (scale != 0.0f) {
            MP_TRY(m->be->ops->xent_bwd(m->be, sl->grad[m->count], m->probs, labels, R, C, scale));
        }
    }
    if (loss_sum_p != NULL) {
        *loss_sum_p += loss;
    }
    if (correct_p != NULL) {
        *correct_p += correct;
    }
    return MP_OK;
}

/* B of layer i: grad[i] (zeroed here; NULL for the model's input when
 * nobody wants it) += dL/d act[i] from grad[i + 1]. */
static mp_status_t layer_b(mp_model_t *m, model_slot_t *sl, int i, int64_t R, bool want_in)
{
    mp_layer_t *L = &m->layers[i].L;
    float *dx = NULL;
    if (i > 0 || want_in) {
        dx = sl->grad[i];
        MP_TRY(m->be->ops->zero(m->be, dx, (size_t)(R * L->plan.in_local) * sizeof(float)));
    }
    return L->ops->backward_input(L, sl->saved[i], sl->act[i], sl->grad[i + 1], dx, R);
}

static mp_status_t layer_w(mp_model_t *m, model_slot_t *sl, int i, int64_t R)
{
    mp_layer_t *L = &m->layers[i].L;
    if (L->ops->backward_weight == NULL) {
        return MP_OK;
    }
    return L->ops->backward_weight(L, sl->saved[i], sl->act[i], sl->grad[i + 1], R);
}

mp_status_t mp_model_backward(mp_model_t *m, int slot, int64_t rows, float **in_grad_p)
{
    if (!slot_ok(m, slot, rows)) {
        return MP_ERR_INVAL;
    }
    model_slot_t *sl = &m->slots[slot];
    int64_t R = rows * m->T;
    for (int i = m->count - 1; i >= 0; i--) {
        MP_TRY(layer_b(m, sl, i, R, in_grad_p != NULL));
        MP_TRY(layer_w(m, sl, i, R));
    }
    if (in_grad_p != NULL) {
        *in_grad_p = sl->grad[0];
    }
    return MP_OK;
}

mp_status_t mp_model_backward_input(mp_model_t *m, int slot, int64_t rows, float **in_grad_p)
{
    if (!slot_ok(m, slot, rows)) {
        return MP_ERR_INVAL;
    }
    model_slot_t *sl = &m->slots[slot];
    int64_t R = rows * m->T;
    for (int i = m->count - 1; i >= 0; i--) {
        MP_TRY(layer_b(m, sl, i, R, in_grad_p != NULL));
    }
    if (in_grad_p != NULL) {
        *in_grad_p = sl->grad[0];
    }
    return MP_OK;
}

mp_status_t mp_model_backward_weight(mp_model_t *m, int slot, int64_t rows)
{
    if (!slot_ok(m, slot, rows)) {
        return MP_ERR_INVAL;
    }
    model_slot_t *sl = &m->slots[slot];
    int64_t R = rows * m->T;
    for (int i = m->count - 1; i >= 0; i--) {
        MP_TRY(layer_w(m, sl, i, R));
    }
    return MP_OK;
}

mp_status_t mp_model_backward_weight_n(mp_model_t *m, const int *slots, int n, int64_t rows)
{
    if (n < 1 || n > MP_LAYER_FUSE_MAX) {
        return MP_ERR_INVAL;
    }
    for (int j = 0; j < n; j++) {
        if (!slot_ok(m, slots[j], rows)) {
            return MP_ERR_INVAL;
        }
    }
    int64_t R = rows * m->T;
    for (int i = m->count - 1; i >= 0; i--) {
        mp_layer_t *L = &m->layers[i].L;
        if (n > 1 && L->ops->backward_weight_n != NULL && m->env.fuse != NULL) {
            float *saved[MP_LAYER_FUSE_MAX];
            const float *x[MP_LAYER_FUSE_MAX], *dy[MP_LAYER_FUSE_MAX];
            for (int j = 0; j < n; j++) {
                model_slot_t *sl = &m->slots[slots[j]];
                saved[j] = sl->saved[i];
                x[j] = sl->act[i];
                dy[j] = sl->grad[i + 1];
            }
            MP_TRY(L->ops->backward_weight_n(L, n, saved, x, dy, R));
            continue;
        }
        for (int j = 0; j < n; j++) {
            MP_TRY(layer_w(m, &m->slots[slots[j]], i, R));
        }
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
    if (i < 0 || i >= m->count || param < 0 || param >= m->layers[i].L.plan.nparams) {
        return MP_ERR_INVAL;
    }
    *slice_p = m->layers[i].L.slice[param];
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
