/*
 * test_tpmath.c - proves the tensor-parallel plan's math before any engine
 * uses it: small random MLPs run serially and, in this one process, as tp
 * = 1, 2 and 3 ranks that each hold only the parameter blocks the plan
 * gives them and exchange data only through the plan's collectives
 * (simulated by concatenating and summing arrays).  Forward output and
 * every parameter gradient (gathered from the ranks' blocks) must equal the
 * serial computation within 1e-5 relative.  Plain double loops, no backend.
 *
 * Legend: B = batch rows, I = in, O = out, F = ffn width, R = TP ranks.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/tpplan.h"

#define B 3
#define MAXR 3
#define TOL 1e-5

/* ---- tiny dense helpers; every matrix row-major ---- */

static double *zeros(int64_t n)
{
    double *p = calloc((size_t)n, sizeof(double));
    cr_assert_not_null(p);
    return p;
}

static uint64_t rng_state = 0x12345678u;
static double rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* C[m x n] = A[m x k] B[k x n] */
static double *mm(const double *a, const double *b, int64_t m, int64_t k, int64_t n)
{
    double *c = zeros(m * n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t p = 0; p < k; p++)
            for (int64_t j = 0; j < n; j++)
                c[i * n + j] += a[i * k + p] * b[p * n + j];
    return c;
}

/* C[k x n] = A[m x k]^T B[m x n] */
static double *mm_tn(const double *a, const double *b, int64_t m, int64_t k, int64_t n)
{
    double *c = zeros(k * n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t p = 0; p < k; p++)
            for (int64_t j = 0; j < n; j++)
                c[p * n + j] += a[i * k + p] * b[i * n + j];
    return c;
}

/* C[m x k] = A[m x n] B[k x n]^T */
static double *mm_nt(const double *a, const double *b, int64_t m, int64_t n, int64_t k)
{
    double *c = zeros(m * k);
    for (int64_t i = 0; i < m; i++)
        for (int64_t p = 0; p < k; p++)
            for (int64_t j = 0; j < n; j++)
                c[i * k + p] += a[i * n + j] * b[p * n + j];
    return c;
}

/* Block [r0, r0+rows) x [c0, c0+cols) of a matrix with `ld` columns. */
static double *block(const double *src, int64_t ld, int64_t r0, int64_t rows, int64_t c0,
                     int64_t cols)
{
    double *d = zeros(rows * cols);
    for (int64_t i = 0; i < rows; i++)
        memcpy(&d[i * cols], &src[(r0 + i) * ld + c0], sizeof(double) * (size_t)cols);
    return d;
}

static double *copy(const double *src, int64_t n)
{
    double *d = zeros(n);
    memcpy(d, src, sizeof(double) * (size_t)n);
    return d;
}

static double *colsum(const double *a, int64_t m, int64_t n)
{
    double *s = zeros(n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            s[j] += a[i * n + j];
    return s;
}

static void add_row(double *a, const double *row, int64_t m, int64_t n)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            a[i * n + j] += row[j];
}

static void add_to(double *a, const double *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        a[i] += b[i];
}

static double gelu(double x)
{
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static double gelu_grad(double x)
{
    return 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
}

static double act_f(mp_layer_kind_t k, double x)
{
    return k == MP_LAYER_GELU ? gelu(x) : (x > 0.0 ? x : 0.0);
}

static double act_g(mp_layer_kind_t k, double x)
{
    return k == MP_LAYER_GELU ? gelu_grad(x) : (x > 0.0 ? 1.0 : 0.0);
}

/* max |a - b| / max |ref| */
static double rel_err(const double *a, const double *ref, int64_t n)
{
    double d = 0.0, m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs(a[i] - ref[i]));
        m = fmax(m, fabs(ref[i]));
    }
    return m > 0.0 ? d / m : d;
}

/* ---- the model ---- */

typedef struct {
    mp_spec_t spec;
    int64_t in[MP_SPEC_MAX_LAYERS], out[MP_SPEC_MAX_LAYERS];
    double *param[MP_SPEC_MAX_LAYERS][4]; /* full serial tensors */
    int64_t prows[MP_SPEC_MAX_LAYERS][4], pcols[MP_SPEC_MAX_LAYERS][4];
    int nparams[MP_SPEC_MAX_LAYERS];
} model_t;

