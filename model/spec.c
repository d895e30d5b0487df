/*
 * spec.c - parses a job spec (DESIGN.md "Job spec") with jansson and
 * validates all of it before anything starts: every field's type and range,
 * unknown fields, the layer widths (deriving each layer's in_dim/out_dim),
 * the classes of the data set, and the parallel rules (TP divisibility,
 * micro-batches, stage partitions).  Each error is one line that starts
 * with the JSON path of the bad field.  It owns the mp_spec_t it returns
 * (freed by mp_spec_free).  Pure apart from mp_spec_load's file read; any
 * thread.
 *
 * Defaults, as in DESIGN.md and PyTorch: "name" "job" (mp_spec_load: the
 * file's base name), "model.loss" "softmax_xent" (the only loss; it may be
 * omitted), "data.path" /usr/share/datasets/fashion-mnist (required for
 * "text"), "data.seed" 1, model.seq 1 (data.block_size for "text" and "kjv"),
 * "data.test_samples" 0, "parallel" pp = tp = dp = micro_batches = 1,
 * schedule "1f1b", partition "measured", "train.epochs" 1, "train.steps"
 * absent = -1 (whole epochs), momentum 0, dampening 0, nesterov false,
 * weight_decay 0 (sgd) or 0.01 (adamw), betas [0.9, 0.999], eps 1e-8,
 * seed 1, shuffle true.
 */
#include "spec.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/alloc.h"
#include "model/data.h"
#include "model/layer.h"
#include "parallel/sched.h"
#include "parallel/tpplan.h"

/* Limits that keep every product of widths far from overflow. */
#define SPEC_MAX_WIDTH (1ll << 24)
#define SPEC_MAX_GRID 1024
#define SPEC_MAX_FILE (16 << 20)
#define FASHION_MNIST_FEATURES 784
#define FASHION_MNIST_CLASSES 10
/* data.block_size: positions per sample of a text data set. */
#define MP_SPEC_MAX_BLOCK (1 << 20)

/* ---- helpers -------------------------------------------------------------- */

/* A short rendering of a JSON value for "got ..." in messages. */
static void json_brief(const json_t *v, char *buf, size_t size)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(15));
    if (s == NULL) {
        snprintf(buf, size, "(unprintable)");
        return;
    }
    if (strlen(s) > 60) {
        snprintf(buf, size, "%.57s...", s);
    } else {
        snprintf(buf, size, "%s", s);
    }
    free(s);
}

/* The error for a field of the wrong type or range: "<head>, got <v>", where
 * head is "<path>: expected <what>". */
static mp_status_t expected(mp_errbuf_t *err, const json_t *v, const char *fmt, ...)
    MP_PRINTF(3, 4);

static mp_status_t expected(mp_errbuf_t *err, const json_t *v, const char *fmt, ...)
{
    char head[sizeof(err->msg)], got[80];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof(head), fmt, ap);
    va_end(ap);
    json_brief(v, got, sizeof(got));
    return mp_errbuf_set(err, MP_ERR_SPEC, "%s, got %s", head, got);
}

/* "parent.key", or "key" at the top level. */
static void path_join(char *buf, size_t size, const char *parent, const char *key)
{
    if (parent[0] == '\0') {
        snprintf(buf, size, "%s", key);
    } else {
        snprintf(buf, size, "%s.%s", parent, key);
    }
}

/* Every key of obj must be one of allowed[0..n). */
static mp_status_t check_keys(const json_t *obj, const char *path, const char *const *allowed,
                              int n, const char *context, mp_errbuf_t *err)
{
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val)
    {
        int ok = 0;
        for (int i = 0; i < n && !ok; i++) {
            ok = strcmp(key, allowed[i]) == 0;
        }
        if (!ok) {
            char list[512] = "";
            size_t off = 0;
            for (int i = 0; i < n; i++) {
                int w = snprintf(list + off, sizeof(list) - off, "%s%s", i ? ", " : "",
                                 allowed[i]);
                if (w > 0 && (size_t)w < sizeof(list) - off) {
                    off += (size_t)w;
                }
            }
            char full[300];
            path_join(full, sizeof(full), path, key);
            return mp_errbuf_set(err, MP_ERR_SPEC, "%s: unknown field%s (expected one of: %s)",
                                 full, context, list);
        }
    }
    return MP_OK;
}

/* obj[key] as an object (required), written to *obj_p. */
static mp_status_t get_object(const json_t *parent, const char *key, const char *path,
                              int required, json_t **obj_p, mp_errbuf_t *err)
{
    json_t *v = json_object_get(parent, key);
    if (v == NULL) {
        if (required) {
            return mp_errbuf_set(err, MP_ERR_SPEC, "%s: required field is missing (an object)",
                                 path);
        }
        *obj_p = NULL;
        return MP_OK;
    }
    if (!json_is_object(v)) {
        return expected(err, v, "%s: expected an object", path);
    }
    *obj_p = v;
    return MP_OK;
}

/* An integer in [min, max]; `what` names the expectation ("a positive
 * integer").  Absent: *out_p = def, or an error when required. */
