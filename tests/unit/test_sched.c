/*
 * test_sched.c - pipeline schedules and their simulator: every schedule of
 * the table is accepted (or refused, naming the fields) for every p in 1..6
 * and m in 1..12, runs every F before its B and every B before its W, holds
 * the expected peak of in-flight activations and, at unit costs, its
 * paper's bubble; broken schedules are refused with a message naming the
 * stage.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "parallel/sched.h"

static mp_sched_t *build(mp_sched_kind_t kind, int p, int m)
{
    mp_sched_t *s = NULL;
    mp_errbuf_t err = {{0}};
    mp_status_t st = mp_sched_build(kind, p, m, 1, &s, &err);
    cr_assert_eq(st, MP_OK, "build p=%d m=%d: %s", p, m, err.msg);
    return s;
}

static int find_chunk(const mp_sched_t *s, int stage, int chunk, mp_sched_op_t op, int mb)
{
    for (int i = 0; i < s->count[stage]; i++) {
        const mp_sched_action_t *a = &s->action[stage][i];
        if (a->op == op && a->mb == mb && a->chunk == chunk) {
            return i;
        }
    }
    return -1;
}

static int find(const mp_sched_t *s, int stage, mp_sched_op_t op, int mb)
{
    return find_chunk(s, stage, 0, op, mb);
}

static int imin(int a, int b)
{
    return a < b ? a : b;
}

Test(sched, gpipe_and_1f1b_accepted_with_expected_peaks_and_bubble)
{
    for (int p = 1; p <= 6; p++) {
        for (int m = 1; m <= 12; m++) {
            mp_sched_kind_t kinds[2] = {MP_SCHED_GPIPE, MP_SCHED_1F1B};
            for (int k = 0; k < 2; k++) {
                mp_sched_t *s = build(kinds[k], p, m);
                mp_sched_report_t rep;
                mp_errbuf_t err = {{0}};
                mp_status_t st = mp_sched_simulate(s, NULL, &rep, &err);
                cr_assert_eq(st, MP_OK, "%s p=%d m=%d: %s", k ? "1f1b" : "gpipe", p, m, err.msg);
                for (int stg = 0; stg < p; stg++) {
                    for (int mb = 0; mb < m; mb++) {
                        int f = find(s, stg, MP_SCHED_FWD, mb), b = find(s, stg, MP_SCHED_BWD, mb);
                        cr_assert(f >= 0 && b > f, "p=%d m=%d stage %d mb %d: fwd %d bwd %d", p, m,
                                  stg, mb, f, b);
                    }
                    int peak = rep.stage[stg].peak_inflight;
                    if (kinds[k] == MP_SCHED_GPIPE) {
                        cr_assert_eq(peak, m, "gpipe p=%d m=%d stage %d peak %d", p, m, stg, peak);
                    } else {
                        cr_assert(peak <= imin(p, m), "1f1b p=%d m=%d stage %d peak %d", p, m, stg,
                                  peak);
                        cr_assert_eq(peak, imin(p - stg, m), "1f1b p=%d m=%d stage %d peak %d", p,
                                     m, stg, peak);
                    }
                    cr_assert_eq(rep.stage[stg].busy, 2.0 * m);
                }
                if (kinds[k] == MP_SCHED_1F1B) {
                    cr_assert_eq(rep.stage[0].peak_inflight, imin(p, m));
                }
                double theory = (double)(p - 1) / (double)(m + p - 1);
                cr_assert(fabs(rep.bubble - theory) <= 1e-12, "%s p=%d m=%d bubble %.15f vs %.15f",
                          k ? "1f1b" : "gpipe", p, m, rep.bubble, theory);
                cr_assert(fabs(mp_sched_bubble_theory(p, m) - theory) <= 1e-15);
                cr_assert_eq(rep.makespan, 2.0 * (m + p - 1), "makespan %g", rep.makespan);
                mp_sched_free(s);
            }
        }
    }
}

Test(sched, naive_runs_one_stage_at_a_time)
{
    mp_sched_t *s = build(MP_SCHED_NAIVE, 3, 1);
    mp_sched_report_t rep;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_simulate(s, NULL, &rep, &err), MP_OK, "%s", err.msg);
    /* 3 stages, forward and backward: 6 time units, each stage busy 2. */
    cr_assert_eq(rep.makespan, 6.0);
    cr_assert(fabs(rep.bubble - 2.0 / 3.0) < 1e-12);
    char text[512];
    size_t n = mp_sched_format(s, text, sizeof(text));
    cr_assert_eq(n, strlen(text));
    cr_assert_str_eq(text, "stage 0: F0 sA0 rG0 B0 AR OPT\n"
                           "stage 1: rA0 F0 sA0 rG0 B0 sG0 AR OPT\n"
                           "stage 2: rA0 F0 B0 sG0 AR OPT\n");
    mp_sched_free(s);
}

