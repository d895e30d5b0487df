/*
 * local.h - a whole model-parallel job in ONE process: one thread per
 * shard (pp x tp x dp executors) plus the feeder's, all over real UCX
 * workers of one context, with the addresses exchanged in memory.  This is
 * what the daemons run split across processes; here it proves the math
 * against the serial trainer and measures the pipeline.  Blocks the
 * calling thread (never a libuv thread).
 */
#ifndef MP_ENGINE_LOCAL_H
#define MP_ENGINE_LOCAL_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/calib.h"
#include "engine/executor.h"
#include "model/spec.h"
#include "model/train.h"

typedef struct {
    int threads; /* CPU backend threads per shard; <= 0: 1 */
    /* MP_BACKEND_CPU, or MP_BACKEND_CUDA: shard r on GPU r % (GPUs visible). */
    mp_backend_kind_t device_kind;
    bool tf32;
    bool stage_through_host;  /* tests: the device path's host staging on a CPU */
    int64_t timeout_ms;       /* every wait of every shard; <= 0: 30000 */
    const char *tls;          /* UCX transports (UCX_TLS when unset), NULL: UCX's choice */
    const char *save_weights; /* directory for <layer>.<param>.npy, or NULL */
    mp_train_progress_cb_t on_progress; /* per step and per evaluation, from a shard thread */
    void *arg;
    /* Fault injection for tests: shard `fail_rank` (>= 0) stops with
     * MP_ERR_CANCELLED when it has reported step fail_at_step.  With
     * isolate_failures the other shards are not told: each must notice
     * the silent peer by itself (its waits time out). */
    int fail_rank;
    int64_t fail_at_step;
    bool isolate_failures;
} mp_engine_local_opts_t;

/* A zeroed struct with fail_rank = -1. */
mp_engine_local_opts_t mp_engine_local_opts_default(void);

typedef struct {
    mp_train_result_t train; /* as the serial trainer's */
    /* Measured bubble fraction: per training step, the mean over stages of
     * (step time - the stage's busy time) / step time, averaged over the
     * steps; the step time is from the first action of any stage to the
     * last end (dp replica 0, tp rank 0 of each stage). */
    double bubble_fraction;
    int nstages;
    mp_engine_cut_t cut; /* where the pipeline was cut, and its predicted bubble */
    int stage_slots[MP_SPEC_MAX_STAGES];         /* activation slots of each stage */
    int64_t stage_act_bytes[MP_SPEC_MAX_STAGES]; /* their backend bytes (tp rank 0) */
    /* The gathered parameters, full tensors [rows, cols] as in --save-weights:
     * weights[layer][param] (NULL for absent ones), mp_malloc'ed. */
    float *weights[MP_SPEC_MAX_LAYERS][MP_SPEC_MAX_PARAMS];
    /* The last training step's timeline of every shard, by global rank:
     * spans[rank][0..nspans[rank]) (mp_malloc'ed). */
    int nranks;
    mp_exec_span_t **spans;
    int *nspans;
} mp_engine_result_t;

mp_status_t mp_engine_run_local(const mp_spec_t *spec, const mp_engine_local_opts_t *opts,
                                mp_engine_result_t *result, mp_errbuf_t *err);
void mp_engine_result_free(mp_engine_result_t *result);

#endif
