/*
 * sched.c - generates naive, gpipe, 1f1b and zero_bubble pipeline schedules as per-stage
 * action lists, checks them, and simulates them with blocking receives and
 * buffered sends to predict makespan, idle time, bubble fraction and peak
 * in-flight activations.  Owns the schedules it allocates; pure, any thread.
 */
#include "parallel/sched.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"

mp_status_t mp_sched_new(mp_sched_kind_t kind, int p, int m, mp_sched_t **sched_p)
{
    if (p < 1 || p > MP_SCHED_MAX_STAGES || m < 1 || m > MP_SCHED_MAX_MICRO) {
        return MP_ERR_INVAL;
    }
    mp_sched_t *sched = mp_calloc(1, sizeof(*sched));
    if (sched == NULL) {
        return MP_ERR_NOMEM;
    }
    sched->kind = kind;
    sched->nstages = p;
    sched->nmicro = m;
    *sched_p = sched;
    return MP_OK;
}

mp_status_t mp_sched_push(mp_sched_t *sched, int stage, mp_sched_op_t op, int mb)
{
    if (stage < 0 || stage >= sched->nstages) {
        return MP_ERR_INVAL;
    }
    if (sched->count[stage] == sched->cap[stage]) {
        int cap = sched->cap[stage] > 0 ? 2 * sched->cap[stage] : 16;
        mp_sched_action_t *a = mp_realloc(sched->action[stage], sizeof(*a) * (size_t)cap);
        if (a == NULL) {
            return MP_ERR_NOMEM;
        }
        sched->action[stage] = a;
        sched->cap[stage] = cap;
    }
    sched->action[stage][sched->count[stage]++] = (mp_sched_action_t){.op = op, .mb = mb};
    return MP_OK;
}

mp_status_t mp_sched_remove(mp_sched_t *sched, int stage, int index)
{
    if (stage < 0 || stage >= sched->nstages || index < 0 || index >= sched->count[stage]) {
        return MP_ERR_INVAL;
    }
    mp_sched_action_t *a = sched->action[stage];
    memmove(&a[index], &a[index + 1], sizeof(*a) * (size_t)(sched->count[stage] - index - 1));
    sched->count[stage]--;
    return MP_OK;
}

void mp_sched_free(mp_sched_t *sched)
{
    if (sched == NULL) {
        return;
    }
    for (int s = 0; s < sched->nstages; s++) {
        mp_free(sched->action[s]);
    }
    mp_free(sched);
}

/* The forward of mb on stage s with its receive and send. */
static mp_status_t push_fwd(mp_sched_t *sched, int s, int mb)
{
    int p = sched->nstages;
    mp_status_t st = MP_OK;
    if (s > 0) {
        st = mp_sched_push(sched, s, MP_SCHED_RECV_ACT, mb);
    }
    if (st == MP_OK) {
        st = mp_sched_push(sched, s, MP_SCHED_FWD, mb);
    }
    if (st == MP_OK && s < p - 1) {
        st = mp_sched_push(sched, s, MP_SCHED_SEND_ACT, mb);
    }
    return st;
}

/* The backward of mb on stage s with its receive and send. */
static mp_status_t push_bwd(mp_sched_t *sched, int s, int mb)
{
    int p = sched->nstages;
    mp_status_t st = MP_OK;
    if (s < p - 1) {
        st = mp_sched_push(sched, s, MP_SCHED_RECV_GRAD, mb);
    }
    if (st == MP_OK) {
        st = mp_sched_push(sched, s, MP_SCHED_BWD, mb);
    }
    if (st == MP_OK && s > 0) {
        st = mp_sched_push(sched, s, MP_SCHED_SEND_GRAD, mb);
    }
    return st;
}

static mp_status_t push_tail(mp_sched_t *sched, int s)
{
    mp_status_t st = mp_sched_push(sched, s, MP_SCHED_DP_ALLREDUCE, -1);
    return st == MP_OK ? mp_sched_push(sched, s, MP_SCHED_OPT_STEP, -1) : st;
}

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
                st = push_fwd(sched, s, f);
                done_f[s * m + f] = t + 1;
                nf[s]++;
            } else if (can_b) {
                st = push_bwd(sched, s, b);
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
        st = push_tail(sched, s);
    }
    mp_free(done_f);
    mp_free(done_b);
    return st;
}