Test(sched, naive_refuses_several_micro_batches)
{
    mp_sched_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_build(MP_SCHED_NAIVE, 3, 4, 1, &s, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "parallel.micro_batches") != NULL, "%s", err.msg);
    cr_assert_null(s);
    cr_assert_eq(mp_sched_build(MP_SCHED_GPIPE, 0, 4, 1, &s, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "parallel.pp") != NULL, "%s", err.msg);
}

Test(sched, format_shows_1f1b_order_and_truncates_safely)
{
    mp_sched_t *s = build(MP_SCHED_1F1B, 2, 3);
    char text[512];
    mp_sched_format(s, text, sizeof(text));
    cr_assert_str_eq(text, "stage 0: F0 sA0 F1 sA1 rG0 B0 F2 sA2 rG1 B1 rG2 B2 AR OPT\n"
                           "stage 1: rA0 F0 B0 sG0 rA1 F1 B1 sG1 rA2 F2 B2 sG2 AR OPT\n");
    char small[10];
    size_t need = mp_sched_format(s, small, sizeof(small));
    cr_assert_eq(need, strlen(text));
    cr_assert_str_eq(small, "stage 0: ");
    mp_sched_free(s);
}

Test(sched, refuses_a_missing_send_naming_the_stage)
{
    mp_sched_t *s = build(MP_SCHED_GPIPE, 3, 2);
    int i = find(s, 1, MP_SCHED_SEND_ACT, 1);
    cr_assert_eq(mp_sched_remove(s, 1, i), MP_OK);
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_assert(strstr(err.msg, "stage 1") != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "SEND_ACT") != NULL, "%s", err.msg);
    mp_sched_free(s);
}

Test(sched, refuses_a_swapped_order_that_deadlocks)
{
    /* Stage 1 (the last) waits for micro-batch 1's activation before
     * running micro-batch 0's backward, while stage 0 under 1F1B waits for
     * micro-batch 0's gradient before sending micro-batch 1: a cycle. */
    mp_sched_t *s = build(MP_SCHED_1F1B, 2, 2);
    char before[512];
    mp_sched_format(s, before, sizeof(before));
    /* Stage 0 of 1f1b p=2: F0 sA0 rG0 B0 F1 sA1 ... only when warm-up is 0;
     * make stage 0 wait for gradient 0 before sending activation 0 instead. */
    int f = find(s, 0, MP_SCHED_SEND_ACT, 0), r = find(s, 0, MP_SCHED_RECV_GRAD, 0);
    cr_assert(f >= 0 && r > f, "%s", before);
    mp_sched_action_t t = s->action[0][f];
    s->action[0][f] = s->action[0][r];
    s->action[0][r] = t;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_assert(strstr(err.msg, "deadlock") != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "stage 0 waits at action") != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "RECV_GRAD of micro-batch 0") != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "stage 1 waits at action 0 (RECV_ACT") != NULL, "%s", err.msg);
    mp_sched_free(s);
}

Test(sched, refuses_backward_before_forward)
{
    mp_sched_t *s = build(MP_SCHED_GPIPE, 2, 2);
    /* Stage 1 of gpipe p=2 m=2: rA0 F0 rA1 F1 B1 sG1 B0 sG0 AR OPT; move B1
     * before F1. */
    int f = find(s, 1, MP_SCHED_FWD, 1), b = find(s, 1, MP_SCHED_BWD, 1);
    mp_sched_action_t t = s->action[1][f];
    s->action[1][f] = s->action[1][b];
    s->action[1][b] = t;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_assert(strstr(err.msg, "stage 1 runs BWD of micro-batch 1 before FWD") != NULL, "%s",
              err.msg);
    mp_sched_free(s);
}

Test(sched, refuses_duplicates_strays_and_a_missing_optimizer_step)
{
    mp_errbuf_t err = {{0}};
    mp_sched_t *s = build(MP_SCHED_GPIPE, 2, 2);
    /* A stray receive on the first stage, which has no previous neighbour. */
    s->action[0][0] = (mp_sched_action_t){MP_SCHED_RECV_ACT, 0, 0, 1};
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_assert(strstr(err.msg, "stage 0") != NULL, "%s", err.msg);
    mp_sched_free(s);

    s = build(MP_SCHED_GPIPE, 2, 2);
    cr_assert_eq(mp_sched_push(s, 1, MP_SCHED_FWD, 0), MP_OK); /* after OPT_STEP */
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_assert(strstr(err.msg, "stage 1 does not end with DP_ALLREDUCE then OPT_STEP") != NULL, "%s",
              err.msg);
    mp_sched_free(s);

    s = build(MP_SCHED_GPIPE, 2, 2);
    s->action[1][find(s, 1, MP_SCHED_FWD, 1)].mb = 0;
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_assert(strstr(err.msg, "stage 1 runs FWD of micro-batch 0 twice") != NULL, "%s", err.msg);
    mp_sched_free(s);
}

