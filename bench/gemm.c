/*
 * gemm.c - mpar-bench-gemm: GFLOP/s of the CUDA backend's GEMM (strict fp32
 * and TF32) for the example model's layer shapes (forward and both backward
 * products of 784->512, 512->2048, 2048->512 at batch 256) and a square
 * 4096^3, timed with CUDA events on the backend's stream.  The peer is
 * torch.matmul on the same card, measured by bench/torch_gemm.py with the
 * same shapes, layouts and timing loop: either read from --peer-json FILE
 * (check-device.sh runs the script itself, outside this program's library
 * path) or run here with `python3 bench/torch_gemm.py`.  Single-threaded.
 *
 * Without a GPU (or a build without CUDA) it says so and exits 0.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "gpu/backend.h"

#ifdef MP_HAVE_CUDA
#include <time.h>
#endif

#ifndef MP_SOURCE_DIR
#define MP_SOURCE_DIR "."
#endif

typedef struct {
    bool quick;
    bool json;
    int device;
    const char *peer_json; /* read the peer's results from here */
    const char *peer_script;
    bool no_peer;
} opts_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mpar-bench-gemm [--quick] [-o text|json] [--device N]\n"
            "                       [--peer-json FILE | --peer-script PATH | --no-peer]\n"
            "Times the CUDA backend's GEMM (fp32, TF32) against torch.matmul on the same GPU.\n");
}

static int parse_args(int argc, char **argv, opts_t *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0) {
            o->quick = true;
        } else if (strcmp(a, "-o") == 0 && next != NULL) {
            if (strcmp(next, "json") != 0 && strcmp(next, "text") != 0) {
                fprintf(stderr, "mpar-bench-gemm: -o takes text or json\n");
                return 2;
            }
            o->json = strcmp(next, "json") == 0;
            i++;
        } else if (strcmp(a, "--device") == 0 && next != NULL) {
            char *end;
            long d = strtol(next, &end, 10);
            if (*end != '\0' || d < 0 || d > INT_MAX) {
                fprintf(stderr, "mpar-bench-gemm: bad --device %s\n", next);
                return 2;
            }
            o->device = (int)d;
            i++;
        } else if (strcmp(a, "--peer-json") == 0 && next != NULL) {
            o->peer_json = next;
            i++;
        } else if (strcmp(a, "--peer-script") == 0 && next != NULL) {
            o->peer_script = next;
            i++;
        } else if (strcmp(a, "--no-peer") == 0) {
            o->no_peer = true;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else {
            usage(stderr);
            return 2;
        }
    }
    return 0;
}

#ifdef MP_HAVE_CUDA

typedef struct {
    const char *op; /* fwd, bwd_data, bwd_weight, square */
    int64_t m, n, k;
    mp_op_t ta, tb;
} gemm_case_t;

/* B = 256 rows; layers I -> O of examples/fashion_mnist.json. */
static const gemm_case_t cases[] = {
    {"fwd", 256, 512, 784, MP_OP_N, MP_OP_N},        /* Z = X W        784->512 */
    {"bwd_data", 256, 784, 512, MP_OP_N, MP_OP_T},   /* dX = dZ W^T */
    {"bwd_weight", 784, 512, 256, MP_OP_T, MP_OP_N}, /* dW = X^T dZ */
    {"fwd", 256, 2048, 512, MP_OP_N, MP_OP_N},       /* 512->2048 */
    {"bwd_data", 256, 512, 2048, MP_OP_N, MP_OP_T},
    {"bwd_weight", 512, 2048, 256, MP_OP_T, MP_OP_N},
    {"fwd", 256, 512, 2048, MP_OP_N, MP_OP_N}, /* 2048->512 */
    {"bwd_data", 256, 2048, 512, MP_OP_N, MP_OP_T},
    {"bwd_weight", 2048, 512, 256, MP_OP_T, MP_OP_N},
    {"square", 4096, 4096, 4096, MP_OP_N, MP_OP_N},
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

static const char *op_name(mp_op_t op)
{
    return op == MP_OP_T ? "T" : "N";
}

/* ---- the peer ------------------------------------------------------------ */

static const char *find_peer_script(const opts_t *o)
{
    static const char *candidates[] = {"bench/torch_gemm.py", MP_SOURCE_DIR "/bench/torch_gemm.py"};
    if (o->peer_script != NULL) {
        return o->peer_script;
    }
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
        if (access(candidates[i], R_OK) == 0) {
            return candidates[i];
        }
    }
    return NULL;
}

