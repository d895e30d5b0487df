/*
 * auth.h - the cluster secret and the handshake of a control connection
 * (DESIGN.md "Control plane"): version check, then HMAC-SHA256
 * challenge-response over both nonces, compared in constant time, failing
 * closed.  The handshake is a pure state machine over Envelopes, so it is
 * tested without sockets; transport/frame_conn.c drives it on a stream.  Any
 * thread; one handshake per connection.
 */
#ifndef MP_TRANSPORT_AUTH_H
#define MP_TRANSPORT_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "proto/mpar.pb-c.h"

#define MP_AUTH_NONCE_LEN 32
#define MP_AUTH_MAC_LEN 32
#define MP_AUTH_SECRET_MIN 16 /* bytes */

typedef struct mp_auth_secret mp_auth_secret_t;

/* Reads the cluster secret.  Refuses a file that group or others may read
 * (it must be 0400 or 0600), one shorter than MP_AUTH_SECRET_MIN bytes, and a
 * missing file, each with the reason in err.  A trailing newline is dropped. */
mp_status_t mp_auth_secret_load(const char *path, mp_auth_secret_t **secret_p, mp_errbuf_t *err);
mp_status_t mp_auth_secret_from_bytes(const void *bytes, size_t len, mp_auth_secret_t **secret_p);
/* Wipes and frees. */
void mp_auth_secret_free(mp_auth_secret_t *secret);

typedef enum { MP_AUTH_SIDE_CLIENT = 0, MP_AUTH_SIDE_SERVER = 1 } mp_auth_side_t;

mp_status_t mp_auth_nonce_fill(uint8_t nonce[MP_AUTH_NONCE_LEN]);
/* HMAC-SHA256(secret, "mpar-auth-v1 client|server" || client_nonce || server_nonce). */
mp_status_t mp_auth_mac_compute(const mp_auth_secret_t *secret, mp_auth_side_t side,
                                const uint8_t client_nonce[MP_AUTH_NONCE_LEN],
                                const uint8_t server_nonce[MP_AUTH_NONCE_LEN],
                                uint8_t mac_p[MP_AUTH_MAC_LEN]);
/* MP_OK when mac is the right proof of `side`; MP_ERR_AUTH otherwise,
 * including any wrong length.  Constant time in the MAC's content. */
mp_status_t mp_auth_mac_verify(const mp_auth_secret_t *secret, mp_auth_side_t side,
                               const uint8_t client_nonce[MP_AUTH_NONCE_LEN],
                               const uint8_t server_nonce[MP_AUTH_NONCE_LEN], const uint8_t *mac,
                               size_t mac_len);

/*
 * The handshake.  Client: mp_handshake_start builds the Hello; then every
 * received Envelope goes to mp_handshake_on_envelope, which may fill `out`
 * with the reply to send.  Server: every received Envelope goes to
 * mp_handshake_on_envelope.  On failure the status says why (MP_ERR_AUTH,
 * MP_ERR_UNSUPPORTED for a version mismatch, MP_ERR_PROTO), err holds the
 * reason, and `out` may hold an Error to send before closing.
 */
typedef struct mp_handshake mp_handshake_t;

typedef struct {
    bool has_msg; /* out holds an Envelope to send */
    Mpar__Envelope env;
    union {
        Mpar__Hello hello;
        Mpar__Challenge challenge;
        Mpar__Auth auth;
        Mpar__Welcome welcome;
        Mpar__Error error;
    } u;
    uint8_t bytes[MP_AUTH_NONCE_LEN];
    char text[256];
} mp_handshake_out_t;

typedef struct {
    mp_auth_side_t side;
    const mp_auth_secret_t *secret; /* NULL: no secret (server: loopback only) */
    /* Server: what Welcome carries. */
    uint64_t epoch;
    const char *name;
    bool coordinator;
    /* Client: what Hello carries. */
    Mpar__PeerRole role;
} mp_handshake_params_t;

mp_status_t mp_handshake_create(const mp_handshake_params_t *params, mp_handshake_t **hs_p);
void mp_handshake_destroy(mp_handshake_t *hs);
/* Client only: fills out with the Hello. */
mp_status_t mp_handshake_start(mp_handshake_t *hs, mp_handshake_out_t *out);
mp_status_t mp_handshake_on_envelope(mp_handshake_t *hs, const Mpar__Envelope *in,
                                     mp_handshake_out_t *out, mp_errbuf_t *err);
bool mp_handshake_done(const mp_handshake_t *hs);
/* After done: the peer's Hello (server) or Welcome (client) fields. */
Mpar__PeerRole mp_handshake_peer_role(const mp_handshake_t *hs);
const char *mp_handshake_peer_name(const mp_handshake_t *hs);
uint64_t mp_handshake_epoch(const mp_handshake_t *hs);
bool mp_handshake_peer_coordinator(const mp_handshake_t *hs);

#endif
