/*
 * test_engine_fail.c - failures in a one-process engine run end the run
 * with an error, never a hang: a shard that stops mid-job (its peers told,
 * or left to find out through their own bounded waits), and a job the
 * feeder refuses before any shard starts.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engine/local.h"

static mp_spec_t *make_spec(int pp, int dp, int64_t samples)
{
    char json[2048];
    snprintf(json, sizeof(json),
             "{\"name\": \"fail\", \"model\": {\"input\": 8, \"layers\": ["
             "{\"type\": \"linear\", \"out\": 16}, {\"type\": \"relu\"},"
             "{\"type\": \"mlp_block\", \"hidden\": 16, \"ffn\": 32},"
             "{\"type\": \"linear\", \"out\": 4}], \"loss\": \"softmax_xent\"},"
             "\"data\": {\"dataset\": \"synthetic\", \"samples\": %lld, \"classes\": 4,"
             "\"seed\": 2},"
             "\"parallel\": {\"pp\": %d, \"dp\": %d, \"micro_batches\": 2},"
             "\"train\": {\"batch_size\": 8, \"steps\": 6, \"optimizer\": \"sgd\", \"lr\": 0.1}}",
             (long long)samples, pp, dp);
    mp_spec_t *spec = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_spec_parse(json, strlen(json), &spec, &err), MP_OK, "%s", err.msg);
    return spec;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

Test(engine_fail, a_stopped_shard_fails_the_run_naming_it, .timeout = 60)
{
    mp_spec_t *spec = make_spec(2, 1, 64);
    mp_engine_local_opts_t o = mp_engine_local_opts_default();
    o.timeout_ms = 20000;
    o.fail_rank = 1;
    o.fail_at_step = 2;
    mp_engine_result_t res;
    mp_errbuf_t err = {{0}};
    double t0 = now_s();
    mp_status_t st = mp_engine_run_local(spec, &o, &res, &err);
    double secs = now_s() - t0;
    cr_expect_eq(st, MP_ERR_CANCELLED, "got %s: %s", mp_strerror(st), err.msg);
    cr_expect_not_null(strstr(err.msg, "rank 1 "), "%s", err.msg);
    /* The others were told: nobody waited for a timeout. */
    cr_expect_lt(secs, 10.0, "took %.1f s", secs);
    mp_spec_free(spec);
}

Test(engine_fail, peers_of_a_silent_shard_time_out_instead_of_hanging, .timeout = 60)
{
    mp_spec_t *spec = make_spec(2, 2, 64);
    mp_engine_local_opts_t o = mp_engine_local_opts_default();
    o.timeout_ms = 1500;
    o.fail_rank = 0;
    o.fail_at_step = 3;
    o.isolate_failures = true;
    mp_engine_result_t res;
    mp_errbuf_t err = {{0}};
    double t0 = now_s();
    mp_status_t st = mp_engine_run_local(spec, &o, &res, &err);
    double secs = now_s() - t0;
    cr_expect_neq(st, MP_OK);
    cr_expect_not_null(strstr(err.msg, "rank"), "%s", err.msg);
    /* Each peer gives up after its own bounded wait. */
    cr_expect_lt(secs, 20.0, "took %.1f s", secs);
    mp_spec_free(spec);
}

Test(engine_fail, a_refused_job_ends_before_any_shard_runs, .timeout = 60)
{
    /* 6 samples cannot fill one batch of 8: the feeder refuses the job. */
    mp_spec_t *spec = make_spec(2, 1, 6);
    mp_engine_result_t res;
    mp_errbuf_t err = {{0}};
    mp_status_t st = mp_engine_run_local(spec, NULL, &res, &err);
    cr_expect_eq(st, MP_ERR_SPEC, "got %s: %s", mp_strerror(st), err.msg);
    cr_expect_not_null(strstr(err.msg, "train.batch_size"), "%s", err.msg);
    mp_spec_free(spec);
}