static void add_layer(model_t *md, mp_layer_kind_t kind, int64_t a, int64_t b, mp_tp_mode_t tp)
{
    mp_layer_spec_t *l = &md->spec.model.layers[md->spec.model.nlayers++];
    l->kind = kind;
    l->tp = tp;
    if (kind == MP_LAYER_LINEAR)
        l->out = a;
    if (kind == MP_LAYER_MLP_BLOCK) {
        l->hidden = a;
        l->ffn = b;
    }
}

static void model_init(model_t *md)
{
    int64_t w = md->spec.model.input;
    for (int l = 0; l < md->spec.model.nlayers; l++) {
        const mp_layer_spec_t *ls = &md->spec.model.layers[l];
        for (int p = 0; p < md->nparams[l]; p++)
            free(md->param[l][p]);
        md->in[l] = w;
        md->out[l] = ls->kind == MP_LAYER_LINEAR ? ls->out : w;
        int64_t r[4] = {0}, c[4] = {0};
        if (ls->kind == MP_LAYER_LINEAR) {
            md->nparams[l] = 2;
            r[0] = w, c[0] = ls->out, r[1] = 1, c[1] = ls->out;
        } else if (ls->kind == MP_LAYER_MLP_BLOCK) {
            md->nparams[l] = 4;
            r[0] = w, c[0] = ls->ffn, r[1] = 1, c[1] = ls->ffn;
            r[2] = ls->ffn, c[2] = w, r[3] = 1, c[3] = w;
        }
        for (int p = 0; p < md->nparams[l]; p++) {
            md->prows[l][p] = r[p];
            md->pcols[l][p] = c[p];
            md->param[l][p] = zeros(r[p] * c[p]);
            for (int64_t i = 0; i < r[p] * c[p]; i++)
                md->param[l][p][i] = 0.5 * rnd();
        }
        w = md->out[l];
    }
}

/* ---- serial reference ---- */

typedef struct {
    double *y;                           /* [B x out] */
    double *grad[MP_SPEC_MAX_LAYERS][4]; /* full gradients */
} result_t;

static void serial_run(const model_t *md, const double *x0, const double *g, result_t *res)
{
    int L = md->spec.model.nlayers;
    double *xs[MP_SPEC_MAX_LAYERS + 1], *pre[MP_SPEC_MAX_LAYERS] = {0},
                                        *hid[MP_SPEC_MAX_LAYERS] = {0};
    xs[0] = copy(x0, B * md->in[0]);
    for (int l = 0; l < L; l++) {
        const mp_layer_spec_t *ls = &md->spec.model.layers[l];
        int64_t I = md->in[l], O = md->out[l];
        double *const *P = md->param[l];
        double *y;
        if (ls->kind == MP_LAYER_LINEAR) {
            y = mm(xs[l], P[0], B, I, O);
            add_row(y, P[1], B, O);
        } else if (ls->kind == MP_LAYER_MLP_BLOCK) {
            int64_t F = ls->ffn;
            pre[l] = mm(xs[l], P[0], B, I, F);
            add_row(pre[l], P[1], B, F);
            hid[l] = zeros(B * F);
            for (int64_t i = 0; i < B * F; i++)
                hid[l][i] = gelu(pre[l][i]);
            y = mm(hid[l], P[2], B, F, O);
            add_row(y, P[3], B, O);
            add_to(y, xs[l], B * O);
        } else {
            y = zeros(B * O);
            for (int64_t i = 0; i < B * O; i++)
                y[i] = act_f(ls->kind, xs[l][i]);
        }
        xs[l + 1] = y;
    }
    res->y = copy(xs[L], B * md->out[L - 1]);
    double *dy = copy(g, B * md->out[L - 1]);
    for (int l = L - 1; l >= 0; l--) {
        const mp_layer_spec_t *ls = &md->spec.model.layers[l];
        int64_t I = md->in[l], O = md->out[l];
        double *const *P = md->param[l];
        double *dx;
        if (ls->kind == MP_LAYER_LINEAR) {
            res->grad[l][0] = mm_tn(xs[l], dy, B, I, O);
            res->grad[l][1] = colsum(dy, B, O);
            dx = mm_nt(dy, P[0], B, O, I);
        } else if (ls->kind == MP_LAYER_MLP_BLOCK) {
            int64_t F = ls->ffn;
            res->grad[l][3] = colsum(dy, B, O);
            res->grad[l][2] = mm_tn(hid[l], dy, B, F, O);
            double *dpre = mm_nt(dy, P[2], B, O, F);
            for (int64_t i = 0; i < B * F; i++)
                dpre[i] *= gelu_grad(pre[l][i]);
            res->grad[l][1] = colsum(dpre, B, F);
            res->grad[l][0] = mm_tn(xs[l], dpre, B, I, F);
            dx = mm_nt(dpre, P[0], B, F, I);
            add_to(dx, dy, B * I);
            free(dpre);
        } else {
            dx = zeros(B * I);
            for (int64_t i = 0; i < B * I; i++)
                dx[i] = dy[i] * act_g(ls->kind, xs[l][i]);
        }
        free(dy);
        dy = dx;
    }
    free(dy);
    for (int l = 0; l <= L; l++)
        free(xs[l]);
    for (int l = 0; l < L; l++) {
        free(pre[l]);
        free(hid[l]);
    }
}

