/*
 * executor.h - a shard executor: the work of one shard (stage, tp rank, dp
 * rank) of a model-parallel job, on the one thread that calls these
 * functions (every call but mp_exec_cancel must come from it: the executor
 * owns a UCX worker, which is single-threaded).
 *
 * Life of an executor, in one process or across daemons:
 *   1. mp_exec_create() on the executor thread: its backend, the model of
 *      its stage's layers and TP slice (parameters initialized by slice),
 *      its UCX worker.  mp_exec_address() gives the worker's address.
 *   2. The addresses of every shard and of the feeder travel to every
 *      executor (a table indexed by global rank, the feeder's last:
 *      mp_engine_geom_t.feeder_rank), however the caller likes.
 *   3. mp_exec_connect(): endpoints to the previous and next stage (same tp
 *      and dp rank; a ring, the last stage's next being the first, when the
 *      stage holds several chunks), the TP group, the DP group and the feeder (first and
 *      last stage); the TP and DP collectives groups.
 *   4. mp_exec_run(): every training step and evaluation of the job, as the
 *      serial trainer orders them (engine/job.h), each step executing the
 *      stage's action list of the job's schedule (parallel/sched.h).  It
 *      calls on_report after each event, from this thread.
 *   5. mp_exec_disconnect() (after peers are done, to let their last
 *      messages flush), mp_exec_param_download() for --save-weights, and
 *      mp_exec_destroy().
 *
 * Every wait is bounded by timeout_ms; a peer that fails or stays silent
 * fails the event with an error naming the peer's rank, and mp_exec_run
 * returns it; mp_exec_cancel() (any thread) makes a running executor stop
 * at its next action or wait with MP_ERR_CANCELLED, a TP or DP collective
 * in progress included (the worker's waits check the flag).
 */
#ifndef MP_ENGINE_EXECUTOR_H
#define MP_ENGINE_EXECUTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "model/ckptw.h"
#include "engine/job.h"
#include "gpu/backend.h"
#include "model/spec.h"
#include "parallel/sched.h"
#include "parallel/tpplan.h"
#include "transport/ucx.h"

typedef struct mp_exec mp_exec_t;

/* One action of the timeline: CLOCK_MONOTONIC nanoseconds. */
typedef struct {
    mp_sched_op_t op;
    int32_t mb; /* micro-batch (evaluation: local chunk), or -1 */
    uint64_t t0_ns, t1_ns;
    int32_t chunk; /* the stage's model chunk (interleaved_1f1b), else 0 */
} mp_exec_span_t;

/* What an executor reports after each event (valid during the callback). */
typedef struct {
    int rank, stage, tp_rank, dp_rank;
    mp_engine_ev_t ev;
    /* Last stage, tp rank 0 only (so that nothing is counted twice): the sum
     * of the per-position losses of this replica's samples, their number
     * (each has geom label_dim positions), and (evaluations) how many
     * positions were classified right. */
    bool has_loss;
    double loss_sum;
    int64_t samples, correct;
    uint64_t t0_ns, t1_ns; /* the event, start to end */
    /* Training steps: every action, in order (busy: FWD, BWD, DP_ALLREDUCE,
     * OPT_STEP; the rest is waiting or posting messages). */
    int nspans;
    const mp_exec_span_t *spans;
} mp_exec_report_t;

typedef void (*mp_exec_report_cb_t)(const mp_exec_report_t *report, void *arg);

typedef struct {
    const mp_spec_t *spec; /* must outlive the executor */
    uint32_t job;          /* job id in tags (low 16 bits) */
    int stage, tp_rank, dp_rank;
    int threads; /* CPU backend threads, >= 1 */
    /* The device: MP_BACKEND_CPU (default), or MP_BACKEND_CUDA on GPU
     * `device` (tf32: allow TF32 GEMMs).  Messages and collectives stage
     * through host buffers when the backend's memory is not host memory,
     * or always with stage_through_host (tests of that path on a CPU). */
    mp_backend_kind_t device_kind;
    int device;
    bool tf32;
    bool stage_through_host;
    int64_t train_n, test_n; /* the data set's sizes (mp_feeder_sizes) */
    int64_t timeout_ms;      /* every wait; <= 0: 30000 */
    mp_exec_report_cb_t on_report;
    void *arg;
    /* A resumed job: the events after training step start_step (its
     * checkpoint's step; load the weights with mp_exec_resume). */
    int64_t start_step;
    /* Checkpoints (model/ckpt.h): with ckpt_dir set and ckpt_every > 0, a
     * shard of DP replica 0 copies its blocks to host memory after every
     * ckpt_every-th step and its writer thread writes them; on_checkpoint
     * (with arg, from the writer thread) says when the file is durable or
     * why it is not.  The run waits for the last write before it returns. */
    const char *ckpt_dir;
    int64_t ckpt_every;
    mp_ckptw_done_cb_t on_checkpoint;
} mp_exec_opts_t;

