/*
 * test_frame.c - the frame codec (proto/codec.c): lengths checked before
 * allocation, frames split at every byte boundary, truncated and random
 * input, unknown messages and out-of-range enums refused.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "proto/codec.h"

static uint8_t *pack_submit(const char *json, size_t *len_p)
{
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__SubmitJob sj = MPAR__SUBMIT_JOB__INIT;
    sj.spec_json = (char *)json;
    sj.submitter = "alice";
    env.request_id = 42;
    env.msg_case = MPAR__ENVELOPE__MSG_SUBMIT_JOB;
    env.submit_job = &sj;
    uint8_t *buf;
    cr_assert_eq(mp_frame_pack(&env, MP_FRAME_MAX_DEFAULT, &buf, len_p), MP_OK);
    return buf;
}

/* Feeds data in one call sequence; returns the number of frames decoded and
 * checks each one is the submit frame. */
static int feed_all(mp_frame_decoder_t *dec, const uint8_t *data, size_t len, const char *json)
{
    int frames = 0;
    while (len > 0) {
        size_t used;
        const uint8_t *frame;
        size_t flen;
        mp_errbuf_t err;
        mp_status_t st = mp_frame_decoder_feed(dec, data, len, &used, &frame, &flen, &err);
        cr_assert(used <= len);
        data += used;
        len -= used;
        if (st == MP_ERR_INPROGRESS) {
            cr_assert_eq(len, 0);
            break;
        }
        cr_assert_eq(st, MP_OK, "feed failed: %s", err.msg);
        Mpar__Envelope *env;
        cr_assert_eq(mp_frame_unpack(frame, flen, &env, &err), MP_OK, "%s", err.msg);
        cr_assert_eq(env->msg_case, MPAR__ENVELOPE__MSG_SUBMIT_JOB);
        cr_assert_eq(env->request_id, 42);
        cr_assert_str_eq(env->submit_job->spec_json, json);
        cr_assert_str_eq(env->submit_job->submitter, "alice");
        mp_frame_envelope_free(env);
        frames++;
    }
    return frames;
}

Test(frame, roundtrip_one_frame)
{
    size_t len;
    uint8_t *buf = pack_submit("{\"name\":\"x\"}", &len);
    mp_frame_decoder_t *dec;
    cr_assert_eq(mp_frame_decoder_create(MP_FRAME_MAX_DEFAULT, &dec), MP_OK);
    cr_assert_eq(feed_all(dec, buf, len, "{\"name\":\"x\"}"), 1);
    cr_assert_not(mp_frame_decoder_partial(dec));
    mp_frame_decoder_destroy(dec);
    mp_free(buf);
}

Test(frame, valid_frames_split_at_every_byte_boundary)
{
    const char *json = "{\"model\":{\"input\":784},\"train\":{\"batch_size\":256}}";
    size_t len;
    uint8_t *one = pack_submit(json, &len);
    /* Two frames back to back, so splits also fall between them. */
    uint8_t *two = malloc(2 * len);
    memcpy(two, one, len);
    memcpy(two + len, one, len);
    for (size_t cut = 0; cut <= 2 * len; cut++) {
        mp_frame_decoder_t *dec;
        cr_assert_eq(mp_frame_decoder_create(MP_FRAME_MAX_DEFAULT, &dec), MP_OK);
        int n = feed_all(dec, two, cut, json);
        n += feed_all(dec, two + cut, 2 * len - cut, json);
        cr_assert_eq(n, 2, "split at %zu gave %d frames", cut, n);
        cr_assert_not(mp_frame_decoder_partial(dec));
        mp_frame_decoder_destroy(dec);
    }
    /* And one byte at a time. */
    mp_frame_decoder_t *dec;
    cr_assert_eq(mp_frame_decoder_create(MP_FRAME_MAX_DEFAULT, &dec), MP_OK);
    int n = 0;
    for (size_t i = 0; i < 2 * len; i++) {
        n += feed_all(dec, two + i, 1, json);
    }
    cr_assert_eq(n, 2);
    mp_frame_decoder_destroy(dec);
    free(two);
    mp_free(one);
}

