/*
 * npy.h - NumPy .npy (format 1.0, little-endian float32, C order) writer
 * and reader, for --save-weights and for tests.  Blocking file I/O: never
 * on a libuv loop thread.
 */
#ifndef MP_MODEL_NPY_H
#define MP_MODEL_NPY_H

#include <stdint.h>

#include "common/status.h"
#include "model/spec.h"

mp_status_t mp_npy_write(const char *path, const float *data, int ndim, const int64_t *shape,
                         mp_errbuf_t *err);
/* Reads a float32 .npy of at most 4 dims; *data_p is mp_malloc'ed. */
mp_status_t mp_npy_read(const char *path, float **data_p, int *ndim_p, int64_t shape_p[4],
                        mp_errbuf_t *err);
/* Writes <dir>/<layer>.<param>.npy: a weight [rows, cols], a bias (rows == 1) as 1-D. */
mp_status_t mp_npy_save_param(const char *dir, int layer, const char *param, const float *data,
                              int64_t rows, int64_t cols, mp_errbuf_t *err);
/* Writes every parameter of spec's model with mp_npy_save_param (--save-weights):
 * weights[layer][param] is the full tensor, host memory, of the spec's shape. */
mp_status_t mp_npy_save_weights(const char *dir, const mp_spec_t *spec, float *const weights[][MP_SPEC_MAX_PARAMS],
                                mp_errbuf_t *err);

#endif
