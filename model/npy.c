/*
 * npy.c - minimal .npy v1.0 writer/reader for float32 C-order arrays.
 * Blocking file I/O; any thread but a libuv loop thread.
 */
#include "model/npy.h"

#include <errno.h>
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

mp_status_t mp_npy_read(const char *path, float **data_p, int *ndim_p, int64_t shape_p[4],
                        mp_errbuf_t *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return mp_errbuf_set(err, MP_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    unsigned char pre[10];
    char dict[1024];
    mp_status_t st = MP_ERR_FORMAT;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] != 1) {
        mp_errbuf_set(err, st, "%s: not a .npy v1 file", path);
        goto out_close;
    }
    size_t hlen = (size_t)pre[8] | ((size_t)pre[9] << 8);
    if (hlen >= sizeof(dict) || fread(dict, 1, hlen, f) != hlen) {
        mp_errbuf_set(err, st, "%s: bad .npy header", path);
        goto out_close;
    }
    dict[hlen] = '\0';
    if (strstr(dict, "'<f4'") == NULL || strstr(dict, "'fortran_order': False") == NULL) {
        mp_errbuf_set(err, st, "%s: only little-endian float32 C-order arrays are read", path);
        goto out_close;
    }
    const char *sh = strstr(dict, "'shape': (");
    if (sh == NULL) {
        mp_errbuf_set(err, st, "%s: .npy header has no shape", path);
        goto out_close;
    }
    sh += strlen("'shape': (");
    int ndim = 0;
    int64_t n = 1;
    while (*sh != ')' && ndim < 4) {
        char *end;
        long long v = strtoll(sh, &end, 10);
        if (end == sh) {
            break;
        }
        shape_p[ndim++] = v;
        n *= v;
        sh = end;
        while (*sh == ',' || *sh == ' ') {
            sh++;
        }
    }
    float *data = mp_malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (data == NULL) {
        st = MP_ERR_NOMEM;
        goto out_close;
    }
    if (fread(data, sizeof(float), (size_t)n, f) != (size_t)n) {
        mp_free(data);
        mp_errbuf_set(err, st, "%s: truncated .npy data", path);
        goto out_close;
    }
    *data_p = data;
    *ndim_p = ndim;
    st = MP_OK;
out_close:
    fclose(f);
    return st;
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

mp_status_t mp_npy_save_weights(const char *dir, const mp_spec_t *spec, float *const weights[][MP_SPEC_MAX_PARAMS],
                                mp_errbuf_t *err)
{
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(ls, p, &rows, &cols);
            mp_status_t st = mp_npy_save_param(dir, l, mp_layer_param_name(ls, p), weights[l][p],
                                               rows, cols, err);
            if (st != MP_OK) {
                return st;
            }
        }
    }
    return MP_OK;
}
