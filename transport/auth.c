/*
 * auth.c - the cluster secret (loaded once, wiped on free), HMAC-SHA256
 * proofs with OpenSSL's libcrypto, and the handshake state machine of one
 * control connection.  Pure apart from reading the secret file; the caller's
 * thread (the libuv thread of mpard, or mpar-client's only thread).
 */
#include "transport/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "proto/codec.h"

#define SECRET_MAX 4096

struct mp_auth_secret {
    size_t len;
    uint8_t bytes[];
};

mp_status_t mp_auth_secret_from_bytes(const void *bytes, size_t len, mp_auth_secret_t **secret_p)
{
    if (len < MP_AUTH_SECRET_MIN || len > SECRET_MAX) {
        return MP_ERR_INVAL;
    }
    mp_auth_secret_t *s = mp_malloc(sizeof(*s) + len);
    if (s == NULL) {
        return MP_ERR_NOMEM;
    }
    s->len = len;
    memcpy(s->bytes, bytes, len);
    *secret_p = s;
    return MP_OK;
}

mp_status_t mp_auth_secret_load(const char *path, mp_auth_secret_t **secret_p, mp_errbuf_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        int e = errno;
        return mp_errbuf_set(err, mp_status_from_errno(e), "cannot open secret file %s: %s", path,
                             strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mp_errbuf_set(err, MP_ERR_AUTH, "secret file %s is not a regular file", path);
    }
    if (sb.st_mode & (S_IRWXG | S_IRWXO)) {
        close(fd);
        return mp_errbuf_set(err, MP_ERR_AUTH,
                             "secret file %s has mode %04o: group and others must not read it "
                             "(chmod 0400 %s)",
                             path, (unsigned)(sb.st_mode & 07777), path);
    }
    uint8_t buf[SECRET_MAX + 2];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof(buf) - n);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            int e = errno;
            close(fd);
            OPENSSL_cleanse(buf, sizeof(buf));
            return mp_errbuf_set(err, MP_ERR_IO, "cannot read secret file %s: %s", path,
                                 strerror(e));
        }
        if (r == 0 || n + (size_t)r == sizeof(buf)) {
            n += (size_t)r;
            break;
        }
        n += (size_t)r;
    }
    close(fd);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) {
        n--;
    }
    mp_status_t st = MP_OK;
    if (n < MP_AUTH_SECRET_MIN || n > SECRET_MAX) {
        st = mp_errbuf_set(err, MP_ERR_AUTH, "secret file %s holds %zu bytes; it needs %d to %d",
                           path, n, MP_AUTH_SECRET_MIN, SECRET_MAX);
    } else {
        st = mp_auth_secret_from_bytes(buf, n, secret_p);
        if (st != MP_OK) {
            mp_errbuf_set(err, st, "cannot keep the secret of %s", path);
        }
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    return st;
}

void mp_auth_secret_free(mp_auth_secret_t *secret)
{
    if (secret == NULL) {
        return;
    }
    OPENSSL_cleanse(secret->bytes, secret->len);
    mp_free(secret);
}

mp_status_t mp_auth_nonce_fill(uint8_t nonce[MP_AUTH_NONCE_LEN])
{
    /* The kernel's CSPRNG directly: OpenSSL's DRBG would load its providers
     * (some 2 MiB of resident pages) in every mpard, even one without a
     * secret that never computes an HMAC. */
    size_t got = 0;
    while (got < MP_AUTH_NONCE_LEN) {
        ssize_t n = getrandom(nonce + got, MP_AUTH_NONCE_LEN - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return MP_ERR_IO;
        }
        got += (size_t)n;
    }
    return MP_OK;
}