/* What an executor is doing right now, for the live wait-for graph
 * (mpar-client waits): its thread publishes it with a few relaxed atomic
 * stores per action and wait, any thread samples it (mp_exec_probe). */
typedef enum {
    MP_EXEC_PHASE_SETUP = 0, /* created, not running yet (connecting, waiting for peers) */
    MP_EXEC_PHASE_TRAIN,     /* a training step */
    MP_EXEC_PHASE_EVAL,      /* an evaluation */
    MP_EXEC_PHASE_DONE,      /* mp_exec_run returned */
} mp_exec_phase_t;

typedef enum {
    MP_EXEC_WAIT_NONE = 0, /* computing (or between actions) */
    MP_EXEC_WAIT_INPUT,    /* an input micro-batch from the feeder */
    MP_EXEC_WAIT_ACT,      /* an activation from the previous stage */
    MP_EXEC_WAIT_GRAD,     /* a gradient from the next stage */
    MP_EXEC_WAIT_LABELS,   /* labels from the feeder */
    MP_EXEC_WAIT_SEND,     /* a send to peer to complete (its receiver) */
    MP_EXEC_WAIT_TP,       /* a TP collective of its group */
    MP_EXEC_WAIT_DP,       /* the DP gradient allreduce of its group */
    MP_EXEC_WAIT_FEEDER,   /* the feeder to take the end-of-event token */
} mp_exec_wait_t;

typedef struct {
    mp_exec_phase_t phase;
    int op;       /* the mp_sched_op_t of the current action, -1 none */
    int mb;       /* its micro-batch, or -1 */
    int64_t step; /* the current event's 1-based step */
    mp_exec_wait_t wait;
    int peer; /* the global rank waited on (the feeder's is geom.feeder_rank); -1: a group */
    uint64_t since_ns; /* CLOCK_MONOTONIC: when the wait, or else the action, began */
    uint64_t bytes_sent, bytes_received; /* the worker's payload bytes so far */
} mp_exec_probe_t;

/* Any thread, while the executor exists.  A consistent snapshot. */
void mp_exec_probe(const mp_exec_t *exec, mp_exec_probe_t *probe_p);
/* "activation", "gradient", ...; "" for MP_EXEC_WAIT_NONE. */
const char *mp_exec_wait_name(mp_exec_wait_t wait);

/* On the executor thread.  err says why on failure. */
mp_status_t mp_exec_create(mp_xport_ctx_t *ctx, const mp_exec_opts_t *opts, mp_exec_t **exec_p,
                           mp_errbuf_t *err);
/* The worker's address (mp_free it) and this shard's global rank. */
mp_status_t mp_exec_address(mp_exec_t *exec, void **addr_p, size_t *len_p);
int mp_exec_rank(const mp_exec_t *exec);
const mp_engine_geom_t *mp_exec_geom(const mp_exec_t *exec);

/* addrs[r], lens[r]: the worker address of global rank r, for r in
 * 0..nranks (the feeder last); entries this shard does not talk to may be
 * NULL. */
mp_status_t mp_exec_connect(mp_exec_t *exec, const void *const *addrs, const size_t *lens,
                            mp_errbuf_t *err);
mp_status_t mp_exec_run(mp_exec_t *exec, mp_errbuf_t *err);
/* Any thread. */
void mp_exec_cancel(mp_exec_t *exec);
/* Closes the endpoints and groups (bounded flush). */
void mp_exec_disconnect(mp_exec_t *exec);

/* This shard's block of parameter `param` of spec layer `layer` (a layer of
 * one of its stage's chunks): *slice_p says where it sits in the full tensor; host holds
 * slice rows * cols floats. */
mp_status_t mp_exec_param_download(mp_exec_t *exec, int layer, int param, float *host,
                                   mp_tp_slice_t *slice_p);
/* Loads this shard's blocks (parameters and optimizer state) from the
 * checkpoint of step opts.start_step in dir, whatever grid wrote it; before
 * mp_exec_run.  A model that differs from the checkpoint's is MP_ERR_SPEC
 * naming the field. */
mp_status_t mp_exec_resume(mp_exec_t *exec, const char *dir, mp_errbuf_t *err);
/* Nanoseconds training stood still for checkpoints so far (the copies to
 * host memory and any wait for the writer), and how many were taken. */
uint64_t mp_exec_ckpt_pause_ns(const mp_exec_t *exec, int64_t *count_p);
/* Backend bytes of one activation slot, and the number of slots. */
int64_t mp_exec_slot_bytes(const mp_exec_t *exec);
int mp_exec_slots(const mp_exec_t *exec);
void mp_exec_destroy(mp_exec_t *exec);

#endif
