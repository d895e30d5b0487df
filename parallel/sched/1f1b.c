/*
 * 1f1b.c - the 1F1B schedule (PipeDream-flush, Megatron's default): stage s
 * runs min(p - s - 1, m) warm-up forwards, then alternates one forward and
 * one backward, then the remaining backwards.  GPipe's bubble
 * (p - 1) / (m + p - 1) with at most min(p - s, m) activations held instead
 * of m.  Pure, any thread.
 */
#include "parallel/sched_gen.h"

static mp_status_t build_1f1b(mp_sched_t *sched)
{
    int p = sched->nstages, m = sched->nmicro;
    mp_status_t st = MP_OK;
    for (int s = 0; s < p && st == MP_OK; s++) {
        int warmup = p - s - 1 < m ? p - s - 1 : m;
        int steady = m - warmup;
        for (int i = 0; i < warmup && st == MP_OK; i++) {
            st = mp_sched_push_fwd(sched, s, i);
        }
        for (int i = 0; i < steady && st == MP_OK; i++) {
            st = mp_sched_push_fwd(sched, s, warmup + i);
            if (st == MP_OK) {
                st = mp_sched_push_bwd(sched, s, i);
            }
        }
        for (int i = steady; i < m && st == MP_OK; i++) {
            st = mp_sched_push_bwd(sched, s, i);
        }
        if (st == MP_OK) {
            st = mp_sched_push_tail(sched, s);
        }
    }
    return st;
}

const mp_sched_gen_t mp_sched_gen_1f1b = {
    .name = "1f1b",
    .kind = MP_SCHED_1F1B,
    .build = build_1f1b,
    .bubble = mp_sched_bubble_theory,
};