mp_status_t mp_auth_mac_compute(const mp_auth_secret_t *secret, mp_auth_side_t side,
                                const uint8_t client_nonce[MP_AUTH_NONCE_LEN],
                                const uint8_t server_nonce[MP_AUTH_NONCE_LEN],
                                uint8_t mac_p[MP_AUTH_MAC_LEN])
{
    static const char label_client[] = "mpar-auth-v1 client";
    static const char label_server[] = "mpar-auth-v1 server";
    const char *label = side == MP_AUTH_SIDE_CLIENT ? label_client : label_server;
    size_t llen = strlen(label);
    uint8_t msg[sizeof(label_client) + 2 * MP_AUTH_NONCE_LEN];
    memcpy(msg, label, llen);
    memcpy(msg + llen, client_nonce, MP_AUTH_NONCE_LEN);
    memcpy(msg + llen + MP_AUTH_NONCE_LEN, server_nonce, MP_AUTH_NONCE_LEN);
    unsigned int maclen = 0;
    uint8_t mac[EVP_MAX_MD_SIZE];
    if (HMAC(EVP_sha256(), secret->bytes, (int)secret->len, msg, llen + 2 * MP_AUTH_NONCE_LEN, mac,
             &maclen) == NULL ||
        maclen != MP_AUTH_MAC_LEN) {
        return MP_ERR_AUTH;
    }
    memcpy(mac_p, mac, MP_AUTH_MAC_LEN);
    return MP_OK;
}

mp_status_t mp_auth_mac_verify(const mp_auth_secret_t *secret, mp_auth_side_t side,
                               const uint8_t client_nonce[MP_AUTH_NONCE_LEN],
                               const uint8_t server_nonce[MP_AUTH_NONCE_LEN], const uint8_t *mac,
                               size_t mac_len)
{
    uint8_t want[MP_AUTH_MAC_LEN];
    if (secret == NULL || mac == NULL || mac_len != MP_AUTH_MAC_LEN) {
        return MP_ERR_AUTH;
    }
    if (mp_auth_mac_compute(secret, side, client_nonce, server_nonce, want) != MP_OK) {
        return MP_ERR_AUTH;
    }
    int diff = CRYPTO_memcmp(want, mac, MP_AUTH_MAC_LEN);
    OPENSSL_cleanse(want, sizeof(want));
    return diff == 0 ? MP_OK : MP_ERR_AUTH;
}

/* ---- the handshake ------------------------------------------------------ */

typedef enum {
    HS_START = 0,  /* client: Hello not sent; server: waiting for Hello */
    HS_HELLO_SENT, /* client */
    HS_CHALLENGED, /* server: Challenge sent, waiting for Auth */
    HS_AUTH_SENT,  /* client */
    HS_DONE,
    HS_FAILED,
} hs_state_t;

struct mp_handshake {
    mp_handshake_params_t p;
    hs_state_t state;
    uint8_t client_nonce[MP_AUTH_NONCE_LEN];
    uint8_t server_nonce[MP_AUTH_NONCE_LEN];
    bool auth_required;
    Mpar__PeerRole peer_role;
    char peer_name[128];
    char self_name[128];
    uint64_t epoch;
    bool peer_coordinator;
};

mp_status_t mp_handshake_create(const mp_handshake_params_t *params, mp_handshake_t **hs_p)
{
    mp_handshake_t *hs = mp_calloc(1, sizeof(*hs));
    if (hs == NULL) {
        return MP_ERR_NOMEM;
    }
    hs->p = *params;
    snprintf(hs->self_name, sizeof(hs->self_name), "%s", params->name ? params->name : "");
    hs->p.name = hs->self_name;
    *hs_p = hs;
    return MP_OK;
}

void mp_handshake_destroy(mp_handshake_t *hs)
{
    if (hs != NULL) {
        OPENSSL_cleanse(hs, sizeof(*hs));
        mp_free(hs);
    }
}

