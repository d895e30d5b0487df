/*
 * layers.c - the mlp_block as forward/backward pieces built only on the
 * backend table, so one code serves the CPU and CUDA backends and the
 * serial and tensor-parallel paths.  Owns no memory: every buffer is the
 * caller's.  Runs on whichever thread owns the backend.
 *
 * Legend: B = batch rows, H = hidden, Fl = local ffn width (F when tp = 1).
 */
#include "gpu/layers.h"

#include "common/log.h"

mp_status_t mp_mlp_block_fc1_fwd(mp_backend_t *be, float *Hpre, float *A, const float *X,
                                 const float *W1, const float *b1, int64_t B, int64_t H,
                                 int64_t Fl)
{
    MP_TRY(be->ops->linear_fwd(be, Hpre, X, W1, b1, B, H, Fl));
    return be->ops->gelu_fwd(be, A, Hpre, B * Fl);
}

mp_status_t mp_mlp_block_fc2_fwd(mp_backend_t *be, float *Y, const float *A, const float *W2,
                                 int64_t B, int64_t Fl, int64_t H)
{
    return be->ops->linear_fwd(be, Y, A, W2, NULL, B, Fl, H);
}

mp_status_t mp_mlp_block_residual_fwd(mp_backend_t *be, float *Y, const float *X,
                                      const float *b2, int64_t B, int64_t H)
{
    /* (A·W2 + b2) + X: PyTorch's order for x + fc2(...). */
    MP_TRY(be->ops->bias_add(be, Y, b2, B, H));
    return be->ops->axpy(be, Y, 1.0f, X, B * H);
}

mp_status_t mp_mlp_block_fc2_bwd(mp_backend_t *be, float *dA, float *dW2, float *db2,
                                 const float *dY, const float *A, const float *W2, int64_t B,
                                 int64_t Fl, int64_t H)
{
    /* dW2 and db2 first: they read A, which dA may overwrite. */
    MP_TRY(be->ops->linear_bwd(be, NULL, dW2, db2, dY, A, W2, B, Fl, H));
    return be->ops->gemm(be, MP_OP_N, MP_OP_T, B, Fl, H, 1.0f, dY, H, W2, H, 0.0f, dA, Fl);
}

mp_status_t mp_mlp_block_fc1_bwd(mp_backend_t *be, float *dX, float *dW1, float *db1,
                                 float *scratch, const float *dA, const float *Hpre,
                                 const float *X, const float *W1, int64_t B, int64_t H,
                                 int64_t Fl)
{
    MP_TRY(be->ops->zero(be, scratch, (size_t)(B * Fl) * sizeof(float)));
    MP_TRY(be->ops->gelu_bwd(be, scratch, Hpre, dA, B * Fl));
    return be->ops->linear_bwd(be, dX, dW1, db1, scratch, X, W1, B, H, Fl);
}

mp_status_t mp_mlp_block_residual_bwd(mp_backend_t *be, float *dX, const float *dY, int64_t B,
                                      int64_t H)
{
    if (dX == NULL) {
        return MP_OK;
    }
    return be->ops->axpy(be, dX, 1.0f, dY, B * H);
}

mp_status_t mp_mlp_block_fwd(mp_backend_t *be, float *Y, float *Hpre, float *A, const float *X,
                             const float *W1, const float *b1, const float *W2, const float *b2,
                             int64_t B, int64_t H, int64_t F)
{
    if (B < 0 || H < 0 || F < 0) {
        mp_err("mlp_block_fwd: negative dimension");
        return MP_ERR_INVAL;
    }
    if (Y == X && B * H > 0) {
        mp_err("mlp_block_fwd: Y must not alias X");
        return MP_ERR_INVAL;
    }
    MP_TRY(mp_mlp_block_fc1_fwd(be, Hpre, A, X, W1, b1, B, H, F));
    MP_TRY(mp_mlp_block_fc2_fwd(be, Y, A, W2, B, F, H));
    return mp_mlp_block_residual_fwd(be, Y, X, b2, B, H);
}

mp_status_t mp_mlp_block_bwd(mp_backend_t *be, float *dX, float *dW1, float *db1, float *dW2,
                             float *db2, float *scratch, const float *dY, const float *X,
                             const float *Hpre, float *A, const float *W1, const float *W2,
                             int64_t B, int64_t H, int64_t F)
{
    if (B < 0 || H < 0 || F < 0) {
        mp_err("mlp_block_bwd: negative dimension");
        return MP_ERR_INVAL;
    }
    /* A's storage takes dA once dW2 has consumed A: one [B,F] buffer less. */
    MP_TRY(mp_mlp_block_fc2_bwd(be, A, dW2, db2, dY, A, W2, B, F, H));
    MP_TRY(mp_mlp_block_fc1_bwd(be, dX, dW1, db1, scratch, A, Hpre, X, W1, B, H, F));
    return mp_mlp_block_residual_bwd(be, dX, dY, B, H);
}
