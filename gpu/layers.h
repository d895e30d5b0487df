/*
 * layers.h - layers as forward/backward pairs over a backend (llm.c style):
 * outputs first, then inputs, then parameters, then dimensions; every
 * backward ADDS into its gradients (callers zero them once per step) and
 * writes d(input) only where it says so.  Any thread that owns the backend.
 *
 * Legend: B = batch rows, I = in, O = out, C = classes, n = element count,
 * H = hidden width of an mlp_block, F = its ffn width, or the local slice
 * Fl = F / tp of it on a tensor-parallel rank.
 *
 * mlp_block: y = x + gelu(x·W1 + b1)·W2 + b2, W1 [H,F], W2 [F,H].  Its
 * pieces are exposed for tensor parallelism (Megatron): fc1 is the
 * column-parallel half (W1, b1 split by columns into [H,Fl], [Fl]), fc2 the
 * row-parallel half (W2 split by rows into [Fl,H]) whose output is a partial
 * sum; an AllReduce completes it before the residual piece adds b2 and x.
 * Backward runs the conjugate: fc2_bwd (dY replicated), fc1_bwd (dX is a
 * partial sum to AllReduce), residual_bwd (dX += dY, once).  With tp = 1 the
 * whole-block functions are exactly the pieces in order, so serial and TP
 * runs share one code path.
 */
#ifndef MP_GPU_LAYERS_H
#define MP_GPU_LAYERS_H

#include <stdint.h>

#include "gpu/backend.h"

/* ---- thin wrappers over the backend's ops ----------------------------- */

/* Z[B,O] = X[B,I]·W[I,O] (+ b[O] when b != NULL). */
static inline mp_status_t mp_linear_fwd(mp_backend_t *be, float *Z, const float *X,
                                        const float *W, const float *b, int64_t B, int64_t I,
                                        int64_t O)
{
    return be->ops->linear_fwd(be, Z, X, W, b, B, I, O);
}

/* dX += dZ·W^T (dX may be NULL); dW += X^T·dZ; db += colsum(dZ) (db may be NULL). */
static inline mp_status_t mp_linear_bwd(mp_backend_t *be, float *dX, float *dW, float *db,
                                        const float *dZ, const float *X, const float *W,
                                        int64_t B, int64_t I, int64_t O)
{
    return be->ops->linear_bwd(be, dX, dW, db, dZ, X, W, B, I, O);
}

static inline mp_status_t mp_gelu_fwd(mp_backend_t *be, float *y, const float *x, int64_t n)
{
    return be->ops->gelu_fwd(be, y, x, n);
}

static inline mp_status_t mp_gelu_bwd(mp_backend_t *be, float *dx, const float *x,
                                      const float *dy, int64_t n)
{
    return be->ops->gelu_bwd(be, dx, x, dy, n);
}

static inline mp_status_t mp_relu_fwd(mp_backend_t *be, float *y, const float *x, int64_t n)
{
    return be->ops->relu_fwd(be, y, x, n);
}

static inline mp_status_t mp_relu_bwd(mp_backend_t *be, float *dx, const float *x,
                                      const float *dy, int64_t n)
{
    return be->ops->relu_bwd(be, dx, x, dy, n);
}

/* probs[B,C] = softmax(logits); loss sum and correct count to the host (either may be NULL). */
static inline mp_status_t mp_xent_fwd(mp_backend_t *be, float *probs, const float *logits,
                                      const int32_t *labels, int64_t B, int64_t C,
                                      double *loss_sum_host, int64_t *correct_host)
{
    return be->ops->xent_fwd(be, probs, logits, labels, B, C, loss_sum_host, correct_host);
}

/* dlogits += scale * (probs - onehot(labels)); scale = 1 / global batch for a mean loss. */
static inline mp_status_t mp_xent_bwd(mp_backend_t *be, float *dlogits, const float *probs,
                                      const int32_t *labels, int64_t B, int64_t C, float scale)
{
    return be->ops->xent_bwd(be, dlogits, probs, labels, B, C, scale);
}

/* ---- mlp_block pieces (tensor-parallel building blocks) --------------- */

/* Column-parallel half: Hpre[B,Fl] = X[B,H]·W1[H,Fl] + b1[Fl]; A[B,Fl] = gelu(Hpre). */
mp_status_t mp_mlp_block_fc1_fwd(mp_backend_t *be, float *Hpre, float *A, const float *X,
                                 const float *W1, const float *b1, int64_t B, int64_t H,
                                 int64_t Fl);

/* Row-parallel half: Y[B,H] = A[B,Fl]·W2[Fl,H], overwritten, no bias (under
 * TP a partial sum for the AllReduce). */
mp_status_t mp_mlp_block_fc2_fwd(mp_backend_t *be, float *Y, const float *A, const float *W2,
                                 int64_t B, int64_t Fl, int64_t H);

/* Completion (after the AllReduce): Y[B,H] += b2[H] (each row), then Y += X[B,H]. */
mp_status_t mp_mlp_block_residual_fwd(mp_backend_t *be, float *Y, const float *X,
                                      const float *b2, int64_t B, int64_t H);

/* Conjugate of fc2 (dY[B,H] is replicated under TP): dW2 += A^T·dY;
 * db2 += colsum(dY) (skipped when db2 == NULL); then dA[B,Fl] = dY·W2^T,
 * OVERWRITTEN.  dA may be the A buffer itself: A is read
 * before dA is written (ops run in order). */
mp_status_t mp_mlp_block_fc2_bwd(mp_backend_t *be, float *dA, float *dW2, float *db2,
                                 const float *dY, const float *A, const float *W2, int64_t B,
                                 int64_t Fl, int64_t H);

/* Conjugate of fc1: scratch[B,Fl] = dA * gelu'(Hpre) (overwritten); then
 * dX += scratch·W1^T (skipped when dX == NULL; under TP a partial sum for the
 * AllReduce), dW1 += X^T·scratch, db1 += colsum(scratch). */
mp_status_t mp_mlp_block_fc1_bwd(mp_backend_t *be, float *dX, float *dW1, float *db1,
                                 float *scratch, const float *dA, const float *Hpre,
                                 const float *X, const float *W1, int64_t B, int64_t H,
                                 int64_t Fl);

/* Conjugate of the residual: dX[B,H] += dY (once, not per TP rank). */
mp_status_t mp_mlp_block_residual_bwd(mp_backend_t *be, float *dX, const float *dY, int64_t B,
                                      int64_t H);

/* ---- mlp_block whole (serial, or a TP rank with its slices when tp = 1) */

/* Y[B,H] = X + gelu(X·W1 + b1)·W2 + b2; saves Hpre[B,F] (pre-activation) and
 * A[B,F] (activation) for the backward.  Y must not alias X. */
mp_status_t mp_mlp_block_fwd(mp_backend_t *be, float *Y, float *Hpre, float *A, const float *X,
                             const float *W1, const float *b1, const float *W2, const float *b2,
                             int64_t B, int64_t H, int64_t F);

/* Gradients of mp_mlp_block_fwd: dX += (dX may be NULL), dW1, db1, dW2, db2 +=.
 * scratch is [B,F].  A is CLOBBERED (it ends holding d(activation)); Hpre is kept. */
mp_status_t mp_mlp_block_bwd(mp_backend_t *be, float *dX, float *dW1, float *db1, float *dW2,
                             float *db2, float *scratch, const float *dY, const float *X,
                             const float *Hpre, float *A, const float *W1, const float *W2,
                             int64_t B, int64_t H, int64_t F);

#endif
