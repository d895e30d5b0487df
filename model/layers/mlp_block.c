/*
 * mlp_block.c - the `mlp_block` kind: y = x + gelu(x·W1 + b1)·W2 + b2,
 * width hidden -> ffn -> hidden, the Megatron MLP under TP: fc1
 * column-parallel, gelu on the shards, fc2 row-parallel, one AllReduce,
 * then b2 and the residual once (tpplan.h).  Backward: B computes the
 * input gradient (and keeps d(pre-activation) for W), W the four
 * parameter gradients.  Compute on the model's thread.
 *
 * Legend: R = rows, H = hidden, F = ffn, Fl = F / tp.
 */
#include <math.h>
#include <stddef.h>

#include "model/layer.h"

static const mp_layer_key_t keys[] = {{"hidden", offsetof(mp_layer_spec_t, hidden), true},
                                      {"ffn", offsetof(mp_layer_spec_t, ffn), true}};
static const char *const names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};

static mp_status_t mlp_check(const mp_layer_spec_t *l, int index, int64_t in, const char *in_from,
                             int64_t *out_p, mp_errbuf_t *err)
{
    if (l->hidden != in) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].hidden: %lld does not match the input width %lld "
                             "from %s",
                             index, (long long)l->hidden, (long long)in, in_from);
    }
    if (l->ffn < 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "model.layers[%d].ffn: %lld is not a positive width",
                             index, (long long)l->ffn);
    }
    *out_p = in;
    return MP_OK;
}

static void mlp_shape(const mp_layer_spec_t *l, int p, int64_t *rows_p, int64_t *cols_p)
{
    bool fc1 = p < 2, weight = p % 2 == 0;
    int64_t in = fc1 ? l->hidden : l->ffn, out = fc1 ? l->ffn : l->hidden;
    *rows_p = weight ? in : 1;
    *cols_p = out;
}

static mp_layer_init_t mlp_init(const mp_layer_spec_t *l, int p)
{
    int64_t fan_in = p < 2 ? l->hidden : l->ffn;
    return (mp_layer_init_t){MP_INIT_UNIFORM, 1.0f / sqrtf((float)fan_in)};
}

static double mlp_flops(const mp_layer_spec_t *l, int64_t in, int64_t out, int64_t seq)
{
    return 2.0 * 2.0 * (double)l->hidden * (double)l->ffn;
}

static mp_status_t mlp_plan(const mp_layer_plan_ctx_t *c, mp_tp_layer_t *pl, mp_errbuf_t *err)
{
    const mp_layer_spec_t *layer = &c->spec->model.layers[c->index];
    if (layer->ffn % c->tp != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.tp: %d does not divide model.layers[%d].ffn = %lld", c->tp,
                             c->index, (long long)layer->ffn);
    }
    /* Only a linear is ever paired, so x arrives replicated. */
    pl->split = MP_TP_SPLIT_MLP;
    pl->ffn = layer->ffn;
    pl->in_local = pl->in_dim;
    pl->out_local = pl->out_dim;
    pl->split_local = layer->ffn / c->tp;
    pl->nparams = 4;
    pl->bias_after_reduce = true;
    if (c->tp > 1) {
        pl->fwd_post = MP_TP_COMM_ALLREDUCE;
        pl->bwd_post = MP_TP_COMM_ALLREDUCE;
    }
    return MP_OK;
}

static void mlp_slice(const mp_tp_layer_t *pl, const mp_layer_spec_t *l, int p, int tp, int rank,
                      mp_tp_slice_t *s)
{
    int64_t rows, cols;
    mlp_shape(l, p, &rows, &cols);
    *s = (mp_tp_slice_t){.full_rows = rows, .full_cols = cols, .rows = rows, .cols = cols};
    if (p == 0 || p == 1) { /* fc1 weight and bias: columns */
        mp_tp_shard_range(cols, tp, rank, &s->col0, &s->cols);
    } else if (p == 2) { /* fc2 weight: rows */
        mp_tp_shard_range(rows, tp, rank, &s->row0, &s->rows);
    }
    s->replicated = s->rows == rows && s->cols == cols;
}

/* saved: Hpre [R, Fl], A = gelu(Hpre) [R, Fl], dHpre [R, Fl] (B for W). */
static int64_t mlp_saved(const mp_layer_t *L, int64_t R)
{
    return 3 * R * L->plan.split_local;
}

static int64_t mlp_scratch(const mp_layer_t *L, int64_t R)
{
    return R * L->plan.split_local;
}

