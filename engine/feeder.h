/*
 * feeder.h - the data feeder of a model-parallel job (the coordinator's
 * role in DESIGN.md): on its own thread with its own UCX worker, it loads
 * the spec's data set and, event by event (engine/job.h), streams every
 * first-stage shard (each tp rank of each dp replica) its input
 * micro-batches and every last-stage shard its labels, in the serial
 * trainer's sample order, then the test split for each evaluation.  It
 * stays at most two events ahead of the slowest shard it feeds (each shard
 * acknowledges an event when it is done with it), so memory stays bounded.
 *
 * Every call comes from the feeder's thread, except mp_feeder_cancel.
 * Life: mp_feeder_create (loads the data: blocking file I/O), then
 * mp_feeder_sizes and mp_feeder_address for the shards, mp_feeder_connect
 * with the table of every rank's address, mp_feeder_run, then
 * mp_feeder_disconnect and mp_feeder_destroy.
 */
#ifndef MP_ENGINE_FEEDER_H
#define MP_ENGINE_FEEDER_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/job.h"
#include "model/spec.h"
#include "transport/ucx.h"

typedef struct mp_feeder mp_feeder_t;

typedef struct {
    const mp_spec_t *spec; /* must outlive the feeder */
    uint32_t job;          /* job id in tags (low 16 bits) */
    int64_t timeout_ms;    /* every wait; <= 0: 30000 */
    int64_t start_step;    /* a resumed job: feed from the event after this step */
} mp_feeder_opts_t;

mp_status_t mp_feeder_create(mp_xport_ctx_t *ctx, const mp_feeder_opts_t *opts,
                             mp_feeder_t **feeder_p, mp_errbuf_t *err);
/* The data set's sizes, which every executor needs (mp_exec_opts_t). */
void mp_feeder_sizes(const mp_feeder_t *feeder, int64_t *train_n_p, int64_t *test_n_p);
const mp_engine_geom_t *mp_feeder_geom(const mp_feeder_t *feeder);
/* The worker's address (mp_free it); the feeder's rank is geom->feeder_rank. */
mp_status_t mp_feeder_address(mp_feeder_t *feeder, void **addr_p, size_t *len_p);
/* addrs[r], lens[r] for every global rank r (only first- and last-stage
 * shards are used). */
mp_status_t mp_feeder_connect(mp_feeder_t *feeder, const void *const *addrs, const size_t *lens,
                              mp_errbuf_t *err);
mp_status_t mp_feeder_run(mp_feeder_t *feeder, mp_errbuf_t *err);
void mp_feeder_cancel(mp_feeder_t *feeder);
void mp_feeder_disconnect(mp_feeder_t *feeder);
void mp_feeder_destroy(mp_feeder_t *feeder);

#endif
