/*
 * backend_cuda.c - the CUDA backend of gpu/backend.h: cuBLAS for GEMMs and
 * linear layers, the kernels of cuda_kernels.cu for everything else.
 *
 * Owns, per backend object: one CUDA stream, one cuBLAS handle bound to it,
 * a small device scratch for the cross-entropy sums and one for the
 * attention backward's dS.  Every op is enqueued on the stream in call
 * order; upload and download return with the copy complete.  This file is
 * the module edge for CUDA and cuBLAS codes: each call is checked with file
 * and line, logged, and turned into MP_ERR_DEVICE.  A backend is used by
 * one thread at a time (any thread);
 * every entry point first makes the backend's device current on the
 * calling thread.
 *
 * Row-major GEMMs map onto column-major cuBLAS by computing C^T = op(B)^T
 * op(A)^T: swap the operands and the M/N sizes, keep the transpose flags.
 * Strict fp32 (CUBLAS_DEFAULT_MATH) unless the backend was created with
 * tf32, then CUBLAS_TF32_TENSOR_OP_MATH.
 *
 * Built as its own shared library, libmpar-cuda.so, that
 * backend_cuda_loader.c opens on first use: cuBLAS is some 150 MiB of
 * resident memory once loaded, which a daemon with CPU shards must not pay.
 * Its entry points are mp_cuda_plugin_device_count and mp_cuda_plugin_create;
 * mp_log, mp_malloc and the rest resolve against the executable that loads
 * it (linked with -rdynamic).
 *
 * Legend: B = batch rows, I = in features, O = out features, C = classes,
 * n = element count.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "gpu/backend.h"
#include "gpu/cuda_internal.h"
#include "gpu/optim_scalars.h"
#include "gpu/seq_args.h"

static mp_status_t cuda_check(cudaError_t err, const char *what, const char *file, int line)
{
    if (err == cudaSuccess) {
        return MP_OK;
    }
    mp_err("cuda: %s failed at %s:%d: %s (%s)", what, file, line, cudaGetErrorName(err),
           cudaGetErrorString(err));
    return MP_ERR_DEVICE;
}

static mp_status_t cublas_check(cublasStatus_t st, const char *what, const char *file, int line)
{
    if (st == CUBLAS_STATUS_SUCCESS) {
        return MP_OK;
    }
    mp_err("cublas: %s failed at %s:%d: %s (%s)", what, file, line, cublasGetStatusName(st),
           cublasGetStatusString(st));
    return MP_ERR_DEVICE;
}

/* cudaCheck-style: evaluate, log with file and line on failure, return MP_ERR_DEVICE. */
#define CUDA_TRY(call)                                                                             \
    do {                                                                                           \
        mp_status_t st_ = cuda_check((call), #call, __FILE__, __LINE__);                           \
        if (st_ != MP_OK) {                                                                        \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)
#define CUBLAS_TRY(call)                                                                           \
    do {                                                                                           \
        mp_status_t st_ = cublas_check((call), #call, __FILE__, __LINE__);                         \
        if (st_ != MP_OK) {                                                                        \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)

static inline mp_cuda_backend_t *cuda_of(mp_backend_t *be)
{
    return (mp_cuda_backend_t *)be;
}

/* Makes the backend's device current on the calling thread (the backend may
 * have been created on another thread). */
static mp_status_t cuda_enter(mp_cuda_backend_t *cb)
{
    CUDA_TRY(cudaSetDevice(cb->base.device));
    return MP_OK;
}

#define ENTER(cb)                                                                                  \
    do {                                                                                           \
        mp_status_t st_ = cuda_enter(cb);                                                          \
        if (st_ != MP_OK) {                                                                        \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- memory ---------------------------------------------------------------- */

static void *cuda_alloc(mp_backend_t *be, size_t bytes)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    void *ptr = NULL;
    if (cuda_enter(cb) != MP_OK) {
        return NULL;
    }
    if (bytes == 0) {
        bytes = 1; /* a distinct non-NULL pointer, as malloc(0) may give */
    }
    cudaError_t err = cudaMalloc(&ptr, bytes);
    if (err != cudaSuccess) {
        mp_err("cuda: cudaMalloc of %zu bytes on device %d failed: %s", bytes, be->device,
               cudaGetErrorString(err));
        return NULL;
    }
    return ptr;
}

static void cuda_free(mp_backend_t *be, void *ptr)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (ptr == NULL || cuda_enter(cb) != MP_OK) {
        return;
    }
    /* cudaFree waits for the device, so no queued op still uses ptr. */
    (void)cuda_check(cudaFree(ptr), "cudaFree", __FILE__, __LINE__);
}

static mp_status_t cuda_upload(mp_backend_t *be, void *dst, const void *src_host, size_t bytes)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (bytes == 0) {
        return MP_OK;
    }
    ENTER(cb);
    CUDA_TRY(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, cb->stream));
    /* The caller may reuse src_host as soon as we return. */
    CUDA_TRY(cudaStreamSynchronize(cb->stream));
    return MP_OK;
}

static mp_status_t cuda_download(mp_backend_t *be, void *dst_host, const void *src, size_t bytes)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (bytes == 0) {
        return MP_OK;
    }
    ENTER(cb);
    CUDA_TRY(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, cb->stream));
    CUDA_TRY(cudaStreamSynchronize(cb->stream));
    return MP_OK;
}

