/*
 * layer_env.h - the layout of the model-wide services a layer's compute
 * uses (model/layer.h's mp_layer_env_t); shared by model.c, which fills
 * it, and layer.c, which serves it.  Nobody else.
 */
#ifndef MP_MODEL_LAYER_ENV_H
#define MP_MODEL_LAYER_ENV_H

#include <stdint.h>

#include "model/model.h"

struct mp_layer_env {
    mp_model_coll_t coll; /* the TP group's collectives (tp > 1) */
    float *host_a, *host_b; /* host staging for a device backend's collectives */
    float *scratch;         /* shared scratch (backend memory) */
    float *fuse;            /* backward_weight_n's gathers (backend memory), or NULL */
    int64_t fuse_elems;     /* its floats */
    int64_t coll_bytes;     /* bytes handed to TP collectives, for the vocab-parallel test */
};

#endif