bool mp_handshake_done(const mp_handshake_t *hs)
{
    return hs->state == HS_DONE;
}
Mpar__PeerRole mp_handshake_peer_role(const mp_handshake_t *hs)
{
    return hs->peer_role;
}
const char *mp_handshake_peer_name(const mp_handshake_t *hs)
{
    return hs->peer_name;
}
uint64_t mp_handshake_epoch(const mp_handshake_t *hs)
{
    return hs->epoch;
}
bool mp_handshake_peer_coordinator(const mp_handshake_t *hs)
{
    return hs->peer_coordinator;
}

static void out_reset(mp_handshake_out_t *out)
{
    memset(out, 0, sizeof(*out));
    mpar__envelope__init(&out->env);
}

/* Fails the handshake and, for the server, queues an Error to tell the peer. */
static mp_status_t hs_fail(mp_handshake_t *hs, mp_handshake_out_t *out, mp_status_t st,
                           Mpar__ErrorCode code, mp_errbuf_t *err, const char *fmt, const char *arg)
{
    char msg[256];
    snprintf(msg, sizeof(msg), fmt, arg);
    hs->state = HS_FAILED;
    out_reset(out);
    if (hs->p.side == MP_AUTH_SIDE_SERVER) {
        mpar__error__init(&out->u.error);
        out->u.error.code = code;
        snprintf(out->text, sizeof(out->text), "%s", msg);
        out->u.error.message = out->text;
        out->env.msg_case = MPAR__ENVELOPE__MSG_ERROR;
        out->env.error = &out->u.error;
        out->has_msg = true;
    }
    return mp_errbuf_set(err, st, "%s", msg);
}

mp_status_t mp_handshake_start(mp_handshake_t *hs, mp_handshake_out_t *out)
{
    if (hs->p.side != MP_AUTH_SIDE_CLIENT || hs->state != HS_START) {
        return MP_ERR_STATE;
    }
    mp_status_t st = mp_auth_nonce_fill(hs->client_nonce);
    if (st != MP_OK) {
        return st;
    }
    out_reset(out);
    mpar__hello__init(&out->u.hello);
    out->u.hello.version = MP_PROTOCOL_VERSION;
    memcpy(out->bytes, hs->client_nonce, MP_AUTH_NONCE_LEN);
    out->u.hello.nonce.data = out->bytes;
    out->u.hello.nonce.len = MP_AUTH_NONCE_LEN;
    out->u.hello.role = hs->p.role;
    out->u.hello.name = hs->self_name;
    out->u.hello.software = "mpar " MP_VERSION;
    out->env.msg_case = MPAR__ENVELOPE__MSG_HELLO;
    out->env.hello = &out->u.hello;
    out->has_msg = true;
    hs->state = HS_HELLO_SENT;
    return MP_OK;
}

