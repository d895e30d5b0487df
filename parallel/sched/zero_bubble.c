/*
 * zero_bubble.c - the ZB-H1 schedule (Qi et al. 2023): every backward is
 * two actions, B (BWD: the input gradient, which the previous stage waits
 * for) and W (BWD_W: the weight gradients, which nobody waits for), and the
 * W's are deferred into what would otherwise be bubble.  The lists come from
 * a list scheduler run at unit costs (F = B = W); the rules are sched.h's.
 * Peak activations as 1F1B; at unit costs with m >= p its bubble is the
 * paper's (p - 1) / (3m + p - 1), a third of 1F1B's bubble time.  Pure, any
 * thread.
 */
#include "parallel/sched_gen.h"

#include <stdbool.h>

#include "common/alloc.h"

/*
 * zero_bubble (sched.h): the list scheduler at unit costs, one tick per
 * action, messages arriving at the end of the tick that sends them.  Every
 * stage holds counts of its forwards (nf), B's (nb) and W's (nw) done, which
 * run in micro-batch order; done_f / done_b hold the tick at which a
 * stage's F / B of each micro-batch ended (-1: not yet).
 */
static mp_status_t build_zero_bubble(mp_sched_t *sched)
{
    int p = sched->nstages, m = sched->nmicro;
    int *done_f = mp_malloc(sizeof(int) * (size_t)p * (size_t)m);
    int *done_b = mp_malloc(sizeof(int) * (size_t)p * (size_t)m);
    if (done_f == NULL || done_b == NULL) {
        mp_free(done_f);
        mp_free(done_b);
        return MP_ERR_NOMEM;
    }
    for (int i = 0; i < p * m; i++) {
        done_f[i] = done_b[i] = -1;
    }
    int nf[MP_SCHED_MAX_STAGES] = {0}, nb[MP_SCHED_MAX_STAGES] = {0}, nw[MP_SCHED_MAX_STAGES] = {0};
    int left = p * m; /* W's still to run: every action ends with its W */
    mp_status_t st = MP_OK;
    for (int t = 0; left > 0 && st == MP_OK; t++) {
        for (int s = 0; s < p && st == MP_OK; s++) {
            int lim_b = p - s < m ? p - s : m, lim_w = p < m ? p : m;
            int f = nf[s], b = nb[s];
            bool can_f =
                f < m &&
                (s == 0 || (done_f[(s - 1) * m + f] >= 0 && done_f[(s - 1) * m + f] <= t)) &&
                f - b < lim_b && f - nw[s] < lim_w;
            bool can_b = b < f && (s == p - 1 ||
                                   (done_b[(s + 1) * m + b] >= 0 && done_b[(s + 1) * m + b] <= t));
            if (can_f) {
                st = mp_sched_push_fwd(sched, s, 0, f);
                done_f[s * m + f] = t + 1;
                nf[s]++;
            } else if (can_b) {
                st = mp_sched_push_bwd(sched, s, 0, b);
                done_b[s * m + b] = t + 1;
                nb[s]++;
            } else if (nw[s] < b) {
                st = mp_sched_push(sched, s, MP_SCHED_BWD_W, nw[s]);
                nw[s]++;
                left--;
            }
        }
        /* Progress is certain: the last stage's oldest forward can always
         * run its B, and every B eventually lets a W or an F run. */
        if (t > 8 * p * m + 8) {
            st = MP_ERR_STATE;
        }
    }
    for (int s = 0; s < p && st == MP_OK; s++) {
        st = mp_sched_push_tail(sched, s);
    }
    mp_free(done_f);
    mp_free(done_b);
    return st;
}

double mp_sched_bubble_theory_zb(int p, int m)
{
    return (double)(p - 1) / (double)(3 * m + p - 1);
}

static double bubble_zb(int p, int m, int v)
{
    (void)v;
    return mp_sched_bubble_theory_zb(p, m);
}

const mp_sched_gen_t mp_sched_gen_zero_bubble = {
    .name = "zero_bubble",
    .kind = MP_SCHED_ZERO_BUBBLE,
    .split = true,
    .build = build_zero_bubble,
    .bubble = bubble_zb,
};