static mp_status_t cuda_copy(mp_backend_t *be, void *dst, const void *src, size_t bytes)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (bytes == 0) {
        return MP_OK;
    }
    ENTER(cb);
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cb->stream));
    return MP_OK;
}

static mp_status_t cuda_zero(mp_backend_t *be, void *dst, size_t bytes)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (bytes == 0) {
        return MP_OK;
    }
    ENTER(cb);
    CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, cb->stream));
    return MP_OK;
}

static mp_status_t cuda_sync(mp_backend_t *be)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    ENTER(cb);
    CUDA_TRY(cudaStreamSynchronize(cb->stream));
    return MP_OK;
}

/* ---- GEMM -------------------------------------------------------------------- */

static bool fits_int(int64_t v)
{
    return v >= 0 && v <= INT_MAX;
}

/* Row-major C[M,N] = alpha op(A) op(B) + beta C on the backend's stream
 * (the device is already current). */
static mp_status_t gemm_rowmajor(mp_cuda_backend_t *cb, mp_op_t ta, mp_op_t tb, int64_t M,
                                 int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                                 const float *Bm, int64_t ldb, float beta, float *Cm, int64_t ldc)
{
    if (!fits_int(M) || !fits_int(N) || !fits_int(K) || !fits_int(lda) || !fits_int(ldb) ||
        !fits_int(ldc)) {
        mp_err("cuda: gemm sizes M=%lld N=%lld K=%lld exceed the 32-bit cuBLAS interface",
               (long long)M, (long long)N, (long long)K);
        return MP_ERR_INVAL;
    }
    if (M == 0 || N == 0) {
        return MP_OK;
    }
    /* cuBLAS wants every leading dimension >= 1, even for an empty K. */
    lda = lda > 0 ? lda : 1;
    ldb = ldb > 0 ? ldb : 1;
    /* Column-major view of the row-major C is C^T[N,M] = op(B)^T[N,K] op(A)^T[K,M];
     * a stored row-major X read column-major is X^T, so the flags carry over. */
    cublasOperation_t opa = ta == MP_OP_T ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opb = tb == MP_OP_T ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_TRY(cublasSgemm(cb->cublas, opb, opa, (int)N, (int)M, (int)K, &alpha, Bm, (int)ldb, A,
                           (int)lda, &beta, Cm, (int)ldc));
    return MP_OK;
}

static mp_status_t cuda_gemm(mp_backend_t *be, mp_op_t ta, mp_op_t tb, int64_t M, int64_t N,
                             int64_t K, float alpha, const float *A, int64_t lda, const float *Bm,
                             int64_t ldb, float beta, float *Cm, int64_t ldc)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (M < 0 || N < 0 || K < 0) {
        mp_err("cuda: gemm with negative size M=%lld N=%lld K=%lld", (long long)M, (long long)N,
               (long long)K);
        return MP_ERR_INVAL;
    }
    int64_t a_cols = ta == MP_OP_N ? K : M;
    int64_t b_cols = tb == MP_OP_N ? N : K;
    if (M > 0 && N > 0 &&
        (lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) || ldc < N)) {
        mp_err("cuda: gemm leading dimension smaller than a row (lda=%lld ldb=%lld ldc=%lld)",
               (long long)lda, (long long)ldb, (long long)ldc);
        return MP_ERR_INVAL;
    }
    ENTER(cb);
    return gemm_rowmajor(cb, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cm, ldc);
}

