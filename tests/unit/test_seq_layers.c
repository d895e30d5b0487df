/*
 * test_seq_layers.c - the CPU backend's sequence-layer ops (gpu/backend.h):
 * token embedding of a vocab shard, positions, LayerNorm, fused causal
 * multi-head attention and the vocab-parallel cross-entropy, plus
 * linear_bwd's split halves.  Each forward is checked against a float64
 * reference loop, each backward against central finite differences of that
 * reference (fd_check.h: L = sum(r * y) for a random r, h = 1e-5 in double),
 * on odd shapes: T = 1, one head, widths that are not powers of two, row
 * counts that are multiples of nothing.  Gradients start at random values
 * and must end at start + gradient (the "+=" rule).
 *
 * Exact properties are asserted bit for bit: the causal mask (an output at
 * t does not change when later positions do), split backward halves equal
 * one full call, results with 1 and 2 threads are identical, and the
 * embedding backward is deterministic.
 *
 * Tolerances: forward |got - ref| <= 1e-5 (1 + |ref|); gradients
 * |got - fd| <= 1e-4 (1 + |fd|); the vocab-parallel loss against xent_fwd's
 * to 1e-6 relative and its gradient to 1e-6 (1 + |ref|) (the two sum the
 * exponentials in different orders, so ulps differ).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/backend.h"

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

TestSuite(seq, .init = setup, .fini = teardown);

static double *dbuf(int64_t n)
{
    double *p = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    cr_assert(p != NULL);
    return p;
}

static double dot_d(const double *a, const double *b, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s += a[i] * b[i];
    }
    return s;
}

static void expect_same_bits(const char *what, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        cr_assert(memcmp(&a[i], &b[i], sizeof(float)) == 0, "%s[%lld]: %.9g vs %.9g", what,
                  (long long)i, (double)a[i], (double)b[i]);
    }
}

/* ---- embedding ------------------------------------------------------ */

typedef struct {
    ten_t tok, r;
    const float *ids;
    int64_t R, C, v0, Vl;
} emb_ctx_t;

static double emb_loss(void *p)
{
    emb_ctx_t *c = p;
    double L = 0.0;
    for (int64_t r = 0; r < c->R; r++) {
        double f = c->ids[r];
        if (f >= (double)c->v0 && f < (double)(c->v0 + c->Vl)) {
            L += dot_d(c->r.d + r * c->C, c->tok.d + ((int64_t)f - c->v0) * c->C, c->C);
        }
    }
    return L;
}

Test(seq, embedding_looks_up_its_shard_and_zeroes_other_ids)
{
    /* Shard [3, 7) of a vocab of 10; ids below, inside, above, repeated, NaN. */
    const int64_t C = 6, v0 = 3, Vl = 4;
    const float ids[] = {0.0f, 3.0f, 6.0f, 7.0f, 4.0f, 4.0f, 9.0f, NAN, 2.0f, 5.0f, 3.0f};
    const int64_t R = (int64_t)(sizeof ids / sizeof ids[0]);
    emb_ctx_t c = {.ids = ids, .R = R, .C = C, .v0 = v0, .Vl = Vl};
    c.tok = ten_new(Vl * C, 1.0);
    c.r = ten_new(R * C, 1.0);
    float *y = fbuf(R * C, 1.0); /* garbage: the forward overwrites */
    cr_assert_eq(be->ops->embed_fwd(be, y, ids, c.tok.f, R, C, v0, Vl), MP_OK);
    for (int64_t r = 0; r < R; r++) {
        bool in = ids[r] >= 3.0f && ids[r] < 7.0f;
        for (int64_t k = 0; k < C; k++) {
            float want = in ? c.tok.f[((int64_t)ids[r] - v0) * C + k] : 0.0f;
            cr_assert_eq(y[r * C + k], want, "y[%lld, %lld] for id %g", (long long)r, (long long)k,
                         (double)ids[r]);
        }
    }
    float *dtok = fbuf(Vl * C, 1.0), *dtok0 = fcopy(dtok, Vl * C);
    cr_assert_eq(be->ops->embed_bwd(be, dtok, c.r.f, ids, R, C, v0, Vl), MP_OK);
    check_grad("dtok", emb_loss, &c, &c.tok, dtok, dtok0);
    free(y);
    free(dtok);
    free(dtok0);
    ten_free(&c.tok);
    ten_free(&c.r);
}

