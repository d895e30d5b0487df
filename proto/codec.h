/*
 * codec.h - the frame codec of the control protocol (DESIGN.md "Control
 * plane"): a frame is a 4-byte big-endian length and one protobuf Envelope.
 * The incremental decoder checks the length against its limit before it
 * allocates anything; mp_frame_unpack parses an Envelope and refuses unknown
 * messages and out-of-range enums anywhere inside it.  Pure (no I/O); one
 * decoder per connection, any thread.
 */
#ifndef MP_PROTO_CODEC_H
#define MP_PROTO_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "proto/mpar.pb-c.h"

#define MP_FRAME_HEADER_LEN 4u
#define MP_FRAME_MAX_DEFAULT (4u << 20) /* after authentication */
#define MP_FRAME_MAX_PREAUTH 4096u      /* before authentication */
#define MP_PROTOCOL_VERSION ((uint32_t)MPAR__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT)

typedef struct mp_frame_decoder mp_frame_decoder_t;

mp_status_t mp_frame_decoder_create(uint32_t max_len, mp_frame_decoder_t **dec_p);
void mp_frame_decoder_destroy(mp_frame_decoder_t *dec);
/* Changes the limit for frames whose header has not been read yet. */
void mp_frame_decoder_set_max(mp_frame_decoder_t *dec, uint32_t max_len);
/* True while the decoder holds part of a frame (a stalled peer shows here). */
int mp_frame_decoder_partial(const mp_frame_decoder_t *dec);

/*
 * Consumes bytes of `data` (*used_p says how many).  Three outcomes:
 * MP_OK: a whole frame's payload is in *frame_p / *frame_len_p, valid until
 * the next call (feed the rest of `data` after it); MP_ERR_INPROGRESS: all of
 * `data` was consumed and no frame is complete; MP_ERR_TOOBIG (length over the
 * limit) or MP_ERR_PROTO (length 0): the stream is unusable, close it.
 */
mp_status_t mp_frame_decoder_feed(mp_frame_decoder_t *dec, const uint8_t *data, size_t len,
                                  size_t *used_p, const uint8_t **frame_p, size_t *frame_len_p,
                                  mp_errbuf_t *err);

/* Parses one frame payload.  Refuses (MP_ERR_PROTO, reason in err) bytes that
 * are not an Envelope, an Envelope whose message this build does not know, and
 * enum values outside their declared range.  Free with mp_frame_envelope_free. */
mp_status_t mp_frame_unpack(const uint8_t *payload, size_t len, Mpar__Envelope **env_p,
                            mp_errbuf_t *err);
void mp_frame_envelope_free(Mpar__Envelope *env);

/* Checks a message tree built in memory the same way mp_frame_unpack checks
 * one that arrived (enum ranges); MP_ERR_PROTO with the field's name. */
mp_status_t mp_frame_message_check(const ProtobufCMessage *msg, mp_errbuf_t *err);

/* Encodes header + Envelope into one mp_malloc'ed buffer (free with mp_free).
 * MP_ERR_TOOBIG when the encoding exceeds max_len. */
mp_status_t mp_frame_pack(const Mpar__Envelope *env, uint32_t max_len, uint8_t **buf_p,
                          size_t *len_p);

/* "hello", "submit_job", ... for logs; "unknown" for anything else. */
const char *mp_frame_msg_name(Mpar__Envelope__MsgCase msg_case);

#endif