static mp_status_t build_stage(mp_sched_t *sched, int s)
{
    int p = sched->nstages, m = sched->nmicro;
    mp_status_t st = MP_OK;
    if (sched->kind == MP_SCHED_1F1B) {
        int warmup = p - s - 1 < m ? p - s - 1 : m;
        int steady = m - warmup;
        for (int i = 0; i < warmup && st == MP_OK; i++) {
            st = push_fwd(sched, s, i);
        }
        for (int i = 0; i < steady && st == MP_OK; i++) {
            st = push_fwd(sched, s, warmup + i);
            if (st == MP_OK) {
                st = push_bwd(sched, s, i);
            }
        }
        for (int i = steady; i < m && st == MP_OK; i++) {
            st = push_bwd(sched, s, i);
        }
    } else {
        /* naive (m = 1) and gpipe: all forwards, then backwards in reverse. */
        for (int i = 0; i < m && st == MP_OK; i++) {
            st = push_fwd(sched, s, i);
        }
        for (int i = m - 1; i >= 0 && st == MP_OK; i--) {
            st = push_bwd(sched, s, i);
        }
    }
    return st == MP_OK ? push_tail(sched, s) : st;
}

mp_status_t mp_sched_build(mp_sched_kind_t kind, int p, int m, mp_sched_t **sched_p,
                           mp_errbuf_t *err)
{
    if (p < 1 || p > MP_SCHED_MAX_STAGES) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "parallel.pp: %d, expected 1 to %d stages", p,
                             MP_SCHED_MAX_STAGES);
    }
    if (m < 1 || m > MP_SCHED_MAX_MICRO) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.micro_batches: %d, expected 1 to %d micro-batches", m,
                             MP_SCHED_MAX_MICRO);
    }
    if (kind != MP_SCHED_NAIVE && kind != MP_SCHED_GPIPE && kind != MP_SCHED_1F1B &&
        kind != MP_SCHED_ZERO_BUBBLE) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "parallel.schedule: unknown schedule %d", (int)kind);
    }
    if (kind == MP_SCHED_NAIVE && m != 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.micro_batches: the naive schedule runs one micro-batch, "
                             "not %d; use \"gpipe\" or \"1f1b\" to stream micro-batches",
                             m);
    }
    mp_sched_t *sched = NULL;
    mp_status_t st = mp_sched_new(kind, p, m, &sched);
    if (st == MP_OK && kind == MP_SCHED_ZERO_BUBBLE) {
        st = build_zero_bubble(sched);
    }
    for (int s = 0; st == MP_OK && kind != MP_SCHED_ZERO_BUBBLE && s < p; s++) {
        st = build_stage(sched, s);
    }
    if (st != MP_OK) {
        mp_sched_free(sched);
        return mp_errbuf_set(err, st, "schedule: %s", mp_strerror(st));
    }
    *sched_p = sched;
    return MP_OK;
}

const char *mp_sched_op_name(mp_sched_op_t op)
{
    switch (op) {
    case MP_SCHED_RECV_ACT:
        return "RECV_ACT";
    case MP_SCHED_FWD:
        return "FWD";
    case MP_SCHED_SEND_ACT:
        return "SEND_ACT";
    case MP_SCHED_RECV_GRAD:
        return "RECV_GRAD";
    case MP_SCHED_BWD:
        return "BWD";
    case MP_SCHED_SEND_GRAD:
        return "SEND_GRAD";
    case MP_SCHED_DP_ALLREDUCE:
        return "DP_ALLREDUCE";
    case MP_SCHED_OPT_STEP:
        return "OPT_STEP";
    case MP_SCHED_BWD_W:
        return "BWD_W";
    }
    return "UNKNOWN";
}

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

/* Checks one stage's list on its own; pos[slot * m + mb] gets each action's index
 * (slot: op_slot). */
