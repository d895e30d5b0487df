/*
 * test_gpt_model.c - proves the sequence kinds wired through model.c: a
 * small GPT (embedding, transformer blocks, layernorm, vocab head) on odd
 * shapes has the gradient that central finite differences give; its B + W
 * halves accumulate exactly what the whole backward does; as TP ranks
 * (threads of this process with in-memory collectives) it trains like the
 * serial model within 1e-5; and the vocab-parallel loss moves 3 floats a
 * position through the collectives, never the [B, T, V] logits.
 *
 * Legend: B = sequences, T = positions, C = width, H = heads, F = ffn,
 * V = vocab, R = TP ranks, S = optimizer steps.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "gpu/init.h"
#include "model/layer.h"
#include "model/model.h"
#include "mem_coll.h"
#include "parallel/tpplan.h"

#define MAXR MEM_COLL_MAXR
#define S 3

typedef struct {
    int64_t B, T, C, H, F, V;
    int blocks;
} shape_t;

/* A GPT spec filled by hand (the text data sets are not needed here). */
static mp_spec_t *gpt_spec(const shape_t *sh, int tp, mp_optim_kind_t opt)
{
    mp_spec_t *s = calloc(1, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "gpt");
    s->model.input = 1;
    s->model.seq = sh->T;
    int n = 0;
    s->model.layers[n++] = (mp_layer_spec_t){.kind = MP_LAYER_EMBEDDING,
                                             .vocab = sh->V,
                                             .dim = sh->C,
                                             .max_seq = sh->T + 2,
                                             .in_dim = 1,
                                             .out_dim = sh->C};
    for (int b = 0; b < sh->blocks; b++) {
        s->model.layers[n++] = (mp_layer_spec_t){.kind = MP_LAYER_TRANSFORMER_BLOCK,
                                                 .heads = sh->H,
                                                 .ffn = sh->F,
                                                 .in_dim = sh->C,
                                                 .out_dim = sh->C};
    }
    s->model.layers[n++] =
        (mp_layer_spec_t){.kind = MP_LAYER_LAYERNORM, .in_dim = sh->C, .out_dim = sh->C};
    s->model.layers[n++] = (mp_layer_spec_t){
        .kind = MP_LAYER_LINEAR, .out = sh->V, .in_dim = sh->C, .out_dim = sh->V};
    s->model.nlayers = n;
    s->data.classes = sh->V;
    s->parallel.pp = s->parallel.dp = s->parallel.micro_batches = 1;
    s->parallel.tp = tp;
    s->train.batch_size = sh->B;
    s->train.optimizer = opt;
    s->train.lr = opt == MP_OPTIM_SGD ? 0.1 : 1e-2;
    s->train.momentum = opt == MP_OPTIM_SGD ? 0.9 : 0.0;
    s->train.beta1 = 0.9;
    s->train.beta2 = 0.999;
    s->train.eps = 1e-8;
    s->train.weight_decay = opt == MP_OPTIM_ADAMW ? 0.01 : 0.0;
    s->train.seed = 3;
    return s;
}

static void tokens(const shape_t *sh, int step, float *x, int32_t *y)
{
    for (int64_t i = 0; i < sh->B * sh->T; i++) {
        x[i] = (float)(mp_rng_hash(9, (uint64_t)step, (uint64_t)i, 0) % (uint64_t)sh->V);
        y[i] = (int32_t)(mp_rng_hash(9, (uint64_t)step, (uint64_t)i, 1) % (uint64_t)sh->V);
    }
}

/* One forward + loss (+ backward when `grad`): returns the mean loss. */
static double loss_of(mp_model_t *m, mp_backend_t *be, const shape_t *sh, const float *x,
                      const int32_t *y, int32_t *labels_dev, bool grad)
{
    int64_t N = sh->B * sh->T;
    float *out;
    double loss = 0.0;
    cr_assert_eq(be->ops->upload(be, mp_model_input(m, 0), x, (size_t)N * sizeof(float)), MP_OK);
    cr_assert_eq(be->ops->upload(be, labels_dev, y, (size_t)N * sizeof(int32_t)), MP_OK);
    cr_assert_eq(mp_model_forward(m, 0, sh->B, &out), MP_OK);
    cr_assert_eq(mp_model_loss(m, 0, labels_dev, sh->B, grad ? 1.0f / (float)N : 0.0f, &loss, NULL),
                 MP_OK);
    if (grad) {
        cr_assert_eq(mp_model_backward(m, 0, sh->B, NULL), MP_OK);
    }
    return loss / (double)N;
}

