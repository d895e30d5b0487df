/*
 * transformer.c - the `transformer_block` kind: GPT-2's pre-LN block, no
 * dropout (DESIGN.md "Transformers"):
 *   a = x + attn(ln1(x))·Wproj + bproj,  y = a + gelu(ln2(a)·W1 + b1)·W2 + b2,
 * attn causal multi-head self-attention over qkv = u·Wqkv + bqkv, Wqkv
 * [C, 3C] with columns [Q | K | V], head h at columns [hD, (h+1)D) of each.
 *
 * TP, Megatron's way: rank r holds heads [r·H/tp, (r+1)·H/tp) — their Q, K
 * and V columns of Wqkv and bqkv (a slice in three parts) — computes their
 * attention locally, and holds the matching rows of Wproj: one AllReduce
 * after the projection, bproj and the residual once after it.  The MLP is
 * fc1 column, fc2 row, one AllReduce, b2 and the residual once.  Backward:
 * the conjugates, an AllReduce of each half's LayerNorm-input gradient.
 * LayerNorms are replicated.  B computes the input gradient and keeps the
 * inner gradients the W half needs.  Compute on the model's thread.
 *
 * Legend: R = B*T rows, C = width, H = heads, D = C/H, Hl = H/tp heads
 * here, Cl = Hl*D, F = ffn, Fl = F/tp.
 */
#include <math.h>
#include <stddef.h>

#include "model/layer.h"

#define LN_EPS 1e-5f

enum {
    P_LN1_W, P_LN1_B, P_QKV_W, P_QKV_B, P_PROJ_W, P_PROJ_B,
    P_LN2_W, P_LN2_B, P_FC1_W, P_FC1_B, P_FC2_W, P_FC2_B, NPARAMS
};

static const mp_layer_key_t keys[] = {{"heads", offsetof(mp_layer_spec_t, heads), true},
                                      {"ffn", offsetof(mp_layer_spec_t, ffn), true}};
static const char *const names[NPARAMS] = {
    "ln1.weight",       "ln1.bias",       "attn.qkv.weight", "attn.qkv.bias",
    "attn.proj.weight", "attn.proj.bias", "ln2.weight",      "ln2.bias",
    "mlp.fc1.weight",   "mlp.fc1.bias",   "mlp.fc2.weight",  "mlp.fc2.bias"};

static mp_status_t tb_check(const mp_layer_spec_t *l, int index, int64_t in, const char *in_from,
                            int64_t *out_p, mp_errbuf_t *err)
{
    if (l->heads < 1 || in % l->heads != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].heads: %lld does not divide the width %lld from %s",
                             index, (long long)l->heads, (long long)in, in_from);
    }
    if (l->ffn < 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "model.layers[%d].ffn: %lld is not a positive width",
                             index, (long long)l->ffn);
    }
    *out_p = in;
    return MP_OK;
}

static void tb_shape(const mp_layer_spec_t *l, int p, int64_t *rows_p, int64_t *cols_p)
{
    int64_t C = l->in_dim, F = l->ffn;
    static const int is_vec[NPARAMS] = {1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1};
    int64_t rows = C, cols = C;
    if (p == P_QKV_W || p == P_QKV_B) {
        cols = 3 * C;
    } else if (p == P_FC1_W || p == P_FC1_B) {
        cols = F;
    } else if (p == P_FC2_W) {
        rows = F;
    }
    *rows_p = is_vec[p] ? 1 : rows;
    *cols_p = cols;
}

static mp_layer_init_t tb_init(const mp_layer_spec_t *l, int p)
{
    switch (p) {
    case P_LN1_W:
    case P_LN2_W:
        return (mp_layer_init_t){MP_INIT_CONST, 1.0f};
    case P_LN1_B:
    case P_LN2_B:
        return (mp_layer_init_t){MP_INIT_CONST, 0.0f};
    case P_FC2_W:
    case P_FC2_B:
        return (mp_layer_init_t){MP_INIT_UNIFORM, 1.0f / sqrtf((float)l->ffn)};
    default: /* nn.Linear of fan-in C: qkv, proj, fc1 */
        return (mp_layer_init_t){MP_INIT_UNIFORM, 1.0f / sqrtf((float)l->in_dim)};
    }
}

static double tb_flops(const mp_layer_spec_t *l, int64_t in, int64_t out, int64_t seq)
{
    double C = (double)in, F = (double)l->ffn, T = (double)seq;
    /* qkv, proj, fc1, fc2, and scores + weighted sum over ~T/2 positions. */
    return 2.0 * C * 3.0 * C + 2.0 * C * C + 4.0 * C * F + 2.0 * T * C;
}