/* The peer's document: from --peer-json, or by running the script. */
static json_t *peer_load(const opts_t *o, char *why, size_t why_len)
{
    json_error_t jerr;
    json_t *doc = NULL;
    if (o->no_peer) {
        snprintf(why, why_len, "peer disabled (--no-peer)");
        return NULL;
    }
    if (o->peer_json != NULL) {
        doc = json_load_file(o->peer_json, 0, &jerr);
        if (doc == NULL) {
            snprintf(why, why_len, "cannot read %s: %s", o->peer_json, jerr.text);
        }
        return doc;
    }
    const char *script = find_peer_script(o);
    if (script == NULL) {
        snprintf(why, why_len, "bench/torch_gemm.py not found (run from the repository root)");
        return NULL;
    }
    char cmd[8192];
    int len = snprintf(cmd, sizeof(cmd), "python3 '%s' --device %d%s --cases '", script, o->device,
                       o->quick ? " --quick" : "");
    for (size_t i = 0; i < NCASES && len > 0 && (size_t)len < sizeof(cmd); i++) {
        len += snprintf(cmd + len, sizeof(cmd) - (size_t)len, "%s%lld,%lld,%lld,%s,%s",
                        i ? ";" : "", (long long)cases[i].m, (long long)cases[i].n,
                        (long long)cases[i].k, op_name(cases[i].ta), op_name(cases[i].tb));
    }
    if (len <= 0 || (size_t)len + 2 >= sizeof(cmd)) {
        snprintf(why, why_len, "peer command too long");
        return NULL;
    }
    strcat(cmd, "'");
    FILE *p = popen(cmd, "r");
    if (p == NULL) {
        snprintf(why, why_len, "cannot run python3: %s", strerror(errno));
        return NULL;
    }
    doc = json_loadf(p, JSON_DISABLE_EOF_CHECK, &jerr);
    int rc = pclose(p);
    if (doc == NULL || rc != 0) {
        snprintf(why, why_len, "%s exited with status %d (python3 with torch and a GPU needed)",
                 script, rc);
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* The peer's GFLOP/s for one case, or 0 when it has none. */
static double peer_lookup(json_t *doc, const char *test, const gemm_case_t *c)
{
    json_t *results = json_object_get(doc, "results");
    size_t i;
    json_t *r;
    json_array_foreach(results, i, r)
    {
        const char *t = json_string_value(json_object_get(r, "test"));
        const char *ta = json_string_value(json_object_get(r, "ta"));
        const char *tb = json_string_value(json_object_get(r, "tb"));
        if (t != NULL && ta != NULL && tb != NULL && strcmp(t, test) == 0 &&
            json_integer_value(json_object_get(r, "m")) == c->m &&
            json_integer_value(json_object_get(r, "n")) == c->n &&
            json_integer_value(json_object_get(r, "k")) == c->k &&
            strcmp(ta, op_name(c->ta)) == 0 && strcmp(tb, op_name(c->tb)) == 0) {
            return json_number_value(json_object_get(r, "gflops"));
        }
    }
    return 0.0;
}

/* ---- timing ----------------------------------------------------------------- */

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Median-of-reps GFLOP/s of one case on one backend; 0 on error.  Each rep
 * enqueues `iters` GEMMs on the backend's stream and waits for them (the
 * backend's sync), so the wall time is the stream's time plus one sync. */
static double time_case(mp_backend_t *be, const gemm_case_t *c, float *A, float *B, float *C,
                        bool quick)
{
    int64_t lda = c->ta == MP_OP_N ? c->k : c->m;
    int64_t ldb = c->tb == MP_OP_N ? c->n : c->k;
    double flop = 2.0 * (double)c->m * (double)c->n * (double)c->k;
    double target_ms = quick ? 30.0 : 100.0;
    int reps = quick ? 3 : 5;
    double gflops[5] = {0};

    /* Warm up (cuBLAS picks and loads its kernel), then size the loop. */
    int iters = 3;
    for (int pass = 0; pass < 2 + reps; pass++) {
        if (be->ops->sync(be) != MP_OK) {
            return 0.0;
        }
        double t0 = mono_ms();
        for (int i = 0; i < iters; i++) {
            if (be->ops->gemm(be, c->ta, c->tb, c->m, c->n, c->k, 1.0f, A, lda, B, ldb, 0.0f, C,
                              c->n) != MP_OK) {
                return 0.0;
            }
        }
        if (be->ops->sync(be) != MP_OK) {
            return 0.0;
        }
        double ms = mono_ms() - t0;
        if (pass == 1) {
            double per = ms / iters;
            double want = per > 0.0 ? target_ms / per : 10000.0;
            iters = want < 3.0 ? 3 : want > 10000.0 ? 10000 : (int)want;
        } else if (pass >= 2) {
            gflops[pass - 2] = flop * iters / (ms * 1e-3) / 1e9;
        }
    }
    /* Median of the reps. */
    for (int i = 0; i < reps; i++) {
        for (int j = i + 1; j < reps; j++) {
            if (gflops[j] < gflops[i]) {
                double t = gflops[i];
                gflops[i] = gflops[j];
                gflops[j] = t;
            }
        }
    }
    return gflops[reps / 2];
}

/* A cheap non-zero fill in [-1, -0.25] u [0.25, 1]. */
static void fill(float *x, int64_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        float u = (float)(s >> 40) / (float)(1u << 24);
        x[i] = (s & 1 ? -1.0f : 1.0f) * (0.25f + 0.75f * u);
    }
}

static int run(const opts_t *o)
{
    int count = mp_backend_cuda_device_count();
    if (o->device >= count) {
        printf("mpar-bench-gemm: CUDA device %d not present (%d visible)\n", o->device, count);
        return 1;
    }
    mp_backend_t *strict = NULL, *tf32 = NULL;
    if (mp_backend_cuda_create(o->device, false, &strict) != MP_OK ||
        mp_backend_cuda_create(o->device, true, &tf32) != MP_OK) {
        mp_backend_destroy(strict);
        fprintf(stderr, "mpar-bench-gemm: cannot create the CUDA backend\n");
        return 1;
    }
    char devname[256];
    snprintf(devname, sizeof(devname), "cuda:%d", o->device);

    int64_t max_a = 0, max_b = 0, max_c = 0;
    for (size_t i = 0; i < NCASES; i++) {
        int64_t a = cases[i].m * cases[i].k, b = cases[i].k * cases[i].n,
                c = cases[i].m * cases[i].n;
        max_a = a > max_a ? a : max_a;
        max_b = b > max_b ? b : max_b;
        max_c = c > max_c ? c : max_c;
    }
    int rc = 1;
    json_t *peer = NULL, *doc = NULL;
    float *hA = mp_malloc((size_t)max_a * sizeof(float));
    float *hB = mp_malloc((size_t)max_b * sizeof(float));
    float *A = strict->ops->alloc(strict, (size_t)max_a * sizeof(float));
    float *B = strict->ops->alloc(strict, (size_t)max_b * sizeof(float));
    float *C = strict->ops->alloc(strict, (size_t)max_c * sizeof(float));
    if (hA == NULL || hB == NULL || A == NULL || B == NULL || C == NULL) {
        fprintf(stderr, "mpar-bench-gemm: out of memory\n");
        goto out;
    }
    fill(hA, max_a, 1);
    fill(hB, max_b, 2);
    if (strict->ops->upload(strict, A, hA, (size_t)max_a * sizeof(float)) != MP_OK ||
        strict->ops->upload(strict, B, hB, (size_t)max_b * sizeof(float)) != MP_OK) {
        goto out;
    }

    char why[512] = "";
    peer = peer_load(o, why, sizeof(why));
    if (peer == NULL) {
        fprintf(stderr, "mpar-bench-gemm: no peer numbers: %s\n", why);
    }
    doc = json_pack("{s:s, s:s, s:[]}", "bench", "gemm", "device", devname, "results");
    if (peer != NULL) {
        json_t *pv = json_object_get(peer, "torch");
        if (json_is_string(pv)) {
            json_object_set(doc, "peer_version", pv);
        }
    } else {
        json_object_set_new(doc, "peer_error", json_string(why));
    }
    json_t *results = json_object_get(doc, "results");
    if (!o->json) {
        printf("%-10s %-10s %5s %5s %5s %2s %12s %12s %7s  (GFLOP/s, %s)\n", "test", "op", "m", "n",
               "k", "op", "mpar", "torch", "ratio", devname);
    }
    for (int prec = 0; prec < 2; prec++) {
        const char *test = prec ? "gemm_tf32" : "gemm_fp32";
        mp_backend_t *be = prec ? tf32 : strict;
        for (size_t i = 0; i < NCASES; i++) {
            const gemm_case_t *c = &cases[i];
            double mine = time_case(be, c, A, B, C, o->quick);
            if (mine <= 0.0) {
                fprintf(stderr, "mpar-bench-gemm: %s %s %lldx%lldx%lld failed\n", test, c->op,
                        (long long)c->m, (long long)c->n, (long long)c->k);
                goto out;
            }
            double theirs = peer != NULL ? peer_lookup(peer, test, c) : 0.0;
            char ops[3] = {op_name(c->ta)[0], op_name(c->tb)[0], '\0'};
            json_t *r = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:f, s:s}", "test", test,
                                  "op", c->op, "m", (json_int_t)c->m, "n", (json_int_t)c->n, "k",
                                  (json_int_t)c->k, "ta", op_name(c->ta), "tb", op_name(c->tb),
                                  "mpar", mine, "unit", "GFLOP/s");
            if (theirs > 0.0) {
                json_object_set_new(r, "peer", json_real(theirs));
                json_object_set_new(r, "ratio", json_real(mine / theirs));
            } else {
                json_object_set_new(r, "peer", json_null());
                json_object_set_new(r, "ratio", json_null());
            }
            json_array_append_new(results, r);
            if (!o->json) {
                if (theirs > 0.0) {
                    printf("%-10s %-10s %5lld %5lld %5lld %2s %12.1f %12.1f %7.3f\n", test, c->op,
                           (long long)c->m, (long long)c->n, (long long)c->k, ops, mine, theirs,
                           mine / theirs);
                } else {
                    printf("%-10s %-10s %5lld %5lld %5lld %2s %12.1f %12s %7s\n", test, c->op,
                           (long long)c->m, (long long)c->n, (long long)c->k, ops, mine, "-", "-");
                }
                fflush(stdout);
            }
        }
    }
    if (o->json) {
        json_dumpf(doc, stdout, JSON_INDENT(1));
        printf("\n");
    }
    rc = 0;