/* Offset of (layer, param) in the model's flat buffers: the order of creation. */
static int64_t param_offset(const mp_spec_t *spec, int layer, int param)
{
    int64_t off = 0;
    for (int l = 0; l < spec->model.nlayers; l++) {
        for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
            if (l == layer && p == param) {
                return off;
            }
            int64_t r, c;
            mp_layer_param_shape(&spec->model.layers[l], p, &r, &c);
            off += r * c;
        }
    }
    return -1;
}

Test(gpt_model, backward_matches_finite_differences)
{
    /* Odd shapes: C = 6 (not a power of two), two heads of width 3, T = 3. */
    const shape_t shapes[] = {{.B = 2, .T = 3, .C = 6, .H = 2, .F = 10, .V = 7, .blocks = 1},
                              {.B = 1, .T = 1, .C = 5, .H = 1, .F = 3, .V = 4, .blocks = 2}};
    for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
        const shape_t *sh = &shapes[k];
        mp_spec_t *spec = gpt_spec(sh, 1, MP_OPTIM_SGD);
        mp_backend_t *be;
        mp_model_t *m;
        cr_assert_eq(mp_backend_cpu_create(1, &be), MP_OK);
        cr_assert_eq(mp_model_create(be, spec, 0, spec->model.nlayers, 1, sh->B, &m), MP_OK);
        int64_t N = sh->B * sh->T, P = mp_model_param_count(m);
        float *x = malloc(sizeof(float) * N);
        int32_t *y = malloc(sizeof(int32_t) * N);
        int32_t *labels = be->ops->alloc(be, sizeof(int32_t) * N);
        tokens(sh, 0, x, y);
        cr_assert_eq(mp_model_zero_grad(m), MP_OK);
        loss_of(m, be, sh, x, y, labels, true);
        float *g = malloc(sizeof(float) * P);
        cr_assert_eq(be->ops->download(be, g, mp_model_grads(m), sizeof(float) * P), MP_OK);
        for (int l = 0; l < spec->model.nlayers; l++) {
            for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
                int64_t rows, cols;
                mp_layer_param_shape(&spec->model.layers[l], p, &rows, &cols);
                float *w = malloc(sizeof(float) * rows * cols);
                cr_assert_eq(mp_model_param_download(m, l, p, w), MP_OK);
                int64_t off = param_offset(spec, l, p);
                /* A few elements of every tensor, spread over it. */
                for (int e = 0; e < 4; e++) {
                    int64_t i = (int64_t)(mp_rng_hash(1, (uint64_t)l, (uint64_t)p, (uint64_t)e) %
                                          (uint64_t)(rows * cols));
                    const float h = 1e-2f;
                    float w0 = w[i];
                    w[i] = w0 + h;
                    cr_assert_eq(mp_model_param_upload(m, l, p, w), MP_OK);
                    double lp = loss_of(m, be, sh, x, y, labels, false);
                    w[i] = w0 - h;
                    cr_assert_eq(mp_model_param_upload(m, l, p, w), MP_OK);
                    double lm = loss_of(m, be, sh, x, y, labels, false);
                    w[i] = w0;
                    cr_assert_eq(mp_model_param_upload(m, l, p, w), MP_OK);
                    double fd = (lp - lm) / (2.0 * h), an = g[off + i];
                    cr_expect(fabs(fd - an) <= 2e-3 + 3e-2 * fabs(fd),
                              "shape %zu layer %d %s[%lld]: backward %.6g, finite differences "
                              "%.6g",
                              k, l, mp_layer_param_name(&spec->model.layers[l], p), (long long)i,
                              an, fd);
                }
                free(w);
            }
        }
        free(g);
        free(x);
        free(y);
        be->ops->free(be, labels);
        mp_model_destroy(m);
        mp_backend_destroy(be);
        free(spec);
    }
}

