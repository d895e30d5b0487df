/*
 * job.h - the geometry of a model-parallel job that every shard executor
 * and the data feeder derive alike from the spec and the data set sizes:
 * the grid, the rows of a micro-batch (a row is one sample: its input,
 * in_dim floats, and its label_dim labels), the training steps and evaluations
 * in order (exactly as the serial trainer runs them), and the sequence
 * numbers that tag each event's messages.  Pure; any thread.
 *
 * Ranks: a shard is global rank (dp_rank * pp + stage) * tp + tp_rank
 * (parallel/placement.h); the feeder is rank pp * tp * dp.
 */
#ifndef MP_ENGINE_JOB_H
#define MP_ENGINE_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "model/spec.h"

typedef struct {
    int pp, tp, dp, m;
    int nranks;           /* pp * tp * dp shards */
    uint32_t feeder_rank; /* nranks */
    int64_t batch;        /* global batch B */
    int64_t replica_rows; /* B / dp */
    int64_t mb_rows;      /* B / dp / m: rows of one micro-batch */
    int64_t in_dim;    /* floats of a sample's input: model.input * model.seq */
    int64_t label_dim; /* int32 labels of a sample: model.seq (1, or T for text) */
    int64_t classes;
    int64_t train_n, test_n;
    int64_t steps_per_epoch, total_steps, epochs;
    int64_t eval_rows;   /* rows of an evaluation chunk (mb_rows) */
    int64_t eval_chunks; /* chunks over the test split (0 without one) */
} mp_engine_geom_t;

/*
 * The geometry of spec with train_n training and test_n test samples.
 * Refuses (MP_ERR_SPEC) a global batch that dp * micro_batches does not
 * divide, or larger than the training split.
 */
mp_status_t mp_engine_geom_init(const mp_spec_t *spec, int64_t train_n, int64_t test_n,
                                mp_engine_geom_t *geom_p, mp_errbuf_t *err);

/* Evaluation chunks that replica dp_rank runs (chunk c goes to c % dp). */
int64_t mp_engine_geom_replica_chunks(const mp_engine_geom_t *g, int dp_rank);
/* Rows of evaluation chunk c. */
int64_t mp_engine_geom_chunk_rows(const mp_engine_geom_t *g, int64_t c);

typedef enum {
    MP_ENGINE_EV_TRAIN = 0, /* one optimizer step */
    MP_ENGINE_EV_EVAL,      /* forward over the test split */
    MP_ENGINE_EV_END,
} mp_engine_ev_kind_t;

typedef struct {
    mp_engine_ev_kind_t kind;
    int64_t index;         /* 0-based event number */
    int64_t epoch;         /* 0-based */
    int64_t step;          /* TRAIN: 1-based global step; EVAL: steps done so far */
    int64_t step_in_epoch; /* TRAIN: 0-based batch k of the epoch */
} mp_engine_ev_t;

/* Walks the events in order: start with *it = 0; each call writes the next
 * event and advances *it, then END forever. */
void mp_engine_geom_next(const mp_engine_geom_t *g, int64_t *it, mp_engine_ev_t *ev_p);

/* The iterator of the first event after training step `step` (0: the
 * start; a resumed job's checkpoint step otherwise): the end-of-epoch
 * evaluation when step ends an epoch, else step + 1.  Every shard and the
 * feeder seek alike, so the resumed run's messages carry the tags the
 * uninterrupted run's would. */
int64_t mp_engine_geom_seek(const mp_engine_geom_t *g, int64_t step);

/* First sequence number (the micro-batch field of a tag) of event ev for
 * replica dp_rank: micro-batch k of a step, or local chunk k of an
 * evaluation, is tagged (seq + k) & MP_XPORT_MB_MAX. */
uint64_t mp_engine_geom_seq(const mp_engine_geom_t *g, int dp_rank, const mp_engine_ev_t *ev);

#endif
