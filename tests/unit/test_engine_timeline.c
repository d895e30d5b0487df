/*
 * test_engine_timeline.c - the executors' timelines: every shard records
 * each action of its stage's schedule in order (plus the first stage's
 * receive of each input from the feeder), each span inside the step and
 * after the previous one, and causality holds across shards (one clock in
 * one process): a stage's forward of a micro-batch starts after the
 * previous stage's forward of it ended, and backwards run the other way.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "engine/local.h"
#include "parallel/sched.h"

static mp_spec_t *make_spec(int pp, int m, const char *sched)
{
    char json[2048];
    snprintf(json, sizeof(json),
             "{\"name\": \"timeline\", \"model\": {\"input\": 8, \"layers\": ["
             "{\"type\": \"linear\", \"out\": 16}, {\"type\": \"gelu\"},"
             "{\"type\": \"mlp_block\", \"hidden\": 16, \"ffn\": 32},"
             "{\"type\": \"linear\", \"out\": 4}], \"loss\": \"softmax_xent\"},"
             "\"data\": {\"dataset\": \"synthetic\", \"samples\": 64, \"classes\": 4,"
             "\"seed\": 2},"
             "\"parallel\": {\"pp\": %d, \"micro_batches\": %d, \"schedule\": \"%s\"},"
             "\"train\": {\"batch_size\": 16, \"steps\": 3, \"optimizer\": \"sgd\", \"lr\": 0.1}}",
             pp, m, sched);
    mp_spec_t *spec = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_spec_parse(json, strlen(json), &spec, &err), MP_OK, "%s", err.msg);
    return spec;
}

static const mp_exec_span_t *find(const mp_engine_result_t *res, int rank, mp_sched_op_t op, int mb)
{
    for (int i = 0; i < res->nspans[rank]; i++) {
        if (res->spans[rank][i].op == op && res->spans[rank][i].mb == mb) {
            return &res->spans[rank][i];
        }
    }
    cr_assert_fail("rank %d has no %s of micro-batch %d", rank, mp_sched_op_name(op), mb);
    return NULL;
}

static void check(int pp, int m, const char *kind)
{
    mp_spec_t *spec = make_spec(pp, m, kind);
    mp_engine_result_t res;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_engine_run_local(spec, NULL, &res, &err), MP_OK, "%s", err.msg);
    mp_sched_t *sched;
    cr_assert_eq(mp_sched_build(spec->parallel.schedule, pp, m, 1, &sched, &err), MP_OK);
    for (int s = 0; s < pp; s++) {
        /* The schedule's list, with the feeder's input before each forward of stage 0. */
        int k = 0;
        for (int i = 0; i < sched->count[s]; i++) {
            const mp_sched_action_t *a = &sched->action[s][i];
            if (s == 0 && a->op == MP_SCHED_FWD) {
                cr_assert_lt(k, res.nspans[s]);
                cr_expect_eq(res.spans[s][k].op, MP_SCHED_RECV_ACT);
                cr_expect_eq(res.spans[s][k].mb, a->mb);
                k++;
            }
            cr_assert_lt(k, res.nspans[s], "stage %d: %d spans", s, res.nspans[s]);
            cr_expect_eq(res.spans[s][k].op, a->op, "stage %d span %d", s, k);
            cr_expect_eq(res.spans[s][k].mb, a->mb, "stage %d span %d", s, k);
            cr_expect_leq(res.spans[s][k].t0_ns, res.spans[s][k].t1_ns);
            if (k > 0) {
                cr_expect_geq(res.spans[s][k].t0_ns, res.spans[s][k - 1].t1_ns);
            }
            k++;
        }
        cr_expect_eq(k, res.nspans[s], "stage %d: %d spans, expected %d", s, res.nspans[s], k);
    }
    for (int s = 1; s < pp; s++) {
        for (int mb = 0; mb < m; mb++) {
            cr_expect_geq(find(&res, s, MP_SCHED_FWD, mb)->t0_ns,
                          find(&res, s - 1, MP_SCHED_FWD, mb)->t1_ns,
                          "stage %d forward %d started before its input existed", s, mb);
            cr_expect_geq(find(&res, s - 1, MP_SCHED_BWD, mb)->t0_ns,
                          find(&res, s, MP_SCHED_BWD, mb)->t1_ns,
                          "stage %d backward %d started before its gradient existed", s - 1, mb);
        }
    }
    cr_expect(res.bubble_fraction > 0.0 && res.bubble_fraction < 1.0, "bubble %g",
              res.bubble_fraction);
    mp_sched_free(sched);
    mp_engine_result_free(&res);
    mp_spec_free(spec);
}

Test(engine_timeline, gpipe_two_stages, .timeout = 60)
{
    check(2, 4, "gpipe");
}
Test(engine_timeline, one_f_one_b_three_stages, .timeout = 60)
{
    check(3, 4, "1f1b");
}
Test(engine_timeline, naive_two_stages, .timeout = 60)
{
    check(2, 1, "naive");
}
