/*
 * pipeline.c - mpar-bench-pipeline: pipeline parallelism measured with the
 * one-process engine (engine/local.h, real UCX workers between shard
 * threads) on a balanced synthetic model: the measured bubble fraction
 * against (p - 1) / (m + p - 1) for gpipe and 1f1b and against
 * (p - 1) / (3m + p - 1) for zero_bubble, at p = 2 and 4 and m = 4, 8 and
 * 16, with the bubble the simulator predicts from the measured per-layer
 * costs (engine/calib.h); the activation memory each stage holds under each
 * schedule; and the samples/s of pp = 2 (one thread per stage) against the
 * serial trainer on one thread.  Prints a table, or with -o json the
 * benchmark document of DESIGN.md; --svg PREFIX also draws each
 * configuration's last step as an SVG Gantt chart.
 */
#include <getopt.h>
#include <stdint.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/local.h"
#include "engine/trace.h"
#include "model/spec.h"
#include "model/train.h"
#include "parallel/sched.h"

#define WIDTH 256
#define FFN 1024
#define BLOCKS 8
#define ROWS 32 /* rows per micro-batch */

/* 8 equal mlp_blocks between two thin linears, cut by measured costs (the default). */
static mp_spec_t *make_spec(int pp, int m, const char *sched, int64_t steps)
{
    char layers[2048] = "";
    size_t n = 0;
    n += (size_t)snprintf(layers + n, sizeof(layers) - n, "{\"type\": \"linear\", \"out\": %d}",
                          WIDTH);
    for (int b = 0; b < BLOCKS; b++) {
        n += (size_t)snprintf(layers + n, sizeof(layers) - n,
                              ", {\"type\": \"mlp_block\", \"hidden\": %d, \"ffn\": %d}", WIDTH,
                              FFN);
    }
    snprintf(layers + n, sizeof(layers) - n, ", {\"type\": \"linear\", \"out\": 10}");
    char json[4096];
    snprintf(json, sizeof(json),
             "{\"name\": \"bench-pipeline\", \"model\": {\"input\": 64, \"layers\": [%s],"
             "\"loss\": \"softmax_xent\"},"
             "\"data\": {\"dataset\": \"synthetic\", \"samples\": %lld, \"classes\": 10,"
             "\"seed\": 3},"
             "\"parallel\": {\"pp\": %d, \"micro_batches\": %d, \"schedule\": \"%s\"},"
             "\"train\": {\"batch_size\": %d, \"steps\": %lld, \"optimizer\": \"sgd\","
             "\"lr\": 0.01}}",
             layers, (long long)(ROWS * m * (steps + 1)), pp, m, sched, ROWS * m, (long long)steps);
    mp_spec_t *spec = NULL;
    mp_errbuf_t err;
    if (mp_spec_parse(json, strlen(json), &spec, &err) != MP_OK) {
        fprintf(stderr, "mpar-bench-pipeline: %s\n", err.msg);
        exit(1);
    }
    return spec;
}