Test(sched, costs_shape_the_prediction)
{
    /* With backward twice the forward and a communication cost, gpipe's
     * makespan is (m + p - 1)(f + b) + 2(p - 1)c: the pipeline fill and
     * drain each cross p - 1 links. */
    int p = 4, m = 8;
    mp_sched_t *s = build(MP_SCHED_GPIPE, p, m);
    mp_sched_cost_t cost = {.fwd = 1.0, .bwd = 2.0, .comm = 0.25};
    mp_sched_report_t rep;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_simulate(s, &cost, &rep, &err), MP_OK, "%s", err.msg);
    cr_assert(fabs(rep.makespan - ((m + p - 1) * 3.0 + 2 * (p - 1) * 0.25)) < 1e-12, "%g",
              rep.makespan);
    for (int i = 0; i < p; i++) {
        cr_assert(fabs(rep.stage[i].busy - m * 3.0) < 1e-12);
        cr_assert(fabs(rep.stage[i].idle - (rep.makespan - m * 3.0)) < 1e-12);
    }
    /* The DP allreduce and the optimizer step end every stage's step. */
    mp_sched_cost_t tail = {.fwd = 1.0, .bwd = 1.0, .allreduce = 0.5, .opt = 0.25};
    cr_assert_eq(mp_sched_simulate(s, &tail, &rep, &err), MP_OK, "%s", err.msg);
    cr_assert(fabs(rep.makespan - (2.0 * (m + p - 1) + 0.75)) < 1e-12, "%g", rep.makespan);
    cr_assert(fabs(rep.stage[0].busy - (2.0 * m + 0.75)) < 1e-12);
    cr_assert(fabs(rep.stage[0].end - rep.makespan) < 1e-12, "stage 0 finishes last");
    /* A slow stage throttles everyone: per-stage costs are honoured. */
    double sf[4] = {1, 1, 3, 1}, sb[4] = {2, 2, 6, 2};
    mp_sched_cost_t uneven = {.stage_fwd = sf, .stage_bwd = sb};
    cr_assert_eq(mp_sched_simulate(s, &uneven, &rep, &err), MP_OK, "%s", err.msg);
    cr_assert(rep.makespan >= m * 9.0);
    cr_assert_eq(rep.stage[2].busy, m * 9.0);
    mp_sched_free(s);
}

/* Per-action times (a replay of a measured step): the stage costs of every
 * action reproduce the per-stage prediction exactly, and one slow action
 * delays what waits for it, and only that. */
Test(sched, per_action_times_replay_a_step)
{
    int p = 2, m = 4;
    mp_sched_t *s = build(MP_SCHED_1F1B, p, m);
    mp_sched_cost_t base = {.fwd = 1.0, .bwd = 2.0, .opt = 0.5};
    mp_sched_report_t want, rep;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_simulate(s, &base, &want, &err), MP_OK, "%s", err.msg);
    double t0[64], t1[64];
    double *t[2] = {t0, t1};
    for (int st = 0; st < p; st++) {
        cr_assert(s->count[st] <= 64);
        for (int i = 0; i < s->count[st]; i++) {
            mp_sched_op_t op = s->action[st][i].op;
            t[st][i] = op == MP_SCHED_FWD            ? 1.0
                       : op == MP_SCHED_BWD          ? 2.0
                       : op == MP_SCHED_OPT_STEP     ? 0.5
                       : op == MP_SCHED_DP_ALLREDUCE ? 0.0
                                                     : 123.0; /* messages: ignored */
        }
    }
    const double *const times[2] = {t0, t1};
    mp_sched_cost_t replay = {.action = times};
    cr_assert_eq(mp_sched_simulate(s, &replay, &rep, &err), MP_OK, "%s", err.msg);
    cr_assert(fabs(rep.makespan - want.makespan) < 1e-12, "%g vs %g", rep.makespan, want.makespan);
    cr_assert(fabs(rep.bubble - want.bubble) < 1e-12);
    /* Stage 1's backward of micro-batch 0 takes 1 longer: stage 0 waits for
     * that gradient, so the step ends 1 later, and stage 1 is 1 busier. */
    t1[find(s, 1, MP_SCHED_BWD, 0)] = 3.0;
    cr_assert_eq(mp_sched_simulate(s, &replay, &rep, &err), MP_OK, "%s", err.msg);
    cr_assert(fabs(rep.makespan - (want.makespan + 1.0)) < 1e-12, "%g", rep.makespan);
    cr_assert(fabs(rep.stage[1].busy - (want.stage[1].busy + 1.0)) < 1e-12);
    cr_assert(fabs(rep.stage[0].busy - want.stage[0].busy) < 1e-12);
    mp_sched_free(s);
}

