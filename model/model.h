/*
 * model.h - a model instance: a contiguous range of a job spec's layers
 * (the whole model for a serial run, one pipeline stage for a shard),
 * its parameters, gradients and optimizer state in one backend allocation
 * each, and activation slots so that several micro-batches can be in
 * flight at once (one slot per micro-batch in flight).
 *
 * Tensor parallelism (parallel/tpplan.h has the math): a shard model holds
 * exactly its TP rank's block of every parameter (the same values the serial
 * model has there) and runs the plan's collectives through a hook table, so
 * that this file depends on no transport.  Activations entering and leaving
 * a model are always replicated (whole) on every TP rank.
 *
 * Legend: B = rows of a micro-batch, D = width of an activation.
 * All compute goes through the backend table; the caller's thread owns the
 * model (one thread at a time).
 */
#ifndef MP_MODEL_MODEL_H
#define MP_MODEL_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "gpu/backend.h"
#include "model/spec.h"
#include "parallel/tpplan.h"

typedef struct mp_model mp_model_t;

/*
 * The collectives of a TP group, over HOST memory, called in the same order
 * on every rank of the group (the caller's thread).  allreduce_sum sums n
 * floats in place, leaving the same bits on every rank; allgather gathers
 * n_per_rank floats from every rank into out, rank-major (rank r's block at
 * out + r * n_per_rank).  Each returns MP_OK or the error that failed it.
 * For a device backend the model stages through host buffers.
 */
typedef struct {
    mp_status_t (*allreduce_sum)(void *ctx, float *buf, int64_t n);
    mp_status_t (*allgather)(void *ctx, const float *in, float *out, int64_t n_per_rank);
    void *ctx;
} mp_model_coll_t;

/* Creates the layers [first, first + count) of spec on backend be, with
 * `slots` activation slots of up to max_rows rows each.  Parameters are
 * initialized from the counter-based init (train.seed), so any range of
 * layers holds exactly the values a whole-model instance would. */
mp_status_t mp_model_create(mp_backend_t *be, const mp_spec_t *spec, int first, int count,
                            int slots, int64_t max_rows, mp_model_t **model_p);
/*
 * The shard of TP rank tp_rank of the layers [first, first + count): plan is
 * the whole model's plan (mp_tp_plan_build with the job's partition; copied,
 * need not outlive the model) and coll the group's collectives (needed when
 * plan->tp > 1; copied).  plan NULL is mp_model_create: tp = 1, whole
 * tensors.  The range must be one where the plan keeps activations
 * replicated at both ends (a pipeline stage of the partition the plan was
 * built with, or the whole model); MP_ERR_INVAL otherwise.
 */
mp_status_t mp_model_create_shard(mp_backend_t *be, const mp_spec_t *spec, const mp_tp_plan_t *plan,
                                  int first, int count, int tp_rank, const mp_model_coll_t *coll,
                                  int slots, int64_t max_rows, mp_model_t **model_p);
void mp_model_destroy(mp_model_t *model);

int64_t mp_model_in_dim(const mp_model_t *model);
int64_t mp_model_out_dim(const mp_model_t *model);
/* Elements of the model's (local) parameters: the length of mp_model_grads. */
int64_t mp_model_param_count(const mp_model_t *model);
int mp_model_first_layer(const mp_model_t *model);
int mp_model_layer_count(const mp_model_t *model);
/* Bytes of backend memory one activation slot holds (inputs, outputs and
 * saved intermediates of every layer at max_rows rows). */
int64_t mp_model_slot_bytes(const mp_model_t *model);

/* Device buffer of slot's input [max_rows, in_dim]: the caller writes the
 * micro-batch's input here (upload, or a receive) before mp_model_forward. */
float *mp_model_input(mp_model_t *model, int slot);
/* Forward of `rows` rows through the layers; returns the output buffer
 * [rows, out_dim] (owned by the model, valid until the slot is reused). */