/* ---- linear ------------------------------------------------------------------ */

static mp_status_t cuda_linear_fwd(mp_backend_t *be, float *Z, const float *X, const float *W,
                                   const float *b, int64_t B, int64_t I, int64_t O)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    ENTER(cb);
    /* Z[B,O] = X[B,I] W[I,O]; beta = 0, so Z's old contents are never read. */
    mp_status_t st = gemm_rowmajor(cb, MP_OP_N, MP_OP_N, B, O, I, 1.0f, X, I, W, O, 0.0f, Z, O);
    if (st != MP_OK) {
        return st;
    }
    if (b != NULL) {
        CUDA_TRY(mp_cuda_bias_add_launch(cb->stream, Z, b, B, O));
    }
    return MP_OK;
}

static mp_status_t cuda_linear_bwd(mp_backend_t *be, float *dX, float *dW, float *db,
                                   const float *dZ, const float *X, const float *W, int64_t B,
                                   int64_t I, int64_t O)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    mp_status_t st;
    ENTER(cb);
    if (dX != NULL) {
        /* dX[B,I] += dZ[B,O] W[I,O]^T */
        st = gemm_rowmajor(cb, MP_OP_N, MP_OP_T, B, I, O, 1.0f, dZ, O, W, O, 1.0f, dX, I);
        if (st != MP_OK) {
            return st;
        }
    }
    if (dW != NULL) {
        /* dW[I,O] += X[B,I]^T dZ[B,O] */
        st = gemm_rowmajor(cb, MP_OP_T, MP_OP_N, I, O, B, 1.0f, X, I, dZ, O, 1.0f, dW, O);
        if (st != MP_OK) {
            return st;
        }
    }
    if (db != NULL) {
        CUDA_TRY(mp_cuda_colsum_add_launch(cb->stream, db, dZ, B, O));
    }
    return MP_OK;
}

/* ---- element-wise --------------------------------------------------------------- */

static mp_status_t cuda_gelu_fwd(mp_backend_t *be, float *y, const float *x, int64_t n)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    ENTER(cb);
    CUDA_TRY(mp_cuda_gelu_fwd_launch(cb->stream, y, x, n));
    return MP_OK;
}

static mp_status_t cuda_gelu_bwd(mp_backend_t *be, float *dx, const float *x, const float *dy,
                                 int64_t n)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    ENTER(cb);
    CUDA_TRY(mp_cuda_gelu_bwd_launch(cb->stream, dx, x, dy, n));
    return MP_OK;
}

static mp_status_t cuda_relu_fwd(mp_backend_t *be, float *y, const float *x, int64_t n)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    ENTER(cb);
    CUDA_TRY(mp_cuda_relu_fwd_launch(cb->stream, y, x, n));
    return MP_OK;
}

static mp_status_t cuda_relu_bwd(mp_backend_t *be, float *dx, const float *x, const float *dy,
                                 int64_t n)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    ENTER(cb);
    CUDA_TRY(mp_cuda_relu_bwd_launch(cb->stream, dx, x, dy, n));
    return MP_OK;
}

static mp_status_t cuda_axpy(mp_backend_t *be, float *y, float alpha, const float *x, int64_t n)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    ENTER(cb);
    CUDA_TRY(mp_cuda_axpy_launch(cb->stream, y, alpha, x, n));
    return MP_OK;
}

static mp_status_t cuda_bias_add(mp_backend_t *be, float *y, const float *b, int64_t rows,
                                 int64_t cols)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    ENTER(cb);
    CUDA_TRY(mp_cuda_bias_add_launch(cb->stream, y, b, rows, cols));
    return MP_OK;
}

/* ---- softmax cross-entropy ----------------------------------------------------------- */

/* Grows a device scratch *buf of *have bytes to at least `need`; cudaFree
 * waits for the kernels that still use the old one. */
