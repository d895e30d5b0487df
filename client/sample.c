/*
 * sample.c - `mpar-client sample JOB.json --weights DIR --prompt TEXT`:
 * text from a trained text model's weights (as --save-weights or export
 * writes them), printed as the prompt and its continuation.  Greedy at
 * --temperature 0; otherwise temperature and top-k sampling with --seed.
 * Runs in this process on one device (model/sample.c); blocks.
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "common/alloc.h"
#include "model/sample.h"
#include "model/spec.h"
#include "model/train.h"

static void sample_usage(FILE *f)
{
    fprintf(f,
            "usage: mpar-client sample JOB.json --weights DIR --prompt TEXT [--tokens N]\n"
            "                          [--temperature X] [--top-k K] [--seed S]\n"
            "                          [--device cpu|cuda|auto] [--threads N] [-o json|text]\n"
            "generates N bytes (default 200) after TEXT with the text model of JOB.json and\n"
            "the weights in DIR (<layer>.<param>.npy); --temperature 0 is greedy (argmax),\n"
            "otherwise softmax(logits / X) (default 0.8) over the K most likely bytes (0:\n"
            "all, the default), drawn with seed S (default 1)\n");
}

static int bad_value(const char *flag, const char *want, const char *got)
{
    fprintf(stderr, "mpar-client sample: %s: expected %s, got '%s'\n", flag, want, got);
    return MP_EXIT_USAGE;
}

static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *v_p)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
        return false;
    }
    *v_p = v;
    return true;
}

int mp_client_sample_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"weights", required_argument, NULL, 'w'},
        {"prompt", required_argument, NULL, 'p'},
        {"tokens", required_argument, NULL, 'n'},
        {"temperature", required_argument, NULL, 'T'},
        {"top-k", required_argument, NULL, 'k'},
        {"seed", required_argument, NULL, 'S'},
        {"device", required_argument, NULL, 'd'},
        {"threads", required_argument, NULL, 't'},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {"socket", required_argument, NULL, 'C'},
        {"connect", required_argument, NULL, 'C'},
        {"secret-file", required_argument, NULL, 'C'},
        {NULL, 0, NULL, 0},
    };
    const char *weights = NULL, *prompt = NULL;
    mp_sample_opts_t so = {.tokens = 200, .temperature = 0.8, .top_k = 0, .seed = 1};
    mp_train_opts_t to = {.device = "cpu", .threads = 1};
    bool json = false;
    int64_t v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'w':
            weights = optarg;
            break;
        case 'p':
            prompt = optarg;
            break;
        case 'n':
            if (!parse_i64(optarg, 0, 1 << 20, &so.tokens)) {
                return bad_value("--tokens", "0..1048576", optarg);
            }
            break;
        case 'T': {
            char *end;
            double t = strtod(optarg, &end);
            if (*optarg == '\0' || *end != '\0' || !isfinite(t) || t < 0.0) {
                return bad_value("--temperature", "a number >= 0", optarg);
            }
            so.temperature = t;
            break;
        }
        case 'k':
            if (!parse_i64(optarg, 0, 1 << 20, &so.top_k)) {
                return bad_value("--top-k", "an integer >= 0 (0: all bytes)", optarg);
            }
            break;
        case 'S':
            if (!parse_i64(optarg, 0, INT64_MAX, &v)) {
                return bad_value("--seed", "an integer >= 0", optarg);
            }
            so.seed = (uint64_t)v;
            break;
        case 'd':
            to.device = optarg;
            break;
        case 't':
            if (!parse_i64(optarg, 1, 1024, &v)) {
                return bad_value("--threads", "1..1024", optarg);
            }
            to.threads = (int)v;
            break;
        case 'o':
            if (strcmp(optarg, "json") == 0) {
                json = true;
            } else if (strcmp(optarg, "text") != 0 && strcmp(optarg, "table") != 0) {
                return bad_value("-o", "json or text", optarg);
            }
            break;
        case 'C':
            fprintf(stderr, "mpar-client sample: runs in this process and needs no cluster; "
                            "--socket, --connect and --secret-file do not apply\n");
            return MP_EXIT_USAGE;
        case 'h':
            sample_usage(stdout);
            return MP_EXIT_OK;
        default:
            sample_usage(stderr);
            return MP_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "mpar-client sample: %s\n",
                optind >= argc ? "no job spec given" : "one job spec, then options");
        sample_usage(stderr);
        return MP_EXIT_USAGE;
    }
    if (weights == NULL || prompt == NULL) {
        fprintf(stderr, "mpar-client sample: %s is required\n",
                weights == NULL ? "--weights DIR" : "--prompt TEXT");
        return MP_EXIT_USAGE;
    }
    if (prompt[0] == '\0') {
        fprintf(stderr, "mpar-client sample: --prompt: needs at least one byte\n");
        return MP_EXIT_USAGE;
    }
    const char *path = argv[optind];
    mp_errbuf_t err = {{0}};
    mp_spec_t *spec = NULL;
    if (!mp_client_load_spec(path, &spec)) {
        return MP_EXIT_USAGE;
    }
    int code = MP_EXIT_OK;
    mp_backend_t *be = NULL;
    unsigned char *cont = NULL;
    if (mp_sample_check_spec(spec, &err) != MP_OK) {
        fprintf(stderr, "mpar-client sample: %s: %s\n", path, err.msg);
        code = MP_EXIT_USAGE;
        goto out;
    }
    if (mp_train_backend_create(&to, &be, &err) != MP_OK) {
        fprintf(stderr, "mpar-client sample: %s\n", err.msg);
        code = MP_EXIT_USAGE;
        goto out;
    }
    size_t plen = strlen(prompt);
    mp_status_t st = mp_sample_generate(be, spec, weights, (const unsigned char *)prompt, plen,
                                        &so, &cont, &err);
    if (st != MP_OK) {
        fprintf(stderr, "mpar-client sample: %s\n", err.msg);
        /* Weights that are missing or of another shape are a bad --weights. */
        code = st == MP_ERR_IO || st == MP_ERR_FORMAT || st == MP_ERR_SPEC || st == MP_ERR_INVAL
                   ? MP_EXIT_USAGE
                   : MP_EXIT_FAILED;
        goto out;
    }
    size_t clen = (size_t)so.tokens;
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "prompt", mp_client_json_bytes(prompt, plen));
        json_object_set_new(o, "continuation", mp_client_json_bytes((const char *)cont, clen));
        json_object_set_new(o, "tokens", json_integer(so.tokens));
        json_object_set_new(o, "temperature", json_real(so.temperature));
        json_object_set_new(o, "top_k", json_integer(so.top_k));
        json_object_set_new(o, "seed", json_integer((json_int_t)so.seed));
        char *text = json_dumps(o, JSON_INDENT(2));
        puts(text != NULL ? text : "{}");
        free(text);
        json_decref(o);
    } else {
        fwrite(prompt, 1, plen, stdout);
        fwrite(cont, 1, clen, stdout);
        if (clen == 0 || cont[clen - 1] != '\n') {
            fputc('\n', stdout);
        }
    }
out:
    mp_free(cont);
    mp_backend_destroy(be);
    mp_spec_free(spec);
    return code;
}
