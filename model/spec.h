/*
 * spec.h - the job spec (DESIGN.md "Job spec"): parsed from JSON with
 * jansson and validated in full before anything starts.  Every error names
 * the JSON path of the bad field and what was expected; unknown fields are
 * errors; malformed JSON reports line and column.  Pure; any thread.
 */
#ifndef MP_MODEL_SPEC_H
#define MP_MODEL_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum {
    MP_LAYER_LINEAR = 0,
    MP_LAYER_GELU,
    MP_LAYER_RELU,
    MP_LAYER_MLP_BLOCK,
    MP_LAYER_EMBEDDING,         /* token + position embedding (first layer only) */
    MP_LAYER_LAYERNORM,         /* torch.nn.LayerNorm over the last axis */
    MP_LAYER_TRANSFORMER_BLOCK, /* GPT-2 pre-LN block: causal attention + MLP */
} mp_layer_kind_t;

/* How a layer splits across a TP group (DESIGN.md "Which layers split"). */
typedef enum {
    MP_TP_AUTO = 0, /* as given in the spec: not set */
    MP_TP_COLUMN,
    MP_TP_ROW,
    MP_TP_REPLICATE,
} mp_tp_mode_t;

typedef enum {
    MP_DATA_FASHION_MNIST = 0,
    MP_DATA_SYNTHETIC,
    MP_DATA_TEXT, /* "text": any file's bytes as tokens (data.path) */
    MP_DATA_KJV,  /* "kjv": the King James Bible of Debian's bible-kjv, as text */
} mp_data_kind_t;
typedef enum {
    MP_SCHED_NAIVE = 0,
    MP_SCHED_GPIPE,
    MP_SCHED_1F1B,
    MP_SCHED_ZERO_BUBBLE,      /* ZB-H1: backward split into B (input grad) and W (weight grad) */
    MP_SCHED_INTERLEAVED_1F1B, /* Megatron's virtual pipeline: parallel.virtual_stages chunks */
} mp_sched_kind_t;
typedef enum {
    MP_PART_UNIFORM = 0,
    MP_PART_BALANCED, /* by the FLOP model */
    MP_PART_EXPLICIT,
    MP_PART_MEASURED, /* by costs measured at job start (engine/calib.h); the default */
} mp_part_kind_t;
typedef enum { MP_OPTIM_SGD = 0, MP_OPTIM_ADAMW } mp_optim_kind_t;

typedef struct {
    mp_layer_kind_t kind;
    int64_t out;        /* linear: "out" */
    int64_t hidden;     /* mlp_block: "hidden" (must equal its input width) */
    int64_t ffn;        /* mlp_block: "ffn" */
    mp_tp_mode_t tp;    /* linear: "tp" if given, else MP_TP_AUTO */
    int64_t vocab;      /* embedding: "vocab" */
    int64_t dim;        /* embedding: "dim" */
    int64_t max_seq;    /* embedding: "max_seq" */
    int64_t heads;      /* transformer_block: "heads" (its "ffn" is in ffn) */
    /* Derived by validation: the width entering and leaving this layer. */
    int64_t in_dim;
    int64_t out_dim;
} mp_layer_spec_t;

#define MP_SPEC_MAX_LAYERS 256
#define MP_SPEC_MAX_PARAMS 12 /* parameter tensors of one layer (transformer_block: 12) */
#define MP_SPEC_MAX_STAGES 64
#define MP_SPEC_MAX_FUSE_W 32 /* parallel.fuse_w */

typedef struct {
    char name[128];
    struct {
        int64_t input; /* per-position input width (1 token id for an embedding) */
        /* Positions per sample, T: data.block_size for text, 1 otherwise.
         * Activations are [B, T, C], stored as B*T rows of C. */
        int64_t seq;
        int nlayers;
        mp_layer_spec_t layers[MP_SPEC_MAX_LAYERS];
    } model; /* "loss" must be "softmax_xent", the only loss */
    struct {
        mp_data_kind_t kind;
        char path[1024];      /* "path"; default /usr/share/datasets/fashion-mnist */
        int64_t samples;      /* synthetic: "samples" */
        int64_t test_samples; /* synthetic: "test_samples", 0 = no test split */
        int64_t classes;      /* synthetic: "classes"; fashion-mnist: 10 */
        uint64_t seed;        /* synthetic: "seed" */
        int64_t block_size;   /* text, kjv: "block_size" (T) */
    } data;
    struct {
        int pp, tp, dp;       /* default 1 each */
        int micro_batches;    /* default 1 */
        int virtual_stages;   /* chunks per stage (interleaved_1f1b), default 1 */
        int fuse_w; /* zero_bubble: micro-batches whose W one GEMM takes, 1 (default) to
                     * MP_SPEC_MAX_FUSE_W */
        mp_sched_kind_t schedule; /* default 1f1b */
        mp_part_kind_t partition; /* "partition": "measured" (default) | "balanced" | "uniform" */
        int nstages_explicit;     /* "stages": [layers per stage, ...] (sets MP_PART_EXPLICIT) */
        int stage_layers[MP_SPEC_MAX_STAGES];
    } parallel;
    struct {
        int64_t batch_size; /* global batch */
        int64_t epochs;     /* default 1 */
        int64_t steps;      /* -1 when not given: whole epochs */
        mp_optim_kind_t optimizer;
        double lr;
        double momentum, dampening, weight_decay; /* weight_decay default: 0 sgd, 0.01 adamw */
        bool nesterov;
        double beta1, beta2, eps; /* 0.9, 0.999, 1e-8 */
        uint64_t seed;            /* default 1 */
        bool shuffle;             /* default true */
        int64_t max_restarts;     /* "max_restarts": restarts after a failure, default 0 */
    } train;
    /* "checkpoint" (DESIGN.md "Checkpoints and restarts"); enabled when given. */
    struct {
        bool enabled;
        char dir[1024];      /* "dir": relative to the spec's folder (the client resolves it) */
        int64_t every_steps; /* "every_steps" */
        int64_t keep;        /* "keep", default 2 */
    } checkpoint;
} mp_spec_t;

/* Parses and validates a spec from JSON text.  On error, err->msg is the one
 * line shown to the user, e.g. "parallel.tp: 3 does not divide
 * model.layers[2].ffn = 2048", and the status is MP_ERR_SPEC. */
mp_status_t mp_spec_parse(const char *json, size_t len, mp_spec_t **spec_p, mp_errbuf_t *err);
/* Reads `path` and parses it; a missing file is MP_ERR_IO naming the file. */
mp_status_t mp_spec_load(const char *path, mp_spec_t **spec_p, mp_errbuf_t *err);
void mp_spec_free(mp_spec_t *spec);

/* Number of parameter tensors of a layer (linear 2, mlp_block 4, others 0)
 * and their names ("weight", "fc1.bias", ...) for --save-weights. */
int mp_layer_nparams(const mp_layer_spec_t *layer);
const char *mp_layer_param_name(const mp_layer_spec_t *layer, int param);
/* Full (unsharded) shape of parameter `param`: rows x cols (bias: 1 x n). */
void mp_layer_param_shape(const mp_layer_spec_t *layer, int param, int64_t *rows_p,
                          int64_t *cols_p);
const char *mp_layer_kind_name(mp_layer_kind_t kind);
const char *mp_sched_kind_name(mp_sched_kind_t kind);

#endif
