/*
 * layer.h - the table of layer kinds (DESIGN.md "Folders": each variant one
 * file behind one table of operations, as gpu/backend.h does for
 * backends).  A kind is one file in model/layers/ that fills one
 * mp_layer_ops_t, plus its line in model/layer.c's registry.  The table
 * says everything the rest of mpar needs to know about a kind:
 *
 *  - spec: its JSON keys, the check of its fields and the width it
 *    produces (model/spec.c and parallel/ walk every kind through these);
 *  - parameters: names, full (serial) shapes, initialization, FLOPs;
 *  - TP: its plan (how it splits, which collective follows its forward and
 *    its backward) and which block of each parameter a TP rank holds;
 *  - compute: the activations it saves per slot, forward, and backward in
 *    two halves, B (the input gradient) and W (the weight gradients), so
 *    that a schedule can run them as separate actions (zero-bubble).
 *
 * Activations are [B, T, C] stored as R = B*T rows of C (T = spec
 * model.seq; 1 for models without a sequence axis).  Compute hooks run on
 * the thread that owns the model; the rest is pure.
 *
 * Legend: R = rows (B*T tokens), I = in width, O = out width, T = positions.
 */
#ifndef MP_MODEL_LAYER_H
#define MP_MODEL_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "gpu/backend.h"
#include "model/spec.h"
#include "parallel/tpplan.h"

#define MP_LAYER_MAX_PARAMS MP_TP_MAX_PARAMS
#define MP_LAYER_FUSE_MAX MP_SPEC_MAX_FUSE_W /* most slots one backward_weight_n takes */

/* An integer field of a kind's JSON object, stored in mp_layer_spec_t. */
typedef struct {
    const char *key;
    size_t offset; /* offsetof(mp_layer_spec_t, field), an int64_t */
    bool required;
} mp_layer_key_t;

typedef enum { MP_INIT_UNIFORM = 0, MP_INIT_NORMAL, MP_INIT_CONST } mp_init_kind_t;

/* How a parameter's full tensor is drawn: U(-a, a), N(0, a^2) or all a. */
typedef struct {
    mp_init_kind_t kind;
    float a;
} mp_layer_init_t;

typedef struct mp_layer mp_layer_t;

/* The model-wide services a layer's compute uses: the TP group's
 * collectives (host staging for device backends) and shared scratch. */
typedef struct mp_layer_env mp_layer_env_t;

/* What a kind's TP plan hook sees: the whole spec (a linear looks ahead to
 * pair with the next layer), the stage partition (NULL: one stage), the
 * layer's index, the TP degree and the layout of the arriving activation. */
typedef struct {
    const mp_spec_t *spec;
    const mp_part_t *part;
    int index;
    int tp;
} mp_layer_plan_ctx_t;

typedef struct mp_layer_ops {
    const char *name; /* the spec's "type" */
    mp_layer_kind_t kind;

    /* ---- spec ---- */
    const mp_layer_key_t *keys; /* integer fields; "type" (and "tp" when takes_tp) implied */
    int nkeys;
    bool takes_tp; /* accepts "tp": "column" | "row" | "replicate" */
    /* Validates the parsed fields of layer `index` entering with width in
     * (in_from names where that width comes from, for messages) and writes
     * the width it produces.  Errors name the field's JSON path. */
    mp_status_t (*check)(const mp_layer_spec_t *l, int index, int64_t in, const char *in_from,
                         int64_t *out_p, mp_errbuf_t *err);

    /* ---- parameters ---- */
    int nparams;
    const char *const *param_names;
    /* Full (serial) shape of param p as rows x cols (a vector: 1 x n). */
    void (*param_shape)(const mp_layer_spec_t *l, int p, int64_t *rows_p, int64_t *cols_p);
    mp_layer_init_t (*param_init)(const mp_layer_spec_t *l, int p);
    /* Forward FLOPs per token (per row), for balanced partitioning. */
    double (*flops)(const mp_layer_spec_t *l, int64_t in, int64_t out, int64_t seq);

    /* ---- tensor parallelism ---- */
    /* Fills the kind's part of *pl (split, local widths, collectives,
     * nparams); pl arrives with kind, dims, in_layout and needs_dx set,
     * out_layout replicated and no collectives.  Refuses a TP degree the
     * kind cannot split by, naming the field. */
    mp_status_t (*plan)(const mp_layer_plan_ctx_t *ctx, mp_tp_layer_t *pl, mp_errbuf_t *err);
    /* The block of param p that TP rank `rank` of `tp` holds. */
    void (*param_slice)(const mp_tp_layer_t *pl, const mp_layer_spec_t *l, int p, int tp,
                        int rank, mp_tp_slice_t *slice_p);

    /* ---- compute (all optional for parameterless kinds but forward) ---- */
    /* Floats this layer saves per slot for R rows (its input and output are
     * kept by the model), and shared scratch it needs for R rows. */
    int64_t (*saved_elems)(const mp_layer_t *L, int64_t R);
    int64_t (*scratch_elems)(const mp_layer_t *L, int64_t R);
    /* y [R, out_local] from x [R, in_local]; y is overwritten.  saved is
     * this slot's saved area (saved_elems(R_max) floats). */
    mp_status_t (*forward)(mp_layer_t *L, float *saved, const float *x, float *y, int64_t R);
    /* B: dx [R, in_local] += d/dx (dx NULL: nobody needs it, but the layer
     * still keeps in `saved` whatever its W half needs). */
    mp_status_t (*backward_input)(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                  float *dx, int64_t R);
    /* W: the parameter gradients += (after this slot's B). */
    mp_status_t (*backward_weight)(mp_layer_t *L, float *saved, const float *x, const float *dy,
                                   int64_t R);
    /* W of n slots (2 <= n <= MP_LAYER_FUSE_MAX) of R rows each at once:
     * the gradients n backward_weight calls add, from one GEMM per weight
     * over the slots' rows gathered into the fuse scratch, so that each
     * weight gradient is read and written once for n micro-batches
     * (zero_bubble's parallel.fuse_w).  Optional: NULL, the model calls
     * backward_weight per slot. */
    mp_status_t (*backward_weight_n)(mp_layer_t *L, int n, float *const *saved,
                                     const float *const *x, const float *const *dy, int64_t R);
    /* Floats per row of its widest mp_layer_wgrad_n (k + o): what the
     * model's fuse scratch holds per row of each of fuse_w slots.  With
     * backward_weight_n. */
    int64_t (*fuse_row_elems)(const mp_layer_t *L);
} mp_layer_ops_t;

