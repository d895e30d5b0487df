/*
 * test_optim.c - the CPU backend's SGD and AdamW steps: against hand-written
 * double implementations of torch.optim's formulas over several steps
 * (tolerance 2e-6 relative to 1 + |p|: fp32 rounding of 6 steps), and bit
 * for bit against torch.optim 1.13.1 (Debian's python3-torch, one thread, an
 * AVX2+FMA machine) on fixed inputs, which pins the order of operations and
 * the fused multiply-adds that ATen's CPU kernels use.  Single-threaded.
 *
 * The golden bits were printed by this script (n = 37, 4 steps):
 *   p0[i] = (i-17)/16; grad at step s: (((7i+3s) % 11) - 5)/8 + (i%3)/1024
 *   AdamW(lr=1e-3, betas=(0.9,0.999), eps=1e-8, weight_decay=0.01)
 *   AdamW(lr=0.05, betas=(0.8,0.95), eps=1e-6, weight_decay=0.1)
 *   SGD(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3)
 *   SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)
 *   SGD(lr=0.3)
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/backend.h"

static const uint32_t gold_adamw[37] = {0xbf87e0d1, 0xbf80370a, 0xbf7078a2, 0xbf5f7bd0, 0xbf503758, 0xbf404778, 0xbf2f83f0, 0xbf200122, 0xbf10126c, 0xbefeb63a, 0xbee149a7, 0xbebf895d, 0xbea0def2, 0xbe80f423, 0xbe3dfa3a, 0xbe00e2ce, 0xbd8246ec, 0x3af30ccb, 0x3d7fd744, 0x3dff6273, 0x3e428a1d, 0x3e7d66a8, 0x3ea07447, 0x3ebf1bd9, 0x3edf08ff, 0x3f00801c, 0x3f0fc49a, 0x3f1ff744, 0x3f307815, 0x3f3ffade, 0x3f4feb08, 0x3f60a102, 0x3f6f5745, 0x3f801c7b, 0x3f87c642, 0x3f8fc0fb, 0x3f983f63};
static const uint32_t gold_adamw_big[37] = {0xbf803dfa, 0xbf87be0d, 0xbf80c2c5, 0xbf43cc93, 0xbf558bd6, 0xbf49200b, 0xbf17dfc8, 0xbf1be5ad, 0xbf1217f8, 0xbec0f8bd, 0xbf0c75f0, 0xbea86fab, 0xbec5cc44, 0xbea9e35c, 0xbdbbd06d, 0xbe23cf45, 0xbde44d60, 0x3da3e397, 0x3d857927, 0x3dd41701, 0x3e97cfd1, 0x3e006b53, 0x3eb0d11b, 0x3e92e5ae, 0x3eaf4460, 0x3f151f24, 0x3f0360fb, 0x3f1ca3a5, 0x3f4110c5, 0x3f3d0a51, 0x3f471dd5, 0x3f787834, 0x3f4c7e2e, 0x3f828473, 0x3f7608c4, 0x3f81ffa8, 0x3fa0dc23};
static const uint32_t gold_sgd_momentum[37] = {0xbf85f7bf, 0xbf941e02, 0xbf80d5e8, 0xbf40d18a, 0xbf5d1e10, 0xbf368ddb, 0xbf1561aa, 0xbf12001c, 0xbf27a053, 0xbe948769, 0xbf1cb9b2, 0xbeb904bb, 0xbef057e4, 0xbea33779, 0xbd8b234a, 0xbe3437f3, 0xbccfb8f8, 0x3dd05bba, 0x3df07fc2, 0x3d06fc0e, 0x3eca52d7, 0x3d9ab311, 0x3ea71b6b, 0x3e5d04be, 0x3ebce8af, 0x3f1eabaa, 0x3f025f25, 0x3f29924b, 0x3f4a1b8b, 0x3f4d7d19, 0x3f387fd5, 0x3f8a9cc0, 0x3f42c384, 0x3f81cee4, 0x3f675143, 0x3f86f0bc, 0x3fa75ddf};
static const uint32_t gold_sgd_nesterov[37] = {0xbf8651a5, 0xbf8a0ce4, 0xbf74be3f, 0xbf4c0725, 0xbf537da2, 0xbf342218, 0xbf2b1914, 0xbf12e17d, 0xbf1e7052, 0xbed4f9de, 0xbf062618, 0xbebba858, 0xbec9caf9, 0xbe8b13e5, 0xbde9c033, 0xbe11255b, 0xbc9db9a3, 0x3c6d829e, 0x3de29674, 0x3d861fd6, 0x3e88a460, 0x3e2438d0, 0x3ea2c040, 0x3e93d344, 0x3ed354b4, 0x3f11fc46, 0x3f0a85c7, 0x3f2a467f, 0x3f32ea56, 0x3f4b21ed, 0x3f3ff846, 0x3f73867c, 0x3f57dd53, 0x3f804a36, 0x3f791def, 0x3f8c3cbc, 0x3fa09849};
static const uint32_t gold_sgd_plain[37] = {0xbf833333, 0xbf982667, 0xbf709999, 0xbf300000, 0xbf59e667, 0xbf1a3332, 0xbf433333, 0xbf038000, 0xbf2d6668, 0xbed9999a, 0xbf16b332, 0xbeae0000, 0xbf000000, 0xbe809999, 0xbb199986, 0xbe266666, 0x3db0ccce, 0xbd9e6667, 0x3e333334, 0x3c399993, 0x3e853333, 0x3dcccccc, 0x3eb29999, 0x3e3d9999, 0x3ee00000, 0x3f2fb334, 0x3f05cccc, 0x3f466666, 0x3f1c8000, 0x3f5c3334, 0x3f333334, 0x3f72e666, 0x3f48ffff, 0x3f84cccd, 0x3f5fb334, 0x3f8fb334, 0x3fb00000};

#define GOLD_N 37
#define GOLD_STEPS 4

static mp_backend_t *be;

static void setup(void)
{
    cr_assert_eq(mp_backend_cpu_create(1, &be), MP_OK);
}

static void teardown(void)
{
    mp_backend_destroy(be);
}

TestSuite(optim, .init = setup, .fini = teardown);

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static float urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

/* ---- double references of torch.optim's formulas ---------------------- */

