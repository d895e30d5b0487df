/*
 * linear.c - the `linear` layer kind: Z = X·W + b, W stored [in, out].
 * TP (parallel/tpplan.h has the math): replicated, column-parallel (its
 * output all-gathered, or kept sharded for a following row-parallel linear
 * that pairs with it, or, as a sequence model's head, kept sharded over the
 * vocab for the vocab-parallel loss) or row-parallel (the whole bias added
 * once after the AllReduce).  Compute on the model's thread.
 *
 * Legend: R = rows, I = in, O = out, Il / Ol = this rank's share.
 */
#include <math.h>
#include <stddef.h>

#include "model/layer.h"

static const mp_layer_key_t keys[] = {{"out", offsetof(mp_layer_spec_t, out), true}};
static const char *const names[] = {"weight", "bias"};

static mp_status_t linear_check(const mp_layer_spec_t *l, int index, int64_t in,
                                const char *in_from, int64_t *out_p, mp_errbuf_t *err)
{
    if (l->out < 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "model.layers[%d].out: %lld is not a positive width",
                             index, (long long)l->out);
    }
    *out_p = l->out;
    return MP_OK;
}

static void linear_shape(const mp_layer_spec_t *l, int p, int64_t *rows_p, int64_t *cols_p)
{
    *rows_p = p == 0 ? l->in_dim : 1;
    *cols_p = l->out;
}

static mp_layer_init_t linear_init(const mp_layer_spec_t *l, int p)
{
    /* nn.Linear: weight and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
    return (mp_layer_init_t){MP_INIT_UNIFORM, 1.0f / sqrtf((float)l->in_dim)};
}

static double linear_flops(const mp_layer_spec_t *l, int64_t in, int64_t out, int64_t seq)
{
    return 2.0 * (double)in * (double)out;
}

static bool same_stage(const mp_part_t *part, int a, int b)
{
    return part == NULL || mp_part_stage_of(part, a) == mp_part_stage_of(part, b);
}

/* Whether the column-parallel linear `l` pairs with a following linear that
 * consumes its shards: skip gelu/relu, stay inside the stage. */
static bool pairs_with_next(const mp_spec_t *spec, const mp_part_t *part, int l)
{
    int j = l + 1;
    while (j < spec->model.nlayers && same_stage(part, l, j) &&
           (spec->model.layers[j].kind == MP_LAYER_GELU ||
            spec->model.layers[j].kind == MP_LAYER_RELU)) {
        j++;
    }
    if (j >= spec->model.nlayers || !same_stage(part, l, j)) {
        return false;
    }
    const mp_layer_spec_t *next = &spec->model.layers[j];
    return next->kind == MP_LAYER_LINEAR && (next->tp == MP_TP_AUTO || next->tp == MP_TP_ROW);
}

/* A sequence model (it starts with an embedding) whose last layer this is. */
static bool is_vocab_head(const mp_layer_plan_ctx_t *c)
{
    return c->index == c->spec->model.nlayers - 1 &&
           c->spec->model.layers[0].kind == MP_LAYER_EMBEDDING;
}

static mp_status_t linear_plan(const mp_layer_plan_ctx_t *c, mp_tp_layer_t *pl, mp_errbuf_t *err)
{
    const mp_layer_spec_t *layer = &c->spec->model.layers[c->index];
    int l = c->index, tp = c->tp;
    int64_t in = pl->in_dim, out = pl->out_dim;
    pl->nparams = 2;
    if (layer->tp == MP_TP_COLUMN && out % tp != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].tp: \"column\" needs parallel.tp = %d to divide "
                             "model.layers[%d].out = %lld",
                             l, tp, l, (long long)out);
    }
    if (layer->tp == MP_TP_ROW && in % tp != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].tp: \"row\" needs parallel.tp = %d to divide the "
                             "layer's input width %lld",
                             l, tp, (long long)in);
    }
    pl->split = MP_TP_SPLIT_REPLICATE;
    pl->in_local = in;
    pl->out_local = out;
    pl->split_local = out;
    if (tp == 1) {
        return MP_OK;
    }
    if (is_vocab_head(c) && pl->in_layout == MP_TP_LAYOUT_REPLICATED) {
        /* Megatron's vocab-parallel head: logits stay sharded for the loss. */
        if (out % tp != 0 || layer->tp == MP_TP_ROW || layer->tp == MP_TP_REPLICATE) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 out % tp != 0
                                     ? "parallel.tp: %d does not divide model.layers[%d].out = "
                                       "%lld (the vocabulary of the vocab-parallel head)"
                                     : "model.layers[%d].tp: a sequence model's head is "
                                       "column-parallel over the vocabulary",
                                 out % tp != 0 ? tp : l, out % tp != 0 ? l : 0,
                                 (long long)out);
        }
        pl->split = MP_TP_SPLIT_COLUMN;
        pl->split_local = out / tp;
        pl->out_layout = MP_TP_LAYOUT_SHARDED;
        pl->out_local = out / tp;
        pl->bwd_post = MP_TP_COMM_ALLREDUCE;
        return MP_OK;
    }
    if (pl->in_layout == MP_TP_LAYOUT_SHARDED) {
        /* A column-parallel linear before paired with this one (only an auto
         * or "row" linear is paired), so tp divides in. */
        pl->split = MP_TP_SPLIT_ROW;
        pl->in_local = in / tp;
        pl->split_local = in / tp;
        pl->fwd_post = MP_TP_COMM_ALLREDUCE;
        pl->bias_after_reduce = true;
        return MP_OK;
    }
    if (layer->tp == MP_TP_ROW) {
        pl->split = MP_TP_SPLIT_ROW;
        pl->split_local = in / tp;
        pl->fwd_pre = MP_TP_COMM_SLICE;
        pl->fwd_post = MP_TP_COMM_ALLREDUCE;
        pl->bwd_post = MP_TP_COMM_ALLGATHER;
        pl->bias_after_reduce = true;
        return MP_OK;
    }
    if (layer->tp == MP_TP_COLUMN || (layer->tp == MP_TP_AUTO && out % tp == 0)) {
        pl->split = MP_TP_SPLIT_COLUMN;
        pl->split_local = out / tp;
        pl->bwd_post = MP_TP_COMM_ALLREDUCE;
        if (pairs_with_next(c->spec, c->part, l)) {
            pl->out_layout = MP_TP_LAYOUT_SHARDED;
            pl->out_local = out / tp;
        } else {
            pl->fwd_post = MP_TP_COMM_ALLGATHER;
            pl->bwd_pre = MP_TP_COMM_SLICE;
        }
        return MP_OK;
    }
    return MP_OK; /* replicate: forced, or auto with tp not dividing out */
}

