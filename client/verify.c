/*
 * verify.c - `mpar-client verify JOB.json [--steps N]`: the equivalence test
 * in a user's hands.  Runs N optimizer steps (default 5) of the job on its
 * own grid and schedule on a throwaway local cluster (the path `run` takes)
 * and serially in this process, both saving their weights as --save-weights
 * does, then compares every tensor: the relative difference of a tensor is
 * max|grid - serial| / max|serial|.  Prints each tensor's (with -v), the
 * worst, and the tolerance of the job's optimizer (1e-5 SGD, 1e-3 AdamW,
 * whose division by sqrt(v) amplifies rounding); exits 1 beyond it.
 * Owns a temporary folder (the N-step spec and both weight sets), removed
 * at the end.  Runs on the client's one thread.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/client.h"
#include "common/alloc.h"
#include "model/npy.h"
#include "model/spec.h"
#include "model/train.h"

#define VERIFY_STEPS_DEFAULT 5

static void verify_usage(FILE *f)
{
    fprintf(f, "usage: mpar-client verify JOB.json [--steps N] [-v] [-o json]\n"
               "  runs N steps (default 5) of the job on its grid on a local cluster and\n"
               "  serially, compares every parameter tensor, and prints the worst relative\n"
               "  difference against the tolerance of its optimizer (1e-5 sgd, 1e-3 adamw);\n"
               "  exit 1 beyond it.  -v prints every tensor.\n");
}

/* Writes spec_path's JSON with train.steps = steps to out; 0 or -1 with why. */
static int write_steps_spec(const char *spec_path, int64_t steps, const char *out, char *why,
                            size_t len)
{
    json_error_t e;
    json_t *root = json_load_file(spec_path, 0, &e);
    json_t *train = root != NULL ? json_object_get(root, "train") : NULL;
    if (!json_is_object(train)) {
        snprintf(why, len, "%.300s: %.150s", spec_path, root == NULL ? e.text : "no train section");
        json_decref(root);
        return -1;
    }
    json_object_del(train, "epochs");
    json_object_set_new(train, "steps", json_integer(steps));
    int rc = json_dump_file(root, out, JSON_COMPACT);
    json_decref(root);
    if (rc != 0) {
        snprintf(why, len, "cannot write %.400s", out);
        return -1;
    }
    return 0;
}

/* Removes the plain files of dir, then dir (what verify wrote there). */
static void remove_flat(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
                char f[PATH_MAX + 256];
                snprintf(f, sizeof(f), "%s/%s", dir, e->d_name);
                unlink(f);
            }
        }
        closedir(d);
    }
    rmdir(dir);
}

/* max|a - b| / max|ref| over n floats (0 when both are all zero). */
static double rel_diff(const float *ref, const float *got, size_t n)
{
    double dmax = 0.0, rmax = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (!(d <= dmax)) {
            dmax = d; /* a NaN stays NaN */
        }
        double r = fabs((double)ref[i]);
        rmax = r > rmax ? r : rmax;
    }
    if (rmax == 0.0) {
        return dmax == 0.0 ? 0.0 : INFINITY;
    }
    return dmax / rmax;
}

