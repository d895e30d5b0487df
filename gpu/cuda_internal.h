/*
 * cuda_internal.h - private to the CUDA backend (gpu/backend_cuda.c and
 * gpu/cuda_kernels.cu), and to the tools that time it (bench/gemm.c): the
 * backend struct layout and the kernel launchers.
 *
 * Launchers are plain C functions defined in cuda_kernels.cu.  Each one
 * enqueues its kernel(s) on `stream` and returns cudaGetLastError() of the
 * launch (cudaSuccess for an empty range); the caller in backend_cuda.c
 * converts a failure to MP_ERR_DEVICE with file and line.  All row-major.
 * Legend: B = batch rows, C = classes or columns, n = element count.
 */
#ifndef MP_GPU_CUDA_INTERNAL_H
#define MP_GPU_CUDA_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "gpu/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Per-row results of xent_fwd and their sums, in one device allocation. */
typedef struct {
    double loss_sum;   /* sum over rows of -log p[label] */
    long long correct; /* rows whose first argmax equals the label */
    long long bad;     /* rows whose label is outside [0, C) */
} mp_cuda_xent_out_t;

typedef struct mp_cuda_backend {
    mp_backend_t base; /* first: the generic header */
    cudaStream_t stream;
    cublasHandle_t cublas;
    bool tf32;
    /* xent_fwd scratch: an mp_cuda_xent_out_t, then per-row loss (double)
     * and per-row flags (int), xent_bytes long. */
    void *xent_scratch;
    size_t xent_bytes;
    /* attn_bwd scratch: dS [B, H, T, T], attn_bytes long. */
    void *attn_scratch;
    size_t attn_bytes;
    /* The optimizer steps' flag: set to 1 when a gradient is not finite. */
    int *nonfinite;
} mp_cuda_backend_t;

/* Bytes of xent scratch needed for B rows. */
size_t mp_cuda_xent_scratch_bytes(int64_t B);

cudaError_t mp_cuda_gelu_fwd_launch(cudaStream_t stream, float *y, const float *x, int64_t n);
cudaError_t mp_cuda_gelu_bwd_launch(cudaStream_t stream, float *dx, const float *x, const float *dy,
                                    int64_t n);
cudaError_t mp_cuda_relu_fwd_launch(cudaStream_t stream, float *y, const float *x, int64_t n);
cudaError_t mp_cuda_relu_bwd_launch(cudaStream_t stream, float *dx, const float *x, const float *dy,
                                    int64_t n);
cudaError_t mp_cuda_axpy_launch(cudaStream_t stream, float *y, float alpha, const float *x,
                                int64_t n);
/* y[r,c] += b[c]. */
cudaError_t mp_cuda_bias_add_launch(cudaStream_t stream, float *y, const float *b, int64_t rows,
                                    int64_t cols);
/* db[c] += sum over r of dZ[r,c], in a fixed order (no atomics): deterministic. */
cudaError_t mp_cuda_colsum_add_launch(cudaStream_t stream, float *db, const float *dZ, int64_t rows,
                                      int64_t cols);
/* probs = softmax(logits) row by row; the sums land in scratch (an
 * mp_cuda_xent_out_t first), reduced on the device in a fixed order. */
cudaError_t mp_cuda_xent_fwd_launch(cudaStream_t stream, float *probs, const float *logits,
                                    const int32_t *labels, int64_t B, int64_t C, void *scratch);
/* dlogits += scale * (probs - onehot(labels)); rows with a label outside
 * [0, C) get no one-hot term. */
cudaError_t mp_cuda_xent_bwd_launch(cudaStream_t stream, float *dlogits, const float *probs,
                                    const int32_t *labels, int64_t B, int64_t C, float scale);
/* torch.optim.SGD for one tensor; first_step: the momentum buffer is set to
 * the gradient instead of being decayed.  one_minus_damp = 1 - dampening,
 * computed by the caller in double as Python does.  Both optimizers set
 * *nonfinite (device memory) to 1 when an element of grad is NaN or ±Inf. */
cudaError_t mp_cuda_sgd_launch(cudaStream_t stream, float *p, const float *grad, float *buf,
                               int64_t n, float lr, float momentum, float one_minus_damp,
                               float weight_decay, bool nesterov, bool first_step, int *nonfinite);
/* torch.optim.AdamW for one tensor.  The scalars are Python's doubles
 * rounded to float: decay = 1 - lr*wd, one_minus_beta1 = 1 - beta1 (the
 * lerp weight), one_minus_beta2 = 1 - beta2, step_size = lr / (1 - beta1^t),
 * bc2_sqrt = sqrt(1 - beta2^t). */
cudaError_t mp_cuda_adamw_launch(cudaStream_t stream, float *p, const float *grad, float *m,
                                 float *v, int64_t n, float decay, float one_minus_beta1,
                                 float beta2, float one_minus_beta2, float step_size,
                                 float bc2_sqrt, float eps, int *nonfinite);

/* ---- sequence layers (contracts in backend.h; arguments already checked) ---- */
cudaError_t mp_cuda_embed_fwd_launch(cudaStream_t stream, float *y, const float *ids,
                                     const float *tok, int64_t R, int64_t C, int64_t v0,
                                     int64_t Vl);
/* Deterministic: each dtok element adds its rows in row order (no atomics). */
cudaError_t mp_cuda_embed_bwd_launch(cudaStream_t stream, float *dtok, const float *dy,
                                     const float *ids, int64_t R, int64_t C, int64_t v0,
                                     int64_t Vl);
cudaError_t mp_cuda_pos_add_launch(cudaStream_t stream, float *y, const float *pos, int64_t R,
                                   int64_t T, int64_t C);
cudaError_t mp_cuda_pos_bwd_launch(cudaStream_t stream, float *dpos, const float *dy, int64_t R,
                                   int64_t T, int64_t C);
cudaError_t mp_cuda_layernorm_fwd_launch(cudaStream_t stream, float *y, float *mean, float *rstd,
                                         const float *x, const float *w, const float *b, int64_t R,
                                         int64_t C, float eps);
cudaError_t mp_cuda_layernorm_bwd_launch(cudaStream_t stream, float *dx, float *dw, float *db,
                                         const float *dy, const float *x, const float *mean,
                                         const float *rstd, const float *w, int64_t R, int64_t C);
/* Bytes of attn_bwd scratch for B sequences of T positions and H heads. */
size_t mp_cuda_attn_scratch_bytes(int64_t B, int64_t T, int64_t H);
cudaError_t mp_cuda_attn_fwd_launch(cudaStream_t stream, float *out, float *att, const float *qkv,
                                    int64_t B, int64_t T, int64_t H, int64_t D);
cudaError_t mp_cuda_attn_bwd_launch(cudaStream_t stream, float *dqkv, const float *dout,
                                    const float *qkv, const float *att, int64_t B, int64_t T,
                                    int64_t H, int64_t D, void *scratch);
cudaError_t mp_cuda_xent_vp_max_launch(cudaStream_t stream, float *rowmax, const float *logits,
                                       int64_t R, int64_t Vl);
cudaError_t mp_cuda_xent_vp_sumexp_launch(cudaStream_t stream, float *sumexp, float *target,
                                          const float *logits, const float *gmax,
                                          const int32_t *labels, int64_t R, int64_t Vl, int64_t v0);
cudaError_t mp_cuda_xent_vp_bwd_launch(cudaStream_t stream, float *dlogits, const float *logits,
                                       const float *gmax, const float *gsum, const int32_t *labels,
                                       int64_t R, int64_t Vl, int64_t v0, float scale);

#ifdef __cplusplus
}
#endif

#endif
