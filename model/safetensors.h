/*
 * safetensors.h - the safetensors file format (huggingface/safetensors):
 * an 8-byte little-endian header length N, N bytes of JSON header (name ->
 * {"dtype", "shape", "data_offsets": [begin, end]} plus an optional
 * "__metadata__" object of string -> string), then the raw little-endian
 * bytes, offsets relative to the end of the header.  mpar writes and reads
 * float32 ("F32") tensors of up to 4 dimensions, for checkpoints and
 * `export`.
 *
 * Reading is strict, since a checkpoint file may be cut short by a crash or
 * damaged on shared storage: a short file, a header length beyond the
 * file, JSON that does not parse, a tensor whose offsets overrun the data,
 * overlap another's, leave a hole, or disagree with its shape, a dtype
 * other than F32, a shape with a negative dimension - each is refused with
 * MP_ERR_FORMAT and a message naming the file.  Blocking file I/O: any
 * thread but a libuv loop thread.
 */
#ifndef MP_MODEL_SAFETENSORS_H
#define MP_MODEL_SAFETENSORS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"

#define MP_ST_MAX_DIMS 4
#define MP_ST_NAME_MAX 160
/* A header larger than this is refused before it is read (the reference
 * implementation's limit is 100 MB). */
#define MP_ST_MAX_HEADER (100u << 20)

typedef struct {
    char name[MP_ST_NAME_MAX];
    int ndim;
    int64_t shape[MP_ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets into the data, after the header */
} mp_st_tensor_t;

/* One tensor to write: data holds prod(shape) floats. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[MP_ST_MAX_DIMS];
    const float *data;
} mp_st_entry_t;

/* Writes path atomically: path.tmp (data, then fsync), renamed over path,
 * then the folder fsynced, so that path is either absent or complete and
 * durable.  meta: nmeta key/value pairs (keys[i], values[i]) for
 * "__metadata__", or nmeta 0.  Failures (ENOSPC, EACCES...) leave no
 * path.tmp behind and name the file. */
mp_status_t mp_st_write(const char *path, const mp_st_entry_t *entries, int n,
                        const char *const *keys, const char *const *values, int nmeta,
                        mp_errbuf_t *err);

typedef struct mp_st_file mp_st_file_t;

/* Opens and validates path (header and sizes; the data is read on demand). */
mp_status_t mp_st_open(const char *path, mp_st_file_t **file_p, mp_errbuf_t *err);
int mp_st_count(const mp_st_file_t *f);
const mp_st_tensor_t *mp_st_get(const mp_st_file_t *f, int i);
/* NULL when the file has no tensor of that name. */
const mp_st_tensor_t *mp_st_find(const mp_st_file_t *f, const char *name);
/* A "__metadata__" value, or NULL. */
const char *mp_st_meta(const mp_st_file_t *f, const char *key);
const char *mp_st_path(const mp_st_file_t *f);
/* Reads n floats of tensor t starting at element elem (row-major) into dst. */
mp_status_t mp_st_read(mp_st_file_t *f, const mp_st_tensor_t *t, int64_t elem, int64_t n,
                       float *dst, mp_errbuf_t *err);
void mp_st_close(mp_st_file_t *f);

/* Elements of a tensor: the product of its shape. */
int64_t mp_st_numel(const mp_st_tensor_t *t);

/* fsyncs a folder (after a rename in it); errno-style failure as status. */
mp_status_t mp_st_fsync_dir(const char *dir, mp_errbuf_t *err);

#endif
