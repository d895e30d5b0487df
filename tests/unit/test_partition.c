/*
 * test_partition.c - stage partitioning: uniform (the seed's 4 layers on 3
 * cards as [1, 2, 1]), balanced by FLOPs (a heavy layer gets its own
 * stage), explicit lists, and the refusals.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "parallel/partition.h"

static mp_spec_t *spec_new(int64_t input)
{
    static mp_spec_t spec;
    memset(&spec, 0, sizeof(spec));
    spec.model.input = input;
    spec.parallel.pp = 1;
    spec.parallel.tp = 1;
    spec.parallel.dp = 1;
    spec.parallel.micro_batches = 1;
    return &spec;
}

static void add(mp_spec_t *spec, mp_layer_kind_t kind, int64_t a, int64_t b)
{
    mp_layer_spec_t *l = &spec->model.layers[spec->model.nlayers++];
    l->kind = kind;
    if (kind == MP_LAYER_LINEAR) {
        l->out = a;
    } else if (kind == MP_LAYER_MLP_BLOCK) {
        l->hidden = a;
        l->ffn = b;
    }
}

static void expect(const mp_part_t *part, int n, const int *counts)
{
    cr_assert_eq(part->nstages, n);
    int first = 0;
    for (int s = 0; s < n; s++) {
        cr_assert_eq(part->first[s], first, "stage %d first %d, expected %d", s, part->first[s],
                     first);
        cr_assert_eq(part->count[s], counts[s], "stage %d count %d, expected %d", s, part->count[s],
                     counts[s]);
        first += counts[s];
    }
}

Test(partition, seed_four_layers_on_three_cards)
{
    /* The seed's figure: layer 0 on card 0, layers 1-2 on card 1, layer 3 on card 2. */
    mp_spec_t *spec = spec_new(16);
    for (int i = 0; i < 4; i++) {
        add(spec, MP_LAYER_LINEAR, 16, 0);
    }
    spec->parallel.pp = 3;
    mp_part_t part;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_OK, "%s", err.msg);
    expect(&part, 3, (int[]){1, 2, 1});
    cr_assert_eq(mp_part_stage_of(&part, 0), 0);
    cr_assert_eq(mp_part_stage_of(&part, 1), 1);
    cr_assert_eq(mp_part_stage_of(&part, 2), 1);
    cr_assert_eq(mp_part_stage_of(&part, 3), 2);
    cr_assert_eq(mp_part_stage_of(&part, 4), -1);

    /* The same through an explicit list, and balanced equal layers agree. */
    spec->parallel.partition = MP_PART_EXPLICIT;
    spec->parallel.nstages_explicit = 3;
    memcpy(spec->parallel.stage_layers, (int[]){1, 2, 1}, 3 * sizeof(int));
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_OK, "%s", err.msg);
    expect(&part, 3, (int[]){1, 2, 1});
}

Test(partition, uniform_covers_every_layer_once)
{
    for (int L = 1; L <= 40; L++) {
        for (int p = 1; p <= L && p <= MP_SPEC_MAX_STAGES; p++) {
            mp_part_t part;
            mp_errbuf_t err = {{0}};
            cr_assert_eq(mp_part_uniform(L, p, &part, &err), MP_OK, "%s", err.msg);
            int next = 0, lo = L, hi = 0;
            for (int s = 0; s < p; s++) {
                cr_assert_eq(part.first[s], next);
                cr_assert(part.count[s] >= 1);
                lo = part.count[s] < lo ? part.count[s] : lo;
                hi = part.count[s] > hi ? part.count[s] : hi;
                next += part.count[s];
            }
            cr_assert_eq(next, L);
            cr_assert(hi - lo <= 1, "L=%d p=%d: stages of %d and %d layers", L, p, lo, hi);
        }
    }
    mp_part_t part;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_part_uniform(6, 3, &part, &err), MP_OK);
    expect(&part, 3, (int[]){2, 2, 2});
}

/* A transformer block's attention costs 2*T*C per position more at T
 * positions than at one, and the FLOP costs of a spec use its model.seq. */