Test(seq, embedding_backward_adds_repeated_ids_in_row_order)
{
    /* 600 rows over 5 ids, two threads: each row of dtok must be the rows'
     * sequential float sum, bit for bit. */
    mp_backend_t *be2;
    cr_assert_eq(mp_backend_cpu_create(2, &be2), MP_OK);
    const int64_t R = 600, C = 130, V = 5;
    float *ids = fbuf(R, 0.0), *dy = fbuf(R * C, 3.0);
    for (int64_t r = 0; r < R; r++) {
        ids[r] = (float)((r * 7 + r / 3) % V);
    }
    float *dtok = fbuf(V * C, 1.0), *want = fcopy(dtok, V * C);
    for (int64_t r = 0; r < R; r++) {
        for (int64_t k = 0; k < C; k++) {
            want[(int64_t)ids[r] * C + k] += dy[r * C + k];
        }
    }
    cr_assert_eq(be2->ops->embed_bwd(be2, dtok, dy, ids, R, C, 0, V), MP_OK);
    expect_same_bits("dtok", dtok, want, V * C);
    free(ids);
    free(dy);
    free(dtok);
    free(want);
    mp_backend_destroy(be2);
}

/* ---- positions ------------------------------------------------------ */

typedef struct {
    ten_t pos, r;
    int64_t R, T, C;
} pos_ctx_t;

static double pos_loss(void *p)
{
    pos_ctx_t *c = p;
    double L = 0.0;
    for (int64_t r = 0; r < c->R; r++) {
        L += dot_d(c->r.d + r * c->C, c->pos.d + (r % c->T) * c->C, c->C);
    }
    return L;
}

static void check_pos(int64_t B, int64_t T, int64_t C)
{
    pos_ctx_t c = {.R = B * T, .T = T, .C = C};
    c.pos = ten_new(T * C, 1.0);
    c.r = ten_new(c.R * C, 1.0);
    float *y = fbuf(c.R * C, 1.0), *y0 = fcopy(y, c.R * C);
    cr_assert_eq(be->ops->pos_add(be, y, c.pos.f, c.R, T, C), MP_OK);
    for (int64_t r = 0; r < c.R; r++) {
        for (int64_t k = 0; k < C; k++) {
            cr_assert_eq(y[r * C + k], y0[r * C + k] + c.pos.f[(r % T) * C + k]);
        }
    }
    float *dpos = fbuf(T * C, 1.0), *dpos0 = fcopy(dpos, T * C);
    cr_assert_eq(be->ops->pos_bwd(be, dpos, c.r.f, c.R, T, C), MP_OK);
    check_grad("dpos", pos_loss, &c, &c.pos, dpos, dpos0);
    free(y);
    free(y0);
    free(dpos);
    free(dpos0);
    ten_free(&c.pos);
    ten_free(&c.r);
}

Test(seq, positions_add_per_step_and_sum_over_the_batch)
{
    check_pos(1, 1, 6);
    check_pos(3, 1, 10);
    check_pos(3, 7, 6);
    check_pos(2, 5, 300); /* wider than one column tile */
}

/* ---- LayerNorm ------------------------------------------------------ */

typedef struct {
    ten_t x, w, b, r;
    int64_t R, C;
    double eps;
} ln_ctx_t;

/* y = (x - mean) / sqrt(var + eps) * w + b per row, biased variance. */
static void layernorm_d(double *y, double *mean, double *rstd, const ln_ctx_t *c)
{
    for (int64_t r = 0; r < c->R; r++) {
        const double *x = c->x.d + r * c->C;
        double m = 0.0, v = 0.0;
        for (int64_t k = 0; k < c->C; k++) {
            m += x[k];
        }
        m /= (double)c->C;
        for (int64_t k = 0; k < c->C; k++) {
            v += (x[k] - m) * (x[k] - m);
        }
        v /= (double)c->C;
        double rs = 1.0 / sqrt(v + c->eps);
        for (int64_t k = 0; k < c->C; k++) {
            y[r * c->C + k] = (x[k] - m) * rs * c->w.d[k] + c->b.d[k];
        }
        if (mean != NULL) {
            mean[r] = m;
            rstd[r] = rs;
        }
    }
}

