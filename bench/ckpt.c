/*
 * ckpt.c - mpar-bench-ckpt: what a checkpoint costs training.  On a demo
 * model (default examples/fashion_mnist.json; --spec examples/gpt.json for
 * the GPT demo; one CPU thread, the spec's batch), it measures one training
 * step, the pause a checkpoint makes (the copy of every parameter and the
 * optimizer state to host memory, after which the writer thread writes
 * while training goes on: what the shard executors
 * do), and the peer to beat, a blocking save (the copy, then the write and
 * fsync on the training thread).  Then the writer's throughput against
 * `dd ... conv=fsync` to the same folder.  Rows: checkpoint_pause (ms,
 * ratio blocking / mpar; pause_over_step is the fraction of a step, target
 * <= 0.25) and checkpoint_write (MB/s, ratio mpar / dd).  -o json prints
 * DESIGN.md's benchmark document.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "model/ckpt.h"
#include "model/model.h"
#include "model/spec.h"
#include "util.h"

/* One training step on random data (the data does not change the cost). */
static int train_step(mp_model_t *m, const mp_spec_t *spec, const float *x, const int32_t *y,
                      int64_t rows, int64_t step)
{
    float *out;
    memcpy(mp_model_input(m, 0), x, (size_t)(rows * mp_model_in_dim(m)) * sizeof(float));
    return mp_model_zero_grad(m) != MP_OK || mp_model_forward(m, 0, rows, &out) != MP_OK ||
           mp_model_loss(m, 0, y, rows, 1.0f / (float)rows, NULL, NULL) != MP_OK ||
           mp_model_backward(m, 0, rows, NULL) != MP_OK || mp_model_step(m, step) != MP_OK ||
           spec == NULL;
}