static mp_status_t scratch_reserve(void **buf, size_t *have, size_t need)
{
    if (*buf != NULL && need <= *have) {
        return MP_OK;
    }
    if (*buf != NULL) {
        CUDA_TRY(cudaFree(*buf));
        *buf = NULL;
        *have = 0;
    }
    CUDA_TRY(cudaMalloc(buf, need));
    *have = need;
    return MP_OK;
}

static mp_status_t xent_scratch_reserve(mp_cuda_backend_t *cb, int64_t B)
{
    return scratch_reserve(&cb->xent_scratch, &cb->xent_bytes,
                           mp_cuda_xent_scratch_bytes(B < 256 ? 256 : B));
}

static mp_status_t cuda_xent_fwd(mp_backend_t *be, float *probs, const float *logits,
                                 const int32_t *labels, int64_t B, int64_t C, double *loss_sum_host,
                                 int64_t *correct_host)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (B < 0 || C < 0) {
        mp_err("cuda: xent_fwd with negative size B=%lld C=%lld", (long long)B, (long long)C);
        return MP_ERR_INVAL;
    }
    ENTER(cb);
    mp_status_t st = xent_scratch_reserve(cb, B);
    if (st != MP_OK) {
        return st;
    }
    CUDA_TRY(mp_cuda_xent_fwd_launch(cb->stream, probs, logits, labels, B, C, cb->xent_scratch));
    if (loss_sum_host == NULL && correct_host == NULL) {
        return MP_OK;
    }
    mp_cuda_xent_out_t out;
    CUDA_TRY(
        cudaMemcpyAsync(&out, cb->xent_scratch, sizeof(out), cudaMemcpyDeviceToHost, cb->stream));
    CUDA_TRY(cudaStreamSynchronize(cb->stream));
    if (out.bad != 0) {
        mp_err("cuda: xent_fwd: %lld of %lld labels outside [0, %lld)", out.bad, (long long)B,
               (long long)C);
        return MP_ERR_INVAL;
    }
    if (loss_sum_host != NULL) {
        *loss_sum_host = out.loss_sum;
    }
    if (correct_host != NULL) {
        *correct_host = (int64_t)out.correct;
    }
    return MP_OK;
}

static mp_status_t cuda_xent_bwd(mp_backend_t *be, float *dlogits, const float *probs,
                                 const int32_t *labels, int64_t B, int64_t C, float scale)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    ENTER(cb);
    CUDA_TRY(mp_cuda_xent_bwd_launch(cb->stream, dlogits, probs, labels, B, C, scale));
    return MP_OK;
}

/* ---- sequence layers ---------------------------------------------------------------- */

/* Arguments are checked here, on the host, by the CPU backend's rules
 * (gpu/seq_args.h): a bad call is refused before anything is enqueued. */
static mp_status_t cuda_refuse(const char *op, const char *why)
{
    mp_err("cuda: %s: %s", op, why);
    return MP_ERR_INVAL;
}

#define SEQ_CHECK(op, check) MP_SEQ_REFUSE_IF(cuda_refuse, op, check)

static mp_status_t cuda_embed_fwd(mp_backend_t *be, float *y, const float *ids, const float *tok,
                                  int64_t R, int64_t C, int64_t v0, int64_t Vl)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("embed_fwd", mp_seq_check_embed(R, C, v0, Vl, y, ids, tok));
    ENTER(cb);
    CUDA_TRY(mp_cuda_embed_fwd_launch(cb->stream, y, ids, tok, R, C, v0, Vl));
    return MP_OK;
}

static mp_status_t cuda_embed_bwd(mp_backend_t *be, float *dtok, const float *dy, const float *ids,
                                  int64_t R, int64_t C, int64_t v0, int64_t Vl)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("embed_bwd", mp_seq_check_embed(R, C, v0, Vl, dy, ids, dtok));
    ENTER(cb);
    CUDA_TRY(mp_cuda_embed_bwd_launch(cb->stream, dtok, dy, ids, R, C, v0, Vl));
    return MP_OK;
}

static mp_status_t cuda_pos_add(mp_backend_t *be, float *y, const float *pos, int64_t R, int64_t T,
                                int64_t C)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("pos_add", mp_seq_check_pos(R, T, C, y, pos));
    ENTER(cb);
    CUDA_TRY(mp_cuda_pos_add_launch(cb->stream, y, pos, R, T, C));
    return MP_OK;
}

