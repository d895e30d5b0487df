/*
 * test_gemm.c - the CPU backend's GEMM wrapper and linear_fwd against naive
 * double loops: all four transpose combinations, odd shapes including 1,
 * leading dimensions wider than the rows, alpha/beta, BLAS beta = 0
 * semantics, and argument checks.  Single-threaded test process.
 *
 * Tolerance: |C - ref| <= 1e-6 * (1 + sum_k |alpha a b| + |beta c|), i.e. a
 * few float ulps of the magnitudes summed (fp32 GEMM against a double sum).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "common/alloc.h"
#include "gpu/backend.h"

static uint64_t rng_state = 0x1234567ull;

static float urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static mp_backend_t *be;

static void setup(void)
{
    cr_assert_eq(mp_backend_cpu_create(1, &be), MP_OK);
}

static void teardown(void)
{
    mp_backend_destroy(be);
}

TestSuite(gemm, .init = setup, .fini = teardown);

/* element (r, c) of op(M) where M is stored row-major with leading dimension ld. */
static double at(const float *M, int64_t ld, mp_op_t op, int64_t r, int64_t c)
{
    return op == MP_OP_N ? M[r * ld + c] : M[c * ld + r];
}

/* rows x cols values of urand, row after row, at stride ld. */
static void fill(float *X, int64_t rows, int64_t cols, int64_t ld)
{
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < ld; c++) {
            X[r * ld + c] = c < cols ? urand() : 7.0f;
        }
    }
}

/* C = alpha op(A) op(B) + beta C against the double loop; returns C (the
 * caller frees it) so that two layouts of the same product can be compared. */
static float *check_gemm_ld(mp_op_t ta, mp_op_t tb, int64_t M, int64_t N, int64_t K, int64_t lda,
                            int64_t ldb, int64_t ldc, float alpha, float beta)
{
    int64_t a_rows = ta == MP_OP_N ? M : K;
    int64_t b_rows = tb == MP_OP_N ? K : N;
    float *A = be->ops->alloc(be, sizeof(float) * (size_t)(a_rows * lda));
    float *B = be->ops->alloc(be, sizeof(float) * (size_t)(b_rows * ldb));
    float *C = be->ops->alloc(be, sizeof(float) * (size_t)(M * ldc));
    float *C0 = be->ops->alloc(be, sizeof(float) * (size_t)(M * ldc));
    /* The same numbers whatever the strides; a stride's spare columns hold 7. */
    fill(A, a_rows, ta == MP_OP_N ? K : M, lda);
    fill(B, b_rows, tb == MP_OP_N ? N : K, ldb);
    fill(C0, M, N, ldc);
    for (int64_t r = 0; r < M; r++) {
        for (int64_t c = N; c < ldc; c++) {
            C0[r * ldc + c] = urand();
        }
    }
    memcpy(C, C0, sizeof(float) * (size_t)(M * ldc));

    cr_assert_eq(be->ops->gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), MP_OK);

    for (int64_t r = 0; r < M; r++) {
        for (int64_t c = 0; c < ldc; c++) {
            float got = C[r * ldc + c];
            if (c >= N) {
                cr_assert_eq(got, C0[r * ldc + c], "padding column %lld was written", (long long)c);
                continue;
            }
            double ref = (double)beta * C0[r * ldc + c], mag = fabs(ref);
            for (int64_t k = 0; k < K; k++) {
                double t = (double)alpha * at(A, lda, ta, r, k) * at(B, ldb, tb, k, c);
                ref += t;
                mag += fabs(t);
            }
            cr_assert_leq(fabs(got - ref), 1e-6 * (1.0 + mag),
                          "ta=%d tb=%d M=%lld N=%lld K=%lld C[%lld,%lld] = %.9g, want %.9g", ta, tb,
                          (long long)M, (long long)N, (long long)K, (long long)r, (long long)c,
                          got, ref);
        }
    }
    be->ops->free(be, A);
    be->ops->free(be, B);
    be->ops->free(be, C0);
    return C;
}

