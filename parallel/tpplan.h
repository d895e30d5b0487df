/*
 * tpplan.h - the tensor-parallel plan of a model: for every layer, how it
 * splits across a TP group of `tp` ranks, which collective follows its
 * forward and its backward, and which block of every parameter each rank
 * holds.  Pure data and functions, no I/O; any thread.
 *
 * The math (the seed's two splits of Z = X·W, W stored [in, out]):
 *
 *  Column-parallel: W = [W_0, W_1, ...] split by columns (rank r holds
 *    columns [r*O/tp, (r+1)*O/tp) of W and of b).  Every rank holds the whole
 *    X and computes Z_r = X·W_r + b_r, its block of columns of
 *    Z = X·[W_0, W_1] = [X·W_0, X·W_1].  Either an AllGather along the
 *    column axis rebuilds the whole Z on every rank (fwd_post ALLGATHER), or
 *    Z stays sharded for a following row-parallel linear that consumes the
 *    shards directly (gelu/relu between them act on the shards, being
 *    elementwise).  Backward: dW_r = X^T·dZ_r and db_r = sum_rows dZ_r are
 *    local; dX = dZ·W^T = sum_r dZ_r·W_r^T is a sum of partial products, so
 *    an AllReduce follows (bwd_post ALLREDUCE).  If Z was all-gathered, the
 *    incoming dZ is the whole gradient, identical on every rank, and each
 *    rank takes its own columns (bwd_pre SLICE): the conjugate of an
 *    AllGather of identical-gradient inputs is a slice, no communication.
 *
 *  Row-parallel: W = [W_0; W_1; ...] split by rows (rank r holds rows
 *    [r*I/tp, (r+1)*I/tp) of W) and X by columns the same way, so
 *    Z = [X_0, X_1]·[W_0; W_1] = X_0·W_0 + X_1·W_1.  Each rank computes the
 *    partial X_r·W_r, an AllReduce sums them (fwd_post ALLREDUCE), and then
 *    EVERY rank adds the whole bias b to the sum (bias_after_reduce): b is
 *    replicated, each rank holds all of it, and it is counted once because
 *    it is added after, not before, the sum.  If X arrives replicated (no
 *    column-parallel layer before), each rank first takes its own columns
 *    of X (fwd_pre SLICE, no communication).  Backward: the incoming dZ is
 *    replicated, so dW_r = X_r^T·dZ and db = sum_rows dZ (the same on every
 *    rank) need no communication; dX_r = dZ·W_r^T is this rank's block of
 *    columns of dX, which stays sharded when X arrived sharded, and is
 *    all-gathered (bwd_post ALLGATHER) when X arrived replicated.
 *
 *  mlp_block: y = x + gelu(x·W1 + b1)·W2 + b2 is column (fc1) -> gelu on
 *    the shards -> row (fc2), the Megatron MLP: x replicated, rank r holds
 *    columns of W1 and b1 and rows of W2 (all [r*F/tp, (r+1)*F/tp)), and
 *    the whole b2.  Forward: the partial gelu(x·W1_r + b1_r)·W2_r is
 *    all-reduced, then every rank adds b2 and the residual x.  Backward: dy
 *    is replicated; db2 = sum dy, dW2_r, dW1_r, db1_r are local; the partial
 *    d(x·W1)·W1_r^T is all-reduced and then every rank adds the residual's
 *    dy (bwd_post ALLREDUCE, residual added after the sum).
 *
 *  Replicated: the whole layer on every rank, identical values and
 *    gradients, no communication.
 *
 * Invariants the engine relies on: a replicated activation is identical on
 * every TP rank, and so is its gradient; a sharded activation (always along
 * the feature axis, evenly: rank r holds columns [r*n/tp, (r+1)*n/tp)) has a
 * sharded gradient.  Parameters marked replicated have identical gradients
 * on every TP rank, so nothing is reduced across TP; DP reduces every rank's
 * parameters with the same TP rank of the other replicas.  An ALLGATHER
 * concatenates along the feature axis: a transport allgather delivers
 * rank-major blocks [tp][B x n/tp] that the engine interleaves into [B x n].
 * The AllReduce must leave bitwise-identical sums on every rank (a ring
 * reduce-scatter then allgather does), so that replicated parameters, updated
 * by identical gradients, never drift apart.
 *
 * Which layers split (DESIGN.md):
 *  - mlp_block: always, as above; tp must divide its ffn.
 *  - linear with "tp": "column" | "row" | "replicate": as forced; column
 *    needs tp | out, row needs tp | in.
 *  - linear with no "tp" (auto): row-parallel when the activation arriving
 *    is sharded (the previous column-parallel linear chose to pair with it,
 *    below); otherwise column-parallel when tp | out, replicated when not.
 *  - pairing: a column-parallel linear keeps its output sharded when, after
 *    zero or more gelu/relu layers, the next layer is a linear in the same
 *    stage that is auto or forced "row"; that linear becomes row-parallel.
 *    Otherwise (next is an mlp_block, a linear forced column or replicate,
 *    the end of the stage, or the end of the model, whose loss needs whole
 *    logits) the column-parallel linear all-gathers its own output.  So
 *    activations crossing a stage boundary are always replicated.
 *  - gelu/relu act on whatever layout arrives.
 *  - with tp = 1 every linear is replicated and no collective is planned.
 */
