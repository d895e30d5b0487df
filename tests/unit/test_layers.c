/*
 * test_layers.c - every layer's forward against a float64 reference and its
 * backward against central finite differences of that reference: linear,
 * GeLU, ReLU, softmax cross-entropy and mlp_block (whole, and as the
 * tensor-parallel pieces).  The loss is L = sum(r * y) for a random r (for
 * xent, the summed loss itself); the finite differences run in double with
 * h = 1e-5 on the double reference, so they are exact to ~1e-9 and the
 * tolerance below measures only the fp32 kernels.
 *
 * Tolerances: forward |got - ref| <= 1e-5 (1 + |ref|) (GeLU: relative 2e-5
 * in its far negative tail); gradients |got - fd| <= 1e-4 (1 + |fd|).  The
 * backward is checked as an accumulation: grads start at random values g0
 * and must end at g0 + gradient.  Single-threaded test process except where
 * a test creates a multi-threaded backend.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/backend.h"
#include "gpu/layers.h"

#include "fd_check.h"

static mp_backend_t *be;

static void setup(void)
{
    cr_assert_eq(mp_backend_cpu_create(1, &be), MP_OK);
}

static void teardown(void)
{
    mp_backend_destroy(be);
}

TestSuite(layers, .init = setup, .fini = teardown);

/* ---- double references --------------------------------------------- */

/* 0.5 x (1 + erf(x/sqrt2)), written with erfc so that the negative tail
 * does not cancel to 0 in double either. */
static double gelu_d(double x)
{
    return 0.5 * x * erfc(-x / sqrt(2.0));
}

/* Z[B,O] = X[B,I] W[I,O] + b (b may be NULL). */
static void linear_d(double *Z, const double *X, const double *W, const double *b, int64_t B,
                     int64_t I, int64_t O)
{
    for (int64_t r = 0; r < B; r++) {
        for (int64_t o = 0; o < O; o++) {
            double s = b != NULL ? b[o] : 0.0;
            for (int64_t i = 0; i < I; i++) {
                s += X[r * I + i] * W[i * O + o];
            }
            Z[r * O + o] = s;
        }
    }
}

/* ---- linear --------------------------------------------------------- */

typedef struct {
    ten_t X, W, b, r;
    int64_t B, I, O;
} lin_ctx_t;

static double lin_loss(void *p)
{
    lin_ctx_t *c = p;
    double *Z = malloc(sizeof(double) * (size_t)(c->B * c->O));
    linear_d(Z, c->X.d, c->W.d, c->b.d, c->B, c->I, c->O);
    double L = 0.0;
    for (int64_t i = 0; i < c->B * c->O; i++) {
        L += c->r.d[i] * Z[i];
    }
    free(Z);
    return L;
}

Test(layers, linear_backward_matches_finite_differences)
{
    static const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {2, 1, 4}, {5, 6, 1}, {1, 9, 2}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        lin_ctx_t c = {.B = shapes[s][0], .I = shapes[s][1], .O = shapes[s][2]};
        c.X = ten_new(c.B * c.I, 1.0);
        c.W = ten_new(c.I * c.O, 1.0);
        c.b = ten_new(c.O, 1.0);
        c.r = ten_new(c.B * c.O, 1.0);
        /* Forward. */
        float *Z = fbuf(c.B * c.O, 1.0);
        cr_assert_eq(mp_linear_fwd(be, Z, c.X.f, c.W.f, c.b.f, c.B, c.I, c.O), MP_OK);
        double *Zd = malloc(sizeof(double) * (size_t)(c.B * c.O));
        linear_d(Zd, c.X.d, c.W.d, c.b.d, c.B, c.I, c.O);
        for (int64_t i = 0; i < c.B * c.O; i++) {
            expect_close("Z", i, Z[i], Zd[i], FWD_TOL);
        }
        /* Backward: dZ = r. */
        float *dX = fbuf(c.B * c.I, 1.0), *dW = fbuf(c.I * c.O, 1.0), *db = fbuf(c.O, 1.0);
        float *dX0 = fcopy(dX, c.B * c.I), *dW0 = fcopy(dW, c.I * c.O), *db0 = fcopy(db, c.O);
        cr_assert_eq(mp_linear_bwd(be, dX, dW, db, c.r.f, c.X.f, c.W.f, c.B, c.I, c.O), MP_OK);
        check_grad("dX", lin_loss, &c, &c.X, dX, dX0);
        check_grad("dW", lin_loss, &c, &c.W, dW, dW0);
        check_grad("db", lin_loss, &c, &c.b, db, db0);
        free(Z);
        free(Zd);
        free(dX);
        free(dW);
        free(db);
        free(dX0);
        free(dW0);
        free(db0);
        ten_free(&c.X);
        ten_free(&c.W);
        ten_free(&c.b);
        ten_free(&c.r);
    }
}