/* ---- the TP run, driven only by the plan ---- */

/* rank r's shard of a replicated [B x n] activation */
static double *shard(const double *full, int64_t n, int R, int r)
{
    int64_t c0, cols;
    mp_tp_shard_range(n, R, r, &c0, &cols);
    return block(full, n, 0, B, c0, cols);
}

/* The ranks' [B x n/R] shards concatenated along the feature axis. */
static double *gather(double *const *parts, int64_t n, int R)
{
    double *full = zeros(B * n);
    for (int r = 0; r < R; r++) {
        int64_t c0, cols;
        mp_tp_shard_range(n, R, r, &c0, &cols);
        for (int64_t i = 0; i < B; i++)
            memcpy(&full[i * n + c0], &parts[r][i * cols], sizeof(double) * (size_t)cols);
    }
    return full;
}

static double *reduce(double *const *parts, int64_t n, int R)
{
    double *sum = zeros(n);
    for (int r = 0; r < R; r++)
        add_to(sum, parts[r], n);
    return sum;
}

/* Runs the collective `comm` on the ranks' tensors (each [B x w]) in place;
 * n is the full width. */
static void collective(mp_tp_comm_t comm, double **t, int64_t w, int64_t n, int R)
{
    double *res;
    if (comm == MP_TP_COMM_NONE)
        return;
    cr_assert(comm == MP_TP_COMM_ALLGATHER || comm == MP_TP_COMM_ALLREDUCE);
    if (comm == MP_TP_COMM_ALLGATHER) {
        cr_assert_eq(w * R, n);
        res = gather(t, n, R);
    } else {
        cr_assert_eq(w, n);
        res = reduce(t, B * n, R);
    }
    for (int r = 0; r < R; r++) {
        free(t[r]);
        t[r] = copy(res, B * n);
    }
    free(res);
}

