/*
 * test_cuda.c - the CUDA backend against the CPU backend, op by op, on the
 * same random inputs (never zeros).  Write-only outputs are poisoned with
 * NaN before each run, so an element the CUDA op fails to write shows up;
 * accumulated outputs start from random values on both sides, which tests
 * the "+=" rule.
 *
 * Tolerances (err = |cuda - cpu| / max(|cpu|, floor), max over elements):
 *   - element-wise ops, softmax, optimizers: err <= 1e-5 with floor = 10% of
 *     the tensor's largest |cpu|, so that a result that cancels to ~0
 *     (dx + dy*g' with |dx| ~ 1) is judged by the size of its terms: one
 *     rounding more or less (nvcc fuses a*b+c, the CPU code does not) moves
 *     it by an ulp of those terms, 2.4e-7 of 2.0, which is 1.2e-6 of the floor;
 *   - strict fp32 GEMM, linear layers and column sums: err <= 1e-5 with
 *     floor = the tensor's largest |cpu| (normwise: the two sides sum in a
 *     different order, ~2e-6 expected at K = 2048);
 *   - TF32 GEMM: normwise err <= 2e-3 (TF32 keeps 10 mantissa bits: about
 *     3e-4 with round-to-nearest inputs, 7e-4 with truncated inputs);
 *   - integers (correct counts) exactly, loss sums to 1e-5 relative.
 * Without a CUDA device (or without the CUDA backend) every test skips
 * and says so.  Runs on the test's own thread; each test makes its own
 * backends.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "gpu/backend.h"
#include "gpu/init.h"

#define TOL_FP32 1e-5
#define TOL_TF32 2e-3
#define FLOOR_ELEMENTWISE 0.1
#define FLOOR_NORMWISE 1.0

typedef struct {
    mp_backend_t *cpu;
    mp_backend_t *gpu;
} pair_t;

/* One tensor mirrored on both backends. */
typedef struct {
    float *c; /* on the CPU backend */
    float *g; /* on the CUDA backend */
    int64_t n;
} twin_t;

static void require_cuda(void)
{
    if (!mp_backend_cuda_built()) {
        cr_skip_test("no CUDA device: this build has no CUDA backend (nvcc not found)");
    }
    if (mp_backend_cuda_device_count() < 1) {
        cr_skip_test("no CUDA device: the CUDA runtime sees no GPU on this machine");
    }
}

static void pair_open(pair_t *p, bool tf32)
{
    require_cuda();
    cr_assert_eq(mp_backend_cpu_create(2, &p->cpu), MP_OK);
    cr_assert_eq(mp_backend_cuda_create(0, tf32, &p->gpu), MP_OK);
    cr_assert_str_eq(p->gpu->ops->name, "cuda");
}

static void pair_close(pair_t *p)
{
    mp_backend_destroy(p->gpu);
    mp_backend_destroy(p->cpu);
}

/* Host data: |x| in [lo, hi] with a random sign, from the counter (seed, i). */
static float *host_rand(int64_t n, uint64_t seed, float lo, float hi)
{
    float *x = mp_malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    cr_assert_not_null(x);
    for (int64_t i = 0; i < n; i++) {
        float u = mp_init_u01(seed, 1, 0, (uint64_t)i);
        float s = mp_init_u01(seed, 2, 0, (uint64_t)i) < 0.5f ? -1.0f : 1.0f;
        x[i] = s * (lo + (hi - lo) * u);
    }
    return x;
}

static float *host_nan(int64_t n)
{
    float *x = mp_malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    cr_assert_not_null(x);
    for (int64_t i = 0; i < n; i++) {
        x[i] = NAN;
    }
    return x;
}

static void *dev_put(mp_backend_t *be, const void *host, size_t bytes)
{
    void *d = be->ops->alloc(be, bytes);
    cr_assert_not_null(d, "%s alloc of %zu bytes failed", be->ops->name, bytes);
    cr_assert_eq(be->ops->upload(be, d, host, bytes), MP_OK);
    return d;
}

/* A twin holding `host` on both sides (NaN poison when host is NULL). */
static twin_t twin_new(pair_t *p, int64_t n, const float *host)
{
    twin_t t = {.n = n};
    float *poison = NULL;
    if (host == NULL) {
        poison = host_nan(n);
        host = poison;
    }
    t.c = dev_put(p->cpu, host, (size_t)n * sizeof(float));
    t.g = dev_put(p->gpu, host, (size_t)n * sizeof(float));
    mp_free(poison);
    return t;
}

static twin_t twin_rand(pair_t *p, int64_t n, uint64_t seed, float lo, float hi)
{
    float *h = host_rand(n, seed, lo, hi);
    twin_t t = twin_new(p, n, h);
    mp_free(h);
    return t;
}

static void twin_free(pair_t *p, twin_t *t)
{
    p->cpu->ops->free(p->cpu, t->c);
    p->gpu->ops->free(p->gpu, t->g);
}

static float *dev_get(mp_backend_t *be, const float *d, int64_t n)
{
    float *h = mp_malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    cr_assert_not_null(h);
    cr_assert_eq(be->ops->download(be, h, d, (size_t)n * sizeof(float)), MP_OK);
    return h;
}

/* err = max |got - ref| / max(|ref|, floor_frac * max|ref|); every element
 * of both sides must be finite (NaN = an element the op did not write). */
static void expect_close_host(const float *got, const float *ref, int64_t n, double floor_frac,
                              double tol, const char *what)
{
    double amax = 0.0;
    for (int64_t i = 0; i < n; i++) {
        cr_assert(isfinite(ref[i]), "%s: CPU reference element %lld is %g", what, (long long)i,
                  (double)ref[i]);
        amax = fmax(amax, fabs((double)ref[i]));
    }
    double worst = 0.0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        cr_assert(isfinite(got[i]), "%s: CUDA element %lld is %g (not written?)", what,
                  (long long)i, (double)got[i]);
        double den = fmax(fabs((double)ref[i]), floor_frac * amax);
        if (den == 0.0) {
            den = 1.0;
        }
        double e = fabs((double)got[i] - (double)ref[i]) / den;
        if (e > worst) {
            worst = e;
            at = i;
        }
    }
    cr_assert(worst <= tol, "%s: relative error %.3g at element %lld (cuda %.9g, cpu %.9g) > %.1g",
              what, worst, (long long)at, n > 0 ? (double)got[at] : 0.0,
              n > 0 ? (double)ref[at] : 0.0, tol);
}

