/*
 * test_auth.c - the cluster secret and the handshake (transport/auth.c):
 * success with and without a secret, a wrong HMAC, a wrong version, a
 * replayed Auth and a replayed Welcome, messages out of order, and the
 * secret file's permission check.  Envelopes travel through the real codec.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "proto/codec.h"
#include "transport/auth.h"

static mp_auth_secret_t *secret_of(const char *s)
{
    mp_auth_secret_t *sec;
    cr_assert_eq(mp_auth_secret_from_bytes(s, strlen(s), &sec), MP_OK);
    return sec;
}

/* Encodes and decodes an outgoing message, as the wire would. */
static Mpar__Envelope *wire(const mp_handshake_out_t *out)
{
    cr_assert(out->has_msg);
    uint8_t *buf;
    size_t len;
    cr_assert_eq(mp_frame_pack(&out->env, MP_FRAME_MAX_PREAUTH, &buf, &len), MP_OK);
    Mpar__Envelope *env;
    mp_errbuf_t err;
    cr_assert_eq(mp_frame_unpack(buf + 4, len - 4, &env, &err), MP_OK, "%s", err.msg);
    mp_free(buf);
    return env;
}

static mp_handshake_t *server_new(const mp_auth_secret_t *secret)
{
    mp_handshake_params_t p = {.side = MP_AUTH_SIDE_SERVER,
                               .secret = secret,
                               .epoch = 77,
                               .name = "coord",
                               .coordinator = true};
    mp_handshake_t *hs;
    cr_assert_eq(mp_handshake_create(&p, &hs), MP_OK);
    return hs;
}

static mp_handshake_t *client_new(const mp_auth_secret_t *secret)
{
    mp_handshake_params_t p = {.side = MP_AUTH_SIDE_CLIENT,
                               .secret = secret,
                               .name = "n1",
                               .role = MPAR__PEER_ROLE__PEER_ROLE_NODE};
    mp_handshake_t *hs;
    cr_assert_eq(mp_handshake_create(&p, &hs), MP_OK);
    return hs;
}

/* Runs a whole handshake; returns the first failing status (server's or client's). */
static mp_status_t run_handshake(mp_handshake_t *c, mp_handshake_t *s, mp_status_t *client_st_p)
{
    mp_handshake_out_t out;
    mp_errbuf_t err;
    *client_st_p = MP_OK;
    cr_assert_eq(mp_handshake_start(c, &out), MP_OK);
    Mpar__Envelope *hello = wire(&out);
    mp_status_t st = mp_handshake_on_envelope(s, hello, &out, &err);
    mp_frame_envelope_free(hello);
    if (st != MP_OK) {
        return st;
    }
    Mpar__Envelope *chal = wire(&out);
    st = mp_handshake_on_envelope(c, chal, &out, &err);
    mp_frame_envelope_free(chal);
    if (st != MP_OK) {
        *client_st_p = st;
        return st;
    }
    Mpar__Envelope *auth = wire(&out);
    st = mp_handshake_on_envelope(s, auth, &out, &err);
    mp_frame_envelope_free(auth);
    Mpar__Envelope *reply = wire(&out); /* Welcome, or the Error on failure */
    *client_st_p = mp_handshake_on_envelope(c, reply, &out, &err);
    mp_frame_envelope_free(reply);
    return st;
}

Test(auth, handshake_with_secret_succeeds_both_ways)
{
    mp_auth_secret_t *sec = secret_of("0123456789abcdef-cluster");
    mp_handshake_t *c = client_new(sec), *s = server_new(sec);
    mp_status_t cst;
    cr_assert_eq(run_handshake(c, s, &cst), MP_OK);
    cr_assert_eq(cst, MP_OK);
    cr_assert(mp_handshake_done(c));
    cr_assert(mp_handshake_done(s));
    cr_assert_eq(mp_handshake_epoch(c), 77);
    cr_assert(mp_handshake_peer_coordinator(c));
    cr_assert_str_eq(mp_handshake_peer_name(s), "n1");
    cr_assert_eq(mp_handshake_peer_role(s), MPAR__PEER_ROLE__PEER_ROLE_NODE);
    mp_handshake_destroy(c);
    mp_handshake_destroy(s);
    mp_auth_secret_free(sec);
}

Test(auth, handshake_without_secret_succeeds)
{
    mp_handshake_t *c = client_new(NULL), *s = server_new(NULL);
    mp_status_t cst;
    cr_assert_eq(run_handshake(c, s, &cst), MP_OK);
    cr_assert_eq(cst, MP_OK);
    cr_assert(mp_handshake_done(c) && mp_handshake_done(s));
    mp_handshake_destroy(c);
    mp_handshake_destroy(s);
}

Test(auth, wrong_hmac_is_refused_and_client_learns_why)
{
    mp_auth_secret_t *a = secret_of("0123456789abcdef-cluster");
    mp_auth_secret_t *b = secret_of("0123456789abcdef-CLUSTER");
    mp_handshake_t *c = client_new(b), *s = server_new(a);
    mp_status_t cst;
    cr_assert_eq(run_handshake(c, s, &cst), MP_ERR_AUTH);
    cr_assert_eq(cst, MP_ERR_AUTH);
    cr_assert_not(mp_handshake_done(s));
    mp_handshake_destroy(c);
    mp_handshake_destroy(s);
    mp_auth_secret_free(a);
    mp_auth_secret_free(b);
}

