/*
 * ckpt.c - the client's side of checkpoints: before a submit, a relative
 * checkpoint.dir is made absolute against the spec's folder (the
 * coordinator and the nodes do not know it), and a --resume folder is
 * opened and checked against the spec (a model that differs is refused
 * here, naming the field, before anything starts); `mpar-client export`
 * writes a checkpoint's full tensors.  Single-threaded; blocking file I/O.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client.h"
#include "model/ckpt.h"
#include "model/spec.h"

/* path made absolute against base (a folder); 0, or -1 when too long. */
static int absolute(const char *base, const char *path, char *out, size_t cap)
{
    if (path[0] == '/') {
        return (size_t)snprintf(out, cap, "%s", path) < cap ? 0 : -1;
    }
    return (size_t)snprintf(out, cap, "%s/%s", base, path) < cap ? 0 : -1;
}

int mp_client_spec_prepare(const char *spec_path, const char *text, const char *resume_dir,
                           char **text_p, char *resume_abs, size_t cap)
{
    *text_p = NULL;
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    json_t *ck = json_object_get(root, "checkpoint");
    const char *dir = json_string_value(json_object_get(ck, "dir"));
    if (root != NULL && dir != NULL && dir[0] != '\0' && dir[0] != '/') {
        char spec_abs[PATH_MAX], folder[PATH_MAX], abs_dir[PATH_MAX];
        if (realpath(spec_path, spec_abs) == NULL) {
            fprintf(stderr, "mpar-client: %s: %s\n", spec_path, strerror(errno));
            json_decref(root);
            return MP_EXIT_USAGE;
        }
        snprintf(folder, sizeof(folder), "%s", spec_abs);
        char *slash = strrchr(folder, '/');
        if (slash != NULL) {
            *slash = '\0';
        }
        if (absolute(folder, dir, abs_dir, sizeof(abs_dir)) != 0) {
            fprintf(stderr, "mpar-client: %s: checkpoint.dir: path too long\n", spec_path);
            json_decref(root);
            return MP_EXIT_USAGE;
        }
        json_object_set_new(ck, "dir", json_string(abs_dir));
        *text_p = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    }
    json_decref(root);
    if (resume_dir == NULL) {
        return MP_EXIT_OK;
    }
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == NULL || absolute(cwd, resume_dir, resume_abs, cap) != 0) {
        fprintf(stderr, "mpar-client: --resume: path too long\n");
        return MP_EXIT_USAGE;
    }
    mp_errbuf_t err = {{0}};
    mp_spec_t *spec = NULL;
    const char *t = *text_p != NULL ? *text_p : text;
    if (mp_spec_parse(t, strlen(t), &spec, &err) != MP_OK) {
        return MP_EXIT_OK; /* the coordinator refuses it with its message */
    }
    mp_ckpt_t *c;
    mp_status_t st = mp_ckpt_open(resume_abs, &c, &err);
    if (st == MP_OK) {
        st = mp_ckpt_check_spec(c, spec, &err);
        mp_ckpt_close(c);
    }
    mp_spec_free(spec);
    if (st != MP_OK) {
        fprintf(stderr, "mpar-client: %s: --resume %s: %s\n", spec_path, resume_dir, err.msg);
        return MP_EXIT_USAGE;
    }
    return MP_EXIT_OK;
}

static void export_usage(FILE *f)
{
    fprintf(f, "usage: mpar-client export CKPT_DIR OUT_DIR [--format npy|safetensors]\n"
               "writes the full (gathered) tensors of the checkpoint CKPT_DIR/latest names:\n"
               "OUT_DIR/<layer>.<param>.npy (the default, as --save-weights names them), or\n"
               "one OUT_DIR/model.safetensors\n");
}

int mp_client_export_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"format", required_argument, NULL, 'F'},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        /* Global options of the cluster commands: no daemon is involved. */
        {"socket", required_argument, NULL, 'g'},
        {"connect", required_argument, NULL, 'g'},
        {"secret-file", required_argument, NULL, 'g'},
        {NULL, 0, NULL, 0},
    };
    const char *format = "npy";
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", longopts, NULL)) != -1) {
        switch (c) {
        case 'F':
            format = optarg;
            break;
        case 'o':
            if (strcmp(optarg, "json") != 0 && strcmp(optarg, "text") != 0) {
                fprintf(stderr, "mpar-client export: -o: expected json or text, got '%s'\n",
                        optarg);
                return MP_EXIT_USAGE;
            }
            json = strcmp(optarg, "json") == 0;
            break;
        case 'g':
            break;
        case 'h':
            export_usage(stdout);
            return MP_EXIT_OK;
        default:
            export_usage(stderr);
            return MP_EXIT_USAGE;
        }
    }
    if (optind != argc - 2) {
        export_usage(stderr);
        return MP_EXIT_USAGE;
    }
    if (strcmp(format, "npy") != 0 && strcmp(format, "safetensors") != 0) {
        fprintf(stderr, "mpar-client export: --format: expected npy or safetensors, got '%s'\n",
                format);
        return MP_EXIT_USAGE;
    }
    mp_errbuf_t err = {{0}};
    mp_ckpt_t *ck;
    mp_status_t st = mp_ckpt_open(argv[optind], &ck, &err);
    if (st != MP_OK) {
        fprintf(stderr, "mpar-client export: %s\n", err.msg);
        return MP_EXIT_FAILED;
    }
    st = mp_ckpt_export(ck, argv[optind + 1], format, &err);
    int64_t step = mp_ckpt_step(ck);
    mp_ckpt_close(ck);
    if (st != MP_OK) {
        fprintf(stderr, "mpar-client export: %s\n", err.msg);
        return MP_EXIT_FAILED;
    }
    if (json) {
        json_t *o = json_pack("{s:I, s:s, s:s}", "step", (json_int_t)step, "out",
                              argv[optind + 1], "format", format);
        char *text = json_dumps(o, JSON_INDENT(2));
        puts(text ? text : "{}");
        free(text);
        json_decref(o);
    } else {
        printf("exported the checkpoint of step %lld to %s (%s)\n", (long long)step,
               argv[optind + 1], format);
    }
    return MP_EXIT_OK;
}
