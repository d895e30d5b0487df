/*
 * ckpt.c - checkpoints on disk (ckpt.h): a shard's host copy of its blocks
 * and its safetensors file, the manifest built from the shard files, the
 * atomic commit of `latest`, pruning, and the strict reader that loads any
 * grid's blocks from any other grid's files (a reshard) and exports full
 * tensors.  Blocking file I/O on the caller's thread (never a loop thread).
 */
#include "model/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "model/npy.h"
#include "model/safetensors.h"

#define CKPT_FORMAT "mpar-checkpoint"
#define CKPT_VERSION 1
#define CKPT_MAX_FILES 4096

void mp_ckpt_step_dir(const char *dir, int64_t step, char *out, size_t cap)
{
    if ((size_t)snprintf(out, cap, "%s/step-%08lld", dir, (long long)step) >= cap && cap > 0) {
        out[0] = '\0'; /* too long a path: nothing is opened or written there */
    }
}

void mp_ckpt_shard_name(int stage, int tp_rank, char *out, size_t cap)
{
    snprintf(out, cap, "shard-s%02d-t%02d.safetensors", stage, tp_rank);
}

const char *mp_ckpt_state_name(const mp_spec_t *spec, int which)
{
    if (spec->train.optimizer == MP_OPTIM_ADAMW) {
        return which == 0 ? "exp_avg" : which == 1 ? "exp_avg_sq" : NULL;
    }
    return which == 0 && spec->train.momentum != 0.0 ? "momentum_buffer" : NULL;
}

void mp_ckpt_fault(const char *point)
{
    static atomic_int passes[3];
    static const char *const points[3] = {"after_first_file", "before_manifest",
                                          "before_latest"};
    const char *env = getenv("MPAR_FAULT");
    if (env == NULL || env[0] == '\0') {
        return;
    }
    size_t plen = strlen(point);
    if (strncmp(env, point, plen) != 0 || (env[plen] != '\0' && env[plen] != ':')) {
        return;
    }
    int n = env[plen] == ':' ? atoi(env + plen + 1) : 1;
    for (int i = 0; i < 3; i++) {
        if (strcmp(points[i], point) == 0 && atomic_fetch_add(&passes[i], 1) + 1 == n) {
            mp_warn("MPAR_FAULT=%s: killing this process (pid %d)", env, (int)getpid());
            raise(SIGKILL);
        }
    }
}

/* mkdir that accepts an existing folder. */
static mp_status_t make_dir(const char *path, mp_errbuf_t *err)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    }
    return MP_OK;
}

/* Writes text to path durably and atomically (tmp, fsync, rename, fsync dir). */
static mp_status_t write_atomic(const char *dir, const char *path, const char *text,
                                mp_errbuf_t *err)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    }
    size_t len = strlen(text), off = 0;
    int e = 0;
    while (off < len && e == 0) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            e = w < 0 ? errno : EIO;
        } else {
            off += (size_t)w;
        }
    }
    if (e == 0 && fsync(fd) != 0) {
        e = errno;
    }
    if (close(fd) != 0 && e == 0) {
        e = errno;
    }
    if (e == 0 && rename(tmp, path) != 0) {
        e = errno;
    }
    if (e != 0) {
        unlink(tmp);
        return mp_errbuf_set(err, MP_ERR_IO, "cannot write %s: %s", path, strerror(e));
    }
    return mp_st_fsync_dir(dir, err);
}

/* ---- the shard's host copy ------------------------------------------------ */

/* One block in the file.  A slice in `parts` pieces (a transformer
 * block's qkv: its heads' columns of Q, K and V) is one block per piece,
 * named "<tensor>@<k>", each a plain rectangle of the full tensor. */
typedef struct {
    char name[MP_ST_NAME_MAX];
    char where[96];          /* "row0,col0,full_rows,full_cols" */
    int model;               /* which of the shard's models (chunks) holds it */
    int layer, param, which; /* which: -1 parameter, 0/1 optimizer state */
    int part, parts;         /* piece k of the local block's parts */
    int64_t rows, cols;      /* of this piece */
    int64_t off;             /* floats into buf */
} snap_entry_t;

struct mp_ckpt_snap {
    int stage, tp_rank;
    int64_t step;
    int n;
    snap_entry_t *e;
    float *buf;
    int64_t nfloats;
    float *scratch; /* a whole local block, for blocks in parts */
    int64_t scratch_n;
};