static void expect_twin(pair_t *p, const twin_t *t, double floor_frac, double tol, const char *what)
{
    cr_assert_eq(p->gpu->ops->sync(p->gpu), MP_OK);
    float *g = dev_get(p->gpu, t->g, t->n);
    float *c = dev_get(p->cpu, t->c, t->n);
    expect_close_host(g, c, t->n, floor_frac, tol, what);
    mp_free(g);
    mp_free(c);
}

/* ---- memory ------------------------------------------------------------ */

Test(cuda, upload_copy_zero_download_round_trip)
{
    pair_t p;
    pair_open(&p, false);
    mp_backend_t *be = p.gpu;
    const int64_t n = 100003;
    float *h = host_rand(n, 11, 0.5f, 3.0f);
    float *a = dev_put(be, h, (size_t)n * sizeof(float));
    float *b = be->ops->alloc(be, (size_t)n * sizeof(float));
    cr_assert_not_null(b);
    cr_assert_eq(be->ops->copy(be, b, a, (size_t)n * sizeof(float)), MP_OK);
    float *back = dev_get(be, b, n);
    cr_assert_eq(memcmp(back, h, (size_t)n * sizeof(float)), 0, "copy changed the bits");
    /* Zero the middle only: both ends must keep their values. */
    cr_assert_eq(be->ops->zero(be, b + 10, (size_t)(n - 20) * sizeof(float)), MP_OK);
    mp_free(back);
    back = dev_get(be, b, n);
    for (int64_t i = 0; i < n; i++) {
        float want = (i < 10 || i >= n - 10) ? h[i] : 0.0f;
        cr_assert(back[i] == want, "element %lld: %g, want %g", (long long)i, (double)back[i],
                  (double)want);
    }
    mp_free(back);
    mp_free(h);
    be->ops->free(be, a);
    be->ops->free(be, b);
    pair_close(&p);
}

Test(cuda, create_rejects_missing_device)
{
    require_cuda();
    mp_backend_t *be = NULL;
    cr_assert_eq(mp_backend_cuda_create(mp_backend_cuda_device_count(), false, &be), MP_ERR_NODEV);
    cr_assert_eq(mp_backend_cuda_create(-1, false, &be), MP_ERR_NODEV);
    cr_assert_null(be, "the output was written on failure");
}

/* ---- GEMM ---------------------------------------------------------------- */

/* Row-major C[M,N] = alpha op(A) op(B) + beta C with padded leading
 * dimensions; beta == 0 starts C as NaN (cuBLAS must not read it), else as
 * random values.  The padding columns of C must come back untouched. */
static void check_gemm(pair_t *p, mp_op_t ta, mp_op_t tb, int64_t M, int64_t N, int64_t K,
                       int64_t pad, float alpha, float beta, double tol, uint64_t seed)
{
    int64_t arows = ta == MP_OP_N ? M : K, acols = ta == MP_OP_N ? K : M;
    int64_t brows = tb == MP_OP_N ? K : N, bcols = tb == MP_OP_N ? N : K;
    int64_t lda = acols + pad, ldb = bcols + pad, ldc = N + pad;
    twin_t A = twin_rand(p, arows * lda, seed, 0.1f, 2.0f);
    twin_t B = twin_rand(p, brows * ldb, seed + 1, 0.1f, 2.0f);
    float *c0 = beta == 0.0f ? host_nan(M * ldc) : host_rand(M * ldc, seed + 2, 0.1f, 2.0f);
    twin_t C = twin_new(p, M * ldc, c0);

    cr_assert_eq(
        p->cpu->ops->gemm(p->cpu, ta, tb, M, N, K, alpha, A.c, lda, B.c, ldb, beta, C.c, ldc),
        MP_OK);
    cr_assert_eq(
        p->gpu->ops->gemm(p->gpu, ta, tb, M, N, K, alpha, A.g, lda, B.g, ldb, beta, C.g, ldc),
        MP_OK);
    float *g = dev_get(p->gpu, C.g, M * ldc);
    float *c = dev_get(p->cpu, C.c, M * ldc);
    float *gv = mp_malloc((size_t)(M * N) * sizeof(float));
    float *cv = mp_malloc((size_t)(M * N) * sizeof(float));
    for (int64_t r = 0; r < M; r++) {
        for (int64_t j = 0; j < ldc; j++) {
            if (j < N) {
                gv[r * N + j] = g[r * ldc + j];
                cv[r * N + j] = c[r * ldc + j];
            } else {
                float was = c0[r * ldc + j], now = g[r * ldc + j];
                cr_assert(isnan(was) ? isnan(now) : now == was,
                          "gemm wrote the padding of C at row %lld column %lld", (long long)r,
                          (long long)j);
            }
        }
    }
    char what[128];
    snprintf(what, sizeof(what), "gemm %c%c M=%lld N=%lld K=%lld alpha=%g beta=%g",
             ta == MP_OP_T ? 'T' : 'N', tb == MP_OP_T ? 'T' : 'N', (long long)M, (long long)N,
             (long long)K, (double)alpha, (double)beta);
    expect_close_host(gv, cv, M * N, FLOOR_NORMWISE, tol, what);
    mp_free(gv);
    mp_free(cv);
    mp_free(g);
    mp_free(c);
    mp_free(c0);
    twin_free(p, &A);
    twin_free(p, &B);
    twin_free(p, &C);
}

Test(cuda, gemm_strict_fp32_all_transposes_with_padding)
{
    pair_t p;
    pair_open(&p, false);
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            check_gemm(&p, (mp_op_t)ta, (mp_op_t)tb, 67, 45, 129, 3, 1.25f, 0.0f, TOL_FP32, 100);
            check_gemm(&p, (mp_op_t)ta, (mp_op_t)tb, 33, 70, 17, 5, 0.75f, -0.5f, TOL_FP32, 200);
        }
    }
    pair_close(&p);
}

Test(cuda, gemm_with_empty_k_only_scales_c)
{
    pair_t p;
    pair_open(&p, false);
    /* K = 0: op(A) op(B) is an empty sum, so C = beta * C. */
    check_gemm(&p, MP_OP_N, MP_OP_N, 9, 13, 0, 1, 1.0f, 0.5f, TOL_FP32, 250);
    check_gemm(&p, MP_OP_T, MP_OP_T, 9, 13, 0, 2, 1.0f, -2.0f, TOL_FP32, 260);
    pair_close(&p);
}

