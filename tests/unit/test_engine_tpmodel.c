/*
 * test_engine_tpmodel.c - proves model.c's tensor parallelism: tp ranks run
 * as threads of this process, each with its own CPU backend and a shard
 * model holding only its parameter slices, exchanging data only through
 * the plan's collectives (in-memory, a barrier between phases).  After a
 * few SGD-with-momentum steps the gathered parameters, the losses and the
 * input gradient equal the serial model's within 1e-5 relative.
 *
 * Legend: B = batch rows, R = TP ranks, S = optimizer steps.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "gpu/init.h"
#include "model/model.h"
#include "mem_coll.h"
#include "parallel/partition.h"
#include "parallel/tpplan.h"

#define B 6
#define S 3
#define MAXR MEM_COLL_MAXR
#define TOL 1e-5

/* Every split of the plan: column paired with row through gelu, relu, an
 * mlp_block, a forced row-parallel linear on a replicated input (slice and
 * gather), a column linear all-gathered at the end. */
static const char *spec_json =
    "{\"name\": \"tp\", \"model\": {\"input\": 10, \"layers\": ["
    "{\"type\": \"linear\", \"out\": 12}, {\"type\": \"gelu\"},"
    "{\"type\": \"linear\", \"out\": 12}, {\"type\": \"relu\"},"
    "{\"type\": \"mlp_block\", \"hidden\": 12, \"ffn\": 24},"
    "{\"type\": \"linear\", \"out\": 12, \"tp\": \"row\"}, {\"type\": \"gelu\"},"
    "{\"type\": \"linear\", \"out\": 6}], \"loss\": \"softmax_xent\"},"
    "\"data\": {\"dataset\": \"synthetic\", \"samples\": 64, \"classes\": 6, \"seed\": 3},"
    "\"parallel\": {\"tp\": %d},"
    "\"train\": {\"batch_size\": 6, \"optimizer\": \"sgd\", \"lr\": 0.2, \"momentum\": 0.9,"
    "\"seed\": 7}}";

static mp_spec_t *make_spec(int tp)
{
    char json[2048];
    snprintf(json, sizeof(json), spec_json, tp);
    mp_spec_t *spec = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_spec_parse(json, strlen(json), &spec, &err), MP_OK, "%s", err.msg);
    return spec;
}



/* ---- one training run: serial (plan NULL) or one TP rank --------------- */

typedef struct {
    const mp_spec_t *spec;
    const mp_tp_plan_t *plan;
    int first, count, rank;
    group_t *g;
    const float *x;   /* [S][B, in] */
    const int32_t *y; /* [S][B] */
    double loss[S];
    float *in_grad;       /* [B, in] of the last step, when first > 0 */
    float *params[64][4]; /* [layer][param]: this run's slice */
    mp_tp_slice_t slice[64][4];
    int status;
} run_t;