static mp_status_t tb_plan(const mp_layer_plan_ctx_t *c, mp_tp_layer_t *pl, mp_errbuf_t *err)
{
    const mp_layer_spec_t *layer = &c->spec->model.layers[c->index];
    if (layer->heads % c->tp != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.tp: %d does not divide model.layers[%d].heads = %lld",
                             c->tp, c->index, (long long)layer->heads);
    }
    if (layer->ffn % c->tp != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.tp: %d does not divide model.layers[%d].ffn = %lld", c->tp,
                             c->index, (long long)layer->ffn);
    }
    pl->split = MP_TP_SPLIT_HEADS;
    pl->ffn = layer->ffn;
    pl->in_local = pl->in_dim;
    pl->out_local = pl->out_dim;
    pl->split_local = layer->ffn / c->tp;
    pl->nparams = NPARAMS;
    pl->bias_after_reduce = true;
    if (c->tp > 1) {
        pl->fwd_post = MP_TP_COMM_ALLREDUCE;
        pl->bwd_post = MP_TP_COMM_ALLREDUCE;
    }
    return MP_OK;
}

static void tb_slice(const mp_tp_layer_t *pl, const mp_layer_spec_t *l, int p, int tp, int rank,
                     mp_tp_slice_t *s)
{
    int64_t rows, cols, C = l->in_dim;
    tb_shape(l, p, &rows, &cols);
    *s = (mp_tp_slice_t){.full_rows = rows, .full_cols = cols, .rows = rows, .cols = cols};
    switch (p) {
    case P_QKV_W:
    case P_QKV_B: /* this rank's heads in each of Q, K, V */
        mp_tp_shard_range(C, tp, rank, &s->col0, &s->cols);
        s->cols *= 3;
        s->parts = 3;
        s->part_stride = C;
        break;
    case P_PROJ_W:
    case P_FC2_W:
        mp_tp_shard_range(rows, tp, rank, &s->row0, &s->rows);
        break;
    case P_FC1_W:
    case P_FC1_B:
        mp_tp_shard_range(cols, tp, rank, &s->col0, &s->cols);
        break;
    default:
        break;
    }
    s->replicated = s->rows == rows && s->cols == cols;
}

/* This rank's sizes. */
typedef struct {
    int64_t R, B, T, C, Hl, D, Cl, Fl;
} dims_t;

static dims_t dims_of(const mp_layer_t *L, int64_t R)
{
    dims_t d;
    d.R = R;
    d.T = L->seq;
    d.B = R / L->seq;
    d.C = L->plan.in_dim;
    d.Hl = L->spec->heads / L->tp;
    d.D = d.C / L->spec->heads;
    d.Cl = d.Hl * d.D;
    d.Fl = L->plan.split_local;
    return d;
}

/* The saved area of a slot, carved in this order. */
typedef struct {
    float *u1, *mean1, *rstd1, *qkv, *att, *ao, *a, *u2, *mean2, *rstd2, *hpre, *h;
    float *dpre, *du2, *da, *dqkv, *du1; /* kept by B for W */
} carve_t;

static int64_t carve(const dims_t *d, float *base, carve_t *c)
{
    int64_t R = d->R, off = 0;
    float *b = base;
#define TAKE(field, n)                         \
    do {                                       \
        c->field = b != NULL ? b + off : NULL; \
        off += (n);                            \
    } while (0)
    TAKE(u1, R * d->C);
    TAKE(mean1, R);
    TAKE(rstd1, R);
    TAKE(qkv, 3 * R * d->Cl);
    TAKE(att, d->B * d->Hl * d->T * d->T);
    TAKE(ao, R * d->Cl);
    TAKE(a, R * d->C);
    TAKE(u2, R * d->C);
    TAKE(mean2, R);
    TAKE(rstd2, R);
    TAKE(hpre, R * d->Fl);
    TAKE(h, R * d->Fl);
    TAKE(dpre, R * d->Fl);
    TAKE(du2, R * d->C);
    TAKE(da, R * d->C);
    TAKE(dqkv, 3 * R * d->Cl);
    TAKE(du1, R * d->C);
#undef TAKE
    return off;
}

static int64_t tb_saved(const mp_layer_t *L, int64_t R)
{
    dims_t d = dims_of(L, R);
    carve_t c;
    return carve(&d, NULL, &c);
}

/* dH [R, Fl] and dAO [R, Cl]. */
static int64_t tb_scratch(const mp_layer_t *L, int64_t R)
{
    dims_t d = dims_of(L, R);
    return R * (d.Fl > d.Cl ? d.Fl : d.Cl);
}

