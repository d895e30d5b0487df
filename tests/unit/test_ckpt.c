/*
 * test_ckpt.c - checkpoints on disk: the shards of a pp=2 x tp=2 grid
 * write their blocks and optimizer state, the manifest is built from their
 * files and committed, and the checkpoint loads into other grids (serial,
 * tp=2 of one stage) with every element where it belongs (values are a
 * function of the full tensor's index, so a block in the wrong place
 * shows); a model that differs is refused naming the field; damaged
 * checkpoints (a missing file, a truncated file, a manifest whose shape
 * disagrees with the file, no latest) are refused naming the file;
 * pruning keeps the newest; export writes the full tensors.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "model/ckpt.h"
#include "model/npy.h"
#include "model/safetensors.h"
#include "parallel/partition.h"
#include "parallel/tpplan.h"

static char dir[64];
static mp_backend_t *be;

static const char *SPEC =
    "{\"name\": \"ck\", \"model\": {\"input\": 12, \"layers\": ["
    "{\"type\": \"linear\", \"out\": 8}, {\"type\": \"gelu\"},"
    "{\"type\": \"mlp_block\", \"hidden\": 8, \"ffn\": 16},"
    "{\"type\": \"linear\", \"out\": 6}], \"loss\": \"softmax_xent\"},"
    "\"data\": {\"dataset\": \"synthetic\", \"samples\": 64, \"classes\": 6},"
    "\"parallel\": {\"pp\": 2, \"tp\": 2, \"micro_batches\": 2},"
    "\"train\": {\"batch_size\": 8, \"steps\": 4, \"optimizer\": \"adamw\", \"lr\": 0.001}}";

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/mp-test-ckpt-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    cr_assert_eq(mp_backend_cpu_create(1, &be), MP_OK);
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void teardown(void)
{
    mp_backend_destroy(be);
    nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

TestSuite(ckpt, .init = setup, .fini = teardown);

static mp_status_t no_allreduce(void *ctx, float *buf, int64_t n)
{
    (void)ctx;
    (void)buf;
    (void)n;
    return MP_ERR_UNSUPPORTED;
}

static mp_status_t no_allgather(void *ctx, const float *in, float *out, int64_t n)
{
    (void)ctx;
    (void)in;
    (void)out;
    (void)n;
    return MP_ERR_UNSUPPORTED;
}

static const char *base_spec = NULL; /* SPEC unless a test sets another */

static mp_spec_t *spec_with(int pp, int tp, const char *replace_from, const char *replace_to)
{
    char text[4096];
    snprintf(text, sizeof(text), "%s", base_spec != NULL ? base_spec : SPEC);
    char *p = strstr(text, "\"pp\": 2, \"tp\": 2");
    cr_assert_not_null(p);
    char grid[40];
    snprintf(grid, sizeof(grid), "\"pp\": %d, \"tp\": %d", pp, tp);
    char rest[4096];
    snprintf(rest, sizeof(rest), "%s", p + strlen("\"pp\": 2, \"tp\": 2"));
    snprintf(p, sizeof(text) - (size_t)(p - text), "%s%s", grid, rest);
    if (replace_from != NULL) {
        char *q = strstr(text, replace_from);
        cr_assert_not_null(q);
        snprintf(rest, sizeof(rest), "%s", q + strlen(replace_from));
        snprintf(q, sizeof(text) - (size_t)(q - text), "%s%s", replace_to, rest);
    }
    mp_spec_t *spec;
    mp_errbuf_t err;
    cr_assert_eq(mp_spec_parse(text, strlen(text), &spec, &err), MP_OK, "%s", err.msg);
    return spec;
}

/* The value every element of every tensor gets: a function of its place. */
static float value_of(int layer, int param, int which, int64_t r, int64_t c, int64_t full_cols)
{
    return (float)(layer * 1000 + param * 100 + which * 10) + (float)(r * full_cols + c) * 1e-3f;
}