static void tp_run(const model_t *md, const mp_part_t *part, int R, const double *x0,
                   const double *g, result_t *res, mp_tp_plan_t *plan)
{
    mp_spec_t spec = md->spec;
    spec.parallel.tp = R;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_tp_plan_build(&spec, part, plan, &err), MP_OK, "%s", err.msg);
    int L = md->spec.model.nlayers;
    cr_assert_eq(plan->nlayers, L);
    cr_assert_eq(plan->tp, R);
    /* Each rank's parameter blocks, "initialized by slice". */
    double *W[MP_SPEC_MAX_LAYERS][4][MAXR];
    mp_tp_slice_t S[MP_SPEC_MAX_LAYERS][4][MAXR];
    for (int l = 0; l < L; l++) {
        cr_assert_eq(plan->layer[l].nparams, md->nparams[l]);
        for (int p = 0; p < md->nparams[l]; p++)
            for (int r = 0; r < R; r++) {
                mp_tp_slice_t *s = &S[l][p][r];
                cr_assert_eq(mp_tp_param_slice(plan, l, p, r, s), MP_OK);
                cr_assert_eq(s->full_rows, md->prows[l][p]);
                cr_assert_eq(s->full_cols, md->pcols[l][p]);
                W[l][p][r] =
                    block(md->param[l][p], s->full_cols, s->row0, s->rows, s->col0, s->cols);
            }
    }
    /* Saved per layer and rank for the backward. */
    double *xin[MP_SPEC_MAX_LAYERS][MAXR], *pre[MP_SPEC_MAX_LAYERS][MAXR] = {{0}},
                                           *hid[MP_SPEC_MAX_LAYERS][MAXR] = {{0}};
    double *a[MAXR];
    for (int r = 0; r < R; r++)
        a[r] = copy(x0, B * md->in[0]);
    for (int l = 0; l < L; l++) {
        const mp_tp_layer_t *pl = &plan->layer[l];
        cr_assert_eq(pl->in_dim, md->in[l]);
        cr_assert_eq(pl->out_dim, md->out[l]);
        double *y[MAXR];
        int64_t yw = 0;
        for (int r = 0; r < R; r++) {
            double *x = a[r];
            int64_t xw = pl->in_local;
            if (pl->fwd_pre == MP_TP_COMM_SLICE) {
                cr_assert_eq(pl->in_layout, MP_TP_LAYOUT_REPLICATED);
                x = shard(a[r], pl->in_dim, R, r);
                xw = pl->in_dim / R;
                free(a[r]);
            }
            xin[l][r] = x;
            switch (pl->split) {
            case MP_TP_SPLIT_ELEMENTWISE:
                yw = xw;
                y[r] = zeros(B * xw);
                for (int64_t i = 0; i < B * xw; i++)
                    y[r][i] = act_f(pl->kind, x[i]);
                break;
            case MP_TP_SPLIT_REPLICATE:
            case MP_TP_SPLIT_COLUMN:
            case MP_TP_SPLIT_ROW:
                cr_assert_eq(S[l][0][r].rows, xw, "layer %d: X width %lld vs W rows %lld", l,
                             (long long)xw, (long long)S[l][0][r].rows);
                yw = S[l][0][r].cols;
                y[r] = mm(x, W[l][0][r], B, xw, yw);
                if (!pl->bias_after_reduce)
                    add_row(y[r], W[l][1][r], B, yw);
                break;
            case MP_TP_SPLIT_MLP: {
                int64_t f = S[l][0][r].cols;
                cr_assert_eq(f, pl->split_local);
                pre[l][r] = mm(x, W[l][0][r], B, xw, f);
                add_row(pre[l][r], W[l][1][r], B, f);
                hid[l][r] = zeros(B * f);
                for (int64_t i = 0; i < B * f; i++)
                    hid[l][r][i] = gelu(pre[l][r][i]);
                yw = S[l][2][r].cols;
                y[r] = mm(hid[l][r], W[l][2][r], B, f, yw);
                break;
            }
            default:
                cr_assert_fail("the MLP math model has no %s layer", mp_tp_split_name(pl->split));
            }
        }
        collective(pl->fwd_post, y, yw, pl->out_dim, R);
        if (pl->fwd_post != MP_TP_COMM_NONE)
            yw = pl->out_dim;
        for (int r = 0; r < R; r++) {
            if (pl->bias_after_reduce) {
                int bp = pl->split == MP_TP_SPLIT_MLP ? 3 : 1;
                cr_assert(S[l][bp][r].replicated, "layer %d: bias added after the sum is whole", l);
                add_row(y[r], W[l][bp][r], B, yw);
            }
            if (pl->split == MP_TP_SPLIT_MLP)
                add_to(y[r], xin[l][r], B * yw);
            a[r] = y[r];
        }
        cr_assert_eq(yw, pl->out_local, "layer %d: output width %lld, plan says %lld", l,
                     (long long)yw, (long long)pl->out_local);
        cr_assert_eq(yw, pl->out_layout == MP_TP_LAYOUT_SHARDED ? pl->out_dim / R : pl->out_dim);
        if (l + 1 < L) {
            cr_assert_eq(plan->layer[l + 1].in_layout, pl->out_layout);
            cr_assert_eq(plan->layer[l + 1].in_local, pl->out_local);
        }
    }
    int64_t O = md->out[L - 1];
    cr_assert_eq(plan->layer[L - 1].out_layout, MP_TP_LAYOUT_REPLICATED);
    for (int r = 1; r < R; r++)
        cr_assert(rel_err(a[r], a[0], B * O) == 0.0, "ranks disagree on the output");
    res->y = a[0];
    for (int r = 1; r < R; r++)
        free(a[r]);

    /* Backward: every rank starts from the whole, identical dY. */
    double *d[MAXR];
    for (int r = 0; r < R; r++)
        d[r] = copy(g, B * O);
    for (int l = L - 1; l >= 0; l--) {
        const mp_tp_layer_t *pl = &plan->layer[l];
        double *dx[MAXR];
        double *gr[4][MAXR] = {{0}};
        int64_t xw = 0;
        for (int r = 0; r < R; r++) {
            double *dy = d[r];
            int64_t dw = pl->out_local;
            if (pl->bwd_pre == MP_TP_COMM_SLICE) {
                dy = shard(d[r], pl->out_dim, R, r);
                dw = pl->out_dim / R;
                free(d[r]);
            }
            const double *x = xin[l][r];
            switch (pl->split) {
            case MP_TP_SPLIT_ELEMENTWISE:
                xw = dw;
                dx[r] = zeros(B * xw);
                for (int64_t i = 0; i < B * xw; i++)
                    dx[r][i] = dy[i] * act_g(pl->kind, x[i]);
                break;
            case MP_TP_SPLIT_REPLICATE:
            case MP_TP_SPLIT_COLUMN:
            case MP_TP_SPLIT_ROW:
                xw = S[l][0][r].rows;
                cr_assert_eq(dw, S[l][0][r].cols);
                gr[0][r] = mm_tn(x, dy, B, xw, dw);
                gr[1][r] = colsum(dy, B, dw);
                cr_assert_eq(S[l][1][r].cols, dw);
                dx[r] = pl->needs_dx ? mm_nt(dy, W[l][0][r], B, dw, xw) : NULL;
                break;
            case MP_TP_SPLIT_MLP: {
                int64_t f = pl->split_local;
                xw = pl->in_dim;
                gr[3][r] = colsum(dy, B, dw);
                gr[2][r] = mm_tn(hid[l][r], dy, B, f, dw);
                double *dpre = mm_nt(dy, W[l][2][r], B, dw, f);
                for (int64_t i = 0; i < B * f; i++)
                    dpre[i] *= gelu_grad(pre[l][r][i]);
                gr[1][r] = colsum(dpre, B, f);
                gr[0][r] = mm_tn(x, dpre, B, xw, f);
                dx[r] = pl->needs_dx ? mm_nt(dpre, W[l][0][r], B, f, xw) : NULL;
                free(dpre);
                break;
            }
            default:
                cr_assert_fail("the MLP math model has no %s layer", mp_tp_split_name(pl->split));
            }
            if (pl->split == MP_TP_SPLIT_MLP && pl->needs_dx && pl->bwd_post == MP_TP_COMM_NONE)
                add_to(dx[r], dy, B * xw); /* residual, tp = 1 */
            d[r] = dy;
        }
        if (pl->needs_dx) {
            collective(pl->bwd_post, dx, xw, pl->in_dim, R);
            int64_t w = pl->bwd_post != MP_TP_COMM_NONE ? pl->in_dim : xw;
            for (int r = 0; r < R; r++) {
                if (pl->split == MP_TP_SPLIT_MLP && pl->bwd_post != MP_TP_COMM_NONE)
                    add_to(dx[r], d[r], B * w); /* residual after the sum */
                cr_assert_eq(w, pl->in_local, "layer %d: dX width %lld, X arrived %lld", l,
                             (long long)w, (long long)pl->in_local);
            }
        } else {
            cr_assert_eq(l, 0);
            cr_assert_eq(pl->bwd_post, MP_TP_COMM_NONE);
        }
        for (int r = 0; r < R; r++) {
            free(d[r]);
            d[r] = pl->needs_dx ? dx[r] : NULL;
        }
        /* Gather the parameter gradients from the ranks' blocks. */
        for (int p = 0; p < pl->nparams; p++) {
            int64_t rows = md->prows[l][p], cols = md->pcols[l][p];
            double *full = zeros(rows * cols);
            int *seen = calloc((size_t)(rows * cols), sizeof(int));
            for (int r = 0; r < R; r++) {
                const mp_tp_slice_t *s = &S[l][p][r];
                cr_assert_not_null(gr[p][r]);
                if (s->replicated && r > 0) {
                    cr_assert(rel_err(gr[p][r], gr[p][0], rows * cols) < 1e-12,
                              "layer %d param %d: replicated gradients differ across ranks", l, p);
                    continue;
                }
                for (int64_t i = 0; i < s->rows; i++)
                    for (int64_t j = 0; j < s->cols; j++) {
                        int64_t k = (s->row0 + i) * cols + s->col0 + j;
                        full[k] = gr[p][r][i * s->cols + j];
                        seen[k]++;
                    }
            }
            for (int64_t k = 0; k < rows * cols; k++)
                cr_assert_eq(seen[k], 1, "layer %d param %d: element %lld held %d times", l, p,
                             (long long)k, seen[k]);
            free(seen);
            res->grad[l][p] = full;
            for (int r = 0; r < R; r++)
                free(gr[p][r]);
        }
    }
    for (int l = 0; l < L; l++)
        for (int r = 0; r < R; r++) {
            free(xin[l][r]);
            free(pre[l][r]);
            free(hid[l][r]);
            for (int p = 0; p < md->nparams[l]; p++)
                free(W[l][p][r]);
        }
}