out:
    json_decref(doc);
    json_decref(peer);
    if (A != NULL) {
        strict->ops->free(strict, A);
    }
    if (B != NULL) {
        strict->ops->free(strict, B);
    }
    if (C != NULL) {
        strict->ops->free(strict, C);
    }
    mp_free(hA);
    mp_free(hB);
    mp_backend_destroy(tf32);
    mp_backend_destroy(strict);
    return rc;
}

#endif /* MP_HAVE_CUDA */

static int no_gpu(const opts_t *o, const char *why)
{
    if (o->json) {
        json_t *doc = json_pack("{s:s, s:[], s:s}", "bench", "gemm", "results", "skipped", why);
        json_dumpf(doc, stdout, JSON_INDENT(1));
        printf("\n");
        json_decref(doc);
    } else {
        printf("mpar-bench-gemm: %s; nothing to time\n", why);
    }
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc != 0) {
        return rc;
    }
    mp_log_set_tag("mpar-bench-gemm");
    if (!mp_backend_cuda_built()) {
        return no_gpu(&o, "no GPU: this build has no CUDA backend (nvcc not found)");
    }
    if (mp_backend_cuda_device_count() < 1) {
        return no_gpu(&o, "no GPU: no CUDA device visible on this machine");
    }
#ifdef MP_HAVE_CUDA
    return run(&o);
#else
    return no_gpu(&o, "no GPU: this build has no CUDA backend");
#endif
}
