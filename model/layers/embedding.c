/*
 * embedding.c - the `embedding` kind (DESIGN.md "Transformers"): token ids
 * [B, T] in (as floats, one per row), h[b, t] = token.weight[id] +
 * position.weight[t] out.  It must be the first layer (nothing before it
 * takes a gradient from token ids).  TP is vocab-parallel: rank r holds
 * token rows [r*V/tp, (r+1)*V/tp), ids outside give zero rows, an AllReduce
 * sums the ranks' lookups, and the replicated positions are added once
 * after it.  Its whole backward is W (there is no input gradient).
 * Compute on the model's thread.
 *
 * Legend: R = B*T rows, T = positions, C = dim, V = vocab, Vl = V / tp.
 */
#include <stddef.h>

#include "model/layer.h"

static const mp_layer_key_t keys[] = {{"vocab", offsetof(mp_layer_spec_t, vocab), true},
                                      {"dim", offsetof(mp_layer_spec_t, dim), true},
                                      {"max_seq", offsetof(mp_layer_spec_t, max_seq), true}};
static const char *const names[] = {"token.weight", "position.weight"};

static mp_status_t emb_check(const mp_layer_spec_t *l, int index, int64_t in, const char *in_from,
                             int64_t *out_p, mp_errbuf_t *err)
{
    if (index != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].type: an \"embedding\" must be the first layer "
                             "(it takes token ids)",
                             index);
    }
    if (in != 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.input: %lld, but an embedding takes one token id per "
                             "position (omit model.input or set it to 1)",
                             (long long)in);
    }
    *out_p = l->dim;
    return MP_OK;
}

static void emb_shape(const mp_layer_spec_t *l, int p, int64_t *rows_p, int64_t *cols_p)
{
    *rows_p = p == 0 ? l->vocab : l->max_seq;
    *cols_p = l->dim;
}

static mp_layer_init_t emb_init(const mp_layer_spec_t *l, int p)
{
    return (mp_layer_init_t){MP_INIT_NORMAL, 1.0f}; /* nn.Embedding: N(0, 1) */
}

static double emb_flops(const mp_layer_spec_t *l, int64_t in, int64_t out, int64_t seq)
{
    return 2.0 * (double)l->dim;
}

static mp_status_t emb_plan(const mp_layer_plan_ctx_t *c, mp_tp_layer_t *pl, mp_errbuf_t *err)
{
    const mp_layer_spec_t *layer = &c->spec->model.layers[c->index];
    if (layer->vocab % c->tp != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.tp: %d does not divide model.layers[%d].vocab = %lld",
                             c->tp, c->index, (long long)layer->vocab);
    }
    pl->split = MP_TP_SPLIT_VOCAB;
    pl->in_local = pl->in_dim;
    pl->out_local = pl->out_dim;
    pl->split_local = layer->vocab / c->tp;
    pl->nparams = 2;
    pl->bias_after_reduce = true; /* the positions, once, after the sum */
    if (c->tp > 1) {
        pl->fwd_post = MP_TP_COMM_ALLREDUCE;
    }
    return MP_OK;
}

static void emb_slice(const mp_tp_layer_t *pl, const mp_layer_spec_t *l, int p, int tp, int rank,
                      mp_tp_slice_t *s)
{
    int64_t rows, cols;
    emb_shape(l, p, &rows, &cols);
    *s = (mp_tp_slice_t){.full_rows = rows, .full_cols = cols, .rows = rows, .cols = cols};
    if (p == 0) {
        mp_tp_shard_range(rows, tp, rank, &s->row0, &s->rows);
    }
    s->replicated = s->rows == rows;
}

static mp_status_t emb_forward(mp_layer_t *L, float *saved, const float *x, float *y, int64_t R)
{
    mp_backend_t *be = L->be;
    int64_t C = L->plan.out_dim;
    MP_TRY(be->ops->embed_fwd(be, y, x, L->P[0], R, C, L->slice[0].row0, L->slice[0].rows));
    MP_TRY(mp_layer_allreduce(L, y, R * C));
    return be->ops->pos_add(be, y, L->P[1], R, L->seq, C);
}

static mp_status_t emb_bwd_input(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                 float *dx, int64_t R)
{
    return MP_OK; /* token ids take no gradient */
}

static mp_status_t emb_bwd_weight(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                  int64_t R)
{
    mp_backend_t *be = L->be;
    int64_t C = L->plan.out_dim;
    MP_TRY(be->ops->embed_bwd(be, L->G[0], dy, x, R, C, L->slice[0].row0, L->slice[0].rows));
    return be->ops->pos_bwd(be, L->G[1], dy, R, L->seq, C);
}

const mp_layer_ops_t mp_layer_embedding = {
    .name = "embedding",
    .kind = MP_LAYER_EMBEDDING,
    .keys = keys,
    .nkeys = 3,
    .check = emb_check,
    .nparams = 2,
    .param_names = names,
    .param_shape = emb_shape,
    .param_init = emb_init,
    .flops = emb_flops,
    .plan = emb_plan,
    .param_slice = emb_slice,
    .forward = emb_forward,
    .backward_input = emb_bwd_input,
    .backward_weight = emb_bwd_weight,
};