static void result_free(const model_t *md, result_t *res)
{
    free(res->y);
    for (int l = 0; l < md->spec.model.nlayers; l++)
        for (int p = 0; p < md->nparams[l]; p++)
            free(res->grad[l][p]);
}

/* Serial vs. tp = 1, 2, 3; returns nothing, asserts everything. */
static void check_equivalence(model_t *md, const mp_part_t *part, mp_tp_plan_t *plans)
{
    model_init(md);
    int64_t I = md->spec.model.input, O = md->out[md->spec.model.nlayers - 1];
    double *x0 = zeros(B * I), *g = zeros(B * O);
    for (int64_t i = 0; i < B * I; i++)
        x0[i] = rnd();
    for (int64_t i = 0; i < B * O; i++)
        g[i] = rnd();
    result_t ref = {0};
    serial_run(md, x0, g, &ref);
    for (int R = 1; R <= MAXR; R++) {
        result_t tp = {0};
        tp_run(md, part, R, x0, g, &tp, &plans[R - 1]);
        double e = rel_err(tp.y, ref.y, B * O);
        cr_assert(e <= TOL, "tp=%d: forward output off by %g", R, e);
        for (int l = 0; l < md->spec.model.nlayers; l++)
            for (int p = 0; p < md->nparams[l]; p++) {
                e = rel_err(tp.grad[l][p], ref.grad[l][p], md->prows[l][p] * md->pcols[l][p]);
                cr_assert(e <= TOL, "tp=%d: layer %d param %d gradient off by %g", R, l, p, e);
            }
        result_free(md, &tp);
    }
    result_free(md, &ref);
    free(x0);
    free(g);
}

