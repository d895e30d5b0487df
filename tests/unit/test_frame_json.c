/*
 * test_frame_json.c - the descriptor-driven JSON rendering of control
 * messages (proto/json.c) that the status socket and `-o json` print: enum
 * short names, has_X companions as null, 64-bit integers, bytes as hex,
 * repeated messages, and only the set member of the Envelope's oneof.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/json.h"
#include "proto/mpar.pb-c.h"

Test(frame_json, job_info_renders_states_nulls_and_numbers)
{
    Mpar__JobInfo j = MPAR__JOB_INFO__INIT;
    j.id = "12";
    j.name = "fmnist";
    j.state = MPAR__JOB_STATE__JOB_STATE_SUCCEEDED;
    j.steps = 9007199254740991ull; /* 2^53 - 1 */
    j.has_final_loss = 1;
    j.final_loss = 0.25;
    j.samples_per_s = 1000.5;
    json_t *o = mp_proto_to_json(&j.base);
    cr_assert_not_null(o);
    cr_assert_str_eq(json_string_value(json_object_get(o, "state")), "SUCCEEDED");
    cr_assert_str_eq(json_string_value(json_object_get(o, "id")), "12");
    cr_assert_eq(json_integer_value(json_object_get(o, "steps")), 9007199254740991ll);
    cr_assert_float_eq(json_real_value(json_object_get(o, "final_loss")), 0.25, 1e-12);
    cr_assert(json_is_null(json_object_get(o, "test_accuracy")));
    cr_assert(json_is_null(json_object_get(o, "bubble_fraction")));
    cr_assert_null(json_object_get(o, "has_final_loss"));
    cr_assert_float_eq(json_real_value(json_object_get(o, "samples_per_s")), 1000.5, 1e-12);
    json_decref(o);
}

Test(frame_json, node_list_renders_repeated_devices)
{
    Mpar__Device d0 = MPAR__DEVICE__INIT, d1 = MPAR__DEVICE__INIT;
    d0.kind = MPAR__DEVICE_KIND__DEVICE_KIND_CPU;
    d1.kind = MPAR__DEVICE_KIND__DEVICE_KIND_CUDA;
    d1.index = 1;
    Mpar__Device *devs[2] = {&d0, &d1};
    Mpar__NodeInfo n = MPAR__NODE_INFO__INIT;
    n.name = "n1";
    n.state = MPAR__NODE_STATE__NODE_STATE_SUSPECT;
    n.devices = devs;
    n.n_devices = 2;
    Mpar__NodeInfo *nodes[1] = {&n};
    Mpar__NodeList nl = MPAR__NODE_LIST__INIT;
    nl.nodes = nodes;
    nl.n_nodes = 1;
    json_t *o = mp_proto_to_json(&nl.base);
    json_t *node = json_array_get(json_object_get(o, "nodes"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(node, "state")), "SUSPECT");
    json_t *dv = json_object_get(node, "devices");
    cr_assert_eq(json_array_size(dv), 2);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(dv, 1), "kind")), "CUDA");
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(dv, 1), "index")), 1);
    json_decref(o);
}

Test(frame_json, envelope_shows_only_the_set_message_and_bytes_as_hex)
{
    uint8_t nonce[3] = {0x00, 0xab, 0xff};
    Mpar__Hello h = MPAR__HELLO__INIT;
    h.version = 1;
    h.nonce.data = nonce;
    h.nonce.len = 3;
    h.role = MPAR__PEER_ROLE__PEER_ROLE_CLIENT;
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    env.request_id = 3;
    env.msg_case = MPAR__ENVELOPE__MSG_HELLO;
    env.hello = &h;
    json_t *o = mp_proto_to_json(&env.base);
    cr_assert_eq(json_object_size(o), 2, "request_id and hello only");
    json_t *hj = json_object_get(o, "hello");
    cr_assert_str_eq(json_string_value(json_object_get(hj, "nonce")), "00abff");
    cr_assert_str_eq(json_string_value(json_object_get(hj, "role")), "CLIENT");
    json_decref(o);
}

Test(frame_json, enum_short_names)
{
    cr_assert_str_eq(mp_proto_enum_short(&mpar__node_state__descriptor, 3), "DEAD");
    cr_assert_str_eq(mp_proto_enum_short(&mpar__error_code__descriptor, 4), "INVALID_SPEC");
    cr_assert_str_eq(mp_proto_enum_short(&mpar__job_state__descriptor, 99), "UNKNOWN");
}

Test(frame_json, non_finite_numbers_render_as_strings_not_dropped)
{
    /* jansson's json_real() is NULL for NaN and Inf; a record with one
     * must still render, the numbers as the protobuf JSON mapping's strings. */
    double losses[4] = {0.5, NAN, INFINITY, -INFINITY};
    Mpar__JobInfo j = MPAR__JOB_INFO__INIT;
    j.id = "7";
    j.has_final_loss = 1;
    j.final_loss = NAN;
    j.samples_per_s = INFINITY;
    j.losses = losses;
    j.n_losses = 4;
    json_t *o = mp_proto_to_json(&j.base);
    cr_assert_not_null(o);
    cr_assert_str_eq(json_string_value(json_object_get(o, "final_loss")), "NaN");
    cr_assert_str_eq(json_string_value(json_object_get(o, "samples_per_s")), "Infinity");
    json_t *l = json_object_get(o, "losses");
    cr_assert_eq(json_array_size(l), 4);
    cr_assert_float_eq(json_real_value(json_array_get(l, 0)), 0.5, 1e-12);
    cr_assert_str_eq(json_string_value(json_array_get(l, 1)), "NaN");
    cr_assert_str_eq(json_string_value(json_array_get(l, 2)), "Infinity");
    cr_assert_str_eq(json_string_value(json_array_get(l, 3)), "-Infinity");
    char *text = json_dumps(o, JSON_COMPACT);
    cr_assert_not_null(text);
    free(text);
    json_decref(o);
}

Test(frame_json, non_finite_strings_read_back)
{
    double v = 0;
    json_t *x = mp_json_real(-INFINITY);
    cr_assert(mp_json_real_value(x, &v));
    cr_assert(isinf(v) && v < 0);
    json_decref(x);
    x = json_string("NaN");
    cr_assert(mp_json_real_value(x, &v));
    cr_assert(isnan(v));
    json_decref(x);
    x = json_real(2.25);
    cr_assert(mp_json_real_value(x, &v));
    cr_assert_float_eq(v, 2.25, 1e-12);
    json_decref(x);
    x = json_string("nan please");
    v = 3;
    cr_assert_not(mp_json_real_value(x, &v));
    cr_assert_float_eq(v, 3, 1e-12);
    json_decref(x);
}