/* dd's MB/s writing `mb` MiB with fsync to dir (its own report, parsed). */
static double dd_mbps(const char *dir, int mb)
{
    char cmd[2600];
    snprintf(cmd, sizeof(cmd),
             "dd if=/dev/zero of='%s/dd.bin' bs=1M count=%d conv=fsync 2>&1 >/dev/null; rm -f "
             "'%s/dd.bin'",
             dir, mb, dir);
    double t0 = mp_bench_now_s();
    FILE *p = popen(cmd, "r");
    if (p == NULL) {
        return -1.0;
    }
    char buf[512];
    while (fgets(buf, sizeof(buf), p) != NULL) {
    }
    int rc = pclose(p);
    double t = mp_bench_now_s() - t0;
    return rc == 0 && t > 0 ? (double)mb * 1048576.0 / 1e6 / t : -1.0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"quick", no_argument, NULL, 'q'},
        {"output", required_argument, NULL, 'o'},
        {"spec", required_argument, NULL, 's'},
        {"dir", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0},
    };
    bool quick = false, json = false;
    const char *spec_path = MP_SOURCE_DIR "/examples/fashion_mnist.json";
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    int c;
    while ((c = getopt_long(argc, argv, "o:", longopts, NULL)) != -1) {
        switch (c) {
        case 'q':
            quick = true;
            break;
        case 'o':
            json = strcmp(optarg, "json") == 0;
            break;
        case 's':
            spec_path = optarg;
            break;
        case 'd':
            base = optarg;
            break;
        default:
            fprintf(stderr, "usage: mpar-bench-ckpt [--quick] [-o json] [--spec JOB.json] "
                            "[--dir FOLDER]\n");
            return 2;
        }
    }
    mp_errbuf_t err = {{0}};
    mp_spec_t *spec;
    if (mp_spec_load(spec_path, &spec, &err) != MP_OK) {
        fprintf(stderr, "mpar-bench-ckpt: %s\n", err.msg);
        return 2;
    }
    char dir[1100];
    snprintf(dir, sizeof(dir), "%s/mpar-bench-ckpt-XXXXXX", base);
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    mp_backend_t *be;
    mp_model_t *m;
    int64_t rows = spec->train.batch_size;
    if (mp_backend_cpu_create(1, &be) != MP_OK ||
        mp_model_create(be, spec, 0, spec->model.nlayers, 1, rows, &m) != MP_OK) {
        fprintf(stderr, "mpar-bench-ckpt: cannot build the model\n");
        return 1;
    }
    /* A text model's input is seq token ids and its labels seq next tokens
     * (vocab = the head's width); a classifier's one label per row. */
    bool text = spec->model.seq > 1;
    int64_t in = mp_model_in_dim(m), seq = spec->model.seq;
    int64_t classes = mp_model_out_dim(m) / seq;
    float *x = mp_malloc((size_t)(rows * in) * sizeof(float));
    int32_t *y = mp_malloc((size_t)(rows * seq) * sizeof(int32_t));
    srand(7);
    for (int64_t i = 0; i < rows * in; i++) {
        x[i] = text ? (float)(rand() % classes) : (float)rand() / (float)RAND_MAX;
    }
    for (int64_t i = 0; i < rows * seq; i++) {
        y[i] = (int32_t)(rand() % classes);
    }
    int reps = quick ? 5 : 15;
    double *steps = mp_calloc((size_t)reps, sizeof(double));
    double *pause = mp_calloc((size_t)reps, sizeof(double));
    double *block = mp_calloc((size_t)reps, sizeof(double));
    double *write = mp_calloc((size_t)reps, sizeof(double));
    mp_ckpt_snap_t *snap;
    if (mp_ckpt_snap_create(&m, 1, spec, 0, 0, &snap) != MP_OK) {
        fprintf(stderr, "mpar-bench-ckpt: cannot make the snapshot\n");
        return 1;
    }
    int64_t step = 1;
    train_step(m, spec, x, y, rows, step++); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = mp_bench_now_s();
        if (train_step(m, spec, x, y, rows, step++) != 0) {
            fprintf(stderr, "mpar-bench-ckpt: a training step failed\n");
            return 1;
        }
        double t1 = mp_bench_now_s();
        /* mpar: the copy stops training; the write happens on another thread. */
        mp_ckpt_snap_fill(snap, &m, 1, step);
        double t2 = mp_bench_now_s();
        if (mp_ckpt_snap_write(snap, dir, NULL, 0, &err) != MP_OK) {
            fprintf(stderr, "mpar-bench-ckpt: %s\n", err.msg);
            return 1;
        }
        double t3 = mp_bench_now_s();
        steps[r] = t1 - t0;
        pause[r] = t2 - t1;
        write[r] = t3 - t2;
        block[r] = t3 - t1; /* a blocking save: copy + write + fsync on the training thread */
    }
    double bytes = (double)mp_ckpt_snap_bytes(snap);
    double step_s = mp_bench_median(steps, reps), pause_s = mp_bench_median(pause, reps);
    double block_s = mp_bench_median(block, reps), write_s = mp_bench_median(write, reps);
    double mbps = bytes / 1e6 / write_s;
    int dd_mb = (int)(bytes / 1048576.0 * 4) + 1;
    double dd = dd_mbps(dir, dd_mb);
    mp_errbuf_t perr;
    mp_ckpt_prune(dir, INT64_MAX / 2, 1, &perr);
    char cmd[1200];
    if ((size_t)snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir) >= sizeof(cmd)) {
        cmd[0] = '\0';
    }
    if (system(cmd) != 0) {
        fprintf(stderr, "mpar-bench-ckpt: could not remove %s\n", dir);
    }
    json_t *results = json_array();
    json_array_append_new(
        results, json_pack("{s:s, s:s, s:I, s:f, s:f, s:f, s:f, s:s, s:f, s:s}", "test",
                           "checkpoint_pause", "model", text ? "gpt" : "mlp", "bytes", (json_int_t)bytes,
                           "mpar", pause_s * 1e3, "peer", block_s * 1e3, "step_ms", step_s * 1e3,
                           "pause_over_step", pause_s / step_s, "unit", "ms", "ratio",
                           block_s / pause_s, "peer_is", "a blocking save (copy, write, fsync)"));
    json_array_append_new(results,
                          json_pack("{s:s, s:I, s:f, s:f, s:s, s:f, s:s}", "test",
                                    "checkpoint_write", "bytes", (json_int_t)bytes, "mpar", mbps,
                                    "peer", dd, "unit", "MB/s", "ratio", dd > 0 ? mbps / dd : 0.0,
                                    "peer_is", "dd bs=1M conv=fsync to the same folder"));
    if (json) {
        json_t *doc = json_pack("{s:s, s:o}", "bench", "ckpt", "results", results);
        char *text = json_dumps(doc, JSON_INDENT(2));
        puts(text);
        free(text);
        json_decref(doc);
    } else {
        printf("checkpoint of %s: %.1f MB (parameters and %s state)\n", spec->name, bytes / 1e6,
               spec->train.optimizer == MP_OPTIM_ADAMW ? "AdamW" : "SGD");
        printf("  one training step        %8.2f ms\n", step_s * 1e3);
        printf("  checkpoint pause (mpar)  %8.2f ms  = %.3f of a step\n", pause_s * 1e3,
               pause_s / step_s);
        printf("  blocking save (peer)     %8.2f ms  = %.3f of a step\n", block_s * 1e3,
               block_s / step_s);
        printf("  write + fsync            %8.1f MB/s, dd %.1f MB/s (ratio %.2f)\n", mbps, dd,
               dd > 0 ? mbps / dd : 0.0);
        json_decref(results);
    }
    mp_ckpt_snap_free(snap);
    mp_free(x);
    mp_free(y);
    mp_free(steps);
    mp_free(pause);
    mp_free(block);
    mp_free(write);
    mp_model_destroy(m);
    mp_backend_destroy(be);
    mp_spec_free(spec);
    return 0;
}