/* The shard (stage, tp_rank) of spec, its parameters and state set to value_of. */
static mp_model_t *make_shard(const mp_spec_t *spec, int stage, int tp_rank)
{
    mp_errbuf_t err;
    mp_part_t part;
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_OK, "%s", err.msg);
    mp_tp_plan_t *plan = mp_malloc(sizeof(*plan));
    cr_assert_eq(mp_tp_plan_build(spec, &part, plan, &err), MP_OK, "%s", err.msg);
    mp_model_coll_t coll = {no_allreduce, no_allgather, NULL};
    mp_model_t *m;
    cr_assert_eq(mp_model_create_shard(be, spec, plan, part.first[stage], part.count[stage],
                                       tp_rank, &coll, 1, 4, &m),
                 MP_OK);
    mp_free(plan);
    for (int l = mp_model_first_layer(m); l < mp_model_first_layer(m) + mp_model_layer_count(m);
         l++) {
        for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
            mp_tp_slice_t s;
            cr_assert_eq(mp_model_param_slice(m, l, p, &s), MP_OK);
            float *h = mp_malloc((size_t)(s.rows * s.cols) * sizeof(float));
            for (int which = -1; which < 2; which++) {
                for (int64_t r = 0; r < s.rows; r++) {
                    for (int64_t c = 0; c < s.cols; c++) {
                        h[r * s.cols + c] = value_of(l, p, which + 1, s.row0 + r,
                                                     mp_tp_slice_full_col(&s, c), s.full_cols);
                    }
                }
                cr_assert_eq(which < 0 ? mp_model_param_upload(m, l, p, h)
                                       : mp_model_state_upload(m, which, l, p, h),
                             MP_OK);
            }
            mp_free(h);
        }
    }
    return m;
}

/* Writes the checkpoint of step `step` from a pp x tp grid of spec and commits it. */
static void write_checkpoint(const char *ckdir, int pp, int tp, int64_t step)
{
    mp_spec_t *spec = spec_with(pp, tp, NULL, NULL);
    mp_errbuf_t err = {{0}};
    for (int s = 0; s < pp; s++) {
        for (int t = 0; t < tp; t++) {
            mp_model_t *m = make_shard(spec, s, t);
            mp_ckpt_snap_t *snap;
            cr_assert_eq(mp_ckpt_snap_create(&m, 1, spec, s, t, &snap), MP_OK);
            cr_assert_eq(mp_ckpt_snap_fill(snap, &m, 1, step), MP_OK);
            cr_assert_eq(mp_ckpt_snap_write(snap, ckdir, NULL, 0, &err), MP_OK, "%s", err.msg);
            mp_ckpt_snap_free(snap);
            mp_model_destroy(m);
        }
    }
    char text[4096];
    snprintf(text, sizeof(text), "%s", base_spec != NULL ? base_spec : SPEC);
    double losses[3] = {2.5, 2.25, 2.0};
    cr_assert_eq(mp_ckpt_manifest_write(ckdir, step, text, pp, tp, 1, losses, 3, &err), MP_OK,
                 "%s", err.msg);
    cr_assert_eq(mp_ckpt_commit(ckdir, step, &err), MP_OK, "%s", err.msg);
    mp_spec_free(spec);
}

static const char *ck_dir(void)
{
    static char p[128];
    snprintf(p, sizeof(p), "%s/ck", dir);
    return p;
}

/* Every block and state element of model m is value_of its place. */
static void assert_values(mp_model_t *m, const mp_spec_t *spec)
{
    for (int l = mp_model_first_layer(m); l < mp_model_first_layer(m) + mp_model_layer_count(m);
         l++) {
        for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
            mp_tp_slice_t s;
            cr_assert_eq(mp_model_param_slice(m, l, p, &s), MP_OK);
            float *h = mp_malloc((size_t)(s.rows * s.cols) * sizeof(float));
            for (int which = -1; which < 2; which++) {
                cr_assert_eq(which < 0 ? mp_model_param_download(m, l, p, h)
                                       : mp_model_state_download(m, which, l, p, h),
                             MP_OK);
                for (int64_t r = 0; r < s.rows; r++) {
                    for (int64_t c = 0; c < s.cols; c++) {
                        float want = value_of(l, p, which + 1, s.row0 + r,
                                              mp_tp_slice_full_col(&s, c), s.full_cols);
                        cr_assert_eq(h[r * s.cols + c], want,
                                     "layer %d param %d state %d [%lld, %lld]: %g, want %g", l, p,
                                     which, (long long)(s.row0 + r), (long long)(s.col0 + c),
                                     h[r * s.cols + c], want);
                    }
                }
            }
            mp_free(h);
        }
    }
}