static mp_status_t feed_header(uint32_t max, const uint8_t hdr[4], int64_t *alloc_delta_p)
{
    mp_frame_decoder_t *dec;
    cr_assert_eq(mp_frame_decoder_create(max, &dec), MP_OK);
    int64_t before = mp_alloc_live_bytes();
    size_t used;
    const uint8_t *frame;
    size_t flen;
    mp_errbuf_t err;
    /* Header alone, then header with trailing bytes (the fast path). */
    mp_status_t st = mp_frame_decoder_feed(dec, hdr, 4, &used, &frame, &flen, &err);
    *alloc_delta_p = mp_alloc_live_bytes() - before;
    mp_frame_decoder_destroy(dec);
    uint8_t more[16] = {0};
    memcpy(more, hdr, 4);
    cr_assert_eq(mp_frame_decoder_create(max, &dec), MP_OK);
    mp_status_t st2 = mp_frame_decoder_feed(dec, more, sizeof(more), &used, &frame, &flen, &err);
    cr_assert_eq(st, st2);
    mp_frame_decoder_destroy(dec);
    return st;
}

Test(frame, rejects_length_0xffffffff_before_allocating)
{
    const uint8_t hdr[4] = {0xff, 0xff, 0xff, 0xff};
    int64_t delta;
    cr_assert_eq(feed_header(MP_FRAME_MAX_DEFAULT, hdr, &delta), MP_ERR_TOOBIG);
    cr_assert_eq(delta, 0);
}

Test(frame, rejects_length_zero)
{
    const uint8_t hdr[4] = {0, 0, 0, 0};
    int64_t delta;
    cr_assert_eq(feed_header(MP_FRAME_MAX_DEFAULT, hdr, &delta), MP_ERR_PROTO);
    cr_assert_eq(delta, 0);
}

Test(frame, preauth_limit_is_4_kib)
{
    const uint8_t ok[4] = {0, 0, 0x10, 0x00};  /* 4096 */
    const uint8_t big[4] = {0, 0, 0x10, 0x01}; /* 4097 */
    int64_t delta;
    cr_assert_eq(feed_header(MP_FRAME_MAX_PREAUTH, ok, &delta), MP_ERR_INPROGRESS);
    cr_assert_eq(feed_header(MP_FRAME_MAX_PREAUTH, big, &delta), MP_ERR_TOOBIG);
    cr_assert_eq(delta, 0);
    cr_assert_eq(feed_header(MP_FRAME_MAX_DEFAULT, big, &delta), MP_ERR_INPROGRESS);
}

Test(frame, truncated_frame_stays_partial)
{
    size_t len;
    uint8_t *buf = pack_submit("{}", &len);
    mp_frame_decoder_t *dec;
    cr_assert_eq(mp_frame_decoder_create(MP_FRAME_MAX_DEFAULT, &dec), MP_OK);
    for (size_t cut = 1; cut < len; cut++) {
        mp_frame_decoder_t *d;
        cr_assert_eq(mp_frame_decoder_create(MP_FRAME_MAX_DEFAULT, &d), MP_OK);
        size_t used;
        const uint8_t *frame;
        size_t flen;
        mp_errbuf_t err;
        cr_assert_eq(mp_frame_decoder_feed(d, buf, cut, &used, &frame, &flen, &err),
                     MP_ERR_INPROGRESS);
        cr_assert_eq(used, cut);
        cr_assert(mp_frame_decoder_partial(d));
        mp_frame_decoder_destroy(d);
    }
    mp_frame_decoder_destroy(dec);
    /* A payload cut short is not an Envelope. */
    Mpar__Envelope *env;
    mp_errbuf_t err;
    cr_assert_eq(mp_frame_unpack(buf + 4, len - 4 - 3, &env, &err), MP_ERR_PROTO);
    mp_free(buf);
}

Test(frame, random_bytes_never_yield_an_invalid_envelope)
{
    srand(7);
    int refused = 0;
    for (int i = 0; i < 20000; i++) {
        uint8_t b[64];
        size_t n = 1 + (size_t)(rand() % (int)sizeof(b));
        for (size_t k = 0; k < n; k++) {
            b[k] = (uint8_t)rand();
        }
        Mpar__Envelope *env;
        mp_errbuf_t err;
        mp_status_t st = mp_frame_unpack(b, n, &env, &err);
        cr_assert(st == MP_OK || st == MP_ERR_PROTO);
        if (st == MP_OK) {
            cr_assert_neq(env->msg_case, MPAR__ENVELOPE__MSG__NOT_SET);
            cr_assert_eq(mp_frame_message_check(&env->base, &err), MP_OK);
            mp_frame_envelope_free(env);
        } else {
            refused++;
        }
    }
    cr_assert_gt(refused, 19000);
}