Test(gpt_model, split_backward_equals_whole)
{
    const shape_t sh = {.B = 2, .T = 5, .C = 12, .H = 3, .F = 20, .V = 9, .blocks = 2};
    mp_spec_t *spec = gpt_spec(&sh, 1, MP_OPTIM_SGD);
    mp_backend_t *be;
    mp_model_t *m;
    cr_assert_eq(mp_backend_cpu_create(1, &be), MP_OK);
    cr_assert_eq(mp_model_create(be, spec, 0, spec->model.nlayers, 1, sh.B, &m), MP_OK);
    int64_t N = sh.B * sh.T, P = mp_model_param_count(m);
    float *x = malloc(sizeof(float) * N), *g1 = malloc(sizeof(float) * P),
          *g2 = malloc(sizeof(float) * P), *out;
    int32_t *y = malloc(sizeof(int32_t) * N);
    int32_t *labels = be->ops->alloc(be, sizeof(int32_t) * N);
    tokens(&sh, 1, x, y);
    cr_assert_eq(mp_model_zero_grad(m), MP_OK);
    loss_of(m, be, &sh, x, y, labels, true);
    cr_assert_eq(be->ops->download(be, g1, mp_model_grads(m), sizeof(float) * P), MP_OK);
    cr_assert_eq(mp_model_zero_grad(m), MP_OK);
    cr_assert_eq(mp_model_forward(m, 0, sh.B, &out), MP_OK);
    cr_assert_eq(mp_model_loss(m, 0, labels, sh.B, 1.0f / (float)N, NULL, NULL), MP_OK);
    cr_assert_eq(mp_model_backward_input(m, 0, sh.B, NULL), MP_OK);
    cr_assert_eq(mp_model_backward_weight(m, 0, sh.B), MP_OK);
    cr_assert_eq(be->ops->download(be, g2, mp_model_grads(m), sizeof(float) * P), MP_OK);
    cr_assert_eq(memcmp(g1, g2, sizeof(float) * P), 0, "B + W differs from the whole backward");
    free(x);
    free(y);
    free(g1);
    free(g2);
    be->ops->free(be, labels);
    mp_model_destroy(m);
    mp_backend_destroy(be);
    free(spec);
}

/* ---- TP ranks as threads with in-memory collectives -------------------- */


typedef struct {
    const shape_t *sh;
    const mp_spec_t *spec;
    const mp_tp_plan_t *plan; /* NULL: serial */
    int rank;
    group_t *g;
    double loss[S];
    int64_t loss_coll_bytes; /* bytes the last loss call handed to collectives */
    float *full[MP_SPEC_MAX_LAYERS][MP_TP_MAX_PARAMS]; /* full tensors (scattered blocks) */
    int status;
} run_t;