#ifndef MP_PARALLEL_TPPLAN_H
#define MP_PARALLEL_TPPLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "model/spec.h"
#include "parallel/partition.h"

typedef enum {
    MP_TP_LAYOUT_REPLICATED = 0, /* whole activation on every rank */
    MP_TP_LAYOUT_SHARDED,        /* rank r holds feature columns [r*n/tp, (r+1)*n/tp) */
} mp_tp_layout_t;

/* How a layer runs across the TP group. */
typedef enum {
    MP_TP_SPLIT_REPLICATE = 0, /* linear: whole layer on every rank */
    MP_TP_SPLIT_COLUMN,        /* linear: W and b split by columns */
    MP_TP_SPLIT_ROW,           /* linear: W split by rows, b replicated */
    MP_TP_SPLIT_MLP,           /* mlp_block: fc1 column, gelu, fc2 row */
    MP_TP_SPLIT_ELEMENTWISE,   /* gelu, relu: act on the layout that arrives */
    MP_TP_SPLIT_VOCAB,         /* embedding: token rows split by vocab, positions replicated */
    MP_TP_SPLIT_HEADS,         /* transformer_block: heads and ffn split, LayerNorms replicated */
} mp_tp_split_t;

/* A step around a layer's compute. */
typedef enum {
    MP_TP_COMM_NONE = 0,
    MP_TP_COMM_SLICE,     /* take this rank's feature columns of a replicated tensor; local */
    MP_TP_COMM_ALLGATHER, /* concatenate the ranks' feature columns; result replicated */
    MP_TP_COMM_ALLREDUCE, /* sum the ranks' partial tensors; result replicated */
} mp_tp_comm_t;

/* The block of a parameter's full (serial) tensor that one rank holds. */
typedef struct {
    int64_t full_rows, full_cols;   /* weight [in, out]; bias [1, out] */
    int64_t row0, rows, col0, cols; /* block [row0, row0+rows) x [col0, col0+cols) */
    bool replicated;                /* every TP rank holds the whole tensor */
    /* A block of columns in `parts` pieces (0 or 1: one piece): local
     * columns [k*w, (k+1)*w), w = cols / parts, are full columns
     * [col0 + k*part_stride, col0 + k*part_stride + w).  A transformer
     * block's qkv holds its heads' columns of each of Q, K and V so. */
    int parts;
    int64_t part_stride;
} mp_tp_slice_t;

/* The full column of local column j of a slice. */
static inline int64_t mp_tp_slice_full_col(const mp_tp_slice_t *s, int64_t j)
{
    if (s->parts <= 1) {
        return s->col0 + j;
    }
    int64_t w = s->cols / s->parts;
    return s->col0 + (j / w) * s->part_stride + j % w;
}

/* Copies a rank's block blk [rows, cols] into its place in the full tensor
 * full [full_rows, full_cols] (scatter), or back out of it (extract). */
void mp_tp_slice_scatter(const mp_tp_slice_t *s, const float *blk, float *full);
void mp_tp_slice_extract(const mp_tp_slice_t *s, const float *full, float *blk);

#define MP_TP_MAX_PARAMS MP_SPEC_MAX_PARAMS

