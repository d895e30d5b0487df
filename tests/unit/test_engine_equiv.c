/*
 * test_engine_equiv.c - the key test of the engine: a job run in one
 * process as pp x tp x dp shard threads over real UCX workers (with the
 * feeder streaming the data) equals the serial trainer.  For the grids
 * (pp, tp, dp) in {(1,1,1), (2,1,1), (1,2,1), (2,2,1), (1,1,2), (2,1,2),
 * (3,1,1)}, schedules gpipe and 1f1b and micro-batches 1, 3 and 4, on a
 * synthetic model with linear, gelu, relu and mlp_block layers: after 5
 * optimizer steps with SGD + momentum the gathered weights equal the
 * serial run's within 1e-5 relative per tensor (max |a - b| / max |ref|),
 * and so do the loss curves; a few grids with AdamW within 1e-3 (its
 * division by sqrt(v) amplifies rounding differences); the naive
 * schedule, an explicit and a balanced partition, and the full 2 x 2 x 2
 * grid, and zero_bubble and interleaved_1f1b (2 and 3 chunks per stage) on
 * grids with tp and dp (SGD and AdamW).  The test
 * split's evaluation matches too.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "engine/local.h"
#include "model/npy.h"
#include "model/train.h"

#define STEPS 5
#define BATCH 24

static mp_spec_t *make_spec_ex(int pp, int tp, int dp, int m, const char *sched, bool adamw,
                               const char *extra)
{
    char json[4096];
    snprintf(json, sizeof(json),
             "{\"name\": \"equiv\", \"model\": {\"input\": 12, \"layers\": ["
             "{\"type\": \"linear\", \"out\": 16}, {\"type\": \"gelu\"},"
             "{\"type\": \"linear\", \"out\": 16}, {\"type\": \"relu\"},"
             "{\"type\": \"mlp_block\", \"hidden\": 16, \"ffn\": 32},"
             "{\"type\": \"linear\", \"out\": 6}], \"loss\": \"softmax_xent\"},"
             "\"data\": {\"dataset\": \"synthetic\", \"samples\": 120, \"test_samples\": 30,"
             "\"classes\": 6, \"seed\": 9},"
             "\"parallel\": {\"pp\": %d, \"tp\": %d, \"dp\": %d, \"micro_batches\": %d,"
             "\"schedule\": \"%s\"%s},"
             "\"train\": {\"batch_size\": %d, \"steps\": %d, %s \"seed\": 4}}",
             pp, tp, dp, m, sched, extra, BATCH, STEPS,
             adamw ? "\"optimizer\": \"adamw\", \"lr\": 0.01,"
                   : "\"optimizer\": \"sgd\", \"lr\": 0.1, \"momentum\": 0.9,");
    mp_spec_t *spec = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_spec_parse(json, strlen(json), &spec, &err), MP_OK, "%s", err.msg);
    return spec;
}

static mp_spec_t *make_spec(int pp, int tp, int dp, int m, const char *sched, bool adamw)
{
    return make_spec_ex(pp, tp, dp, m, sched, adamw, "");
}

/* The serial run's weights and losses, once per optimizer. */
typedef struct {
    bool done;
    mp_train_result_t res;
    float *w[MP_SPEC_MAX_LAYERS][MP_SPEC_MAX_PARAMS];
} serial_t;

static serial_t serial_sgd, serial_adamw;

static serial_t *serial_ref(bool adamw)
{
    serial_t *s = adamw ? &serial_adamw : &serial_sgd;
    if (s->done) {
        return s;
    }
    mp_spec_t *spec = make_spec(1, 1, 1, 1, "gpipe", adamw);
    char dir[] = "/tmp/mp_engine_equiv_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    mp_train_opts_t o = {.device = "cpu", .threads = 1, .save_weights = dir};
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_train_serial(spec, &o, &s->res, &err), MP_OK, "%s", err.msg);
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls); p++) {
            char path[512];
            snprintf(path, sizeof(path), "%s/%d.%s.npy", dir, l, mp_layer_param_name(ls, p));
            int ndim;
            int64_t shape[4];
            cr_assert_eq(mp_npy_read(path, &s->w[l][p], &ndim, shape, &err), MP_OK, "%s", err.msg);
            unlink(path);
        }
    }
    rmdir(dir);
    mp_spec_free(spec);
    s->done = true;
    return s;
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