static mp_status_t get_int(const json_t *obj, const char *key, const char *parent, int required,
                           int64_t def, int64_t min, int64_t max, const char *what,
                           int64_t *out_p, mp_errbuf_t *err)
{
    char path[300];
    path_join(path, sizeof(path), parent, key);
    json_t *v = obj != NULL ? json_object_get(obj, key) : NULL;
    if (v == NULL) {
        if (required) {
            return mp_errbuf_set(err, MP_ERR_SPEC, "%s: required field is missing (%s)", path,
                                 what);
        }
        *out_p = def;
        return MP_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min) {
        return expected(err, v, "%s: expected %s", path, what);
    }
    if (json_integer_value(v) > max) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "%s: %lld is too large (at most %lld)", path,
                             (long long)json_integer_value(v), (long long)max);
    }
    *out_p = json_integer_value(v);
    return MP_OK;
}

typedef enum { RANGE_POSITIVE, RANGE_NONNEG, RANGE_UNIT_OPEN, RANGE_UNIT_CLOSED } range_t;

/* A number (integer or real) in the range; absent: def, or an error when required. */
static mp_status_t get_number(const json_t *obj, const char *key, const char *parent,
                              int required, double def, range_t range, double *out_p,
                              mp_errbuf_t *err)
{
    static const char *const what[] = {
        [RANGE_POSITIVE] = "a positive number",
        [RANGE_NONNEG] = "a non-negative number",
        [RANGE_UNIT_OPEN] = "a number in [0, 1)",
        [RANGE_UNIT_CLOSED] = "a number in [0, 1]",
    };
    char path[300];
    path_join(path, sizeof(path), parent, key);
    json_t *v = obj != NULL ? json_object_get(obj, key) : NULL;
    if (v == NULL) {
        if (required) {
            return mp_errbuf_set(err, MP_ERR_SPEC, "%s: required field is missing (%s)", path,
                                 what[range]);
        }
        *out_p = def;
        return MP_OK;
    }
    int ok = json_is_number(v);
    double x = ok ? json_number_value(v) : 0.0;
    if (ok) {
        switch (range) {
        case RANGE_POSITIVE:
            ok = x > 0.0;
            break;
        case RANGE_NONNEG:
            ok = x >= 0.0;
            break;
        case RANGE_UNIT_OPEN:
            ok = x >= 0.0 && x < 1.0;
            break;
        case RANGE_UNIT_CLOSED:
            ok = x >= 0.0 && x <= 1.0;
            break;
        }
        ok = ok && isfinite(x);
    }
    if (!ok) {
        return expected(err, v, "%s: expected %s", path, what[range]);
    }
    *out_p = x;
    return MP_OK;
}

static mp_status_t get_bool(const json_t *obj, const char *key, const char *parent, bool def,
                            bool *out_p, mp_errbuf_t *err)
{
    char path[300];
    path_join(path, sizeof(path), parent, key);
    json_t *v = obj != NULL ? json_object_get(obj, key) : NULL;
    if (v == NULL) {
        *out_p = def;
        return MP_OK;
    }
    if (!json_is_boolean(v)) {
        return expected(err, v, "%s: expected true or false", path);
    }
    *out_p = json_is_true(v);
    return MP_OK;
}

/* A string that must be one of names[0..n); *out_p = its index (or def when
 * absent and not required). */
static mp_status_t get_enum(const json_t *obj, const char *key, const char *parent, int required,
                            int def, const char *const *names, int n, int *out_p,
                            mp_errbuf_t *err)
{
    char path[300], list[256] = "";
    path_join(path, sizeof(path), parent, key);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        int w = snprintf(list + off, sizeof(list) - off, "%s\"%s\"",
                         i == 0 ? "" : (i == n - 1 ? " or " : ", "), names[i]);
        if (w > 0 && (size_t)w < sizeof(list) - off) {
            off += (size_t)w;
        }
    }
    json_t *v = obj != NULL ? json_object_get(obj, key) : NULL;
    if (v == NULL) {
        if (required) {
            return mp_errbuf_set(err, MP_ERR_SPEC, "%s: required field is missing (%s)", path,
                                 list);
        }
        *out_p = def;
        return MP_OK;
    }
    if (json_is_string(v)) {
        for (int i = 0; i < n; i++) {
            if (strcmp(json_string_value(v), names[i]) == 0) {
                *out_p = i;
                return MP_OK;
            }
        }
    }
    return expected(err, v, "%s: expected %s", path, list);
}

/* ---- sections ------------------------------------------------------------- */

static const char *const tp_mode_names[] = {"column", "row", "replicate"};
/* Indexes 0..2 of the "partition" names; index 2 is MP_PART_MEASURED. */
static const char *const part_names[] = {"uniform", "balanced", "measured"};
static const char *const optim_names[] = {"sgd", "adamw"};
static const char *const data_names[] = {"fashion-mnist", "synthetic", "text", "kjv"};

/* A character a job name may hold: the name appears in file names, logs and
 * tables, so it stays plain (A-Z a-z 0-9 . _ -, not starting with . or -). */
