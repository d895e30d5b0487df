/*
 * sched_sim.c - the simulator every schedule goes through before a job
 * starts (sched.h mp_sched_simulate): it checks each stage's list on its own
 * (every action once, in order, sends matching receives) and runs the
 * stages together with blocking receives and buffered sends, which predicts
 * makespan, idle time, bubble fraction and peak in-flight activations and
 * finds deadlocks.  Shared by every schedule kind; pure, any thread.
 */
#include "parallel/sched.h"

#include <stdbool.h>
#include <stdio.h>

#include "common/alloc.h"

#define NOPS 6      /* the per-micro-batch ops, RECV_ACT .. SEND_GRAD */
#define W_SLOT NOPS /* where BWD_W's positions go in pos[] */

/* The pos[] row of a per-micro-batch op, or -1 for the others. */
static int op_slot(int op)
{
    if (op >= 0 && op < NOPS) {
        return op;
    }
    return op == MP_SCHED_BWD_W ? W_SLOT : -1;
}

/* " of micro-batch 3", or " of micro-batch 3 of chunk 1" with several chunks. */
static const char *mb_text(const mp_sched_t *sched, int mb, int c, char *buf, size_t cap)
{
    if (sched->nchunks > 1) {
        snprintf(buf, cap, "micro-batch %d of chunk %d", mb, c);
    } else {
        snprintf(buf, cap, "micro-batch %d", mb);
    }
    return buf;
}

/* Checks one stage's list on its own; pos[(slot * v + chunk) * m + mb] gets
 * each action's index (slot: op_slot). */
static mp_status_t check_stage(const mp_sched_t *sched, int s, int *pos, mp_errbuf_t *err)
{
    int p = sched->nstages, m = sched->nmicro, v = sched->nchunks, n = sched->count[s];
    const mp_sched_action_t *a = sched->action[s];
    char what[64], other[64];
    for (int i = 0; i < (NOPS + 1) * v * m; i++) {
        pos[i] = -1;
    }
    if (n < 2 || a[n - 2].op != MP_SCHED_DP_ALLREDUCE || a[n - 1].op != MP_SCHED_OPT_STEP) {
        return mp_errbuf_set(err, MP_ERR_STATE,
                             "schedule: stage %d does not end with DP_ALLREDUCE then OPT_STEP", s);
    }
    for (int i = 0; i < n - 2; i++) {
        int op = op_slot((int)a[i].op), mb = a[i].mb, c = a[i].chunk;
        if (op < 0) {
            return mp_errbuf_set(err, MP_ERR_STATE,
                                 "schedule: stage %d action %d: %s before the end of the list", s,
                                 i, mp_sched_op_name(a[i].op));
        }
        if (mb < 0 || mb >= m) {
            return mp_errbuf_set(err, MP_ERR_STATE,
                                 "schedule: stage %d action %d: %s of micro-batch %d, expected 0 "
                                 "to %d",
                                 s, i, mp_sched_op_name(a[i].op), mb, m - 1);
        }
        if (c < 0 || c >= v) {
            return mp_errbuf_set(err, MP_ERR_STATE,
                                 "schedule: stage %d action %d: %s of chunk %d, expected 0 to %d",
                                 s, i, mp_sched_op_name(a[i].op), c, v - 1);
        }
        if (pos[(op * v + c) * m + mb] >= 0) {
            return mp_errbuf_set(err, MP_ERR_STATE, "schedule: stage %d runs %s of %s twice", s,
                                 mp_sched_op_name(a[i].op),
                                 mb_text(sched, mb, c, what, sizeof(what)));
        }
        pos[(op * v + c) * m + mb] = i;
    }
    /* parallel.fuse_w: a W that waits (fuse 0) is followed by a W of its
     * chunk, and the W that closes a run counts the run. */
    for (int i = 0, run = 0; i < n; i++) {
        bool w = a[i].op == MP_SCHED_BWD_W;
        if (run > 0 && (!w || a[i].chunk != a[i - 1].chunk)) {
            return mp_errbuf_set(err, MP_ERR_STATE,
                                 "schedule: stage %d's BWD_W of %s waits to run with the W's "
                                 "after it, but the next action is %s",
                                 s, mb_text(sched, a[i - 1].mb, a[i - 1].chunk, what, sizeof(what)),
                                 w ? "a W of another chunk" : mp_sched_op_name(a[i].op));
        }
        if (w && a[i].fuse == 0) {
            run++;
        } else if (w && a[i].fuse != run + 1) {
            return mp_errbuf_set(err, MP_ERR_STATE,
                                 "schedule: stage %d's BWD_W of %s closes a run of %d W's but "
                                 "counts %d",
                                 s, mb_text(sched, a[i].mb, a[i].chunk, what, sizeof(what)),
                                 run + 1, a[i].fuse);
        } else {
            run = 0;
        }
    }
    int first_w = pos[(W_SLOT * v) * m];
    for (int c = 0; c < v; c++) {
        int u = c * p + s, last = p * v - 1; /* the virtual stage */
        for (int mb = 0; mb < m; mb++) {
            const int *at = pos + (size_t)c * m + mb; /* at[op * v * m]: op's index */
            int vm = v * m;
            mb_text(sched, mb, c, what, sizeof(what));
            /* Which ops this stage must (1) or must not (0) run for mb. */
            const int want[NOPS] = {
                [MP_SCHED_RECV_ACT] = u > 0,
                [MP_SCHED_FWD] = 1,
                [MP_SCHED_SEND_ACT] = u < last,
                [MP_SCHED_RECV_GRAD] = u<last, [MP_SCHED_BWD] = 1, [MP_SCHED_SEND_GRAD] = u> 0,
            };
            for (int op = 0; op < NOPS; op++) {
                int have = at[op * vm] >= 0;
                if (have && !want[op]) {
                    return mp_errbuf_set(
                        err, MP_ERR_STATE,
                        "schedule: stage %d runs %s of %s, but %s %d has no %s neighbour", s,
                        mp_sched_op_name((mp_sched_op_t)op), what,
                        v > 1 ? "virtual stage" : "stage", v > 1 ? u : s,
                        (op == MP_SCHED_RECV_ACT || op == MP_SCHED_SEND_GRAD) ? "previous"
                                                                              : "next");
                }
                if (!have && want[op]) {
                    return mp_errbuf_set(err, MP_ERR_STATE,
                                         "schedule: stage %d never runs %s of %s", s,
                                         mp_sched_op_name((mp_sched_op_t)op), what);
                }
            }
            /* Each (later, earlier) pair: `later` must come after `earlier`. */
            static const int order[][2] = {
                {MP_SCHED_FWD, MP_SCHED_RECV_ACT},  {MP_SCHED_SEND_ACT, MP_SCHED_FWD},
                {MP_SCHED_BWD, MP_SCHED_FWD},       {MP_SCHED_BWD, MP_SCHED_RECV_GRAD},
                {MP_SCHED_SEND_GRAD, MP_SCHED_BWD},
            };
            for (size_t k = 0; k < sizeof(order) / sizeof(order[0]); k++) {
                int later = at[order[k][0] * vm], earlier = at[order[k][1] * vm];
                if (later >= 0 && earlier >= 0 && later < earlier) {
                    return mp_errbuf_set(err, MP_ERR_STATE,
                                         "schedule: stage %d runs %s of %s before %s", s,
                                         mp_sched_op_name((mp_sched_op_t)order[k][0]), what,
                                         mp_sched_op_name((mp_sched_op_t)order[k][1]));
                }
            }
            int w = at[W_SLOT * vm];
            if (w >= 0 && w < at[MP_SCHED_BWD * vm]) {
                return mp_errbuf_set(err, MP_ERR_STATE,
                                     "schedule: stage %d runs BWD_W of %s before BWD", s, what);
            }
            if ((w >= 0) != (first_w >= 0)) {
                return mp_errbuf_set(err, MP_ERR_STATE,
                                     "schedule: stage %d splits the backward of %s but "
                                     "not of %s (BWD_W for all or none)",
                                     s, w >= 0 ? what : mb_text(sched, 0, 0, other, sizeof(other)),
                                     w >= 0 ? mb_text(sched, 0, 0, other, sizeof(other)) : what);
            }
        }
    }
    return MP_OK;
}