Test(partition, flops_count_attention_over_the_sequence)
{
    mp_layer_spec_t tb = {.kind = MP_LAYER_TRANSFORMER_BLOCK, .heads = 4, .ffn = 512};
    double one = mp_part_layer_flops(&tb, 128, 128, 1);
    double t64 = mp_part_layer_flops(&tb, 128, 128, 64);
    cr_assert_eq(t64 - one, 2.0 * 63 * 128);
    cr_assert_eq(one, 2.0 * 128 * 3 * 128 + 2.0 * 128 * 128 + 4.0 * 128 * 512 + 2.0 * 128);

    mp_spec_t *spec = spec_new(128);
    spec->model.layers[0] = tb;
    spec->model.nlayers = 1;
    spec->model.seq = 64;
    double cost[1];
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_part_flop_costs(spec, cost, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(cost[0], t64);
}

Test(partition, balanced_gives_a_heavy_layer_its_own_stage)
{
    /* linear 64->64 (8192 FLOPs), gelu (64), mlp_block 64x4096 (1 Mi FLOPs),
     * relu (64), linear 64->64, linear 64->10. */
    mp_spec_t *spec = spec_new(64);
    add(spec, MP_LAYER_LINEAR, 64, 0);
    add(spec, MP_LAYER_GELU, 0, 0);
    add(spec, MP_LAYER_MLP_BLOCK, 64, 4096);
    add(spec, MP_LAYER_RELU, 0, 0);
    add(spec, MP_LAYER_LINEAR, 64, 0);
    add(spec, MP_LAYER_LINEAR, 10, 0);
    spec->parallel.pp = 3;
    spec->parallel.partition = MP_PART_BALANCED;
    mp_part_t part;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_OK, "%s", err.msg);
    int heavy = mp_part_stage_of(&part, 2);
    cr_assert_eq(part.count[heavy], 1, "the mlp_block shares stage %d of %d layers", heavy,
                 part.count[heavy]);
    cr_assert_eq(mp_part_layer_flops(&spec->model.layers[2], 64, 64, 1), 4.0 * 64 * 4096);
    cr_assert_eq(mp_part_stage_flops(spec, &part, heavy), 4.0 * 64 * 4096);

    /* The exact optimum on plain costs, filled from the back. */
    double cost[] = {1, 1, 10, 1, 1};
    cr_assert_eq(mp_part_balanced(cost, 5, 3, &part, &err), MP_OK);
    expect(&part, 3, (int[]){2, 1, 2});
    double even[] = {3, 3, 3, 3, 3, 3};
    cr_assert_eq(mp_part_balanced(even, 6, 3, &part, &err), MP_OK);
    expect(&part, 3, (int[]){2, 2, 2});
    double tail[] = {5, 1, 1, 1, 1, 1};
    cr_assert_eq(mp_part_balanced(tail, 6, 2, &part, &err), MP_OK);
    expect(&part, 2, (int[]){1, 5});
    /* Every stage still gets a layer when one cost dominates. */
    double front[] = {100, 1, 1, 1};
    cr_assert_eq(mp_part_balanced(front, 4, 4, &part, &err), MP_OK);
    expect(&part, 4, (int[]){1, 1, 1, 1});
    cr_assert_eq(mp_part_balanced(front, 4, 2, &part, &err), MP_OK);
    expect(&part, 2, (int[]){1, 3});
}

Test(partition, parameterless_layer_at_a_boundary_is_fine)
{
    mp_spec_t *spec = spec_new(8);
    add(spec, MP_LAYER_LINEAR, 8, 0);
    add(spec, MP_LAYER_RELU, 0, 0);
    add(spec, MP_LAYER_LINEAR, 4, 0);
    spec->parallel.pp = 3;
    mp_part_t part;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_OK, "%s", err.msg);
    expect(&part, 3, (int[]){1, 1, 1});
    cr_assert_eq(mp_part_stage_flops(spec, &part, 1), 8.0);
}

Test(partition, refuses_what_cannot_hold)
{
    mp_spec_t *spec = spec_new(8);
    for (int i = 0; i < 4; i++) {
        add(spec, MP_LAYER_LINEAR, 8, 0);
    }
    mp_part_t part = {.nstages = 77};
    mp_errbuf_t err = {{0}};
    spec->parallel.pp = 5;
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_ERR_SPEC);
    cr_assert_str_eq(err.msg, "parallel.pp: 5 stages need at least 5 layers; model.layers has 4");
    cr_assert_eq(part.nstages, 77, "output written on failure");
    spec->parallel.pp = 0;
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "parallel.pp: 0") != NULL, "%s", err.msg);

    spec->parallel.pp = 2;
    spec->parallel.partition = MP_PART_EXPLICIT;
    spec->parallel.nstages_explicit = 3;
    memcpy(spec->parallel.stage_layers, (int[]){1, 2, 1}, 3 * sizeof(int));
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "parallel.stages: 3 entries") != NULL, "%s", err.msg);
    spec->parallel.nstages_explicit = 2;
    memcpy(spec->parallel.stage_layers, (int[]){1, 2}, 2 * sizeof(int));
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_ERR_SPEC);
    cr_assert_str_eq(err.msg, "parallel.stages: the stages hold 3 layers; model.layers has 4");
    memcpy(spec->parallel.stage_layers, (int[]){0, 4}, 2 * sizeof(int));
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "parallel.stages[0]: 0 layers") != NULL, "%s", err.msg);
    memcpy(spec->parallel.stage_layers, (int[]){3, 3}, 2 * sizeof(int));
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_ERR_SPEC);

    /* An mlp_block whose hidden is not the width entering it. */
    spec = spec_new(8);
    add(spec, MP_LAYER_MLP_BLOCK, 16, 32);
    cr_assert_eq(mp_part_build(spec, &part, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "model.layers[0].hidden") != NULL, "%s", err.msg);
}