static model_t md;
static mp_tp_plan_t plans[MAXR];

static void model_reset(int64_t input)
{
    for (int l = 0; l < md.spec.model.nlayers; l++)
        for (int p = 0; p < md.nparams[l]; p++)
            free(md.param[l][p]);
    memset(&md, 0, sizeof(md));
    md.spec.model.input = input;
    md.spec.parallel.pp = md.spec.parallel.tp = md.spec.parallel.dp = 1;
}

Test(tpmath, simple_mlp_equals_serial)
{
    /* The brief's model: linear, gelu, mlp_block, relu, linear. */
    model_reset(8);
    add_layer(&md, MP_LAYER_LINEAR, 12, 0, MP_TP_AUTO);
    add_layer(&md, MP_LAYER_GELU, 0, 0, MP_TP_AUTO);
    add_layer(&md, MP_LAYER_MLP_BLOCK, 12, 18, MP_TP_AUTO);
    add_layer(&md, MP_LAYER_RELU, 0, 0, MP_TP_AUTO);
    add_layer(&md, MP_LAYER_LINEAR, 6, 0, MP_TP_AUTO);
    check_equivalence(&md, NULL, plans);
    const mp_tp_plan_t *p2 = &plans[1];
    cr_assert_eq(p2->layer[0].split, MP_TP_SPLIT_COLUMN);
    cr_assert_eq(p2->layer[0].fwd_post, MP_TP_COMM_ALLGATHER);
    cr_assert_eq(p2->layer[0].bwd_pre, MP_TP_COMM_SLICE);
    cr_assert_eq(p2->layer[0].bwd_post, MP_TP_COMM_NONE, "layer 0 needs no dX");
    cr_assert_not(p2->layer[0].needs_dx);
    cr_assert_eq(p2->layer[2].split, MP_TP_SPLIT_MLP);
    cr_assert_eq(p2->layer[2].fwd_post, MP_TP_COMM_ALLREDUCE);
    cr_assert_eq(p2->layer[2].bwd_post, MP_TP_COMM_ALLREDUCE);
    cr_assert_eq(p2->layer[2].split_local, 9);
    cr_assert_eq(p2->layer[4].split, MP_TP_SPLIT_COLUMN);
    cr_assert_eq(p2->layer[4].bwd_post, MP_TP_COMM_ALLREDUCE);
    char text[1024];
    size_t n = mp_tp_plan_format(p2, text, sizeof(text));
    cr_assert_eq(n, strlen(text));
    cr_assert(strstr(text, "layer 0 linear 8->12: column, in replicated, out replicated, fwd "
                           "none/allgather, bwd slice/none\n") != NULL,
              "%s", text);
    cr_assert(strstr(text, "layer 2 mlp_block 12->12: column-row, in replicated, out replicated, "
                           "fwd none/allreduce, bwd none/allreduce\n") != NULL,
              "%s", text);
    char small[8];
    cr_assert_eq(mp_tp_plan_format(p2, small, sizeof(small)), n);
    cr_assert_str_eq(small, "layer 0");
    for (int l = 0; l < 5; l++)
        cr_assert_eq(plans[0].layer[l].fwd_post, MP_TP_COMM_NONE, "tp=1 plans no collective");
}