/* ---- GeLU, ReLU ----------------------------------------------------- */

typedef struct {
    ten_t x, r;
    int relu;
} act_ctx_t;

static double act_loss(void *p)
{
    act_ctx_t *c = p;
    double L = 0.0;
    for (int64_t i = 0; i < c->x.n; i++) {
        double y = c->relu ? (c->x.d[i] > 0.0 ? c->x.d[i] : 0.0) : gelu_d(c->x.d[i]);
        L += c->r.d[i] * y;
    }
    return L;
}

Test(layers, gelu_forward_matches_erf_form)
{
    /* A sweep over [-16, 16] including 0, the tails and the steep middle. */
    const int64_t n = 6401;
    float *x = fbuf(n, 0.0), *y = fbuf(n, 0.0);
    for (int64_t i = 0; i < n; i++) {
        x[i] = (float)(-16.0 + 32.0 * (double)i / (double)(n - 1));
    }
    cr_assert_eq(mp_gelu_fwd(be, y, x, n), MP_OK);
    for (int64_t i = 0; i < n; i++) {
        double ref = gelu_d(x[i]);
        /* The far negative tail is tiny (gelu(-6) = -6e-9): compare relatively there. */
        double tol = x[i] < -3.0f ? 2e-5 * fabs(ref) + 1e-30 : FWD_TOL * (1.0 + fabs(ref));
        cr_assert_leq(fabs(y[i] - ref), tol, "gelu(%.9g) = %.9g, want %.9g", x[i], y[i], ref);
    }
    /* Exact landmarks: gelu(0) = 0 and gelu(x) = x once Phi(x) rounds to 1. */
    cr_assert_eq(y[n / 2], 0.0f);
    cr_assert_eq(y[n - 1], 16.0f);
    free(x);
    free(y);
}

static void check_act_bwd(int relu, int64_t n)
{
    act_ctx_t c = {.relu = relu};
    c.x = ten_new(n, 4.0);
    c.r = ten_new(n, 1.0);
    for (int64_t i = 0; i < n; i++) {
        /* Keep ReLU away from its kink, where finite differences are meaningless. */
        if (relu && fabs(c.x.d[i]) < 1e-3) {
            c.x.f[i] = 0.5f;
            c.x.d[i] = 0.5;
        }
    }
    float *dx = fbuf(n, 1.0), *dx0 = fcopy(dx, n), *y = fbuf(n, 1.0);
    if (relu) {
        cr_assert_eq(mp_relu_fwd(be, y, c.x.f, n), MP_OK);
        for (int64_t i = 0; i < n; i++) {
            cr_assert_eq(y[i], c.x.f[i] > 0.0f ? c.x.f[i] : 0.0f);
        }
        float nan_in = NAN, nan_out = 0.0f;
        cr_assert_eq(mp_relu_fwd(be, &nan_out, &nan_in, 1), MP_OK);
        cr_assert(isnan(nan_out), "relu(NaN) must stay NaN so that divergence shows");
        cr_assert_eq(mp_relu_bwd(be, dx, c.x.f, c.r.f, n), MP_OK);
    } else {
        cr_assert_eq(mp_gelu_bwd(be, dx, c.x.f, c.r.f, n), MP_OK);
    }
    check_grad(relu ? "relu dx" : "gelu dx", act_loss, &c, &c.x, dx, dx0);
    free(dx);
    free(dx0);
    free(y);
    ten_free(&c.x);
    ten_free(&c.r);
}