Test(ckpt, a_pp2_tp2_checkpoint_loads_serially_with_every_element_in_place)
{
    write_checkpoint(ck_dir(), 2, 2, 3);
    mp_ckpt_t *ck;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_ckpt_open(ck_dir(), &ck, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(mp_ckpt_step(ck), 3);
    int pp, tp, dp;
    mp_ckpt_grid(ck, &pp, &tp, &dp);
    cr_assert(pp == 2 && tp == 2 && dp == 1);
    int64_t nl;
    const double *losses = mp_ckpt_losses(ck, &nl);
    cr_assert_eq(nl, 3);
    cr_assert_eq(losses[2], 2.0);
    mp_spec_t *serial = spec_with(1, 1, NULL, NULL);
    cr_assert_eq(mp_ckpt_check_spec(ck, serial, &err), MP_OK, "%s", err.msg);
    mp_model_t *m;
    cr_assert_eq(mp_model_create(be, serial, 0, serial->model.nlayers, 1, 4, &m), MP_OK);
    cr_assert_eq(mp_ckpt_load_model(ck, m, serial, &err), MP_OK, "%s", err.msg);
    assert_values(m, serial);
    mp_model_destroy(m);
    mp_spec_free(serial);
    mp_ckpt_close(ck);
}

Test(ckpt, a_serial_checkpoint_loads_into_tp2_shards)
{
    write_checkpoint(ck_dir(), 1, 1, 2);
    mp_ckpt_t *ck;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_ckpt_open(ck_dir(), &ck, &err), MP_OK, "%s", err.msg);
    mp_spec_t *grid = spec_with(1, 2, NULL, NULL);
    for (int t = 0; t < 2; t++) {
        mp_model_t *m = make_shard(grid, 0, t);
        /* Overwrite with something else first, so that loading must change it. */
        float *zeros = mp_calloc(64 * 64, sizeof(float));
        mp_tp_slice_t s;
        cr_assert_eq(mp_model_param_slice(m, 0, 0, &s), MP_OK);
        cr_assert_eq(mp_model_param_upload(m, 0, 0, zeros), MP_OK);
        mp_free(zeros);
        cr_assert_eq(mp_ckpt_load_model(ck, m, grid, &err), MP_OK, "%s", err.msg);
        assert_values(m, grid);
        mp_model_destroy(m);
    }
    mp_spec_free(grid);
    mp_ckpt_close(ck);
}

Test(ckpt, replicated_blocks_are_written_once)
{
    write_checkpoint(ck_dir(), 1, 2, 1);
    char path[256];
    snprintf(path, sizeof(path), "%s/step-00000001/shard-s00-t01.safetensors", ck_dir());
    mp_st_file_t *f;
    mp_errbuf_t err;
    cr_assert_eq(mp_st_open(path, &f, &err), MP_OK, "%s", err.msg);
    /* The mlp_block's fc2.bias is whole on every TP rank: only rank 0 has it. */
    cr_assert_null(mp_st_find(f, "2.fc2.bias"));
    cr_assert_not_null(mp_st_find(f, "2.fc1.bias"));
    cr_assert_not_null(mp_st_find(f, "2.fc1.bias.exp_avg_sq"));
    mp_st_close(f);
}

Test(ckpt, a_different_model_is_refused_naming_the_field)
{
    write_checkpoint(ck_dir(), 1, 1, 1);
    mp_ckpt_t *ck;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_ckpt_open(ck_dir(), &ck, &err), MP_OK, "%s", err.msg);
    mp_spec_t *other = spec_with(1, 1, "\"ffn\": 16", "\"ffn\": 32");
    cr_assert_eq(mp_ckpt_check_spec(ck, other, &err), MP_ERR_SPEC);
    cr_assert_not_null(strstr(err.msg, "model.layers[2].ffn: 32"), "%s", err.msg);
    mp_spec_free(other);
    /* Other changes (more steps, another lr) are allowed. */
    mp_spec_t *more = spec_with(1, 1, "\"steps\": 4", "\"steps\": 40");
    cr_assert_eq(mp_ckpt_check_spec(ck, more, &err), MP_OK, "%s", err.msg);
    mp_spec_free(more);
    mp_ckpt_close(ck);
}