mp_status_t mp_ckpt_snap_create(mp_model_t *const *models, int nmodels, const mp_spec_t *spec,
                                int stage, int tp_rank, mp_ckpt_snap_t **snap_p)
{
    mp_ckpt_snap_t *s = mp_calloc(1, sizeof(*s));
    if (s == NULL) {
        return MP_ERR_NOMEM;
    }
    s->stage = stage;
    s->tp_rank = tp_rank;
    int cap = 0;
    for (int mi = 0; mi < nmodels; mi++) {
        mp_model_t *model = models[mi];
        int first = mp_model_first_layer(model), count = mp_model_layer_count(model);
        for (int l = first; l < first + count; l++) {
            for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
                mp_tp_slice_t sl;
                if (mp_model_param_slice(model, l, p, &sl) == MP_OK) {
                    cap += 3 * (sl.parts > 1 ? sl.parts : 1);
                }
            }
        }
    }
    s->e = mp_calloc((size_t)cap + 1, sizeof(*s->e));
    if (s->e == NULL) {
        mp_free(s);
        return MP_ERR_NOMEM;
    }
    int64_t off = 0;
    for (int mi = 0; mi < nmodels; mi++) {
        mp_model_t *model = models[mi];
        int first = mp_model_first_layer(model), count = mp_model_layer_count(model);
        for (int l = first; l < first + count; l++) {
            const mp_layer_spec_t *ls = &spec->model.layers[l];
            for (int p = 0; p < mp_layer_nparams(ls); p++) {
                mp_tp_slice_t sl;
                mp_status_t st = mp_model_param_slice(model, l, p, &sl);
                if (st != MP_OK) {
                    mp_ckpt_snap_free(s);
                    return st;
                }
                if (sl.replicated && tp_rank != 0) {
                    continue; /* TP rank 0 writes what every rank holds whole */
                }
                int parts = sl.parts > 1 ? sl.parts : 1;
                if (parts > 1 && sl.rows * sl.cols > s->scratch_n) {
                    s->scratch_n = sl.rows * sl.cols;
                }
                for (int which = -1; which < 2; which++) {
                    const char *sn = which < 0 ? "" : mp_ckpt_state_name(spec, which);
                    if (sn == NULL || (which >= 0 && !mp_model_has_state(model, which))) {
                        continue;
                    }
                    for (int k = 0; k < parts; k++) {
                        snap_entry_t *e = &s->e[s->n++];
                        int64_t w = sl.cols / parts;
                        char part[16] = "";
                        if (parts > 1) {
                            snprintf(part, sizeof(part), "@%d", k);
                        }
                        snprintf(e->name, sizeof(e->name), "%d.%s%s%s%s", l,
                                 mp_layer_param_name(ls, p), which < 0 ? "" : ".", sn, part);
                        snprintf(e->where, sizeof(e->where), "%lld,%lld,%lld,%lld",
                                 (long long)sl.row0, (long long)(sl.col0 + k * sl.part_stride),
                                 (long long)sl.full_rows, (long long)sl.full_cols);
                        e->model = mi;
                        e->layer = l;
                        e->param = p;
                        e->which = which;
                        e->part = k;
                        e->parts = parts;
                        e->rows = sl.rows;
                        e->cols = w;
                        e->off = off;
                        off += sl.rows * w;
                    }
                }
            }
        }
    }
    s->nfloats = off;
    s->buf = mp_malloc((size_t)(off > 0 ? off : 1) * sizeof(float));
    s->scratch = s->scratch_n > 0 ? mp_malloc((size_t)s->scratch_n * sizeof(float)) : NULL;
    if (s->buf == NULL || (s->scratch_n > 0 && s->scratch == NULL)) {
        mp_ckpt_snap_free(s);
        return MP_ERR_NOMEM;
    }
    *snap_p = s;
    return MP_OK;
}

mp_status_t mp_ckpt_snap_fill(mp_ckpt_snap_t *s, mp_model_t *const *models, int nmodels,
                              int64_t step)
{
    for (int i = 0; i < s->n; i++) {
        const snap_entry_t *e = &s->e[i];
        if (e->model >= nmodels) {
            return MP_ERR_INVAL;
        }
        mp_model_t *model = models[e->model];
        float *dst = e->parts > 1 ? s->scratch : s->buf + e->off;
        if (e->which < 0) {
            MP_TRY(mp_model_param_download(model, e->layer, e->param, dst));
        } else {
            MP_TRY(mp_model_state_download(model, e->which, e->layer, e->param, dst));
        }
        /* A block in parts: each piece's columns into its own entry. */
        for (int k = 0; e->parts > 1 && k < e->parts; k++) {
            const snap_entry_t *x = &s->e[i + k];
            int64_t local = e->cols * e->parts;
            for (int64_t r = 0; r < e->rows; r++) {
                memcpy(s->buf + x->off + r * x->cols, s->scratch + r * local + k * x->cols,
                       (size_t)x->cols * sizeof(float));
            }
        }
        if (e->parts > 1) {
            i += e->parts - 1;
        }
    }
    s->step = step;
    return MP_OK;
}

int64_t mp_ckpt_snap_step(const mp_ckpt_snap_t *s)
{
    return s->step;
}

int64_t mp_ckpt_snap_bytes(const mp_ckpt_snap_t *s)
{
    return s->nfloats * (int64_t)sizeof(float);
}

mp_status_t mp_ckpt_snap_write(const mp_ckpt_snap_t *s, const char *dir, char *path_p, size_t cap,
                               mp_errbuf_t *err)
{
    char folder[PATH_MAX], name[64], path[PATH_MAX + 80];
    mp_ckpt_step_dir(dir, s->step, folder, sizeof(folder));
    mp_ckpt_shard_name(s->stage, s->tp_rank, name, sizeof(name));
    snprintf(path, sizeof(path), "%s/%s", folder, name);
    MP_TRY(make_dir(dir, err));
    MP_TRY(make_dir(folder, err));
    int nmeta = s->n + 3;
    mp_st_entry_t *ent = mp_calloc((size_t)s->n + 1, sizeof(*ent));
    const char **keys = mp_calloc((size_t)nmeta, sizeof(*keys));
    const char **vals = mp_calloc((size_t)nmeta, sizeof(*vals));
    if (ent == NULL || keys == NULL || vals == NULL) {
        mp_free(ent);
        mp_free(keys);
        mp_free(vals);
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", path);
    }
    char step[32], stage[16], tp[16];
    snprintf(step, sizeof(step), "%lld", (long long)s->step);
    snprintf(stage, sizeof(stage), "%d", s->stage);
    snprintf(tp, sizeof(tp), "%d", s->tp_rank);
    keys[0] = "mpar.step";
    vals[0] = step;
    keys[1] = "mpar.stage";
    vals[1] = stage;
    keys[2] = "mpar.tp_rank";
    vals[2] = tp;
    for (int i = 0; i < s->n; i++) {
        ent[i].name = s->e[i].name;
        ent[i].ndim = 2;
        ent[i].shape[0] = s->e[i].rows;
        ent[i].shape[1] = s->e[i].cols;
        ent[i].data = s->buf + s->e[i].off;
        keys[3 + i] = s->e[i].name;
        vals[3 + i] = s->e[i].where;
    }
    mp_status_t st = mp_st_write(path, ent, s->n, keys, vals, nmeta, err);
    mp_free(ent);
    mp_free(keys);
    mp_free(vals);
    if (st == MP_OK && path_p != NULL) {
        snprintf(path_p, cap, "%s", path);
    }
    return st;
}

