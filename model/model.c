/*
 * model.c - a range of a spec's layers on one backend: parameters,
 * gradients and optimizer state (one allocation each, carved per tensor),
 * activation slots, forward, loss, backward and the optimizer step.
 * Owned by one thread at a time (a serial trainer or a shard executor).
 *
 * Legend: B = rows, I = in width, O = out width, H = mlp hidden, F = mlp ffn.
 */
#include "model/model.h"

#include <math.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "gpu/init.h"

#define MP_MAX_PARAMS_PER_LAYER 4

typedef struct {
    mp_layer_spec_t spec;
    int index; /* index in the spec's model.layers */
    int nparams;
    int64_t off[MP_MAX_PARAMS_PER_LAYER]; /* element offsets into the flat parameter buffer */
    int64_t rows[MP_MAX_PARAMS_PER_LAYER];
    int64_t cols[MP_MAX_PARAMS_PER_LAYER];
} model_layer_t;

typedef struct {
    float **act;   /* [count + 1]: act[0] input, act[i + 1] output of layer i */
    float **h_pre; /* [count]: mlp_block pre-activation [B, F] (NULL otherwise) */
    float **h_act; /* [count]: mlp_block gelu output [B, F] */
    float *out_grad;
} model_slot_t;

struct mp_model {
    mp_backend_t *be;
    const mp_spec_t *spec;
    int first, count, nslots;
    int64_t max_rows, max_width, max_ffn, nparams_total;
    model_layer_t *layers;
    model_slot_t *slots;
    float *params, *grads, *state1, *state2;
    float *bwd_a, *bwd_b;       /* ping-pong activation gradients [max_rows, max_width] */
    float *dh_act, *dh_pre;     /* mlp_block backward scratch [max_rows, max_ffn] */
    float *probs;               /* softmax output [max_rows, out_dim] */
    void **allocs;              /* every backend allocation, for destroy */
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

static float layer_bound(const mp_layer_spec_t *l, int param)
{
    /* nn.Linear: weight and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
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
            mp_init_uniform_block(host + l->off[p], m->spec->train.seed, (uint32_t)l->index,
                                  (uint32_t)p, l->cols[p], 0, l->rows[p], 0, l->cols[p],
                                  layer_bound(&l->spec, p));
        }
    }
    mp_status_t st = m->be->ops->upload(m->be, m->params, host, (size_t)n * sizeof(float));
    mp_free(host);
    return st;
}

mp_status_t mp_model_create(mp_backend_t *be, const mp_spec_t *spec, int first, int count,
                            int slots, int64_t max_rows, mp_model_t **model_p)
{
    if (first < 0 || count < 1 || first + count > spec->model.nlayers || slots < 1 ||
        max_rows < 1) {
        mp_err("model: bad layer range [%d, %d) of %d layers or %d slots", first, first + count,
               spec->model.nlayers, slots);
        return MP_ERR_INVAL;
    }
    mp_model_t *m = mp_calloc(1, sizeof(*m));
    if (m == NULL) {
        return MP_ERR_NOMEM;
    }
    m->be = be;
    m->spec = spec;
    m->first = first;
    m->count = count;
    m->nslots = slots;
    m->max_rows = max_rows;
    m->layers = mp_calloc((size_t)count, sizeof(*m->layers));
    m->slots = mp_calloc((size_t)slots, sizeof(*m->slots));
    if (m->layers == NULL || m->slots == NULL) {
        goto err_nomem;
    }

    int64_t off = 0;
    for (int i = 0; i < count; i++) {
        model_layer_t *l = &m->layers[i];
        l->spec = spec->model.layers[first + i];
        l->index = first + i;
        l->nparams = mp_layer_nparams(&l->spec);
        for (int p = 0; p < l->nparams; p++) {
            mp_layer_param_shape(&l->spec, p, &l->rows[p], &l->cols[p]);
            l->off[p] = off;
            off += l->rows[p] * l->cols[p];
        }
        if (l->spec.in_dim > m->max_width) {
            m->max_width = l->spec.in_dim;
        }
        if (l->spec.out_dim > m->max_width) {
            m->max_width = l->spec.out_dim;
        }
        if (l->spec.kind == MP_LAYER_MLP_BLOCK && l->spec.ffn > m->max_ffn) {
            m->max_ffn = l->spec.ffn;
        }
    }
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

    int64_t out_dim = m->layers[count - 1].spec.out_dim;
    for (int s = 0; s < slots; s++) {
        model_slot_t *sl = &m->slots[s];
        sl->act = mp_calloc((size_t)count + 1, sizeof(float *));
        sl->h_pre = mp_calloc((size_t)count, sizeof(float *));
        sl->h_act = mp_calloc((size_t)count, sizeof(float *));
        if (sl->act == NULL || sl->h_pre == NULL || sl->h_act == NULL) {
            goto err_nomem;
        }
        sl->act[0] = model_alloc(m, max_rows * m->layers[0].spec.in_dim);
        if (sl->act[0] == NULL) {
            goto err_nomem;
        }
        for (int i = 0; i < count; i++) {
            const mp_layer_spec_t *ls = &m->layers[i].spec;
            sl->act[i + 1] = model_alloc(m, max_rows * ls->out_dim);
            if (sl->act[i + 1] == NULL) {
                goto err_nomem;
            }
            if (ls->kind == MP_LAYER_MLP_BLOCK) {
                sl->h_pre[i] = model_alloc(m, max_rows * ls->ffn);
                sl->h_act[i] = model_alloc(m, max_rows * ls->ffn);
                if (sl->h_pre[i] == NULL || sl->h_act[i] == NULL) {
                    goto err_nomem;
                }
            }
        }
        sl->out_grad = model_alloc(m, max_rows * out_dim);
        if (sl->out_grad == NULL) {
            goto err_nomem;
        }
    }
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

err_nomem:
    mp_err("model: out of %s memory for layers [%d, %d)", be->ops->name, first, first + count);
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
            mp_free(m->slots[s].h_pre);
            mp_free(m->slots[s].h_act);
        }
    }
    mp_free(m->slots);
    mp_free(m->layers);
    mp_free(m);
}

int64_t mp_model_in_dim(const mp_model_t *m) { return m->layers[0].spec.in_dim; }
int64_t mp_model_out_dim(const mp_model_t *m) { return m->layers[m->count - 1].spec.out_dim; }
int64_t mp_model_param_count(const mp_model_t *m) { return m->nparams_total; }
float *mp_model_input(mp_model_t *m, int slot) { return m->slots[slot].act[0]; }
float *mp_model_output_grad(mp_model_t *m, int slot) { return m->slots[slot].out_grad; }
float *mp_model_grads(mp_model_t *m) { return m->grads; }

#define MP_TRY(expr)                  \
    do {                              \
        mp_status_t try_st_ = (expr); \
        if (try_st_ != MP_OK) {       \
            return try_st_;           \
        }                             \
    } while (0)

mp_status_t mp_model_forward(mp_model_t *m, int slot, int64_t rows, float **out_p)
{
    const mp_backend_ops_t *ops = m->be->ops;
    mp_backend_t *be = m->be;
    model_slot_t *sl = &m->slots[slot];
    if (rows > m->max_rows || slot < 0 || slot >= m->nslots) {
        return MP_ERR_INVAL;
    }
    for (int i = 0; i < m->count; i++) {
        const model_layer_t *l = &m->layers[i];
        const float *x = sl->act[i];
        float *y = sl->act[i + 1];
        const float *P = m->params;
        int64_t n = rows * l->spec.in_dim;
        switch (l->spec.kind) {
        case MP_LAYER_LINEAR:
            MP_TRY(ops->linear_fwd(be, y, x, P + l->off[0], P + l->off[1], rows, l->spec.in_dim,
                                   l->spec.out_dim));
            break;
        case MP_LAYER_GELU:
            MP_TRY(ops->gelu_fwd(be, y, x, n));
            break;
        case MP_LAYER_RELU:
            MP_TRY(ops->relu_fwd(be, y, x, n));
            break;
        case MP_LAYER_MLP_BLOCK: {
            /* y = x + gelu(x W1 + b1) W2 + b2 */
            int64_t H = l->spec.hidden, F = l->spec.ffn;
            MP_TRY(ops->linear_fwd(be, sl->h_pre[i], x, P + l->off[0], P + l->off[1], rows, H, F));
            MP_TRY(ops->gelu_fwd(be, sl->h_act[i], sl->h_pre[i], rows * F));
            MP_TRY(ops->linear_fwd(be, y, sl->h_act[i], P + l->off[2], P + l->off[3], rows, F, H));
            MP_TRY(ops->axpy(be, y, 1.0f, x, rows * H));
            break;
        }
        }
    }
    MP_TRY(ops->zero(be, sl->out_grad, (size_t)(rows * mp_model_out_dim(m)) * sizeof(float)));
    *out_p = sl->act[m->count];
    return MP_OK;
}