Test(auth, client_without_secret_is_refused_by_secret_server)
{
    mp_auth_secret_t *a = secret_of("0123456789abcdef-cluster");
    mp_handshake_t *c = client_new(NULL), *s = server_new(a);
    mp_status_t cst;
    cr_assert_eq(run_handshake(c, s, &cst), MP_ERR_AUTH);
    cr_assert_eq(cst, MP_ERR_AUTH);
    mp_handshake_destroy(c);
    mp_handshake_destroy(s);
    mp_auth_secret_free(a);
}

Test(auth, wrong_version_is_refused)
{
    mp_handshake_t *s = server_new(NULL);
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__Hello h = MPAR__HELLO__INIT;
    uint8_t nonce[32] = {1};
    h.version = 2;
    h.nonce.data = nonce;
    h.nonce.len = 32;
    h.role = MPAR__PEER_ROLE__PEER_ROLE_CLIENT;
    env.msg_case = MPAR__ENVELOPE__MSG_HELLO;
    env.hello = &h;
    mp_handshake_out_t out;
    mp_errbuf_t err;
    cr_assert_eq(mp_handshake_on_envelope(s, &env, &out, &err), MP_ERR_UNSUPPORTED);
    cr_assert(out.has_msg);
    cr_assert_eq(out.env.msg_case, MPAR__ENVELOPE__MSG_ERROR);
    cr_assert_eq(out.u.error.code, MPAR__ERROR_CODE__ERROR_CODE_VERSION);
    cr_assert(strstr(err.msg, "version 2") != NULL, "%s", err.msg);
    mp_handshake_destroy(s);
}

Test(auth, replayed_auth_is_refused)
{
    mp_auth_secret_t *sec = secret_of("0123456789abcdef-cluster");
    mp_handshake_t *c = client_new(sec), *s1 = server_new(sec);
    mp_handshake_out_t out;
    mp_errbuf_t err;
    /* Session 1, recorded by an eavesdropper. */
    cr_assert_eq(mp_handshake_start(c, &out), MP_OK);
    Mpar__Envelope *hello = wire(&out);
    cr_assert_eq(mp_handshake_on_envelope(s1, hello, &out, &err), MP_OK);
    Mpar__Envelope *chal = wire(&out);
    cr_assert_eq(mp_handshake_on_envelope(c, chal, &out, &err), MP_OK);
    Mpar__Envelope *auth = wire(&out);
    cr_assert_eq(mp_handshake_on_envelope(s1, auth, &out, &err), MP_OK);
    cr_assert(mp_handshake_done(s1));
    /* Session 2: the same Hello and Auth replayed to a fresh server. */
    mp_handshake_t *s2 = server_new(sec);
    cr_assert_eq(mp_handshake_on_envelope(s2, hello, &out, &err), MP_OK);
    cr_assert_eq(mp_handshake_on_envelope(s2, auth, &out, &err), MP_ERR_AUTH);
    cr_assert_not(mp_handshake_done(s2));
    /* And a second Auth on a finished handshake is not accepted either. */
    cr_assert_neq(mp_handshake_on_envelope(s1, auth, &out, &err), MP_OK);
    mp_frame_envelope_free(hello);
    mp_frame_envelope_free(chal);
    mp_frame_envelope_free(auth);
    mp_handshake_destroy(c);
    mp_handshake_destroy(s1);
    mp_handshake_destroy(s2);
    mp_auth_secret_free(sec);
}

Test(auth, replayed_challenge_and_welcome_are_refused_by_client)
{
    mp_auth_secret_t *sec = secret_of("0123456789abcdef-cluster");
    mp_handshake_t *c1 = client_new(sec), *s = server_new(sec);
    mp_handshake_out_t out;
    mp_errbuf_t err;
    cr_assert_eq(mp_handshake_start(c1, &out), MP_OK);
    Mpar__Envelope *hello = wire(&out);
    cr_assert_eq(mp_handshake_on_envelope(s, hello, &out, &err), MP_OK);
    Mpar__Envelope *chal = wire(&out);
    cr_assert_eq(mp_handshake_on_envelope(c1, chal, &out, &err), MP_OK);
    Mpar__Envelope *auth = wire(&out);
    cr_assert_eq(mp_handshake_on_envelope(s, auth, &out, &err), MP_OK);
    Mpar__Envelope *welcome = wire(&out);
    cr_assert_eq(mp_handshake_on_envelope(c1, welcome, &out, &err), MP_OK);
    /* A fake server replays the recorded Challenge and Welcome to a new client. */
    mp_handshake_t *c2 = client_new(sec);
    cr_assert_eq(mp_handshake_start(c2, &out), MP_OK);
    cr_assert_eq(mp_handshake_on_envelope(c2, chal, &out, &err), MP_OK);
    cr_assert_eq(mp_handshake_on_envelope(c2, welcome, &out, &err), MP_ERR_AUTH);
    cr_assert_not(mp_handshake_done(c2));
    mp_frame_envelope_free(hello);
    mp_frame_envelope_free(chal);
    mp_frame_envelope_free(auth);
    mp_frame_envelope_free(welcome);
    mp_handshake_destroy(c1);
    mp_handshake_destroy(c2);
    mp_handshake_destroy(s);
    mp_auth_secret_free(sec);
}