static void check_gemm(mp_op_t ta, mp_op_t tb, int64_t M, int64_t N, int64_t K, int64_t pad,
                       float alpha, float beta)
{
    int64_t a_cols = ta == MP_OP_N ? K : M, b_cols = tb == MP_OP_N ? N : K;
    be->ops->free(be, check_gemm_ld(ta, tb, M, N, K, a_cols + pad, b_cols + pad, N + pad, alpha,
                                    beta));
}

Test(gemm, all_transposes_match_naive_on_odd_shapes)
{
    static const int64_t shapes[][3] = {
        {1, 1, 1}, {1, 7, 3}, {5, 1, 9}, {13, 17, 1}, {3, 5, 7}, {33, 65, 129}, {70, 64, 31},
    };
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                for (int64_t pad = 0; pad <= 3; pad += 3) {
                    check_gemm((mp_op_t)ta, (mp_op_t)tb, shapes[s][0], shapes[s][1],
                               shapes[s][2], pad, 1.0f, 0.0f);
                    check_gemm((mp_op_t)ta, (mp_op_t)tb, shapes[s][0], shapes[s][1],
                               shapes[s][2], pad, -0.75f, 1.25f);
                }
            }
        }
    }
}

/*
 * Row strides that are multiples of 64 or 512 floats send T,N and N,N
 * operands through the backend's padded copies (backend_cpu.c,
 * cpu_gemm_pad): the product is still the naive one, with operands narrower
 * than their stride, and it has the same bits as the same product read at
 * a stride that is not copied (rng_state is reset so that both see the same
 * numbers).
 */
Test(gemm, padded_operand_copies_change_no_bits)
{
    static const int64_t cases[][6] = {
        /* ta, tb, M, N, K, extra columns of stride beyond the width */
        {0, 0, 32, 512, 40, 0},   {0, 0, 7, 500, 33, 12}, {0, 0, 512, 1024, 9, 0},
        {1, 0, 128, 64, 19, 0},   {1, 0, 100, 60, 32, 28}, {1, 0, 256, 512, 5, 0},
        {1, 1, 128, 64, 19, 0},   {0, 1, 64, 128, 64, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mp_op_t ta = (mp_op_t)cases[i][0], tb = (mp_op_t)cases[i][1];
        int64_t M = cases[i][2], N = cases[i][3], K = cases[i][4], extra = cases[i][5];
        int64_t a_cols = ta == MP_OP_N ? K : M, b_cols = tb == MP_OP_N ? N : K;
        rng_state = 99;
        float *padded = check_gemm_ld(ta, tb, M, N, K, a_cols + extra, b_cols + extra, N, 0.5f,
                                      1.0f);
        rng_state = 99;
        float *odd = check_gemm_ld(ta, tb, M, N, K, a_cols + extra + 1, b_cols + extra + 1, N,
                                   0.5f, 1.0f);
        for (int64_t r = 0; r < M; r++) {
            cr_assert_eq(memcmp(padded + r * N, odd + r * N, sizeof(float) * (size_t)N), 0,
                         "case %zu: row %lld differs between strides", i, (long long)r);
        }
        be->ops->free(be, padded);
        be->ops->free(be, odd);
    }
}

Test(gemm, beta_zero_does_not_read_c)
{
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1};
    float C[4] = {NAN, NAN, INFINITY, NAN};
    /* [2x3]·[3x2] = {{1+3, 2+3}, {4+6, 5+6}}. */
    cr_assert_eq(be->ops->gemm(be, MP_OP_N, MP_OP_N, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2), MP_OK);
    cr_assert_eq(C[0], 4.0f);
    cr_assert_eq(C[1], 5.0f);
    cr_assert_eq(C[2], 10.0f);
    cr_assert_eq(C[3], 11.0f);
}

Test(gemm, k_zero_scales_c_by_beta)
{
    float C[3] = {1.0f, -2.0f, 4.0f};
    cr_assert_eq(be->ops->gemm(be, MP_OP_N, MP_OP_N, 1, 3, 0, 1.0f, NULL, 1, NULL, 3, 0.5f, C, 3),
                 MP_OK);
    cr_assert_eq(C[0], 0.5f);
    cr_assert_eq(C[1], -1.0f);
    cr_assert_eq(C[2], 2.0f);
    float D[2] = {NAN, 3.0f};
    cr_assert_eq(be->ops->gemm(be, MP_OP_T, MP_OP_T, 1, 2, 0, 1.0f, NULL, 1, NULL, 1, 0.0f, D, 2),
                 MP_OK);
    cr_assert_eq(D[0], 0.0f);
    cr_assert_eq(D[1], 0.0f);
}