static mp_status_t check_stage(const mp_sched_t *sched, int s, int *pos, mp_errbuf_t *err)
{
    int p = sched->nstages, m = sched->nmicro, n = sched->count[s];
    const mp_sched_action_t *a = sched->action[s];
    for (int i = 0; i < (NOPS + 1) * m; i++) {
        pos[i] = -1;
    }
    if (n < 2 || a[n - 2].op != MP_SCHED_DP_ALLREDUCE || a[n - 1].op != MP_SCHED_OPT_STEP) {
        return mp_errbuf_set(err, MP_ERR_STATE,
                             "schedule: stage %d does not end with DP_ALLREDUCE then OPT_STEP", s);
    }
    for (int i = 0; i < n - 2; i++) {
        int op = op_slot((int)a[i].op), mb = a[i].mb;
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
        if (pos[op * m + mb] >= 0) {
            return mp_errbuf_set(err, MP_ERR_STATE,
                                 "schedule: stage %d runs %s of micro-batch %d twice", s,
                                 mp_sched_op_name(a[i].op), mb);
        }
        pos[op * m + mb] = i;
    }
    for (int mb = 0; mb < m; mb++) {
        /* Which ops this stage must (1) or must not (0) run for mb. */
        const int want[NOPS] = {
            [MP_SCHED_RECV_ACT] = s > 0,
            [MP_SCHED_FWD] = 1,
            [MP_SCHED_SEND_ACT] = s < p - 1,
            [MP_SCHED_RECV_GRAD] = s<p - 1, [MP_SCHED_BWD] = 1, [MP_SCHED_SEND_GRAD] = s> 0,
        };
        for (int op = 0; op < NOPS; op++) {
            int have = pos[op * m + mb] >= 0;
            if (have && !want[op]) {
                return mp_errbuf_set(
                    err, MP_ERR_STATE,
                    "schedule: stage %d runs %s of micro-batch %d, but stage %d "
                    "has no %s neighbour",
                    s, mp_sched_op_name((mp_sched_op_t)op), mb, s,
                    (op == MP_SCHED_RECV_ACT || op == MP_SCHED_SEND_GRAD) ? "previous" : "next");
            }
            if (!have && want[op]) {
                return mp_errbuf_set(err, MP_ERR_STATE,
                                     "schedule: stage %d never runs %s of micro-batch %d", s,
                                     mp_sched_op_name((mp_sched_op_t)op), mb);
            }
        }
        /* Each (later, earlier) pair: `later` must come after `earlier`. */
        static const int order[][2] = {
            {MP_SCHED_FWD, MP_SCHED_RECV_ACT},  {MP_SCHED_SEND_ACT, MP_SCHED_FWD},
            {MP_SCHED_BWD, MP_SCHED_FWD},       {MP_SCHED_BWD, MP_SCHED_RECV_GRAD},
            {MP_SCHED_SEND_GRAD, MP_SCHED_BWD},
        };
        for (size_t k = 0; k < sizeof(order) / sizeof(order[0]); k++) {
            int later = pos[order[k][0] * m + mb], earlier = pos[order[k][1] * m + mb];
            if (later >= 0 && earlier >= 0 && later < earlier) {
                return mp_errbuf_set(err, MP_ERR_STATE,
                                     "schedule: stage %d runs %s of micro-batch %d before %s", s,
                                     mp_sched_op_name((mp_sched_op_t)order[k][0]), mb,
                                     mp_sched_op_name((mp_sched_op_t)order[k][1]));
            }
        }
        int w = pos[W_SLOT * m + mb];
        if (w >= 0 && w < pos[MP_SCHED_BWD * m + mb]) {
            return mp_errbuf_set(err, MP_ERR_STATE,
                                 "schedule: stage %d runs BWD_W of micro-batch %d before BWD", s,
                                 mb);
        }
        if ((w >= 0) != (pos[W_SLOT * m] >= 0)) {
            return mp_errbuf_set(err, MP_ERR_STATE,
                                 "schedule: stage %d splits the backward of micro-batch %d but "
                                 "not of micro-batch %d (BWD_W for all or none)",
                                 s, w >= 0 ? mb : 0, w >= 0 ? 0 : mb);
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
    int p = sched->nstages, m = sched->nmicro;
    if (p < 1 || p > MP_SCHED_MAX_STAGES || m < 1 || m > MP_SCHED_MAX_MICRO) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "schedule: %d stages, %d micro-batches", p, m);
    }
    const mp_sched_cost_t unit = {.fwd = 1.0, .bwd = 1.0};
    if (cost == NULL) {
        cost = &unit;
    }
    int *pos = mp_malloc(sizeof(int) * (NOPS + 1) * (size_t)m);
    /* Arrival time of the activation / gradient of mb at stage s; < 0: not sent. */
    double *act_at = mp_malloc(sizeof(double) * (size_t)p * (size_t)m);
    double *grad_at = mp_malloc(sizeof(double) * (size_t)p * (size_t)m);
    mp_status_t st = MP_OK;
    if (pos == NULL || act_at == NULL || grad_at == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "schedule simulation: out of memory");
        goto out_free;
    }
    bool split[MP_SCHED_MAX_STAGES] = {false}; /* the stage's backward is BWD then BWD_W */
    for (int s = 0; s < p && st == MP_OK; s++) {
        st = check_stage(sched, s, pos, err);
        split[s] = st == MP_OK && pos[W_SLOT * m] >= 0;
    }
    if (st != MP_OK) {
        goto out_free;
    }
    for (int i = 0; i < p * m; i++) {
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
            double tf = stage_cost(cost->stage_fwd, cost->fwd, s);
            double tb = stage_cost(cost->stage_bwd, cost->bwd, s);
            double wf = cost->w_frac > 0.0 ? cost->w_frac : 0.5;
            double tw = split[s] ? tb * wf : 0.0;
            tb -= tw;
            while (pc[s] < sched->count[s]) {
                const mp_sched_action_t *a = &sched->action[s][pc[s]];
                double t;
                switch (a->op) {
                case MP_SCHED_RECV_ACT:
                case MP_SCHED_RECV_GRAD:
                    t = (a->op == MP_SCHED_RECV_ACT ? act_at : grad_at)[s * m + a->mb];
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
                    act_at[(s + 1) * m + a->mb] = clock[s] + cost->comm;
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
                    grad_at[(s - 1) * m + a->mb] = clock[s] + cost->comm;
                    break;
                case MP_SCHED_DP_ALLREDUCE:
                    clock[s] += cost->allreduce;
                    rep.stage[s].busy += cost->allreduce;
                    break;
                case MP_SCHED_OPT_STEP:
                    clock[s] += cost->opt;
                    rep.stage[s].busy += cost->opt;
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
            int from = a->op == MP_SCHED_RECV_ACT ? s - 1 : s + 1;
            int n = snprintf(why + len, sizeof(why) - len,
                             "%sstage %d waits at action %d (%s of micro-batch %d) for stage %d",
                             len > 0 ? "; " : "", s, pc[s], mp_sched_op_name(a->op), a->mb, from);
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

double mp_sched_bubble_theory(int p, int m)
{
    return (double)(p - 1) / (double)(m + p - 1);
}

double mp_sched_bubble_theory_zb(int p, int m)
{
    return (double)(p - 1) / (double)(3 * m + p - 1);
}

/* Appends text to buf like snprintf into buf + *total; *total counts the whole text. */
static void append(char *buf, size_t len, size_t *total, const char *text)
{
    size_t n = strlen(text);
    if (*total < len) {
        size_t room = len - *total - 1;
        size_t k = n < room ? n : room;
        memcpy(buf + *total, text, k);
        buf[*total + k] = '\0';
    }
    *total += n;
}

size_t mp_sched_format(const mp_sched_t *sched, char *buf, size_t len)
{
    static const char *const tok[] = {
        [MP_SCHED_RECV_ACT] = "rA",     [MP_SCHED_FWD] = "F",        [MP_SCHED_SEND_ACT] = "sA",
        [MP_SCHED_RECV_GRAD] = "rG",    [MP_SCHED_BWD] = "B",        [MP_SCHED_SEND_GRAD] = "sG",
        [MP_SCHED_DP_ALLREDUCE] = "AR", [MP_SCHED_OPT_STEP] = "OPT", [MP_SCHED_BWD_W] = "W",
    };
    size_t total = 0;
    if (len > 0) {
        buf[0] = '\0';
    }
    for (int s = 0; s < sched->nstages; s++) {
        char one[48];
        snprintf(one, sizeof(one), "stage %d:", s);
        append(buf, len, &total, one);
        for (int i = 0; i < sched->count[s]; i++) {
            const mp_sched_action_t *a = &sched->action[s][i];
            const char *t = (unsigned)a->op <= MP_SCHED_BWD_W ? tok[a->op] : "?";
            if (a->mb >= 0) {
                snprintf(one, sizeof(one), " %s%d", t, a->mb);
            } else {
                snprintf(one, sizeof(one), " %s", t);
            }
            append(buf, len, &total, one);
        }
        append(buf, len, &total, "\n");
    }
    return total;
}
