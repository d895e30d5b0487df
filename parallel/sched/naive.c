/*
 * naive.c - the naive schedule (the seed's first figure): one micro-batch
 * through every stage forward, then backward, so one stage works at a
 * time.  Its lists are gpipe's at m = 1.  Pure, any thread.
 */
#include "parallel/sched_gen.h"

static mp_status_t check_naive(int p, int m, int v, mp_errbuf_t *err)
{
    (void)p;
    (void)v;
    if (m != 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.micro_batches: schedule \"naive\" runs the whole batch "
                             "at once, so it must be 1, got %d (use \"gpipe\" or \"1f1b\")",
                             m);
    }
    return MP_OK;
}

static double bubble_naive(int p, int m, int v)
{
    (void)m;
    (void)v;
    return (double)(p - 1) / (double)p;
}

const mp_sched_gen_t mp_sched_gen_naive = {
    .name = "naive",
    .kind = MP_SCHED_NAIVE,
    .check = check_naive,
    .build = mp_sched_build_gpipe,
    .bubble = bubble_naive,
};