/* One layer of a model instance: what its compute hooks see. */
struct mp_layer {
    const mp_layer_ops_t *ops;
    const mp_layer_spec_t *spec;
    mp_tp_layer_t plan;
    int index;        /* in the spec's model.layers */
    int tp, tp_rank;  /* TP group */
    int64_t seq;      /* T */
    mp_backend_t *be;
    mp_layer_env_t *env;
    float *P[MP_LAYER_MAX_PARAMS]; /* this rank's parameter blocks (backend memory) */
    float *G[MP_LAYER_MAX_PARAMS]; /* their gradients */
    mp_tp_slice_t slice[MP_LAYER_MAX_PARAMS];
    int64_t split_col0; /* first full column/row of this rank's share of the split width */
};

/* The kind's table; NULL for an unknown kind or name. */
const mp_layer_ops_t *mp_layer_ops(mp_layer_kind_t kind);
const mp_layer_ops_t *mp_layer_ops_by_name(const char *name);
/* Names of every registered kind, for "expected one of" messages. */
int mp_layer_kind_names(const char *const **names_p);

/* ---- services for the kinds' compute (model/layer.c) ---- */

/* In place over the TP group: buf (n floats, backend memory) becomes the
 * sum; a no-op at tp = 1. */
mp_status_t mp_layer_allreduce(mp_layer_t *L, float *buf, int64_t n);
/* out [R, c*tp] = the ranks' in [R, c] side by side along the feature axis. */
mp_status_t mp_layer_allgather_cols(mp_layer_t *L, const float *in, float *out, int64_t R,
                                    int64_t c);
/* dst [R, cols] = columns [col0, col0 + cols) of src [R, n]. */
mp_status_t mp_layer_copy_cols(mp_layer_t *L, float *dst, const float *src, int64_t R, int64_t n,
                               int64_t col0, int64_t cols);
/* The shared scratch (scratch_elems floats at the model's max rows). */
float *mp_layer_scratch(mp_layer_t *L);
/* backward_weight_n's GEMM: the weight gradient of a linear map over n
 * slots' rows at once, gw [k, o] += sum_j x[j]^T dz[j] and gb [o] (NULL:
 * none) += the column sums of every dz[j], for x[j] [R, k] and dz[j]
 * [R, o]: one linear_bwd over the rows gathered into the model's fuse
 * scratch (fuse_w slots' rows of the widest fuse_row_elems), so that gw is
 * read and written once for the n micro-batches; slot by slot when the
 * model has no fuse scratch (fuse_w 1). */
mp_status_t mp_layer_wgrad_n(mp_layer_t *L, int n, const float *const *x,
                             const float *const *dz, int64_t R, int64_t k, int64_t o, float *gw,
                             float *gb);

/* The registered kinds (model/layers/). */
extern const mp_layer_ops_t mp_layer_linear;
extern const mp_layer_ops_t mp_layer_gelu;
extern const mp_layer_ops_t mp_layer_relu;
extern const mp_layer_ops_t mp_layer_mlp_block;
extern const mp_layer_ops_t mp_layer_embedding;
extern const mp_layer_ops_t mp_layer_layernorm;
extern const mp_layer_ops_t mp_layer_transformer_block;

#endif
