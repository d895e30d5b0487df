/*
 * gpipe.c - the GPipe schedule (the seed's second figure): every stage
 * runs the forwards of all m micro-batches, then their backwards in
 * reverse order; m activations held per stage, bubble (p - 1) / (m + p - 1).
 * Pure, any thread.
 */
#include "parallel/sched_gen.h"

mp_status_t mp_sched_build_gpipe(mp_sched_t *sched)
{
    int p = sched->nstages, m = sched->nmicro;
    mp_status_t st = MP_OK;
    for (int s = 0; s < p && st == MP_OK; s++) {
        for (int i = 0; i < m && st == MP_OK; i++) {
            st = mp_sched_push_fwd(sched, s, 0, i);
        }
        for (int i = m - 1; i >= 0 && st == MP_OK; i--) {
            st = mp_sched_push_bwd(sched, s, 0, i);
        }
        if (st == MP_OK) {
            st = mp_sched_push_tail(sched, s);
        }
    }
    return st;
}

const mp_sched_gen_t mp_sched_gen_gpipe = {
    .name = "gpipe",
    .kind = MP_SCHED_GPIPE,
    .build = mp_sched_build_gpipe,
    .bubble = mp_sched_bubble_1f1b,
};