/* One layer's plan; the same on every rank of the TP group. */
typedef struct {
    mp_layer_kind_t kind;
    mp_layer_spec_t layer;       /* the spec's layer (its kind's fields) */
    mp_tp_split_t split;
    int64_t in_dim, out_dim;     /* full widths, as in the serial model */
    int64_t ffn;                 /* mlp_block: full ffn width; else 0 */
    mp_tp_layout_t in_layout;    /* X as it arrives */
    mp_tp_layout_t out_layout;   /* Y as it leaves, after fwd_post */
    int64_t in_local, out_local; /* per-rank widths of X as it arrives and Y as it leaves */
    /* Per-rank width of the split dimension: column: out/tp; row: in/tp;
     * mlp: ffn/tp; replicate: out; elementwise: in_local. */
    int64_t split_local;
    mp_tp_comm_t fwd_pre;  /* NONE, or SLICE (row-parallel on a replicated X) */
    mp_tp_comm_t fwd_post; /* NONE, ALLGATHER (column), ALLREDUCE (row, mlp) */
    mp_tp_comm_t bwd_pre;  /* NONE, or SLICE (dY of an all-gathered Y) */
    mp_tp_comm_t bwd_post; /* NONE, ALLREDUCE (column, mlp), ALLGATHER (sliced row) */
    /* Row, mlp fc2: the whole bias is added on every rank after fwd_post
     * (NONE at tp = 1), not with the matmul.  An mlp_block's residual x is
     * likewise added after fwd_post, and its dy after bwd_post. */
    bool bias_after_reduce;
    bool needs_dx; /* false for layer 0: nothing consumes dX of the input */
    int nparams;   /* linear 2, mlp_block 4, embedding 2, layernorm 2, transformer_block 12 */
} mp_tp_layer_t;

typedef struct {
    int tp;
    int nlayers;
    /* A sequence model's head at tp > 1: the last linear is column-parallel
     * over the vocab, its logits stay sharded, and the loss is the
     * vocab-parallel cross-entropy (no [B, T, V] gather). */
    bool vocab_parallel_loss;
    mp_tp_layer_t layer[MP_SPEC_MAX_LAYERS];
} mp_tp_plan_t;

/*
 * Plans spec's layers for TP degree spec->parallel.tp.  `part` (NULL: the
 * whole model is one stage) keeps a sharded activation from crossing a
 * stage boundary.  Refuses with MP_ERR_SPEC and the field path: a tp below
 * 1, an mlp_block whose ffn tp does not divide ("parallel.tp: 3 does not
 * divide model.layers[2].ffn = 2048"), a forced split that cannot hold, a
 * "tp" on a layer other than linear.  The plan is large (tens of KiB): the
 * caller provides it, heap or static.
 */
mp_status_t mp_tp_plan_build(const mp_spec_t *spec, const mp_part_t *part, mp_tp_plan_t *plan_p,
                             mp_errbuf_t *err);

/*
 * The block of parameter `param` of `layer` held by TP rank `tp_rank`
 * (param order as mp_layer_param_name: weight, bias; fc1.weight, fc1.bias,
 * fc2.weight, fc2.bias).  MP_ERR_INVAL for an index out of range.
 */
mp_status_t mp_tp_param_slice(const mp_tp_plan_t *plan, int layer, int param, int tp_rank,
                              mp_tp_slice_t *slice_p);

/* Feature columns [*col0_p, *col0_p + *cols_p) of an n-wide activation
 * held by tp_rank when sharded (n must divide by tp). */
void mp_tp_shard_range(int64_t n, int tp, int tp_rank, int64_t *col0_p, int64_t *cols_p);

/*
 * Writes the plan as text, one line per layer, e.g.
 * "layer 4 linear 512->256: column, in replicated, out sharded, fwd none/none,
 * bwd none/allreduce" (fwd pre/post, bwd pre/post).  Like snprintf: returns
 * the length of the whole text, writes at most len bytes, NUL-terminated
 * when len > 0.
 */
size_t mp_tp_plan_format(const mp_tp_plan_t *plan, char *buf, size_t len);

const char *mp_tp_split_name(mp_tp_split_t split);
const char *mp_tp_comm_name(mp_tp_comm_t comm);
const char *mp_tp_layout_name(mp_tp_layout_t layout);

#endif