static void sgd_ref(double *p, const double *g, double *buf, int64_t n, double lr, double mom,
                    double damp, double wd, bool nesterov, int64_t step)
{
    for (int64_t i = 0; i < n; i++) {
        double d = g[i] + wd * p[i];
        if (mom != 0.0) {
            buf[i] = step == 1 ? d : mom * buf[i] + (1.0 - damp) * d;
            d = nesterov ? d + mom * buf[i] : buf[i];
        }
        p[i] -= lr * d;
    }
}

static void adamw_ref(double *p, const double *g, double *m, double *v, int64_t n, double lr,
                      double b1, double b2, double eps, double wd, int64_t t)
{
    double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
    for (int64_t i = 0; i < n; i++) {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        p[i] -= (lr / bc1) * m[i] / (sqrt(v[i]) / sqrt(bc2) + eps);
    }
}

typedef struct {
    bool adamw;
    float lr, momentum, dampening, wd, beta1, beta2, eps;
    bool nesterov;
} optcase_t;

static void check_against_double(const optcase_t *oc, int64_t n, int steps)
{
    float *p = calloc((size_t)n, sizeof(float)), *g = calloc((size_t)n, sizeof(float));
    float *s1 = calloc((size_t)n, sizeof(float)), *s2 = calloc((size_t)n, sizeof(float));
    double *pd = calloc((size_t)n, sizeof(double)), *gd = calloc((size_t)n, sizeof(double));
    double *s1d = calloc((size_t)n, sizeof(double)), *s2d = calloc((size_t)n, sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        p[i] = urand();
        pd[i] = p[i];
    }
    mp_optim_hp_t hp = {.lr = oc->lr, .momentum = oc->momentum, .dampening = oc->dampening,
                        .weight_decay = oc->wd, .nesterov = oc->nesterov, .beta1 = oc->beta1,
                        .beta2 = oc->beta2, .eps = oc->eps};
    for (int t = 1; t <= steps; t++) {
        for (int64_t i = 0; i < n; i++) {
            g[i] = urand() * (i % 4 == 0 ? 1e-3f : 1.0f);
            gd[i] = g[i];
        }
        hp.step = t;
        if (oc->adamw) {
            cr_assert_eq(be->ops->adamw_step(be, p, g, s1, s2, n, &hp), MP_OK);
            adamw_ref(pd, gd, s1d, s2d, n, oc->lr, oc->beta1, oc->beta2, oc->eps, oc->wd, t);
        } else {
            cr_assert_eq(be->ops->sgd_step(be, p, g, oc->momentum != 0.0f ? s1 : NULL, n, &hp),
                         MP_OK);
            sgd_ref(pd, gd, s1d, n, oc->lr, oc->momentum, oc->dampening, oc->wd, oc->nesterov, t);
        }
        for (int64_t i = 0; i < n; i++) {
            cr_assert_leq(fabs(p[i] - pd[i]), 2e-6 * (1.0 + fabs(pd[i])),
                          "step %d p[%lld] = %.9g, want %.9g", t, (long long)i, p[i], pd[i]);
            if (oc->adamw || oc->momentum != 0.0f) {
                cr_assert_leq(fabs(s1[i] - s1d[i]), 2e-6 * (1.0 + fabs(s1d[i])));
            }
            if (oc->adamw) {
                cr_assert_leq(fabs(s2[i] - s2d[i]), 2e-6 * (1.0 + fabs(s2d[i])));
            }
        }
    }
    free(p);
    free(g);
    free(s1);
    free(s2);
    free(pd);
    free(gd);
    free(s1d);
    free(s2d);
}