void mp_ckpt_snap_free(mp_ckpt_snap_t *s)
{
    if (s != NULL) {
        mp_free(s->e);
        mp_free(s->buf);
        mp_free(s->scratch);
        mp_free(s);
    }
}

/* ---- blocks and their coverage -------------------------------------------- */

typedef struct {
    int file;
    const mp_st_tensor_t *t; /* in files[file] */
    char tensor[MP_ST_NAME_MAX]; /* its name in the file ("<name>@<k>" for a piece) */
    int64_t row0, col0, rows, cols;
} ck_block_t;

typedef struct {
    char name[MP_ST_NAME_MAX];
    int64_t full_rows, full_cols;
    int nblocks, cap;
    ck_block_t *b;
} ck_tensor_t;

/* The blocks of t must lie inside it, not overlap, and cover it. */
static mp_status_t check_cover(const ck_tensor_t *t, const char *where, mp_errbuf_t *err)
{
    int64_t area = 0;
    for (int i = 0; i < t->nblocks; i++) {
        const ck_block_t *a = &t->b[i];
        if (a->row0 < 0 || a->col0 < 0 || a->rows < 0 || a->cols < 0 ||
            a->row0 + a->rows > t->full_rows || a->col0 + a->cols > t->full_cols) {
            return mp_errbuf_set(err, MP_ERR_FORMAT,
                                 "%s: tensor %s: block [%lld+%lld, %lld+%lld] lies outside its "
                                 "shape [%lld, %lld]",
                                 where, t->name, (long long)a->row0, (long long)a->rows,
                                 (long long)a->col0, (long long)a->cols, (long long)t->full_rows,
                                 (long long)t->full_cols);
        }
        for (int k = 0; k < i; k++) {
            const ck_block_t *o = &t->b[k];
            if (a->row0 < o->row0 + o->rows && o->row0 < a->row0 + a->rows &&
                a->col0 < o->col0 + o->cols && o->col0 < a->col0 + a->cols) {
                return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: tensor %s: two blocks overlap",
                                     where, t->name);
            }
        }
        area += a->rows * a->cols;
    }
    if (area != t->full_rows * t->full_cols) {
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: tensor %s: the blocks cover %lld of its %lld elements", where,
                             t->name, (long long)area, (long long)(t->full_rows * t->full_cols));
    }
    return MP_OK;
}

static ck_tensor_t *tensor_get(ck_tensor_t **ts, int *n, int *cap, const char *name)
{
    for (int i = 0; i < *n; i++) {
        if (strcmp((*ts)[i].name, name) == 0) {
            return &(*ts)[i];
        }
    }
    if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 32;
        ck_tensor_t *g = mp_realloc(*ts, (size_t)nc * sizeof(*g));
        if (g == NULL) {
            return NULL;
        }
        *ts = g;
        *cap = nc;
    }
    ck_tensor_t *t = &(*ts)[(*n)++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->full_rows = t->full_cols = -1;
    return t;
}

static ck_block_t *block_add(ck_tensor_t *t)
{
    if (t->nblocks == t->cap) {
        int nc = t->cap ? 2 * t->cap : 4;
        ck_block_t *g = mp_realloc(t->b, (size_t)nc * sizeof(*g));
        if (g == NULL) {
            return NULL;
        }
        t->b = g;
        t->cap = nc;
    }
    return &t->b[t->nblocks++];
}

static void tensors_free(ck_tensor_t *ts, int n)
{
    for (int i = 0; i < n; i++) {
        mp_free(ts[i].b);
    }
    mp_free(ts);
}

/* Every tensor the spec's model (and its optimizer state) needs is there,
 * with the spec's full shape. */
static mp_status_t check_spec_tensors(const ck_tensor_t *ts, int n, const mp_spec_t *spec,
                                      const char *where, mp_errbuf_t *err)
{
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(ls, p, &rows, &cols);
            for (int which = -1; which < 2; which++) {
                const char *sn = which < 0 ? "" : mp_ckpt_state_name(spec, which);
                if (sn == NULL) {
                    continue;
                }
                char name[MP_ST_NAME_MAX];
                snprintf(name, sizeof(name), "%d.%s%s%s", l, mp_layer_param_name(ls, p),
                         which < 0 ? "" : ".", sn);
                const ck_tensor_t *t = NULL;
                for (int i = 0; i < n && t == NULL; i++) {
                    t = strcmp(ts[i].name, name) == 0 ? &ts[i] : NULL;
                }
                if (t == NULL) {
                    return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: no tensor %s", where, name);
                }
                if (t->full_rows != rows || t->full_cols != cols) {
                    return mp_errbuf_set(err, MP_ERR_FORMAT,
                                         "%s: tensor %s is [%lld, %lld], the spec's model needs "
                                         "[%lld, %lld]",
                                         where, name, (long long)t->full_rows,
                                         (long long)t->full_cols, (long long)rows,
                                         (long long)cols);
                }
            }
        }
    }
    return MP_OK;
}

/* ---- the manifest ----------------------------------------------------------- */