Test(gemm, rejects_bad_arguments)
{
    float A[4] = {0}, B[4] = {0}, C[4] = {0};
    /* lda must cover op(A)'s stored row width (K for N, M for T). */
    cr_assert_eq(be->ops->gemm(be, MP_OP_N, MP_OP_N, 2, 2, 2, 1.0f, A, 1, B, 2, 0.0f, C, 2),
                 MP_ERR_INVAL);
    cr_assert_eq(be->ops->gemm(be, MP_OP_N, MP_OP_T, 2, 2, 2, 1.0f, A, 2, B, 1, 0.0f, C, 2),
                 MP_ERR_INVAL);
    cr_assert_eq(be->ops->gemm(be, MP_OP_N, MP_OP_N, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 1),
                 MP_ERR_INVAL);
    cr_assert_eq(be->ops->gemm(be, MP_OP_N, MP_OP_N, -1, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                 MP_ERR_INVAL);
    /* M = 0 or N = 0 is an empty product, not an error. */
    cr_assert_eq(be->ops->gemm(be, MP_OP_N, MP_OP_N, 0, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2), MP_OK);
}

static void check_linear_fwd(int64_t B, int64_t I, int64_t O, bool bias)
{
    float *X = be->ops->alloc(be, sizeof(float) * (size_t)(B * I));
    float *W = be->ops->alloc(be, sizeof(float) * (size_t)(I * O));
    float *b = be->ops->alloc(be, sizeof(float) * (size_t)O);
    float *Z = be->ops->alloc(be, sizeof(float) * (size_t)(B * O));
    for (int64_t i = 0; i < B * I; i++) {
        X[i] = urand();
    }
    for (int64_t i = 0; i < I * O; i++) {
        W[i] = urand();
    }
    for (int64_t i = 0; i < O; i++) {
        b[i] = urand();
    }
    for (int64_t i = 0; i < B * O; i++) {
        Z[i] = NAN; /* overwritten, never read */
    }
    cr_assert_eq(be->ops->linear_fwd(be, Z, X, W, bias ? b : NULL, B, I, O), MP_OK);
    for (int64_t r = 0; r < B; r++) {
        for (int64_t c = 0; c < O; c++) {
            double ref = bias ? b[c] : 0.0, mag = fabs(ref);
            for (int64_t k = 0; k < I; k++) {
                ref += (double)X[r * I + k] * W[k * O + c];
                mag += fabs((double)X[r * I + k] * W[k * O + c]);
            }
            cr_assert_leq(fabs(Z[r * O + c] - ref), 1e-6 * (1.0 + mag),
                          "B=%lld I=%lld O=%lld bias=%d Z[%lld,%lld] = %.9g, want %.9g",
                          (long long)B, (long long)I, (long long)O, bias, (long long)r,
                          (long long)c, Z[r * O + c], ref);
        }
    }
    be->ops->free(be, X);
    be->ops->free(be, W);
    be->ops->free(be, b);
    be->ops->free(be, Z);
}

Test(gemm, linear_fwd_matches_naive)
{
    check_linear_fwd(1, 1, 1, true);
    check_linear_fwd(3, 5, 7, true);
    check_linear_fwd(3, 5, 7, false);
    check_linear_fwd(1, 9, 1, true);
    /* B >= 64 with O a multiple of 64 takes the padded-W path, twice (the
     * scratch is reused and then grown). */
    check_linear_fwd(70, 5, 64, true);
    check_linear_fwd(64, 3, 128, false);
    check_linear_fwd(65, 33, 192, true);
}

Test(gemm, linear_bwd_accumulates_naive_products)
{
    const int64_t B = 4, I = 3, O = 5;
    float X[12], W[15], dZ[20], dX[12], dW[15], db[5];
    float dX0[12], dW0[15], db0[5];
    for (int i = 0; i < 12; i++) {
        X[i] = urand();
        dX[i] = dX0[i] = urand();
    }
    for (int i = 0; i < 15; i++) {
        W[i] = urand();
        dW[i] = dW0[i] = urand();
    }
    for (int i = 0; i < 20; i++) {
        dZ[i] = urand();
    }
    for (int i = 0; i < 5; i++) {
        db[i] = db0[i] = urand();
    }
    cr_assert_eq(be->ops->linear_bwd(be, dX, dW, db, dZ, X, W, B, I, O), MP_OK);
    for (int64_t r = 0; r < B; r++) {
        for (int64_t i = 0; i < I; i++) {
            double ref = dX0[r * I + i];
            for (int64_t o = 0; o < O; o++) {
                ref += (double)dZ[r * O + o] * W[i * O + o];
            }
            cr_assert_float_eq(dX[r * I + i], ref, 1e-5);
        }
    }
    for (int64_t i = 0; i < I; i++) {
        for (int64_t o = 0; o < O; o++) {
            double ref = dW0[i * O + o];
            for (int64_t r = 0; r < B; r++) {
                ref += (double)X[r * I + i] * dZ[r * O + o];
            }
            cr_assert_float_eq(dW[i * O + o], ref, 1e-5);
        }
    }
    for (int64_t o = 0; o < O; o++) {
        double ref = db0[o];
        for (int64_t r = 0; r < B; r++) {
            ref += dZ[r * O + o];
        }
        cr_assert_float_eq(db[o], ref, 1e-5);
    }
    /* NULL dX and db are skipped; dW still accumulates. */
    memcpy(dW0, dW, sizeof dW);
    cr_assert_eq(be->ops->linear_bwd(be, NULL, dW, NULL, dZ, X, W, B, I, O), MP_OK);
    for (int64_t i = 0; i < I * O; i++) {
        cr_assert_neq(dW[i], dW0[i]);
    }
}

Test(gemm, two_threads_agree_with_one)
{
#if defined(__SANITIZE_THREAD__)
    cr_skip_test("libgomp is not instrumented for ThreadSanitizer");
#endif
    /* A second backend with 2 threads on the same data: same values within
     * the GEMM tolerance (oneDNN may block K differently per thread count). */
    mp_backend_t *be2;
    cr_assert_eq(mp_backend_cpu_create(2, &be2), MP_OK);
    cr_assert_eq(be2->threads, 2);
    const int64_t B = 96, I = 40, O = 128;
    float *X = be->ops->alloc(be, sizeof(float) * B * I), *W = be->ops->alloc(be, sizeof(float) * I * O);
    float *b = be->ops->alloc(be, sizeof(float) * O);
    float *Z1 = be->ops->alloc(be, sizeof(float) * B * O), *Z2 = be->ops->alloc(be, sizeof(float) * B * O);
    for (int64_t i = 0; i < B * I; i++) {
        X[i] = urand();
    }
    for (int64_t i = 0; i < I * O; i++) {
        W[i] = urand();
    }
    for (int64_t i = 0; i < O; i++) {
        b[i] = urand();
    }
    cr_assert_eq(be->ops->linear_fwd(be, Z1, X, W, b, B, I, O), MP_OK);
    cr_assert_eq(be2->ops->linear_fwd(be2, Z2, X, W, b, B, I, O), MP_OK);
    for (int64_t i = 0; i < B * O; i++) {
        cr_assert_float_eq(Z1[i], Z2[i], 1e-5);
    }
    be->ops->free(be, X);
    be->ops->free(be, W);
    be->ops->free(be, b);
    be->ops->free(be, Z1);
    be->ops->free(be, Z2);
    mp_backend_destroy(be2);
}

typedef struct {
    int threads;
    const float *X, *W, *b, *ref;
    int64_t B, I, O;
    int bad; /* results outside tolerance, or failed calls */
} conc_arg_t;

static void *conc_main(void *p)
{
    conc_arg_t *a = p;
    mp_backend_t *e;
    if (mp_backend_cpu_create(a->threads, &e) != MP_OK) {
        a->bad = 1;
        return NULL;
    }
    float *Z = e->ops->alloc(e, sizeof(float) * (size_t)(a->B * a->O));
    for (int it = 0; it < 20 && Z != NULL; it++) {
        if (e->ops->linear_fwd(e, Z, a->X, a->W, a->b, a->B, a->I, a->O) != MP_OK) {
            a->bad++;
            continue;
        }
        for (int64_t i = 0; i < a->B * a->O; i++) {
            a->bad += fabsf(Z[i] - a->ref[i]) > 1e-5f * (1.0f + fabsf(a->ref[i]));
        }
        /* The mechanism: oneDNN (OpenMP) sizes its teams from this thread's
         * own nthreads setting, which the backend set to its count. */
        a->bad += omp_get_max_threads() != a->threads;
    }
    e->ops->free(e, Z);
    mp_backend_destroy(e);
    return NULL;
}

Test(gemm, backends_on_different_threads_do_not_interfere)
{
#if defined(__SANITIZE_THREAD__)
    cr_skip_test("libgomp is not instrumented for ThreadSanitizer");
#endif
    /* Two executor-like threads, one with a 1-thread and one with a
     * 2-thread backend, run GEMMs at the same time; both stay right. */
    const int64_t B = 80, I = 64, O = 192;
    float *X = be->ops->alloc(be, sizeof(float) * B * I), *W = be->ops->alloc(be, sizeof(float) * I * O);
    float *b = be->ops->alloc(be, sizeof(float) * O), *ref = be->ops->alloc(be, sizeof(float) * B * O);
    for (int64_t i = 0; i < B * I; i++) {
        X[i] = urand();
    }
    for (int64_t i = 0; i < I * O; i++) {
        W[i] = urand();
    }
    for (int64_t i = 0; i < O; i++) {
        b[i] = urand();
    }
    cr_assert_eq(be->ops->linear_fwd(be, ref, X, W, b, B, I, O), MP_OK);
    conc_arg_t args[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        args[k] = (conc_arg_t){.threads = k + 1, .X = X, .W = W, .b = b, .ref = ref, .B = B,
                               .I = I, .O = O};
        cr_assert_eq(pthread_create(&th[k], NULL, conc_main, &args[k]), 0);
    }
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(pthread_join(th[k], NULL), 0);
        cr_assert_eq(args[k].bad, 0, "backend with %d threads: %d bad results", k + 1,
                     args[k].bad);
    }
    be->ops->free(be, X);
    be->ops->free(be, W);
    be->ops->free(be, b);
    be->ops->free(be, ref);
}

