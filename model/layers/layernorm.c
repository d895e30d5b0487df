/*
 * layernorm.c - the `layernorm` kind: torch.nn.LayerNorm over the last
 * axis, eps 1e-5, biased variance, weight 1 and bias 0 at init.
 * Replicated on every TP rank (identical inputs give identical outputs and
 * gradients).  Compute on the model's thread.
 *
 * Legend: R = rows, C = width.
 */
#include "model/layer.h"

#define LN_EPS 1e-5f

static const char *const names[] = {"weight", "bias"};

static mp_status_t ln_check(const mp_layer_spec_t *l, int index, int64_t in, const char *in_from,
                            int64_t *out_p, mp_errbuf_t *err)
{
    *out_p = in;
    return MP_OK;
}

static void ln_shape(const mp_layer_spec_t *l, int p, int64_t *rows_p, int64_t *cols_p)
{
    *rows_p = 1;
    *cols_p = l->in_dim;
}

static mp_layer_init_t ln_init(const mp_layer_spec_t *l, int p)
{
    return (mp_layer_init_t){MP_INIT_CONST, p == 0 ? 1.0f : 0.0f};
}

static double ln_flops(const mp_layer_spec_t *l, int64_t in, int64_t out, int64_t seq)
{
    return 8.0 * (double)in;
}

static mp_status_t ln_plan(const mp_layer_plan_ctx_t *c, mp_tp_layer_t *pl, mp_errbuf_t *err)
{
    pl->split = MP_TP_SPLIT_REPLICATE;
    pl->in_local = pl->in_dim;
    pl->out_local = pl->out_dim;
    pl->split_local = pl->out_dim;
    pl->nparams = 2;
    return MP_OK;
}

static void ln_slice(const mp_tp_layer_t *pl, const mp_layer_spec_t *l, int p, int tp, int rank,
                     mp_tp_slice_t *s)
{
    *s = (mp_tp_slice_t){.full_rows = 1,
                         .full_cols = pl->in_dim,
                         .rows = 1,
                         .cols = pl->in_dim,
                         .replicated = true};
}

/* saved: mean [R], rstd [R]. */
static int64_t ln_saved(const mp_layer_t *L, int64_t R)
{
    return 2 * R;
}

static mp_status_t ln_forward(mp_layer_t *L, float *saved, const float *x, float *y, int64_t R)
{
    return L->be->ops->layernorm_fwd(L->be, y, saved, saved + R, x, L->P[0], L->P[1], R,
                                     L->plan.in_dim, LN_EPS);
}

static mp_status_t ln_bwd_input(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                float *dx, int64_t R)
{
    if (dx == NULL) {
        return MP_OK;
    }
    return L->be->ops->layernorm_bwd(L->be, dx, NULL, NULL, dy, x, saved, saved + R, L->P[0], R,
                                     L->plan.in_dim);
}

static mp_status_t ln_bwd_weight(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                 int64_t R)
{
    return L->be->ops->layernorm_bwd(L->be, NULL, L->G[0], L->G[1], dy, x, saved, saved + R,
                                     L->P[0], R, L->plan.in_dim);
}

const mp_layer_ops_t mp_layer_layernorm = {
    .name = "layernorm",
    .kind = MP_LAYER_LAYERNORM,
    .check = ln_check,
    .nparams = 2,
    .param_names = names,
    .param_shape = ln_shape,
    .param_init = ln_init,
    .flops = ln_flops,
    .plan = ln_plan,
    .param_slice = ln_slice,
    .saved_elems = ln_saved,
    .forward = ln_forward,
    .backward_input = ln_bwd_input,
    .backward_weight = ln_bwd_weight,
};