mp_status_t mp_model_forward(mp_model_t *model, int slot, int64_t rows, float **out_p);
/* Device buffer for the gradient of the slot's output [rows, out_dim]: the
 * caller writes dL/d(output) here (a receive, or mp_model_loss) before
 * mp_model_backward.  It is zeroed by mp_model_forward. */
float *mp_model_output_grad(mp_model_t *model, int slot);
/* Softmax cross-entropy on the slot's output (the last stage): labels is a
 * device buffer [rows]; adds loss and correct counts to the host outputs
 * (either may be NULL) and writes scale * dL/dlogits into the output grad. */
mp_status_t mp_model_loss(mp_model_t *model, int slot, const int32_t *labels, int64_t rows,
                          float scale, double *loss_sum_p, int64_t *correct_p);
/* Backward of the slot: accumulates parameter gradients; when in_grad_p is
 * not NULL, returns dL/d(input) [rows, in_dim] (owned by the model). */
mp_status_t mp_model_backward(mp_model_t *model, int slot, int64_t rows, float **in_grad_p);
/*
 * The backward in two halves, for schedules that run them as separate
 * actions (zero-bubble): B, the input gradient (what the previous stage
 * waits for), then later W, the weight gradients of the same slot.
 * mp_model_backward_input + mp_model_backward_weight accumulate exactly
 * what mp_model_backward does.  W must run before the slot's next forward.
 */
mp_status_t mp_model_backward_input(mp_model_t *model, int slot, int64_t rows, float **in_grad_p);
mp_status_t mp_model_backward_weight(mp_model_t *model, int slot, int64_t rows);
/* W of n slots (1 to MP_LAYER_FUSE_MAX, rows rows each) at once: what n
 * mp_model_backward_weight calls add, one GEMM per weight over all their
 * rows where the layer kind can (backward_weight_n) and the spec asked for
 * it (parallel.fuse_w: the model then keeps a gather scratch); the sums
 * differ from the per-slot ones only in rounding. */
mp_status_t mp_model_backward_weight_n(mp_model_t *model, const int *slots, int n, int64_t rows);

mp_status_t mp_model_zero_grad(mp_model_t *model);
/* Bytes this model has handed to its TP collectives so far (tests: the
 * vocab-parallel loss never moves the [B, T, V] logits). */
int64_t mp_model_coll_bytes(const mp_model_t *model);
/* The flat gradient buffer (all parameters, in order), e.g. for a DP allreduce. */
float *mp_model_grads(mp_model_t *model);
/* One optimizer step (train.optimizer of the spec); step is 1-based. */
mp_status_t mp_model_step(mp_model_t *model, int64_t step);

/* Parameter access for --save-weights: layer is a spec index in the
 * model's range, param as mp_layer_param_name.  mp_model_param_slice says
 * which block of the full tensor this model holds (the whole tensor when
 * tp = 1); host must hold slice.rows * slice.cols floats, which
 * mp_model_param_download writes row-major. */
mp_status_t mp_model_param_slice(const mp_model_t *model, int layer, int param,
                                 mp_tp_slice_t *slice_p);
mp_status_t mp_model_param_download(mp_model_t *model, int layer, int param, float *host);
/* The reverse, for loading weights (sample, resume): host holds this
 * model's block (slice.rows * slice.cols floats, row-major). */
mp_status_t mp_model_param_upload(mp_model_t *model, int layer, int param, const float *host);

/* Optimizer state of a parameter block, laid out as the block itself:
 * which 0 = SGD momentum buffer or AdamW exp_avg, 1 = AdamW exp_avg_sq.
 * MP_ERR_INVAL when the optimizer keeps no such state (SGD without
 * momentum has none; SGD has no `1`).  For checkpoints. */
bool mp_model_has_state(const mp_model_t *model, int which);
mp_status_t mp_model_state_download(mp_model_t *model, int which, int layer, int param,
                                    float *host);
mp_status_t mp_model_state_upload(mp_model_t *model, int which, int layer, int param,
                                  const float *host);

#endif