Test(gemm, create_rejects_zero_threads)
{
    mp_backend_t *b2 = NULL;
    cr_assert_eq(mp_backend_cpu_create(0, &b2), MP_ERR_INVAL);
    cr_assert_null(b2);
}

/* Z = X W against the double loop, with Z's bits returned in Z. */
static void expect_xw(const float *X, const float *W, const float *Z, int64_t B, int64_t I,
                      int64_t O, const char *when)
{
    for (int64_t r = 0; r < B; r++) {
        for (int64_t c = 0; c < O; c++) {
            double ref = 0.0, mag = 0.0;
            for (int64_t k = 0; k < I; k++) {
                ref += (double)X[r * I + k] * W[k * O + c];
                mag += fabs((double)X[r * I + k] * W[k * O + c]);
            }
            cr_assert_leq(fabs(Z[r * O + c] - ref), 1e-6 * (1.0 + mag),
                          "%s: Z[%lld,%lld] = %.9g, want %.9g", when, (long long)r, (long long)c,
                          Z[r * O + c], ref);
        }
    }
}

/*
 * Weights in a held range (params_hold) are read through a padded copy
 * that lives until an op writes into them: every writer the contract names
 * (upload, copy, zero, the optimizer steps) makes the next product use the
 * new values, the N,T product of the input gradient reads the same copy,
 * and after params_release the memory is an ordinary operand again.
 */
