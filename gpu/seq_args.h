/*
 * seq_args.h - argument checks of the sequence-layer ops of backend.h,
 * shared by the CPU and the CUDA backend so that both refuse the same
 * calls.  Each returns NULL when the arguments are valid, else what is
 * wrong; the backend logs that with the op's name and returns
 * MP_ERR_INVAL.  Pointers are only compared with NULL, never read (on CUDA
 * they are device addresses).  An empty call (no rows) needs no buffers.
 */
#ifndef MP_GPU_SEQ_ARGS_H
#define MP_GPU_SEQ_ARGS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* In a backend op: return refuse(op, why) when `check` says why the call is
 * wrong (refuse logs and returns MP_ERR_INVAL). */
#define MP_SEQ_REFUSE_IF(refuse, op, check)                                                        \
    do {                                                                                           \
        const char *why_ = (check);                                                                \
        if (why_ != NULL) {                                                                        \
            return refuse(op, why_);                                                               \
        }                                                                                          \
    } while (0)

/* embed_fwd (rows = y, table = tok) and embed_bwd (rows = dy, table = dtok). */
static inline const char *mp_seq_check_embed(int64_t R, int64_t C, int64_t v0, int64_t Vl,
                                             const void *rows, const void *ids, const void *table)
{
    if (R < 0 || C < 0) {
        return "negative dimension";
    }
    if (v0 < 0 || Vl < 0) {
        return "negative vocab shard";
    }
    if (R > 0 && C > 0 && (rows == NULL || ids == NULL || (Vl > 0 && table == NULL))) {
        return "NULL buffer";
    }
    return NULL;
}

static inline const char *mp_seq_check_pos(int64_t R, int64_t T, int64_t C, const void *a,
                                           const void *b)
{
    if (R < 0 || C < 0) {
        return "negative dimension";
    }
    if (T < 1 || R % T != 0) {
        return "need T >= 1 dividing the row count";
    }
    if (R > 0 && C > 0 && (a == NULL || b == NULL)) {
        return "NULL buffer";
    }
    return NULL;
}

static inline const char *mp_seq_check_layernorm_fwd(const void *y, const void *mean,
                                                     const void *rstd, const void *x, const void *w,
                                                     const void *b, int64_t R, int64_t C, float eps)
{
    if (R < 0 || C < 1) {
        return "need R >= 0 and C >= 1";
    }
    if (!(eps >= 0.0f) || isinf(eps)) {
        return "eps must be finite and >= 0";
    }
    if (R > 0 &&
        (y == NULL || mean == NULL || rstd == NULL || x == NULL || w == NULL || b == NULL)) {
        return "NULL buffer";
    }
    if (R > 0 && y == x) {
        return "y must not alias x";
    }
    return NULL;
}

/* w is needed only for dx. */
static inline const char *mp_seq_check_layernorm_bwd(const void *dx, const void *dw, const void *db,
                                                     const void *dy, const void *x,
                                                     const void *mean, const void *rstd,
                                                     const void *w, int64_t R, int64_t C)
{
    if (R < 0 || C < 1) {
        return "need R >= 0 and C >= 1";
    }
    if (R > 0 && (dx != NULL || dw != NULL || db != NULL) &&
        (dy == NULL || x == NULL || mean == NULL || rstd == NULL || (dx != NULL && w == NULL))) {
        return "NULL buffer";
    }
    return NULL;
}

static inline const char *mp_seq_check_attn(int64_t B, int64_t T, int64_t H, int64_t D,
                                            const void *a, const void *b, const void *c,
                                            const void *d)
{
    if (B < 0 || T < 0 || H < 1 || D < 1) {
        return "need B, T >= 0 and H, D >= 1";
    }
    if (B > 0 && T > 0 && (a == NULL || b == NULL || c == NULL || d == NULL)) {
        return "NULL buffer";
    }
    return NULL;
}

/* The vocab-parallel cross-entropy ops; unused buffer slots pass any non-NULL pointer. */
static inline const char *mp_seq_check_vp(int64_t R, int64_t Vl, int64_t v0, const void *a,
                                          const void *b, const void *c, const void *d,
                                          const void *e)
{
    if (R < 0 || Vl < 1 || v0 < 0) {
        return "need R >= 0, Vl >= 1 and v0 >= 0";
    }
    if (R > 0 && (a == NULL || b == NULL || c == NULL || d == NULL || e == NULL)) {
        return "NULL buffer";
    }
    return NULL;
}

#endif