static mp_status_t tb_forward(mp_layer_t *L, float *saved, const float *x, float *y, int64_t R)
{
    mp_backend_t *be = L->be;
    const mp_backend_ops_t *o = be->ops;
    float *const *P = L->P;
    dims_t d = dims_of(L, R);
    carve_t s;
    carve(&d, saved, &s);
    int64_t C = d.C;
    /* Attention half. */
    MP_TRY(o->layernorm_fwd(be, s.u1, s.mean1, s.rstd1, x, P[P_LN1_W], P[P_LN1_B], R, C, LN_EPS));
    MP_TRY(o->linear_fwd(be, s.qkv, s.u1, P[P_QKV_W], P[P_QKV_B], R, C, 3 * d.Cl));
    MP_TRY(o->attn_fwd(be, s.ao, s.att, s.qkv, d.B, d.T, d.Hl, d.D));
    MP_TRY(o->linear_fwd(be, s.a, s.ao, P[P_PROJ_W], NULL, R, d.Cl, C));
    MP_TRY(mp_layer_allreduce(L, s.a, R * C));
    MP_TRY(o->bias_add(be, s.a, P[P_PROJ_B], R, C));
    MP_TRY(o->axpy(be, s.a, 1.0f, x, R * C));
    /* MLP half. */
    MP_TRY(o->layernorm_fwd(be, s.u2, s.mean2, s.rstd2, s.a, P[P_LN2_W], P[P_LN2_B], R, C, LN_EPS));
    MP_TRY(o->linear_fwd(be, s.hpre, s.u2, P[P_FC1_W], P[P_FC1_B], R, C, d.Fl));
    MP_TRY(o->gelu_fwd(be, s.h, s.hpre, R * d.Fl));
    MP_TRY(o->linear_fwd(be, y, s.h, P[P_FC2_W], NULL, R, d.Fl, C));
    MP_TRY(mp_layer_allreduce(L, y, R * C));
    MP_TRY(o->bias_add(be, y, P[P_FC2_B], R, C));
    return o->axpy(be, y, 1.0f, s.a, R * C);
}

static mp_status_t tb_bwd_input(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                float *dx, int64_t R)
{
    mp_backend_t *be = L->be;
    const mp_backend_ops_t *o = be->ops;
    float *const *P = L->P;
    dims_t d = dims_of(L, R);
    carve_t s;
    carve(&d, saved, &s);
    int64_t C = d.C;
    float *tmp = mp_layer_scratch(L);
    size_t rc = (size_t)(R * C) * sizeof(float);
    /* MLP half: dH = dY·W2^T; dHpre = dH * gelu'(Hpre); dU2 = sum_r dHpre·W1^T. */
    MP_TRY(o->gemm(be, MP_OP_N, MP_OP_T, R, d.Fl, C, 1.0f, dy, C, P[P_FC2_W], C, 0.0f, tmp, d.Fl));
    MP_TRY(o->zero(be, s.dpre, (size_t)(R * d.Fl) * sizeof(float)));
    MP_TRY(o->gelu_bwd(be, s.dpre, s.hpre, tmp, R * d.Fl));
    MP_TRY(o->zero(be, s.du2, rc));
    MP_TRY(o->linear_bwd(be, s.du2, NULL, NULL, s.dpre, s.u2, P[P_FC1_W], R, C, d.Fl));
    MP_TRY(mp_layer_allreduce(L, s.du2, R * C));
    /* dA = dY (the residual) + LN2's input gradient. */
    MP_TRY(o->copy(be, s.da, dy, rc));
    MP_TRY(o->layernorm_bwd(be, s.da, NULL, NULL, s.du2, s.a, s.mean2, s.rstd2, P[P_LN2_W], R, C));
    /* Attention half: dAO = dA·Wproj^T (this rank's heads), dQKV, dU1. */
    MP_TRY(o->gemm(be, MP_OP_N, MP_OP_T, R, d.Cl, C, 1.0f, s.da, C, P[P_PROJ_W], C, 0.0f, tmp,
                   d.Cl));
    MP_TRY(o->zero(be, s.dqkv, (size_t)(3 * R * d.Cl) * sizeof(float)));
    MP_TRY(o->attn_bwd(be, s.dqkv, tmp, s.qkv, s.att, d.B, d.T, d.Hl, d.D));
    MP_TRY(o->zero(be, s.du1, rc));
    MP_TRY(o->linear_bwd(be, s.du1, NULL, NULL, s.dqkv, s.u1, P[P_QKV_W], R, C, 3 * d.Cl));
    MP_TRY(mp_layer_allreduce(L, s.du1, R * C));
    if (dx == NULL) {
        return MP_OK;
    }
    MP_TRY(o->axpy(be, dx, 1.0f, s.da, R * C));
    return o->layernorm_bwd(be, dx, NULL, NULL, s.du1, x, s.mean1, s.rstd1, P[P_LN1_W], R, C);
}