Test(tpmath, column_row_pairs_forced_modes_and_replicas_equal_serial)
{
    model_reset(7);
    add_layer(&md, MP_LAYER_LINEAR, 12, 0, MP_TP_AUTO);     /* 0 column, gathered */
    add_layer(&md, MP_LAYER_GELU, 0, 0, MP_TP_AUTO);        /* 1 */
    add_layer(&md, MP_LAYER_MLP_BLOCK, 12, 18, MP_TP_AUTO); /* 2 */
    add_layer(&md, MP_LAYER_RELU, 0, 0, MP_TP_AUTO);        /* 3 */
    add_layer(&md, MP_LAYER_LINEAR, 6, 0, MP_TP_AUTO);      /* 4 column, kept sharded */
    add_layer(&md, MP_LAYER_GELU, 0, 0, MP_TP_AUTO);        /* 5 on shards */
    add_layer(&md, MP_LAYER_LINEAR, 6, 0, MP_TP_AUTO);      /* 6 row on shards */
    add_layer(&md, MP_LAYER_RELU, 0, 0, MP_TP_AUTO);        /* 7 */
    add_layer(&md, MP_LAYER_LINEAR, 4, 0, MP_TP_ROW);       /* 8 row on a replicated X */
    add_layer(&md, MP_LAYER_LINEAR, 5, 0, MP_TP_AUTO);      /* 9 column (tp=2), replicate (3) */
    add_layer(&md, MP_LAYER_LINEAR, 6, 0, MP_TP_REPLICATE); /* 10 */
    add_layer(&md, MP_LAYER_LINEAR, 6, 0, MP_TP_COLUMN);    /* 11 column, gathered */
    md.spec.model.layers[9].out = 4;                        /* 4 divides by 2, not 3 */
    check_equivalence(&md, NULL, plans);
    for (int R = 2; R <= 3; R++) {
        const mp_tp_layer_t *pl = plans[R - 1].layer;
        cr_assert_eq(pl[4].split, MP_TP_SPLIT_COLUMN);
        cr_assert_eq(pl[4].out_layout, MP_TP_LAYOUT_SHARDED);
        cr_assert_eq(pl[4].fwd_post, MP_TP_COMM_NONE);
        cr_assert_eq(pl[5].split, MP_TP_SPLIT_ELEMENTWISE);
        cr_assert_eq(pl[5].in_local, 6 / R);
        cr_assert_eq(pl[6].split, MP_TP_SPLIT_ROW);
        cr_assert_eq(pl[6].fwd_pre, MP_TP_COMM_NONE);
        cr_assert_eq(pl[6].fwd_post, MP_TP_COMM_ALLREDUCE);
        cr_assert_eq(pl[6].bwd_post, MP_TP_COMM_NONE);
        cr_assert(pl[6].bias_after_reduce);
        cr_assert_eq(pl[8].split, MP_TP_SPLIT_ROW);
        cr_assert_eq(pl[8].fwd_pre, MP_TP_COMM_SLICE);
        cr_assert_eq(pl[8].bwd_post, MP_TP_COMM_ALLGATHER);
        cr_assert_eq(pl[10].split, MP_TP_SPLIT_REPLICATE);
        cr_assert_eq(pl[11].split, MP_TP_SPLIT_COLUMN);
        cr_assert_eq(pl[11].fwd_post, MP_TP_COMM_ALLGATHER);
    }
    cr_assert_eq(plans[1].layer[9].split, MP_TP_SPLIT_COLUMN);
    cr_assert_eq(plans[2].layer[9].split, MP_TP_SPLIT_REPLICATE);
}

