/*
 * optim_scalars.h - the scalars of one optimizer step, computed once for
 * both backends (backend_cpu.c, backend_cuda.c) the way torch.optim computes
 * them, so that the CPU and CUDA steps cannot drift apart.  Header-only:
 * the CUDA backend is a separate shared library that links nothing of
 * mp_gpu.  Pure functions; any thread.
 */
#ifndef MP_GPU_OPTIM_SCALARS_H
#define MP_GPU_OPTIM_SCALARS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu/backend.h"

/*
 * torch.optim computes its scalars (1 - lr*wd, 1 - beta1**t, ...) in Python
 * doubles from the decimal hyper-parameters the user wrote, while
 * mp_optim_hp_t carries floats.  The shortest decimal that rounds back to
 * the float is what the user wrote (0.9f -> 0.9), so the scalars computed
 * from it match PyTorch's before they are rounded to float for the kernel.
 */
static inline double mp_optim_hp_decimal(float f)
{
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, (double)f);
        double d = strtod(buf, NULL);
        if ((float)d == f) {
            return d;
        }
    }
    return (double)f;
}

/* SGD: 1 - dampening, the weight of the new gradient in the momentum buffer. */
static inline float mp_optim_sgd_one_minus_damp(const mp_optim_hp_t *hp)
{
    return (float)(1.0 - mp_optim_hp_decimal(hp->dampening));
}

/* AdamW (_single_tensor_adamw): Python's doubles rounded to float. */
typedef struct {
    float decay;                  /* 1 - lr*wd */
    float beta1, one_minus_beta1; /* one_minus_beta1: also torch's CUDA lerp weight */
    float beta2, one_minus_beta2;
    float step_size; /* lr / (1 - beta1^t) */
    float bc2_sqrt;  /* sqrt(1 - beta2^t) */
    float eps;
} mp_optim_adamw_scalars_t;

static inline mp_optim_adamw_scalars_t mp_optim_adamw_scalars(const mp_optim_hp_t *hp)
{
    double lr = mp_optim_hp_decimal(hp->lr), wd = mp_optim_hp_decimal(hp->weight_decay);
    double b1 = mp_optim_hp_decimal(hp->beta1), b2 = mp_optim_hp_decimal(hp->beta2);
    double t = (double)hp->step;
    double bc1 = 1.0 - pow(b1, t);
    double bc2 = 1.0 - pow(b2, t);
    mp_optim_adamw_scalars_t k = {
        .decay = (float)(1.0 - lr * wd),
        .beta1 = (float)b1,
        .one_minus_beta1 = (float)(1.0 - b1),
        .beta2 = (float)b2,
        .one_minus_beta2 = (float)(1.0 - b2),
        .step_size = (float)(lr / bc1),
        .bc2_sqrt = (float)sqrt(bc2),
        .eps = (float)mp_optim_hp_decimal(hp->eps),
    };
    return k;
}

#endif