static mp_status_t tb_bwd_weight(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                 int64_t R)
{
    mp_backend_t *be = L->be;
    const mp_backend_ops_t *o = be->ops;
    float *const *P = L->P, *const *G = L->G;
    dims_t d = dims_of(L, R);
    carve_t s;
    carve(&d, saved, &s);
    int64_t C = d.C;
    MP_TRY(o->linear_bwd(be, NULL, G[P_FC2_W], G[P_FC2_B], dy, s.h, P[P_FC2_W], R, d.Fl, C));
    MP_TRY(o->linear_bwd(be, NULL, G[P_FC1_W], G[P_FC1_B], s.dpre, s.u2, P[P_FC1_W], R, C, d.Fl));
    MP_TRY(o->layernorm_bwd(be, NULL, G[P_LN2_W], G[P_LN2_B], s.du2, s.a, s.mean2, s.rstd2,
                            P[P_LN2_W], R, C));
    MP_TRY(o->linear_bwd(be, NULL, G[P_PROJ_W], G[P_PROJ_B], s.da, s.ao, P[P_PROJ_W], R, d.Cl, C));
    MP_TRY(o->linear_bwd(be, NULL, G[P_QKV_W], G[P_QKV_B], s.dqkv, s.u1, P[P_QKV_W], R, C,
                         3 * d.Cl));
    return o->layernorm_bwd(be, NULL, G[P_LN1_W], G[P_LN1_B], s.du1, x, s.mean1, s.rstd1,
                            P[P_LN1_W], R, C);
}

/* W of n slots: each of the four weights' gradients from one GEMM over the
 * n slots' rows; the LayerNorms' (C floats each) slot by slot. */
static mp_status_t tb_bwd_weight_n(mp_layer_t *L, int n, float *const *saved,
                                   const float *const *x, const float *const *dy, int64_t R)
{
    mp_backend_t *be = L->be;
    float *const *P = L->P, *const *G = L->G;
    dims_t d = dims_of(L, R);
    carve_t s[MP_LAYER_FUSE_MAX];
    const float *h[MP_LAYER_FUSE_MAX], *dpre[MP_LAYER_FUSE_MAX], *u2[MP_LAYER_FUSE_MAX];
    const float *da[MP_LAYER_FUSE_MAX], *ao[MP_LAYER_FUSE_MAX];
    const float *dqkv[MP_LAYER_FUSE_MAX], *u1[MP_LAYER_FUSE_MAX];
    for (int j = 0; j < n; j++) {
        carve(&d, saved[j], &s[j]);
        h[j] = s[j].h;
        dpre[j] = s[j].dpre;
        u2[j] = s[j].u2;
        da[j] = s[j].da;
        ao[j] = s[j].ao;
        dqkv[j] = s[j].dqkv;
        u1[j] = s[j].u1;
    }
    int64_t C = d.C;
    MP_TRY(mp_layer_wgrad_n(L, n, h, dy, R, d.Fl, C, G[P_FC2_W], G[P_FC2_B]));
    MP_TRY(mp_layer_wgrad_n(L, n, u2, dpre, R, C, d.Fl, G[P_FC1_W], G[P_FC1_B]));
    MP_TRY(mp_layer_wgrad_n(L, n, ao, da, R, d.Cl, C, G[P_PROJ_W], G[P_PROJ_B]));
    MP_TRY(mp_layer_wgrad_n(L, n, u1, dqkv, R, C, 3 * d.Cl, G[P_QKV_W], G[P_QKV_B]));
    for (int j = 0; j < n; j++) {
        MP_TRY(be->ops->layernorm_bwd(be, NULL, G[P_LN2_W], G[P_LN2_B], s[j].du2, s[j].a,
                                      s[j].mean2, s[j].rstd2, P[P_LN2_W], R, C));
        MP_TRY(be->ops->layernorm_bwd(be, NULL, G[P_LN1_W], G[P_LN1_B], s[j].du1, x[j],
                                      s[j].mean1, s[j].rstd1, P[P_LN1_W], R, C));
    }
    return MP_OK;
}

/* The widest of the four GEMMs: qkv's C + 3 Cl or the MLP's C + Fl. */
static int64_t tb_fuse_row(const mp_layer_t *L)
{
    dims_t d = dims_of(L, L->seq);
    return d.C + (3 * d.Cl > d.Fl ? 3 * d.Cl : d.Fl);
}

const mp_layer_ops_t mp_layer_transformer_block = {
    .name = "transformer_block",
    .kind = MP_LAYER_TRANSFORMER_BLOCK,
    .keys = keys,
    .nkeys = 2,
    .check = tb_check,
    .nparams = NPARAMS,
    .param_names = names,
    .param_shape = tb_shape,
    .param_init = tb_init,
    .flops = tb_flops,
    .plan = tb_plan,
    .param_slice = tb_slice,
    .saved_elems = tb_saved,
    .scratch_elems = tb_scratch,
    .forward = tb_forward,
    .backward_input = tb_bwd_input,
    .backward_weight = tb_bwd_weight,
    .backward_weight_n = tb_bwd_weight_n,
    .fuse_row_elems = tb_fuse_row,
};
