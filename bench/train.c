/*
 * train.c - mpar-bench-train: samples/s of serial training of a job spec
 * against PyTorch CPU on the same
 * model, batch size and thread count, both in the same run
 * (bench/torch_train.py is the peer, in the fastest of its arrangements of
 * exactly N threads; "peer_arrangement" says which).  Prints a table, or with -o json the
 * benchmark document of DESIGN.md; ratio = mpar / PyTorch (higher is better).
 * By default it runs both of DESIGN.md's models: "mlp"
 * (examples/fashion_mnist.json) and "gpt" (the text demo's, examples/gpt.json,
 * whose samples are sequences of 64 tokens); --spec runs one spec instead.
 */
#include <getopt.h>
#include <stdbool.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/spec.h"
#include "model/train.h"

/* PyTorch's samples/s in its fastest arrangement of `threads` threads, whose
 * name goes to arr (len bytes); -1 when the peer fails. */
static double run_peer(const char *spec_path, int threads, int64_t steps, char *arr, size_t len)
{
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s/bench/torch_train.py '%s' --threads %d "
             "--steps %lld", MP_SOURCE_DIR, spec_path, threads, (long long)steps);
    FILE *p = popen(cmd, "r");
    if (p == NULL) {
        return -1.0;
    }
    char buf[1024];
    size_t n = fread(buf, 1, sizeof(buf) - 1, p);
    buf[n] = '\0';
    if (pclose(p) != 0) {
        return -1.0;
    }
    json_error_t e;
    json_t *o = json_loads(buf, 0, &e);
    double v = -1.0;
    if (o != NULL) {
        v = json_number_value(json_object_get(o, "samples_per_s"));
        const char *a = json_string_value(json_object_get(o, "arrangement"));
        snprintf(arr, len, "%s", a != NULL ? a : "unknown");
        json_decref(o);
    }
    return v;
}

/* Both sides on one spec at 1 and 2 threads; results appended, tagged with
 * `model`.  Returns 0, 1 when a side failed, 2 for a bad spec. */
static int bench_spec(const char *spec_path, const char *model, int64_t steps, bool json,
                      json_t *results)
{
    mp_errbuf_t err = {{0}};
    mp_spec_t *spec;
    if (mp_spec_load(spec_path, &spec, &err) != MP_OK) {
        fprintf(stderr, "mpar-bench-train: %s\n", err.msg);
        return 2;
    }
    /* Only training is timed: no test split evaluation, batches in file order. */
    spec->train.steps = steps;
    spec->train.shuffle = false;

    int status = 0;
    for (int threads = 1; threads <= 2; threads++) {
        mp_train_opts_t opts = {.device = "cpu", .threads = threads};
        mp_train_result_t res;
        if (mp_train_serial(spec, &opts, &res, &err) != MP_OK) {
            fprintf(stderr, "mpar-bench-train: %s\n", err.msg);
            status = 1;
            break;
        }
        double mine = res.samples_per_s;
        mp_train_result_free(&res);
        char arr[64] = "none";
        double peer = run_peer(spec_path, threads, steps, arr, sizeof(arr));
        double ratio = peer > 0 ? mine / peer : 0.0;
        json_array_append_new(
            results, json_pack("{s:s, s:s, s:i, s:i, s:i, s:f, s:f, s:s, s:f, s:s}", "test",
                               "train_serial", "model", model, "threads", threads, "batch",
                               (int)spec->train.batch_size, "seq", (int)spec->model.seq, "mpar",
                               mine, "peer", peer, "unit", "samples/s", "ratio", ratio,
                               "peer_arrangement", arr));
        if (!json) {
            printf("%-14s %5s %8d %14.0f %14.0f %8.2f  torch: %s\n", "train_serial", model,
                   threads, mine, peer, ratio, arr);
            fflush(stdout);
        }
        if (peer <= 0) {
            fprintf(stderr, "mpar-bench-train: the PyTorch peer failed (python3-torch installed?)\n");
            status = 1;
        }
    }
    mp_spec_free(spec);
    return status;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"quick", no_argument, NULL, 'q'}, {"output", required_argument, NULL, 'o'},
        {"spec", required_argument, NULL, 's'}, {"steps", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    bool quick = false, json = false;
    const char *spec_path = NULL;
    int64_t steps = 0;
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
        case 'n':
            steps = atoll(optarg);
            break;
        default:
            fprintf(stderr, "usage: mpar-bench-train [--quick] [-o json] [--spec JOB.json] "
                            "[--steps N]\n");
            return 2;
        }
    }
    if (steps <= 0) {
        steps = quick ? 40 : 150;
    }
    json_t *results = json_array();
    int status = 0;
    if (!json) {
        printf("%-14s %5s %8s %14s %14s %8s\n", "test", "model", "threads", "mpar (sam/s)",
               "torch (sam/s)", "ratio");
    }
    if (spec_path != NULL) {
        status = bench_spec(spec_path, "spec", steps, json, results);
    } else {
        status = bench_spec(MP_SOURCE_DIR "/examples/fashion_mnist.json", "mlp", steps, json,
                            results);
        /* A GPT step is some 30 times an MLP step: fewer of them. */
        int64_t gsteps = (steps + 9) / 10;
        status |= bench_spec(MP_SOURCE_DIR "/examples/gpt.json", "gpt", gsteps, json, results);
    }
    if (json) {
        json_t *doc = json_pack("{s:s, s:o}", "bench", "train", "results", results);
        char *text = json_dumps(doc, JSON_INDENT(2));
        puts(text);
        free(text);
        json_decref(doc);
    } else {
        json_decref(results);
    }
    return status;
}