Test(tpmath, stage_boundary_keeps_activations_whole)
{
    model_reset(7);
    add_layer(&md, MP_LAYER_LINEAR, 6, 0, MP_TP_AUTO); /* 0: stage 0 */
    add_layer(&md, MP_LAYER_RELU, 0, 0, MP_TP_AUTO);   /* 1: stage 0 */
    add_layer(&md, MP_LAYER_LINEAR, 6, 0, MP_TP_AUTO); /* 2: stage 1 */
    add_layer(&md, MP_LAYER_GELU, 0, 0, MP_TP_AUTO);   /* 3: stage 1 */
    add_layer(&md, MP_LAYER_LINEAR, 3, 0, MP_TP_AUTO); /* 4: stage 1 */
    mp_part_t part = {.nstages = 2, .first = {0, 2}, .count = {2, 3}};
    check_equivalence(&md, &part, plans);
    for (int R = 2; R <= 3; R++) {
        const mp_tp_layer_t *pl = plans[R - 1].layer;
        cr_assert_eq(pl[0].fwd_post, MP_TP_COMM_ALLGATHER, "no shards across the boundary");
        cr_assert_eq(pl[1].out_layout, MP_TP_LAYOUT_REPLICATED);
        cr_assert_eq(pl[2].out_layout, MP_TP_LAYOUT_SHARDED, "pairs inside stage 1");
        cr_assert_eq(pl[4].split, MP_TP_SPLIT_ROW);
    }
    /* Without the boundary, layers 0 and 2 pair. */
    check_equivalence(&md, NULL, plans);
    cr_assert_eq(plans[1].layer[0].out_layout, MP_TP_LAYOUT_SHARDED);
    cr_assert_eq(plans[1].layer[2].split, MP_TP_SPLIT_ROW);
}

Test(tpmath, refuses_splits_that_cannot_hold)
{
    mp_tp_plan_t *plan = &plans[0];
    mp_errbuf_t err = {{0}};
    model_reset(2048);
    add_layer(&md, MP_LAYER_LINEAR, 2048, 0, MP_TP_AUTO);
    add_layer(&md, MP_LAYER_GELU, 0, 0, MP_TP_AUTO);
    add_layer(&md, MP_LAYER_MLP_BLOCK, 2048, 2048, MP_TP_AUTO);
    md.spec.parallel.tp = 3;
    cr_assert_eq(mp_tp_plan_build(&md.spec, NULL, plan, &err), MP_ERR_SPEC);
    cr_assert_str_eq(err.msg, "parallel.tp: 3 does not divide model.layers[2].ffn = 2048");

    model_reset(8);
    add_layer(&md, MP_LAYER_LINEAR, 10, 0, MP_TP_COLUMN);
    md.spec.parallel.tp = 3;
    cr_assert_eq(mp_tp_plan_build(&md.spec, NULL, plan, &err), MP_ERR_SPEC);
    cr_assert_str_eq(err.msg, "model.layers[0].tp: \"column\" needs parallel.tp = 3 to divide "
                              "model.layers[0].out = 10");
    md.spec.model.layers[0].tp = MP_TP_ROW;
    cr_assert_eq(mp_tp_plan_build(&md.spec, NULL, plan, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "model.layers[0].tp: \"row\"") != NULL, "%s", err.msg);
    md.spec.model.layers[0].tp = MP_TP_AUTO;
    cr_assert_eq(mp_tp_plan_build(&md.spec, NULL, plan, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(plan->layer[0].split, MP_TP_SPLIT_REPLICATE, "3 does not divide 10: replicated");

    add_layer(&md, MP_LAYER_RELU, 0, 0, MP_TP_COLUMN);
    cr_assert_eq(mp_tp_plan_build(&md.spec, NULL, plan, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "model.layers[1].tp") != NULL, "%s", err.msg);
    md.spec.parallel.tp = 0;
    cr_assert_eq(mp_tp_plan_build(&md.spec, NULL, plan, &err), MP_ERR_SPEC);

    mp_tp_slice_t s;
    md.spec.model.layers[1].tp = MP_TP_AUTO;
    md.spec.parallel.tp = 2;
    cr_assert_eq(mp_tp_plan_build(&md.spec, NULL, plan, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(mp_tp_param_slice(plan, 0, 2, 0, &s), MP_ERR_INVAL);
    cr_assert_eq(mp_tp_param_slice(plan, 1, 0, 0, &s), MP_ERR_INVAL);
    cr_assert_eq(mp_tp_param_slice(plan, 0, 0, 2, &s), MP_ERR_INVAL);
    cr_assert_eq(mp_tp_param_slice(plan, 0, 0, 1, &s), MP_OK);
    cr_assert(s.row0 == 0 && s.rows == 8 && s.col0 == 5 && s.cols == 5 && !s.replicated);
}