static void *run_main(void *p)
{
    run_t *r = p;
    const shape_t *sh = r->sh;
    mp_backend_t *be = NULL;
    mp_model_t *m = NULL;
    member_t me = {r->g, r->rank};
    mp_model_coll_t coll = {mem_allreduce, mem_allgather, &me};
    r->status = mp_backend_cpu_create(1, &be);
    if (r->status == MP_OK) {
        r->status = mp_model_create_shard(be, r->spec, r->plan, 0, r->spec->model.nlayers, r->rank,
                                          &coll, 1, sh->B, &m);
    }
    if (r->status != MP_OK) {
        mp_backend_destroy(be);
        return NULL;
    }
    int64_t N = sh->B * sh->T;
    float *x = malloc(sizeof(float) * N), *out;
    int32_t *y = malloc(sizeof(int32_t) * N);
    int32_t *labels = be->ops->alloc(be, sizeof(int32_t) * N);
    for (int s = 0; s < S && r->status == MP_OK; s++) {
        double loss = 0.0;
        tokens(sh, s, x, y);
        mp_status_t st = mp_model_zero_grad(m);
        if (st == MP_OK) {
            st = be->ops->upload(be, mp_model_input(m, 0), x, (size_t)N * sizeof(float));
        }
        if (st == MP_OK) {
            st = be->ops->upload(be, labels, y, (size_t)N * sizeof(int32_t));
        }
        if (st == MP_OK) {
            st = mp_model_forward(m, 0, sh->B, &out);
        }
        int64_t before = mp_model_coll_bytes(m);
        if (st == MP_OK) {
            st = mp_model_loss(m, 0, labels, sh->B, 1.0f / (float)N, &loss, NULL);
        }
        r->loss_coll_bytes = mp_model_coll_bytes(m) - before;
        if (st == MP_OK) {
            st = mp_model_backward(m, 0, sh->B, NULL);
        }
        if (st == MP_OK) {
            st = mp_model_step(m, s + 1);
        }
        r->loss[s] = loss / (double)N;
        r->status = st;
    }
    for (int l = 0; l < r->spec->model.nlayers && r->status == MP_OK; l++) {
        for (int p = 0; p < mp_layer_nparams(&r->spec->model.layers[l]); p++) {
            mp_tp_slice_t sl;
            r->status = mp_model_param_slice(m, l, p, &sl);
            if (r->status != MP_OK) {
                break;
            }
            float *blk = malloc(sizeof(float) * sl.rows * sl.cols);
            r->full[l][p] = calloc((size_t)(sl.full_rows * sl.full_cols), sizeof(float));
            r->status = mp_model_param_download(m, l, p, blk);
            mp_tp_slice_scatter(&sl, blk, r->full[l][p]);
            free(blk);
        }
    }
    free(x);
    free(y);
    be->ops->free(be, labels);
    mp_model_destroy(m);
    mp_backend_destroy(be);
    return NULL;
}

static void run_free(run_t *r)
{
    for (int l = 0; l < MP_SPEC_MAX_LAYERS; l++) {
        for (int p = 0; p < MP_TP_MAX_PARAMS; p++) {
            free(r->full[l][p]);
        }
    }
}