Test(layers, gelu_backward_matches_finite_differences)
{
    check_act_bwd(0, 1);
    check_act_bwd(0, 37);
    check_act_bwd(0, 1000);
}

Test(layers, relu_matches_reference_and_finite_differences)
{
    check_act_bwd(1, 1);
    check_act_bwd(1, 37);
    check_act_bwd(1, 1000);
}

/* ---- softmax cross-entropy ------------------------------------------ */

typedef struct {
    ten_t z;
    int32_t *labels;
    int64_t B, C;
} xent_ctx_t;

/* Summed loss of rows, in double, by log-sum-exp. */
static double xent_loss(void *p)
{
    xent_ctx_t *c = p;
    double L = 0.0;
    for (int64_t r = 0; r < c->B; r++) {
        const double *z = c->z.d + r * c->C;
        double mx = z[0];
        for (int64_t k = 1; k < c->C; k++) {
            mx = z[k] > mx ? z[k] : mx;
        }
        double s = 0.0;
        for (int64_t k = 0; k < c->C; k++) {
            s += exp(z[k] - mx);
        }
        L += mx + log(s) - z[c->labels[r]];
    }
    return L;
}

static void check_xent(int64_t B, int64_t C, double scale_logits, double offset)
{
    xent_ctx_t c = {.B = B, .C = C};
    c.z = ten_new(B * C, scale_logits);
    c.labels = malloc(sizeof(int32_t) * (size_t)B);
    for (int64_t r = 0; r < B; r++) {
        c.labels[r] = (int32_t)((uint64_t)(urand() * 1e6 + 1e6) % (uint64_t)C);
        for (int64_t k = 0; k < C; k++) {
            c.z.f[r * C + k] += (float)offset;
            c.z.d[r * C + k] = c.z.f[r * C + k];
        }
    }
    float *probs = fbuf(B * C, 1.0);
    double loss = -1.0;
    int64_t correct = -1;
    cr_assert_eq(mp_xent_fwd(be, probs, c.z.f, c.labels, B, C, &loss, &correct), MP_OK);
    /* Loss, probabilities and the first-maximum argmax against double. */
    double ref = xent_loss(&c);
    cr_assert(isfinite(loss));
    cr_assert_leq(fabs(loss - ref), 1e-5 * (1.0 + fabs(ref)), "loss %.12g, want %.12g", loss, ref);
    int64_t ref_correct = 0;
    for (int64_t r = 0; r < B; r++) {
        const double *z = c.z.d + r * C;
        int64_t arg = 0;
        double mx = z[0], s = 0.0;
        for (int64_t k = 1; k < C; k++) {
            if (z[k] > mx) {
                mx = z[k];
                arg = k;
            }
        }
        for (int64_t k = 0; k < C; k++) {
            s += exp(z[k] - mx);
        }
        for (int64_t k = 0; k < C; k++) {
            expect_close("probs", r * C + k, probs[r * C + k], exp(z[k] - mx) / s, FWD_TOL);
        }
        ref_correct += arg == c.labels[r];
    }
    cr_assert_eq(correct, ref_correct);
    /* Backward with a scale: dz += scale * (p - onehot) = scale * dL/dz. */
    const float scale = 0.37f;
    float *dz = fbuf(B * C, 1.0), *dz0 = fcopy(dz, B * C);
    cr_assert_eq(mp_xent_bwd(be, dz, probs, c.labels, B, C, scale), MP_OK);
    for (int64_t i = 0; i < B * C; i++) {
        dz[i] = dz0[i] + (dz[i] - dz0[i]) / scale;
    }
    check_grad("dlogits", xent_loss, &c, &c.z, dz, dz0);
    free(probs);
    free(dz);
    free(dz0);
    free(c.labels);
    ten_free(&c.z);
}