static mp_status_t cuda_pos_bwd(mp_backend_t *be, float *dpos, const float *dy, int64_t R,
                                int64_t T, int64_t C)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("pos_bwd", mp_seq_check_pos(R, T, C, dpos, dy));
    ENTER(cb);
    CUDA_TRY(mp_cuda_pos_bwd_launch(cb->stream, dpos, dy, R, T, C));
    return MP_OK;
}

static mp_status_t cuda_layernorm_fwd(mp_backend_t *be, float *y, float *mean, float *rstd,
                                      const float *x, const float *w, const float *b, int64_t R,
                                      int64_t C, float eps)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("layernorm_fwd", mp_seq_check_layernorm_fwd(y, mean, rstd, x, w, b, R, C, eps));
    ENTER(cb);
    CUDA_TRY(mp_cuda_layernorm_fwd_launch(cb->stream, y, mean, rstd, x, w, b, R, C, eps));
    return MP_OK;
}

static mp_status_t cuda_layernorm_bwd(mp_backend_t *be, float *dx, float *dw, float *db,
                                      const float *dy, const float *x, const float *mean,
                                      const float *rstd, const float *w, int64_t R, int64_t C)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("layernorm_bwd", mp_seq_check_layernorm_bwd(dx, dw, db, dy, x, mean, rstd, w, R, C));
    ENTER(cb);
    CUDA_TRY(mp_cuda_layernorm_bwd_launch(cb->stream, dx, dw, db, dy, x, mean, rstd, w, R, C));
    return MP_OK;
}

static mp_status_t cuda_attn_fwd(mp_backend_t *be, float *out, float *att, const float *qkv,
                                 int64_t B, int64_t T, int64_t H, int64_t D)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("attn_fwd", mp_seq_check_attn(B, T, H, D, out, att, qkv, qkv));
    ENTER(cb);
    CUDA_TRY(mp_cuda_attn_fwd_launch(cb->stream, out, att, qkv, B, T, H, D));
    return MP_OK;
}

static mp_status_t cuda_attn_bwd(mp_backend_t *be, float *dqkv, const float *dout, const float *qkv,
                                 const float *att, int64_t B, int64_t T, int64_t H, int64_t D)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("attn_bwd", mp_seq_check_attn(B, T, H, D, dqkv, dout, qkv, att));
    if (B == 0 || T == 0) {
        return MP_OK;
    }
    ENTER(cb);
    mp_status_t st = scratch_reserve(&cb->attn_scratch, &cb->attn_bytes,
                                     mp_cuda_attn_scratch_bytes(B, T, H));
    if (st != MP_OK) {
        return st;
    }
    CUDA_TRY(
        mp_cuda_attn_bwd_launch(cb->stream, dqkv, dout, qkv, att, B, T, H, D, cb->attn_scratch));
    return MP_OK;
}

static mp_status_t cuda_xent_vp_max(mp_backend_t *be, float *rowmax, const float *logits, int64_t R,
                                    int64_t Vl)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("xent_vp_max", mp_seq_check_vp(R, Vl, 0, rowmax, logits, logits, logits, logits));
    ENTER(cb);
    CUDA_TRY(mp_cuda_xent_vp_max_launch(cb->stream, rowmax, logits, R, Vl));
    return MP_OK;
}

static mp_status_t cuda_xent_vp_sumexp(mp_backend_t *be, float *sumexp, float *target,
                                       const float *logits, const float *gmax,
                                       const int32_t *labels, int64_t R, int64_t Vl, int64_t v0)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("xent_vp_sumexp", mp_seq_check_vp(R, Vl, v0, sumexp, target, logits, gmax, labels));
    ENTER(cb);
    CUDA_TRY(
        mp_cuda_xent_vp_sumexp_launch(cb->stream, sumexp, target, logits, gmax, labels, R, Vl, v0));
    return MP_OK;
}

static mp_status_t cuda_xent_vp_bwd(mp_backend_t *be, float *dlogits, const float *logits,
                                    const float *gmax, const float *gsum, const int32_t *labels,
                                    int64_t R, int64_t Vl, int64_t v0, float scale)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    SEQ_CHECK("xent_vp_bwd", mp_seq_check_vp(R, Vl, v0, dlogits, logits, gmax, gsum, labels));
    ENTER(cb);
    CUDA_TRY(mp_cuda_xent_vp_bwd_launch(cb->stream, dlogits, logits, gmax, gsum, labels, R, Vl, v0,
                                        scale));
    return MP_OK;
}