static double ln_loss(void *p)
{
    ln_ctx_t *c = p;
    double *y = dbuf(c->R * c->C);
    layernorm_d(y, NULL, NULL, c);
    double L = dot_d(c->r.d, y, c->R * c->C);
    free(y);
    return L;
}

static void check_layernorm(int64_t R, int64_t C, double shift)
{
    ln_ctx_t c = {.R = R, .C = C, .eps = 1e-5};
    c.x = ten_new(R * C, 1.0);
    for (int64_t i = 0; i < R * C; i++) {
        /* An offset far above the spread: a one-pass variance would cancel. */
        c.x.f[i] += (float)shift;
        c.x.d[i] = c.x.f[i];
    }
    c.w = ten_new(C, 1.0);
    c.b = ten_new(C, 1.0);
    c.r = ten_new(R * C, 1.0);
    float *y = fbuf(R * C, 1.0), *mean = fbuf(R, 1.0), *rstd = fbuf(R, 1.0);
    cr_assert_eq(be->ops->layernorm_fwd(be, y, mean, rstd, c.x.f, c.w.f, c.b.f, R, C, 1e-5f),
                 MP_OK);
    double *yd = dbuf(R * C), *md = dbuf(R), *rd = dbuf(R);
    layernorm_d(yd, md, rd, &c);
    for (int64_t i = 0; i < R * C; i++) {
        expect_close("layernorm y", i, y[i], yd[i], FWD_TOL);
    }
    for (int64_t r = 0; r < R; r++) {
        expect_close("layernorm mean", r, mean[r], md[r], FWD_TOL);
        cr_assert_leq(fabs(rstd[r] - rd[r]), 1e-5 * rd[r], "rstd[%lld] = %.9g, want %.9g",
                      (long long)r, (double)rstd[r], rd[r]);
    }
    /* The fp32 forward's mean and rstd feed the backward, as in a model. */
    float *dx = fbuf(R * C, 1.0), *dw = fbuf(C, 1.0), *db = fbuf(C, 1.0);
    float *dx0 = fcopy(dx, R * C), *dw0 = fcopy(dw, C), *db0 = fcopy(db, C);
    cr_assert_eq(be->ops->layernorm_bwd(be, dx, dw, db, c.r.f, c.x.f, mean, rstd, c.w.f, R, C),
                 MP_OK);
    check_grad("layernorm dx", ln_loss, &c, &c.x, dx, dx0);
    check_grad("layernorm dw", ln_loss, &c, &c.w, dw, dw0);
    check_grad("layernorm db", ln_loss, &c, &c.b, db, db0);

    /* The halves: dx alone, then dw alone and db alone, give the same bits. */
    float *hx = fcopy(dx0, R * C), *hw = fcopy(dw0, C), *hb = fcopy(db0, C);
    cr_assert_eq(be->ops->layernorm_bwd(be, hx, NULL, NULL, c.r.f, c.x.f, mean, rstd, c.w.f, R, C),
                 MP_OK);
    cr_assert_eq(be->ops->layernorm_bwd(be, NULL, hw, NULL, c.r.f, c.x.f, mean, rstd, NULL, R, C),
                 MP_OK);
    cr_assert_eq(be->ops->layernorm_bwd(be, NULL, NULL, hb, c.r.f, c.x.f, mean, rstd, NULL, R, C),
                 MP_OK);
    expect_same_bits("layernorm dx half", hx, dx, R * C);
    expect_same_bits("layernorm dw half", hw, dw, C);
    expect_same_bits("layernorm db half", hb, db, C);

    free(y);
    free(mean);
    free(rstd);
    free(yd);
    free(md);
    free(rd);
    free(dx);
    free(dw);
    free(db);
    free(dx0);
    free(dw0);
    free(db0);
    free(hx);
    free(hw);
    free(hb);
    ten_free(&c.x);
    ten_free(&c.w);
    ten_free(&c.b);
    ten_free(&c.r);
}