Test(layers, xent_matches_double_and_finite_differences)
{
    check_xent(1, 1, 1.0, 0.0);
    check_xent(1, 2, 3.0, 0.0);
    check_xent(7, 10, 3.0, 0.0);
    check_xent(4, 33, 10.0, 0.0);
}

Test(layers, xent_is_stable_for_large_logits)
{
    /* exp(1e4) overflows any float; max-subtraction keeps everything finite. */
    check_xent(5, 10, 50.0, 1e4);
    check_xent(5, 10, 50.0, -1e4);
    float z[6] = {1000.0f, -1000.0f, 0.0f, -3.0e38f, 3.0e38f, 3.0e38f};
    int32_t y[2] = {1, 2};
    float p[6];
    double loss;
    int64_t correct;
    cr_assert_eq(mp_xent_fwd(be, p, z, y, 2, 3, &loss, &correct), MP_OK);
    for (int i = 0; i < 6; i++) {
        cr_assert(isfinite(p[i]));
    }
    /* Row 0: -log softmax[1] = 2000.  Row 1: ties at 3e38 -> argmax is the first (1),
     * label 2 is a tie too, loss log 2; correct counts neither row. */
    cr_assert_float_eq(loss, 2000.0 + log(2.0), 1e-6);
    cr_assert_eq(correct, 0);
    cr_assert_float_eq(p[4], 0.5f, 1e-7);
    cr_assert_float_eq(p[5], 0.5f, 1e-7);
}

Test(layers, xent_argmax_takes_the_first_maximum)
{
    float z[8] = {1.0f, 5.0f, 5.0f, 0.0f, 2.0f, 2.0f, 2.0f, 2.0f};
    int32_t y[2] = {1, 0};
    float p[8];
    int64_t correct = -1;
    cr_assert_eq(mp_xent_fwd(be, p, z, y, 2, 4, NULL, &correct), MP_OK);
    cr_assert_eq(correct, 2);
    y[0] = 2;
    y[1] = 3;
    cr_assert_eq(mp_xent_fwd(be, p, z, y, 2, 4, NULL, &correct), MP_OK);
    cr_assert_eq(correct, 0);
}

Test(layers, xent_rejects_labels_out_of_range)
{
    float z[4] = {0}, p[4], dz[4] = {0};
    int32_t y[2] = {0, 2};
    cr_assert_eq(mp_xent_fwd(be, p, z, y, 2, 2, NULL, NULL), MP_ERR_INVAL);
    cr_assert_eq(mp_xent_bwd(be, dz, p, y, 2, 2, 1.0f), MP_ERR_INVAL);
    y[1] = -1;
    cr_assert_eq(mp_xent_fwd(be, p, z, y, 2, 2, NULL, NULL), MP_ERR_INVAL);
}

/* ---- mlp_block ------------------------------------------------------- */

typedef struct {
    ten_t X, W1, b1, W2, b2, r;
    int64_t B, H, F;
} mlp_ctx_t;

static void mlp_d(const mlp_ctx_t *c, double *Y)
{
    double *Hp = malloc(sizeof(double) * (size_t)(c->B * c->F));
    linear_d(Hp, c->X.d, c->W1.d, c->b1.d, c->B, c->H, c->F);
    for (int64_t i = 0; i < c->B * c->F; i++) {
        Hp[i] = gelu_d(Hp[i]);
    }
    linear_d(Y, Hp, c->W2.d, c->b2.d, c->B, c->F, c->H);
    for (int64_t i = 0; i < c->B * c->H; i++) {
        Y[i] += c->X.d[i];
    }
    free(Hp);
}