mp_status_t mp_ckpt_manifest_write(const char *dir, int64_t step, const char *spec_json, int pp,
                                   int tp, int dp, const double *losses, int64_t nlosses,
                                   mp_errbuf_t *err)
{
    char folder[PATH_MAX], mpath[PATH_MAX + 32];
    mp_ckpt_step_dir(dir, step, folder, sizeof(folder));
    snprintf(mpath, sizeof(mpath), "%s/%s", folder, MP_CKPT_MANIFEST);
    mp_spec_t *spec = NULL;
    mp_status_t st = mp_spec_parse(spec_json, strlen(spec_json), &spec, err);
    if (st != MP_OK) {
        return st;
    }
    json_error_t jerr;
    json_t *spec_obj = json_loads(spec_json, 0, &jerr);
    json_t *files = json_array();
    json_t *tens = json_object();
    ck_tensor_t *ts = NULL;
    int nt = 0, capt = 0;
    for (int s = 0; s < pp && st == MP_OK; s++) {
        for (int t = 0; t < tp && st == MP_OK; t++) {
            char name[64], path[PATH_MAX + 80];
            mp_ckpt_shard_name(s, t, name, sizeof(name));
            snprintf(path, sizeof(path), "%s/%s", folder, name);
            mp_st_file_t *f;
            st = mp_st_open(path, &f, err);
            if (st != MP_OK) {
                break;
            }
            json_array_append_new(files, json_string(name));
            for (int i = 0; i < mp_st_count(f) && st == MP_OK; i++) {
                const mp_st_tensor_t *x = mp_st_get(f, i);
                const char *w = mp_st_meta(f, x->name);
                long long r0, c0, fr, fc;
                char tname[MP_ST_NAME_MAX];
                snprintf(tname, sizeof(tname), "%.*s", (int)strcspn(x->name, "@"), x->name);
                ck_tensor_t *ct = tensor_get(&ts, &nt, &capt, tname);
                ck_block_t *b = ct != NULL ? block_add(ct) : NULL;
                if (b == NULL) {
                    st = mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", path);
                } else if (w == NULL || sscanf(w, "%lld,%lld,%lld,%lld", &r0, &c0, &fr, &fc) != 4 ||
                           x->ndim != 2 ||
                           (ct->full_rows >= 0 && (ct->full_rows != fr || ct->full_cols != fc))) {
                    st = mp_errbuf_set(err, MP_ERR_FORMAT,
                                       "%s: tensor %s: no block placement, or one that "
                                       "disagrees with the other files",
                                       path, x->name);
                } else {
                    ct->full_rows = fr;
                    ct->full_cols = fc;
                    *b = (ck_block_t){.file = (int)json_array_size(files) - 1,
                                      .row0 = r0,
                                      .col0 = c0,
                                      .rows = x->shape[0],
                                      .cols = x->shape[1]};
                    snprintf(b->tensor, sizeof(b->tensor), "%s", x->name);
                }
            }
            mp_st_close(f);
        }
    }
    for (int i = 0; i < nt && st == MP_OK; i++) {
        st = check_cover(&ts[i], folder, err);
    }
    if (st == MP_OK) {
        st = check_spec_tensors(ts, nt, spec, folder, err);
    }
    for (int i = 0; i < nt && st == MP_OK; i++) {
        json_t *blocks = json_array();
        for (int k = 0; k < ts[i].nblocks; k++) {
            const ck_block_t *b = &ts[i].b[k];
            json_array_append_new(
                blocks, json_pack("{s:O, s:s, s:I, s:I, s:I, s:I}", "file",
                                  json_array_get(files, (size_t)b->file), "tensor", b->tensor,
                                  "row0", (json_int_t)b->row0, "col0", (json_int_t)b->col0,
                                  "rows", (json_int_t)b->rows, "cols", (json_int_t)b->cols));
        }
        json_object_set_new(tens, ts[i].name,
                            json_pack("{s:[I, I], s:o}", "shape", (json_int_t)ts[i].full_rows,
                                      (json_int_t)ts[i].full_cols, "blocks", blocks));
    }
    if (st == MP_OK) {
        json_t *ls = json_array();
        for (int64_t i = 0; i < nlosses; i++) {
            json_array_append_new(ls, isfinite(losses[i]) ? json_real(losses[i]) : json_null());
        }
        json_t *m = json_pack("{s:s, s:i, s:I, s:O, s:{s:i, s:i, s:i}, s:O, s:o, s:O}", "format",
                              CKPT_FORMAT, "version", CKPT_VERSION, "step", (json_int_t)step,
                              "spec", spec_obj ? spec_obj : json_null(), "grid", "pp", pp, "tp",
                              tp, "dp", dp, "files", files, "losses", ls, "tensors", tens);
        char *text = m != NULL ? json_dumps(m, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) : NULL;
        json_decref(m);
        st = text == NULL ? mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", mpath)
                          : write_atomic(folder, mpath, text, err);
        free(text);
    }
    tensors_free(ts, nt);
    json_decref(spec_obj);
    json_decref(files);
    json_decref(tens);
    mp_spec_free(spec);
    return st;
}

mp_status_t mp_ckpt_commit(const char *dir, int64_t step, mp_errbuf_t *err)
{
    char path[PATH_MAX + 16], text[64];
    snprintf(path, sizeof(path), "%s/%s", dir, MP_CKPT_LATEST);
    snprintf(text, sizeof(text), "step-%08lld\n", (long long)step);
    return write_atomic(dir, path, text, err);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int cmp_desc(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static bool parse_step_name(const char *name, int64_t *step_p)
{
    if (strncmp(name, "step-", 5) != 0 || strlen(name) < 6) {
        return false;
    }
    char *end;
    long long v = strtoll(name + 5, &end, 10);
    if (*end != '\0' || v < 0) {
        return false;
    }
    *step_p = v;
    return true;
}

mp_status_t mp_ckpt_prune(const char *dir, int64_t committed, int keep, mp_errbuf_t *err)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
    }
    int64_t *steps = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        int64_t s;
        if (!parse_step_name(de->d_name, &s) || s > committed) {
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *g = mp_realloc(steps, cap * sizeof(*g));
            if (g == NULL) {
                break;
            }
            steps = g;
        }
        steps[n++] = s;
    }
    closedir(d);
    qsort(steps, n, sizeof(*steps), cmp_desc);
    mp_status_t st = MP_OK;
    for (size_t i = (size_t)(keep > 0 ? keep : 1); i < n; i++) {
        char folder[PATH_MAX];
        mp_ckpt_step_dir(dir, steps[i], folder, sizeof(folder));
        if (nftw(folder, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
            st = mp_errbuf_set(err, MP_ERR_IO, "cannot remove %s: %s", folder, strerror(errno));
        }
    }
    mp_free(steps);
    return st;
}