static int name_char_ok(char c, int first)
{
    if (first && (c == '.' || c == '-')) {
        return 0;
    }
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static mp_status_t parse_name(const json_t *root, const char *def, mp_spec_t *spec,
                              mp_errbuf_t *err)
{
    json_t *v = json_object_get(root, "name");
    const char *name = def;
    if (v != NULL) {
        if (!json_is_string(v)) {
            return expected(err, v, "name: expected a string");
        }
        name = json_string_value(v);
    }
    size_t len = strlen(name);
    int ok = len >= 1 && len < sizeof(spec->name);
    for (size_t i = 0; i < len && ok; i++) {
        ok = name_char_ok(name[i], i == 0);
    }
    if (!ok) {
        return expected(err, v,
                        "name: expected 1 to %zu characters of A-Z a-z 0-9 . _ - not "
                        "starting with . or -",
                        sizeof(spec->name) - 1);
    }
    snprintf(spec->name, sizeof(spec->name), "%s", name);
    return MP_OK;
}

static mp_status_t parse_layer(const json_t *lj, int i, int64_t in_dim, const char *in_from,
                               mp_layer_spec_t *layer, mp_errbuf_t *err)
{
    char path[64], ctx[64];
    snprintf(path, sizeof(path), "model.layers[%d]", i);
    if (!json_is_object(lj)) {
        return expected(err, lj, "%s: expected an object", path);
    }
    const char *const *kind_names;
    int nkinds = mp_layer_kind_names(&kind_names);
    int kind;
    mp_status_t st = get_enum(lj, "type", path, 1, 0, kind_names, nkinds, &kind, err);
    if (st != MP_OK) {
        return st;
    }
    const mp_layer_ops_t *ops = mp_layer_ops_by_name(kind_names[kind]);
    memset(layer, 0, sizeof(*layer));
    layer->kind = ops->kind;
    layer->in_dim = in_dim;
    /* The kind's keys: "type", its integer fields, and "tp" where it takes one. */
    const char *allowed[16];
    int nallowed = 0;
    allowed[nallowed++] = "type";
    for (int k = 0; k < ops->nkeys && nallowed < 15; k++) {
        allowed[nallowed++] = ops->keys[k].key;
    }
    if (ops->takes_tp) {
        allowed[nallowed++] = "tp";
    }
    snprintf(ctx, sizeof(ctx), " for a %s layer", ops->name);
    st = check_keys(lj, path, allowed, nallowed, ctx, err);
    for (int k = 0; k < ops->nkeys && st == MP_OK; k++) {
        int64_t *field = (int64_t *)((char *)layer + ops->keys[k].offset);
        st = get_int(lj, ops->keys[k].key, path, ops->keys[k].required, 0, 1, SPEC_MAX_WIDTH,
                     "a positive integer", field, err);
    }
    if (st == MP_OK && ops->takes_tp) {
        int tp = -1;
        st = get_enum(lj, "tp", path, 0, -1, tp_mode_names, 3, &tp, err);
        layer->tp = tp < 0 ? MP_TP_AUTO : (mp_tp_mode_t)(MP_TP_COLUMN + tp);
    }
    if (st != MP_OK) {
        return st;
    }
    return ops->check(layer, i, in_dim, in_from, &layer->out_dim, err);
}

/* Whether the spec's first layer is an embedding (then model.input is 1,
 * one token id per position, and may be omitted). */
static bool starts_with_embedding(const json_t *mj)
{
    json_t *layers = json_object_get(mj, "layers");
    json_t *type = json_object_get(json_array_get(layers, 0), "type");
    return json_is_string(type) && strcmp(json_string_value(type), "embedding") == 0;
}

static mp_status_t parse_model(const json_t *root, mp_spec_t *spec, mp_errbuf_t *err)
{
    static const char *const keys[] = {"input", "layers", "loss"};
    static const char *const loss_names[] = {"softmax_xent"};
    json_t *mj = NULL;
    mp_status_t st = get_object(root, "model", "model", 1, &mj, err);
    if (st == MP_OK) {
        st = check_keys(mj, "model", keys, 3, "", err);
    }
    if (st == MP_OK) {
        bool emb = starts_with_embedding(mj);
        st = get_int(mj, "input", "model", !emb, 1, 1, SPEC_MAX_WIDTH, "a positive integer",
                     &spec->model.input, err);
    }
    int loss;
    if (st == MP_OK) {
        st = get_enum(mj, "loss", "model", 0, 0, loss_names, 1, &loss, err);
    }
    if (st != MP_OK) {
        return st;
    }
    json_t *layers = json_object_get(mj, "layers");
    if (layers == NULL) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers: required field is missing (a non-empty array of "
                             "layer objects)");
    }
    if (!json_is_array(layers) || json_array_size(layers) == 0) {
        return expected(err, layers, "model.layers: expected a non-empty array of layer objects");
    }
    if (json_array_size(layers) > MP_SPEC_MAX_LAYERS) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "model.layers: %zu layers, at most %d are supported",
                             json_array_size(layers), MP_SPEC_MAX_LAYERS);
    }
    int64_t width = spec->model.input;
    char from[64] = "model.input";
    spec->model.nlayers = (int)json_array_size(layers);
    for (int i = 0; i < spec->model.nlayers; i++) {
        st = parse_layer(json_array_get(layers, (size_t)i), i, width, from,
                         &spec->model.layers[i], err);
        if (st != MP_OK) {
            return st;
        }
        width = spec->model.layers[i].out_dim;
        snprintf(from, sizeof(from), "model.layers[%d]", i);
    }
    return MP_OK;
}