static double mlp_loss(void *p)
{
    mlp_ctx_t *c = p;
    double *Y = malloc(sizeof(double) * (size_t)(c->B * c->H));
    mlp_d(c, Y);
    double L = 0.0;
    for (int64_t i = 0; i < c->B * c->H; i++) {
        L += c->r.d[i] * Y[i];
    }
    free(Y);
    return L;
}

static mlp_ctx_t mlp_new(int64_t B, int64_t H, int64_t F)
{
    mlp_ctx_t c = {.B = B, .H = H, .F = F};
    c.X = ten_new(B * H, 1.0);
    c.W1 = ten_new(H * F, 1.0);
    c.b1 = ten_new(F, 1.0);
    c.W2 = ten_new(F * H, 1.0);
    c.b2 = ten_new(H, 1.0);
    c.r = ten_new(B * H, 1.0);
    return c;
}

static void mlp_free(mlp_ctx_t *c)
{
    ten_free(&c->X);
    ten_free(&c->W1);
    ten_free(&c->b1);
    ten_free(&c->W2);
    ten_free(&c->b2);
    ten_free(&c->r);
}

static void check_mlp(int64_t B, int64_t H, int64_t F)
{
    mlp_ctx_t c = mlp_new(B, H, F);
    float *Y = fbuf(B * H, 1.0), *Hpre = fbuf(B * F, 1.0), *A = fbuf(B * F, 1.0);
    cr_assert_eq(mp_mlp_block_fwd(be, Y, Hpre, A, c.X.f, c.W1.f, c.b1.f, c.W2.f, c.b2.f, B, H, F),
                 MP_OK);
    double *Yd = malloc(sizeof(double) * (size_t)(B * H));
    mlp_d(&c, Yd);
    for (int64_t i = 0; i < B * H; i++) {
        expect_close("Y", i, Y[i], Yd[i], FWD_TOL);
    }
    float *dX = fbuf(B * H, 1.0), *dW1 = fbuf(H * F, 1.0), *db1 = fbuf(F, 1.0);
    float *dW2 = fbuf(F * H, 1.0), *db2 = fbuf(H, 1.0), *scratch = fbuf(B * F, 1.0);
    float *dX0 = fcopy(dX, B * H), *dW10 = fcopy(dW1, H * F), *db10 = fcopy(db1, F);
    float *dW20 = fcopy(dW2, F * H), *db20 = fcopy(db2, H);
    cr_assert_eq(mp_mlp_block_bwd(be, dX, dW1, db1, dW2, db2, scratch, c.r.f, c.X.f, Hpre, A,
                                  c.W1.f, c.W2.f, B, H, F),
                 MP_OK);
    check_grad("dX", mlp_loss, &c, &c.X, dX, dX0);
    check_grad("dW1", mlp_loss, &c, &c.W1, dW1, dW10);
    check_grad("db1", mlp_loss, &c, &c.b1, db1, db10);
    check_grad("dW2", mlp_loss, &c, &c.W2, dW2, dW20);
    check_grad("db2", mlp_loss, &c, &c.b2, db2, db20);
    free(Y);
    free(Hpre);
    free(A);
    free(Yd);
    free(dX);
    free(dW1);
    free(db1);
    free(dW2);
    free(db2);
    free(scratch);
    free(dX0);
    free(dW10);
    free(db10);
    free(dW20);
    free(db20);
    mlp_free(&c);
}

Test(layers, mlp_block_matches_double_and_finite_differences)
{
    check_mlp(1, 1, 1);
    check_mlp(3, 5, 7);
    check_mlp(2, 4, 1);
    check_mlp(1, 3, 8);
    check_mlp(4, 1, 6);
}

/* Copies columns [c0, c0+w) of M[rows, cols] into a new [rows, w] matrix. */
static float *cols_of(const float *M, int64_t rows, int64_t cols, int64_t c0, int64_t w)
{
    float *p = malloc(sizeof(float) * (size_t)(rows * w));
    for (int64_t r = 0; r < rows; r++) {
        memcpy(p + r * w, M + r * cols + c0, sizeof(float) * (size_t)w);
    }
    return p;
}

