/*
 * run.c - `mpar-client run JOB.json`: with --serial, trains the job in this
 * process on one device (the ground truth), printing progress on stderr and
 * the result on stdout (a short summary, or one JSON document with -o json).
 */
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/client.h"
#include "common/alloc.h"
#include "common/fs.h"
#include "proto/json.h"
#include "model/spec.h"
#include "model/train.h"

typedef struct {
    bool tty;
    bool quiet;
    bool text; /* a text data set: throughput in tokens/s */
    double last_print;
} progress_t;

static bool spec_is_text(const mp_spec_t *spec)
{
    return spec->data.kind == MP_DATA_TEXT || spec->data.kind == MP_DATA_KJV;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void on_progress(const mp_train_progress_t *p, void *arg)
{
    progress_t *pr = arg;
    if (pr->quiet) {
        return;
    }
    if (p->eval) {
        fprintf(stderr, "%sepoch %lld/%lld: test loss %.4f, test accuracy %.4f\n",
                pr->tty ? "\r\033[K" : "", (long long)p->epoch, (long long)p->epochs,
                p->test_loss, p->test_accuracy);
        pr->last_print = 0.0;
        return;
    }
    double now = mono_s();
    bool last = p->step == p->steps;
    if (pr->tty) {
        if (!last && now - pr->last_print < 0.1) {
            return;
        }
        int width = 24;
        int done = (int)((double)width * (double)p->step_in_epoch / (double)p->steps_per_epoch);
        char bar[64];
        for (int i = 0; i < width; i++) {
            bar[i] = i < done ? '#' : '.';
        }
        bar[width] = '\0';
        fprintf(stderr, "\r\033[Kepoch %lld/%lld [%s] step %lld/%lld  loss %.4f  %.0f %s/s",
                (long long)p->epoch, (long long)p->epochs, bar, (long long)p->step,
                (long long)p->steps, p->loss, pr->text ? p->tokens_per_s : p->samples_per_s,
                pr->text ? "tokens" : "samples");
        if (last) {
            fputc('\n', stderr);
        }
    } else {
        if (!last && p->step != 1 && now - pr->last_print < 5.0) {
            return;
        }
        fprintf(stderr, "epoch %lld/%lld step %lld/%lld loss %.4f %.0f %s/s\n",
                (long long)p->epoch, (long long)p->epochs, (long long)p->step,
                (long long)p->steps, p->loss, pr->text ? p->tokens_per_s : p->samples_per_s,
                pr->text ? "tokens" : "samples");
    }
    fflush(stderr);
    pr->last_print = now;
}


static void print_result(const mp_spec_t *spec, const mp_train_result_t *r, bool json,
                         const char *save_dir, const char *curve, const char *sample,
                         size_t sample_len, int64_t sample_tokens)
{
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(spec->name));
        json_object_set_new(o, "state", json_string("SUCCEEDED"));
        json_object_set_new(o, "mode", json_string("serial"));
        json_object_set_new(o, "device", json_string(r->device));
        json_object_set_new(o, "steps", json_integer(r->steps));
        json_object_set_new(o, "epochs", json_integer(r->epochs_done));
        json_object_set_new(o, "samples", json_integer(r->samples));
        json_object_set_new(o, "final_loss", mp_json_real(r->final_loss));
        if (r->has_test && r->epochs_done > 0) {
            json_object_set_new(o, "test_accuracy", mp_json_real(r->test_accuracy));
            json_object_set_new(o, "test_loss", mp_json_real(r->test_loss));
            json_t *acc = json_array();
            for (int64_t i = 0; i < r->epochs_done; i++) {
                json_array_append_new(acc, mp_json_real(r->epoch_test_accuracy[i]));
            }
            json_object_set_new(o, "epoch_test_accuracy", acc);
        }
        json_object_set_new(o, "samples_per_s", mp_json_real(r->samples_per_s));
        if (spec_is_text(spec)) {
            json_object_set_new(o, "tokens_per_s", mp_json_real(r->tokens_per_s));
        }
        json_object_set_new(o, "seconds", mp_json_real(r->seconds));
        if (r->resumed_from_step > 0) {
            json_object_set_new(o, "resumed_from_step", json_integer(r->resumed_from_step));
            json_object_set_new(o, "restarts", json_integer(0));
        }
        if (spec->checkpoint.enabled) {
            json_object_set_new(o, "checkpoints", json_integer(r->checkpoints));
            json_object_set_new(o, "checkpoint_failures", json_integer(r->checkpoint_failures));
            json_object_set_new(o, "checkpoint_dir", json_string(spec->checkpoint.dir));
        }
        json_t *losses = json_array();
        for (int64_t i = 0; i < r->steps; i++) {
            json_array_append_new(losses, mp_json_real(r->losses[i]));
        }
        json_object_set_new(o, "losses", losses);
        if (save_dir != NULL) {
            json_object_set_new(o, "weights", json_string(save_dir));
        }
        if (curve != NULL) {
            json_object_set_new(o, "curve_svg", json_string(curve));
        }
        if (sample != NULL) {
            json_object_set_new(o, "sample", mp_client_json_bytes(sample, sample_len));
        }
        char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
        puts(text);
        free(text);
        json_decref(o);
        return;
    }
    printf("job %s: SUCCEEDED on %s (serial)\n", spec->name[0] ? spec->name : "(unnamed)",
           r->device);
    printf("  steps %lld, epochs %lld, final loss %.4f\n", (long long)r->steps,
           (long long)r->epochs_done, r->final_loss);
    if (r->resumed_from_step > 0) {
        printf("  resumed from the checkpoint of step %lld\n", (long long)r->resumed_from_step);
    }
    if (spec->checkpoint.enabled) {
        printf("  %lld checkpoint%s committed in %s", (long long)r->checkpoints,
               r->checkpoints == 1 ? "" : "s", spec->checkpoint.dir);
        if (r->checkpoint_failures > 0) {
            printf(" (%lld failed to write)", (long long)r->checkpoint_failures);
        }
        printf("\n");
    }
    if (r->has_test && r->epochs_done > 0) {
        printf("  test accuracy %.4f, test loss %.4f\n", r->test_accuracy, r->test_loss);
    }
    if (spec_is_text(spec)) {
        printf("  %.0f tokens/s (%.0f samples/s) over %.1f s of training\n", r->tokens_per_s,
               r->samples_per_s, r->seconds);
    } else {
        printf("  %.0f samples/s over %.1f s of training\n", r->samples_per_s, r->seconds);
    }
    if (save_dir != NULL) {
        printf("  weights saved in %s\n", save_dir);
    }
    if (curve != NULL) {
        printf("  learning curve: %s\n", curve);
    }
    if (sample != NULL) {
        mp_client_print_sample(stdout, sample, sample_len, sample_tokens);
    }
}

