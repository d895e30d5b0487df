/*
 * backend.h - the device backend table (nginx's ngx_event_actions_t style):
 * CPU (oneDNN + C kernels) and CUDA (cuBLAS + .cu kernels) side by side
 * behind one table of function pointers.
 *
 * Every pointer argument named as device memory (float *, int32_t *) lives
 * in the backend's memory space: host memory for CPU, device memory for
 * CUDA.  Host-side outputs are named *_host.  All matrices are row-major.
 * Ops are issued in order on the backend's one stream; results are visible
 * to download() without a separate sync.
 *
 * Legend: B = batch rows, I = in features, O = out features, C = classes,
 * n = element count.
 *
 * Accumulation rule (llm.c): every *_bwd op ADDS into its gradient
 * outputs (dx += ..., dW += ...), so callers zero gradients once per step.
 * A backend object is used by one thread at a time.
 */
#ifndef MP_GPU_BACKEND_H
#define MP_GPU_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum { MP_BACKEND_CPU = 0, MP_BACKEND_CUDA = 1 } mp_backend_kind_t;
typedef enum { MP_OP_N = 0, MP_OP_T = 1 } mp_op_t;

typedef struct mp_backend mp_backend_t;

/* Hyper-parameters of one optimizer step, PyTorch names and defaults. */
typedef struct {
    float lr;
    float momentum;     /* SGD */
    float dampening;    /* SGD */
    float weight_decay; /* SGD: L2 added to the gradient; AdamW: decoupled */
    bool nesterov;      /* SGD */
    float beta1, beta2, eps; /* AdamW */
    int64_t step;       /* 1-based step count (AdamW bias correction; SGD: 1 = first step) */
} mp_optim_hp_t;

typedef struct mp_backend_ops {
    const char *name; /* "cpu" or "cuda" */

    void (*destroy)(mp_backend_t *be);

    /* Memory. alloc returns NULL on failure (and logs why). */
    void *(*alloc)(mp_backend_t *be, size_t bytes);
    void (*free)(mp_backend_t *be, void *ptr);
    mp_status_t (*upload)(mp_backend_t *be, void *dst, const void *src_host, size_t bytes);
    mp_status_t (*download)(mp_backend_t *be, void *dst_host, const void *src, size_t bytes);
    mp_status_t (*copy)(mp_backend_t *be, void *dst, const void *src, size_t bytes);
    mp_status_t (*zero)(mp_backend_t *be, void *dst, size_t bytes);
    mp_status_t (*sync)(mp_backend_t *be);

    /* C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, with leading
     * dimensions lda, ldb, ldc (as stored, before op). */
    mp_status_t (*gemm)(mp_backend_t *be, mp_op_t ta, mp_op_t tb, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const float *Bm, int64_t ldb,
                        float beta, float *Cm, int64_t ldc);

    /* Z[B,O] = X[B,I] * W[I,O] (+ b[O] when b != NULL). */
    mp_status_t (*linear_fwd)(mp_backend_t *be, float *Z, const float *X, const float *W,
                              const float *b, int64_t B, int64_t I, int64_t O);
    /* dX += dZ * W^T (skipped when dX == NULL); dW += X^T * dZ;
     * db += column sums of dZ (skipped when db == NULL). */
    mp_status_t (*linear_bwd)(mp_backend_t *be, float *dX, float *dW, float *db, const float *dZ,
                              const float *X, const float *W, int64_t B, int64_t I, int64_t O);

    /* y[i] = gelu(x[i]) exact erf form; dx[i] += dy[i] * gelu'(x[i]). */
    mp_status_t (*gelu_fwd)(mp_backend_t *be, float *y, const float *x, int64_t n);
    mp_status_t (*gelu_bwd)(mp_backend_t *be, float *dx, const float *x, const float *dy, int64_t n);
    /* y = max(x, 0); dx += dy * (x > 0). */
    mp_status_t (*relu_fwd)(mp_backend_t *be, float *y, const float *x, int64_t n);
    mp_status_t (*relu_bwd)(mp_backend_t *be, float *dx, const float *x, const float *dy, int64_t n);

    /* y += alpha * x. */
    mp_status_t (*axpy)(mp_backend_t *be, float *y, float alpha, const float *x, int64_t n);
    /* y[r,c] += b[c] for r < rows (bias added once, e.g. after a row-parallel AllReduce). */
    mp_status_t (*bias_add)(mp_backend_t *be, float *y, const float *b, int64_t rows, int64_t cols);

    /* Softmax cross-entropy, numerically stable.
     * fwd: probs[B,C] = softmax(logits); *loss_sum_host = sum over rows of
     * -log(probs[r, labels[r]]) (accumulated in double); *correct_host = rows
     * whose argmax (first maximum) equals the label.  Either host output may be NULL.
     * bwd: dlogits += scale * (probs - onehot(labels)). */
    mp_status_t (*xent_fwd)(mp_backend_t *be, float *probs, const float *logits,
                            const int32_t *labels, int64_t B, int64_t C, double *loss_sum_host,
                            int64_t *correct_host);
    mp_status_t (*xent_bwd)(mp_backend_t *be, float *dlogits, const float *probs,
                            const int32_t *labels, int64_t B, int64_t C, float scale);

    /* torch.optim.SGD: g = grad + wd*p; buf = g on step 1, else
     * buf = momentum*buf + (1-dampening)*g; g = nesterov ? g + momentum*buf : buf
     * (when momentum != 0); p -= lr * g.  buf may be NULL when momentum == 0. */
    mp_status_t (*sgd_step)(mp_backend_t *be, float *p, const float *grad, float *buf, int64_t n,
                            const mp_optim_hp_t *hp);
    /* torch.optim.AdamW: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps). */
    mp_status_t (*adamw_step)(mp_backend_t *be, float *p, const float *grad, float *m, float *v,
                              int64_t n, const mp_optim_hp_t *hp);
} mp_backend_ops_t;

/* Every backend struct begins with this header. */
struct mp_backend {
    const mp_backend_ops_t *ops;
    mp_backend_kind_t kind;
    int device;  /* CUDA device index; 0 for CPU */
    int threads; /* CPU compute threads this backend may use */
};

/* CPU backend using `threads` threads (>= 1) for its GEMMs and kernels. */
mp_status_t mp_backend_cpu_create(int threads, mp_backend_t **be_p);
/* CUDA backend on `device`; MP_ERR_UNSUPPORTED when built without CUDA,
 * MP_ERR_NODEV when no such GPU is present.  `tf32` allows TF32 GEMMs. */
mp_status_t mp_backend_cuda_create(int device, bool tf32, mp_backend_t **be_p);
/* Number of CUDA devices visible (0 without CUDA or without a GPU). */
int mp_backend_cuda_device_count(void);
/* Whether this build contains the CUDA backend. */
bool mp_backend_cuda_built(void);

static inline void mp_backend_destroy(mp_backend_t *be)
{
    if (be != NULL) {
        be->ops->destroy(be);
    }
}

#endif