Test(seq, layernorm_matches_double_and_finite_differences)
{
    check_layernorm(1, 1, 0.0); /* C = 1: y = b, every gradient but db is 0 */
    check_layernorm(1, 6, 0.0);
    check_layernorm(7, 10, 0.0);
    check_layernorm(13, 24, 0.0);
    check_layernorm(3, 131, 0.0); /* more than one column tile of dw */
}

Test(seq, layernorm_statistics_survive_a_large_mean)
{
    /* |mean| = 30 with a spread of 0.6: E[x^2] - E[x]^2 in float would be off
     * by ~1e-4 relative (ulp(900) against a variance of 0.33), ten times the
     * forward tolerance. */
    check_layernorm(5, 24, 30.0);
}

/* ---- attention ------------------------------------------------------ */

typedef struct {
    ten_t qkv, r;
    int64_t B, T, H, D;
} attn_ctx_t;

/* The naive loop: for each (b, h, t), scores over s <= t, softmax, V sum. */
static void attn_d(double *out, double *att, const double *qkv, int64_t B, int64_t T, int64_t H,
                   int64_t D)
{
    const int64_t C = H * D, ld = 3 * C;
    double *p = dbuf(T);
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            for (int64_t t = 0; t < T; t++) {
                const double *q = qkv + (b * T + t) * ld + h * D;
                double mx = -INFINITY, sum = 0.0;
                for (int64_t s = 0; s <= t; s++) {
                    const double *k = qkv + (b * T + s) * ld + C + h * D;
                    p[s] = dot_d(q, k, D) / sqrt((double)D);
                    mx = p[s] > mx ? p[s] : mx;
                }
                for (int64_t s = 0; s <= t; s++) {
                    p[s] = exp(p[s] - mx);
                    sum += p[s];
                }
                double *o = out + (b * T + t) * C + h * D;
                for (int64_t d = 0; d < D; d++) {
                    o[d] = 0.0;
                }
                for (int64_t s = 0; s < T; s++) {
                    double a = s <= t ? p[s] / sum : 0.0;
                    if (att != NULL) {
                        att[((b * H + h) * T + t) * T + s] = a;
                    }
                    const double *v = qkv + (b * T + s) * ld + 2 * C + h * D;
                    for (int64_t d = 0; d < D && s <= t; d++) {
                        o[d] += a * v[d];
                    }
                }
            }
        }
    }
    free(p);
}

static double attn_loss(void *p)
{
    attn_ctx_t *c = p;
    int64_t n = c->B * c->T * c->H * c->D;
    double *out = dbuf(n);
    attn_d(out, NULL, c->qkv.d, c->B, c->T, c->H, c->D);
    double L = dot_d(c->r.d, out, n);
    free(out);
    return L;
}

static void check_attn(int64_t B, int64_t T, int64_t H, int64_t D, double qk_scale)
{
    attn_ctx_t c = {.B = B, .T = T, .H = H, .D = D};
    const int64_t R = B * T, C = H * D, nq = R * 3 * C, na = B * H * T * T;
    c.qkv = ten_new(nq, qk_scale);
    c.r = ten_new(R * C, 1.0);
    float *out = fbuf(R * C, 1.0), *att = fbuf(na, 1.0);
    cr_assert_eq(be->ops->attn_fwd(be, out, att, c.qkv.f, B, T, H, D), MP_OK);
    double *outd = dbuf(R * C), *attd = dbuf(na);
    attn_d(outd, attd, c.qkv.d, B, T, H, D);
    for (int64_t i = 0; i < R * C; i++) {
        expect_close("attn out", i, out[i], outd[i], FWD_TOL);
    }
    for (int64_t i = 0; i < na; i++) {
        int64_t t = (i / T) % T, s = i % T;
        if (s > t) {
            cr_assert_eq(att[i], 0.0f, "att[%lld] above the diagonal is %g", (long long)i,
                         (double)att[i]);
        } else {
            expect_close("attn att", i, att[i], attd[i], FWD_TOL);
        }
    }
    float *dqkv = fbuf(nq, 1.0), *dqkv0 = fcopy(dqkv, nq);
    cr_assert_eq(be->ops->attn_bwd(be, dqkv, c.r.f, c.qkv.f, att, B, T, H, D), MP_OK);
    check_grad("attn dqkv", attn_loss, &c, &c.qkv, dqkv, dqkv0);
    free(out);
    free(att);
    free(outd);
    free(attd);
    free(dqkv);
    free(dqkv0);
    ten_free(&c.qkv);
    ten_free(&c.r);
}

