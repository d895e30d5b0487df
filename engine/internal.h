/*
 * internal.h - helpers shared by the executor and the feeder: waits that
 * are bounded by a deadline and stop on a cancellation flag, tensor
 * headers, and the clock.  The calling thread must own the worker.
 */
#ifndef MP_ENGINE_INTERNAL_H
#define MP_ENGINE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/executor.h"
#include "transport/ucx.h"

/* The executor's published state (probe.c, executor.h's mp_exec_probe_t):
 * one writer, the executor's thread; a sequence count, odd while a write
 * is under way, lets readers take a consistent copy without a lock. */
typedef struct {
    _Atomic uint32_t seq;
    _Atomic int32_t phase, op, mb, wait, peer;
    _Atomic int64_t step;
    _Atomic uint64_t since_ns, bytes_sent, bytes_received;
} mp_engine_pub_t;

/* Writer side (the executor's thread).  A new action (op, mb) of an event:
 * not waiting, since now. */
void mp_engine_pub_action(mp_engine_pub_t *pub, int phase, int64_t step, int op, int mb);
/* Waiting for `wait` from peer (-1: a group), since now; NONE: computing
 * again, since now. */
void mp_engine_pub_wait(mp_engine_pub_t *pub, int wait, int peer);
void mp_engine_pub_bytes(mp_engine_pub_t *pub, uint64_t sent, uint64_t received);
void mp_engine_pub_phase(mp_engine_pub_t *pub, int phase);
/* Reader side, any thread: a consistent copy. */
void mp_engine_pub_read(const mp_engine_pub_t *pub, mp_exec_probe_t *probe_p);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t mp_engine_now_ns(void);

/*
 * Waits for req until deadline_ns (mp_engine_now_ns() time) or until
 * *cancel is set, and frees it.  After a short spin (yielding the core) it
 * sleeps on the worker's event fd (mp_xport_wait_until), so that a waiting
 * thread leaves the cores to the shards that compute and still wakes as
 * soon as its message lands.  On a timeout or a
 * cancellation the request is aborted (a receive cancelled, a send's
 * endpoint failed) and MP_ERR_TIMEOUT or MP_ERR_CANCELLED returned.
 */
mp_status_t mp_engine_wait(mp_xport_req_t *req, uint64_t deadline_ns, const atomic_bool *cancel,
                           mp_xport_hdr_t *hdr_p);
/* Aborts a request nobody will wait for (error paths); NULL is fine. */
void mp_engine_abort(mp_xport_req_t *req);

/* A 2-D float32 (or int32 when i32) tensor header. */
mp_xport_hdr_t mp_engine_hdr(uint32_t job, uint32_t kind, uint64_t seq, uint64_t step, int64_t rows,
                             int64_t cols, bool i32);

/* The micro-batch field of a tag for sequence number seq. */
static inline uint32_t mp_engine_tag_mb(uint64_t seq)
{
    return (uint32_t)(seq & MP_XPORT_MB_MAX);
}

#endif