/* ---- reading ------------------------------------------------------------------ */

struct mp_ckpt {
    char dir[PATH_MAX];
    char folder[PATH_MAX];
    int64_t step;
    mp_spec_t *spec;
    int pp, tp, dp;
    int nfiles;
    mp_st_file_t **files;
    int nt, capt;
    ck_tensor_t *ts;
    double *losses;
    int64_t nlosses;
};

static bool jint(json_t *o, const char *key, int64_t lo, int64_t *v_p)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo) {
        return false;
    }
    *v_p = json_integer_value(v);
    return true;
}

static mp_status_t read_latest(mp_ckpt_t *ck, mp_errbuf_t *err)
{
    char path[PATH_MAX + 16], text[80] = "";
    snprintf(path, sizeof(path), "%s/%s", ck->dir, MP_CKPT_LATEST);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        int e = errno;
        return mp_errbuf_set(err, e == ENOENT ? MP_ERR_NOTFOUND : MP_ERR_IO,
                             "%s: no committed checkpoint (cannot open %s: %s)", ck->dir, path,
                             strerror(e));
    }
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' ')) {
        text[--n] = '\0';
    }
    if (!parse_step_name(text, &ck->step)) {
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: expected step-NNNNNNNN, got '%.40s'", path,
                             text);
    }
    mp_ckpt_step_dir(ck->dir, ck->step, ck->folder, sizeof(ck->folder));
    return MP_OK;
}

