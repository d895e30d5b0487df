/*
 * codec.c - the frame codec: the incremental length-prefixed decoder, the
 * checked Envelope unpack and the encoder.  Owns each decoder's partial-frame
 * buffer (allocated only after the length passed the limit).  Pure; the
 * caller's thread.
 */
#include "proto/codec.h"

#include <stdbool.h>
#include <string.h>

#include "common/alloc.h"

struct mp_frame_decoder {
    uint32_t max_len;
    uint8_t header[MP_FRAME_HEADER_LEN];
    uint32_t header_have; /* bytes of header read */
    uint32_t body_len;    /* valid once header_have == 4 */
    uint32_t body_have;
    uint8_t *body; /* body_len bytes, allocated after the length check */
};

static void *pb_alloc(void *data, size_t size)
{
    return mp_malloc(size);
}
static void pb_free(void *data, void *ptr)
{
    mp_free(ptr);
}
static ProtobufCAllocator pb_allocator = {pb_alloc, pb_free, NULL};

mp_status_t mp_frame_decoder_create(uint32_t max_len, mp_frame_decoder_t **dec_p)
{
    mp_frame_decoder_t *dec = mp_calloc(1, sizeof(*dec));
    if (dec == NULL) {
        return MP_ERR_NOMEM;
    }
    dec->max_len = max_len;
    *dec_p = dec;
    return MP_OK;
}

void mp_frame_decoder_destroy(mp_frame_decoder_t *dec)
{
    if (dec == NULL) {
        return;
    }
    mp_free(dec->body);
    mp_free(dec);
}

void mp_frame_decoder_set_max(mp_frame_decoder_t *dec, uint32_t max_len)
{
    dec->max_len = max_len;
}

int mp_frame_decoder_partial(const mp_frame_decoder_t *dec)
{
    /* A frame handed out and not yet dropped is not partial. */
    bool done = dec->header_have == MP_FRAME_HEADER_LEN && dec->body != NULL &&
                dec->body_have == dec->body_len;
    return dec->header_have > 0 && !done;
}

static void decoder_restart(mp_frame_decoder_t *dec)
{
    dec->header_have = 0;
    dec->body_len = 0;
    dec->body_have = 0;
}

static mp_status_t decoder_check_len(mp_frame_decoder_t *dec, uint32_t len, mp_errbuf_t *err)
{
    if (len == 0) {
        return mp_errbuf_set(err, MP_ERR_PROTO, "empty frame (length 0)");
    }
    if (len > dec->max_len) {
        return mp_errbuf_set(err, MP_ERR_TOOBIG, "frame of %u bytes is over the limit of %u", len,
                             dec->max_len);
    }
    return MP_OK;
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

mp_status_t mp_frame_decoder_feed(mp_frame_decoder_t *dec, const uint8_t *data, size_t len,
                                  size_t *used_p, const uint8_t **frame_p, size_t *frame_len_p,
                                  mp_errbuf_t *err)
{
    size_t used = 0;
    mp_status_t st;

    /* A frame that finished on the previous call is dropped now. */
    if (dec->header_have == MP_FRAME_HEADER_LEN && dec->body_have == dec->body_len &&
        dec->body_len > 0) {
        mp_free(dec->body);
        dec->body = NULL;
        decoder_restart(dec);
    }

    /* Fast path: a whole frame lies in `data`; hand it out without a copy. */
    if (dec->header_have == 0 && len >= MP_FRAME_HEADER_LEN) {
        uint32_t n = be32(data);
        st = decoder_check_len(dec, n, err);
        if (st != MP_OK) {
            *used_p = 0;
            return st;
        }
        if (len - MP_FRAME_HEADER_LEN >= n) {
            *used_p = MP_FRAME_HEADER_LEN + (size_t)n;
            *frame_p = data + MP_FRAME_HEADER_LEN;
            *frame_len_p = n;
            return MP_OK;
        }
    }

    while (dec->header_have < MP_FRAME_HEADER_LEN && used < len) {
        dec->header[dec->header_have++] = data[used++];
    }
    if (dec->header_have < MP_FRAME_HEADER_LEN) {
        *used_p = used;
        return MP_ERR_INPROGRESS;
    }
    if (dec->body == NULL) {
        uint32_t n = be32(dec->header);
        st = decoder_check_len(dec, n, err);
        if (st != MP_OK) {
            *used_p = used;
            return st;
        }
        dec->body = mp_malloc(n);
        if (dec->body == NULL) {
            *used_p = used;
            return mp_errbuf_set(err, MP_ERR_NOMEM, "cannot allocate a frame of %u bytes", n);
        }
        dec->body_len = n;
        dec->body_have = 0;
    }
    size_t take = len - used;
    if (take > dec->body_len - dec->body_have) {
        take = dec->body_len - dec->body_have;
    }
    memcpy(dec->body + dec->body_have, data + used, take);
    dec->body_have += (uint32_t)take;
    used += take;
    *used_p = used;
    if (dec->body_have < dec->body_len) {
        return MP_ERR_INPROGRESS;
    }
    *frame_p = dec->body;
    *frame_len_p = dec->body_len;
    return MP_OK;
}

/* Walks a parsed message: every enum value must be one the descriptor declares. */
static mp_status_t check_message(const ProtobufCMessage *msg, int depth, mp_errbuf_t *err)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    if (depth > 16) {
        return mp_errbuf_set(err, MP_ERR_PROTO, "messages nested too deep");
    }
    /* protobuf-c keeps unknown fields, and accepts field number 0 when its
     * tag is a padded varint; such a field could not even be re-encoded. */
    for (unsigned i = 0; i < msg->n_unknown_fields; i++) {
        if (msg->unknown_fields[i].tag == 0) {
            return mp_errbuf_set(err, MP_ERR_PROTO, "%s: field number 0", d->name);
        }
    }
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)msg;
        if (f->type != PROTOBUF_C_TYPE_ENUM && f->type != PROTOBUF_C_TYPE_MESSAGE) {
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which;
            memcpy(&which, base + f->quantifier_offset, sizeof(which));
            if (which != f->id) {
                continue;
            }
        }
        size_t count = 1;
        const char *elems = base + f->offset;
        size_t stride = f->type == PROTOBUF_C_TYPE_ENUM ? sizeof(int) : sizeof(void *);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            memcpy(&count, base + f->quantifier_offset, sizeof(count));
            memcpy(&elems, base + f->offset, sizeof(elems));
            if (count > 0 && elems == NULL) {
                return mp_errbuf_set(err, MP_ERR_PROTO, "%s.%s: missing elements", d->name,
                                     f->name);
            }
        }
        for (size_t k = 0; k < count; k++) {
            const char *at = elems + k * stride;
            if (f->type == PROTOBUF_C_TYPE_ENUM) {
                int v;
                memcpy(&v, at, sizeof(v));
                if (protobuf_c_enum_descriptor_get_value(f->descriptor, v) == NULL) {
                    return mp_errbuf_set(err, MP_ERR_PROTO, "%s.%s: enum value %d out of range",
                                         d->name, f->name, v);
                }
            } else {
                const ProtobufCMessage *sub;
                memcpy(&sub, at, sizeof(sub));
                if (sub != NULL) {
                    mp_status_t st = check_message(sub, depth + 1, err);
                    if (st != MP_OK) {
                        return st;
                    }
                }
            }
        }
    }
    return MP_OK;
}