/* "text" and "kjv": byte tokens in windows of data.block_size (T), which
 * is also model.seq.  The file itself is checked before a job starts
 * (mp_train_check_data), not here: parsing reads no files. */
static mp_status_t parse_text_data(const json_t *dj, mp_spec_t *spec, mp_errbuf_t *err)
{
    static const char *const text_keys[] = {"dataset", "path", "block_size"};
    static const char *const kjv_keys[] = {"dataset", "block_size"};
    bool text = spec->data.kind == MP_DATA_TEXT;
    mp_status_t st = text ? check_keys(dj, "data", text_keys, 3, " for data.dataset \"text\"", err)
                          : check_keys(dj, "data", kjv_keys, 2, " for data.dataset \"kjv\"", err);
    if (st != MP_OK) {
        return st;
    }
    if (text) {
        json_t *p = json_object_get(dj, "path");
        if (p == NULL) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "data.path: required field is missing (the text file for "
                                 "data.dataset \"text\")");
        }
        if (!json_is_string(p) || json_string_length(p) == 0 ||
            json_string_length(p) >= sizeof(spec->data.path) ||
            strlen(json_string_value(p)) != json_string_length(p)) {
            return expected(err, p,
                            "data.path: expected a file name (a non-empty string under %zu "
                            "bytes)",
                            sizeof(spec->data.path));
        }
        snprintf(spec->data.path, sizeof(spec->data.path), "%s", json_string_value(p));
    }
    st = get_int(dj, "block_size", "data", 1, 0, 1, MP_SPEC_MAX_BLOCK, "a positive integer",
                 &spec->data.block_size, err);
    if (st != MP_OK) {
        return st;
    }
    spec->data.classes = MP_TEXT_VOCAB;
    spec->model.seq = spec->data.block_size;
    return MP_OK;
}

static mp_status_t parse_data(const json_t *root, mp_spec_t *spec, mp_errbuf_t *err)
{
    static const char *const fm_keys[] = {"dataset", "path"};
    static const char *const syn_keys[] = {"dataset", "samples", "classes", "seed",
                                           "test_samples"};
    json_t *dj = NULL;
    mp_status_t st = get_object(root, "data", "data", 1, &dj, err);
    int kind;
    if (st == MP_OK) {
        st = get_enum(dj, "dataset", "data", 1, 0, data_names, 4, &kind, err);
    }
    if (st != MP_OK) {
        return st;
    }
    spec->data.kind = (mp_data_kind_t)kind;
    if (spec->data.kind == MP_DATA_TEXT || spec->data.kind == MP_DATA_KJV) {
        return parse_text_data(dj, spec, err);
    }
    if (spec->data.kind == MP_DATA_FASHION_MNIST) {
        st = check_keys(dj, "data", fm_keys, 2, " for data.dataset \"fashion-mnist\"", err);
        if (st != MP_OK) {
            return st;
        }
        spec->data.classes = FASHION_MNIST_CLASSES;
        json_t *p = json_object_get(dj, "path");
        const char *path = MP_FASHION_MNIST_DIR;
        if (p != NULL) {
            if (!json_is_string(p) || json_string_length(p) == 0 ||
                json_string_length(p) >= sizeof(spec->data.path)) {
                return expected(err, p,
                                "data.path: expected a folder name (a non-empty string "
                                "under %zu bytes)",
                                sizeof(spec->data.path));
            }
            path = json_string_value(p);
        }
        snprintf(spec->data.path, sizeof(spec->data.path), "%s", path);
        if (spec->model.input != FASHION_MNIST_FEATURES) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "model.input: %lld does not match the %d pixels of "
                                 "data.dataset \"fashion-mnist\"",
                                 (long long)spec->model.input, FASHION_MNIST_FEATURES);
        }
        return MP_OK;
    }
    st = check_keys(dj, "data", syn_keys, 5, " for data.dataset \"synthetic\"", err);
    if (st == MP_OK) {
        st = get_int(dj, "samples", "data", 1, 0, 1, INT32_MAX, "a positive integer",
                     &spec->data.samples, err);
    }
    if (st == MP_OK) {
        st = get_int(dj, "classes", "data", 1, 0, 2, 1 << 20, "an integer >= 2",
                     &spec->data.classes, err);
    }
    int64_t seed = 1;
    if (st == MP_OK) {
        st = get_int(dj, "seed", "data", 0, 1, 0, INT64_MAX, "a non-negative integer", &seed,
                     err);
    }
    if (st == MP_OK) {
        st = get_int(dj, "test_samples", "data", 0, 0, 0, INT32_MAX, "a non-negative integer",
                     &spec->data.test_samples, err);
    }
    spec->data.seed = (uint64_t)seed;
    return st;
}