Test(optim, sgd_matches_double_reference)
{
    const optcase_t cases[] = {
        {.lr = 0.1f},
        {.lr = 0.1f, .wd = 0.01f},
        {.lr = 0.05f, .momentum = 0.9f},
        {.lr = 0.05f, .momentum = 0.9f, .dampening = 0.3f, .wd = 1e-3f},
        {.lr = 0.02f, .momentum = 0.7f, .nesterov = true},
        {.lr = 0.02f, .momentum = 0.7f, .nesterov = true, .wd = 0.05f},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        check_against_double(&cases[k], 1, 6);
        check_against_double(&cases[k], 1001, 6);
    }
}

Test(optim, adamw_matches_double_reference)
{
    const optcase_t cases[] = {
        {.adamw = true, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .wd = 0.01f},
        {.adamw = true, .lr = 1e-2f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-6f, .wd = 0.0f},
        {.adamw = true, .lr = 3e-3f, .beta1 = 0.0f, .beta2 = 0.5f, .eps = 1e-3f, .wd = 0.5f},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        check_against_double(&cases[k], 1, 6);
        check_against_double(&cases[k], 1001, 6);
    }
}

/* ---- bit-exact against PyTorch ----------------------------------------- */

static void gold_run(const optcase_t *oc, const uint32_t *gold)
{
    float p[GOLD_N], g[GOLD_N], s1[GOLD_N] = {0}, s2[GOLD_N] = {0};
    for (int i = 0; i < GOLD_N; i++) {
        p[i] = (float)(i - 17) / 16.0f;
    }
    mp_optim_hp_t hp = {.lr = oc->lr, .momentum = oc->momentum, .dampening = oc->dampening,
                        .weight_decay = oc->wd, .nesterov = oc->nesterov, .beta1 = oc->beta1,
                        .beta2 = oc->beta2, .eps = oc->eps};
    for (int s = 1; s <= GOLD_STEPS; s++) {
        for (int i = 0; i < GOLD_N; i++) {
            g[i] = (float)(((7 * i + 3 * s) % 11) - 5) / 8.0f + (float)(i % 3) / 1024.0f;
        }
        hp.step = s;
        if (oc->adamw) {
            cr_assert_eq(be->ops->adamw_step(be, p, g, s1, s2, GOLD_N, &hp), MP_OK);
        } else {
            cr_assert_eq(be->ops->sgd_step(be, p, g, s1, GOLD_N, &hp), MP_OK);
        }
    }
    for (int i = 0; i < GOLD_N; i++) {
        uint32_t bits;
        memcpy(&bits, &p[i], sizeof bits);
        float want;
        memcpy(&want, &gold[i], sizeof want);
        cr_expect_eq(bits, gold[i], "p[%d] = %.9g (0x%08x), PyTorch %.9g (0x%08x)", i, p[i], bits,
                     want, gold[i]);
    }
}