Test(gemm, held_weights_follow_every_write)
{
    enum { B = 32, I = 40, O = 512 };
    float *X = be->ops->alloc(be, sizeof(float) * B * I);
    float *P = be->ops->alloc(be, sizeof(float) * (I * O + 64)); /* W and room after it */
    float *W = P, *G = be->ops->alloc(be, sizeof(float) * I * O);
    float *Z = be->ops->alloc(be, sizeof(float) * B * O);
    float *dZ = be->ops->alloc(be, sizeof(float) * B * O), *dX = be->ops->alloc(be, 4 * B * I);
    float *host = mp_malloc(sizeof(float) * I * O);
    fill(X, B, I, I);
    fill(W, I, O, O);
    fill(G, I, O, O);
    fill(dZ, B, O, O);
    be->ops->params_hold(be, P, sizeof(float) * (I * O + 64));

    cr_assert_eq(be->ops->linear_fwd(be, Z, X, W, NULL, B, I, O), MP_OK);
    expect_xw(X, W, Z, B, I, O, "first use");
    cr_assert_eq(be->ops->linear_fwd(be, Z, X, W, NULL, B, I, O), MP_OK);
    expect_xw(X, W, Z, B, I, O, "the kept copy");

    /* dX = dZ W^T through the same copy. */
    memset(dX, 0, sizeof(float) * B * I);
    cr_assert_eq(be->ops->linear_bwd(be, dX, NULL, NULL, dZ, X, W, B, I, O), MP_OK);
    for (int64_t r = 0; r < B; r++) {
        for (int64_t k = 0; k < I; k++) {
            double ref = 0.0, mag = 0.0;
            for (int64_t c = 0; c < O; c++) {
                ref += (double)dZ[r * O + c] * W[k * O + c];
                mag += fabs((double)dZ[r * O + c] * W[k * O + c]);
            }
            cr_assert_leq(fabs(dX[r * I + k] - ref), 1e-6 * (1.0 + mag), "dX[%lld,%lld]",
                          (long long)r, (long long)k);
        }
    }

    for (int64_t i = 0; i < I * O; i++) {
        host[i] = urand();
    }
    cr_assert_eq(be->ops->upload(be, W + 7 * O, host, sizeof(float) * O), MP_OK); /* one row */
    cr_assert_eq(be->ops->linear_fwd(be, Z, X, W, NULL, B, I, O), MP_OK);
    expect_xw(X, W, Z, B, I, O, "after upload");

    cr_assert_eq(be->ops->copy(be, W, host, sizeof(float) * I * O), MP_OK);
    cr_assert_eq(be->ops->linear_fwd(be, Z, X, W, NULL, B, I, O), MP_OK);
    expect_xw(X, W, Z, B, I, O, "after copy");

    mp_optim_hp_t hp = {.lr = 0.5f, .step = 1};
    cr_assert_eq(be->ops->sgd_step(be, W, G, NULL, I * O, &hp), MP_OK);
    cr_assert_eq(be->ops->linear_fwd(be, Z, X, W, NULL, B, I, O), MP_OK);
    expect_xw(X, W, Z, B, I, O, "after sgd_step");

    float *m = be->ops->alloc(be, sizeof(float) * I * O), *v = be->ops->alloc(be, 4 * I * O);
    memset(m, 0, sizeof(float) * I * O);
    memset(v, 0, sizeof(float) * I * O);
    mp_optim_hp_t ah = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .step = 1};
    cr_assert_eq(be->ops->adamw_step(be, W, G, m, v, I * O, &ah), MP_OK);
    cr_assert_eq(be->ops->linear_fwd(be, Z, X, W, NULL, B, I, O), MP_OK);
    expect_xw(X, W, Z, B, I, O, "after adamw_step");

    cr_assert_eq(be->ops->zero(be, W + 3, sizeof(float) * 5), MP_OK);
    cr_assert_eq(be->ops->linear_fwd(be, Z, X, W, NULL, B, I, O), MP_OK);
    expect_xw(X, W, Z, B, I, O, "after zero");

    /* Released: a write outside the backend's ops is seen again. */
    be->ops->params_release(be, P);
    W[11] = 3.0f;
    cr_assert_eq(be->ops->linear_fwd(be, Z, X, W, NULL, B, I, O), MP_OK);
    expect_xw(X, W, Z, B, I, O, "after release");

    mp_free(host);
    be->ops->free(be, m);
    be->ops->free(be, v);
    be->ops->free(be, X);
    be->ops->free(be, P);
    be->ops->free(be, G);
    be->ops->free(be, Z);
    be->ops->free(be, dZ);
    be->ops->free(be, dX);
}