/* The last layer must produce one logit per class. */
static mp_status_t check_logits(mp_spec_t *spec, mp_errbuf_t *err)
{
    int last = spec->model.nlayers - 1;
    const mp_layer_spec_t *l = &spec->model.layers[last];
    if (l->kind != MP_LAYER_LINEAR) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].type: the last layer must be a \"linear\" "
                             "producing the logits of the softmax_xent loss, got \"%s\"",
                             last, mp_layer_kind_name(l->kind));
    }
    if (l->out != spec->data.classes) {
        if (spec->data.kind == MP_DATA_FASHION_MNIST) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "model.layers[%d].out: %lld does not match the %lld classes "
                                 "of data.dataset \"fashion-mnist\"",
                                 last, (long long)l->out, (long long)spec->data.classes);
        }
        if (spec->data.kind == MP_DATA_TEXT || spec->data.kind == MP_DATA_KJV) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "model.layers[%d].out: %lld does not match the %lld byte "
                                 "values of data.dataset \"%s\"",
                                 last, (long long)l->out, (long long)spec->data.classes,
                                 data_names[spec->data.kind]);
        }
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[%d].out: %lld does not match data.classes = %lld",
                             last, (long long)l->out, (long long)spec->data.classes);
    }
    return MP_OK;
}

/* A sequence model and its text data set fit each other: an embedding
 * takes the byte tokens of a text data set (and only those), its vocab
 * holds every byte, and its position table every position of a window. */
static mp_status_t check_sequence(const mp_spec_t *spec, mp_errbuf_t *err)
{
    const mp_layer_spec_t *first = &spec->model.layers[0];
    bool text = spec->data.kind == MP_DATA_TEXT || spec->data.kind == MP_DATA_KJV;
    bool emb = first->kind == MP_LAYER_EMBEDDING;
    if (text && !emb) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[0].type: a text data set gives token ids; the first "
                             "layer must be an \"embedding\", got \"%s\"",
                             mp_layer_kind_name(first->kind));
    }
    if (emb && !text) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[0].type: an \"embedding\" takes token ids, which only "
                             "the text data sets (\"text\", \"kjv\") give");
    }
    if (!emb) {
        return MP_OK;
    }
    if (first->vocab < 256) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers[0].vocab: %lld is smaller than the 256 byte values of "
                             "a text data set",
                             (long long)first->vocab);
    }
    if (spec->data.block_size > first->max_seq) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "data.block_size: %lld is larger than model.layers[0].max_seq = %lld",
                             (long long)spec->data.block_size, (long long)first->max_seq);
    }
    return MP_OK;
}