/* zero_bubble at F = B = W = 1: whole backward 2, its W half of it. */
static const mp_sched_cost_t zb_unit = {.fwd = 1.0, .bwd = 2.0, .w_frac = 0.5};

Test(sched, zero_bubble_accepted_with_1f1b_peak_and_the_papers_bubble)
{
    for (int p = 1; p <= 6; p++) {
        for (int m = 1; m <= 12; m++) {
            mp_sched_t *zb = build(MP_SCHED_ZERO_BUBBLE, p, m);
            mp_sched_t *ref = build(MP_SCHED_1F1B, p, m);
            mp_sched_report_t rz, r1;
            mp_errbuf_t err = {{0}};
            cr_assert_eq(mp_sched_simulate(zb, &zb_unit, &rz, &err), MP_OK, "p=%d m=%d: %s", p, m,
                         err.msg);
            cr_assert_eq(mp_sched_simulate(ref, &zb_unit, &r1, &err), MP_OK, "%s", err.msg);
            int peak_zb = 0, peak_1f1b = 0;
            for (int s = 0; s < p; s++) {
                /* Every F before its B, every B before its W (the simulator
                 * checks it too; here it is spelled out). */
                for (int k = 0; k < m; k++) {
                    int f = find(zb, s, MP_SCHED_FWD, k), b = find(zb, s, MP_SCHED_BWD, k),
                        w = find(zb, s, MP_SCHED_BWD_W, k);
                    cr_assert(f >= 0 && b > f && w > b, "p=%d m=%d stage %d mb %d: F %d B %d W %d",
                              p, m, s, k, f, b, w);
                }
                peak_zb = rz.stage[s].peak_inflight > peak_zb ? rz.stage[s].peak_inflight : peak_zb;
                peak_1f1b =
                    r1.stage[s].peak_inflight > peak_1f1b ? r1.stage[s].peak_inflight : peak_1f1b;
            }
            cr_expect_leq(peak_zb, peak_1f1b, "p=%d m=%d: peak %d above 1f1b's %d", p, m, peak_zb,
                          peak_1f1b);
            cr_expect_leq(rz.bubble, r1.bubble + 1e-12, "p=%d m=%d: %g above 1f1b's %g", p, m,
                          rz.bubble, r1.bubble);
            if (m >= p) {
                cr_expect(fabs(rz.bubble - mp_sched_bubble_theory_zb(p, m)) < 1e-9,
                          "p=%d m=%d: bubble %g, ZB-H1 theory %g", p, m, rz.bubble,
                          mp_sched_bubble_theory_zb(p, m));
                /* ZB-H1's bubble time (p-1)(F+B-W) is a third of 1F1B's (p-1)(F+B+W). */
                double idle_zb = rz.bubble * rz.makespan, idle_1f1b = r1.bubble * r1.makespan;
                cr_expect(p == 1 || fabs(idle_zb * 3.0 - idle_1f1b) < 1e-9,
                          "p=%d m=%d: idle %g vs 1f1b %g", p, m, idle_zb, idle_1f1b);
            }
            mp_sched_free(zb);
            mp_sched_free(ref);
        }
    }
}

Test(sched, zero_bubble_refuses_a_weight_gradient_before_its_backward)
{
    mp_sched_t *s = build(MP_SCHED_ZERO_BUBBLE, 2, 4);
    int b = find(s, 0, MP_SCHED_BWD, 1), w = find(s, 0, MP_SCHED_BWD_W, 1);
    cr_assert(b >= 0 && w > b);
    mp_sched_action_t t = s->action[0][b];
    s->action[0][b] = s->action[0][w];
    s->action[0][w] = t;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_expect(strstr(err.msg, "stage 0 runs BWD_W of micro-batch 1 before BWD") != NULL, "%s",
              err.msg);
    mp_sched_free(s);
}

Test(sched, zero_bubble_refuses_a_backward_split_for_some_micro_batches_only)
{
    mp_sched_t *s = build(MP_SCHED_ZERO_BUBBLE, 2, 3);
    cr_assert_eq(mp_sched_remove(s, 1, find(s, 1, MP_SCHED_BWD_W, 2)), MP_OK);
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_expect(strstr(err.msg, "stage 1 splits the backward") != NULL, "%s", err.msg);
    mp_sched_free(s);
}