static int run_engine(mp_spec_t *spec, mp_engine_result_t *res)
{
    mp_engine_local_opts_t o = mp_engine_local_opts_default();
    o.threads = 1;
    o.timeout_ms = 120000;
    mp_errbuf_t err;
    if (mp_engine_run_local(spec, &o, res, &err) != MP_OK) {
        fprintf(stderr, "mpar-bench-pipeline: %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* The last step's actions of every stage, in ms from the step's first action. */
static void print_timeline(const mp_engine_result_t *res)
{
    uint64_t t0 = UINT64_MAX;
    for (int r = 0; r < res->nranks; r++) {
        if (res->nspans[r] > 0 && res->spans[r][0].t0_ns < t0) {
            t0 = res->spans[r][0].t0_ns;
        }
    }
    for (int r = 0; r < res->nranks; r++) {
        fprintf(stderr, "  rank %d:", r);
        for (int i = 0; i < res->nspans[r]; i++) {
            const mp_exec_span_t *s = &res->spans[r][i];
            fprintf(stderr, " %s%d[%.1f-%.1f]", mp_sched_op_name(s->op), s->mb,
                    (double)(s->t0_ns - t0) * 1e-6, (double)(s->t1_ns - t0) * 1e-6);
        }
        fprintf(stderr, "\n");
    }
}

/* PREFIX-<schedule>-p<p>-m<m>.svg: the last step's Gantt chart. */
static int write_svg(const char *prefix, const mp_engine_result_t *res, const char *sched, int p,
                     int m)
{
    char path[1024], title[128];
    snprintf(path, sizeof(path), "%s-%s-p%d-m%d.svg", prefix, sched, p, m);
    snprintf(title, sizeof(title), "%s, p = %d, m = %d: measured bubble %.3f, theory %.3f", sched,
             p, m, res->bubble_fraction, mp_sched_bubble_theory(p, m));
    mp_trace_row_t rows[MP_SPEC_MAX_STAGES];
    mp_trace_rows_from_ranks(p, 1, res->nranks, res->spans, res->nspans, rows);
    FILE *f = fopen(path, "w");
    if (f == NULL || mp_trace_write_svg(f, rows, res->nranks, title) != MP_OK) {
        fprintf(stderr, "mpar-bench-pipeline: cannot write %s\n", path);
        if (f != NULL) {
            fclose(f);
        }
        return -1;
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"quick", no_argument, NULL, 'q'},
        {"output", required_argument, NULL, 'o'},
        {"timeline", no_argument, NULL, 't'},
        {"svg", required_argument, NULL, 'g'},
        {NULL, 0, NULL, 0},
    };
    bool quick = false, json = false, timeline = false;
    const char *svg = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "o:", longopts, NULL)) != -1) {
        switch (c) {
        case 'q':
            quick = true;
            break;
        case 'o':
            json = strcmp(optarg, "json") == 0;
            break;
        case 't':
            timeline = true;
            break;
        case 'g':
            svg = optarg;
            break;
        default:
            fprintf(stderr,
                    "usage: mpar-bench-pipeline [--quick] [-o json] [--timeline] [--svg PREFIX]\n");
            return 2;
        }
    }
    int64_t steps = quick ? 3 : 8;
    static const int ps[] = {2, 4};
    static const int ms[] = {4, 8, 16};
    static const char *const scheds[] = {"gpipe", "1f1b", "zero_bubble"};
    json_t *results = json_array();
    if (!json) {
        printf("%-11s %3s %3s %10s %8s %9s   activation bytes per stage\n", "schedule", "p", "m",
               "measured", "theory", "predicted");
    }
    for (int pi = 0; pi < 2; pi++) {
        for (int mi = 0; mi < 3; mi++) {
            for (int si = 0; si < 3; si++) {
                int p = ps[pi], m = ms[mi];
                mp_spec_t *spec = make_spec(p, m, scheds[si], steps);
                mp_engine_result_t res;
                if (run_engine(spec, &res) != 0) {
                    return 1;
                }
                double theory =
                    si == 2 ? mp_sched_bubble_theory_zb(p, m) : mp_sched_bubble_theory(p, m);
                json_array_append_new(results,
                                      json_pack("{s:s, s:i, s:i, s:s, s:f, s:f, s:f, s:f, s:s}",
                                                "test", "bubble", "p", p, "m", m, "schedule",
                                                scheds[si], "measured", res.bubble_fraction,
                                                "theory", theory, "predicted", res.cut.bubble,
                                                "mpar", res.bubble_fraction, "unit", "fraction"));
                if (!json) {
                    printf("%-11s %3d %3d %10.3f %8.3f %9.3f  ", scheds[si], p, m,
                           res.bubble_fraction, theory, res.cut.bubble);
                }
                for (int s = 0; s < p; s++) {
                    json_array_append_new(
                        results,
                        json_pack("{s:s, s:i, s:i, s:s, s:i, s:i, s:I, s:s}", "test",
                                  "peak_activation", "p", p, "m", m, "schedule", scheds[si],
                                  "stage", s, "slots", res.stage_slots[s], "mpar",
                                  (json_int_t)res.stage_act_bytes[s], "unit", "bytes"));
                    if (!json) {
                        printf(" %d:%d slots %.1f MiB", s, res.stage_slots[s],
                               (double)res.stage_act_bytes[s] / (1 << 20));
                    }
                }
                if (!json) {
                    printf("\n");
                    fflush(stdout);
                }
                if (timeline) {
                    print_timeline(&res);
                }
                if (svg != NULL && write_svg(svg, &res, scheds[si], p, m) != 0) {
                    return 1;
                }
                mp_engine_result_free(&res);
                mp_spec_free(spec);
            }
        }
    }

    /* Throughput: pp = 2 on two threads against the serial trainer on one. */
    int64_t tsteps = quick ? 4 : 12;
    static const char *const tscheds[] = {"1f1b", "zero_bubble"};
    for (int si = 0; si < 2; si++) {
        mp_spec_t *spec = make_spec(2, 8, tscheds[si], tsteps);
        mp_engine_result_t res;
        if (run_engine(spec, &res) != 0) {
            return 1;
        }
        mp_train_opts_t so = {.device = "cpu", .threads = 1};
        mp_train_result_t sres;
        mp_errbuf_t err;
        if (mp_train_serial(spec, &so, &sres, &err) != MP_OK) {
            fprintf(stderr, "mpar-bench-pipeline: serial run: %s\n", err.msg);
            return 1;
        }
        double ratio = sres.samples_per_s > 0 ? res.train.samples_per_s / sres.samples_per_s : 0.0;
        json_array_append_new(results,
                              json_pack("{s:s, s:i, s:i, s:s, s:i, s:f, s:f, s:s, s:f}", "test",
                                        "pp_speedup", "p", 2, "m", 8, "schedule", tscheds[si],
                                        "threads", 1, "mpar", res.train.samples_per_s, "peer",
                                        sres.samples_per_s, "unit", "samples/s", "ratio", ratio));
        if (!json) {
            printf("pp_speedup: pp=2 (%s, m=8, a thread per stage) %.1f samples/s, serial on "
                   "one thread %.1f samples/s, ratio %.2f\n",
                   tscheds[si], res.train.samples_per_s, sres.samples_per_s, ratio);
        }
        mp_train_result_free(&sres);
        mp_engine_result_free(&res);
        mp_spec_free(spec);
    }
    if (json) {
        json_t *doc = json_pack("{s:s, s:o}", "bench", "pipeline", "results", results);
        char *text = json_dumps(doc, JSON_INDENT(2));
        printf("%s\n", text);
        free(text);
        json_decref(doc);
    } else {
        json_decref(results);
    }
    return 0;
}
