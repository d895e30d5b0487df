/*
 * npy.c - minimal .npy v1.0 writer/reader for float32 C-order arrays.
 * Blocking file I/O; any thread but a libuv loop thread.
 */
#include "model/npy.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"

mp_status_t mp_npy_write(const char *path, const float *data, int ndim, const int64_t *shape,
                         mp_errbuf_t *err)
{
    char dict[256];
    char dims[160] = "";
    size_t used = 0;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        used += (size_t)snprintf(dims + used, sizeof(dims) - used, "%lld%s", (long long)shape[i],
                                 (ndim == 1 || i < ndim - 1) ? "," : "");
        n *= shape[i];
    }
    int len = snprintf(dict, sizeof(dict), "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }",
                       dims);
    /* The header (magic 6 + version 2 + length 2 + dict + padding + '\n') is a multiple of 64. */
    size_t total = 10 + (size_t)len + 1;
    size_t pad = (64 - total % 64) % 64;
    unsigned short hlen = (unsigned short)((size_t)len + pad + 1);
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)len, f) == (size_t)len;
    for (size_t i = 0; ok && i < pad; i++) {
        ok = fputc(' ', f) != EOF;
    }
    ok = ok && fputc('\n', f) != EOF;
    ok = ok && fwrite(data, sizeof(float), (size_t)n, f) == (size_t)n;
    if (fclose(f) != 0) {
        ok = 0;
    }
    if (!ok) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    return MP_OK;
}

/* Skips spaces in a header dict. */
static const char *npy_ws(const char *s)
{
    while (*s == ' ') {
        s++;
    }
    return s;
}

/*
 * Opens a .npy file and parses its header strictly: magic, version 1.0 or
 * 2.0, exactly the keys 'descr' ('<f4'), 'fortran_order' (False) and
 * 'shape' (at most 4 non-negative dims), and a data part of exactly the
 * shape's size.  On success *f_p is positioned at the data.
 */
static mp_status_t npy_open(const char *path, FILE **f_p, int *ndim_p, int64_t shape_p[4],
                            mp_errbuf_t *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    unsigned char pre[12];
    char dict[4096];
    size_t hlen = 0, prelen = 10;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0 ||
        (pre[6] != 1 && pre[6] != 2) || pre[7] != 0) {
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: not a .npy file (version 1.0 or 2.0)",
                             path);
    }
    hlen = (size_t)pre[8] | ((size_t)pre[9] << 8);
    if (pre[6] == 2) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            fclose(f);
            return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: truncated .npy header", path);
        }
        prelen = 12;
        hlen |= ((size_t)pre[10] << 16) | ((size_t)pre[11] << 24);
    }
    if (hlen >= sizeof(dict) || fread(dict, 1, hlen, f) != hlen) {
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: bad .npy header", path);
    }
    dict[hlen] = '\0';
    const char *d = strstr(dict, "'descr':");
    const char *fo = strstr(dict, "'fortran_order':");
    const char *sh = strstr(dict, "'shape':");
    if (d == NULL || fo == NULL || sh == NULL) {
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: the .npy header lacks 'descr', 'fortran_order' or 'shape'",
                             path);
    }
    d = npy_ws(d + strlen("'descr':"));
    if (strncmp(d, "'<f4'", 5) != 0) {
        const char *q = strchr(d + 1, '\'');
        int n = q != NULL && *d == '\'' ? (int)(q - d - 1) : 0;
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: dtype '%.*s', expected '<f4' (little-endian float32)", path, n,
                             d + 1);
    }
    fo = npy_ws(fo + strlen("'fortran_order':"));
    if (strncmp(fo, "False", 5) != 0) {
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: a Fortran-order array; only C order is read", path);
    }
    sh = npy_ws(sh + strlen("'shape':"));
    if (*sh != '(') {
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: bad shape in the .npy header", path);
    }
    sh++;
    int ndim = 0;
    int64_t n = 1;
    for (;;) {
        sh = npy_ws(sh);
        if (*sh == ')') {
            break;
        }
        char *end;
        long long v = strtoll(sh, &end, 10);
        if (end == sh || v < 0 || ndim == 4 || (v > 0 && n > INT64_MAX / 4 / v)) {
            fclose(f);
            return mp_errbuf_set(err, MP_ERR_FORMAT,
                                 "%s: bad shape in the .npy header (at most 4 dims)", path);
        }
        shape_p[ndim++] = v;
        n *= v;
        sh = npy_ws(end);
        if (*sh == ',') {
            sh++;
        } else if (*sh != ')') {
            fclose(f);
            return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: bad shape in the .npy header", path);
        }
    }
    struct stat stt;
    if (fstat(fileno(f), &stt) != 0 ||
        (int64_t)stt.st_size != (int64_t)(prelen + hlen) + n * (int64_t)sizeof(float)) {
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_FORMAT,
                             "%s: %lld bytes of data where its shape needs %lld", path,
                             (long long)(stt.st_size - (off_t)(prelen + hlen)),
                             (long long)(n * (int64_t)sizeof(float)));
    }
    *f_p = f;
    *ndim_p = ndim;
    return MP_OK;
}

static int64_t npy_elems(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        n *= shape[i];
    }
    return n;
}