Test(sched, zero_bubble_format_names_b_and_w)
{
    mp_sched_t *s = build(MP_SCHED_ZERO_BUBBLE, 2, 2);
    char buf[512];
    mp_sched_format(s, buf, sizeof(buf));
    cr_expect(strstr(buf, "stage 1: rA0 F0 B0 sG0") != NULL, "%s", buf);
    cr_expect(strstr(buf, " W0") != NULL && strstr(buf, " W1") != NULL, "%s", buf);
    mp_sched_free(s);
}

/* parallel.fuse_w = k: every W of the ZB-H1 lists once, in order, in runs
 * of k (the step's last run shorter) that stand where their last W stood;
 * every other action in its order; at most k - 1 more slots than ZB-H1's;
 * accepted by the simulator, whose bubble at unit costs stays within ZB-H1's
 * and 1F1B's. */
Test(sched, zero_bubble_fuse_w_groups_the_ws_in_runs_of_k)
{
    for (int p = 1; p <= 6; p++) {
        for (int m = 1; m <= 12; m++) {
            for (int k = 2; k <= 4 && k <= m; k++) {
                mp_sched_t *zb = build(MP_SCHED_ZERO_BUBBLE, p, m);
                mp_sched_t *f = build(MP_SCHED_ZERO_BUBBLE, p, m);
                mp_errbuf_t err = {{0}};
                cr_assert_eq(mp_sched_fuse_w(f, k, &err), MP_OK, "%s", err.msg);
                mp_sched_report_t rz, rf;
                cr_assert_eq(mp_sched_simulate(f, &zb_unit, &rf, &err), MP_OK, "p=%d m=%d k=%d: %s",
                             p, m, k, err.msg);
                cr_assert_eq(mp_sched_simulate(zb, &zb_unit, &rz, &err), MP_OK, "%s", err.msg);
                cr_expect_leq(rf.bubble, mp_sched_bubble_theory(p, m) + 1e-12,
                              "p=%d m=%d k=%d: bubble %g above 1f1b's", p, m, k, rf.bubble);
                cr_expect_geq(rf.bubble, rz.bubble - 1e-12, "p=%d m=%d k=%d: bubble %g below "
                              "ZB-H1's %g", p, m, k, rf.bubble, rz.bubble);
                for (int st = 0; st < p; st++) {
                    cr_assert_eq(f->count[st], zb->count[st]);
                    /* The W's in order, in runs: k, ..., k, then the rest. */
                    int next = 0, run = 0;
                    for (int i = 0; i < f->count[st]; i++) {
                        const mp_sched_action_t *a = &f->action[st][i];
                        if (a->op != MP_SCHED_BWD_W) {
                            cr_assert_eq(run, 0, "p=%d m=%d k=%d stage %d: a run cut at %d", p,
                                         m, k, st, i);
                            continue;
                        }
                        cr_assert_eq(a->mb, next++, "p=%d m=%d k=%d stage %d: W order", p, m, k,
                                     st);
                        run++;
                        if (a->fuse > 0) {
                            cr_assert_eq(a->fuse, run);
                            cr_assert(run == k || next == m, "p=%d m=%d k=%d stage %d: a run of %d "
                                      "before W%d", p, m, k, st, run, a->mb);
                            run = 0;
                        }
                    }
                    cr_assert_eq(next, m);
                    /* The rest keep their order: F's and B's as ZB-H1's. */
                    for (int mb = 0; mb + 1 < m; mb++) {
                        cr_assert_lt(find(f, st, MP_SCHED_BWD, mb), find(f, st, MP_SCHED_BWD, mb + 1));
                        cr_assert_lt(find(f, st, MP_SCHED_FWD, mb), find(f, st, MP_SCHED_FWD, mb + 1));
                    }
                    int sz = mp_sched_slots(zb, st, 0), sf = mp_sched_slots(f, st, 0);
                    cr_expect(sf >= sz && sf <= sz + k - 1, "p=%d m=%d k=%d stage %d: %d slots "
                              "against ZB-H1's %d", p, m, k, st, sf, sz);
                }
                mp_sched_free(f);
                mp_sched_free(zb);
            }
        }
    }
}