static bool staged; /* run the shards' host-staging path (a device backend's) */

static void check_one_ex(int pp, int tp, int dp, int m, const char *sched, bool adamw,
                         const char *extra)
{
    double tol = adamw ? 1e-3 : 1e-5;
    serial_t *ref = serial_ref(adamw);
    mp_spec_t *spec = make_spec_ex(pp, tp, dp, m, sched, adamw, extra);
    mp_engine_local_opts_t o = mp_engine_local_opts_default();
    o.timeout_ms = 20000;
    o.stage_through_host = staged;
    mp_engine_result_t res;
    mp_errbuf_t err = {{0}};
    mp_status_t st = mp_engine_run_local(spec, &o, &res, &err);
    cr_assert_eq(st, MP_OK, "pp %d tp %d dp %d m %d %s: %s", pp, tp, dp, m, sched, err.msg);
    cr_assert_eq(res.train.steps, STEPS);
    for (int i = 0; i < STEPS; i++) {
        double a = res.train.losses[i], b = ref->res.losses[i];
        cr_expect_leq(fabs(a - b), tol * fabs(b),
                      "pp %d tp %d dp %d m %d %s: step %d loss %.9g, serial %.9g", pp, tp, dp, m,
                      sched, i + 1, a, b);
    }
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(ls, p, &rows, &cols);
            double e = rel_err(res.weights[l][p], ref->w[l][p], rows * cols);
            cr_expect_leq(e, tol, "pp %d tp %d dp %d m %d %s: %d.%s off by %.3g", pp, tp, dp, m,
                          sched, l, mp_layer_param_name(ls, p), e);
        }
    }
    /* The evaluation after the epoch, on the test split. */
    cr_expect(res.train.has_test);
    cr_expect_leq(fabs(res.train.test_loss - ref->res.test_loss),
                  (adamw ? 1e-3 : 1e-4) * fabs(ref->res.test_loss),
                  "pp %d tp %d dp %d m %d %s: test loss %.9g, serial %.9g", pp, tp, dp, m, sched,
                  res.train.test_loss, ref->res.test_loss);
    cr_expect_leq(fabs(res.train.test_accuracy - ref->res.test_accuracy), 1.0 / 30 + 1e-9,
                  "test accuracy %g, serial %g", res.train.test_accuracy, ref->res.test_accuracy);
    cr_expect_eq(res.nstages, pp);
    for (int s = 0; s < pp; s++) {
        cr_expect_gt(res.stage_slots[s], 0);
        cr_expect_gt(res.stage_act_bytes[s], 0);
    }
    cr_expect(res.bubble_fraction >= 0.0 && res.bubble_fraction < 1.0, "bubble %g",
              res.bubble_fraction);
    mp_engine_result_free(&res);
    mp_spec_free(spec);
}

static void check_one(int pp, int tp, int dp, int m, const char *sched, bool adamw)
{
    check_one_ex(pp, tp, dp, m, sched, adamw, "");
}

/* Every schedule and micro-batch count of one grid, SGD with momentum. */
static void check_grid(int pp, int tp, int dp)
{
    static const char *const scheds[] = {"gpipe", "1f1b"};
    static const int ms[] = {1, 3, 4};
    for (int s = 0; s < 2; s++) {
        for (int k = 0; k < 3; k++) {
            check_one(pp, tp, dp, ms[k], scheds[s], false);
        }
    }
}

