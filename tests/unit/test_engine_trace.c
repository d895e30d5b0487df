/*
 * test_engine_trace.c - the timeline renderers: a real run's spans become
 * a Chrome trace that parses as JSON with one complete event per span,
 * times relative to the earliest span and named like the schedule's text,
 * and an SVG with one box per compute span; chunks (interleaved_1f1b) named
 * and shaded.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/local.h"
#include "engine/trace.h"

static mp_spec_t *make_spec(void)
{
    const char *json =
        "{\"name\": \"trace\", \"model\": {\"input\": 8, \"layers\": ["
        "{\"type\": \"linear\", \"out\": 16}, {\"type\": \"gelu\"},"
        "{\"type\": \"linear\", \"out\": 4}], \"loss\": \"softmax_xent\"},"
        "\"data\": {\"dataset\": \"synthetic\", \"samples\": 64, \"classes\": 4, \"seed\": 2},"
        "\"parallel\": {\"pp\": 2, \"dp\": 2, \"micro_batches\": 2, \"schedule\": \"gpipe\"},"
        "\"train\": {\"batch_size\": 16, \"steps\": 2, \"optimizer\": \"sgd\", \"lr\": 0.1}}";
    mp_spec_t *spec = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_spec_parse(json, strlen(json), &spec, &err), MP_OK, "%s", err.msg);
    return spec;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle)) {
        n++;
    }
    return n;
}

Test(engine_trace, chrome_json_and_svg_of_a_run, .timeout = 60)
{
    mp_spec_t *spec = make_spec();
    mp_engine_result_t res;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_engine_run_local(spec, NULL, &res, &err), MP_OK, "%s", err.msg);
    mp_trace_row_t rows[4];
    cr_assert_eq(res.nranks, 4);
    mp_trace_rows_from_ranks(2, 1, res.nranks, res.spans, res.nspans, rows);
    cr_expect_eq(rows[3].stage, 1);
    cr_expect_eq(rows[3].dp_rank, 1);
    int total = 0, compute = 0;
    for (int r = 0; r < 4; r++) {
        total += rows[r].nspans;
        for (int i = 0; i < rows[r].nspans; i++) {
            mp_sched_op_t op = rows[r].spans[i].op;
            compute += op == MP_SCHED_FWD || op == MP_SCHED_BWD || op == MP_SCHED_DP_ALLREDUCE ||
                       op == MP_SCHED_OPT_STEP;
        }
    }
    cr_assert_gt(total, 0);

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_eq(mp_trace_write_chrome(f, rows, 4), MP_OK);
    fclose(f);
    json_error_t je;
    json_t *doc = json_loads(text, 0, &je);
    cr_assert_not_null(doc, "line %d: %s", je.line, je.text);
    json_t *evs = json_object_get(doc, "traceEvents");
    int x = 0, meta = 0, named_f0 = 0;
    double min_ts = 1e18;
    size_t i;
    json_t *ev;
    json_array_foreach(evs, i, ev)
    {
        const char *ph = json_string_value(json_object_get(ev, "ph"));
        if (strcmp(ph, "X") == 0) {
            x++;
            double ts = json_number_value(json_object_get(ev, "ts"));
            min_ts = ts < min_ts ? ts : min_ts;
            cr_expect_geq(json_number_value(json_object_get(ev, "dur")), 0.0);
            named_f0 += strcmp(json_string_value(json_object_get(ev, "name")), "F0") == 0;
        } else {
            meta++;
        }
    }
    cr_expect_eq(x, total);
    cr_expect_eq(meta, 4);
    cr_expect_eq(min_ts, 0.0);
    cr_expect_eq(named_f0, 4, "every shard runs F0 once");
    json_decref(doc);
    free(text);

    f = open_memstream(&text, &len);
    cr_assert_eq(mp_trace_write_svg(f, rows, 4, "gpipe p=2 dp=2"), MP_OK);
    fclose(f);
    cr_expect_not_null(strstr(text, "<svg"));
    cr_expect_not_null(strstr(text, "</svg>"));
    /* A box per compute span, plus the background. */
    cr_expect_geq(count(text, "<rect x="), compute);
    cr_expect_eq(count(text, "fill=\"#4a90d9\""), 4 * 2, "a blue forward per shard and mb");
    free(text);
    mp_engine_result_free(&res);
    mp_spec_free(spec);
}

/* Under interleaved_1f1b a span names its chunk ("F1.1": micro-batch 1 of
 * chunk 1), in the Chrome trace (name and args.chunk) and the SVG, where
 * B and W keep their own colours and odd chunks are lighter. */
Test(engine_trace, chunks_are_named_and_shaded)
{
    mp_exec_span_t s0[] = {
        {MP_SCHED_FWD, 1, 0, 1000000, 0},
        {MP_SCHED_FWD, 1, 1000000, 2000000, 1},
        {MP_SCHED_BWD, 1, 2000000, 3000000, 1},
        {MP_SCHED_BWD_W, 1, 3000000, 4000000, 1},
        {MP_SCHED_OPT_STEP, -1, 4000000, 4500000, 0},
    };
    mp_trace_row_t row = {.rank = 0, .nspans = 5, .spans = s0};
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_eq(mp_trace_write_chrome(f, &row, 1), MP_OK);
    fclose(f);
    json_error_t je;
    json_t *doc = json_loads(text, 0, &je);
    cr_assert_not_null(doc, "line %d: %s", je.line, je.text);
    json_t *evs = json_object_get(doc, "traceEvents");
    cr_assert_eq(json_array_size(evs), 6);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(evs, 1), "name")), "F1.0");
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(evs, 2), "name")), "F1.1");
    cr_expect_eq(json_integer_value(
                     json_object_get(json_object_get(json_array_get(evs, 2), "args"), "chunk")),
                 1);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(evs, 5), "name")), "OPT");
    json_decref(doc);
    free(text);

    f = open_memstream(&text, &len);
    cr_assert_eq(mp_trace_write_svg(f, &row, 1, "interleaved"), MP_OK);
    fclose(f);
    cr_expect_eq(count(text, "fill=\"#4a90d9\" fill-opacity=\"1\""), 1, "%s", text);
    cr_expect_eq(count(text, "fill=\"#4a90d9\" fill-opacity=\"0.6\""), 1);
    cr_expect_eq(count(text, "fill=\"#5cb85c\" fill-opacity=\"0.6\""), 1, "B green");
    cr_expect_eq(count(text, "fill=\"#8e44ad\" fill-opacity=\"0.6\""), 1, "W purple");
    cr_expect_not_null(strstr(text, "<title>F1.1 "));
    cr_expect_not_null(strstr(text, "micro-batch.chunk"));
    free(text);
}