Test(sched, zero_bubble_fuse_w_format_and_refusals)
{
    mp_sched_t *s = build(MP_SCHED_ZERO_BUBBLE, 2, 4);
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_fuse_w(s, 3, &err), MP_OK);
    char buf[1024];
    mp_sched_format(s, buf, sizeof(buf));
    cr_expect(strstr(buf, " W0+1+2") != NULL && strstr(buf, " W3 AR OPT") != NULL, "%s", buf);
    /* A run broken by another action, and a run that miscounts. */
    int w0 = find(s, 1, MP_SCHED_BWD_W, 0);
    cr_assert(w0 >= 0 && s->action[1][w0].fuse == 0);
    s->action[1][w0 + 2].fuse = 2;
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_expect(strstr(err.msg, "stage 1's BWD_W of micro-batch 2 closes a run of 3 W's but "
                              "counts 2") != NULL, "%s", err.msg);
    s->action[1][w0 + 2].fuse = 3;
    mp_sched_action_t t = s->action[1][w0 + 1];
    s->action[1][w0 + 1] = s->action[1][w0 - 1];
    s->action[1][w0 - 1] = t;
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_expect(strstr(err.msg, "waits to run with the W's after it") != NULL, "%s", err.msg);
    mp_sched_free(s);
    /* Nothing to group in a schedule without W's. */
    mp_sched_t *g = build(MP_SCHED_1F1B, 2, 4);
    cr_assert_eq(mp_sched_fuse_w(g, 2, &err), MP_ERR_SPEC);
    cr_expect(strstr(err.msg, "parallel.fuse_w") != NULL, "%s", err.msg);
    cr_assert_eq(mp_sched_fuse_w(g, 1, &err), MP_OK);
    mp_sched_free(g);
}

/* Prove it (issue 12): every kind of the table, p 1..6, m 1..12 (and v 1..3
 * chunks where the kind takes them): built and simulated, or refused naming
 * the fields when the kind cannot run it; every F before its B, every B
 * before its W; every stage busy with exactly its m v forwards and
 * backwards. */
Test(sched, every_schedule_runs_or_is_refused_for_p_1_to_6_and_m_1_to_12)
{
    const char *const *names;
    int nkinds = mp_sched_kind_names(&names);
    cr_assert_eq(nkinds, 5);
    for (int k = 0; k < nkinds; k++) {
        mp_sched_kind_t kind = (mp_sched_kind_t)k;
        int vmax = kind == MP_SCHED_INTERLEAVED_1F1B ? 3 : 1;
        for (int p = 1; p <= 6; p++) {
            for (int m = 1; m <= 12; m++) {
                for (int v = 1; v <= vmax; v++) {
                    mp_sched_t *s = NULL;
                    mp_errbuf_t err = {{0}};
                    mp_status_t st = mp_sched_build(kind, p, m, v, &s, &err);
                    bool refuse = (kind == MP_SCHED_NAIVE && m != 1) ||
                                  (kind == MP_SCHED_INTERLEAVED_1F1B && m % p != 0);
                    if (refuse) {
                        cr_assert_eq(st, MP_ERR_SPEC, "%s p=%d m=%d v=%d built", names[k], p, m, v);
                        cr_assert_null(s);
                        cr_expect(strstr(err.msg, "parallel.micro_batches") != NULL, "%s", err.msg);
                        cr_expect(kind == MP_SCHED_NAIVE || strstr(err.msg, "parallel.pp") != NULL,
                                  "%s", err.msg);
                        continue;
                    }
                    cr_assert_eq(st, MP_OK, "%s p=%d m=%d v=%d: %s", names[k], p, m, v, err.msg);
                    cr_assert_eq(s->nchunks, v);
                    mp_sched_report_t rep;
                    st = mp_sched_simulate(s, NULL, &rep, &err);
                    cr_assert_eq(st, MP_OK, "%s p=%d m=%d v=%d: %s", names[k], p, m, v, err.msg);
                    bool split = kind == MP_SCHED_ZERO_BUBBLE;
                    for (int stg = 0; stg < p; stg++) {
                        for (int c = 0; c < v; c++) {
                            for (int mb = 0; mb < m; mb++) {
                                int f = find_chunk(s, stg, c, MP_SCHED_FWD, mb);
                                int b = find_chunk(s, stg, c, MP_SCHED_BWD, mb);
                                int w = find_chunk(s, stg, c, MP_SCHED_BWD_W, mb);
                                cr_assert(f >= 0 && b > f,
                                          "%s p=%d m=%d v=%d stage %d chunk %d "
                                          "mb %d: F %d B %d",
                                          names[k], p, m, v, stg, c, mb, f, b);
                                cr_assert(split ? w > b : w < 0,
                                          "%s p=%d m=%d stage %d mb %d: "
                                          "B %d W %d",
                                          names[k], p, m, stg, mb, b, w);
                            }
                        }
                        cr_assert(fabs(rep.stage[stg].busy - 2.0 * m * v) < 1e-12,
                                  "%s p=%d m=%d v=%d stage %d busy %g", names[k], p, m, v, stg,
                                  rep.stage[stg].busy);
                    }
                    mp_sched_free(s);
                }
            }
        }
    }
}