static void *run_main(void *p)
{
    run_t *r = p;
    mp_backend_t *be = NULL;
    mp_model_t *m = NULL;
    member_t me = {r->g, r->rank};
    mp_model_coll_t coll = {mem_allreduce, mem_allgather, &me};
    r->status = mp_backend_cpu_create(1, &be);
    if (r->status != MP_OK) {
        return NULL;
    }
    r->status =
        mp_model_create_shard(be, r->spec, r->plan, r->first, r->count, r->rank, &coll, 1, B, &m);
    if (r->status != MP_OK) {
        mp_backend_destroy(be);
        return NULL;
    }
    int64_t in = mp_model_in_dim(m);
    int32_t *labels = be->ops->alloc(be, B * sizeof(int32_t));
    for (int s = 0; s < S && r->status == MP_OK; s++) {
        float *out, *dx = NULL;
        double loss = 0.0;
        mp_status_t st = mp_model_zero_grad(m);
        if (st == MP_OK) {
            st = be->ops->upload(be, mp_model_input(m, 0), r->x + s * B * in,
                                 (size_t)(B * in) * sizeof(float));
        }
        if (st == MP_OK) {
            st = be->ops->upload(be, labels, r->y + s * B, B * sizeof(int32_t));
        }
        if (st == MP_OK) {
            st = mp_model_forward(m, 0, B, &out);
        }
        if (st == MP_OK) {
            st = mp_model_loss(m, 0, labels, B, 1.0f / B, &loss, NULL);
        }
        if (st == MP_OK) {
            st = mp_model_backward(m, 0, B, r->first > 0 ? &dx : NULL);
        }
        if (st == MP_OK && dx != NULL) {
            st = be->ops->download(be, r->in_grad, dx, (size_t)(B * in) * sizeof(float));
        }
        if (st == MP_OK) {
            st = mp_model_step(m, s + 1);
        }
        r->loss[s] = loss / B;
        r->status = st;
    }
    for (int l = r->first; l < r->first + r->count && r->status == MP_OK; l++) {
        for (int p = 0; p < mp_layer_nparams(&r->spec->model.layers[l]); p++) {
            mp_tp_slice_t *sl = &r->slice[l][p];
            r->status = mp_model_param_slice(m, l, p, sl);
            if (r->status != MP_OK) {
                break;
            }
            r->params[l][p] = malloc((size_t)(sl->rows * sl->cols) * sizeof(float));
            r->status = mp_model_param_download(m, l, p, r->params[l][p]);
        }
    }
    be->ops->free(be, labels);
    mp_model_destroy(m);
    mp_backend_destroy(be);
    return NULL;
}

static void run_free(run_t *r)
{
    for (int l = 0; l < 64; l++) {
        for (int p = 0; p < 4; p++) {
            free(r->params[l][p]);
        }
    }
    free(r->in_grad);
}

static double rel_err(const float *a, const float *ref, int64_t n)
{
    double d = 0.0, mx = 0.0;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - ref[i]));
        mx = fmax(mx, fabs((double)ref[i]));
    }
    return mx > 0 ? d / mx : d;
}

/* Runs layers [first, first + count) serially and as tp ranks (the plan
 * built over `part`, NULL for one stage), and compares. */
static void check_tp(int tp, const mp_part_t *part, int first, int count)
{
    mp_spec_t *spec = make_spec(tp);
    mp_tp_plan_t *plan = malloc(sizeof(*plan));
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_tp_plan_build(spec, part, plan, &err), MP_OK, "%s", err.msg);
    int64_t in = spec->model.layers[first].in_dim;
    float *x = malloc(sizeof(float) * S * B * in);
    int32_t *y = malloc(sizeof(int32_t) * S * B);
    for (int64_t i = 0; i < S * B * in; i++) {
        x[i] = 2.0f * mp_init_u01(11, 0, 0, (uint64_t)i) - 1.0f;
    }
    for (int i = 0; i < S * B; i++) {
        y[i] = (int32_t)(mp_rng_hash(5, (uint64_t)i, 0, 0) % 6);
    }

    run_t ser = {.spec = spec, .first = first, .count = count, .x = x, .y = y};
    ser.in_grad = calloc((size_t)(B * in), sizeof(float));
    run_main(&ser);
    cr_assert_eq(ser.status, MP_OK, "serial run: %s", mp_strerror(ser.status));

    group_t g = {.tp = tp};
    pthread_barrier_init(&g.bar, NULL, (unsigned)tp);
    run_t runs[MAXR];
    pthread_t th[MAXR];
    for (int t = 0; t < tp; t++) {
        runs[t] = (run_t){.spec = spec,
                          .plan = plan,
                          .first = first,
                          .count = count,
                          .rank = t,
                          .g = &g,
                          .x = x,
                          .y = y};
        runs[t].in_grad = calloc((size_t)(B * in), sizeof(float));
        pthread_create(&th[t], NULL, run_main, &runs[t]);
    }
    for (int t = 0; t < tp; t++) {
        pthread_join(th[t], NULL);
    }
    pthread_barrier_destroy(&g.bar);
    for (int t = 0; t < tp; t++) {
        cr_assert_eq(runs[t].status, MP_OK, "rank %d: %s", t, mp_strerror(runs[t].status));
        for (int s = 0; s < S; s++) {
            cr_expect_leq(fabs(runs[t].loss[s] - ser.loss[s]), TOL * fabs(ser.loss[s]),
                          "tp %d rank %d step %d loss %.9g vs serial %.9g", tp, t, s,
                          runs[t].loss[s], ser.loss[s]);
        }
        if (first > 0) {
            double e = rel_err(runs[t].in_grad, ser.in_grad, B * in);
            cr_expect_leq(e, TOL, "tp %d rank %d input gradient off by %g", tp, t, e);
        }
    }
    /* Assemble every parameter from the ranks' blocks and compare. */
    for (int l = first; l < first + count; l++) {
        for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
            int64_t rows = ser.slice[l][p].rows, cols = ser.slice[l][p].cols;
            float *full = malloc(sizeof(float) * (size_t)(rows * cols));
            for (int64_t i = 0; i < rows * cols; i++) {
                full[i] = NAN;
            }
            for (int t = 0; t < tp; t++) {
                const mp_tp_slice_t *sl = &runs[t].slice[l][p];
                cr_assert_eq(sl->full_rows * sl->full_cols, rows * cols);
                for (int64_t i = 0; i < sl->rows; i++) {
                    for (int64_t j = 0; j < sl->cols; j++) {
                        float v = runs[t].params[l][p][i * sl->cols + j];
                        float *dst = &full[(sl->row0 + i) * cols + sl->col0 + j];
                        if (sl->replicated && t > 0) {
                            /* Replicated tensors never drift apart. */
                            cr_expect_eq(v, *dst, "layer %d param %d differs across ranks", l, p);
                        }
                        *dst = v;
                    }
                }
            }
            double e = rel_err(full, ser.params[l][p], rows * cols);
            cr_expect_leq(e, TOL, "tp %d layer %d %s off by %g", tp, l,
                          mp_layer_param_name(&spec->model.layers[l], p), e);
            free(full);
        }
    }
    run_free(&ser);
    for (int t = 0; t < tp; t++) {
        run_free(&runs[t]);
    }
    free(x);
    free(y);
    free(plan);
    mp_spec_free(spec);
}