int mp_client_verify_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"steps", required_argument, NULL, 'n'},
        {"output", required_argument, NULL, 'o'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int64_t steps = VERIFY_STEPS_DEFAULT;
    bool json = false, verbose = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': {
            char *end;
            long long v = strtoll(optarg, &end, 10);
            if (*end != '\0' || v < 1 || v > 1000000) {
                fprintf(stderr, "mpar-client verify: --steps: expected 1..1000000, got '%s'\n",
                        optarg);
                return MP_EXIT_USAGE;
            }
            steps = v;
            break;
        }
        case 'o':
            if (strcmp(optarg, "json") == 0) {
                json = true;
            } else if (strcmp(optarg, "text") != 0 && strcmp(optarg, "table") != 0) {
                fprintf(stderr, "mpar-client verify: -o: expected json or text, got '%s'\n",
                        optarg);
                return MP_EXIT_USAGE;
            }
            break;
        case 'v':
            verbose = true;
            break;
        case 'h':
            verify_usage(stdout);
            return MP_EXIT_OK;
        default:
            verify_usage(stderr);
            return MP_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        verify_usage(stderr);
        return MP_EXIT_USAGE;
    }
    const char *path = argv[optind];
    mp_errbuf_t err = {{0}};
    mp_spec_t *spec = NULL;
    if (!mp_client_load_spec(path, &spec)) {
        return MP_EXIT_USAGE;
    }
    double tol = spec->train.optimizer == MP_OPTIM_ADAMW ? 1e-3 : 1e-5;
    const char *opt_name = spec->train.optimizer == MP_OPTIM_ADAMW ? "adamw" : "sgd";
    int pp = spec->parallel.pp, tp = spec->parallel.tp, dp = spec->parallel.dp;
    mp_spec_free(spec);
    spec = NULL;

    char dir[PATH_MAX], spec_n[PATH_MAX + 16], sdir[PATH_MAX + 16], gdir[PATH_MAX + 16];
    char why[512] = "";
    snprintf(dir, sizeof(dir), "%s/mpar-verify-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "mpar-client verify: cannot create a temporary folder: %s\n",
                strerror(errno));
        return MP_EXIT_FAILED;
    }
    snprintf(spec_n, sizeof(spec_n), "%s/spec.json", dir);
    snprintf(sdir, sizeof(sdir), "%s/serial", dir);
    snprintf(gdir, sizeof(gdir), "%s/grid", dir);
    int code = MP_EXIT_FAILED;
    if (write_steps_spec(path, steps, spec_n, why, sizeof(why)) != 0 ||
        mp_spec_load(spec_n, &spec, &err) != MP_OK) {
        fprintf(stderr, "mpar-client verify: %s\n", why[0] ? why : err.msg);
        goto out;
    }
    if (mkdir(sdir, 0755) != 0) {
        fprintf(stderr, "mpar-client verify: cannot create %s: %s\n", sdir, strerror(errno));
        goto out;
    }

    /* The ground truth: this process, one CPU thread. */
    fprintf(stderr, "verify: %lld steps serially ...\n", (long long)steps);
    mp_train_opts_t so = {.device = "cpu", .threads = 1, .save_weights = sdir};
    mp_train_result_t sres;
    if (mp_train_serial(spec, &so, &sres, &err) != MP_OK) {
        fprintf(stderr, "mpar-client verify: the serial run failed: %s\n", err.msg);
        goto out;
    }
    mp_train_result_free(&sres);

    /* The job's grid on a local cluster; its own summary is not verify's output. */
    fprintf(stderr, "verify: %lld steps on pp %d x tp %d x dp %d (%s) on a local cluster ...\n",
            (long long)steps, pp, tp, dp, mp_sched_kind_name(spec->parallel.schedule));
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    FILE *devnull = fopen("/dev/null", "w");
    if (saved >= 0 && devnull != NULL) {
        dup2(fileno(devnull), STDOUT_FILENO);
    }
    int rc = mp_client_run_local(spec_n, pp, tp, dp, spec->name, false, gdir, "none", true, spec,
                                 "none", 0, NULL);
    fflush(stdout);
    if (saved >= 0) {
        dup2(saved, STDOUT_FILENO);
        close(saved);
    }
    if (devnull != NULL) {
        fclose(devnull);
    }
    if (rc != MP_EXIT_OK) {
        fprintf(stderr, "mpar-client verify: the run on the job's grid failed (exit %d)\n", rc);
        code = rc;
        goto out;
    }

    double worst = 0.0;
    char worst_name[96] = "-";
    int ntensors = 0;
    json_t *tensors = json_array();
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *layer = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(layer); p++) {
            const char *pname = mp_layer_param_name(layer, p);
            char a[PATH_MAX + 128], b[PATH_MAX + 128], name[96];
            snprintf(name, sizeof(name), "%d.%s", l, pname);
            snprintf(a, sizeof(a), "%s/%s.npy", sdir, name);
            snprintf(b, sizeof(b), "%s/%s.npy", gdir, name);
            float *ra = NULL, *rb = NULL;
            int na, nb;
            int64_t sa[4], sb[4];
            if (mp_npy_read(a, &ra, &na, sa, &err) != MP_OK ||
                mp_npy_read(b, &rb, &nb, sb, &err) != MP_OK) {
                fprintf(stderr, "mpar-client verify: %s\n", err.msg);
                mp_free(ra);
                json_decref(tensors);
                goto out;
            }
            size_t n = 1;
            bool same = na == nb;
            for (int d = 0; d < na && same; d++) {
                same = sa[d] == sb[d];
                n *= (size_t)sa[d];
            }
            double rd = same ? rel_diff(ra, rb, n) : INFINITY;
            mp_free(ra);
            mp_free(rb);
            ntensors++;
            if (!(rd <= worst)) {
                worst = rd;
                snprintf(worst_name, sizeof(worst_name), "%s", name);
            }
            json_array_append_new(tensors,
                                  json_pack("{s:s, s:o}", "tensor", name, "rel_diff",
                                            isfinite(rd) ? json_real(rd) : json_null()));
            if (verbose && !json) {
                printf("  %-28s %.3e%s\n", name, rd, same ? "" : " (shapes differ)");
            }
        }
    }
    bool ok = worst <= tol;
    if (json) {
        json_t *o = json_pack("{s:s, s:I, s:i, s:i, s:i, s:s, s:s, s:i, s:o, s:s, s:f, s:b, s:o}",
                              "name", spec->name, "steps", (json_int_t)steps, "pp", pp, "tp", tp,
                              "dp", dp, "schedule", mp_sched_kind_name(spec->parallel.schedule),
                              "optimizer", opt_name, "tensors", ntensors, "worst_rel_diff",
                              isfinite(worst) ? json_real(worst) : json_null(), "worst_tensor",
                              worst_name, "tolerance", tol, "ok", ok, "per_tensor", tensors);
        char *text = json_dumps(o, JSON_INDENT(2));
        puts(text);
        free(text);
        json_decref(o);
    } else {
        json_decref(tensors);
        printf("verify %s: %lld steps on pp %d x tp %d x dp %d (%s) against the serial run: "
               "worst relative difference %.3e (%s) of %d tensors, tolerance %.0e (%s): %s\n",
               spec->name, (long long)steps, pp, tp, dp,
               mp_sched_kind_name(spec->parallel.schedule), worst, worst_name, ntensors, tol,
               opt_name, ok ? "OK" : "BEYOND THE TOLERANCE");
    }
    code = ok ? MP_EXIT_OK : MP_EXIT_FAILED;

out:
    mp_spec_free(spec);
    remove_flat(sdir);
    remove_flat(gdir);
    remove_flat(dir);
    return code;
}