static void assert_open_refused(const char *needle)
{
    mp_ckpt_t *ck = NULL;
    mp_errbuf_t err = {{0}};
    mp_status_t st = mp_ckpt_open(ck_dir(), &ck, &err);
    cr_assert_neq(st, MP_OK, "refused");
    cr_assert_null(ck);
    cr_assert_not_null(strstr(err.msg, needle), "'%s' in: %s", needle, err.msg);
}

Test(ckpt, no_latest_is_not_found)
{
    mkdir(ck_dir(), 0755);
    mp_ckpt_t *ck;
    mp_errbuf_t err;
    cr_assert_eq(mp_ckpt_open(ck_dir(), &ck, &err), MP_ERR_NOTFOUND);
    cr_assert_not_null(strstr(err.msg, "no committed checkpoint"), "%s", err.msg);
}

Test(ckpt, a_missing_shard_file_is_refused_naming_it)
{
    write_checkpoint(ck_dir(), 2, 2, 5);
    char path[256];
    snprintf(path, sizeof(path), "%s/step-00000005/shard-s01-t01.safetensors", ck_dir());
    cr_assert_eq(unlink(path), 0);
    assert_open_refused(path);
}

Test(ckpt, a_truncated_shard_file_is_refused_naming_it)
{
    write_checkpoint(ck_dir(), 2, 2, 5);
    char path[256];
    snprintf(path, sizeof(path), "%s/step-00000005/shard-s00-t01.safetensors", ck_dir());
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(truncate(path, sb.st_size - 7), 0);
    assert_open_refused(path);
}

Test(ckpt, a_manifest_shape_that_does_not_match_the_file_is_refused)
{
    write_checkpoint(ck_dir(), 1, 2, 5);
    char mpath[256];
    snprintf(mpath, sizeof(mpath), "%s/step-00000005/manifest.json", ck_dir());
    FILE *f = fopen(mpath, "r");
    char *text = mp_calloc(1, 1 << 20);
    size_t n = fread(text, 1, (1 << 20) - 1, f);
    fclose(f);
    text[n] = '\0';
    /* Layer 0's weight blocks are [12, 4]: say 5 columns instead. */
    char *p = strstr(text, "\"cols\": 4");
    cr_assert_not_null(p, "a 4-column block in the manifest");
    p[9 - 1] = '5';
    f = fopen(mpath, "w");
    fputs(text, f);
    fclose(f);
    mp_free(text);
    assert_open_refused("shard-s00-t0");
    assert_open_refused("does not match");
}