static mp_status_t mlp_forward(mp_layer_t *L, float *saved, const float *x, float *y, int64_t R)
{
    mp_backend_t *be = L->be;
    int64_t H = L->plan.in_dim, Fl = L->plan.split_local;
    float *hpre = saved, *a = saved + R * Fl;
    MP_TRY(be->ops->linear_fwd(be, hpre, x, L->P[0], L->P[1], R, H, Fl));
    MP_TRY(be->ops->gelu_fwd(be, a, hpre, R * Fl));
    MP_TRY(be->ops->linear_fwd(be, y, a, L->P[2], NULL, R, Fl, H));
    MP_TRY(mp_layer_allreduce(L, y, R * H));
    MP_TRY(be->ops->bias_add(be, y, L->P[3], R, H));
    return be->ops->axpy(be, y, 1.0f, x, R * H);
}

static mp_status_t mlp_bwd_input(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                 float *dx, int64_t R)
{
    mp_backend_t *be = L->be;
    int64_t H = L->plan.in_dim, Fl = L->plan.split_local;
    float *hpre = saved, *dpre = saved + 2 * R * Fl, *da = mp_layer_scratch(L);
    /* dA = dY·W2^T; dHpre = dA * gelu'(Hpre), kept for W. */
    MP_TRY(be->ops->gemm(be, MP_OP_N, MP_OP_T, R, Fl, H, 1.0f, dy, H, L->P[2], H, 0.0f, da, Fl));
    MP_TRY(be->ops->zero(be, dpre, (size_t)(R * Fl) * sizeof(float)));
    MP_TRY(be->ops->gelu_bwd(be, dpre, hpre, da, R * Fl));
    if (dx == NULL) {
        return MP_OK;
    }
    /* dX = sum_r dHpre_r·W1_r^T (a partial sum under TP), then the
     * residual's dY once, after the sum. */
    MP_TRY(be->ops->linear_bwd(be, dx, NULL, NULL, dpre, x, L->P[0], R, H, Fl));
    MP_TRY(mp_layer_allreduce(L, dx, R * H));
    return be->ops->axpy(be, dx, 1.0f, dy, R * H);
}

static mp_status_t mlp_bwd_weight(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                  int64_t R)
{
    mp_backend_t *be = L->be;
    int64_t H = L->plan.in_dim, Fl = L->plan.split_local;
    const float *a = saved + R * Fl, *dpre = saved + 2 * R * Fl;
    MP_TRY(be->ops->linear_bwd(be, NULL, L->G[2], L->G[3], dy, a, L->P[2], R, Fl, H));
    return be->ops->linear_bwd(be, NULL, L->G[0], L->G[1], dpre, x, L->P[0], R, H, Fl);
}

/* W of n slots: each weight's gradient from one GEMM over the n slots'
 * rows (A and dY for W2, dHpre and X for W1). */
static mp_status_t mlp_bwd_weight_n(mp_layer_t *L, int n, float *const *saved,
                                    const float *const *x, const float *const *dy, int64_t R)
{
    int64_t H = L->plan.in_dim, Fl = L->plan.split_local;
    const float *act[MP_LAYER_FUSE_MAX], *dpre[MP_LAYER_FUSE_MAX];
    for (int j = 0; j < n; j++) {
        act[j] = saved[j] + R * Fl;      /* A = gelu(Hpre) */
        dpre[j] = saved[j] + 2 * R * Fl; /* dHpre */
    }
    MP_TRY(mp_layer_wgrad_n(L, n, act, dy, R, Fl, H, L->G[2], L->G[3]));
    return mp_layer_wgrad_n(L, n, x, dpre, R, H, Fl, L->G[0], L->G[1]);
}

static int64_t mlp_fuse_row(const mp_layer_t *L)
{
    return L->plan.in_dim + L->plan.split_local;
}

const mp_layer_ops_t mp_layer_mlp_block = {
    .name = "mlp_block",
    .kind = MP_LAYER_MLP_BLOCK,
    .keys = keys,
    .nkeys = 2,
    .check = mlp_check,
    .nparams = 4,
    .param_names = names,
    .param_shape = mlp_shape,
    .param_init = mlp_init,
    .flops = mlp_flops,
    .plan = mlp_plan,
    .param_slice = mlp_slice,
    .saved_elems = mlp_saved,
    .scratch_elems = mlp_scratch,
    .forward = mlp_forward,
    .backward_input = mlp_bwd_input,
    .backward_weight = mlp_bwd_weight,
    .backward_weight_n = mlp_bwd_weight_n,
    .fuse_row_elems = mlp_fuse_row,
};