static void run_usage(FILE *f)
{
    fprintf(f, "usage: mpar-client run JOB.json [--serial] [-o json|text] [--save-weights DIR]\n"
               "                          [--device cpu|cuda|auto] [--threads N] [--tf32] "
               "[--quiet]\n"
               "                          [--timeline FILE.svg|none] [--curve FILE.svg|none]\n"
               "                          [--sample N] [--resume CKPT_DIR]\n"
               "without --serial: a throwaway local cluster of mpard daemons runs the job's\n"
               "pp x tp x dp grid (a coordinator and pp*dp nodes of tp CPU shards each)\n"
               "--curve: the learning curve (default <job>-curve.svg on a cluster, none with\n"
               "--serial); --sample N: bytes of text a text model writes at the end (default\n"
               "240, 0: none); --resume continues from the checkpoint CKPT_DIR/latest names\n");
}

/* For a serial run with checkpoints or --resume: the spec's text as its
 * checkpoints' manifest keeps it, with checkpoint.dir made absolute against
 * the spec's folder (and *spec_p's dir with it), and the --resume folder
 * opened and checked against the spec, as a submit does. */
static int serial_ckpt_prepare(const char *path, const char *resume, mp_spec_t **spec_p,
                               char **text_p, char *resume_abs, size_t cap)
{
    char *text = NULL, *prepared = NULL;
    int rc = mp_client_read_spec_text(path, &text);
    if (rc == MP_EXIT_OK) {
        rc = mp_client_spec_prepare(path, text, resume, &prepared, resume_abs, cap);
    }
    if (rc == MP_EXIT_OK && prepared != NULL) {
        free(text);
        text = prepared;
        mp_spec_t *abs = NULL;
        mp_errbuf_t err = {{0}};
        if (mp_spec_parse(text, strlen(text), &abs, &err) != MP_OK) {
            fprintf(stderr, "mpar-client: %s: %s\n", path, err.msg);
            rc = MP_EXIT_USAGE;
        } else {
            memcpy((*spec_p)->checkpoint.dir, abs->checkpoint.dir, sizeof(abs->checkpoint.dir));
            mp_spec_free(abs);
        }
    }
    if (rc != MP_EXIT_OK) {
        free(text);
        return rc;
    }
    *text_p = text;
    return MP_EXIT_OK;
}