mp_status_t mp_npy_read(const char *path, float **data_p, int *ndim_p, int64_t shape_p[4],
                        mp_errbuf_t *err)
{
    FILE *f;
    int ndim;
    int64_t shape[4];
    MP_TRY(npy_open(path, &f, &ndim, shape, err));
    int64_t n = npy_elems(ndim, shape);
    float *data = mp_malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (data == NULL) {
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_NOMEM, "%s: out of memory for %lld floats", path,
                             (long long)n);
    }
    if (fread(data, sizeof(float), (size_t)n, f) != (size_t)n) {
        mp_free(data);
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: truncated .npy data", path);
    }
    fclose(f);
    *data_p = data;
    *ndim_p = ndim;
    memcpy(shape_p, shape, (size_t)ndim * sizeof(int64_t));
    return MP_OK;
}

static void shape_str(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < ndim && used < len; i++) {
        used += (size_t)snprintf(buf + used, len - used, "%lld%s", (long long)shape[i],
                                 ndim == 1 ? "," : i + 1 < ndim ? ", " : "");
    }
    if (used < len) {
        snprintf(buf + used, len - used, ")");
    }
}

mp_status_t mp_npy_read_into(const char *path, int ndim, const int64_t *shape, float *dst,
                             mp_errbuf_t *err)
{
    FILE *f;
    int got_ndim;
    int64_t got[4];
    MP_TRY(npy_open(path, &f, &got_ndim, got, err));
    bool same = got_ndim == ndim;
    for (int i = 0; same && i < ndim; i++) {
        same = got[i] == shape[i];
    }
    if (!same) {
        char a[96], b[96];
        shape_str(a, sizeof(a), got_ndim, got);
        shape_str(b, sizeof(b), ndim, shape);
        fclose(f);
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: shape %s, expected %s", path, a, b);
    }
    int64_t n = npy_elems(ndim, shape);
    size_t got_n = fread(dst, sizeof(float), (size_t)n, f);
    fclose(f);
    if (got_n != (size_t)n) {
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: truncated .npy data", path);
    }
    return MP_OK;
}

bool mp_npy_param_is_vector(const mp_layer_spec_t *ls, int param)
{
    int64_t rows, cols;
    mp_layer_param_shape(ls, param, &rows, &cols);
    const char *name = mp_layer_param_name(ls, param);
    if (rows != 1 || name == NULL) {
        return false;
    }
    size_t n = strlen(name);
    /* Biases, and every LayerNorm parameter (a layernorm's, or a block's ln1 and ln2). */
    return (n >= 4 && strcmp(name + n - 4, "bias") == 0) || ls->kind == MP_LAYER_LAYERNORM ||
           strncmp(name, "ln", 2) == 0;
}

static void param_path(char *buf, size_t len, const char *dir, int layer, const char *param)
{
    snprintf(buf, len, "%s/%d.%s.npy", dir, layer, param);
}

mp_status_t mp_npy_load_param(const char *dir, const mp_spec_t *spec, int layer, int param,
                              float *dst, mp_errbuf_t *err)
{
    const mp_layer_spec_t *ls = &spec->model.layers[layer];
    int64_t rows, cols;
    mp_layer_param_shape(ls, param, &rows, &cols);
    char path[4096];
    param_path(path, sizeof(path), dir, layer, mp_layer_param_name(ls, param));
    if (mp_npy_param_is_vector(ls, param)) {
        return mp_npy_read_into(path, 1, &cols, dst, err);
    }
    int64_t shape[2] = {rows, cols};
    return mp_npy_read_into(path, 2, shape, dst, err);
}

mp_status_t mp_npy_save_layer_param(const char *dir, const mp_spec_t *spec, int layer, int param,
                                    const float *data, mp_errbuf_t *err)
{
    const mp_layer_spec_t *ls = &spec->model.layers[layer];
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    }
    int64_t shape[2];
    mp_layer_param_shape(ls, param, &shape[0], &shape[1]);
    char path[4096];
    param_path(path, sizeof(path), dir, layer, mp_layer_param_name(ls, param));
    if (mp_npy_param_is_vector(ls, param)) {
        return mp_npy_write(path, data, 1, &shape[1], err);
    }
    return mp_npy_write(path, data, 2, shape, err);
}

mp_status_t mp_npy_save_param(const char *dir, int layer, const char *param, const float *data,
                              int64_t rows, int64_t cols, mp_errbuf_t *err)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/%d.%s.npy", dir, layer, param);
    int64_t shape[2] = {rows, cols};
    if (rows == 1 && strstr(param, "bias") != NULL) {
        return mp_npy_write(path, data, 1, &shape[1], err);
    }
    return mp_npy_write(path, data, 2, shape, err);
}

mp_status_t mp_npy_save_weights(const char *dir, const mp_spec_t *spec,
                                float *const weights[][MP_SPEC_MAX_PARAMS],
                                mp_errbuf_t *err)
{
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls); p++) {
            mp_status_t st = mp_npy_save_layer_param(dir, spec, l, p, weights[l][p], err);
            if (st != MP_OK) {
                return st;
            }
        }
    }
    return MP_OK;
}