static void check_tp(const shape_t *sh, int tp, mp_optim_kind_t opt, double tol)
{
    mp_spec_t *ser_spec = gpt_spec(sh, 1, opt), *spec = gpt_spec(sh, tp, opt);
    mp_tp_plan_t *plan = malloc(sizeof(*plan));
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_tp_plan_build(spec, NULL, plan, &err), MP_OK, "%s", err.msg);
    cr_assert(plan->vocab_parallel_loss);
    run_t ser = {.sh = sh, .spec = ser_spec};
    run_main(&ser);
    cr_assert_eq(ser.status, MP_OK, "serial run: %s", mp_strerror(ser.status));
    group_t g = {.tp = tp};
    pthread_barrier_init(&g.bar, NULL, (unsigned)tp);
    run_t *runs = calloc(MAXR, sizeof(run_t));
    pthread_t th[MAXR];
    for (int t = 0; t < tp; t++) {
        runs[t] = (run_t){.sh = sh, .spec = spec, .plan = plan, .rank = t, .g = &g};
        pthread_create(&th[t], NULL, run_main, &runs[t]);
    }
    for (int t = 0; t < tp; t++) {
        pthread_join(th[t], NULL);
        cr_assert_eq(runs[t].status, MP_OK, "rank %d: %s", t, mp_strerror(runs[t].status));
    }
    for (int s = 0; s < S; s++) {
        for (int t = 0; t < tp; t++) {
            cr_expect(fabs(runs[t].loss[s] - ser.loss[s]) <= tol * fabs(ser.loss[s]),
                      "step %d rank %d: loss %.9g, serial %.9g", s, t, runs[t].loss[s],
                      ser.loss[s]);
        }
    }
    /* The loss moved 3 floats a position (max, exponent sum, target logit). */
    int64_t N = sh->B * sh->T;
    cr_expect_eq(runs[0].loss_coll_bytes, 3 * N * (int64_t)sizeof(float));
    cr_expect_lt(runs[0].loss_coll_bytes, N * sh->V * (int64_t)sizeof(float));
    /* Every tensor, assembled from the ranks' blocks, equals the serial one. */
    for (int l = 0; l < spec->model.nlayers; l++) {
        for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(&spec->model.layers[l], p, &rows, &cols);
            mp_tp_slice_t sl;
            double d = 0.0, mx = 0.0, dk = 0.0;
            /* The K third of qkv's bias has a zero gradient in exact
             * arithmetic (softmax ignores a shift shared by all scores), so
             * AdamW moves it by ±lr on float noise alone: bounded apart. */
            bool kbias = strcmp(mp_layer_param_name(&spec->model.layers[l], p), "attn.qkv.bias") == 0;
            for (int t = 0; t < tp; t++) {
                cr_assert_eq(mp_tp_param_slice(plan, l, p, t, &sl), MP_OK);
                for (int64_t r = 0; r < sl.rows; r++) {
                    for (int64_t j = 0; j < sl.cols; j++) {
                        int64_t c = mp_tp_slice_full_col(&sl, j), i = (sl.row0 + r) * cols + c;
                        double e = fabs((double)runs[t].full[l][p][i] - ser.full[l][p][i]);
                        if (kbias && c >= sh->C && c < 2 * sh->C) {
                            dk = fmax(dk, e);
                        } else {
                            d = fmax(d, e);
                        }
                    }
                }
            }
            cr_expect(dk <= 2.0 * spec->train.lr * S, "K bias moved %.3g", dk);
            for (int64_t i = 0; i < rows * cols; i++) {
                mx = fmax(mx, fabs((double)ser.full[l][p][i]));
            }
            cr_expect(d <= tol * (mx > 0 ? mx : 1.0), "layer %d %s: max difference %.3g of %.3g", l,
                      mp_layer_param_name(&spec->model.layers[l], p), d, mx);
        }
    }
    for (int t = 0; t < tp; t++) {
        run_free(&runs[t]);
    }
    run_free(&ser);
    free(runs);
    pthread_barrier_destroy(&g.bar);
    free(plan);
    free(spec);
    free(ser_spec);
}

Test(gpt_model, tp2_equals_serial_sgd)
{
    const shape_t sh = {.B = 2, .T = 4, .C = 8, .H = 2, .F = 12, .V = 10, .blocks = 2};
    check_tp(&sh, 2, MP_OPTIM_SGD, 1e-5);
}

Test(gpt_model, tp4_one_head_each_equals_serial_adamw)
{
    const shape_t sh = {.B = 3, .T = 3, .C = 12, .H = 4, .F = 8, .V = 12, .blocks = 1};
    check_tp(&sh, 4, MP_OPTIM_ADAMW, 1e-3);
}

Test(gpt_model, plan_refuses_what_tp_cannot_split)
{
    const shape_t sh = {.B = 2, .T = 4, .C = 12, .H = 3, .F = 12, .V = 10, .blocks = 1};
    mp_tp_plan_t *plan = malloc(sizeof(*plan));
    mp_errbuf_t err = {{0}};
    mp_spec_t *spec = gpt_spec(&sh, 2, MP_OPTIM_SGD);
    cr_assert_eq(mp_tp_plan_build(spec, NULL, plan, &err), MP_ERR_SPEC);
    cr_expect_str_eq(err.msg, "parallel.tp: 2 does not divide model.layers[1].heads = 3");
    free(spec);
    const shape_t sv = {.B = 2, .T = 4, .C = 8, .H = 2, .F = 8, .V = 9, .blocks = 1};
    spec = gpt_spec(&sv, 2, MP_OPTIM_SGD);
    cr_assert_eq(mp_tp_plan_build(spec, NULL, plan, &err), MP_ERR_SPEC);
    cr_expect_str_eq(err.msg, "parallel.tp: 2 does not divide model.layers[0].vocab = 9");
    free(spec);
    free(plan);
}
