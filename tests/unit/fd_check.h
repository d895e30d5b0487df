/*
 * fd_check.h - the finite-difference harness shared by the layer tests
 * (test_layers.c, test_seq_layers.c): a deterministic random source,
 * tensors kept both as fp32 (what a backend sees) and as double (what a
 * reference and the central differences perturb), and the gradient check.
 * Header-only (static functions): each test file gets its own copy and its
 * own random stream.
 */
#ifndef MP_TESTS_FD_CHECK_H
#define MP_TESTS_FD_CHECK_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FD_H 1e-5
#define GRAD_TOL 1e-4
#define FWD_TOL 1e-5

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* Uniform in [-1, 1). */
static inline double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
}

typedef struct {
    int64_t n;
    float *f;
    double *d;
} ten_t;

static inline ten_t ten_new(int64_t n, double scale)
{
    ten_t t = {n, calloc((size_t)(n > 0 ? n : 1), sizeof(float)),
               calloc((size_t)(n > 0 ? n : 1), sizeof(double))};
    cr_assert(t.f != NULL && t.d != NULL);
    for (int64_t i = 0; i < n; i++) {
        t.f[i] = (float)(scale * urand());
        t.d[i] = t.f[i];
    }
    return t;
}

static inline void ten_free(ten_t *t)
{
    free(t->f);
    free(t->d);
}

static inline float *fbuf(int64_t n, double scale)
{
    float *p = calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    cr_assert(p != NULL);
    for (int64_t i = 0; i < n; i++) {
        p[i] = (float)(scale * urand());
    }
    return p;
}

static inline float *fcopy(const float *src, int64_t n)
{
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    cr_assert(p != NULL);
    memcpy(p, src, sizeof(float) * (size_t)n);
    return p;
}

static inline void expect_close(const char *what, int64_t i, double got, double want, double tol)
{
    cr_assert_leq(fabs(got - want), tol * (1.0 + fabs(want)), "%s[%lld] = %.9g, want %.9g", what,
                  (long long)i, got, want);
}

/* Checks grad (which started at g0) against d L / d t.d[i] by central differences. */
typedef double (*loss_fn)(void *ctx);

static inline void check_grad(const char *what, loss_fn L, void *ctx, ten_t *t, const float *grad,
                              const float *g0)
{
    for (int64_t i = 0; i < t->n; i++) {
        double keep = t->d[i];
        t->d[i] = keep + FD_H;
        double lp = L(ctx);
        t->d[i] = keep - FD_H;
        double lm = L(ctx);
        t->d[i] = keep;
        double fd = (lp - lm) / (2.0 * FD_H);
        expect_close(what, i, (double)grad[i] - (double)g0[i], fd, GRAD_TOL);
    }
}

#endif