static mp_status_t server_on(mp_handshake_t *hs, const Mpar__Envelope *in, mp_handshake_out_t *out,
                             mp_errbuf_t *err)
{
    char num[32];
    if (hs->state == HS_START && in->msg_case == MPAR__ENVELOPE__MSG_HELLO) {
        const Mpar__Hello *h = in->hello;
        if (h->version != MP_PROTOCOL_VERSION) {
            snprintf(num, sizeof(num), "%u", h->version);
            return hs_fail(hs, out, MP_ERR_UNSUPPORTED, MPAR__ERROR_CODE__ERROR_CODE_VERSION, err,
                           "protocol version %s is not supported (this mpard speaks 1)", num);
        }
        if (h->nonce.len != MP_AUTH_NONCE_LEN) {
            return hs_fail(hs, out, MP_ERR_PROTO, MPAR__ERROR_CODE__ERROR_CODE_PROTOCOL, err, "%s",
                           "hello nonce must be 32 bytes");
        }
        if (h->role != MPAR__PEER_ROLE__PEER_ROLE_CLIENT &&
            h->role != MPAR__PEER_ROLE__PEER_ROLE_NODE) {
            return hs_fail(hs, out, MP_ERR_PROTO, MPAR__ERROR_CODE__ERROR_CODE_PROTOCOL, err, "%s",
                           "hello without a role");
        }
        memcpy(hs->client_nonce, h->nonce.data, MP_AUTH_NONCE_LEN);
        hs->peer_role = h->role;
        snprintf(hs->peer_name, sizeof(hs->peer_name), "%s", h->name ? h->name : "");
        if (mp_auth_nonce_fill(hs->server_nonce) != MP_OK) {
            return hs_fail(hs, out, MP_ERR_IO, MPAR__ERROR_CODE__ERROR_CODE_INTERNAL, err, "%s",
                           "no random bytes for the challenge");
        }
        out_reset(out);
        mpar__challenge__init(&out->u.challenge);
        out->u.challenge.version = MP_PROTOCOL_VERSION;
        memcpy(out->bytes, hs->server_nonce, MP_AUTH_NONCE_LEN);
        out->u.challenge.nonce.data = out->bytes;
        out->u.challenge.nonce.len = MP_AUTH_NONCE_LEN;
        out->u.challenge.auth_required = hs->p.secret != NULL;
        out->env.msg_case = MPAR__ENVELOPE__MSG_CHALLENGE;
        out->env.challenge = &out->u.challenge;
        out->env.request_id = in->request_id;
        out->has_msg = true;
        hs->state = HS_CHALLENGED;
        return MP_OK;
    }
    if (hs->state == HS_CHALLENGED && in->msg_case == MPAR__ENVELOPE__MSG_AUTH) {
        const Mpar__Auth *a = in->auth;
        if (hs->p.secret != NULL &&
            mp_auth_mac_verify(hs->p.secret, MP_AUTH_SIDE_CLIENT, hs->client_nonce,
                               hs->server_nonce, a->mac.data, a->mac.len) != MP_OK) {
            return hs_fail(hs, out, MP_ERR_AUTH, MPAR__ERROR_CODE__ERROR_CODE_AUTH, err, "%s",
                           "authentication refused: wrong cluster secret");
        }
        out_reset(out);
        mpar__welcome__init(&out->u.welcome);
        out->u.welcome.epoch = hs->p.epoch;
        out->u.welcome.name = hs->self_name;
        out->u.welcome.coordinator = hs->p.coordinator;
        if (hs->p.secret != NULL) {
            if (mp_auth_mac_compute(hs->p.secret, MP_AUTH_SIDE_SERVER, hs->client_nonce,
                                    hs->server_nonce, out->bytes) != MP_OK) {
                return hs_fail(hs, out, MP_ERR_AUTH, MPAR__ERROR_CODE__ERROR_CODE_INTERNAL, err,
                               "%s", "cannot compute the server proof");
            }
            out->u.welcome.mac.data = out->bytes;
            out->u.welcome.mac.len = MP_AUTH_MAC_LEN;
        }
        out->env.msg_case = MPAR__ENVELOPE__MSG_WELCOME;
        out->env.welcome = &out->u.welcome;
        out->env.request_id = in->request_id;
        out->has_msg = true;
        hs->epoch = hs->p.epoch;
        hs->state = HS_DONE;
        return MP_OK;
    }
    return hs_fail(hs, out, MP_ERR_PROTO, MPAR__ERROR_CODE__ERROR_CODE_PROTOCOL, err,
                   "unexpected %s during the handshake", mp_frame_msg_name(in->msg_case));
}