mp_status_t mp_model_loss(mp_model_t *m, int slot, const int32_t *labels, int64_t rows,
                          float scale, double *loss_sum_p, int64_t *correct_p)
{
    model_slot_t *sl = &m->slots[slot];
    int64_t C = mp_model_out_dim(m);
    double loss = 0.0;
    int64_t correct = 0;
    MP_TRY(m->be->ops->xent_fwd(m->be, m->probs, sl->act[m->count], labels, rows, C, &loss,
                                &correct));
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

mp_status_t mp_model_backward(mp_model_t *m, int slot, int64_t rows, float **in_grad_p)
{
    const mp_backend_ops_t *ops = m->be->ops;
    mp_backend_t *be = m->be;
    model_slot_t *sl = &m->slots[slot];
    const float *P = m->params;
    float *G = m->grads;
    const float *dy = sl->out_grad;
    float *bufs[2] = {m->bwd_a, m->bwd_b};
    int which = 0;

    for (int i = m->count - 1; i >= 0; i--) {
        const model_layer_t *l = &m->layers[i];
        const float *x = sl->act[i];
        int64_t I = l->spec.in_dim;
        /* The first layer's input gradient is needed only by a previous stage. */
        float *dx = NULL;
        if (i > 0 || in_grad_p != NULL) {
            dx = bufs[which];
            which ^= 1;
            MP_TRY(ops->zero(be, dx, (size_t)(rows * I) * sizeof(float)));
        }
        switch (l->spec.kind) {
        case MP_LAYER_LINEAR:
            MP_TRY(ops->linear_bwd(be, dx, G + l->off[0], G + l->off[1], dy, x, P + l->off[0],
                                   rows, I, l->spec.out_dim));
            break;
        case MP_LAYER_GELU:
            if (dx != NULL) {
                MP_TRY(ops->gelu_bwd(be, dx, x, dy, rows * I));
            }
            break;
        case MP_LAYER_RELU:
            if (dx != NULL) {
                MP_TRY(ops->relu_bwd(be, dx, x, dy, rows * I));
            }
            break;
        case MP_LAYER_MLP_BLOCK: {
            int64_t H = l->spec.hidden, F = l->spec.ffn;
            size_t fbytes = (size_t)(rows * F) * sizeof(float);
            MP_TRY(ops->zero(be, m->dh_act, fbytes));
            MP_TRY(ops->zero(be, m->dh_pre, fbytes));
            MP_TRY(ops->linear_bwd(be, m->dh_act, G + l->off[2], G + l->off[3], dy, sl->h_act[i],
                                   P + l->off[2], rows, F, H));
            MP_TRY(ops->gelu_bwd(be, m->dh_pre, sl->h_pre[i], m->dh_act, rows * F));
            MP_TRY(ops->linear_bwd(be, dx, G + l->off[0], G + l->off[1], m->dh_pre, x,
                                   P + l->off[0], rows, H, F));
            if (dx != NULL) {
                MP_TRY(ops->axpy(be, dx, 1.0f, dy, rows * H)); /* the residual path */
            }
            break;
        }
        }
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
     * computes exactly what torch's per-tensor loop computes. */
    int64_t n = m->nparams_total;
    if (s->train.optimizer == MP_OPTIM_ADAMW) {
        return m->be->ops->adamw_step(m->be, m->params, m->grads, m->state1, m->state2, n, &hp);
    }
    return m->be->ops->sgd_step(m->be, m->params, m->grads, m->state1, n, &hp);
}

mp_status_t mp_model_param_download(mp_model_t *m, int layer, int param, float *host)
{
    int i = layer - m->first;
    if (i < 0 || i >= m->count || param < 0 || param >= m->layers[i].nparams) {
        return MP_ERR_INVAL;
    }
    const model_layer_t *l = &m->layers[i];
    return m->be->ops->download(m->be, host, m->params + l->off[param],
                                (size_t)(l->rows[param] * l->cols[param]) * sizeof(float));
}
