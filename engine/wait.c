/*
 * wait.c - bounded, cancellable waits on UCX requests and tensor headers
 * for the executor and the feeder (internal.h).  Runs on the thread that
 * owns the request's worker.
 */
#include "engine/internal.h"

#include <time.h>

uint64_t mp_engine_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * This used to poll mp_xport_req_test with nanosleeps doubling up to half a
 * millisecond, so that every wait longer than a millisecond ended up to
 * 500 us after its message had landed (a pipeline stage waits for its
 * neighbour several times a step).  The transport's own wait sleeps on the
 * worker's event fd instead and is woken by the message itself.
 */
mp_status_t mp_engine_wait(mp_xport_req_t *req, uint64_t deadline_ns, const atomic_bool *cancel,
                           mp_xport_hdr_t *hdr_p)
{
    return mp_xport_wait_until(req, deadline_ns, cancel, hdr_p);
}

void mp_engine_abort(mp_xport_req_t *req)
{
    if (req != NULL) {
        /* The shortest timeout: a receive is cancelled, a send's endpoint failed. */
        (void)mp_xport_wait(req, 1, NULL);
    }
}

mp_xport_hdr_t mp_engine_hdr(uint32_t job, uint32_t kind, uint64_t seq, uint64_t step, int64_t rows,
                             int64_t cols, bool i32)
{
    mp_xport_hdr_t h = {
        .job = job & MP_XPORT_JOB_MAX,
        .step = (uint32_t)step,
        .micro_batch = mp_engine_tag_mb(seq),
        .kind = kind,
        .dtype = i32 ? MP_XPORT_DTYPE_I32 : MP_XPORT_DTYPE_F32,
        .ndim = 2,
        .shape = {(uint64_t)rows, (uint64_t)cols},
    };
    return h;
}