/* The example model's layers: forward (NN) and both backward products. */
static void check_model_shapes(pair_t *p, double tol)
{
    static const int64_t shapes[][3] = {{256, 784, 512}, {256, 512, 2048}, {256, 2048, 512}};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int64_t B = shapes[s][0], I = shapes[s][1], O = shapes[s][2];
        check_gemm(p, MP_OP_N, MP_OP_N, B, O, I, 0, 1.0f, 0.0f, tol, 300 + s); /* Z = X W */
        check_gemm(p, MP_OP_N, MP_OP_T, B, I, O, 0, 1.0f, 1.0f, tol, 400 + s); /* dX += dZ W^T */
        check_gemm(p, MP_OP_T, MP_OP_N, I, O, B, 0, 1.0f, 1.0f, tol, 500 + s); /* dW += X^T dZ */
    }
}

Test(cuda, gemm_strict_fp32_model_shapes, .timeout = 120)
{
    pair_t p;
    pair_open(&p, false);
    check_model_shapes(&p, TOL_FP32);
    pair_close(&p);
}

Test(cuda, gemm_tf32_model_shapes, .timeout = 120)
{
    pair_t p;
    pair_open(&p, true);
    check_model_shapes(&p, TOL_TF32);
    check_gemm(&p, MP_OP_T, MP_OP_T, 67, 45, 129, 3, 1.25f, 0.5f, TOL_TF32, 600);
    pair_close(&p);
}

/* ---- linear ------------------------------------------------------------------ */

static void check_linear(pair_t *p, int64_t B, int64_t I, int64_t O, bool bias, bool with_dx,
                         bool with_db, double tol, uint64_t seed)
{
    twin_t X = twin_rand(p, B * I, seed, 0.1f, 1.0f);
    twin_t W = twin_rand(p, I * O, seed + 1, 0.01f, 0.1f);
    twin_t b = twin_rand(p, O, seed + 2, 0.1f, 1.0f);
    twin_t Z = twin_new(p, B * O, NULL);
    cr_assert_eq(p->cpu->ops->linear_fwd(p->cpu, Z.c, X.c, W.c, bias ? b.c : NULL, B, I, O), MP_OK);
    cr_assert_eq(p->gpu->ops->linear_fwd(p->gpu, Z.g, X.g, W.g, bias ? b.g : NULL, B, I, O), MP_OK);
    expect_twin(p, &Z, FLOOR_NORMWISE, tol, bias ? "linear_fwd Z (bias)" : "linear_fwd Z");

    twin_t dZ = twin_rand(p, B * O, seed + 3, 0.1f, 1.0f);
    twin_t dX = twin_rand(p, B * I, seed + 4, 0.1f, 1.0f);
    twin_t dW = twin_rand(p, I * O, seed + 5, 0.1f, 1.0f);
    twin_t db = twin_rand(p, O, seed + 6, 0.1f, 1.0f);
    /* Odd seeds run the input-gradient half (dW NULL), as a split backward does. */
    bool with_dw = seed % 2 == 0;
    cr_assert_eq(p->cpu->ops->linear_bwd(p->cpu, with_dx ? dX.c : NULL, with_dw ? dW.c : NULL,
                                         with_db ? db.c : NULL, dZ.c, X.c, W.c, B, I, O),
                 MP_OK);
    cr_assert_eq(p->gpu->ops->linear_bwd(p->gpu, with_dx ? dX.g : NULL, with_dw ? dW.g : NULL,
                                         with_db ? db.g : NULL, dZ.g, X.g, W.g, B, I, O),
                 MP_OK);
    /* Skipped outputs stay as they were on both sides, so they compare too. */
    expect_twin(p, &dX, FLOOR_NORMWISE, tol, "linear_bwd dX");
    expect_twin(p, &dW, FLOOR_NORMWISE, tol, "linear_bwd dW");
    expect_twin(p, &db, FLOOR_NORMWISE, tol, "linear_bwd db");
    twin_free(p, &X);
    twin_free(p, &W);
    twin_free(p, &b);
    twin_free(p, &Z);
    twin_free(p, &dZ);
    twin_free(p, &dX);
    twin_free(p, &dW);
    twin_free(p, &db);
}

Test(cuda, linear_fwd_bwd_strict_fp32, .timeout = 120)
{
    pair_t p;
    pair_open(&p, false);
    check_linear(&p, 37, 129, 67, true, true, true, TOL_FP32, 700);
    check_linear(&p, 37, 129, 67, false, false, false, TOL_FP32, 710);
    check_linear(&p, 256, 784, 512, true, true, true, TOL_FP32, 720);
    check_linear(&p, 1000, 10, 3, true, true, true, TOL_FP32, 730);  /* tall: long column sums */
    check_linear(&p, 37, 129, 67, true, true, false, TOL_FP32, 751); /* dX only: dW NULL */
    pair_close(&p);
}

Test(cuda, linear_fwd_bwd_tf32, .timeout = 120)
{
    pair_t p;
    pair_open(&p, true);
    check_linear(&p, 256, 512, 2048, true, true, true, TOL_TF32, 740);
    pair_close(&p);
}

Test(cuda, bias_gradient_is_deterministic)
{
    pair_t p;
    pair_open(&p, false);
    mp_backend_t *be = p.gpu;
    const int64_t B = 4096, I = 8, O = 300;
    float *hX = host_rand(B * I, 800, 0.1f, 1.0f), *hW = host_rand(I * O, 801, 0.1f, 1.0f);
    float *hdZ = host_rand(B * O, 802, 0.1f, 1.0f);
    float *X = dev_put(be, hX, (size_t)(B * I) * sizeof(float));
    float *W = dev_put(be, hW, (size_t)(I * O) * sizeof(float));
    float *dZ = dev_put(be, hdZ, (size_t)(B * O) * sizeof(float));
    float *dW = be->ops->alloc(be, (size_t)(I * O) * sizeof(float));
    float *db = be->ops->alloc(be, (size_t)O * sizeof(float));
    float *first = NULL;
    for (int run = 0; run < 3; run++) {
        cr_assert_eq(be->ops->zero(be, dW, (size_t)(I * O) * sizeof(float)), MP_OK);
        cr_assert_eq(be->ops->zero(be, db, (size_t)O * sizeof(float)), MP_OK);
        cr_assert_eq(be->ops->linear_bwd(be, NULL, dW, db, dZ, X, W, B, I, O), MP_OK);
        float *got = dev_get(be, db, O);
        if (first == NULL) {
            first = got;
            /* Against a double-precision column sum: each lane adds 512 floats, whose
             * worst-case rounding bound is 512 eps ~ 3e-5 of the magnitude. */
            for (int64_t c = 0; c < O; c++) {
                double s = 0.0, mag = 0.0;
                for (int64_t r = 0; r < B; r++) {
                    s += hdZ[r * O + c];
                    mag += fabs(hdZ[r * O + c]);
                }
                cr_assert(fabs(first[c] - s) <= 5e-5 * mag, "db[%lld] = %g, want %g", (long long)c,
                          (double)first[c], s);
            }
        } else {
            cr_assert_eq(memcmp(got, first, (size_t)O * sizeof(float)), 0,
                         "db differs between identical runs");
            mp_free(got);
        }
    }
    mp_free(first);
    mp_free(hX);
    mp_free(hW);
    mp_free(hdZ);
    be->ops->free(be, X);
    be->ops->free(be, W);
    be->ops->free(be, dZ);
    be->ops->free(be, dW);
    be->ops->free(be, db);
    pair_close(&p);
}