Test(engine_equiv, grid_1_1_1, .timeout = 120)
{
    check_grid(1, 1, 1);
}
Test(engine_equiv, grid_2_1_1, .timeout = 120)
{
    check_grid(2, 1, 1);
}
Test(engine_equiv, grid_1_2_1, .timeout = 120)
{
    check_grid(1, 2, 1);
}
Test(engine_equiv, grid_2_2_1, .timeout = 120)
{
    check_grid(2, 2, 1);
}
Test(engine_equiv, grid_1_1_2, .timeout = 120)
{
    check_grid(1, 1, 2);
}
Test(engine_equiv, grid_2_1_2, .timeout = 120)
{
    check_grid(2, 1, 2);
}
Test(engine_equiv, grid_3_1_1, .timeout = 120)
{
    check_grid(3, 1, 1);
}

Test(engine_equiv, adamw_grids, .timeout = 120)
{
    check_one(2, 2, 1, 4, "1f1b", true);
    check_one(1, 1, 2, 3, "gpipe", true);
    check_one(2, 1, 2, 3, "1f1b", true);
    check_one(3, 1, 1, 4, "gpipe", true);
}

Test(engine_equiv, naive_and_other_partitions, .timeout = 120)
{
    check_one(2, 1, 1, 1, "naive", false);
    /* Layer 0 alone on stage 0: its column split all-gathers instead of
     * pairing with layer 2, which becomes column-parallel on stage 1. */
    check_one_ex(3, 2, 1, 3, "1f1b", false, ", \"stages\": [1, 3, 2]");
    check_one_ex(2, 2, 2, 2, "gpipe", false, ", \"partition\": \"balanced\"");
}

Test(engine_equiv, host_staging_path_of_device_backends, .timeout = 120)
{
    /* What a CUDA shard does (download, send, receive, upload; the DP
     * allreduce on a host copy), run on the CPU backend. */
    staged = true;
    check_one(2, 2, 1, 3, "1f1b", false);
    check_one(2, 1, 2, 4, "gpipe", false);
}

Test(engine_equiv, zero_bubble_grids, .timeout = 180)
{
    /* B then W as separate actions, W's deferred: the same sums in another order. */
    check_one(2, 1, 1, 4, "zero_bubble", false);
    check_one(2, 2, 1, 3, "zero_bubble", false);
    check_one(3, 1, 2, 4, "zero_bubble", false);
    check_one(2, 2, 2, 2, "zero_bubble", true);
    check_one(3, 1, 1, 3, "zero_bubble", true);
}

Test(engine_equiv, zero_bubble_with_fused_weight_gradients, .timeout = 180)
{
    /* parallel.fuse_w: the W's of several micro-batches as one GEMM per
     * weight (a queue of 3 of 4 micro-batches: one fused W, then the last
     * alone at the step's end; all 4 at once; with TP and DP). */
    check_one_ex(2, 1, 1, 4, "zero_bubble", false, ", \"fuse_w\": 3");
    check_one_ex(2, 2, 1, 4, "zero_bubble", false, ", \"fuse_w\": 4");
    check_one_ex(3, 1, 2, 4, "zero_bubble", true, ", \"fuse_w\": 2");
}

Test(engine_equiv, interleaved_1f1b_grids, .timeout = 180)
{
    /* v chunks per stage, the last stage's chunk c feeding the first's
     * c + 1 (a ring of two at pp = 2: one endpoint both ways). */
    const char *v2 = ", \"virtual_stages\": 2";
    check_one_ex(2, 1, 1, 2, "interleaved_1f1b", false, v2);
    check_one_ex(2, 2, 1, 4, "interleaved_1f1b", false, v2);
    check_one_ex(3, 1, 2, 3, "interleaved_1f1b", false, v2);
    check_one_ex(2, 1, 1, 4, "interleaved_1f1b", false, ", \"virtual_stages\": 3");
    check_one_ex(2, 2, 2, 2, "interleaved_1f1b", true, v2);
    check_one_ex(3, 1, 1, 3, "interleaved_1f1b", true, v2);
    /* Explicit chunks: entry c * pp + s is chunk c of stage s. */
    check_one_ex(2, 1, 1, 2, "interleaved_1f1b", false,
                 ", \"virtual_stages\": 2, \"stages\": [1, 2, 2, 1]");
    staged = true;
    check_one_ex(2, 1, 2, 2, "interleaved_1f1b", false, v2);
    staged = false;
}