mp_status_t mp_frame_message_check(const ProtobufCMessage *msg, mp_errbuf_t *err)
{
    return check_message(msg, 0, err);
}

mp_status_t mp_frame_unpack(const uint8_t *payload, size_t len, Mpar__Envelope **env_p,
                            mp_errbuf_t *err)
{
    Mpar__Envelope *env = mpar__envelope__unpack(&pb_allocator, len, payload);
    if (env == NULL) {
        return mp_errbuf_set(err, MP_ERR_PROTO, "frame of %zu bytes is not a valid Envelope", len);
    }
    if (env->msg_case == MPAR__ENVELOPE__MSG__NOT_SET) {
        mpar__envelope__free_unpacked(env, &pb_allocator);
        return mp_errbuf_set(err, MP_ERR_PROTO,
                             "unknown message (no known field of the Envelope set)");
    }
    mp_status_t st = check_message(&env->base, 0, err);
    if (st != MP_OK) {
        mpar__envelope__free_unpacked(env, &pb_allocator);
        return st;
    }
    *env_p = env;
    return MP_OK;
}

void mp_frame_envelope_free(Mpar__Envelope *env)
{
    if (env != NULL) {
        mpar__envelope__free_unpacked(env, &pb_allocator);
    }
}

mp_status_t mp_frame_pack(const Mpar__Envelope *env, uint32_t max_len, uint8_t **buf_p,
                          size_t *len_p)
{
    size_t n = mpar__envelope__get_packed_size(env);
    if (n == 0 || n > max_len) {
        return n == 0 ? MP_ERR_INVAL : MP_ERR_TOOBIG;
    }
    uint8_t *buf = mp_malloc(MP_FRAME_HEADER_LEN + n);
    if (buf == NULL) {
        return MP_ERR_NOMEM;
    }
    buf[0] = (uint8_t)(n >> 24);
    buf[1] = (uint8_t)(n >> 16);
    buf[2] = (uint8_t)(n >> 8);
    buf[3] = (uint8_t)n;
    size_t w = mpar__envelope__pack(env, buf + MP_FRAME_HEADER_LEN);
    if (w != n) {
        mp_free(buf);
        return MP_ERR_INVAL;
    }
    *buf_p = buf;
    *len_p = MP_FRAME_HEADER_LEN + n;
    return MP_OK;
}

const char *mp_frame_msg_name(Mpar__Envelope__MsgCase msg_case)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&mpar__envelope__descriptor, (unsigned)msg_case);
    if (f == NULL || msg_case == MPAR__ENVELOPE__MSG__NOT_SET ||
        !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) {
        return "unknown";
    }
    return f->name;
}