Test(auth, messages_out_of_order_are_refused)
{
    mp_handshake_t *s = server_new(NULL);
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__Auth a = MPAR__AUTH__INIT;
    env.msg_case = MPAR__ENVELOPE__MSG_AUTH;
    env.auth = &a;
    mp_handshake_out_t out;
    mp_errbuf_t err;
    cr_assert_eq(mp_handshake_on_envelope(s, &env, &out, &err), MP_ERR_PROTO);
    cr_assert_eq(out.u.error.code, MPAR__ERROR_CODE__ERROR_CODE_PROTOCOL);
    mp_handshake_destroy(s);
    /* A request before the handshake is refused too. */
    s = server_new(NULL);
    Mpar__ListNodes ln = MPAR__LIST_NODES__INIT;
    env.msg_case = MPAR__ENVELOPE__MSG_LIST_NODES;
    env.list_nodes = &ln;
    cr_assert_eq(mp_handshake_on_envelope(s, &env, &out, &err), MP_ERR_PROTO);
    mp_handshake_destroy(s);
}

Test(auth, mac_verify_fails_closed)
{
    mp_auth_secret_t *sec = secret_of("0123456789abcdef-cluster");
    uint8_t cn[32] = {1}, sn[32] = {2}, mac[32];
    cr_assert_eq(mp_auth_mac_compute(sec, MP_AUTH_SIDE_CLIENT, cn, sn, mac), MP_OK);
    cr_assert_eq(mp_auth_mac_verify(sec, MP_AUTH_SIDE_CLIENT, cn, sn, mac, 32), MP_OK);
    cr_assert_eq(mp_auth_mac_verify(sec, MP_AUTH_SIDE_SERVER, cn, sn, mac, 32), MP_ERR_AUTH);
    cr_assert_eq(mp_auth_mac_verify(sec, MP_AUTH_SIDE_CLIENT, sn, cn, mac, 32), MP_ERR_AUTH);
    cr_assert_eq(mp_auth_mac_verify(sec, MP_AUTH_SIDE_CLIENT, cn, sn, mac, 31), MP_ERR_AUTH);
    cr_assert_eq(mp_auth_mac_verify(sec, MP_AUTH_SIDE_CLIENT, cn, sn, NULL, 0), MP_ERR_AUTH);
    cr_assert_eq(mp_auth_mac_verify(NULL, MP_AUTH_SIDE_CLIENT, cn, sn, mac, 32), MP_ERR_AUTH);
    mac[31] ^= 1;
    cr_assert_eq(mp_auth_mac_verify(sec, MP_AUTH_SIDE_CLIENT, cn, sn, mac, 32), MP_ERR_AUTH);
    mp_auth_secret_free(sec);
}

Test(auth, secret_file_must_be_private)
{
    char path[] = "/tmp/mpar-secret-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    const char *s = "a-long-enough-cluster-secret\n";
    cr_assert_eq(write(fd, s, strlen(s)), (ssize_t)strlen(s));
    close(fd);
    mp_auth_secret_t *sec = NULL;
    mp_errbuf_t err;
    chmod(path, 0644);
    cr_assert_eq(mp_auth_secret_load(path, &sec, &err), MP_ERR_AUTH);
    cr_assert(strstr(err.msg, "0644") != NULL, "%s", err.msg);
    chmod(path, 0400);
    cr_assert_eq(mp_auth_secret_load(path, &sec, &err), MP_OK, "%s", err.msg);
    /* The newline is not part of the secret. */
    mp_auth_secret_t *same = secret_of("a-long-enough-cluster-secret");
    uint8_t cn[32] = {3}, sn[32] = {4}, mac[32];
    cr_assert_eq(mp_auth_mac_compute(sec, MP_AUTH_SIDE_CLIENT, cn, sn, mac), MP_OK);
    cr_assert_eq(mp_auth_mac_verify(same, MP_AUTH_SIDE_CLIENT, cn, sn, mac, 32), MP_OK);
    mp_auth_secret_free(sec);
    mp_auth_secret_free(same);
    unlink(path);
    cr_assert_eq(mp_auth_secret_load(path, &sec, &err), MP_ERR_NOTFOUND);
    /* Too short. */
    fd = open(path, O_CREAT | O_WRONLY | O_EXCL, 0400);
    cr_assert_eq(write(fd, "short", 5), 5);
    close(fd);
    cr_assert_eq(mp_auth_secret_load(path, &sec, &err), MP_ERR_AUTH);
    unlink(path);
}