Test(layers, mlp_block_tensor_parallel_pieces_match_whole)
{
    /* Two "ranks" own F = 3 + 4 columns of W1/b1 and rows of W2; their
     * summed partials plus the residual must give the serial block, and their
     * gradients must be the matching slices of the serial gradients. */
    const int64_t B = 3, H = 5, F = 7, F0 = 3, F1 = 4;
    mlp_ctx_t c = mlp_new(B, H, F);
    float *Y = fbuf(B * H, 0), *Hpre = fbuf(B * F, 0), *A = fbuf(B * F, 0);
    cr_assert_eq(mp_mlp_block_fwd(be, Y, Hpre, A, c.X.f, c.W1.f, c.b1.f, c.W2.f, c.b2.f, B, H, F),
                 MP_OK);
    const int64_t off[2] = {0, F0}, wid[2] = {F0, F1};
    float *Ysum = fbuf(B * H, 0), *dXsum = fbuf(B * H, 0);
    float *W1s[2], *b1s[2], *Hs[2], *As[2], *Yp[2];
    for (int k = 0; k < 2; k++) {
        W1s[k] = cols_of(c.W1.f, H, F, off[k], wid[k]);
        b1s[k] = c.b1.f + off[k];
        Hs[k] = fbuf(B * wid[k], 0);
        As[k] = fbuf(B * wid[k], 0);
        Yp[k] = fbuf(B * H, 0);
        cr_assert_eq(mp_mlp_block_fc1_fwd(be, Hs[k], As[k], c.X.f, W1s[k], b1s[k], B, H, wid[k]),
                     MP_OK);
        cr_assert_eq(mp_mlp_block_fc2_fwd(be, Yp[k], As[k], c.W2.f + off[k] * H, B, wid[k], H),
                     MP_OK);
        cr_assert_eq(be->ops->axpy(be, Ysum, 1.0f, Yp[k], B * H), MP_OK); /* the "AllReduce" */
    }
    cr_assert_eq(mp_mlp_block_residual_fwd(be, Ysum, c.X.f, c.b2.f, B, H), MP_OK);
    for (int64_t i = 0; i < B * H; i++) {
        expect_close("Y(tp)", i, Ysum[i], Y[i], FWD_TOL);
    }
    /* Serial backward. */
    float *dX = fbuf(B * H, 0), *dW1 = fbuf(H * F, 0), *db1 = fbuf(F, 0), *dW2 = fbuf(F * H, 0);
    float *db2 = fbuf(H, 0), *scratch = fbuf(B * F, 0);
    cr_assert_eq(mp_mlp_block_bwd(be, dX, dW1, db1, dW2, db2, scratch, c.r.f, c.X.f, Hpre, A,
                                  c.W1.f, c.W2.f, B, H, F),
                 MP_OK);
    for (int k = 0; k < 2; k++) {
        float *dA = fbuf(B * wid[k], 0), *sc = fbuf(B * wid[k], 0), *dXp = fbuf(B * H, 0);
        float *dW1p = fbuf(H * wid[k], 0), *db1p = fbuf(wid[k], 0), *dW2p = fbuf(wid[k] * H, 0);
        float *db2p = fbuf(H, 0);
        cr_assert_eq(mp_mlp_block_fc2_bwd(be, dA, dW2p, db2p, c.r.f, As[k], c.W2.f + off[k] * H, B,
                                          wid[k], H),
                     MP_OK);
        cr_assert_eq(
            mp_mlp_block_fc1_bwd(be, dXp, dW1p, db1p, sc, dA, Hs[k], c.X.f, W1s[k], B, H, wid[k]),
            MP_OK);
        cr_assert_eq(be->ops->axpy(be, dXsum, 1.0f, dXp, B * H), MP_OK);
        float *dW1_cols = cols_of(dW1, H, F, off[k], wid[k]);
        for (int64_t i = 0; i < H * wid[k]; i++) {
            expect_close("dW1(tp)", i, dW1p[i], dW1_cols[i], FWD_TOL);
        }
        for (int64_t i = 0; i < wid[k]; i++) {
            expect_close("db1(tp)", i, db1p[i], db1[off[k] + i], FWD_TOL);
        }
        for (int64_t i = 0; i < wid[k] * H; i++) {
            expect_close("dW2(tp)", i, dW2p[i], dW2[off[k] * H + i], FWD_TOL);
        }
        for (int64_t i = 0; i < H; i++) {
            expect_close("db2(tp)", i, db2p[i], db2[i], FWD_TOL); /* replicated */
        }
        free(dA);
        free(sc);
        free(dXp);
        free(dW1p);
        free(db1p);
        free(dW2p);
        free(db2p);
        free(dW1_cols);
    }
    cr_assert_eq(mp_mlp_block_residual_bwd(be, dXsum, c.r.f, B, H), MP_OK);
    for (int64_t i = 0; i < B * H; i++) {
        expect_close("dX(tp)", i, dXsum[i], dX[i], FWD_TOL);
    }
    for (int k = 0; k < 2; k++) {
        free(W1s[k]);
        free(Hs[k]);
        free(As[k]);
        free(Yp[k]);
    }
    free(Y);
    free(Hpre);
    free(A);
    free(Ysum);
    free(dXsum);
    free(dX);
    free(dW1);
    free(db1);
    free(dW2);
    free(db2);
    free(scratch);
    mlp_free(&c);
}