static mp_status_t client_on(mp_handshake_t *hs, const Mpar__Envelope *in, mp_handshake_out_t *out,
                             mp_errbuf_t *err)
{
    char num[32];
    if (in->msg_case == MPAR__ENVELOPE__MSG_ERROR &&
        (hs->state == HS_HELLO_SENT || hs->state == HS_AUTH_SENT)) {
        const char *m = in->error->message ? in->error->message : "";
        mp_status_t st = MP_ERR_PROTO;
        if (in->error->code == MPAR__ERROR_CODE__ERROR_CODE_AUTH) {
            st = MP_ERR_AUTH;
        } else if (in->error->code == MPAR__ERROR_CODE__ERROR_CODE_VERSION) {
            st = MP_ERR_UNSUPPORTED;
        }
        return hs_fail(hs, out, st, MPAR__ERROR_CODE__ERROR_CODE_UNSPECIFIED, err, "%s", m);
    }
    if (hs->state == HS_HELLO_SENT && in->msg_case == MPAR__ENVELOPE__MSG_CHALLENGE) {
        const Mpar__Challenge *c = in->challenge;
        if (c->version != MP_PROTOCOL_VERSION) {
            snprintf(num, sizeof(num), "%u", c->version);
            return hs_fail(hs, out, MP_ERR_UNSUPPORTED, 0, err,
                           "the server speaks protocol version %s, this client speaks 1", num);
        }
        if (c->nonce.len != MP_AUTH_NONCE_LEN) {
            return hs_fail(hs, out, MP_ERR_PROTO, 0, err, "%s", "challenge nonce must be 32 bytes");
        }
        memcpy(hs->server_nonce, c->nonce.data, MP_AUTH_NONCE_LEN);
        hs->auth_required = c->auth_required;
        if (c->auth_required && hs->p.secret == NULL) {
            return hs_fail(hs, out, MP_ERR_AUTH, 0, err, "%s",
                           "the server requires the cluster secret (--secret-file FILE)");
        }
        out_reset(out);
        mpar__auth__init(&out->u.auth);
        if (c->auth_required) {
            if (mp_auth_mac_compute(hs->p.secret, MP_AUTH_SIDE_CLIENT, hs->client_nonce,
                                    hs->server_nonce, out->bytes) != MP_OK) {
                return hs_fail(hs, out, MP_ERR_AUTH, 0, err, "%s", "cannot compute the proof");
            }
            out->u.auth.mac.data = out->bytes;
            out->u.auth.mac.len = MP_AUTH_MAC_LEN;
        }
        out->env.msg_case = MPAR__ENVELOPE__MSG_AUTH;
        out->env.auth = &out->u.auth;
        out->has_msg = true;
        hs->state = HS_AUTH_SENT;
        return MP_OK;
    }
    if (hs->state == HS_AUTH_SENT && in->msg_case == MPAR__ENVELOPE__MSG_WELCOME) {
        const Mpar__Welcome *w = in->welcome;
        /* The server proves the secret too, so a client never talks to an
         * impostor that merely accepted its proof. */
        if (hs->auth_required &&
            mp_auth_mac_verify(hs->p.secret, MP_AUTH_SIDE_SERVER, hs->client_nonce,
                               hs->server_nonce, w->mac.data, w->mac.len) != MP_OK) {
            return hs_fail(hs, out, MP_ERR_AUTH, 0, err, "%s",
                           "the server failed to prove the cluster secret");
        }
        out_reset(out);
        hs->epoch = w->epoch;
        hs->peer_coordinator = w->coordinator;
        snprintf(hs->peer_name, sizeof(hs->peer_name), "%s", w->name ? w->name : "");
        hs->state = HS_DONE;
        return MP_OK;
    }
    return hs_fail(hs, out, MP_ERR_PROTO, 0, err, "unexpected %s during the handshake",
                   mp_frame_msg_name(in->msg_case));
}

mp_status_t mp_handshake_on_envelope(mp_handshake_t *hs, const Mpar__Envelope *in,
                                     mp_handshake_out_t *out, mp_errbuf_t *err)
{
    out->has_msg = false;
    if (hs->state == HS_FAILED || hs->state == HS_DONE) {
        return mp_errbuf_set(err, MP_ERR_STATE, "handshake already %s",
                             hs->state == HS_DONE ? "done" : "failed");
    }
    if (hs->p.side == MP_AUTH_SIDE_SERVER) {
        return server_on(hs, in, out, err);
    }
    return client_on(hs, in, out, err);
}
