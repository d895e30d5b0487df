/*
 * test_engine_calib.c - the pipeline cut by measured per-layer costs
 * (engine/calib.h): the calibration measures every layer (identical layers
 * share one cost), the cut covers
 * the model with contiguous stages and balances the measured costs
 * exactly (no other contiguous cut has a cheaper slowest stage), the
 * prediction is a bubble, and applying the cut gives explicit stages (p x v
 * chunks under interleaved_1f1b).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "engine/calib.h"
#include "model/spec.h"

static mp_spec_t *parse(const char *json)
{
    mp_spec_t *spec = NULL;
    mp_errbuf_t err;
    cr_assert_eq(mp_spec_parse(json, strlen(json), &spec, &err), MP_OK, "%s", err.msg);
    return spec;
}

#define UNEVEN                                                                                     \
    "{\"model\": {\"input\": 64, \"layers\": [{\"type\": \"linear\", \"out\": 512},"               \
    "{\"type\": \"gelu\"}, {\"type\": \"mlp_block\", \"hidden\": 512, \"ffn\": 2048},"             \
    "{\"type\": \"gelu\"}, {\"type\": \"linear\", \"out\": 64}, {\"type\": \"relu\"},"             \
    "{\"type\": \"linear\", \"out\": 10}]},"                                                       \
    "\"data\": {\"dataset\": \"synthetic\", \"samples\": 256, \"classes\": 10},"                   \
    "\"parallel\": {\"pp\": %d, \"micro_batches\": 4%s},"                                          \
    "\"train\": {\"batch_size\": 64, \"steps\": 1, \"optimizer\": \"sgd\", \"lr\": 0.1}}"

static mp_spec_t *uneven(int pp, const char *extra)
{
    char json[2048];
    snprintf(json, sizeof(json), UNEVEN, pp, extra);
    return parse(json);
}

Test(engine_calib, measures_every_layer_and_balances_the_measured_costs)
{
    mp_spec_t *spec = uneven(3, "");
    cr_assert_eq(spec->parallel.partition, MP_PART_MEASURED);
    mp_engine_cut_t cut;
    mp_errbuf_t err;
    cr_assert_eq(mp_engine_cut_plan(spec, 1, true, &cut, &err), MP_OK, "%s", err.msg);
    cr_assert(cut.measured);
    int L = spec->model.nlayers;
    double cost[MP_SPEC_MAX_LAYERS], slowest = 0.0;
    for (int l = 0; l < L; l++) {
        cr_assert(cut.fwd[l] > 0.0 && cut.bwd[l] > 0.0, "layer %d: %g %g", l, cut.fwd[l],
                  cut.bwd[l]);
        cost[l] = cut.fwd[l] + cut.bwd[l];
    }
    /* Layers 1 and 3 are the same gelu of width 512: one cost. */
    cr_expect(cut.fwd[1] == cut.fwd[3] && cut.bwd[1] == cut.bwd[3], "%g %g / %g %g", cut.fwd[1],
              cut.fwd[3], cut.bwd[1], cut.bwd[3]);
    cr_assert_eq(cut.part.nstages, 3);
    int next = 0;
    for (int s = 0; s < 3; s++) {
        cr_assert_eq(cut.part.first[s], next);
        cr_assert_geq(cut.part.count[s], 1);
        next += cut.part.count[s];
        double c = cut.stage_fwd[s] + cut.stage_bwd[s];
        slowest = c > slowest ? c : slowest;
    }
    cr_assert_eq(next, L);
    /* Every other cut into 3 contiguous stages has a slowest stage at least as slow. */
    for (int a = 1; a < L - 1; a++) {
        for (int b = a + 1; b < L; b++) {
            double st[3] = {0, 0, 0};
            for (int l = 0; l < L; l++) {
                st[l < a ? 0 : (l < b ? 1 : 2)] += cost[l];
            }
            double worst = st[0] > st[1] ? st[0] : st[1];
            worst = worst > st[2] ? worst : st[2];
            cr_expect_geq(worst, slowest * (1 - 1e-12), "cut %d|%d beats the chosen one", a, b);
        }
    }
    cr_assert(cut.bubble > 0.0 && cut.bubble < 1.0, "bubble %g", cut.bubble);
    char text[512];
    mp_engine_cut_describe(spec, &cut, text, sizeof(text));
    cr_expect(strstr(text, "measured per-layer costs") != NULL, "%s", text);
    cr_expect(strstr(text, "predicted bubble") != NULL, "%s", text);
    mp_engine_cut_apply(spec, &cut);
    cr_assert_eq(spec->parallel.partition, MP_PART_EXPLICIT);
    mp_part_t again;
    cr_assert_eq(mp_part_build(spec, &again, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(memcmp(&again, &cut.part, sizeof(again)), 0);
    mp_spec_free(spec);
}

Test(engine_calib, keeps_a_chosen_rule_and_predicts_with_flops)
{
    mp_spec_t *spec = uneven(2, ", \"partition\": \"uniform\"");
    mp_engine_cut_t cut;
    mp_errbuf_t err;
    cr_assert_eq(mp_engine_cut_plan(spec, 1, true, &cut, &err), MP_OK, "%s", err.msg);
    cr_assert(!cut.measured);
    mp_part_t uni;
    cr_assert_eq(mp_part_uniform(spec->model.nlayers, 2, &uni, &err), MP_OK);
    cr_assert_eq(memcmp(&uni, &cut.part, sizeof(uni)), 0);
    /* Unequal FLOPs on the two stages: the predicted 1F1B bubble exceeds the balanced theory. */
    cr_assert(cut.bubble > 1.0 / 5.0, "bubble %g", cut.bubble);
    mp_spec_free(spec);
}

Test(engine_calib, balances_flops_for_gpu_shards)
{
    mp_spec_t *spec = uneven(2, "");
    mp_engine_cut_t cut;
    mp_errbuf_t err;
    cr_assert_eq(mp_engine_cut_plan(spec, 1, false, &cut, &err), MP_OK, "%s", err.msg);
    cr_assert(!cut.measured);
    spec->parallel.partition = MP_PART_BALANCED;
    mp_part_t flops;
    cr_assert_eq(mp_part_build(spec, &flops, &err), MP_OK);
    cr_assert_eq(memcmp(&flops, &cut.part, sizeof(flops)), 0);
    mp_spec_free(spec);
}

/* interleaved_1f1b: the cut is of p * v chunks, each balanced on its own
 * measured costs; the prediction simulates the chunks, and applying the
 * cut gives p * v explicit entries, as the coordinator hands the shards. */
Test(engine_calib, cuts_p_times_v_chunks_under_interleaved_1f1b)
{
    mp_spec_t *spec = uneven(2, ", \"schedule\": \"interleaved_1f1b\", \"virtual_stages\": 2");
    mp_engine_cut_t cut;
    mp_errbuf_t err;
    cr_assert_eq(mp_engine_cut_plan(spec, 1, true, &cut, &err), MP_OK, "%s", err.msg);
    cr_assert(cut.measured);
    cr_assert_eq(cut.part.nstages, 4);
    double sum = 0.0, total = 0.0;
    for (int u = 0; u < 4; u++) {
        cr_assert_geq(cut.part.count[u], 1);
        sum += cut.stage_fwd[u] + cut.stage_bwd[u];
    }
    for (int l = 0; l < spec->model.nlayers; l++) {
        total += cut.fwd[l] + cut.bwd[l];
    }
    cr_expect(sum > 0.999 * total && sum < 1.001 * total, "%g of %g", sum, total);
    cr_assert(cut.bubble > 0.0 && cut.bubble < 1.0, "bubble %g", cut.bubble);
    char text[700];
    mp_engine_cut_describe(spec, &cut, text, sizeof(text));
    cr_expect(strstr(text, "chunks (chunk c of stage s is entry c x pp + s): layers ") != NULL,
              "%s", text);
    cr_expect(strstr(text, "interleaved_1f1b") != NULL, "%s", text);
    mp_engine_cut_apply(spec, &cut);
    cr_expect_eq(spec->parallel.partition, MP_PART_EXPLICIT);
    cr_expect_eq(spec->parallel.nstages_explicit, 4);
    mp_spec_free(spec);
}