/* ---- element-wise ------------------------------------------------------------ */

#define N_ELEM 100003 /* several blocks, not a multiple of a warp */

Test(cuda, gelu_fwd_bwd)
{
    pair_t p;
    pair_open(&p, false);
    twin_t x = twin_rand(&p, N_ELEM, 900, 0.01f, 2.0f);
    twin_t y = twin_new(&p, N_ELEM, NULL);
    cr_assert_eq(p.cpu->ops->gelu_fwd(p.cpu, y.c, x.c, N_ELEM), MP_OK);
    cr_assert_eq(p.gpu->ops->gelu_fwd(p.gpu, y.g, x.g, N_ELEM), MP_OK);
    expect_twin(&p, &y, FLOOR_ELEMENTWISE, TOL_FP32, "gelu_fwd y");
    twin_t dy = twin_rand(&p, N_ELEM, 901, 0.1f, 1.0f);
    twin_t dx = twin_rand(&p, N_ELEM, 902, 0.1f, 1.0f);
    cr_assert_eq(p.cpu->ops->gelu_bwd(p.cpu, dx.c, x.c, dy.c, N_ELEM), MP_OK);
    cr_assert_eq(p.gpu->ops->gelu_bwd(p.gpu, dx.g, x.g, dy.g, N_ELEM), MP_OK);
    expect_twin(&p, &dx, FLOOR_ELEMENTWISE, TOL_FP32, "gelu_bwd dx");
    twin_free(&p, &x);
    twin_free(&p, &y);
    twin_free(&p, &dy);
    twin_free(&p, &dx);
    pair_close(&p);
}

Test(cuda, relu_fwd_bwd)
{
    pair_t p;
    pair_open(&p, false);
    twin_t x = twin_rand(&p, N_ELEM, 910, 0.01f, 2.0f);
    twin_t y = twin_new(&p, N_ELEM, NULL);
    cr_assert_eq(p.cpu->ops->relu_fwd(p.cpu, y.c, x.c, N_ELEM), MP_OK);
    cr_assert_eq(p.gpu->ops->relu_fwd(p.gpu, y.g, x.g, N_ELEM), MP_OK);
    expect_twin(&p, &y, FLOOR_ELEMENTWISE, 0.0, "relu_fwd y (exact)");
    twin_t dy = twin_rand(&p, N_ELEM, 911, 0.1f, 1.0f);
    twin_t dx = twin_rand(&p, N_ELEM, 912, 0.1f, 1.0f);
    cr_assert_eq(p.cpu->ops->relu_bwd(p.cpu, dx.c, x.c, dy.c, N_ELEM), MP_OK);
    cr_assert_eq(p.gpu->ops->relu_bwd(p.gpu, dx.g, x.g, dy.g, N_ELEM), MP_OK);
    expect_twin(&p, &dx, FLOOR_ELEMENTWISE, 0.0, "relu_bwd dx (exact)");
    twin_free(&p, &x);
    twin_free(&p, &y);
    twin_free(&p, &dy);
    twin_free(&p, &dx);
    pair_close(&p);
}

Test(cuda, axpy_and_bias_add)
{
    pair_t p;
    pair_open(&p, false);
    twin_t x = twin_rand(&p, N_ELEM, 920, 0.1f, 2.0f);
    twin_t y = twin_rand(&p, N_ELEM, 921, 0.1f, 2.0f);
    cr_assert_eq(p.cpu->ops->axpy(p.cpu, y.c, -0.37f, x.c, N_ELEM), MP_OK);
    cr_assert_eq(p.gpu->ops->axpy(p.gpu, y.g, -0.37f, x.g, N_ELEM), MP_OK);
    expect_twin(&p, &y, FLOOR_ELEMENTWISE, TOL_FP32, "axpy y");
    const int64_t rows = 301, cols = 333;
    twin_t z = twin_rand(&p, rows * cols, 922, 0.1f, 2.0f);
    twin_t b = twin_rand(&p, cols, 923, 0.1f, 2.0f);
    cr_assert_eq(p.cpu->ops->bias_add(p.cpu, z.c, b.c, rows, cols), MP_OK);
    cr_assert_eq(p.gpu->ops->bias_add(p.gpu, z.g, b.g, rows, cols), MP_OK);
    expect_twin(&p, &z, FLOOR_ELEMENTWISE, TOL_FP32, "bias_add y");
    twin_free(&p, &x);
    twin_free(&p, &y);
    twin_free(&p, &z);
    twin_free(&p, &b);
    pair_close(&p);
}

/* ---- softmax cross-entropy ------------------------------------------------------ */