static void linear_slice(const mp_tp_layer_t *pl, const mp_layer_spec_t *l, int p, int tp,
                         int rank, mp_tp_slice_t *s)
{
    int64_t rows = p == 0 ? pl->in_dim : 1, cols = pl->out_dim;
    *s = (mp_tp_slice_t){.full_rows = rows, .full_cols = cols, .rows = rows, .cols = cols};
    if (pl->split == MP_TP_SPLIT_COLUMN) {
        mp_tp_shard_range(cols, tp, rank, &s->col0, &s->cols);
    } else if (pl->split == MP_TP_SPLIT_ROW && p == 0) {
        mp_tp_shard_range(rows, tp, rank, &s->row0, &s->rows);
    }
    s->replicated = s->rows == rows && s->cols == cols;
}

static bool sliced_row(const mp_tp_layer_t *pl)
{
    return pl->split == MP_TP_SPLIT_ROW && pl->fwd_pre == MP_TP_COMM_SLICE;
}

static int64_t linear_saved(const mp_layer_t *L, int64_t R)
{
    return sliced_row(&L->plan) ? R * L->plan.split_local : 0;
}

static int64_t linear_scratch(const mp_layer_t *L, int64_t R)
{
    return L->tp > 1 ? R * L->plan.split_local : 0;
}

static mp_status_t linear_forward(mp_layer_t *L, float *saved, const float *x, float *y, int64_t R)
{
    mp_backend_t *be = L->be;
    const mp_tp_layer_t *pl = &L->plan;
    int64_t I = pl->in_dim, O = pl->out_dim;
    switch (pl->split) {
    case MP_TP_SPLIT_COLUMN: {
        /* Z_r = X·W_r + b_r; all-gathered, or kept sharded. */
        int64_t Ol = pl->split_local;
        bool gather = pl->fwd_post == MP_TP_COMM_ALLGATHER;
        float *z = gather ? mp_layer_scratch(L) : y;
        MP_TRY(be->ops->linear_fwd(be, z, x, L->P[0], L->P[1], R, I, Ol));
        return gather ? mp_layer_allgather_cols(L, z, y, R, Ol) : MP_OK;
    }
    case MP_TP_SPLIT_ROW: {
        /* Z = sum_r X_r·W_r, then the whole bias once, after the sum. */
        int64_t Il = pl->split_local;
        if (sliced_row(pl)) {
            MP_TRY(mp_layer_copy_cols(L, saved, x, R, I, L->split_col0, Il));
            x = saved;
        }
        MP_TRY(be->ops->linear_fwd(be, y, x, L->P[0], NULL, R, Il, O));
        MP_TRY(mp_layer_allreduce(L, y, R * O));
        return be->ops->bias_add(be, y, L->P[1], R, O);
    }
    default:
        return be->ops->linear_fwd(be, y, x, L->P[0], L->P[1], R, I, O);
    }
}

/* The dZ this rank's block multiplies: an all-gathered Z's gradient is whole
 * on every rank, so the rank takes its own columns into the scratch. */