static mp_status_t parse_parallel(const json_t *root, mp_spec_t *spec, mp_errbuf_t *err)
{
    static const char *const keys[] = {"pp",        "tp",     "dp",
                                       "micro_batches", "schedule", "partition",
                                       "stages",        "virtual_stages", "fuse_w"};
    json_t *pj = NULL;
    int64_t pp = 1, tp = 1, dp = 1, mb = 1, vs = 1, fw = 1;
    int sched = MP_SCHED_1F1B, part = 2;
    mp_status_t st = get_object(root, "parallel", "parallel", 0, &pj, err);
    if (st == MP_OK && pj != NULL) {
        st = check_keys(pj, "parallel", keys, 9, "", err);
    }
    if (st == MP_OK) {
        st = get_int(pj, "pp", "parallel", 0, 1, 1, MP_SPEC_MAX_STAGES, "a positive integer", &pp,
                     err);
    }
    if (st == MP_OK) {
        st = get_int(pj, "tp", "parallel", 0, 1, 1, SPEC_MAX_GRID, "a positive integer", &tp, err);
    }
    if (st == MP_OK) {
        st = get_int(pj, "dp", "parallel", 0, 1, 1, SPEC_MAX_GRID, "a positive integer", &dp, err);
    }
    if (st == MP_OK) {
        st = get_int(pj, "micro_batches", "parallel", 0, 1, 1, 1 << 20, "a positive integer", &mb,
                     err);
    }
    if (st == MP_OK) {
        st = get_int(pj, "virtual_stages", "parallel", 0, 1, 1, MP_SPEC_MAX_STAGES,
                     "a positive integer", &vs, err);
    }
    if (st == MP_OK) {
        st = get_int(pj, "fuse_w", "parallel", 0, 1, 1, MP_SPEC_MAX_FUSE_W,
                     "a positive integer", &fw, err);
    }
    if (st == MP_OK) {
        const char *const *sched_names;
        int nsched = mp_sched_kind_names(&sched_names);
        st = get_enum(pj, "schedule", "parallel", 0, MP_SCHED_1F1B, sched_names, nsched, &sched,
                      err);
    }
    if (st == MP_OK) {
        st = get_enum(pj, "partition", "parallel", 0, 2, part_names, 3, &part, err);
    }
    if (st != MP_OK) {
        return st;
    }
    spec->parallel.pp = (int)pp;
    spec->parallel.tp = (int)tp;
    spec->parallel.dp = (int)dp;
    spec->parallel.micro_batches = (int)mb;
    spec->parallel.virtual_stages = (int)vs;
    spec->parallel.fuse_w = (int)fw;
    spec->parallel.schedule = (mp_sched_kind_t)sched;
    spec->parallel.partition = part == 2 ? MP_PART_MEASURED : (mp_part_kind_t)part;
    int nl = spec->model.nlayers;

    /* What the schedule cannot run (naive: several micro-batches), naming the fields. */
    st = mp_sched_check((mp_sched_kind_t)sched, (int)pp, (int)mb, (int)vs, err);
    if (st != MP_OK) {
        return st;
    }
    if (fw > 1 && !mp_sched_kind_splits((mp_sched_kind_t)sched)) {
        /* Name the schedules whose backward has W actions, from the table. */
        const char *const *names;
        int nk = mp_sched_kind_names(&names), nsplit = 0;
        char list[256] = "";
        size_t off = 0;
        for (int k = 0; k < nk && off < sizeof(list); k++) {
            if (mp_sched_kind_splits((mp_sched_kind_t)k)) {
                int w = snprintf(list + off, sizeof(list) - off, "%s\"%s\"",
                                 nsplit++ > 0 ? " or " : "", names[k]);
                off += w > 0 ? (size_t)w : 0;
            }
        }
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.fuse_w: fusing weight gradients needs parallel.schedule "
                             "%s, the schedule%s whose backward has W actions",
                             list, nsplit > 1 ? "s" : "");
    }
    if (fw > mb) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.fuse_w: %lld micro-batches' weight gradients but "
                             "parallel.micro_batches is %lld",
                             (long long)fw, (long long)mb);
    }
    if (vs > 1 && pp == 1) {
        /* One stage's chunks would be consecutive: one model, nothing to interleave. */
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.virtual_stages: %lld chunks on one stage are one model; "
                             "interleaving needs parallel.pp of 2 or more",
                             (long long)vs);
    }
    if (pp > nl) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.pp: %lld stages but model.layers has only %d layers",
                             (long long)pp, nl);
    }
    if (pp * vs > nl) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.virtual_stages: parallel.pp %lld x %lld chunks need %lld "
                             "layers but model.layers has only %d",
                             (long long)pp, (long long)vs, (long long)(pp * vs), nl);
    }
    json_t *stages = pj != NULL ? json_object_get(pj, "stages") : NULL;
    if (stages != NULL) {
        if (json_object_get(pj, "partition") != NULL) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "parallel.stages: give either parallel.stages or "
                                 "parallel.partition, not both");
        }
        if (!json_is_array(stages)) {
            return expected(err, stages,
                            "parallel.stages: expected an array of layer counts, one per stage");
        }
        int64_t nparts = pp * vs; /* chunk c of stage s is entry c * pp + s */
        if ((int64_t)json_array_size(stages) != nparts && vs > 1) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "parallel.stages: %zu entries but parallel.pp x "
                                 "parallel.virtual_stages = %lld chunks (chunk c of stage s is "
                                 "entry c x pp + s)",
                                 json_array_size(stages), (long long)nparts);
        }
        if ((int64_t)json_array_size(stages) != nparts) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "parallel.stages: %zu entries but parallel.pp = %lld",
                                 json_array_size(stages), (long long)pp);
        }
        int64_t sum = 0;
        for (int s = 0; s < (int)nparts; s++) {
            json_t *v = json_array_get(stages, (size_t)s);
            if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                json_integer_value(v) > nl) {
                return expected(err, v, "parallel.stages[%d]: expected a layer count from 1 to %d",
                                s, nl);
            }
            spec->parallel.stage_layers[s] = (int)json_integer_value(v);
            sum += json_integer_value(v);
        }
        if (sum != nl) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "parallel.stages: the stages hold %lld layers in all but "
                                 "model.layers has %d",
                                 (long long)sum, nl);
        }
        spec->parallel.partition = MP_PART_EXPLICIT;
        spec->parallel.nstages_explicit = (int)nparts;
    }

    /* Tensor-parallel rules (DESIGN.md "Which layers split"): each layer
     * kind's plan refuses the degree it cannot split by, naming the field. */
    mp_tp_plan_t *plan = mp_malloc(sizeof(*plan));
    if (plan == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "job spec: out of memory");
    }
    mp_status_t pst = mp_tp_plan_build(spec, NULL, plan, err);
    mp_free(plan);
    return pst;
}

