/*
 * stats.c - per-step windows, stage busy times and the measured bubble
 * fraction of a job from its executors' reports (stats.h).  Owns its
 * tables; no locking (the caller's thread).
 */
#include "engine/stats.h"

#include "common/alloc.h"

struct mp_engine_stats {
    int pp;
    int64_t steps;
    uint64_t *win0, *win1; /* [steps] */
    uint64_t *busy;        /* [steps * pp] */
};

int mp_engine_op_busy(mp_sched_op_t op)
{
    return op == MP_SCHED_FWD || op == MP_SCHED_BWD || op == MP_SCHED_BWD_W ||
           op == MP_SCHED_DP_ALLREDUCE || op == MP_SCHED_OPT_STEP;
}

mp_status_t mp_engine_stats_create(int pp, int64_t steps, mp_engine_stats_t **stats_p)
{
    mp_engine_stats_t *s = mp_calloc(1, sizeof(*s));
    size_t n = (size_t)(steps > 0 ? steps : 1);
    if (s == NULL) {
        return MP_ERR_NOMEM;
    }
    s->pp = pp;
    s->steps = steps;
    s->win0 = mp_calloc(n, sizeof(uint64_t));
    s->win1 = mp_calloc(n, sizeof(uint64_t));
    s->busy = mp_calloc(n * (size_t)pp, sizeof(uint64_t));
    if (s->win0 == NULL || s->win1 == NULL || s->busy == NULL) {
        mp_engine_stats_destroy(s);
        return MP_ERR_NOMEM;
    }
    *stats_p = s;
    return MP_OK;
}

void mp_engine_stats_destroy(mp_engine_stats_t *s)
{
    if (s == NULL) {
        return;
    }
    mp_free(s->win0);
    mp_free(s->win1);
    mp_free(s->busy);
    mp_free(s);
}

void mp_engine_stats_add(mp_engine_stats_t *s, const mp_exec_report_t *rep)
{
    if (rep->ev.kind != MP_ENGINE_EV_TRAIN || rep->ev.step < 1 || rep->ev.step > s->steps ||
        rep->stage < 0 || rep->stage >= s->pp) {
        return;
    }
    int64_t i = rep->ev.step - 1;
    /* A shard that finished the previous step early starts waiting before
     * the step really begins: the window opens at the first compute. */
    uint64_t w0 = rep->t0_ns, w1 = rep->t1_ns;
    for (int k = 0; k < rep->nspans; k++) {
        if (mp_engine_op_busy(rep->spans[k].op)) {
            w0 = rep->spans[k].t0_ns;
            break;
        }
    }
    if (rep->nspans > 0) {
        w1 = rep->spans[rep->nspans - 1].t1_ns;
    }
    if (s->win0[i] == 0 || w0 < s->win0[i]) {
        s->win0[i] = w0;
    }
    if (w1 > s->win1[i]) {
        s->win1[i] = w1;
    }
    if (rep->tp_rank == 0 && rep->dp_rank == 0) {
        uint64_t b = 0;
        for (int k = 0; k < rep->nspans; k++) {
            if (mp_engine_op_busy(rep->spans[k].op)) {
                b += rep->spans[k].t1_ns - rep->spans[k].t0_ns;
            }
        }
        s->busy[i * s->pp + rep->stage] = b;
    }
}

double mp_engine_stats_step_seconds(const mp_engine_stats_t *s, int64_t step)
{
    if (step < 1 || step > s->steps || s->win1[step - 1] <= s->win0[step - 1]) {
        return 0.0;
    }
    return (double)(s->win1[step - 1] - s->win0[step - 1]) * 1e-9;
}

double mp_engine_stats_bubble(const mp_engine_stats_t *s, double *seconds_p)
{
    return mp_engine_stats_bubble_upto(s, s->steps, seconds_p);
}

double mp_engine_stats_bubble_upto(const mp_engine_stats_t *s, int64_t upto, double *seconds_p)
{
    double bubble = 0.0, secs = 0.0;
    int64_t nb = 0;
    for (int64_t i = 0; i < s->steps && i < upto; i++) {
        if (s->win1[i] <= s->win0[i]) {
            continue;
        }
        double span = (double)(s->win1[i] - s->win0[i]);
        secs += span * 1e-9;
        if (i == 0 && s->steps > 1) {
            continue; /* warm-up: endpoint wire-up and first-touch memory */
        }
        double idle = 0.0;
        for (int st = 0; st < s->pp; st++) {
            idle += 1.0 - (double)s->busy[i * s->pp + st] / span;
        }
        bubble += idle / s->pp;
        nb++;
    }
    if (seconds_p != NULL) {
        *seconds_p = secs;
    }
    return nb > 0 ? bubble / (double)nb : 0.0;
}