/* Prove it: interleaved_1f1b at unit chunk costs has Megatron's bubble,
 * (p - 1) / (v m) of the ideal time, i.e. (p - 1) / (v m + p - 1) of the
 * step; below 1F1B's for v > 1; and it is 1F1B at v = 1. */
Test(sched, interleaved_1f1b_has_megatrons_bubble_and_is_1f1b_at_one_chunk)
{
    for (int p = 1; p <= 6; p++) {
        for (int m = p; m <= 12; m += p) {
            mp_sched_t *ref = build(MP_SCHED_1F1B, p, m);
            mp_sched_report_t r1;
            mp_errbuf_t err = {{0}};
            cr_assert_eq(mp_sched_simulate(ref, NULL, &r1, &err), MP_OK, "%s", err.msg);
            for (int v = 1; v <= 4; v++) {
                mp_sched_t *s = NULL;
                cr_assert_eq(mp_sched_build(MP_SCHED_INTERLEAVED_1F1B, p, m, v, &s, &err), MP_OK,
                             "p=%d m=%d v=%d: %s", p, m, v, err.msg);
                mp_sched_report_t rep;
                cr_assert_eq(mp_sched_simulate(s, NULL, &rep, &err), MP_OK, "p=%d m=%d v=%d: %s", p,
                             m, v, err.msg);
                double theory = mp_sched_bubble_theory_interleaved(p, m, v);
                cr_expect(fabs(theory - (double)(p - 1) / (double)(v * m + p - 1)) < 1e-15);
                cr_expect(fabs(rep.bubble - theory) < 1e-12,
                          "p=%d m=%d v=%d: bubble %.12f, "
                          "theory %.12f",
                          p, m, v, rep.bubble, theory);
                cr_expect(fabs(mp_sched_bubble_predicted(MP_SCHED_INTERLEAVED_1F1B, p, m, v) -
                               theory) < 1e-15);
                /* The paper's form: idle time over ideal time, (p - 1) / (v m). */
                double ideal = 2.0 * m * v;
                cr_expect(fabs(rep.bubble * rep.makespan / ideal - (double)(p - 1) / (v * m)) <
                              1e-12,
                          "p=%d m=%d v=%d", p, m, v);
                if (v > 1 && p > 1) {
                    cr_expect_lt(rep.bubble, r1.bubble, "p=%d m=%d v=%d", p, m, v);
                }
                if (v == 1) {
                    char a[4096], b[4096];
                    mp_sched_format(s, a, sizeof(a));
                    mp_sched_format(ref, b, sizeof(b));
                    cr_expect_str_eq(a, b, "p=%d m=%d", p, m);
                }
                mp_sched_free(s);
            }
            mp_sched_free(ref);
        }
    }
}

/* The unit-cost bubble of every kind is its paper's formula (naive, gpipe,
 * 1f1b: (p - 1) / (m + p - 1); zero_bubble: (p - 1) / (3m + p - 1) at
 * F = B = W, m >= p; interleaved above). */
Test(sched, predicted_bubble_of_every_kind_is_what_the_simulator_finds)
{
    for (int p = 1; p <= 6; p++) {
        for (int m = p; m <= 12; m++) {
            mp_sched_kind_t kinds[3] = {MP_SCHED_GPIPE, MP_SCHED_1F1B, MP_SCHED_ZERO_BUBBLE};
            for (int k = 0; k < 3; k++) {
                mp_sched_t *s = build(kinds[k], p, m);
                mp_sched_report_t rep;
                mp_errbuf_t err = {{0}};
                cr_assert_eq(mp_sched_simulate(
                                 s, kinds[k] == MP_SCHED_ZERO_BUBBLE ? &zb_unit : NULL, &rep, &err),
                             MP_OK, "%s", err.msg);
                cr_expect(fabs(rep.bubble - mp_sched_bubble_predicted(kinds[k], p, m, 1)) < 1e-9,
                          "kind %d p=%d m=%d: %g vs %g", (int)kinds[k], p, m, rep.bubble,
                          mp_sched_bubble_predicted(kinds[k], p, m, 1));
                mp_sched_free(s);
            }
        }
    }
    mp_sched_t *s = build(MP_SCHED_NAIVE, 4, 1);
    mp_sched_report_t rep;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_simulate(s, NULL, &rep, &err), MP_OK, "%s", err.msg);
    cr_expect(fabs(rep.bubble - mp_sched_bubble_predicted(MP_SCHED_NAIVE, 4, 1, 1)) < 1e-12);
    mp_sched_free(s);
}

/* Stage p - 1's chunk c feeds stage 0's chunk c + 1 (the wrap), and the
 * gradients go back the same way. */
