/*
 * test_frame_conn.c - framed connections on real libuv streams
 * (transport/frame_conn.c): a request and its reply after the handshake, a
 * wrong secret closing both ends with the auth reason, a peer that stalls
 * mid-frame, newline-delimited lines split across writes, and a reader that
 * never reads being dropped.  Every test ends with uv_loop_close() == 0.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <uv.h>

#include "common/alloc.h"
#include "proto/codec.h"
#include "transport/frame_conn.h"

typedef struct {
    uv_loop_t loop;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } server;
    uv_timer_t guard;
    mp_conn_params_t srv_params;
    mp_conn_t *srv;
    int srv_closed, cli_closed;
    mp_conn_reason_t srv_reason, cli_reason;
    int replies;
    int lines;
    char line[2][64];
    bool reply_big;
    uint64_t t_open, t_closed;
    /* raw peer */
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } raw;
    uv_connect_t raw_connect;
    uv_write_t raw_write[4];
    const char *raw_send[4];
    size_t raw_len[4];
    int raw_nsend;
} fx_t;

static void on_guard(uv_timer_t *t)
{
    cr_assert_fail("the test's loop ran too long");
}

static void fx_init(fx_t *fx)
{
    memset(fx, 0, sizeof(*fx));
    cr_assert_eq(uv_loop_init(&fx->loop), 0);
    uv_timer_init(&fx->loop, &fx->guard);
    uv_timer_start(&fx->guard, on_guard, 10000, 0);
    uv_unref((uv_handle_t *)&fx->guard);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static void fx_finish(fx_t *fx)
{
    uv_walk(&fx->loop, close_walk, NULL);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&fx->loop), 0, "the loop did not close cleanly");
}

/* ---- server side ---- */

static void srv_on_envelope(mp_conn_t *c, const Mpar__Envelope *env, void *data)
{
    cr_assert_eq(env->msg_case, MPAR__ENVELOPE__MSG_LIST_NODES);
    cr_assert_eq(env->request_id, 5);
    Mpar__Envelope rep = MPAR__ENVELOPE__INIT;
    Mpar__NodeList nl = MPAR__NODE_LIST__INIT;
    nl.epoch = 11;
    rep.request_id = 5;
    rep.msg_case = MPAR__ENVELOPE__MSG_NODE_LIST;
    rep.node_list = &nl;
    cr_assert_eq(mp_conn_send(c, &rep), MP_OK);
}

static void srv_on_line(mp_conn_t *c, const char *line, size_t len, bool oversized, void *data)
{
    fx_t *fx = data;
    cr_assert_not(oversized);
    cr_assert_eq(strlen(line), len);
    if (fx->reply_big) {
        static char big[4096];
        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\n';
        mp_conn_send_raw(c, big, sizeof(big));
        return;
    }
    cr_assert_lt(fx->lines, 2);
    snprintf(fx->line[fx->lines++], sizeof(fx->line[0]), "%s", line);
    if (fx->lines == 2) {
        mp_conn_end(c, MP_CONN_LOCAL, "done");
    }
}

static void srv_on_close(mp_conn_t *c, mp_conn_reason_t reason, const char *why, void *data)
{
    fx_t *fx = data;
    fx->srv_closed++;
    fx->srv_reason = reason;
    fx->t_closed = uv_now(&fx->loop);
    uv_close((uv_handle_t *)&fx->server, NULL);
}

static const mp_conn_cbs_t srv_cbs = {
    .on_envelope = srv_on_envelope, .on_line = srv_on_line, .on_close = srv_on_close};

static void on_connection(uv_stream_t *server, int status)
{
    fx_t *fx = server->data;
    cr_assert_eq(status, 0);
    cr_assert_eq(mp_conn_accept(server, &fx->srv_params, &srv_cbs, fx, &fx->srv), MP_OK);
    fx->t_open = uv_now(&fx->loop);
}

static void listen_tcp(fx_t *fx, struct sockaddr_in *addr_p)
{
    uv_tcp_init(&fx->loop, &fx->server.tcp);
    fx->server.tcp.data = fx;
    uv_ip4_addr("127.0.0.1", 0, addr_p);
    cr_assert_eq(uv_tcp_bind(&fx->server.tcp, (struct sockaddr *)addr_p, 0), 0);
    cr_assert_eq(uv_listen((uv_stream_t *)&fx->server.tcp, 8, on_connection), 0);
    int len = sizeof(*addr_p);
    uv_tcp_getsockname(&fx->server.tcp, (struct sockaddr *)addr_p, &len);
}

