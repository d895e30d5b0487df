/*
 * test_sample.c - the choice of the next byte (model/sample.c): greedy is
 * the first maximum; only the 256 bytes are candidates; top-k keeps the k
 * largest (ties with the k-th included); draws follow softmax(logits / T)
 * and a seed reproduces them.  And which specs can be sampled from.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "model/sample.h"

static double scratch[256];

Test(sample, greedy_takes_the_first_maximum)
{
    float l[256];
    for (int i = 0; i < 256; i++) {
        l[i] = (float)(i % 7);
    }
    mp_sample_opts_t o = {.temperature = 0.0};
    cr_assert_eq(mp_sample_pick(l, 256, &o, 0, scratch), 6);
    l[200] = 9.0f;
    l[201] = 9.0f;
    cr_assert_eq(mp_sample_pick(l, 256, &o, 5, scratch), 200);
}

Test(sample, only_bytes_are_candidates)
{
    float l[300];
    for (int i = 0; i < 300; i++) {
        l[i] = 0.0f;
    }
    l[280] = 50.0f; /* beyond the byte vocabulary */
    l[65] = 1.0f;
    mp_sample_opts_t o = {.temperature = 0.0};
    cr_assert_eq(mp_sample_pick(l, 300, &o, 0, scratch), 65);
    o.temperature = 1.0;
    for (int s = 0; s < 200; s++) {
        cr_assert_lt(mp_sample_pick(l, 300, &o, s, scratch), 256);
    }
}

Test(sample, top_k_of_one_is_greedy_at_any_temperature)
{
    float l[256];
    for (int i = 0; i < 256; i++) {
        l[i] = sinf((float)i);
    }
    mp_sample_opts_t g = {.temperature = 0.0};
    int best = mp_sample_pick(l, 256, &g, 0, scratch);
    mp_sample_opts_t o = {.temperature = 5.0, .top_k = 1, .seed = 9};
    for (int s = 0; s < 100; s++) {
        cr_assert_eq(mp_sample_pick(l, 256, &o, s, scratch), best);
    }
}

Test(sample, top_k_keeps_the_k_largest_and_their_ties)
{
    float l[256];
    for (int i = 0; i < 256; i++) {
        l[i] = -10.0f;
    }
    l[3] = 2.0f;
    l[10] = 1.0f;
    l[20] = 0.5f;
    l[30] = 0.5f; /* ties with the 3rd largest: kept */
    l[40] = 0.4f;
    mp_sample_opts_t o = {.temperature = 1.0, .top_k = 3, .seed = 4};
    int seen[256] = {0};
    for (int s = 0; s < 4000; s++) {
        seen[mp_sample_pick(l, 256, &o, s, scratch)]++;
    }
    for (int i = 0; i < 256; i++) {
        bool kept = i == 3 || i == 10 || i == 20 || i == 30;
        if (!kept) {
            cr_assert_eq(seen[i], 0, "byte %d drawn %d times", i, seen[i]);
        }
    }
    cr_assert_gt(seen[30], 0);
    cr_assert_gt(seen[20], 0);
}

Test(sample, draws_follow_the_tempered_softmax)
{
    float l[256];
    for (int i = 0; i < 256; i++) {
        l[i] = -INFINITY;
    }
    l[0] = 0.0f;
    l[1] = 1.0f;
    l[2] = 2.0f;
    const double temps[2] = {1.0, 0.5};
    for (int k = 0; k < 2; k++) {
        mp_sample_opts_t o = {.temperature = temps[k], .seed = 11};
        int n = 20000, seen[3] = {0};
        for (int s = 0; s < n; s++) {
            seen[mp_sample_pick(l, 256, &o, s, scratch)]++;
        }
        double z = 0.0;
        for (int i = 0; i < 3; i++) {
            z += exp(l[i] / temps[k]);
        }
        for (int i = 0; i < 3; i++) {
            double want = exp(l[i] / temps[k]) / z, got = (double)seen[i] / n;
            cr_assert(fabs(got - want) < 0.015, "T %.1f byte %d: %.4f drawn, %.4f expected",
                      temps[k], i, got, want);
        }
    }
}

Test(sample, a_seed_reproduces_its_draws)
{
    float l[256];
    for (int i = 0; i < 256; i++) {
        l[i] = (float)(i % 13) * 0.1f;
    }
    mp_sample_opts_t a = {.temperature = 1.0, .seed = 7}, b = a, c = a;
    c.seed = 8;
    int differ = 0;
    for (int s = 0; s < 64; s++) {
        int x = mp_sample_pick(l, 256, &a, s, scratch);
        cr_assert_eq(x, mp_sample_pick(l, 256, &b, s, scratch));
        differ += x != mp_sample_pick(l, 256, &c, s, scratch);
    }
    cr_assert_gt(differ, 32, "another seed gives other draws (%d of 64 differ)", differ);
}

Test(sample, refuses_a_model_that_is_not_a_text_model)
{
    mp_spec_t spec;
    memset(&spec, 0, sizeof(spec));
    spec.model.nlayers = 1;
    spec.model.layers[0] = (mp_layer_spec_t){.kind = MP_LAYER_LINEAR, .out = 10, .in_dim = 784,
                                             .out_dim = 10};
    spec.data.kind = MP_DATA_FASHION_MNIST;
    mp_errbuf_t err;
    cr_assert_eq(mp_sample_check_spec(&spec, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "model.layers[0]") != NULL, "%s", err.msg);
    spec.model.nlayers = 2;
    spec.model.layers[0] = (mp_layer_spec_t){.kind = MP_LAYER_EMBEDDING, .vocab = 256, .dim = 8,
                                             .max_seq = 4, .in_dim = 1, .out_dim = 8};
    spec.model.layers[1] = (mp_layer_spec_t){.kind = MP_LAYER_LINEAR, .out = 256, .in_dim = 8,
                                             .out_dim = 256};
    cr_assert_eq(mp_sample_check_spec(&spec, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "data.dataset") != NULL, "%s", err.msg);
    spec.data.kind = MP_DATA_TEXT;
    cr_assert_eq(mp_sample_check_spec(&spec, &err), MP_OK, "%s", err.msg);
    spec.model.layers[1].out_dim = 100;
    cr_assert_eq(mp_sample_check_spec(&spec, &err), MP_ERR_SPEC);
    cr_assert(strstr(err.msg, "model.layers[1].out") != NULL, "%s", err.msg);
}