static mp_status_t parse_train(const json_t *root, mp_spec_t *spec, mp_errbuf_t *err)
{
    static const char *const keys[] = {"batch_size", "epochs", "steps", "optimizer", "lr",
                                       "momentum", "dampening", "weight_decay", "nesterov",
                                       "betas", "eps", "seed", "shuffle", "max_restarts"};
    static const char *const sgd_only[] = {"momentum", "dampening", "nesterov"};
    static const char *const adamw_only[] = {"betas", "eps"};
    json_t *tj = NULL;
    mp_status_t st = get_object(root, "train", "train", 1, &tj, err);
    if (st == MP_OK) {
        st = check_keys(tj, "train", keys, 14, "", err);
    }
    if (st == MP_OK) {
        st = get_int(tj, "batch_size", "train", 1, 0, 1, INT32_MAX, "a positive integer",
                     &spec->train.batch_size, err);
    }
    if (st == MP_OK) {
        st = get_int(tj, "epochs", "train", 0, 1, 1, 1000000, "a positive integer",
                     &spec->train.epochs, err);
    }
    if (st == MP_OK) {
        st = get_int(tj, "steps", "train", 0, -1, 0, INT64_MAX / 2, "a non-negative integer",
                     &spec->train.steps, err);
    }
    int optim = 0;
    if (st == MP_OK) {
        st = get_enum(tj, "optimizer", "train", 1, 0, optim_names, 2, &optim, err);
    }
    if (st != MP_OK) {
        return st;
    }
    spec->train.optimizer = (mp_optim_kind_t)optim;
    /* Fields of the other optimizer are refused rather than silently ignored. */
    const char *const *foreign = optim == MP_OPTIM_SGD ? adamw_only : sgd_only;
    int nforeign = optim == MP_OPTIM_SGD ? 2 : 3;
    for (int i = 0; i < nforeign; i++) {
        if (json_object_get(tj, foreign[i]) != NULL) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "train.%s: applies only to optimizer \"%s\", not \"%s\"",
                                 foreign[i], optim == MP_OPTIM_SGD ? "adamw" : "sgd",
                                 optim_names[optim]);
        }
    }
    double wd_default = optim == MP_OPTIM_SGD ? 0.0 : 0.01;
    st = get_number(tj, "lr", "train", 1, 0.0, RANGE_POSITIVE, &spec->train.lr, err);
    if (st == MP_OK) {
        st = get_number(tj, "momentum", "train", 0, 0.0, RANGE_UNIT_OPEN, &spec->train.momentum,
                        err);
    }
    if (st == MP_OK) {
        st = get_number(tj, "dampening", "train", 0, 0.0, RANGE_UNIT_CLOSED,
                        &spec->train.dampening, err);
    }
    if (st == MP_OK) {
        st = get_number(tj, "weight_decay", "train", 0, wd_default, RANGE_NONNEG,
                        &spec->train.weight_decay, err);
    }
    if (st == MP_OK) {
        st = get_bool(tj, "nesterov", "train", false, &spec->train.nesterov, err);
    }
    if (st == MP_OK) {
        st = get_number(tj, "eps", "train", 0, 1e-8, RANGE_POSITIVE, &spec->train.eps, err);
    }
    int64_t seed = 1;
    if (st == MP_OK) {
        st = get_int(tj, "seed", "train", 0, 1, 0, INT64_MAX, "a non-negative integer", &seed,
                     err);
    }
    if (st == MP_OK) {
        st = get_bool(tj, "shuffle", "train", true, &spec->train.shuffle, err);
    }
    if (st == MP_OK) {
        st = get_int(tj, "max_restarts", "train", 0, 0, 0, 1000000, "a non-negative integer",
                     &spec->train.max_restarts, err);
    }
    if (st != MP_OK) {
        return st;
    }
    spec->train.seed = (uint64_t)seed;
    if (spec->train.nesterov && (spec->train.momentum <= 0.0 || spec->train.dampening != 0.0)) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "train.nesterov: needs train.momentum > 0 and train.dampening = 0 "
                             "(as torch.optim.SGD), got momentum %g, dampening %g",
                             spec->train.momentum, spec->train.dampening);
    }
    spec->train.beta1 = 0.9;
    spec->train.beta2 = 0.999;
    json_t *betas = json_object_get(tj, "betas");
    if (betas != NULL) {
        if (!json_is_array(betas) || json_array_size(betas) != 2) {
            return expected(err, betas,
                            "train.betas: expected an array of two numbers [beta1, beta2]");
        }
        double b[2];
        for (int i = 0; i < 2; i++) {
            json_t *v = json_array_get(betas, (size_t)i);
            b[i] = json_is_number(v) ? json_number_value(v) : -1.0;
            if (!(b[i] >= 0.0 && b[i] < 1.0)) {
                return expected(err, v, "train.betas[%d]: expected a number in [0, 1)", i);
            }
        }
        spec->train.beta1 = b[0];
        spec->train.beta2 = b[1];
    }
    int64_t bs = spec->train.batch_size;
    int64_t dp = spec->parallel.dp, mb = spec->parallel.micro_batches;
    if (bs % (dp * mb) != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "train.batch_size: %lld is not divisible by parallel.dp * "
                             "parallel.micro_batches = %lld * %lld",
                             (long long)bs, (long long)dp, (long long)mb);
    }
    return MP_OK;
}

static mp_status_t parse_checkpoint(const json_t *root, mp_spec_t *spec, mp_errbuf_t *err)
{
    static const char *const keys[] = {"dir", "every_steps", "keep"};
    json_t *cj = NULL;
    mp_status_t st = get_object(root, "checkpoint", "checkpoint", 0, &cj, err);
    if (st != MP_OK || cj == NULL) {
        return st;
    }
    st = check_keys(cj, "checkpoint", keys, 3, "", err);
    if (st != MP_OK) {
        return st;
    }
    json_t *d = json_object_get(cj, "dir");
    if (d == NULL) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "checkpoint.dir: required field is missing (a "
                                               "folder)");
    }
    const char *dir = json_string_value(d);
    if (dir == NULL || dir[0] == '\0' || strlen(dir) >= sizeof(spec->checkpoint.dir)) {
        return expected(err, d, "checkpoint.dir: expected a folder name of 1 to %zu bytes",
                        sizeof(spec->checkpoint.dir) - 1);
    }
    snprintf(spec->checkpoint.dir, sizeof(spec->checkpoint.dir), "%s", dir);
    st = get_int(cj, "every_steps", "checkpoint", 1, 0, 1, INT64_MAX / 2, "a positive integer",
                 &spec->checkpoint.every_steps, err);
    if (st == MP_OK) {
        st = get_int(cj, "keep", "checkpoint", 0, 2, 1, 1000000, "a positive integer",
                     &spec->checkpoint.keep, err);
    }
    spec->checkpoint.enabled = st == MP_OK;
    return st;
}