static void check_xent(pair_t *p, int64_t B, int64_t C, uint64_t seed)
{
    float *hl = host_rand(B * C, seed, 0.1f, 30.0f); /* wide: exp() overflows unshifted */
    int32_t *lab = mp_malloc((size_t)B * sizeof(int32_t));
    int64_t want_correct = 0;
    for (int64_t r = 0; r < B; r++) {
        float *row = hl + r * C;
        if (r % 7 == 1 && C > 7) {
            /* A tie for the maximum: the first index wins. */
            row[2] = row[7] = 100.0f;
        }
        int64_t arg = 0;
        for (int64_t c = 1; c < C; c++) {
            if (row[c] > row[arg]) {
                arg = c;
            }
        }
        if (r % 7 == 1 && C > 7) {
            lab[r] = r % 2 ? 2 : 7; /* 2 is correct, 7 is not */
        } else if (r % 3 == 0) {
            lab[r] = (int32_t)arg;
        } else {
            lab[r] = (int32_t)(mp_init_u01(seed, 3, 0, (uint64_t)r) * (float)C) % (int32_t)C;
        }
        want_correct += lab[r] == arg;
    }
    twin_t logits = twin_new(p, B * C, hl);
    twin_t probs = twin_new(p, B * C, NULL);
    int32_t *lc = dev_put(p->cpu, lab, (size_t)B * sizeof(int32_t));
    int32_t *lg = dev_put(p->gpu, lab, (size_t)B * sizeof(int32_t));
    double loss_c = 0.0, loss_g = 0.0;
    int64_t corr_c = -1, corr_g = -1;
    cr_assert_eq(p->cpu->ops->xent_fwd(p->cpu, probs.c, logits.c, lc, B, C, &loss_c, &corr_c),
                 MP_OK);
    cr_assert_eq(p->gpu->ops->xent_fwd(p->gpu, probs.g, logits.g, lg, B, C, &loss_g, &corr_g),
                 MP_OK);
    expect_twin(p, &probs, FLOOR_ELEMENTWISE, TOL_FP32, "xent_fwd probs");
    cr_assert(isfinite(loss_g) && loss_g > 0.0, "loss sum %g", loss_g);
    cr_assert(fabs(loss_g - loss_c) <= TOL_FP32 * fabs(loss_c), "loss sum cuda %.10g cpu %.10g",
              loss_g, loss_c);
    cr_assert_eq(corr_c, want_correct);
    cr_assert_eq(corr_g, want_correct, "correct count cuda %lld, want %lld", (long long)corr_g,
                 (long long)want_correct);

    /* Host outputs are optional; a second run gives the same bits. */
    twin_t probs2 = twin_new(p, B * C, NULL);
    cr_assert_eq(p->gpu->ops->xent_fwd(p->gpu, probs2.g, logits.g, lg, B, C, NULL, NULL), MP_OK);
    double loss_again = 0.0;
    cr_assert_eq(p->gpu->ops->xent_fwd(p->gpu, probs2.g, logits.g, lg, B, C, &loss_again, NULL),
                 MP_OK);
    cr_assert(memcmp(&loss_again, &loss_g, sizeof(double)) == 0, "loss not deterministic");

    twin_t dl = twin_rand(p, B * C, seed + 1, 0.1f, 1.0f);
    float scale = 1.0f / (float)B;
    cr_assert_eq(p->cpu->ops->xent_bwd(p->cpu, dl.c, probs.c, lc, B, C, scale), MP_OK);
    cr_assert_eq(p->gpu->ops->xent_bwd(p->gpu, dl.g, probs.g, lg, B, C, scale), MP_OK);
    expect_twin(p, &dl, FLOOR_ELEMENTWISE, TOL_FP32, "xent_bwd dlogits");

    twin_free(p, &logits);
    twin_free(p, &probs);
    twin_free(p, &probs2);
    twin_free(p, &dl);
    p->cpu->ops->free(p->cpu, lc);
    p->gpu->ops->free(p->gpu, lg);
    mp_free(lab);
    mp_free(hl);
}

Test(cuda, xent_fwd_bwd_ten_classes)
{
    pair_t p;
    pair_open(&p, false);
    check_xent(&p, 257, 10, 1000);
    pair_close(&p);
}

Test(cuda, xent_fwd_bwd_wide_rows)
{
    pair_t p;
    pair_open(&p, false);
    check_xent(&p, 33, 1000, 1100); /* a full block of threads strides over each row */
    check_xent(&p, 40, 77, 1200);
    pair_close(&p);
}

Test(cuda, xent_fwd_rejects_out_of_range_label)
{
    pair_t p;
    pair_open(&p, false);
    mp_backend_t *be = p.gpu;
    const int64_t B = 4, C = 10;
    float *hl = host_rand(B * C, 1300, 0.1f, 2.0f);
    int32_t lab[4] = {1, 2, 10, 3};
    float *logits = dev_put(be, hl, sizeof(float) * (size_t)(B * C));
    int32_t *labels = dev_put(be, lab, sizeof(lab));
    float *probs = be->ops->alloc(be, sizeof(float) * (size_t)(B * C));
    double loss = -1.0;
    cr_assert_eq(be->ops->xent_fwd(be, probs, logits, labels, B, C, &loss, NULL), MP_ERR_INVAL);
    cr_assert_eq(loss, -1.0, "the loss was written on failure");
    be->ops->free(be, logits);
    be->ops->free(be, labels);
    be->ops->free(be, probs);
    mp_free(hl);
    pair_close(&p);
}

/* ---- optimizers -------------------------------------------------------------------- */

static void check_sgd(pair_t *p, float momentum, float dampening, float wd, bool nesterov,
                      uint64_t seed)
{
    twin_t w = twin_rand(p, N_ELEM, seed, 0.1f, 1.0f);
    /* Step 1 must overwrite the buffer: start it as NaN. */
    twin_t buf = twin_new(p, N_ELEM, NULL);
    mp_optim_hp_t hp = {.lr = 0.05f,
                        .momentum = momentum,
                        .dampening = dampening,
                        .weight_decay = wd,
                        .nesterov = nesterov};
    for (int64_t step = 1; step <= 3; step++) {
        twin_t g = twin_rand(p, N_ELEM, seed + 10 * (uint64_t)step, 0.1f, 1.0f);
        hp.step = step;
        float *bc = momentum != 0.0f ? buf.c : NULL, *bg = momentum != 0.0f ? buf.g : NULL;
        cr_assert_eq(p->cpu->ops->sgd_step(p->cpu, w.c, g.c, bc, N_ELEM, &hp), MP_OK);
        cr_assert_eq(p->gpu->ops->sgd_step(p->gpu, w.g, g.g, bg, N_ELEM, &hp), MP_OK);
        expect_twin(p, &w, FLOOR_ELEMENTWISE, TOL_FP32, "sgd param");
        if (momentum != 0.0f) {
            expect_twin(p, &buf, FLOOR_ELEMENTWISE, TOL_FP32, "sgd momentum buffer");
        }
        twin_free(p, &g);
    }
    twin_free(p, &w);
    twin_free(p, &buf);
}

Test(cuda, sgd_step_matches_cpu)
{
    pair_t p;
    pair_open(&p, false);
    check_sgd(&p, 0.0f, 0.0f, 0.0f, false, 1400);
    check_sgd(&p, 0.0f, 0.0f, 0.01f, false, 1410);
    check_sgd(&p, 0.9f, 0.1f, 0.01f, false, 1420);
    check_sgd(&p, 0.9f, 0.0f, 0.001f, true, 1430);
    pair_close(&p);
}