Test(seq, attention_forward_matches_naive_loop_and_backward_finite_differences)
{
    check_attn(1, 1, 1, 3, 1.0); /* T = 1: att = 1, out = V */
    check_attn(2, 1, 2, 5, 1.0);
    check_attn(1, 6, 1, 5, 1.0); /* one head */
    check_attn(3, 5, 2, 3, 1.0); /* C = 6 */
    check_attn(2, 7, 2, 5, 2.0); /* C = 10, peaked softmax */
    check_attn(1, 9, 3, 8, 1.0); /* C = 24 */
    check_attn(1, 20, 1, 16, 1.0);
}

Test(seq, attention_output_at_t_ignores_later_positions)
{
    const int64_t B = 2, T = 9, H = 3, D = 5, C = H * D, ld = 3 * C;
    const int64_t nq = B * T * ld, no = B * T * C, na = B * H * T * T;
    float *qkv = fbuf(nq, 1.0), *out = fbuf(no, 0.0), *att = fbuf(na, 0.0);
    cr_assert_eq(be->ops->attn_fwd(be, out, att, qkv, B, T, H, D), MP_OK);
    for (int64_t cut = 0; cut < T; cut++) {
        float *q2 = fcopy(qkv, nq), *out2 = fbuf(no, 0.0), *att2 = fbuf(na, 0.0);
        /* Change Q, K and V of every position after `cut` in both sequences. */
        for (int64_t b = 0; b < B; b++) {
            for (int64_t t = cut + 1; t < T; t++) {
                for (int64_t k = 0; k < ld; k++) {
                    q2[(b * T + t) * ld + k] = (float)(5.0 * urand());
                }
            }
        }
        cr_assert_eq(be->ops->attn_fwd(be, out2, att2, q2, B, T, H, D), MP_OK);
        for (int64_t b = 0; b < B; b++) {
            for (int64_t t = 0; t <= cut; t++) {
                expect_same_bits("out before the cut", out + (b * T + t) * C,
                                 out2 + (b * T + t) * C, C);
                for (int64_t h = 0; h < H; h++) {
                    expect_same_bits("att before the cut", att + ((b * H + h) * T + t) * T,
                                     att2 + ((b * H + h) * T + t) * T, T);
                }
            }
        }
        free(q2);
        free(out2);
        free(att2);
    }
    free(qkv);
    free(out);
    free(att);
}

/* ---- vocab-parallel cross-entropy ---------------------------------- */

typedef struct {
    ten_t z;
    const int32_t *labels;
    int64_t R, V;
    double scale;
} vp_ctx_t;

/* scale * sum over rows of logsumexp(z) - z[label], in double. */
static double vp_loss(void *p)
{
    vp_ctx_t *c = p;
    double L = 0.0;
    for (int64_t r = 0; r < c->R; r++) {
        const double *z = c->z.d + r * c->V;
        double mx = z[0], s = 0.0;
        for (int64_t k = 1; k < c->V; k++) {
            mx = z[k] > mx ? z[k] : mx;
        }
        for (int64_t k = 0; k < c->V; k++) {
            s += exp(z[k] - mx);
        }
        L += mx + log(s) - z[c->labels[r]];
    }
    return c->scale * L;
}

/* Splits V columns into `shards` nearly equal blocks, runs the three
 * vocab-parallel ops per shard and combines them as the model does (max of
 * the maxima, then the sum of the sums and of the targets), and checks the
 * loss against xent_fwd and the gradient against xent_bwd and finite
 * differences. */
