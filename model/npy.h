/*
 * npy.h - NumPy .npy (format 1.0, little-endian float32, C order) writer
 * and reader, for --save-weights and for tests.  Blocking file I/O: never
 * on a libuv loop thread.
 */
#ifndef MP_MODEL_NPY_H
#define MP_MODEL_NPY_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "model/spec.h"

mp_status_t mp_npy_write(const char *path, const float *data, int ndim, const int64_t *shape,
                         mp_errbuf_t *err);
/* Reads a float32 .npy of at most 4 dims; *data_p is mp_malloc'ed.  The
 * header is checked strictly (dtype '<f4', C order, a data part of exactly
 * the shape's size); every error names the file. */
mp_status_t mp_npy_read(const char *path, float **data_p, int *ndim_p, int64_t shape_p[4],
                        mp_errbuf_t *err);
/* Reads a float32 .npy that must have exactly `shape` (ndim dims) into dst;
 * a wrong shape or dtype is MP_ERR_FORMAT naming the file and both shapes. */
mp_status_t mp_npy_read_into(const char *path, int ndim, const int64_t *shape, float *dst,
                             mp_errbuf_t *err);
/* Whether parameter `param` of a layer is a vector (saved 1-D: biases and
 * LayerNorm parameters) rather than a matrix [rows, cols]. */
bool mp_npy_param_is_vector(const mp_layer_spec_t *ls, int param);
/* Reads <dir>/<layer>.<param>.npy of spec's model into dst (its full shape,
 * as mp_npy_save_layer_param writes it), refusing any other shape. */
mp_status_t mp_npy_load_param(const char *dir, const mp_spec_t *spec, int layer, int param,
                              float *dst, mp_errbuf_t *err);
/* Writes <dir>/<layer>.<param>.npy for parameter `param` of spec's layer:
 * a vector 1-D, a weight [rows, cols] (DESIGN.md "Parameter names"). */
mp_status_t mp_npy_save_layer_param(const char *dir, const mp_spec_t *spec, int layer, int param,
                                    const float *data, mp_errbuf_t *err);
/* Writes <dir>/<layer>.<param>.npy: a weight [rows, cols], a bias (rows == 1)
 * as 1-D.  Knows only the name: mp_npy_save_layer_param also writes a
 * layernorm's weight 1-D. */
mp_status_t mp_npy_save_param(const char *dir, int layer, const char *param, const float *data,
                              int64_t rows, int64_t cols, mp_errbuf_t *err);
/* Writes every parameter of spec's model with mp_npy_save_param (--save-weights):
 * weights[layer][param] is the full tensor, host memory, of the spec's shape. */
mp_status_t mp_npy_save_weights(const char *dir, const mp_spec_t *spec,
                                float *const weights[][MP_SPEC_MAX_PARAMS],
                                mp_errbuf_t *err);

#endif