Test(ckpt, prune_keeps_the_newest_committed)
{
    for (int64_t s = 1; s <= 4; s++) {
        write_checkpoint(ck_dir(), 1, 1, s);
    }
    /* A folder after the committed step is in flight: it stays. */
    char inflight[256];
    mp_ckpt_step_dir(ck_dir(), 9, inflight, sizeof(inflight));
    cr_assert_eq(mkdir(inflight, 0755), 0);
    mp_errbuf_t err;
    cr_assert_eq(mp_ckpt_prune(ck_dir(), 4, 2, &err), MP_OK, "%s", err.msg);
    for (int64_t s = 1; s <= 4; s++) {
        char f[256];
        mp_ckpt_step_dir(ck_dir(), s, f, sizeof(f));
        cr_assert_eq(access(f, F_OK) == 0, s >= 3, "step %lld", (long long)s);
    }
    cr_assert_eq(access(inflight, F_OK), 0);
    mp_ckpt_t *ck;
    cr_assert_eq(mp_ckpt_open(ck_dir(), &ck, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(mp_ckpt_step(ck), 4);
    mp_ckpt_close(ck);
}

Test(ckpt, export_writes_full_tensors_as_npy_and_safetensors)
{
    write_checkpoint(ck_dir(), 2, 2, 1);
    mp_ckpt_t *ck;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_ckpt_open(ck_dir(), &ck, &err), MP_OK, "%s", err.msg);
    char out[128];
    snprintf(out, sizeof(out), "%s/out", dir);
    cr_assert_eq(mp_ckpt_export(ck, out, "npy", &err), MP_OK, "%s", err.msg);
    cr_assert_eq(mp_ckpt_export(ck, out, "safetensors", &err), MP_OK, "%s", err.msg);
    cr_assert_eq(mp_ckpt_export(ck, out, "pickle", &err), MP_ERR_INVAL);
    char path[256];
    snprintf(path, sizeof(path), "%s/2.fc1.weight.npy", out);
    float *w;
    int ndim;
    int64_t shape[4];
    cr_assert_eq(mp_npy_read(path, &w, &ndim, shape, &err), MP_OK, "%s", err.msg);
    cr_assert(ndim == 2 && shape[0] == 8 && shape[1] == 16);
    for (int64_t i = 0; i < 8 * 16; i++) {
        cr_assert_eq(w[i], value_of(2, 0, 0, i / 16, i % 16, 16));
    }
    mp_free(w);
    snprintf(path, sizeof(path), "%s/model.safetensors", out);
    mp_st_file_t *f;
    cr_assert_eq(mp_st_open(path, &f, &err), MP_OK, "%s", err.msg);
    const mp_st_tensor_t *b = mp_st_find(f, "3.bias");
    cr_assert_not_null(b);
    cr_assert_eq(b->ndim, 1, "a bias is 1-D, as --save-weights writes it");
    cr_assert_eq(b->shape[0], 6);
    float bias[6];
    cr_assert_eq(mp_st_read(f, b, 0, 6, bias, &err), MP_OK);
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(bias[i], value_of(3, 1, 0, 0, i, 6));
    }
    cr_assert_null(mp_st_find(f, "3.bias.exp_avg"), "export holds parameters only");
    mp_st_close(f);
    mp_ckpt_close(ck);
}

/* A GPT at tp 2: its qkv blocks are in parts (each rank's heads' columns of
 * Q, K and V), written as pieces and put back in place on load. */
Test(ckpt, a_tp2_gpt_checkpoint_loads_serially_with_qkv_in_place)
{
    char corpus[128], text[2048];
    snprintf(corpus, sizeof(corpus), "%s/corpus.txt", dir);
    FILE *f = fopen(corpus, "w");
    for (int i = 0; i < 400; i++) {
        fputs("in the beginning ", f);
    }
    fclose(f);
    snprintf(text, sizeof(text),
             "{\"name\": \"g\", \"model\": {\"layers\": ["
             "{\"type\": \"embedding\", \"vocab\": 256, \"dim\": 16, \"max_seq\": 8},"
             "{\"type\": \"transformer_block\", \"heads\": 2, \"ffn\": 32},"
             "{\"type\": \"layernorm\"}, {\"type\": \"linear\", \"out\": 256}],"
             "\"loss\": \"softmax_xent\"},"
             "\"data\": {\"dataset\": \"text\", \"path\": \"%s\", \"block_size\": 8},"
             "\"parallel\": {\"pp\": 2, \"tp\": 2, \"micro_batches\": 2},"
             "\"train\": {\"batch_size\": 4, \"steps\": 2, \"optimizer\": \"adamw\", "
             "\"lr\": 0.001}}",
             corpus);
    base_spec = text;
    mp_spec_t *probe = NULL;
    mp_errbuf_t err = {{0}};
    if (mp_spec_parse(text, strlen(text), &probe, &err) != MP_OK) {
        base_spec = NULL;
        cr_skip_test("the GPT layer kinds are not parsed by this build: %s", err.msg);
    }
    mp_spec_free(probe);
    write_checkpoint(ck_dir(), 2, 2, 2);
    mp_ckpt_t *ck;
    cr_assert_eq(mp_ckpt_open(ck_dir(), &ck, &err), MP_OK, "%s", err.msg);
    mp_spec_t *serial = spec_with(1, 1, NULL, NULL);
    mp_model_t *m;
    cr_assert_eq(mp_model_create(be, serial, 0, serial->model.nlayers, 1, 4, &m), MP_OK);
    cr_assert_eq(mp_ckpt_load_model(ck, m, serial, &err), MP_OK, "%s", err.msg);
    assert_values(m, serial);
    mp_model_destroy(m);
    mp_spec_free(serial);
    mp_ckpt_close(ck);
    base_spec = NULL;
}
