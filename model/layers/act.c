/*
 * act.c - the element-wise activation kinds `gelu` (exact erf form) and
 * `relu`.  They act on whatever layout arrives (whole or a TP shard of a
 * column-parallel linear's output), have no parameters, and their whole
 * backward is the input gradient.  Compute on the model's thread.
 */
#include "model/layer.h"

static mp_status_t act_check(const mp_layer_spec_t *l, int index, int64_t in, const char *in_from,
                             int64_t *out_p, mp_errbuf_t *err)
{
    *out_p = in;
    return MP_OK;
}

static double act_flops(const mp_layer_spec_t *l, int64_t in, int64_t out, int64_t seq)
{
    return (double)in;
}

static mp_status_t act_plan(const mp_layer_plan_ctx_t *c, mp_tp_layer_t *pl, mp_errbuf_t *err)
{
    pl->split = MP_TP_SPLIT_ELEMENTWISE;
    pl->out_layout = pl->in_layout;
    pl->in_local = pl->in_layout == MP_TP_LAYOUT_SHARDED ? pl->in_dim / c->tp : pl->in_dim;
    pl->out_local = pl->in_local;
    pl->split_local = pl->in_local;
    return MP_OK;
}

static mp_status_t gelu_forward(mp_layer_t *L, float *saved, const float *x, float *y, int64_t R)
{
    return L->be->ops->gelu_fwd(L->be, y, x, R * L->plan.in_local);
}

static mp_status_t gelu_bwd_input(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                  float *dx, int64_t R)
{
    return dx == NULL ? MP_OK : L->be->ops->gelu_bwd(L->be, dx, x, dy, R * L->plan.in_local);
}

static mp_status_t relu_forward(mp_layer_t *L, float *saved, const float *x, float *y, int64_t R)
{
    return L->be->ops->relu_fwd(L->be, y, x, R * L->plan.in_local);
}

static mp_status_t relu_bwd_input(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                  float *dx, int64_t R)
{
    return dx == NULL ? MP_OK : L->be->ops->relu_bwd(L->be, dx, x, dy, R * L->plan.in_local);
}

const mp_layer_ops_t mp_layer_gelu = {
    .name = "gelu",
    .kind = MP_LAYER_GELU,
    .check = act_check,
    .flops = act_flops,
    .plan = act_plan,
    .forward = gelu_forward,
    .backward_input = gelu_bwd_input,
};

const mp_layer_ops_t mp_layer_relu = {
    .name = "relu",
    .kind = MP_LAYER_RELU,
    .check = act_check,
    .flops = act_flops,
    .plan = act_plan,
    .forward = relu_forward,
    .backward_input = relu_bwd_input,
};