Test(layers, elementwise_results_do_not_depend_on_threads)
{
#if defined(__SANITIZE_THREAD__)
    cr_skip_test("libgomp is not instrumented for ThreadSanitizer");
#endif
    /* Big enough that a 3-thread backend really splits the ranges. */
    const int64_t rows = 301, cols = 997, n = rows * cols;
    mp_backend_t *be3;
    cr_assert_eq(mp_backend_cpu_create(3, &be3), MP_OK);
    float *x = fbuf(n, 6.0), *dy = fbuf(n, 1.0), *b = fbuf(cols, 1.0);
    mp_backend_t *bes[2] = {be, be3};
    float *out[2][6];
    for (int k = 0; k < 2; k++) {
        mp_backend_t *e = bes[k];
        for (int j = 0; j < 5; j++) {
            out[k][j] = fcopy(dy, n);
        }
        out[k][5] = fbuf(cols, 0);
        cr_assert_eq(e->ops->gelu_fwd(e, out[k][0], x, n), MP_OK);
        cr_assert_eq(e->ops->gelu_bwd(e, out[k][1], x, dy, n), MP_OK);
        cr_assert_eq(e->ops->relu_bwd(e, out[k][2], x, dy, n), MP_OK);
        cr_assert_eq(e->ops->axpy(e, out[k][3], -0.3f, x, n), MP_OK);
        cr_assert_eq(e->ops->bias_add(e, out[k][4], b, rows, cols), MP_OK);
        /* db of linear_bwd (column sums) with an empty dW product (I = 0). */
        cr_assert_eq(e->ops->linear_bwd(e, NULL, b, out[k][5], x, x, x, rows, 0, cols), MP_OK);
    }
    for (int j = 0; j < 5; j++) {
        cr_assert_eq(memcmp(out[0][j], out[1][j], sizeof(float) * (size_t)n), 0, "op %d differs",
                     j);
    }
    cr_assert_eq(memcmp(out[0][5], out[1][5], sizeof(float) * (size_t)cols), 0);
    for (int k = 0; k < 2; k++) {
        for (int j = 0; j < 6; j++) {
            free(out[k][j]);
        }
    }
    free(x);
    free(dy);
    free(b);
    mp_backend_destroy(be3);
}
