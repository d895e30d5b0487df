/*
 * fuzz_frame.c - libFuzzer harness (clang, ASan+UBSan) over the control
 * plane's input paths: the incremental frame decoder fed in fuzzer-chosen
 * chunks under both limits, mp_frame_unpack of every frame (re-packed and
 * rendered as JSON when it parses), the server and client handshakes, and
 * the raw unpack of every message type of mpar.proto.  Input: byte 0 picks
 * the chunk size and limit, the rest is the byte stream.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "proto/codec.h"
#include "proto/json.h"
#include "transport/auth.h"

static const ProtobufCMessageDescriptor *const all_messages[] = {
    &mpar__hello__descriptor,
    &mpar__challenge__descriptor,
    &mpar__auth__descriptor,
    &mpar__welcome__descriptor,
    &mpar__device__descriptor,
    &mpar__register_node__descriptor,
    &mpar__node_registered__descriptor,
    &mpar__heartbeat__descriptor,
    &mpar__goodbye__descriptor,
    &mpar__node_info__descriptor,
    &mpar__job_info__descriptor,
    &mpar__submit_job__descriptor,
    &mpar__job_accepted__descriptor,
    &mpar__list_nodes__descriptor,
    &mpar__node_list__descriptor,
    &mpar__list_jobs__descriptor,
    &mpar__job_list__descriptor,
    &mpar__get_job__descriptor,
    &mpar__job_reply__descriptor,
    &mpar__cancel_job__descriptor,
    &mpar__watch_job__descriptor,
    &mpar__job_event__descriptor,
    &mpar__error__descriptor,
    &mpar__ok__descriptor,
    &mpar__shard_id__descriptor,
    &mpar__shard_assignment__descriptor,
    &mpar__job_assignment__descriptor,
    &mpar__shard_address__descriptor,
    &mpar__shard_ready__descriptor,
    &mpar__peer_addresses__descriptor,
    &mpar__job_start__descriptor,
    &mpar__shard_report__descriptor,
    &mpar__shard_probe__descriptor,
    &mpar__get_waits__descriptor,
    &mpar__shard_wait__descriptor,
    &mpar__blocking_shard__descriptor,
    &mpar__wait_graph__descriptor,
    &mpar__job_abort__descriptor,
    &mpar__envelope__descriptor,
};

static mp_auth_secret_t *secret;

static void on_envelope(Mpar__Envelope *env)
{
    mp_errbuf_t err;
    /* Whatever parsed must re-encode and parse again the same way. */
    uint8_t *buf;
    size_t len;
    if (mp_frame_pack(env, MP_FRAME_MAX_DEFAULT, &buf, &len) == MP_OK) {
        Mpar__Envelope *again;
        if (mp_frame_unpack(buf + MP_FRAME_HEADER_LEN, len - MP_FRAME_HEADER_LEN, &again, &err) !=
                MP_OK ||
            again->msg_case != env->msg_case) {
            abort();
        }
        mp_frame_envelope_free(again);
        mp_free(buf);
    }
    json_t *j = mp_proto_to_json(&env->base);
    json_decref(j);
    /* Both sides of the handshake, fresh, with this message first. */
    for (int side = 0; side < 2; side++) {
        mp_handshake_params_t p = {.side = side ? MP_AUTH_SIDE_SERVER : MP_AUTH_SIDE_CLIENT,
                                   .secret = secret,
                                   .name = "fuzz",
                                   .role = MPAR__PEER_ROLE__PEER_ROLE_NODE};
        mp_handshake_t *hs;
        if (mp_handshake_create(&p, &hs) != MP_OK) {
            continue;
        }
        mp_handshake_out_t out;
        if (!side) {
            mp_handshake_start(hs, &out);
        }
        mp_handshake_on_envelope(hs, env, &out, &err);
        mp_handshake_destroy(hs);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (secret == NULL) {
        mp_log_set_level(MP_LOG_ERR);
        mp_auth_secret_from_bytes("fuzzing-cluster-secret", 22, &secret);
    }
    if (size < 1) {
        return 0;
    }
    size_t chunk = (size_t)(data[0] & 0x3f) + 1;
    uint32_t limit = (data[0] & 0x40) ? MP_FRAME_MAX_PREAUTH : MP_FRAME_MAX_DEFAULT;
    data++;
    size--;

    mp_frame_decoder_t *dec;
    if (mp_frame_decoder_create(limit, &dec) != MP_OK) {
        return 0;
    }
    size_t off = 0;
    while (off < size) {
        size_t n = size - off < chunk ? size - off : chunk;
        const uint8_t *p = data + off;
        size_t left = n;
        int broken = 0;
        while (left > 0) {
            size_t used = 0;
            const uint8_t *frame;
            size_t flen;
            mp_errbuf_t err;
            mp_status_t st = mp_frame_decoder_feed(dec, p, left, &used, &frame, &flen, &err);
            if (used > left) {
                abort();
            }
            p += used;
            left -= used;
            if (st == MP_ERR_INPROGRESS) {
                break;
            }
            if (st != MP_OK) {
                broken = 1;
                break;
            }
            if (flen == 0 || flen > limit) {
                abort();
            }
            Mpar__Envelope *env;
            if (mp_frame_unpack(frame, flen, &env, &err) == MP_OK) {
                if (env->msg_case == MPAR__ENVELOPE__MSG__NOT_SET) {
                    abort();
                }
                on_envelope(env);
                mp_frame_envelope_free(env);
            }
        }
        if (broken) {
            break;
        }
        off += n;
    }
    mp_frame_decoder_destroy(dec);

    /* Every message type straight from the bytes, as a peer could send it. */
    for (size_t i = 0; i < sizeof(all_messages) / sizeof(all_messages[0]); i++) {
        ProtobufCMessage *m = protobuf_c_message_unpack(all_messages[i], NULL, size, data);
        if (m != NULL) {
            mp_errbuf_t err;
            mp_frame_message_check(m, &err);
            json_decref(mp_proto_to_json(m));
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    return 0;
}