static void listen_pipe(fx_t *fx, char *path, size_t cap)
{
    snprintf(path, cap, "/tmp/mpar-test-conn-%d.sock", (int)getpid());
    unlink(path);
    uv_pipe_init(&fx->loop, &fx->server.pipe, 0);
    fx->server.pipe.data = fx;
    cr_assert_eq(uv_pipe_bind(&fx->server.pipe, path), 0);
    cr_assert_eq(uv_listen((uv_stream_t *)&fx->server.pipe, 8, on_connection), 0);
}

/* ---- framed client ---- */

static void cli_on_ready(mp_conn_t *c, void *data)
{
    Mpar__Envelope req = MPAR__ENVELOPE__INIT;
    Mpar__ListNodes ln = MPAR__LIST_NODES__INIT;
    req.request_id = 5;
    req.msg_case = MPAR__ENVELOPE__MSG_LIST_NODES;
    req.list_nodes = &ln;
    cr_assert_eq(mp_conn_send(c, &req), MP_OK);
}

static void cli_on_envelope(mp_conn_t *c, const Mpar__Envelope *env, void *data)
{
    fx_t *fx = data;
    cr_assert_eq(env->msg_case, MPAR__ENVELOPE__MSG_NODE_LIST);
    cr_assert_eq(env->node_list->epoch, 11);
    fx->replies++;
    mp_conn_close(c, MP_CONN_LOCAL, "got the reply");
}

static void cli_on_close(mp_conn_t *c, mp_conn_reason_t reason, const char *why, void *data)
{
    fx_t *fx = data;
    fx->cli_closed++;
    fx->cli_reason = reason;
}

static const mp_conn_cbs_t cli_cbs = {
    .on_envelope = cli_on_envelope, .on_ready = cli_on_ready, .on_close = cli_on_close};

static void run_framed(fx_t *fx, const char *srv_secret, const char *cli_secret)
{
    mp_auth_secret_t *ss = NULL, *cs = NULL;
    if (srv_secret) {
        cr_assert_eq(mp_auth_secret_from_bytes(srv_secret, strlen(srv_secret), &ss), MP_OK);
    }
    if (cli_secret) {
        cr_assert_eq(mp_auth_secret_from_bytes(cli_secret, strlen(cli_secret), &cs), MP_OK);
    }
    fx->srv_params.hs = (mp_handshake_params_t){
        .side = MP_AUTH_SIDE_SERVER, .secret = ss, .epoch = 1, .name = "srv", .coordinator = true};
    struct sockaddr_in addr;
    listen_tcp(fx, &addr);
    mp_conn_params_t cp = {.hs = {.side = MP_AUTH_SIDE_CLIENT,
                                  .secret = cs,
                                  .name = "cli",
                                  .role = MPAR__PEER_ROLE__PEER_ROLE_CLIENT}};
    mp_conn_t *cli;
    cr_assert_eq(mp_conn_connect_tcp(&fx->loop, (struct sockaddr *)&addr, &cp, &cli_cbs, fx, &cli),
                 MP_OK);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    fx_finish(fx);
    mp_auth_secret_free(ss);
    mp_auth_secret_free(cs);
}

Test(frame_conn, request_and_reply_after_authenticated_handshake)
{
    fx_t fx;
    fx_init(&fx);
    run_framed(&fx, "a-cluster-secret-of-some-length", "a-cluster-secret-of-some-length");
    cr_assert_eq(fx.replies, 1);
    cr_assert_eq(fx.cli_closed, 1);
    cr_assert_eq(fx.srv_closed, 1);
    cr_assert_eq(fx.srv_reason, MP_CONN_EOF);
}

Test(frame_conn, wrong_secret_closes_both_ends_with_auth_reason)
{
    fx_t fx;
    fx_init(&fx);
    uint64_t before = mp_conn_stats()->closed[MP_CONN_AUTH];
    run_framed(&fx, "a-cluster-secret-of-some-length", "another-secret-of-some-length");
    cr_assert_eq(fx.replies, 0);
    cr_assert_eq(fx.srv_reason, MP_CONN_AUTH);
    cr_assert_eq(fx.cli_reason, MP_CONN_AUTH);
    cr_assert_eq(mp_conn_stats()->closed[MP_CONN_AUTH], before + 2);
}