static mp_status_t load_manifest(mp_ckpt_t *ck, mp_errbuf_t *err)
{
    char mpath[PATH_MAX + 32];
    snprintf(mpath, sizeof(mpath), "%s/%s", ck->folder, MP_CKPT_MANIFEST);
    json_error_t jerr;
    json_t *m = json_load_file(mpath, JSON_REJECT_DUPLICATES, &jerr);
    if (m == NULL) {
        return mp_errbuf_set(err, access(mpath, F_OK) != 0 ? MP_ERR_NOTFOUND : MP_ERR_FORMAT,
                             "%s: %s", mpath, jerr.text);
    }
    mp_status_t st = MP_OK;
    int64_t version = 0, step = -1, pp = 0, tp = 0, dp = 0;
    json_t *grid = json_object_get(m, "grid");
    json_t *spec = json_object_get(m, "spec");
    json_t *files = json_object_get(m, "files");
    json_t *tens = json_object_get(m, "tensors");
    json_t *losses = json_object_get(m, "losses");
    const char *format = json_string_value(json_object_get(m, "format"));
    if (format == NULL || strcmp(format, CKPT_FORMAT) != 0 || !jint(m, "version", 1, &version) ||
        version != CKPT_VERSION) {
        st = mp_errbuf_set(err, MP_ERR_FORMAT, "%s: not an mpar checkpoint manifest (version %d)",
                           mpath, CKPT_VERSION);
    } else if (!jint(m, "step", 0, &step) || step != ck->step) {
        st = mp_errbuf_set(err, MP_ERR_FORMAT, "%s: step is not %lld, which latest names", mpath,
                           (long long)ck->step);
    } else if (!jint(grid, "pp", 1, &pp) || !jint(grid, "tp", 1, &tp) ||
               !jint(grid, "dp", 1, &dp)) {
        st = mp_errbuf_set(err, MP_ERR_FORMAT, "%s: grid: expected positive pp, tp and dp", mpath);
    } else if (!json_is_object(spec) || !json_is_array(files) || !json_is_object(tens) ||
               json_array_size(files) > CKPT_MAX_FILES) {
        st = mp_errbuf_set(err, MP_ERR_FORMAT, "%s: expected spec, files and tensors", mpath);
    }
    if (st == MP_OK) {
        char *text = json_dumps(spec, JSON_COMPACT);
        mp_errbuf_t serr;
        st = text != NULL ? mp_spec_parse(text, strlen(text), &ck->spec, &serr) : MP_ERR_NOMEM;
        free(text);
        if (st != MP_OK) {
            st = mp_errbuf_set(err, MP_ERR_FORMAT, "%s: its spec: %s", mpath,
                               st == MP_ERR_NOMEM ? "out of memory" : serr.msg);
        }
    }
    ck->pp = (int)pp;
    ck->tp = (int)tp;
    ck->dp = (int)dp;
    /* Every file it lists, opened and validated: a missing one is refused. */
    size_t nf = st == MP_OK ? json_array_size(files) : 0;
    ck->files = mp_calloc(nf + 1, sizeof(*ck->files));
    if (ck->files == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", mpath);
    }
    for (size_t i = 0; i < nf && st == MP_OK; i++) {
        const char *name = json_string_value(json_array_get(files, i));
        if (name == NULL || name[0] == '\0' || strchr(name, '/') != NULL || name[0] == '.') {
            st = mp_errbuf_set(err, MP_ERR_FORMAT, "%s: files[%zu]: expected a file name", mpath,
                               i);
            break;
        }
        char path[PATH_MAX + 200];
        snprintf(path, sizeof(path), "%s/%s", ck->folder, name);
        st = mp_st_open(path, &ck->files[i], err);
        if (st == MP_OK) {
            ck->nfiles++;
        }
    }
    const char *tname;
    json_t *tv;
    json_object_foreach(st == MP_OK ? tens : NULL, tname, tv)
    {
        int64_t fr = -1, fc = -1;
        json_t *shape = json_object_get(tv, "shape");
        json_t *blocks = json_object_get(tv, "blocks");
        if (json_array_size(shape) == 2 && json_is_integer(json_array_get(shape, 0)) &&
            json_is_integer(json_array_get(shape, 1))) {
            fr = json_integer_value(json_array_get(shape, 0));
            fc = json_integer_value(json_array_get(shape, 1));
        }
        ck_tensor_t *t = strlen(tname) < MP_ST_NAME_MAX ? tensor_get(&ck->ts, &ck->nt, &ck->capt, tname) : NULL;
        if (t == NULL || t->nblocks > 0 || fr < 0 || fc < 0 || !json_is_array(blocks)) {
            st = mp_errbuf_set(err, MP_ERR_FORMAT,
                               "%s: tensor %.100s: expected a shape [rows, cols] and blocks", mpath,
                               tname);
            break;
        }
        t->full_rows = fr;
        t->full_cols = fc;
        size_t k;
        json_t *bv;
        json_array_foreach(blocks, k, bv)
        {
            const char *file = json_string_value(json_object_get(bv, "file"));
            ck_block_t *b = block_add(t);
            int fi = -1;
            for (int i = 0; file != NULL && i < ck->nfiles && fi < 0; i++) {
                const char *p = mp_st_path(ck->files[i]);
                const char *base = strrchr(p, '/');
                fi = strcmp(base ? base + 1 : p, file) == 0 ? i : -1;
            }
            if (b == NULL || fi < 0 || !jint(bv, "row0", 0, &b->row0) ||
                !jint(bv, "col0", 0, &b->col0) || !jint(bv, "rows", 0, &b->rows) ||
                !jint(bv, "cols", 0, &b->cols)) {
                st = mp_errbuf_set(err, MP_ERR_FORMAT,
                                   "%s: tensor %s: block %zu: expected a listed file, row0, col0, "
                                   "rows and cols",
                                   mpath, tname, k);
                break;
            }
            b->file = fi;
            const char *in_file = json_string_value(json_object_get(bv, "tensor"));
            snprintf(b->tensor, sizeof(b->tensor), "%s", in_file != NULL ? in_file : tname);
            b->t = mp_st_find(ck->files[fi], b->tensor);
            if (b->t == NULL || b->t->ndim != 2 || b->t->shape[0] != b->rows ||
                b->t->shape[1] != b->cols) {
                st = mp_errbuf_set(
                    err, MP_ERR_FORMAT,
                    "%s: tensor %s: %s, the manifest says [%lld, %lld]", mp_st_path(ck->files[fi]),
                    tname, b->t == NULL ? "missing" : "its shape does not match",
                    (long long)b->rows, (long long)b->cols);
                break;
            }
        }
        if (st == MP_OK) {
            st = check_cover(t, mpath, err);
        }
        if (st != MP_OK) {
            break;
        }
    }
    if (st == MP_OK) {
        st = check_spec_tensors(ck->ts, ck->nt, ck->spec, mpath, err);
    }
    size_t nl = json_array_size(losses);
    if (st == MP_OK && nl > 0) {
        ck->losses = mp_calloc(nl, sizeof(double));
        for (size_t i = 0; ck->losses != NULL && i < nl; i++) {
            json_t *v = json_array_get(losses, i);
            ck->losses[i] = json_is_number(v) ? json_number_value(v) : NAN;
        }
        ck->nlosses = ck->losses != NULL ? (int64_t)nl : 0;
    }
    json_decref(m);
    return st;
}

mp_status_t mp_ckpt_open(const char *dir, mp_ckpt_t **ck_p, mp_errbuf_t *err)
{
    mp_ckpt_t *ck = mp_calloc(1, sizeof(*ck));
    if (ck == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", dir);
    }
    snprintf(ck->dir, sizeof(ck->dir), "%s", dir);
    mp_status_t st = read_latest(ck, err);
    if (st == MP_OK) {
        st = load_manifest(ck, err);
    }
    if (st != MP_OK) {
        mp_ckpt_close(ck);
        return st;
    }
    *ck_p = ck;
    return MP_OK;
}

mp_status_t mp_ckpt_open_step(const char *dir, int64_t step, mp_ckpt_t **ck_p, mp_errbuf_t *err)
{
    mp_ckpt_t *ck = mp_calloc(1, sizeof(*ck));
    if (ck == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory", dir);
    }
    snprintf(ck->dir, sizeof(ck->dir), "%s", dir);
    ck->step = step;
    mp_ckpt_step_dir(dir, step, ck->folder, sizeof(ck->folder));
    mp_status_t st = load_manifest(ck, err);
    if (st != MP_OK) {
        mp_ckpt_close(ck);
        return st;
    }
    *ck_p = ck;
    return MP_OK;
}

int64_t mp_ckpt_step(const mp_ckpt_t *ck)
{
    return ck->step;
}

const char *mp_ckpt_folder(const mp_ckpt_t *ck)
{
    return ck->folder;
}

const mp_spec_t *mp_ckpt_spec(const mp_ckpt_t *ck)
{
    return ck->spec;
}

const double *mp_ckpt_losses(const mp_ckpt_t *ck, int64_t *n_p)
{
    *n_p = ck->nlosses;
    return ck->losses;
}