Test(engine_tpmodel, tp2_whole_model_equals_serial)
{
    check_tp(2, NULL, 0, 8);
}

Test(engine_tpmodel, tp3_whole_model_equals_serial)
{
    check_tp(3, NULL, 0, 8);
}

Test(engine_tpmodel, tp2_second_stage_with_input_gradient_equals_serial)
{
    int counts[2] = {4, 4};
    mp_part_t part;
    mp_errbuf_t err;
    cr_assert_eq(mp_part_explicit(counts, 2, 8, 2, &part, &err), MP_OK);
    check_tp(2, &part, 4, 4);
}

Test(engine_tpmodel, tp1_shard_is_the_serial_model)
{
    /* A plan of tp = 1 through the shard entry point: bit-identical. */
    check_tp(1, NULL, 0, 8);
}

Test(engine_tpmodel, refuses_a_range_that_splits_a_sharded_activation)
{
    mp_spec_t *spec = make_spec(2);
    mp_tp_plan_t *plan = malloc(sizeof(*plan));
    mp_errbuf_t err;
    cr_assert_eq(mp_tp_plan_build(spec, NULL, plan, &err), MP_OK);
    mp_backend_t *be;
    cr_assert_eq(mp_backend_cpu_create(1, &be), MP_OK);
    member_t me = {NULL, 0};
    mp_model_coll_t coll = {mem_allreduce, mem_allgather, &me};
    mp_model_t *m = NULL;
    /* Layer 1 (gelu) receives the sharded output of layer 0. */
    cr_expect_eq(mp_model_create_shard(be, spec, plan, 1, 3, 0, &coll, 1, B, &m), MP_ERR_INVAL);
    cr_expect_null(m);
    /* tp > 1 without collectives. */
    cr_expect_eq(mp_model_create_shard(be, spec, plan, 0, 8, 0, NULL, 1, B, &m), MP_ERR_INVAL);
    mp_backend_destroy(be);
    free(plan);
    mp_spec_free(spec);
}
