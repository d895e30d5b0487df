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
    /* dX += dZ * W^T (skipped when dX == NULL); dW += X^T * dZ (skipped
     * when dW == NULL); db += column sums of dZ (skipped when db == NULL). */
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

    /* ---- sequence-model layers (DESIGN.md "Transformers (GPT)") ----
     * Activations [B, T, C] are stored row-major as R = B*T rows of C.
     * Every pointer marked "may be NULL" skips that output, so a backward
     * can run as its input-gradient half (weight gradients NULL) and its
     * weight-gradient half (dX NULL) separately, with the same results. */

    /* Token lookup of a vocab shard: y[r, :] = tok[id - v0, :] where
     * id = (int)ids[r] lies in [v0, v0 + Vl), else a zero row.  Token ids
     * travel as floats (exact below 2^24).  y is OVERWRITTEN.  An id
     * outside [0, V) is the caller's to refuse; here it is just out of range. */
    mp_status_t (*embed_fwd)(mp_backend_t *be, float *y, const float *ids, const float *tok,
                             int64_t R, int64_t C, int64_t v0, int64_t Vl);
    /* dtok[id - v0, :] += dy[r, :] for the rows whose id is in the shard. */
    mp_status_t (*embed_bwd)(mp_backend_t *be, float *dtok, const float *dy, const float *ids,
                             int64_t R, int64_t C, int64_t v0, int64_t Vl);
    /* Positions: y[b*T + t, :] += pos[t, :] for R = B*T rows (T divides R). */
    mp_status_t (*pos_add)(mp_backend_t *be, float *y, const float *pos, int64_t R, int64_t T,
                           int64_t C);
    /* dpos[t, :] += sum over b of dy[b*T + t, :]. */
    mp_status_t (*pos_bwd)(mp_backend_t *be, float *dpos, const float *dy, int64_t R, int64_t T,
                           int64_t C);

    /* torch.nn.LayerNorm over the last axis (biased variance, eps):
     * y[r, :] = (x[r, :] - mean[r]) * rstd[r] * w + b, rstd = 1/sqrt(var + eps);
     * saves mean[R] and rstd[R] for the backward.  y is OVERWRITTEN and
     * must not alias x. */
    mp_status_t (*layernorm_fwd)(mp_backend_t *be, float *y, float *mean, float *rstd,
                                 const float *x, const float *w, const float *b, int64_t R,
                                 int64_t C, float eps);
    /* dx += d/dx (may be NULL); dw += sum_r dy * xhat and db += sum_r dy
     * (each may be NULL); xhat = (x - mean) * rstd.  w is read only for dx
     * (it may be NULL in a weight-gradient-only call). */
    mp_status_t (*layernorm_bwd)(mp_backend_t *be, float *dx, float *dw, float *db,
                                 const float *dy, const float *x, const float *mean,
                                 const float *rstd, const float *w, int64_t R, int64_t C);

    /* Causal multi-head self-attention over H heads of width D, fused
     * (scores, causal mask, softmax, weighted sum; no loop of tiny GEMMs).
     * qkv [B*T, 3*H*D]: row (b, t) holds [Q | K | V], each H*D wide, head h
     * at columns [h*D, (h+1)*D) of each third.  out [B*T, H*D] (OVERWRITTEN):
     * out[b,t,h] = sum_{s <= t} att[b,h,t,s] * V[b,s,h] with
     * att[b,h,t,:] = softmax over s <= t of Q[b,t,h]·K[b,s,h] / sqrt(D)
     * (0 for s > t).  att [B, H, T, T] is saved for the backward. */
    mp_status_t (*attn_fwd)(mp_backend_t *be, float *out, float *att, const float *qkv,
                            int64_t B, int64_t T, int64_t H, int64_t D);
    /* dqkv [B*T, 3*H*D] += the gradient of out with respect to qkv. */
    mp_status_t (*attn_bwd)(mp_backend_t *be, float *dqkv, const float *dout, const float *qkv,
                            const float *att, int64_t B, int64_t T, int64_t H, int64_t D);

    /* Vocab-parallel softmax cross-entropy (Megatron): logits [R, Vl] are
     * columns [v0, v0 + Vl) of the full [R, V] logits; labels [R] are full
     * vocab ids.  The caller combines the ranks' partial results between
     * the calls (max, then sums), so the full logits are never gathered.
     * vp_max: rowmax[r] = max over the shard's columns (OVERWRITTEN).
     * vp_sumexp: sumexp[r] = sum_c exp(logits[r,c] - gmax[r]) and
     * target[r] = logits[r, labels[r] - v0] when the label is in the shard,
     * else 0 (both OVERWRITTEN); gmax is the max over all ranks.
     * vp_bwd: dlogits[r, c] += scale * (exp(logits[r,c] - gmax[r]) / gsum[r]
     * - (c + v0 == labels[r])), gsum the sum over all ranks. */
    mp_status_t (*xent_vp_max)(mp_backend_t *be, float *rowmax, const float *logits, int64_t R,
                               int64_t Vl);
    mp_status_t (*xent_vp_sumexp)(mp_backend_t *be, float *sumexp, float *target,
                                  const float *logits, const float *gmax, const int32_t *labels,
                                  int64_t R, int64_t Vl, int64_t v0);
    mp_status_t (*xent_vp_bwd)(mp_backend_t *be, float *dlogits, const float *logits,
                               const float *gmax, const float *gsum, const int32_t *labels,
                               int64_t R, int64_t Vl, int64_t v0, float scale);

    /*
     * Optional (NULL: nothing to do).  params_hold tells the backend that
     * [ptr, ptr + bytes) holds parameters that from now on change only
     * through this backend's upload, copy, zero and optimizer steps, so that
     * it may keep copies derived from them (the CPU backend: weights at a
     * padded row stride, made once per optimizer step instead of once per
     * micro-batch) until one of those ops writes there.  params_release
     * (before the memory is freed) drops them.  Failing to hold only costs
     * speed.
     */
    void (*params_hold)(mp_backend_t *be, const void *ptr, size_t bytes);
    void (*params_release)(mp_backend_t *be, const void *ptr);

    /* torch.optim.SGD: g = grad + wd*p; buf = g on step 1, else
     * buf = momentum*buf + (1-dampening)*g; g = nesterov ? g + momentum*buf : buf
     * (when momentum != 0); p -= lr * g.  buf may be NULL when momentum == 0. */
    /* Both optimizer steps return MP_ERR_NONFINITE when an element of grad
     * is NaN or ±Inf (DESIGN.md: the job FAILs at that step); the update
     * has been applied by then. */
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