/* ---- optimizers ------------------------------------------------------------------------ */

/* The steps' scalars come from gpu/optim_scalars.h, shared with the CPU backend. */

/* Before a step: the flag cleared (allocated on first use). */
static mp_status_t nonfinite_clear(mp_cuda_backend_t *cb)
{
    if (cb->nonfinite == NULL) {
        CUDA_TRY(cudaMalloc((void **)&cb->nonfinite, sizeof(int)));
    }
    CUDA_TRY(cudaMemsetAsync(cb->nonfinite, 0, sizeof(int), cb->stream));
    return MP_OK;
}

/* After it: MP_ERR_NONFINITE when a gradient was NaN or ±Inf (one int
 * read back and a wait, once per optimizer step). */
static mp_status_t nonfinite_read(mp_cuda_backend_t *cb)
{
    int bad = 0;
    CUDA_TRY(cudaMemcpyAsync(&bad, cb->nonfinite, sizeof(int), cudaMemcpyDeviceToHost, cb->stream));
    CUDA_TRY(cudaStreamSynchronize(cb->stream));
    return bad ? MP_ERR_NONFINITE : MP_OK;
}

static mp_status_t cuda_sgd_step(mp_backend_t *be, float *p, const float *grad, float *buf,
                                 int64_t n, const mp_optim_hp_t *hp)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (hp == NULL || hp->step < 1) {
        mp_err("cuda: sgd_step needs hyper-parameters and a 1-based step");
        return MP_ERR_INVAL;
    }
    if (hp->momentum != 0.0f && n > 0 && buf == NULL) {
        mp_err("cuda: sgd_step with momentum %g needs a momentum buffer", (double)hp->momentum);
        return MP_ERR_INVAL;
    }
    if (hp->nesterov && (hp->momentum <= 0.0f || hp->dampening != 0.0f)) {
        /* torch.optim.SGD refuses the same combination. */
        mp_err("cuda: sgd_step: nesterov needs momentum > 0 and dampening 0");
        return MP_ERR_INVAL;
    }
    ENTER(cb);
    MP_TRY(nonfinite_clear(cb));
    CUDA_TRY(mp_cuda_sgd_launch(cb->stream, p, grad, buf, n, hp->lr, hp->momentum,
                                mp_optim_sgd_one_minus_damp(hp), hp->weight_decay, hp->nesterov,
                                hp->step == 1, cb->nonfinite));
    return nonfinite_read(cb);
}

static mp_status_t cuda_adamw_step(mp_backend_t *be, float *p, const float *grad, float *m,
                                   float *v, int64_t n, const mp_optim_hp_t *hp)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (hp == NULL || hp->step < 1) {
        mp_err("cuda: adamw_step needs hyper-parameters and a 1-based step");
        return MP_ERR_INVAL;
    }
    ENTER(cb);
    MP_TRY(nonfinite_clear(cb));
    mp_optim_adamw_scalars_t k = mp_optim_adamw_scalars(hp);
    CUDA_TRY(mp_cuda_adamw_launch(cb->stream, p, grad, m, v, n, k.decay, k.one_minus_beta1, k.beta2,
                                  k.one_minus_beta2, k.step_size, k.bc2_sqrt, k.eps,
                                  cb->nonfinite));
    return nonfinite_read(cb);
}

/* ---- lifetime ---------------------------------------------------------------------------- */

static void cuda_destroy(mp_backend_t *be)
{
    mp_cuda_backend_t *cb = cuda_of(be);
    if (cuda_enter(cb) == MP_OK) {
        if (cb->stream != NULL) {
            (void)cuda_check(cudaStreamSynchronize(cb->stream), "cudaStreamSynchronize", __FILE__,
                             __LINE__);
        }
        if (cb->xent_scratch != NULL) {
            (void)cuda_check(cudaFree(cb->xent_scratch), "cudaFree", __FILE__, __LINE__);
        }
        if (cb->attn_scratch != NULL) {
            (void)cuda_check(cudaFree(cb->attn_scratch), "cudaFree", __FILE__, __LINE__);
        }
        if (cb->nonfinite != NULL) {
            (void)cuda_check(cudaFree(cb->nonfinite), "cudaFree", __FILE__, __LINE__);
        }
        if (cb->cublas != NULL) {
            (void)cublas_check(cublasDestroy(cb->cublas), "cublasDestroy", __FILE__, __LINE__);
        }
        if (cb->stream != NULL) {
            (void)cuda_check(cudaStreamDestroy(cb->stream), "cudaStreamDestroy", __FILE__,
                             __LINE__);
        }
    }
    mp_free(cb);
}