Test(optim, adamw_agrees_with_pytorch_bit_for_bit)
{
    optcase_t a = {.adamw = true, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                   .wd = 0.01f};
    gold_run(&a, gold_adamw);
    optcase_t b = {.adamw = true, .lr = 0.05f, .beta1 = 0.8f, .beta2 = 0.95f, .eps = 1e-6f,
                   .wd = 0.1f};
    gold_run(&b, gold_adamw_big);
}

Test(optim, sgd_agrees_with_pytorch_bit_for_bit)
{
    optcase_t a = {.lr = 0.1f, .momentum = 0.9f, .dampening = 0.1f, .wd = 1e-3f};
    gold_run(&a, gold_sgd_momentum);
    optcase_t b = {.lr = 0.05f, .momentum = 0.8f, .nesterov = true, .wd = 0.01f};
    gold_run(&b, gold_sgd_nesterov);
    optcase_t c = {.lr = 0.3f};
    gold_run(&c, gold_sgd_plain);
}

Test(optim, rejects_invalid_hyper_parameters)
{
    float p[2] = {0}, g[2] = {0}, m[2] = {0}, v[2] = {0};
    mp_optim_hp_t hp = {.lr = 0.1f, .momentum = 0.9f, .step = 0};
    cr_assert_eq(be->ops->sgd_step(be, p, g, m, 2, &hp), MP_ERR_INVAL); /* step 0 */
    hp.step = 1;
    cr_assert_eq(be->ops->sgd_step(be, p, g, NULL, 2, &hp), MP_ERR_INVAL); /* no buffer */
    hp.nesterov = true;
    hp.dampening = 0.5f;
    cr_assert_eq(be->ops->sgd_step(be, p, g, m, 2, &hp), MP_ERR_INVAL); /* torch refuses too */
    mp_optim_hp_t ha = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .step = 0};
    cr_assert_eq(be->ops->adamw_step(be, p, g, m, v, 2, &ha), MP_ERR_INVAL);
}

/* DESIGN.md: a gradient that is not finite FAILs the job at that step; the
 * optimizer steps say so, wherever in the buffer (each thread's part) it is. */
Test(optim, steps_report_a_gradient_that_is_not_finite)
{
    enum { N = 3 * 32768 + 5 }; /* two threads split it (MP_CPU_MIN_PER_THREAD) */
    static float p[N], g[N], m[N], v[N];
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    const int64_t where[3] = {0, N / 2, N - 1};
    mp_optim_hp_t hs = {.lr = 0.1f, .momentum = 0.9f, .step = 1};
    mp_optim_hp_t ha = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .step = 1};
    mp_backend_t *be2;
    cr_assert_eq(mp_backend_cpu_create(2, &be2), MP_OK);
    mp_backend_t *bes[2] = {be, be2};
    for (int b = 0; b < 2; b++) {
        for (int k = 0; k < 3; k++) {
            for (int64_t i = 0; i < N; i++) {
                p[i] = 0.5f;
                g[i] = 1e30f; /* large but finite: no report */
                m[i] = v[i] = 0.0f;
            }
            cr_assert_eq(bes[b]->ops->sgd_step(bes[b], p, g, m, N, &hs), MP_OK);
            cr_assert_eq(bes[b]->ops->adamw_step(bes[b], p, g, m, v, N, &ha), MP_OK);
            g[where[k]] = bad[k];
            cr_assert_eq(bes[b]->ops->sgd_step(bes[b], p, g, m, N, &hs), MP_ERR_NONFINITE,
                         "sgd: %g at %lld on %d threads", (double)bad[k], (long long)where[k],
                         b + 1);
            cr_assert_eq(bes[b]->ops->adamw_step(bes[b], p, g, m, v, N, &ha), MP_ERR_NONFINITE,
                         "adamw: %g at %lld on %d threads", (double)bad[k], (long long)where[k],
                         b + 1);
        }
    }
    mp_backend_destroy(be2);
}