void mp_ckpt_grid(const mp_ckpt_t *ck, int *pp_p, int *tp_p, int *dp_p)
{
    *pp_p = ck->pp;
    *tp_p = ck->tp;
    *dp_p = ck->dp;
}

mp_status_t mp_ckpt_check_spec(const mp_ckpt_t *ck, const mp_spec_t *spec, mp_errbuf_t *err)
{
    const mp_spec_t *c = ck->spec;
    const char *where = ck->folder;
    if (spec->model.input != c->model.input) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.input: %lld, the checkpoint in %s has %lld",
                             (long long)spec->model.input, where, (long long)c->model.input);
    }
    if (spec->model.nlayers != c->model.nlayers) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.layers: %d layers, the checkpoint in %s has %d",
                             spec->model.nlayers, where, c->model.nlayers);
    }
    for (int i = 0; i < spec->model.nlayers; i++) {
        const mp_layer_spec_t *a = &spec->model.layers[i], *b = &c->model.layers[i];
        if (a->kind != b->kind) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "model.layers[%d].type: \"%s\", the checkpoint in %s has \"%s\"",
                                 i, mp_layer_kind_name(a->kind), where,
                                 mp_layer_kind_name(b->kind));
        }
        struct {
            const char *field;
            int64_t x, y;
        } f[] = {{"out", a->out, b->out},       {"hidden", a->hidden, b->hidden},
                 {"ffn", a->ffn, b->ffn},       {"vocab", a->vocab, b->vocab},
                 {"dim", a->dim, b->dim},       {"max_seq", a->max_seq, b->max_seq},
                 {"heads", a->heads, b->heads}, {"in", a->in_dim, b->in_dim}};
        for (size_t k = 0; k < sizeof(f) / sizeof(f[0]); k++) {
            if (f[k].x != f[k].y) {
                return mp_errbuf_set(err, MP_ERR_SPEC,
                                     "model.layers[%d].%s: %lld, the checkpoint in %s has %lld", i,
                                     f[k].field, (long long)f[k].x, where, (long long)f[k].y);
            }
        }
    }
    return MP_OK;
}

static ck_tensor_t *find_tensor(mp_ckpt_t *ck, const char *name)
{
    for (int i = 0; i < ck->nt; i++) {
        if (strcmp(ck->ts[i].name, name) == 0) {
            return &ck->ts[i];
        }
    }
    return NULL;
}

bool mp_ckpt_has(const mp_ckpt_t *ck, const char *name)
{
    return find_tensor((mp_ckpt_t *)ck, name) != NULL;
}

mp_status_t mp_ckpt_read_block(mp_ckpt_t *ck, const char *name, int64_t row0, int64_t rows,
                               int64_t col0, int64_t cols, float *dst, mp_errbuf_t *err)
{
    ck_tensor_t *t = find_tensor(ck, name);
    if (t == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOTFOUND, "%s: the checkpoint has no tensor %s",
                             ck->folder, name);
    }
    if (row0 < 0 || col0 < 0 || rows < 0 || cols < 0 || row0 + rows > t->full_rows ||
        col0 + cols > t->full_cols) {
        return mp_errbuf_set(err, MP_ERR_INVAL,
                             "%s: tensor %s is [%lld, %lld]; block [%lld+%lld, %lld+%lld] is "
                             "outside it",
                             ck->folder, name, (long long)t->full_rows, (long long)t->full_cols,
                             (long long)row0, (long long)rows, (long long)col0, (long long)cols);
    }
    int64_t covered = 0;
    for (int i = 0; i < t->nblocks; i++) {
        const ck_block_t *b = &t->b[i];
        int64_t r0 = row0 > b->row0 ? row0 : b->row0;
        int64_t r1 = row0 + rows < b->row0 + b->rows ? row0 + rows : b->row0 + b->rows;
        int64_t c0 = col0 > b->col0 ? col0 : b->col0;
        int64_t c1 = col0 + cols < b->col0 + b->cols ? col0 + cols : b->col0 + b->cols;
        if (r0 >= r1 || c0 >= c1) {
            continue;
        }
        mp_st_file_t *f = ck->files[b->file];
        if (c0 == b->col0 && c1 - c0 == b->cols && c0 == col0 && c1 - c0 == cols) {
            /* Whole rows on both sides: one read. */
            MP_TRY(mp_st_read(f, b->t, (r0 - b->row0) * b->cols, (r1 - r0) * cols,
                              dst + (r0 - row0) * cols, err));
        } else {
            for (int64_t r = r0; r < r1; r++) {
                MP_TRY(mp_st_read(f, b->t, (r - b->row0) * b->cols + (c0 - b->col0), c1 - c0,
                                  dst + (r - row0) * cols + (c0 - col0), err));
            }
        }
        covered += (r1 - r0) * (c1 - c0);
    }
    if (covered != rows * cols) {
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: tensor %s: the files cover %lld of %lld elements",
                             ck->folder, name, (long long)covered, (long long)(rows * cols));
    }
    return MP_OK;
}

/* A model's block of tensor name, as the model lays it out (a block in
 * parts: each piece read as its own rectangle, then put side by side). */
static mp_status_t read_slice(mp_ckpt_t *ck, const char *name, const mp_tp_slice_t *sl,
                              float *buf, mp_errbuf_t *err)
{
    int parts = sl->parts > 1 ? sl->parts : 1;
    if (parts == 1) {
        return mp_ckpt_read_block(ck, name, sl->row0, sl->rows, sl->col0, sl->cols, buf, err);
    }
    int64_t w = sl->cols / parts;
    float *piece = mp_malloc((size_t)(sl->rows * w + 1) * sizeof(float));
    if (piece == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "checkpoint: out of memory");
    }
    mp_status_t st = MP_OK;
    for (int k = 0; k < parts && st == MP_OK; k++) {
        st = mp_ckpt_read_block(ck, name, sl->row0, sl->rows, sl->col0 + k * sl->part_stride, w,
                                piece, err);
        for (int64_t r = 0; st == MP_OK && r < sl->rows; r++) {
            memcpy(buf + r * sl->cols + k * w, piece + r * w, (size_t)w * sizeof(float));
        }
    }
    mp_free(piece);
    return st;
}