/* ---- raw peers ---- */

static void raw_on_write(uv_write_t *req, int status) {}

static void raw_on_connect(uv_connect_t *req, int status)
{
    fx_t *fx = req->data;
    cr_assert_eq(status, 0);
    for (int i = 0; i < fx->raw_nsend; i++) {
        uv_buf_t b = uv_buf_init((char *)fx->raw_send[i], (unsigned)fx->raw_len[i]);
        uv_write(&fx->raw_write[i], (uv_stream_t *)&fx->raw, &b, 1, raw_on_write);
    }
}

Test(frame_conn, peer_stalling_mid_frame_is_dropped)
{
    fx_t fx;
    fx_init(&fx);
    fx.srv_params.stall_ms = 150;
    struct sockaddr_in addr;
    listen_tcp(&fx, &addr);
    uv_tcp_init(&fx.loop, &fx.raw.tcp);
    fx.raw_send[0] = "\x00\x00";
    fx.raw_len[0] = 2;
    fx.raw_nsend = 1;
    fx.raw_connect.data = &fx;
    uv_tcp_connect(&fx.raw_connect, &fx.raw.tcp, (struct sockaddr *)&addr, raw_on_connect);
    while (fx.srv_closed == 0) {
        uv_run(&fx.loop, UV_RUN_ONCE);
    }
    cr_assert_eq(fx.srv_reason, MP_CONN_STALL);
    cr_assert_geq(fx.t_closed - fx.t_open, 140);
    fx_finish(&fx);
}

Test(frame_conn, lines_split_across_writes_arrive_whole)
{
    fx_t fx;
    fx_init(&fx);
    fx.srv_params.sniff_lines = true;
    char path[128];
    listen_pipe(&fx, path, sizeof(path));
    uv_pipe_init(&fx.loop, &fx.raw.pipe, 0);
    fx.raw_send[0] = "{\"cmd\":\"a\"}\r\n{\"cmd\"";
    fx.raw_send[1] = ":";
    fx.raw_send[2] = "\"b\"}\n";
    for (int i = 0; i < 3; i++) {
        fx.raw_len[i] = strlen(fx.raw_send[i]);
    }
    fx.raw_nsend = 3;
    fx.raw_connect.data = &fx;
    uv_pipe_connect(&fx.raw_connect, &fx.raw.pipe, path, raw_on_connect);
    while (fx.srv_closed == 0) {
        uv_run(&fx.loop, UV_RUN_ONCE);
    }
    cr_assert_eq(fx.lines, 2);
    cr_assert_str_eq(fx.line[0], "{\"cmd\":\"a\"}");
    cr_assert_str_eq(fx.line[1], "{\"cmd\":\"b\"}");
    cr_assert_eq(fx.srv_reason, MP_CONN_LOCAL);
    fx_finish(&fx);
    unlink(path);
}

Test(frame_conn, reader_that_never_reads_is_dropped_with_bounded_buffering)
{
    fx_t fx;
    fx_init(&fx);
    fx.srv_params.sniff_lines = true;
    fx.srv_params.stall_ms = 200;
    fx.reply_big = true;
    char path[128];
    listen_pipe(&fx, path, sizeof(path));
    uv_pipe_init(&fx.loop, &fx.raw.pipe, 0);
    /* 4000 requests, each answered with 4 KiB: 16 MB if all were buffered. */
    static char reqs[4000 * 4];
    for (int i = 0; i < 4000; i++) {
        memcpy(reqs + 4 * i, "{}\n\n", 4);
    }
    fx.raw_send[0] = reqs;
    fx.raw_len[0] = sizeof(reqs);
    fx.raw_nsend = 1;
    fx.raw_connect.data = &fx;
    uv_pipe_connect(&fx.raw_connect, &fx.raw.pipe, path, raw_on_connect);
    int64_t peak = 0;
    while (fx.srv_closed == 0) {
        uv_run(&fx.loop, UV_RUN_ONCE);
        int64_t live = mp_alloc_live_bytes();
        peak = live > peak ? live : peak;
    }
    cr_assert_eq(fx.srv_reason, MP_CONN_SLOW_READER);
    cr_assert_lt(peak, 4 << 20, "mpard buffered %lld bytes for a reader that never reads",
                 (long long)peak);
    fx_finish(&fx);
    unlink(path);
}