Test(cuda, adamw_step_matches_cpu)
{
    pair_t p;
    pair_open(&p, false);
    twin_t w = twin_rand(&p, N_ELEM, 1500, 0.1f, 1.0f);
    twin_t m = twin_new(&p, N_ELEM, NULL);
    twin_t v = twin_new(&p, N_ELEM, NULL);
    cr_assert_eq(p.cpu->ops->zero(p.cpu, m.c, N_ELEM * sizeof(float)), MP_OK);
    cr_assert_eq(p.cpu->ops->zero(p.cpu, v.c, N_ELEM * sizeof(float)), MP_OK);
    cr_assert_eq(p.gpu->ops->zero(p.gpu, m.g, N_ELEM * sizeof(float)), MP_OK);
    cr_assert_eq(p.gpu->ops->zero(p.gpu, v.g, N_ELEM * sizeof(float)), MP_OK);
    mp_optim_hp_t hp = {
        .lr = 0.01f, .weight_decay = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    for (int64_t step = 1; step <= 3; step++) {
        twin_t g = twin_rand(&p, N_ELEM, 1500 + 10 * (uint64_t)step, 0.01f, 1.0f);
        hp.step = step;
        cr_assert_eq(p.cpu->ops->adamw_step(p.cpu, w.c, g.c, m.c, v.c, N_ELEM, &hp), MP_OK);
        cr_assert_eq(p.gpu->ops->adamw_step(p.gpu, w.g, g.g, m.g, v.g, N_ELEM, &hp), MP_OK);
        expect_twin(&p, &w, FLOOR_ELEMENTWISE, TOL_FP32, "adamw param");
        expect_twin(&p, &m, FLOOR_ELEMENTWISE, TOL_FP32, "adamw exp_avg");
        expect_twin(&p, &v, FLOOR_ELEMENTWISE, TOL_FP32, "adamw exp_avg_sq");
        twin_free(&p, &g);
    }
    twin_free(&p, &w);
    twin_free(&p, &m);
    twin_free(&p, &v);
    pair_close(&p);
}

/* ---- sequence layers ------------------------------------------------------------------
 * Tolerances: the lookups and the position sums add the same floats in the
 * same order on both sides, so they must agree exactly; LayerNorm and
 * attention forwards to TOL_FP32 normwise (their reductions run in another
 * order, and CUDA's expf is not the CPU's mp_expf); their backwards, which
 * chain two or three such reductions, to TOL_SEQ_BWD normwise; the
 * vocab-parallel sums and gradients to TOL_FP32 element-wise. */

#define TOL_SEQ_BWD 1e-4

/* R token ids as floats in [0, V), from the counter (seed, r). */
static float *host_ids(int64_t R, int64_t V, uint64_t seed)
{
    float *ids = mp_malloc((size_t)(R > 0 ? R : 1) * sizeof(float));
    cr_assert_not_null(ids);
    for (int64_t r = 0; r < R; r++) {
        ids[r] = (float)((int64_t)(mp_init_u01(seed, 4, 0, (uint64_t)r) * (float)V) % V);
    }
    return ids;
}

static void check_embed_pos(pair_t *p, int64_t B, int64_t T, int64_t C, int64_t V, int64_t v0,
                            int64_t Vl, uint64_t seed)
{
    const int64_t R = B * T;
    float *hid = host_ids(R, V, seed);
    twin_t ids = twin_new(p, R, hid);
    twin_t tok = twin_rand(p, Vl * C, seed + 1, 0.1f, 1.0f);
    twin_t pos = twin_rand(p, T * C, seed + 2, 0.1f, 1.0f);
    twin_t y = twin_new(p, R * C, NULL);
    cr_assert_eq(p->cpu->ops->embed_fwd(p->cpu, y.c, ids.c, tok.c, R, C, v0, Vl), MP_OK);
    cr_assert_eq(p->gpu->ops->embed_fwd(p->gpu, y.g, ids.g, tok.g, R, C, v0, Vl), MP_OK);
    expect_twin(p, &y, FLOOR_ELEMENTWISE, 0.0, "embed_fwd y (exact)");
    cr_assert_eq(p->cpu->ops->pos_add(p->cpu, y.c, pos.c, R, T, C), MP_OK);
    cr_assert_eq(p->gpu->ops->pos_add(p->gpu, y.g, pos.g, R, T, C), MP_OK);
    expect_twin(p, &y, FLOOR_ELEMENTWISE, 0.0, "pos_add y (exact)");

    twin_t dy = twin_rand(p, R * C, seed + 3, 0.1f, 1.0f);
    twin_t dtok = twin_rand(p, Vl * C, seed + 4, 0.1f, 1.0f);
    twin_t dpos = twin_rand(p, T * C, seed + 5, 0.1f, 1.0f);
    cr_assert_eq(p->cpu->ops->embed_bwd(p->cpu, dtok.c, dy.c, ids.c, R, C, v0, Vl), MP_OK);
    cr_assert_eq(p->gpu->ops->embed_bwd(p->gpu, dtok.g, dy.g, ids.g, R, C, v0, Vl), MP_OK);
    expect_twin(p, &dtok, FLOOR_ELEMENTWISE, 0.0, "embed_bwd dtok (exact: rows in order)");
    cr_assert_eq(p->cpu->ops->pos_bwd(p->cpu, dpos.c, dy.c, R, T, C), MP_OK);
    cr_assert_eq(p->gpu->ops->pos_bwd(p->gpu, dpos.g, dy.g, R, T, C), MP_OK);
    expect_twin(p, &dpos, FLOOR_ELEMENTWISE, 0.0, "pos_bwd dpos (exact: batch in order)");
    twin_free(p, &ids);
    twin_free(p, &tok);
    twin_free(p, &pos);
    twin_free(p, &y);
    twin_free(p, &dy);
    twin_free(p, &dtok);
    twin_free(p, &dpos);
    mp_free(hid);
}

Test(cuda, embedding_and_positions_match_cpu)
{
    pair_t p;
    pair_open(&p, false);
    check_embed_pos(&p, 3, 7, 10, 11, 0, 11, 2000);       /* the whole vocab */
    check_embed_pos(&p, 3, 7, 10, 11, 4, 5, 2010);        /* a shard: other ids give zero rows */
    check_embed_pos(&p, 1, 1, 6, 3, 1, 1, 2020);          /* T = 1, one row of the table */
    check_embed_pos(&p, 8, 64, 128, 256, 128, 128, 2030); /* the GPT demo, tp = 2 */
    pair_close(&p);
}

static void check_layernorm(pair_t *p, int64_t R, int64_t C, uint64_t seed)
{
    twin_t x = twin_rand(p, R * C, seed, 0.1f, 2.0f);
    twin_t w = twin_rand(p, C, seed + 1, 0.5f, 1.5f);
    twin_t b = twin_rand(p, C, seed + 2, 0.1f, 1.0f);
    twin_t y = twin_new(p, R * C, NULL), mean = twin_new(p, R, NULL), rstd = twin_new(p, R, NULL);
    cr_assert_eq(
        p->cpu->ops->layernorm_fwd(p->cpu, y.c, mean.c, rstd.c, x.c, w.c, b.c, R, C, 1e-5f), MP_OK);
    cr_assert_eq(
        p->gpu->ops->layernorm_fwd(p->gpu, y.g, mean.g, rstd.g, x.g, w.g, b.g, R, C, 1e-5f), MP_OK);
    expect_twin(p, &y, FLOOR_NORMWISE, TOL_FP32, "layernorm_fwd y");
    expect_twin(p, &mean, FLOOR_NORMWISE, TOL_FP32, "layernorm_fwd mean");
    expect_twin(p, &rstd, FLOOR_ELEMENTWISE, TOL_FP32, "layernorm_fwd rstd");
    twin_t dy = twin_rand(p, R * C, seed + 3, 0.1f, 1.0f);
    twin_t dx = twin_rand(p, R * C, seed + 4, 0.1f, 1.0f);
    twin_t dw = twin_rand(p, C, seed + 5, 0.1f, 1.0f), db = twin_rand(p, C, seed + 6, 0.1f, 1.0f);
    /* The two halves, as a split backward calls them. */
    cr_assert_eq(
        p->cpu->ops->layernorm_bwd(p->cpu, dx.c, NULL, NULL, dy.c, x.c, mean.c, rstd.c, w.c, R, C),
        MP_OK);
    cr_assert_eq(
        p->cpu->ops->layernorm_bwd(p->cpu, NULL, dw.c, db.c, dy.c, x.c, mean.c, rstd.c, NULL, R, C),
        MP_OK);
    cr_assert_eq(
        p->gpu->ops->layernorm_bwd(p->gpu, dx.g, NULL, NULL, dy.g, x.g, mean.g, rstd.g, w.g, R, C),
        MP_OK);
    cr_assert_eq(
        p->gpu->ops->layernorm_bwd(p->gpu, NULL, dw.g, db.g, dy.g, x.g, mean.g, rstd.g, NULL, R, C),
        MP_OK);
    expect_twin(p, &dx, FLOOR_NORMWISE, TOL_SEQ_BWD, "layernorm_bwd dx");
    expect_twin(p, &dw, FLOOR_NORMWISE, TOL_SEQ_BWD, "layernorm_bwd dw");
    expect_twin(p, &db, FLOOR_NORMWISE, TOL_FP32, "layernorm_bwd db");
    twin_free(p, &x);
    twin_free(p, &w);
    twin_free(p, &b);
    twin_free(p, &y);
    twin_free(p, &mean);
    twin_free(p, &rstd);
    twin_free(p, &dy);
    twin_free(p, &dx);
    twin_free(p, &dw);
    twin_free(p, &db);
}

Test(cuda, layernorm_matches_cpu)
{
    pair_t p;
    pair_open(&p, false);
    check_layernorm(&p, 37, 24, 2100);
    check_layernorm(&p, 5, 1, 2110);     /* C = 1: y = b */
    check_layernorm(&p, 512, 128, 2120); /* the GPT demo */
    check_layernorm(&p, 9, 1000, 2130);  /* rows longer than a block of threads */
    pair_close(&p);
}

static void check_attention(pair_t *p, int64_t B, int64_t T, int64_t H, int64_t D, uint64_t seed)
{
    const int64_t R = B * T, C = H * D;
    twin_t qkv = twin_rand(p, R * 3 * C, seed, 0.05f, 1.5f);
    twin_t out = twin_new(p, R * C, NULL), att = twin_new(p, B * H * T * T, NULL);
    cr_assert_eq(p->cpu->ops->attn_fwd(p->cpu, out.c, att.c, qkv.c, B, T, H, D), MP_OK);
    cr_assert_eq(p->gpu->ops->attn_fwd(p->gpu, out.g, att.g, qkv.g, B, T, H, D), MP_OK);
    char what[96];
    snprintf(what, sizeof what, "attn_fwd out B=%lld T=%lld H=%lld D=%lld", (long long)B,
             (long long)T, (long long)H, (long long)D);
    expect_twin(p, &out, FLOOR_NORMWISE, TOL_FP32, what);
    expect_twin(p, &att, FLOOR_NORMWISE, TOL_FP32, "attn_fwd att (0 above the diagonal)");
    twin_t dout = twin_rand(p, R * C, seed + 1, 0.1f, 1.0f);
    twin_t dqkv = twin_rand(p, R * 3 * C, seed + 2, 0.1f, 1.0f);
    cr_assert_eq(p->cpu->ops->attn_bwd(p->cpu, dqkv.c, dout.c, qkv.c, att.c, B, T, H, D), MP_OK);
    cr_assert_eq(p->gpu->ops->attn_bwd(p->gpu, dqkv.g, dout.g, qkv.g, att.g, B, T, H, D), MP_OK);
    snprintf(what, sizeof what, "attn_bwd dqkv B=%lld T=%lld H=%lld D=%lld", (long long)B,
             (long long)T, (long long)H, (long long)D);
    expect_twin(p, &dqkv, FLOOR_NORMWISE, TOL_SEQ_BWD, what);
    twin_free(p, &qkv);
    twin_free(p, &out);
    twin_free(p, &att);
    twin_free(p, &dout);
    twin_free(p, &dqkv);
}

Test(cuda, attention_matches_cpu, .timeout = 120)
{
    pair_t p;
    pair_open(&p, false);
    check_attention(&p, 1, 1, 1, 3, 2200);    /* T = 1 */
    check_attention(&p, 2, 7, 3, 5, 2210);    /* C = 15 */
    check_attention(&p, 3, 9, 1, 24, 2220);   /* one head */
    check_attention(&p, 8, 64, 4, 32, 2230);  /* the GPT demo */
    check_attention(&p, 2, 300, 2, 64, 2240); /* rows longer than a block of threads */
    pair_close(&p);
}

static void check_xent_vp(pair_t *p, int64_t R, int64_t V, int64_t v0, int64_t Vl, uint64_t seed)
{
    float *hl = host_rand(R * Vl, seed, 0.1f, 30.0f);
    int32_t *lab = mp_malloc((size_t)R * sizeof(int32_t));
    for (int64_t r = 0; r < R; r++) {
        lab[r] = (int32_t)((int64_t)(mp_init_u01(seed, 3, 0, (uint64_t)r) * (float)V) % V);
    }
    twin_t logits = twin_new(p, R * Vl, hl);
    int32_t *lc = dev_put(p->cpu, lab, (size_t)R * sizeof(int32_t));
    int32_t *lg = dev_put(p->gpu, lab, (size_t)R * sizeof(int32_t));
    twin_t mx = twin_new(p, R, NULL);
    cr_assert_eq(p->cpu->ops->xent_vp_max(p->cpu, mx.c, logits.c, R, Vl), MP_OK);
    cr_assert_eq(p->gpu->ops->xent_vp_max(p->gpu, mx.g, logits.g, R, Vl), MP_OK);
    expect_twin(p, &mx, FLOOR_ELEMENTWISE, 0.0, "xent_vp_max (exact)");
    /* The combined maxima and sums come from the caller: give both sides the
     * same ones (the CPU's, shifted as another shard's larger maximum would). */
    float *gm = dev_get(p->cpu, mx.c, R);
    for (int64_t r = 0; r < R; r++) {
        gm[r] += r % 3 == 0 ? 2.5f : 0.0f;
    }
    twin_t gmax = twin_new(p, R, gm);
    twin_t se = twin_new(p, R, NULL), tg = twin_new(p, R, NULL);
    cr_assert_eq(p->cpu->ops->xent_vp_sumexp(p->cpu, se.c, tg.c, logits.c, gmax.c, lc, R, Vl, v0),
                 MP_OK);
    cr_assert_eq(p->gpu->ops->xent_vp_sumexp(p->gpu, se.g, tg.g, logits.g, gmax.g, lg, R, Vl, v0),
                 MP_OK);
    expect_twin(p, &se, FLOOR_ELEMENTWISE, TOL_FP32, "xent_vp_sumexp sumexp");
    expect_twin(p, &tg, FLOOR_ELEMENTWISE, 0.0, "xent_vp_sumexp target (exact)");
    float *gs = dev_get(p->cpu, se.c, R);
    for (int64_t r = 0; r < R; r++) {
        gs[r] *= 1.75f; /* the other shards' share */
    }
    twin_t gsum = twin_new(p, R, gs);
    twin_t dl = twin_rand(p, R * Vl, seed + 1, 0.1f, 1.0f);
    cr_assert_eq(p->cpu->ops->xent_vp_bwd(p->cpu, dl.c, logits.c, gmax.c, gsum.c, lc, R, Vl, v0,
                                          1.0f / (float)R),
                 MP_OK);
    cr_assert_eq(p->gpu->ops->xent_vp_bwd(p->gpu, dl.g, logits.g, gmax.g, gsum.g, lg, R, Vl, v0,
                                          1.0f / (float)R),
                 MP_OK);
    expect_twin(p, &dl, FLOOR_ELEMENTWISE, TOL_FP32, "xent_vp_bwd dlogits");
    twin_free(p, &logits);
    twin_free(p, &mx);
    twin_free(p, &gmax);
    twin_free(p, &se);
    twin_free(p, &tg);
    twin_free(p, &gsum);
    twin_free(p, &dl);
    p->cpu->ops->free(p->cpu, lc);
    p->gpu->ops->free(p->gpu, lg);
    mp_free(gm);
    mp_free(gs);
    mp_free(lab);
    mp_free(hl);
}

Test(cuda, vocab_parallel_xent_matches_cpu)
{
    pair_t p;
    pair_open(&p, false);
    check_xent_vp(&p, 37, 11, 0, 11, 2300);      /* one shard: the whole vocab */
    check_xent_vp(&p, 37, 300, 100, 150, 2310);  /* a middle shard: some labels elsewhere */
    check_xent_vp(&p, 512, 256, 128, 128, 2320); /* the GPT demo, tp = 2 */
    check_xent_vp(&p, 4, 2000, 0, 1000, 2330);   /* rows longer than a block of threads */
    pair_close(&p);
}

Test(cuda, sequence_ops_refuse_bad_arguments)
{
    pair_t p;
    pair_open(&p, false);
    mp_backend_t *be = p.gpu;
    float *a = be->ops->alloc(be, 256 * sizeof(float));
    cr_assert_not_null(a);
    cr_assert_eq(be->ops->pos_add(be, a, a + 64, 6, 4, 2), MP_ERR_INVAL, "T = 4 does not divide 6");
    cr_assert_eq(be->ops->layernorm_fwd(be, a, a + 64, a + 72, a, a + 80, a + 88, 2, 4, 1e-5f),
                 MP_ERR_INVAL, "y aliasing x");
    cr_assert_eq(be->ops->attn_fwd(be, a, a + 64, a + 128, 1, 2, 0, 4), MP_ERR_INVAL, "H = 0");
    cr_assert_eq(be->ops->xent_vp_max(be, a, a + 64, 2, 0), MP_ERR_INVAL, "Vl = 0");
    cr_assert_eq(be->ops->embed_fwd(be, a, NULL, a + 64, 2, 4, 0, 4), MP_ERR_INVAL, "NULL ids");
    be->ops->free(be, a);
    pair_close(&p);
}

/* The optimizer steps report a gradient that is not finite, as the CPU's. */
Test(cuda, steps_report_a_gradient_that_is_not_finite)
{
    pair_t p;
    pair_open(&p, false);
    enum { N = 5000 };
    float *h = mp_calloc(N, sizeof(float));
    cr_assert_not_null(h);
    mp_optim_hp_t hs = {.lr = 0.1f, .momentum = 0.9f, .step = 1};
    mp_optim_hp_t ha = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .step = 1};
    float *w = dev_put(p.gpu, h, N * sizeof(float)), *m = dev_put(p.gpu, h, N * sizeof(float));
    float *v = dev_put(p.gpu, h, N * sizeof(float));
    for (int k = 0; k < 3; k++) {
        for (int64_t i = 0; i < N; i++) {
            h[i] = 1e30f;
        }
        float *g = dev_put(p.gpu, h, N * sizeof(float));
        cr_assert_eq(p.gpu->ops->sgd_step(p.gpu, w, g, m, N, &hs), MP_OK);
        cr_assert_eq(p.gpu->ops->adamw_step(p.gpu, w, g, m, v, N, &ha), MP_OK);
        p.gpu->ops->free(p.gpu, g);
        h[k == 0 ? 0 : k == 1 ? N / 2 : N - 1] = k == 0 ? NAN : k == 1 ? INFINITY : -INFINITY;
        g = dev_put(p.gpu, h, N * sizeof(float));
        cr_assert_eq(p.gpu->ops->sgd_step(p.gpu, w, g, m, N, &hs), MP_ERR_NONFINITE);
        cr_assert_eq(p.gpu->ops->adamw_step(p.gpu, w, g, m, v, N, &ha), MP_ERR_NONFINITE);
        p.gpu->ops->free(p.gpu, g);
    }
    p.gpu->ops->free(p.gpu, w);
    p.gpu->ops->free(p.gpu, m);
    p.gpu->ops->free(p.gpu, v);
    mp_free(h);
    pair_close(&p);
}