static void check_vp(int64_t R, int64_t V, int shards, uint64_t seed)
{
    rng_state = seed;
    const float scale = 0.37f;
    vp_ctx_t c = {.R = R, .V = V, .scale = scale};
    c.z = ten_new(R * V, 4.0);
    for (int64_t k = 0; k < V && R > 1; k++) {
        /* Row 1 is huge: exp() overflows unless shifted by the global max. */
        c.z.f[V + k] += 90.0f;
        c.z.d[V + k] = c.z.f[V + k];
    }
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)R);
    for (int64_t r = 0; r < R; r++) {
        labels[r] = (int32_t)((uint64_t)(urand() * 1e6 + 1e6) % (uint64_t)V);
    }
    c.labels = labels;

    /* The reference: plain softmax cross-entropy over the full logits. */
    float *probs = fbuf(R * V, 0.0), *dfull = fbuf(R * V, 1.0), *d0 = fcopy(dfull, R * V);
    double loss_full = 0.0;
    cr_assert_eq(be->ops->xent_fwd(be, probs, c.z.f, labels, R, V, &loss_full, NULL), MP_OK);
    cr_assert_eq(be->ops->xent_bwd(be, dfull, probs, labels, R, V, scale), MP_OK);

    float *gmax = fbuf(R, 0.0), *gsum = fbuf(R, 0.0), *tgt = fbuf(R, 0.0);
    float *dvp = fcopy(d0, R * V);
    float *part = fbuf(R * V, 0.0), *dpart = fbuf(R * V, 0.0);
    float *m = fbuf(R, 0.0), *se = fbuf(R, 0.0), *tg = fbuf(R, 0.0);
    for (int pass = 0; pass < 3; pass++) {
        /* pass 0: maxima, pass 1: sums and targets, pass 2: gradients. */
        for (int k = 0; k < shards; k++) {
            int64_t v0 = V * k / shards, Vl = V * (k + 1) / shards - v0;
            for (int64_t r = 0; r < R; r++) {
                memcpy(part + r * Vl, c.z.f + r * V + v0, sizeof(float) * (size_t)Vl);
                memcpy(dpart + r * Vl, dvp + r * V + v0, sizeof(float) * (size_t)Vl);
            }
            if (pass == 0) {
                cr_assert_eq(be->ops->xent_vp_max(be, m, part, R, Vl), MP_OK);
                for (int64_t r = 0; r < R; r++) {
                    gmax[r] = k == 0 || m[r] > gmax[r] ? m[r] : gmax[r];
                }
            } else if (pass == 1) {
                cr_assert_eq(be->ops->xent_vp_sumexp(be, se, tg, part, gmax, labels, R, Vl, v0),
                             MP_OK);
                for (int64_t r = 0; r < R; r++) {
                    bool mine = labels[r] >= v0 && labels[r] < v0 + Vl;
                    cr_assert_eq(tg[r], mine ? c.z.f[r * V + labels[r]] : 0.0f,
                                 "target of row %lld in shard %d", (long long)r, k);
                    gsum[r] = k == 0 ? se[r] : gsum[r] + se[r];
                    tgt[r] = k == 0 ? tg[r] : tgt[r] + tg[r];
                }
            } else {
                cr_assert_eq(
                    be->ops->xent_vp_bwd(be, dpart, part, gmax, gsum, labels, R, Vl, v0, scale),
                    MP_OK);
                for (int64_t r = 0; r < R; r++) {
                    memcpy(dvp + r * V + v0, dpart + r * Vl, sizeof(float) * (size_t)Vl);
                }
            }
        }
    }
    double loss_vp = 0.0;
    for (int64_t r = 0; r < R; r++) {
        loss_vp += log((double)gsum[r]) - ((double)tgt[r] - (double)gmax[r]);
    }
    cr_assert_leq(fabs(loss_vp - loss_full), 1e-6 * fabs(loss_full),
                  "%d shards: loss %.12g, xent_fwd %.12g", shards, loss_vp, loss_full);
    for (int64_t i = 0; i < R * V; i++) {
        expect_close("vocab-parallel dlogits vs xent_bwd", i, dvp[i], dfull[i], 1e-6);
    }
    check_grad("vocab-parallel dlogits", vp_loss, &c, &c.z, dvp, d0);

    free(probs);
    free(dfull);
    free(d0);
    free(gmax);
    free(gsum);
    free(tgt);
    free(dvp);
    free(part);
    free(dpart);
    free(m);
    free(se);
    free(tg);
    free(labels);
    ten_free(&c.z);
}