mp_status_t mp_ckpt_load_model(mp_ckpt_t *ck, mp_model_t *model, const mp_spec_t *spec,
                               mp_errbuf_t *err)
{
    int first = mp_model_first_layer(model), count = mp_model_layer_count(model);
    mp_status_t st = MP_OK;
    for (int l = first; l < first + count && st == MP_OK; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls) && st == MP_OK; p++) {
            mp_tp_slice_t sl;
            st = mp_model_param_slice(model, l, p, &sl);
            float *buf = st == MP_OK ? mp_malloc((size_t)(sl.rows * sl.cols + 1) * sizeof(float))
                                     : NULL;
            if (st == MP_OK && buf == NULL) {
                st = mp_errbuf_set(err, MP_ERR_NOMEM, "checkpoint: out of memory");
            }
            for (int which = -1; which < 2 && st == MP_OK; which++) {
                const char *sn = which < 0 ? "" : mp_ckpt_state_name(spec, which);
                if (sn == NULL || (which >= 0 && !mp_model_has_state(model, which))) {
                    continue;
                }
                char name[MP_ST_NAME_MAX];
                snprintf(name, sizeof(name), "%d.%s%s%s", l, mp_layer_param_name(ls, p),
                         which < 0 ? "" : ".", sn);
                if (which >= 0 && !mp_ckpt_has(ck, name)) {
                    /* Another optimizer's checkpoint: its state starts at zero. */
                    mp_warn("%s: no %s; the optimizer state starts at zero", ck->folder, name);
                    continue;
                }
                st = read_slice(ck, name, &sl, buf, err);
                if (st == MP_OK) {
                    st = which < 0 ? mp_model_param_upload(model, l, p, buf)
                                   : mp_model_state_upload(model, which, l, p, buf);
                    if (st != MP_OK) {
                        mp_errbuf_set(err, st, "%s: cannot load %s into the model: %s",
                                      ck->folder, name, mp_strerror(st));
                    }
                }
            }
            mp_free(buf);
        }
    }
    return st;
}

static mp_status_t mkdir_p(const char *path, mp_errbuf_t *err)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            MP_TRY(make_dir(buf, err));
            *p = '/';
        }
    }
    return make_dir(buf, err);
}

mp_status_t mp_ckpt_export(mp_ckpt_t *ck, const char *out_dir, const char *format,
                           mp_errbuf_t *err)
{
    bool npy = strcmp(format, "npy") == 0;
    if (!npy && strcmp(format, "safetensors") != 0) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "--format: expected npy or safetensors, got '%s'",
                             format);
    }
    MP_TRY(mkdir_p(out_dir, err));
    const mp_spec_t *spec = ck->spec;
    int cap = 0;
    for (int l = 0; l < spec->model.nlayers; l++) {
        cap += mp_layer_nparams(&spec->model.layers[l]);
    }
    mp_st_entry_t *ent = mp_calloc((size_t)cap + 1, sizeof(*ent));
    char (*names)[MP_ST_NAME_MAX] = mp_calloc((size_t)cap + 1, sizeof(*names));
    mp_status_t st = ent != NULL && names != NULL
                         ? MP_OK
                         : mp_errbuf_set(err, MP_ERR_NOMEM, "export: out of memory");
    int n = 0;
    for (int l = 0; l < spec->model.nlayers && st == MP_OK; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls) && st == MP_OK; p++) {
            int64_t rows, cols;
            mp_layer_param_shape(ls, p, &rows, &cols);
            const char *pname = mp_layer_param_name(ls, p);
            float *buf = mp_malloc((size_t)(rows * cols + 1) * sizeof(float));
            if (buf == NULL) {
                st = mp_errbuf_set(err, MP_ERR_NOMEM, "export: out of memory");
                break;
            }
            snprintf(names[n], MP_ST_NAME_MAX, "%d.%s", l, pname);
            st = mp_ckpt_read_block(ck, names[n], 0, rows, 0, cols, buf, err);
            if (st == MP_OK && npy) {
                st = mp_npy_save_layer_param(out_dir, spec, l, p, buf, err);
                mp_free(buf);
                continue;
            }
            ent[n].name = names[n];
            ent[n].data = buf;
            bool bias = mp_npy_param_is_vector(ls, p); /* 1-D, as --save-weights writes it */
            ent[n].ndim = bias ? 1 : 2;
            ent[n].shape[0] = bias ? cols : rows;
            ent[n].shape[1] = cols;
            n++;
            if (st != MP_OK) {
                break;
            }
        }
    }
    if (st == MP_OK && !npy) {
        char path[PATH_MAX + 32];
        snprintf(path, sizeof(path), "%s/model.safetensors", out_dir);
        st = mp_st_write(path, ent, n, NULL, NULL, 0, err);
    }
    for (int i = 0; ent != NULL && i < n; i++) {
        mp_free((void *)ent[i].data);
    }
    mp_free(ent);
    mp_free(names);
    return st;
}

void mp_ckpt_close(mp_ckpt_t *ck)
{
    if (ck == NULL) {
        return;
    }
    for (int i = 0; i < ck->nfiles; i++) {
        mp_st_close(ck->files[i]);
    }
    mp_free(ck->files);
    tensors_free(ck->ts, ck->nt);
    mp_free(ck->losses);
    mp_spec_free(ck->spec);
    mp_free(ck);
}