int mp_client_run_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"serial", no_argument, NULL, 's'},       {"output", required_argument, NULL, 'o'},
        {"save-weights", required_argument, NULL, 'w'}, {"device", required_argument, NULL, 'd'},
        {"threads", required_argument, NULL, 't'}, {"tf32", no_argument, NULL, 'f'},
        {"quiet", no_argument, NULL, 'q'},        {"help", no_argument, NULL, 'h'},
        {"timeline", required_argument, NULL, 'T'},
        {"curve", required_argument, NULL, 'c'},  {"sample", required_argument, NULL, 'n'},
        {"socket", required_argument, NULL, 'S'}, {"connect", required_argument, NULL, 'S'},
        {"secret-file", required_argument, NULL, 'S'},
        {"resume", required_argument, NULL, 'R'},
        {NULL, 0, NULL, 0},
    };
    bool serial = false, json = false;
    const char *timeline = NULL, *curve = NULL, *resume = NULL;
    int64_t sample_tokens = MP_CLIENT_SAMPLE_TOKENS;
    mp_train_opts_t opts = {.device = "cpu", .threads = 1};
    progress_t pr = {.tty = isatty(STDERR_FILENO) == 1};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            serial = true;
            break;
        case 'o':
            if (strcmp(optarg, "json") == 0) {
                json = true;
            } else if (strcmp(optarg, "text") != 0 && strcmp(optarg, "table") != 0) {
                fprintf(stderr, "mpar-client run: -o: expected json or text, got '%s'\n", optarg);
                return MP_EXIT_USAGE;
            }
            break;
        case 'w':
            opts.save_weights = optarg;
            break;
        case 'd':
            opts.device = optarg;
            break;
        case 't': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end != '\0' || v < 1 || v > 1024) {
                fprintf(stderr, "mpar-client run: --threads: expected 1..1024, got '%s'\n",
                        optarg);
                return MP_EXIT_USAGE;
            }
            opts.threads = (int)v;
            break;
        }
        case 'f':
            opts.tf32 = true;
            break;
        case 'q':
            pr.quiet = true;
            break;
        case 'T':
            timeline = optarg;
            break;
        case 'c':
            curve = optarg;
            break;
        case 'n': {
            char *end;
            long long v = strtoll(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 0 || v > 100000) {
                fprintf(stderr, "mpar-client run: --sample: expected 0..100000 bytes, got '%s'\n",
                        optarg);
                return MP_EXIT_USAGE;
            }
            sample_tokens = v;
            break;
        }
        case 'R':
            resume = optarg;
            break;
        case 'S':
            fprintf(stderr, "mpar-client run: --socket, --connect and --secret-file name a "
                            "running cluster, and run starts its own (or none with --serial); "
                            "to use a running cluster: mpar-client submit JOB.json -f\n");
            return MP_EXIT_USAGE;
        case 'h':
            run_usage(stdout);
            return MP_EXIT_OK;
        default:
            run_usage(stderr);
            return MP_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        run_usage(stderr);
        return MP_EXIT_USAGE;
    }
    const char *path = argv[optind];
    mp_errbuf_t err = {{0}};
    mp_spec_t *spec = NULL;
    if (!mp_client_load_spec(path, &spec)) {
        return MP_EXIT_USAGE;
    }
    /* A serial run writes and reads checkpoints as a cluster run does: its
     * checkpoint.dir made absolute against the spec's folder, the --resume
     * folder checked against the spec before anything trains. */
    char *spec_text = NULL, resume_abs[PATH_MAX] = "";
    if (serial && (resume != NULL || spec->checkpoint.enabled)) {
        int rc = serial_ckpt_prepare(path, resume, &spec, &spec_text, resume_abs,
                                     sizeof(resume_abs));
        if (rc != MP_EXIT_OK) {
            mp_spec_free(spec);
            return rc;
        }
        opts.spec_text = spec_text;
        opts.resume = resume != NULL ? resume_abs : NULL;
    }
    /* What the data set needs of the file system (a text file long enough
     * for a window in both splits), before anything starts. */
    if (mp_train_check_data(spec, &err) != MP_OK) {
        fprintf(stderr, "mpar-client: %s: %s\n", path, err.msg);
        free(spec_text);
        mp_spec_free(spec);
        return MP_EXIT_USAGE;
    }
    pr.text = spec_is_text(spec);
    /* Where the weights go is checked (and made) before anything trains:
     * a run must not train for an hour to fail at its end. */
    if (opts.save_weights != NULL && mp_fs_dir_prepare(opts.save_weights, &err) != MP_OK) {
        fprintf(stderr, "mpar-client run: --save-weights: %s\n", err.msg);
        free(spec_text);
        mp_spec_free(spec);
        return MP_EXIT_USAGE;
    }
    if (!serial) {
        if (strcmp(opts.device, "cpu") != 0) {
            fprintf(stderr, "mpar-client run: --device applies to --serial; a local cluster's "
                            "nodes use CPU shards\n");
            free(spec_text);
            mp_spec_free(spec);
            return MP_EXIT_USAGE;
        }
        int code = mp_client_run_local(path, spec->parallel.pp, spec->parallel.tp,
                                       spec->parallel.dp, spec->name, json, opts.save_weights,
                                       timeline, pr.quiet, spec, curve, sample_tokens, resume);
        free(spec_text);
        mp_spec_free(spec);
        return code;
    }
    opts.on_progress = on_progress;
    opts.arg = &pr;
    /* A text job's final sample reads its weights: saved to a temporary
     * folder when the user keeps none. */
    const char *user_save = opts.save_weights;
    char tmp_weights[PATH_MAX] = "";
    bool want_sample = sample_tokens > 0 && mp_client_is_text_job(spec);
    if (want_sample && user_save == NULL) {
        snprintf(tmp_weights, sizeof(tmp_weights), "%s/mpar-sample-XXXXXX",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (mkdtemp(tmp_weights) == NULL) {
            tmp_weights[0] = '\0';
            want_sample = false;
        } else {
            opts.save_weights = tmp_weights;
        }
    }
    mp_train_result_t res;
    mp_status_t st = mp_train_serial(spec, &opts, &res, &err);
    char *sample = NULL;
    size_t sample_len = 0;
    bool have_curve = false;
    if (st == MP_OK && want_sample) {
        sample = mp_client_run_sample(spec, opts.save_weights, sample_tokens, &sample_len);
    }
    if (tmp_weights[0] != '\0') {
        mp_client_remove_tree(tmp_weights);
    }
    if (st == MP_OK && curve != NULL && strcmp(curve, "none") != 0) {
        char title[300];
        snprintf(title, sizeof(title), "%s: serial on %s", spec->name, res.device);
        have_curve = mp_client_write_curve(curve, title, res.losses, res.steps, res.test_loss,
                                           res.has_test && res.epochs_done > 0) == 0;
    }
    if (st != MP_OK) {
        fprintf(stderr, "mpar-client: job %s failed: %s\n", spec->name[0] ? spec->name : path,
                err.msg);
        if (json) {
            json_t *o = json_pack("{s:s, s:s, s:s}", "name", spec->name, "state", "FAILED",
                                  "reason", err.msg);
            char *text = json_dumps(o, JSON_INDENT(2));
            puts(text);
            free(text);
            json_decref(o);
        }
        free(spec_text);
        mp_spec_free(spec);
        return st == MP_ERR_SPEC || st == MP_ERR_INVAL ? MP_EXIT_USAGE : MP_EXIT_FAILED;
    }
    print_result(spec, &res, json, user_save, have_curve ? curve : NULL, sample, sample_len,
                 sample_tokens);
    mp_free(sample);
    mp_train_result_free(&res);
    free(spec_text);
    mp_spec_free(spec);
    return MP_EXIT_OK;
}