Test(sched, interleaved_1f1b_wraps_from_the_last_stage_to_the_first)
{
    mp_sched_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_build(MP_SCHED_INTERLEAVED_1F1B, 2, 2, 2, &s, &err), MP_OK, "%s",
                 err.msg);
    char text[1024];
    mp_sched_format(s, text, sizeof(text));
    cr_expect_str_eq(text,
                     "stage 0: F0.0 sA0.0 F1.0 sA1.0 rA0.1 F0.1 sA0.1 rA1.1 F1.1 sA1.1 rG0.1 B0.1 "
                     "sG0.1 rG1.1 B1.1 sG1.1 rG0.0 B0.0 rG1.0 B1.0 AR OPT\n"
                     "stage 1: rA0.0 F0.0 sA0.0 rA1.0 F1.0 sA1.0 rA0.1 F0.1 B0.1 sG0.1 rA1.1 F1.1 "
                     "B1.1 sG1.1 rG0.0 B0.0 sG0.0 rG1.0 B1.0 sG1.0 AR OPT\n");
    /* Without the wrap's send (stage 1, chunk 0 -> stage 0, chunk 1) stage 0
     * never gets its chunk-1 input: refused, naming both. */
    cr_assert_eq(mp_sched_remove(s, 1, find_chunk(s, 1, 0, MP_SCHED_SEND_ACT, 1)), MP_OK);
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_expect(strstr(err.msg, "stage 1 never runs SEND_ACT of micro-batch 1 of chunk 0") != NULL,
              "%s", err.msg);
    mp_sched_free(s);
    /* The last virtual stage (stage 1, chunk 1) sends nothing on. */
    cr_assert_eq(mp_sched_build(MP_SCHED_INTERLEAVED_1F1B, 2, 2, 2, &s, &err), MP_OK);
    int n = s->count[1];
    s->action[1][n - 2] = (mp_sched_action_t){MP_SCHED_SEND_ACT, 0, 1, 1};
    s->action[1][n - 1] = (mp_sched_action_t){MP_SCHED_DP_ALLREDUCE, -1, 0, 1};
    cr_assert_eq(mp_sched_push(s, 1, MP_SCHED_OPT_STEP, -1), MP_OK);
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_expect(strstr(err.msg, "virtual stage 3 has no next neighbour") != NULL, "%s", err.msg);
    mp_sched_free(s);
}

/* A chunked schedule that waits in a cycle is found before launch. */
Test(sched, interleaved_1f1b_refuses_a_deadlock_naming_the_chunk)
{
    mp_sched_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_build(MP_SCHED_INTERLEAVED_1F1B, 2, 2, 2, &s, &err), MP_OK);
    /* Stage 0 waits for chunk 1's input before sending chunk 0's. */
    int r = find_chunk(s, 0, 1, MP_SCHED_RECV_ACT, 0), f = find_chunk(s, 0, 0, MP_SCHED_FWD, 0);
    mp_sched_action_t t = s->action[0][r];
    memmove(&s->action[0][f + 1], &s->action[0][f], sizeof(t) * (size_t)(r - f));
    s->action[0][f] = t;
    cr_assert_eq(mp_sched_simulate(s, NULL, NULL, &err), MP_ERR_STATE);
    cr_expect(strstr(err.msg, "deadlock") != NULL, "%s", err.msg);
    cr_expect(strstr(err.msg, "RECV_ACT of micro-batch 0 of chunk 1") != NULL, "%s", err.msg);
    mp_sched_free(s);
}

/* Measured costs per virtual stage: each chunk action costs its own. */
Test(sched, interleaved_1f1b_takes_costs_per_virtual_stage)
{
    mp_sched_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_sched_build(MP_SCHED_INTERLEAVED_1F1B, 2, 4, 2, &s, &err), MP_OK);
    double sf[4] = {1.0, 2.0, 3.0, 4.0}, sb[4] = {2.0, 4.0, 6.0, 8.0};
    mp_sched_cost_t c = {.stage_fwd = sf, .stage_bwd = sb};
    mp_sched_report_t rep;
    cr_assert_eq(mp_sched_simulate(s, &c, &rep, &err), MP_OK, "%s", err.msg);
    /* Stage 0 holds virtual stages 0 and 2, stage 1 holds 1 and 3. */
    cr_expect(fabs(rep.stage[0].busy - 4 * (1.0 + 2.0 + 3.0 + 6.0)) < 1e-12, "%g",
              rep.stage[0].busy);
    cr_expect(fabs(rep.stage[1].busy - 4 * (2.0 + 4.0 + 4.0 + 8.0)) < 1e-12, "%g",
              rep.stage[1].busy);
    mp_sched_free(s);
}
