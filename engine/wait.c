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

#define SPIN_NS 50000ull
#define SLEEP_MIN_NS 20000ull
#define SLEEP_MAX_NS 500000ull

mp_status_t mp_engine_wait(mp_xport_req_t *req, uint64_t deadline_ns, const atomic_bool *cancel,
                           mp_xport_hdr_t *hdr_p)
{
    uint64_t spin_end = mp_engine_now_ns() + SPIN_NS;
    uint64_t sleep_ns = SLEEP_MIN_NS;
    for (;;) {
        if (mp_xport_req_test(req)) {
            /* Complete (done or failed): wait only collects it. */
            return mp_xport_wait(req, 0, hdr_p);
        }
        mp_status_t why = MP_OK;
        uint64_t now = mp_engine_now_ns();
        if (cancel != NULL && atomic_load_explicit(cancel, memory_order_relaxed)) {
            why = MP_ERR_CANCELLED;
        } else if (now >= deadline_ns) {
            why = MP_ERR_TIMEOUT;
        }
        if (why != MP_OK) {
            mp_engine_abort(req);
            return why;
        }
        if (now < spin_end) {
            continue;
        }
        uint64_t left = deadline_ns - now;
        uint64_t ns = sleep_ns < left ? sleep_ns : left;
        struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                              .tv_nsec = (long)(ns % 1000000000ull)};
        nanosleep(&ts, NULL);
        if (sleep_ns < SLEEP_MAX_NS) {
            sleep_ns *= 2;
        }
    }
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