Test(seq, vocab_parallel_xent_over_shards_equals_full_xent)
{
    for (int shards = 1; shards <= 3; shards++) {
        check_vp(1, 7, shards, 11);
        check_vp(13, 11, shards, 12);
        check_vp(5, 300, shards, 13); /* longer than one exponential chunk */
    }
}

/* ---- linear_bwd halves ---------------------------------------------- */

Test(seq, linear_backward_halves_equal_one_full_call)
{
    const int64_t B = 7, I = 10, O = 6;
    float *X = fbuf(B * I, 1.0), *W = fbuf(I * O, 1.0), *dZ = fbuf(B * O, 1.0);
    float *dX = fbuf(B * I, 1.0), *dW = fbuf(I * O, 1.0), *db = fbuf(O, 1.0);
    float *hX = fcopy(dX, B * I), *hW = fcopy(dW, I * O), *hb = fcopy(db, O);
    float *dW_untouched = fcopy(dW, I * O);
    cr_assert_eq(be->ops->linear_bwd(be, dX, dW, db, dZ, X, W, B, I, O), MP_OK);
    /* The input-gradient half needs neither X's gradient products nor dW. */
    cr_assert_eq(be->ops->linear_bwd(be, hX, NULL, NULL, dZ, X, W, B, I, O), MP_OK);
    expect_same_bits("dW after a dX-only call", hW, dW_untouched, I * O);
    cr_assert_eq(be->ops->linear_bwd(be, NULL, hW, hb, dZ, X, W, B, I, O), MP_OK);
    expect_same_bits("dX half", hX, dX, B * I);
    expect_same_bits("dW half", hW, dW, I * O);
    expect_same_bits("db half", hb, db, O);
    free(X);
    free(W);
    free(dZ);
    free(dX);
    free(dW);
    free(db);
    free(hX);
    free(hW);
    free(hb);
    free(dW_untouched);
}

/* ---- thread-count independence ------------------------------------- */

/* The GPT demo's shapes (8 sequences of 64, C = 128, 4 heads, vocab 256):
 * large enough that every op splits over two threads. */
Test(seq, two_threads_give_the_same_bits_as_one, .timeout = 60)
{
    const int64_t B = 8, T = 64, H = 4, D = 32, C = H * D, R = B * T, V = 256;
    mp_backend_t *bes[2];
    cr_assert_eq(mp_backend_cpu_create(1, &bes[0]), MP_OK);
    cr_assert_eq(mp_backend_cpu_create(2, &bes[1]), MP_OK);
    float *ids = fbuf(R, 0.0), *tok = fbuf(V * C, 1.0), *pos = fbuf(T * C, 1.0);
    float *x = fbuf(R * C, 1.0), *w = fbuf(C, 1.0), *bias = fbuf(C, 1.0);
    float *qkv = fbuf(R * 3 * C, 1.0), *dy = fbuf(R * C, 1.0), *logits = fbuf(R * V, 3.0);
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)R);
    for (int64_t r = 0; r < R; r++) {
        ids[r] = (float)((r * 37) % V);
        labels[r] = (int32_t)((r * 11) % V);
    }
    /* Outputs of both backends, one block each: [0] with 1 thread, [1] with 2. */
    const int64_t n_out = R * C + V * C + T * C + R * C + 2 * R + R * C + 2 * C + R * C +
                          B * H * T * T + R * 3 * C + 3 * R + R * V;
    float *res[2];
    for (int k = 0; k < 2; k++) {
        mp_backend_t *b = bes[k];
        float *o = res[k] = fbuf(n_out, 0.0);
        float *emb = o, *dtok = emb + R * C, *dpos = dtok + V * C, *ln = dpos + T * C;
        float *mean = ln + R * C, *rstd = mean + R, *dx = rstd + R, *dw = dx + R * C;
        float *db = dw + C, *out = db + C, *att = out + R * C, *dqkv = att + B * H * T * T;
        float *mx = dqkv + R * 3 * C, *se = mx + R, *tg = se + R, *dl = tg + R;
        cr_assert_eq(b->ops->embed_fwd(b, emb, ids, tok, R, C, 0, V), MP_OK);
        cr_assert_eq(b->ops->pos_add(b, emb, pos, R, T, C), MP_OK);
        cr_assert_eq(b->ops->embed_bwd(b, dtok, dy, ids, R, C, 0, V), MP_OK);
        cr_assert_eq(b->ops->pos_bwd(b, dpos, dy, R, T, C), MP_OK);
        cr_assert_eq(b->ops->layernorm_fwd(b, ln, mean, rstd, x, w, bias, R, C, 1e-5f), MP_OK);
        cr_assert_eq(b->ops->layernorm_bwd(b, dx, dw, db, dy, x, mean, rstd, w, R, C), MP_OK);
        cr_assert_eq(b->ops->attn_fwd(b, out, att, qkv, B, T, H, D), MP_OK);
        cr_assert_eq(b->ops->attn_bwd(b, dqkv, dy, qkv, att, B, T, H, D), MP_OK);
        cr_assert_eq(b->ops->xent_vp_max(b, mx, logits, R, V), MP_OK);
        cr_assert_eq(b->ops->xent_vp_sumexp(b, se, tg, logits, mx, labels, R, V, 0), MP_OK);
        cr_assert_eq(b->ops->xent_vp_bwd(b, dl, logits, mx, se, labels, R, V, 0, 0.01f), MP_OK);
    }
    expect_same_bits("1 thread vs 2", res[0], res[1], n_out);
    free(res[0]);
    free(res[1]);
    free(ids);
    free(tok);
    free(pos);
    free(x);
    free(w);
    free(bias);
    free(qkv);
    free(dy);
    free(logits);
    free(labels);
    mp_backend_destroy(bes[0]);
    mp_backend_destroy(bes[1]);
}