Test(frame, unknown_oneof_is_refused)
{
    /* Field 99, length-delimited, empty: a message this build does not know. */
    const uint8_t payload[] = {0x9a, 0x06, 0x00}; /* tag (99 << 3 | 2) as a varint */
    Mpar__Envelope *env;
    mp_errbuf_t err;
    cr_assert_eq(mp_frame_unpack(payload, sizeof(payload), &env, &err), MP_ERR_PROTO);
    cr_assert(strstr(err.msg, "unknown message") != NULL, "%s", err.msg);
    /* An Envelope with only request_id set names no message either. */
    const uint8_t only_id[] = {0x08, 0x05};
    cr_assert_eq(mp_frame_unpack(only_id, sizeof(only_id), &env, &err), MP_ERR_PROTO);
}

Test(frame, field_number_zero_is_refused)
{
    /* Found by the fuzzer: tag 0 written as a padded varint (0x80 0x00)
     * inside a JobAssignment. */
    const uint8_t payload[] = {0xe2, 0x03, 0x06, 0x0a, 0x01, 0x37, 0x80, 0x00, 0x02};
    Mpar__Envelope *env;
    mp_errbuf_t err;
    cr_assert_eq(mp_frame_unpack(payload, sizeof(payload), &env, &err), MP_ERR_PROTO);
    cr_assert(strstr(err.msg, "field number 0") != NULL, "%s", err.msg);
}

Test(frame, out_of_range_enum_is_refused)
{
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__NodeList nl = MPAR__NODE_LIST__INIT;
    Mpar__NodeInfo ni = MPAR__NODE_INFO__INIT;
    Mpar__NodeInfo *nodes[1] = {&ni};
    ni.name = "n1";
    ni.state = (Mpar__NodeState)77;
    nl.n_nodes = 1;
    nl.nodes = nodes;
    env.msg_case = MPAR__ENVELOPE__MSG_NODE_LIST;
    env.node_list = &nl;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(mp_frame_pack(&env, MP_FRAME_MAX_DEFAULT, &buf, &len), MP_OK);
    Mpar__Envelope *out;
    mp_errbuf_t err;
    cr_assert_eq(mp_frame_unpack(buf + 4, len - 4, &out, &err), MP_ERR_PROTO);
    cr_assert(strstr(err.msg, "state") != NULL, "%s", err.msg);
    mp_free(buf);
    /* The same list with a declared state passes. */
    ni.state = MPAR__NODE_STATE__NODE_STATE_DEAD;
    cr_assert_eq(mp_frame_pack(&env, MP_FRAME_MAX_DEFAULT, &buf, &len), MP_OK);
    cr_assert_eq(mp_frame_unpack(buf + 4, len - 4, &out, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(out->node_list->nodes[0]->state, MPAR__NODE_STATE__NODE_STATE_DEAD);
    mp_frame_envelope_free(out);
    mp_free(buf);
}

Test(frame, pack_refuses_over_limit)
{
    char *big = malloc(10000);
    memset(big, 'a', 9999);
    big[9999] = '\0';
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__SubmitJob sj = MPAR__SUBMIT_JOB__INIT;
    sj.spec_json = big;
    env.msg_case = MPAR__ENVELOPE__MSG_SUBMIT_JOB;
    env.submit_job = &sj;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(mp_frame_pack(&env, MP_FRAME_MAX_PREAUTH, &buf, &len), MP_ERR_TOOBIG);
    free(big);
}

Test(frame, message_names)
{
    cr_assert_str_eq(mp_frame_msg_name(MPAR__ENVELOPE__MSG_SUBMIT_JOB), "submit_job");
    cr_assert_str_eq(mp_frame_msg_name(MPAR__ENVELOPE__MSG__NOT_SET), "unknown");
    cr_assert_str_eq(mp_frame_msg_name((Mpar__Envelope__MsgCase)1), "unknown");
}
