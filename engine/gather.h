/*
 * gather.h - --save-weights across processes: at the end of a job, every
 * shard of DP replica 0 sends its parameter blocks over UCX to one
 * gatherer (the coordinator), which assembles the full tensors, as the
 * serial trainer holds them, and writes them as <layer>.<param>.npy.
 *
 * The sending side runs on a shard's thread after mp_exec_run succeeded:
 * mp_gather_send() makes a worker of its own (the executor's is private to
 * it), sends every block of the shard's stage, and waits until they are
 * delivered.  The gatherer runs on one thread of its own (the coordinator's
 * feeder thread): mp_gather_create() (its worker; mp_gather_address() for
 * the shards), mp_gather_run() with the executors' worker addresses (used
 * to watch each sender: a dead shard fails the gather, never hangs it),
 * mp_gather_save(), mp_gather_destroy().  Every wait is bounded by
 * timeout_ms.
 *
 * A message is one byte tensor (kind MP_XPORT_KIND_USER, micro-batch = the
 * sender's message number): 8 int64 of placement (layer, param, row0,
 * col0, rows, cols, replicated, full_cols) then rows * cols floats.
 */
#ifndef MP_ENGINE_GATHER_H
#define MP_ENGINE_GATHER_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/executor.h"
#include "model/spec.h"
#include "transport/ucx.h"

typedef struct mp_gather mp_gather_t;

/* The gatherer of spec's parameters (spec must outlive it), tagged with
 * job, on the calling thread. */
mp_status_t mp_gather_create(mp_xport_ctx_t *ctx, const mp_spec_t *spec, uint32_t job,
                             int64_t timeout_ms, mp_gather_t **gather_p, mp_errbuf_t *err);
/* Its worker's address (mp_free it). */
mp_status_t mp_gather_address(mp_gather_t *gather, void **addr_p, size_t *len_p);
/* Receives every block of replica 0's shards.  addrs[r], lens[r]: the
 * executors' worker addresses by global rank (only replica 0's are used). */
mp_status_t mp_gather_run(mp_gather_t *gather, const void *const *addrs, const size_t *lens,
                          mp_errbuf_t *err);
/* The full tensor of a parameter after mp_gather_run (rows * cols floats). */
const float *mp_gather_param(const mp_gather_t *gather, int layer, int param);
/* Writes <dir>/<layer>.<param>.npy for every parameter (blocking file I/O). */
mp_status_t mp_gather_save(const mp_gather_t *gather, const char *dir, mp_errbuf_t *err);
void mp_gather_destroy(mp_gather_t *gather);

/* On a shard's thread, after mp_exec_run succeeded: sends the blocks of
 * exec's parameters to the gatherer at addr, tagged with job. */
mp_status_t mp_gather_send(mp_xport_ctx_t *ctx, mp_exec_t *exec, const mp_spec_t *spec,
                           uint32_t job, const void *addr, size_t len, int64_t timeout_ms,
                           mp_errbuf_t *err);

#endif