/* ---- arguments ------------------------------------------------------ */

Test(seq, bad_arguments_are_refused)
{
    float a[64] = {0}, b2[64] = {0}, c[64] = {0}, d[8] = {0}, e[8] = {0};
    int32_t lab[4] = {0};
    const mp_backend_ops_t *o = be->ops;
    cr_assert_eq(o->embed_fwd(be, a, b2, c, -1, 4, 0, 4), MP_ERR_INVAL);
    cr_assert_eq(o->embed_fwd(be, a, NULL, c, 2, 4, 0, 4), MP_ERR_INVAL);
    cr_assert_eq(o->embed_bwd(be, a, b2, c, 2, 4, -1, 4), MP_ERR_INVAL);
    cr_assert_eq(o->pos_add(be, a, b2, 6, 4, 2), MP_ERR_INVAL, "T = 4 does not divide R = 6");
    cr_assert_eq(o->pos_bwd(be, a, b2, 6, 0, 2), MP_ERR_INVAL);
    cr_assert_eq(o->layernorm_fwd(be, a, d, e, a, b2, c, 2, 4, 1e-5f), MP_ERR_INVAL,
                 "y aliasing x");
    cr_assert_eq(o->layernorm_fwd(be, a, d, e, b2, c, c, 2, 0, 1e-5f), MP_ERR_INVAL);
    cr_assert_eq(o->layernorm_fwd(be, a, d, e, b2, c, c, 2, 4, -1.0f), MP_ERR_INVAL);
    cr_assert_eq(o->layernorm_bwd(be, a, NULL, NULL, b2, c, d, e, NULL, 2, 4), MP_ERR_INVAL,
                 "dx needs w");
    cr_assert_eq(o->attn_fwd(be, a, b2, c, 1, 2, 0, 4), MP_ERR_INVAL);
    cr_assert_eq(o->attn_bwd(be, a, b2, c, NULL, 1, 2, 1, 4), MP_ERR_INVAL);
    cr_assert_eq(o->xent_vp_max(be, d, a, 2, 0), MP_ERR_INVAL);
    cr_assert_eq(o->xent_vp_sumexp(be, d, e, a, b2, lab, 2, 4, -1), MP_ERR_INVAL);
    cr_assert_eq(o->xent_vp_bwd(be, a, b2, d, e, NULL, 2, 4, 0, 1.0f), MP_ERR_INVAL);
    /* Empty work is fine and touches nothing. */
    cr_assert_eq(o->attn_fwd(be, NULL, NULL, NULL, 0, 5, 2, 4), MP_OK);
    cr_assert_eq(o->layernorm_fwd(be, NULL, NULL, NULL, NULL, NULL, NULL, 0, 4, 1e-5f), MP_OK);
}