static mp_status_t local_dz(mp_layer_t *L, const float *dy, int64_t R, const float **dz_p)
{
    const mp_tp_layer_t *pl = &L->plan;
    *dz_p = dy;
    if (pl->split == MP_TP_SPLIT_COLUMN && pl->bwd_pre == MP_TP_COMM_SLICE) {
        float *t = mp_layer_scratch(L);
        MP_TRY(mp_layer_copy_cols(L, t, dy, R, pl->out_dim, L->split_col0, pl->split_local));
        *dz_p = t;
    }
    return MP_OK;
}

/* Rows and widths of this rank's GEMM: X [R, Ik] · W [Ik, Ok]. */
static void local_dims(const mp_tp_layer_t *pl, int64_t *Ik, int64_t *Ok)
{
    *Ik = pl->split == MP_TP_SPLIT_ROW ? pl->split_local : pl->in_dim;
    *Ok = pl->split == MP_TP_SPLIT_COLUMN ? pl->split_local : pl->out_dim;
}

static mp_status_t linear_bwd_input(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                    float *dx, int64_t R)
{
    if (dx == NULL) {
        return MP_OK;
    }
    mp_backend_t *be = L->be;
    const mp_tp_layer_t *pl = &L->plan;
    int64_t Ik, Ok;
    local_dims(pl, &Ik, &Ok);
    const float *dz;
    MP_TRY(local_dz(L, dy, R, &dz));
    if (sliced_row(pl)) {
        /* dX_r = dY·W_r^T is this rank's columns of dX: gathered. */
        float *dxr = mp_layer_scratch(L);
        MP_TRY(be->ops->zero(be, dxr, (size_t)(R * Ik) * sizeof(float)));
        MP_TRY(be->ops->linear_bwd(be, dxr, NULL, NULL, dz, saved, L->P[0], R, Ik, Ok));
        return mp_layer_allgather_cols(L, dxr, dx, R, Ik);
    }
    MP_TRY(be->ops->linear_bwd(be, dx, NULL, NULL, dz, x, L->P[0], R, Ik, Ok));
    if (pl->bwd_post == MP_TP_COMM_ALLREDUCE) {
        /* dX = sum_r dZ_r·W_r^T: a partial sum. */
        return mp_layer_allreduce(L, dx, R * pl->in_dim);
    }
    return MP_OK;
}

static mp_status_t linear_bwd_weight(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                     int64_t R)
{
    mp_backend_t *be = L->be;
    const mp_tp_layer_t *pl = &L->plan;
    int64_t Ik, Ok;
    local_dims(pl, &Ik, &Ok);
    const float *dz;
    MP_TRY(local_dz(L, dy, R, &dz));
    const float *xr = sliced_row(pl) ? saved : x;
    return be->ops->linear_bwd(be, NULL, L->G[0], L->G[1], dz, xr, L->P[0], R, Ik, Ok);
}

/* W of n slots: one GEMM over the n slots' rows.  A column split whose
 * backward slices dY's columns into the shared scratch runs slot by slot. */
static mp_status_t linear_bwd_weight_n(mp_layer_t *L, int n, float *const *saved,
                                       const float *const *x, const float *const *dy, int64_t R)
{
    const mp_tp_layer_t *pl = &L->plan;
    if (pl->split == MP_TP_SPLIT_COLUMN && pl->bwd_pre == MP_TP_COMM_SLICE) {
        for (int j = 0; j < n; j++) {
            MP_TRY(linear_bwd_weight(L, saved[j], x[j], dy[j], R));
        }
        return MP_OK;
    }
    int64_t Ik, Ok;
    local_dims(pl, &Ik, &Ok);
    const float *xr[MP_LAYER_FUSE_MAX];
    for (int j = 0; j < n; j++) {
        xr[j] = sliced_row(pl) ? saved[j] : x[j];
    }
    return mp_layer_wgrad_n(L, n, xr, dy, R, Ik, Ok, L->G[0], L->G[1]);
}

static int64_t linear_fuse_row(const mp_layer_t *L)
{
    int64_t Ik, Ok;
    local_dims(&L->plan, &Ik, &Ok);
    return Ik + Ok;
}

const mp_layer_ops_t mp_layer_linear = {
    .name = "linear",
    .kind = MP_LAYER_LINEAR,
    .keys = keys,
    .nkeys = 1,
    .takes_tp = true,
    .check = linear_check,
    .nparams = 2,
    .param_names = names,
    .param_shape = linear_shape,
    .param_init = linear_init,
    .flops = linear_flops,
    .plan = linear_plan,
    .param_slice = linear_slice,
    .saved_elems = linear_saved,
    .scratch_elems = linear_scratch,
    .forward = linear_forward,
    .backward_input = linear_bwd_input,
    .backward_weight = linear_bwd_weight,
    .backward_weight_n = linear_bwd_weight_n,
    .fuse_row_elems = linear_fuse_row,
};