static double stage_cost(const double *per_stage, double scalar, int s)
{
    return per_stage != NULL ? per_stage[s] : scalar;
}

mp_status_t mp_sched_simulate(const mp_sched_t *sched, const mp_sched_cost_t *cost,
                              mp_sched_report_t *report_p, mp_errbuf_t *err)
{
    int p = sched->nstages, m = sched->nmicro, v = sched->nchunks;
    if (p < 1 || p > MP_SCHED_MAX_STAGES || m < 1 || m > MP_SCHED_MAX_MICRO || v < 1 ||
        p * v > MP_SCHED_MAX_STAGES) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "schedule: %d stages, %d micro-batches, %d chunks",
                             p, m, v);
    }
    const mp_sched_cost_t unit = {.fwd = 1.0, .bwd = 1.0};
    if (cost == NULL) {
        cost = &unit;
    }
    int *pos = mp_malloc(sizeof(int) * (NOPS + 1) * (size_t)v * (size_t)m);
    /* Arrival time of the activation / gradient of mb at virtual stage u
     * ([u * m + mb]); < 0: not sent. */
    double *act_at = mp_malloc(sizeof(double) * (size_t)(p * v) * (size_t)m);
    double *grad_at = mp_malloc(sizeof(double) * (size_t)(p * v) * (size_t)m);
    mp_status_t st = MP_OK;
    if (pos == NULL || act_at == NULL || grad_at == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "schedule simulation: out of memory");
        goto out_free;
    }
    bool split[MP_SCHED_MAX_STAGES] = {false}; /* the stage's backward is BWD then BWD_W */
    for (int s = 0; s < p && st == MP_OK; s++) {
        st = check_stage(sched, s, pos, err);
        split[s] = st == MP_OK && pos[W_SLOT * v * m] >= 0;
    }
    if (st != MP_OK) {
        goto out_free;
    }
    for (int i = 0; i < p * v * m; i++) {
        act_at[i] = -1.0;
        grad_at[i] = -1.0;
    }

    /* Dataflow execution: a stage runs until it blocks on a message not yet
     * sent.  Sends never block, so a message's arrival time is fixed when its
     * sender runs the send, and the result does not depend on the order in
     * which stages are advanced. */
    int pc[MP_SCHED_MAX_STAGES] = {0}, inflight[MP_SCHED_MAX_STAGES] = {0};
    double clock[MP_SCHED_MAX_STAGES] = {0};
    mp_sched_report_t rep = {.nstages = p};
    int progress = 1;
    while (progress) {
        progress = 0;
        for (int s = 0; s < p; s++) {
            double wf = cost->w_frac > 0.0 ? cost->w_frac : 0.5;
            while (pc[s] < sched->count[s]) {
                const mp_sched_action_t *a = &sched->action[s][pc[s]];
                int u = a->chunk * p + s; /* its virtual stage */
                double tf = stage_cost(cost->stage_fwd, cost->fwd, u);
                double tb = stage_cost(cost->stage_bwd, cost->bwd, u);
                double tw = split[s] ? tb * wf : 0.0;
                tb -= tw;
                double ar = cost->allreduce, opt = cost->opt;
                if (cost->action != NULL) {
                    tf = tb = tw = ar = opt = cost->action[s][pc[s]];
                }
                double t;
                switch (a->op) {
                case MP_SCHED_RECV_ACT:
                case MP_SCHED_RECV_GRAD:
                    t = (a->op == MP_SCHED_RECV_ACT ? act_at : grad_at)[u * m + a->mb];
                    if (t < 0.0) {
                        goto blocked;
                    }
                    if (t > clock[s]) {
                        clock[s] = t;
                    }
                    break;
                case MP_SCHED_FWD:
                    clock[s] += tf;
                    rep.stage[s].busy += tf;
                    if (++inflight[s] > rep.stage[s].peak_inflight) {
                        rep.stage[s].peak_inflight = inflight[s];
                    }
                    break;
                case MP_SCHED_SEND_ACT:
                    act_at[(u + 1) * m + a->mb] = clock[s] + cost->comm;
                    break;
                case MP_SCHED_BWD:
                    clock[s] += tb;
                    rep.stage[s].busy += tb;
                    if (!split[s]) {
                        inflight[s]--;
                    }
                    break;
                case MP_SCHED_BWD_W:
                    clock[s] += tw;
                    rep.stage[s].busy += tw;
                    inflight[s]--;
                    break;
                case MP_SCHED_SEND_GRAD:
                    grad_at[(u - 1) * m + a->mb] = clock[s] + cost->comm;
                    break;
                case MP_SCHED_DP_ALLREDUCE:
                    clock[s] += ar;
                    rep.stage[s].busy += ar;
                    break;
                case MP_SCHED_OPT_STEP:
                    clock[s] += opt;
                    rep.stage[s].busy += opt;
                    break;
                }
                pc[s]++;
                progress = 1;
            }
        blocked:;
        }
    }

    char why[sizeof(err->msg)];
    size_t len = 0;
    why[0] = '\0';
    for (int s = 0; s < p; s++) {
        if (pc[s] < sched->count[s] && len < sizeof(why)) {
            const mp_sched_action_t *a = &sched->action[s][pc[s]];
            int from = a->op == MP_SCHED_RECV_ACT ? (s + p - 1) % p : (s + 1) % p;
            char what[64];
            int n = snprintf(why + len, sizeof(why) - len,
                             "%sstage %d waits at action %d (%s of %s) for stage %d",
                             len > 0 ? "; " : "", s, pc[s], mp_sched_op_name(a->op),
                             mb_text(sched, a->mb, a->chunk, what, sizeof(what)), from);
            len += n > 0 ? (size_t)n : 0;
        }
    }
    if (len > 0) {
        st = mp_errbuf_set(err, MP_ERR_STATE, "schedule: deadlock: %s", why);
        goto out_free;
    }
    for (int s = 0; s < p; s++) {
        rep.stage[s].end = clock[s];
        if (clock[s] > rep.makespan) {
            rep.makespan = clock[s];
        }
    }
    double sum = 0.0;
    for (int s = 0; s < p; s++) {
        rep.stage[s].idle = rep.makespan - rep.stage[s].busy;
        if (rep.makespan > 0.0) {
            sum += rep.stage[s].idle / rep.makespan;
        }
    }
    rep.bubble = sum / p;
    if (report_p != NULL) {
        *report_p = rep;
    }
out_free:
    mp_free(grad_at);
    mp_free(act_at);
    mp_free(pos);
    return st;
}