static const mp_backend_ops_t cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .zero = cuda_zero,
    .sync = cuda_sync,
    .gemm = cuda_gemm,
    .linear_fwd = cuda_linear_fwd,
    .linear_bwd = cuda_linear_bwd,
    .gelu_fwd = cuda_gelu_fwd,
    .gelu_bwd = cuda_gelu_bwd,
    .relu_fwd = cuda_relu_fwd,
    .relu_bwd = cuda_relu_bwd,
    .axpy = cuda_axpy,
    .bias_add = cuda_bias_add,
    .xent_fwd = cuda_xent_fwd,
    .xent_bwd = cuda_xent_bwd,
    .embed_fwd = cuda_embed_fwd,
    .embed_bwd = cuda_embed_bwd,
    .pos_add = cuda_pos_add,
    .pos_bwd = cuda_pos_bwd,
    .layernorm_fwd = cuda_layernorm_fwd,
    .layernorm_bwd = cuda_layernorm_bwd,
    .attn_fwd = cuda_attn_fwd,
    .attn_bwd = cuda_attn_bwd,
    .xent_vp_max = cuda_xent_vp_max,
    .xent_vp_sumexp = cuda_xent_vp_sumexp,
    .xent_vp_bwd = cuda_xent_vp_bwd,
    .sgd_step = cuda_sgd_step,
    .adamw_step = cuda_adamw_step,
};

/* Stream, handle and math mode of a zeroed backend whose device is current. */
static mp_status_t cuda_backend_init(mp_cuda_backend_t *cb)
{
    CUDA_TRY(cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&cb->cublas));
    CUBLAS_TRY(cublasSetStream(cb->cublas, cb->stream));
    /* CUBLAS_DEFAULT_MATH keeps fp32 GEMMs in full fp32 (no TF32 down-conversion). */
    CUBLAS_TRY(
        cublasSetMathMode(cb->cublas, cb->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    return MP_OK;
}

/* The plugin's entry points (looked up by name with dlsym). */
int mp_cuda_plugin_device_count(void);
mp_status_t mp_cuda_plugin_create(int device, bool tf32, mp_backend_t **be_p);

int mp_cuda_plugin_device_count(void)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        /* No driver or no GPU: not an error for a probe.  Clear the error so
         * a later call does not see it. */
        mp_debug("cuda: no usable device: %s", cudaGetErrorString(err));
        (void)cudaGetLastError();
        return 0;
    }
    return count;
}

mp_status_t mp_cuda_plugin_create(int device, bool tf32, mp_backend_t **be_p)
{
    int count = mp_cuda_plugin_device_count();
    if (device < 0 || device >= count) {
        mp_err("cuda: no CUDA device %d (%d visible)", device, count);
        return MP_ERR_NODEV;
    }
    mp_status_t st = cuda_check(cudaSetDevice(device), "cudaSetDevice", __FILE__, __LINE__);
    if (st != MP_OK) {
        return st;
    }
    mp_cuda_backend_t *cb = mp_calloc(1, sizeof(*cb));
    if (cb == NULL) {
        mp_err("cuda: out of memory for the backend");
        return MP_ERR_NOMEM;
    }
    cb->base.ops = &cuda_ops;
    cb->base.kind = MP_BACKEND_CUDA;
    cb->base.device = device;
    cb->base.threads = 1;
    cb->tf32 = tf32;
    st = cuda_backend_init(cb);
    if (st != MP_OK) {
        cuda_destroy(&cb->base);
        return st;
    }
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
        mp_info("cuda: device %d: %s, sm_%d%d, %.1f GiB, %s GEMMs", device, prop.name, prop.major,
                prop.minor, (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024),
                tf32 ? "TF32" : "strict fp32");
    }
    *be_p = &cb->base;
    return MP_OK;
}