/* ---- entry points --------------------------------------------------------- */

static mp_status_t spec_parse(const char *json, size_t len, const char *default_name,
                              mp_spec_t **spec_p, mp_errbuf_t *err)
{
    static const char *const keys[] = {"name", "model", "data", "parallel", "train",
                                       "checkpoint"};
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "job spec: invalid JSON at line %d, column %d: %s",
                             jerr.line, jerr.column, jerr.text);
    }
    mp_status_t st;
    mp_spec_t *spec = NULL;
    if (!json_is_object(root)) {
        st = expected(err, root, "job spec: expected a JSON object");
        goto free_json;
    }
    spec = mp_calloc(1, sizeof(*spec));
    if (spec == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "job spec: out of memory");
        goto free_json;
    }
    /* One position per sample unless the data set is a text (parse_data). */
    spec->model.seq = 1;
    st = check_keys(root, "", keys, 6, "", err);
    if (st == MP_OK) {
        st = parse_name(root, default_name, spec, err);
    }
    if (st == MP_OK) {
        st = parse_model(root, spec, err);
    }
    if (st == MP_OK) {
        st = parse_data(root, spec, err);
    }
    if (st == MP_OK) {
        st = check_sequence(spec, err);
    }
    if (st == MP_OK) {
        st = check_logits(spec, err);
    }
    if (st == MP_OK) {
        st = parse_parallel(root, spec, err);
    }
    if (st == MP_OK) {
        st = parse_train(root, spec, err);
    }
    if (st == MP_OK) {
        st = parse_checkpoint(root, spec, err);
    }
    if (st != MP_OK) {
        mp_free(spec);
        goto free_json;
    }
    *spec_p = spec;
free_json:
    json_decref(root);
    return st;
}

mp_status_t mp_spec_parse(const char *json, size_t len, mp_spec_t **spec_p, mp_errbuf_t *err)
{
    return spec_parse(json, len, "job", spec_p, err);
}

mp_status_t mp_spec_load(const char *path, mp_spec_t **spec_p, mp_errbuf_t *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return mp_errbuf_set(err, MP_ERR_IO, "%s: cannot open job spec: %s", path,
                             strerror(errno));
    }
    /* Read in growing chunks: specs are small, the cap only stops a wrong file. */
    size_t cap = 1 << 16, len = 0;
    char *buf = mp_malloc(cap);
    mp_status_t st = MP_OK;
    while (buf != NULL) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap || ferror(f)) {
            break;
        }
        if (cap >= SPEC_MAX_FILE) {
            st = mp_errbuf_set(err, MP_ERR_SPEC, "%s: job spec larger than %d bytes", path,
                               SPEC_MAX_FILE);
            break;
        }
        cap *= 2;
        char *bigger = mp_realloc(buf, cap);
        if (bigger == NULL) {
            mp_free(buf);
        }
        buf = bigger;
    }
    if (buf == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", path);
    } else if (st == MP_OK && ferror(f)) {
        st = mp_errbuf_set(err, MP_ERR_IO, "%s: cannot read job spec: %s", path,
                           strerror(errno));
    }
    fclose(f);
    if (st == MP_OK) {
        /* The default name is the file's base name without ".json", with
         * characters a name may not hold replaced by '_'. */
        const char *base = strrchr(path, '/');
        base = base != NULL ? base + 1 : path;
        char name[sizeof(((mp_spec_t *)0)->name)];
        snprintf(name, sizeof(name), "%s", base);
        size_t n = strlen(name);
        if (n > 5 && strcmp(name + n - 5, ".json") == 0) {
            name[n - 5] = '\0';
        }
        for (char *c = name; *c != '\0'; c++) {
            if (!name_char_ok(*c, c == name)) {
                *c = '_';
            }
        }
        st = spec_parse(buf, len, name[0] != '\0' ? name : "job", spec_p, err);
    }
    mp_free(buf);
    return st;
}

void mp_spec_free(mp_spec_t *spec) { mp_free(spec); }

int mp_layer_nparams(const mp_layer_spec_t *layer)
{
    const mp_layer_ops_t *ops = mp_layer_ops(layer->kind);
    return ops != NULL ? ops->nparams : 0;
}

const char *mp_layer_param_name(const mp_layer_spec_t *layer, int param)
{
    if (param < 0 || param >= mp_layer_nparams(layer)) {
        return NULL;
    }
    return mp_layer_ops(layer->kind)->param_names[param];
}

void mp_layer_param_shape(const mp_layer_spec_t *layer, int param, int64_t *rows_p,
                          int64_t *cols_p)
{
    int64_t rows = 0, cols = 0;
    if (param >= 0 && param < mp_layer_nparams(layer)) {
        mp_layer_ops(layer->kind)->param_shape(layer, param, &rows, &cols);
    }
    *rows_p = rows;
    *cols_p = cols;
}

const char *mp_layer_kind_name(mp_layer_kind_t kind)
{
    const mp_layer_ops_t *ops = mp_layer_ops(kind);
    return ops != NULL ? ops->name : "unknown";
}

const char *mp_sched_kind_name(mp_sched_kind_t kind)
{
    const char *const *names;
    int n = mp_sched_kind_names(&names);
    return (int)kind >= 0 && (int)kind < n ? names[kind] : "unknown";
}
