/*
 * http_server.c - the HTTP server of http_server.h: a TCP listener, and per
 * connection a stream, a deadline timer, the request being parsed
 * (transport/http.h) and the answer being written.  A connection reads one
 * request, is answered, and closes after the answer is written; the
 * deadline covers both halves, so neither a peer that sends slowly nor one
 * that never reads its answer holds a connection longer.  Owns the listener,
 * the connections and their buffers; a connection is freed from its last
 * close callback, the server after its listener and last connection closed.
 * libuv thread only.
 */
#include "transport/http_server.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "transport/http.h"

#define READ_LEN 4096
#define LINGER_MAX (1u << 20) /* bytes of a refused request read and dropped */

typedef struct http_conn http_conn_t;

struct mp_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    bool listener_open;
    mp_http_server_opts_t o;
    char bound[80];
    mp_http_stats_t st;
    http_conn_t *conns;
    bool stopping;
};

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr;
    uv_shutdown_t sd;
    int handles_open;
    mp_http_server_t *srv;
    mp_http_req_t *req;
    char buf[READ_LEN];
    char *out;
    bool answered, closing;
    bool lingering;          /* a refusal is out: the rest of the request is read and dropped */
    size_t dropped;
    mp_http_reason_t reason; /* what the answer being written will count as */
    char why[160];           /* and why, for the log */
    char peer[64];
    http_conn_t *prev, *next;
};

const char *mp_http_reason_name(mp_http_reason_t reason)
{
    static const char *names[] = {
#define MP_HTTP_REASON_NAME_(name, text) text,
        MP_HTTP_REASON_LIST(MP_HTTP_REASON_NAME_)
#undef MP_HTTP_REASON_NAME_
    };
    return (unsigned)reason < MP_HTTP_REASON_COUNT ? names[reason] : "unknown";
}

static void server_maybe_free(mp_http_server_t *srv)
{
    if (srv->stopping && !srv->listener_open && srv->conns == NULL) {
        mp_free(srv);
    }
}

static void on_conn_closed(uv_handle_t *h)
{
    http_conn_t *c = h->data;
    if (--c->handles_open > 0) {
        return;
    }
    mp_http_server_t *srv = c->srv;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        srv->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    if (srv->st.open > 0) {
        srv->st.open--;
    }
    mp_http_req_destroy(c->req);
    mp_free(c->out);
    mp_free(c);
    server_maybe_free(srv);
}

static void conn_close(http_conn_t *c, mp_http_reason_t reason, const char *why)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    c->srv->st.closed[reason]++;
    if (reason != MP_HTTP_SERVED && reason != MP_HTTP_LOCAL) {
        mp_info("http connection %s closed (%s): %s", c->peer, mp_http_reason_name(reason),
                why != NULL ? why : "");
    }
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status; /* the close that follows is counted by then */
}

static void on_written(uv_write_t *w, int status)
{
    http_conn_t *c = w->data;
    if (c->closing) {
        return;
    }
    if (status < 0) {
        conn_close(c, MP_HTTP_IO, uv_strerror(status));
        return;
    }
    if (c->reason == MP_HTTP_SERVED) {
        conn_close(c, c->reason, c->why);
        return;
    }
    /* A refusal may leave the peer's request unread; closing now would
     * reset the connection and could destroy the answer before the peer
     * reads it.  So, as nginx's lingering close: end our side, read and
     * drop what still comes until the peer closes or the deadline. */
    c->lingering = true;
    c->sd.data = c;
    if (uv_shutdown(&c->sd, (uv_stream_t *)&c->tcp, on_shutdown) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c, c->reason, c->why);
    }
}

/* Answers and closes once the answer is out (or the deadline passes). */
static void conn_answer(http_conn_t *c, int status, mp_http_reason_t reason, const char *why,
                        const char *extra_header, const char *ctype, const char *body,
                        size_t body_len, bool head_only)
{
    if (c->answered || c->closing) {
        return;
    }
    c->answered = true;
    c->reason = reason;
    snprintf(c->why, sizeof(c->why), "answered %d: %s", status, why != NULL ? why : "");
    uv_read_stop((uv_stream_t *)&c->tcp);
    char msg[160];
    if (body == NULL) {
        snprintf(msg, sizeof(msg), "%d %s: %s\n", status, mp_http_status_text(status),
                 why != NULL ? why : "");
        body = msg;
        body_len = strlen(msg);
        ctype = "text/plain; charset=utf-8";
    }
    size_t len;
    if (mp_http_response(status, ctype, extra_header, body, body_len, head_only, &c->out, &len) !=
        MP_OK) {
        conn_close(c, MP_HTTP_INTERNAL, "out of memory for the answer");
        return;
    }
    uv_buf_t b = uv_buf_init(c->out, (unsigned)len);
    c->wr.data = c;
    int rc = uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc != 0) {
        conn_close(c, MP_HTTP_IO, uv_strerror(rc));
    }
}

static mp_http_reason_t reason_of_status(int status)
{
    return status == 413 || status == 414 || status == 431 ? MP_HTTP_TOO_LARGE
                                                           : MP_HTTP_BAD_REQUEST;
}

static void conn_route(http_conn_t *c)
{
    mp_http_server_t *srv = c->srv;
    bool head;
    int status = mp_http_req_decide(c->req, srv->o.path, &head);
    srv->st.requests++;
    if (status == 405) {
        char why[64];
        snprintf(why, sizeof(why), "method %s (only GET and HEAD)", mp_http_req_method(c->req));
        conn_answer(c, 405, MP_HTTP_METHOD, why, "Allow: GET, HEAD", NULL, NULL, 0, false);
        return;
    }
    if (status == 404) {
        char why[96];
        snprintf(why, sizeof(why), "no such path (this server has %s)", srv->o.path);
        conn_answer(c, 404, MP_HTTP_NOT_FOUND, why, NULL, NULL, NULL, 0, head);
        return;
    }
    size_t len = 0;
    char *body = srv->o.handler(srv->o.arg, srv->o.path, &len);
    if (body == NULL) {
        conn_answer(c, 500, MP_HTTP_INTERNAL, "the handler failed", NULL, NULL, NULL, 0, head);
        return;
    }
    conn_answer(c, 200, MP_HTTP_SERVED, NULL, NULL, srv->o.content_type, body, len, head);
    mp_free(body);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    http_conn_t *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->buf, sizeof(c->buf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    http_conn_t *c = s->data;
    (void)buf;
    if (c->closing || nread == 0) {
        return;
    }
    if (c->lingering) {
        c->dropped += nread > 0 ? (size_t)nread : 0;
        if (nread < 0 || c->dropped > LINGER_MAX) {
            conn_close(c, c->reason, c->why);
        }
        return;
    }
    if (c->answered) {
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF) {
            /* A request ends with its blank line, never with the stream:
             * a peer that half-closes first gets no answer to read. */
            mp_http_req_feed(c->req, NULL, 0);
            conn_close(c, MP_HTTP_EOF, "the peer closed before a whole request");
        } else {
            conn_close(c, MP_HTTP_IO, uv_strerror((int)nread));
        }
        return;
    }
    switch (mp_http_req_feed(c->req, c->buf, (size_t)nread)) {
    case MP_HTTP_MORE:
        return;
    case MP_HTTP_DONE:
        conn_route(c);
        return;
    case MP_HTTP_BAD: {
        int status = mp_http_req_status(c->req);
        conn_answer(c, status, reason_of_status(status), mp_http_req_error(c->req), NULL, NULL,
                    NULL, 0, false);
        return;
    }
    }
}

static void on_deadline(uv_timer_t *t)
{
    http_conn_t *c = t->data;
    if (!c->answered) {
        conn_answer(c, 408, MP_HTTP_TIMEOUT, "no whole request within the deadline", NULL, NULL,
                    NULL, 0, false);
        /* The answer gets the same time again, then the connection goes. */
        uv_timer_start(&c->timer, on_deadline, c->srv->o.deadline_ms, 0);
    } else if (c->lingering) {
        conn_close(c, c->reason, c->why); /* the answer is out */
    } else {
        conn_close(c, MP_HTTP_TIMEOUT, "the peer did not read its answer within the deadline");
    }
}

static void peer_name(uv_tcp_t *tcp, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[48] = "?";
    snprintf(out, cap, "tcp:?");
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0) {
        return;
    }
    if (ss.ss_family == AF_INET) {
        uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof(host));
        snprintf(out, cap, "tcp:%s:%d", host, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof(host));
        snprintf(out, cap, "tcp:[%s]:%d", host, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    }
}

static void on_dropped_closed(uv_handle_t *h)
{
    mp_free(h);
}

static void on_connection(uv_stream_t *server, int status)
{
    mp_http_server_t *srv = server->data;
    if (status < 0) {
        mp_warn("http listener %s: accept failed: %s", srv->bound, uv_strerror(status));
        return;
    }
    http_conn_t *c = mp_calloc(1, sizeof(*c));
    if (c == NULL || mp_http_req_create(&c->req) != MP_OK) {
        /* Out of memory: take the connection off the backlog and drop it. */
        mp_free(c);
        uv_tcp_t *t = mp_calloc(1, sizeof(*t));
        if (t != NULL) {
            uv_tcp_init(srv->loop, t);
            t->data = t;
            if (uv_accept(server, (uv_stream_t *)t) != 0) {
                mp_warn("http listener %s: cannot accept", srv->bound);
            }
            uv_close((uv_handle_t *)t, on_dropped_closed);
        }
        srv->st.closed[MP_HTTP_INTERNAL]++;
        mp_warn("http listener %s: out of memory for a connection", srv->bound);
        return;
    }
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    c->next = srv->conns;
    if (srv->conns != NULL) {
        srv->conns->prev = c;
    }
    srv->conns = c;
    srv->st.open++;
    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        snprintf(c->peer, sizeof(c->peer), "tcp:?");
        conn_close(c, MP_HTTP_IO, uv_strerror(rc));
        return;
    }
    srv->st.accepted++;
    peer_name(&c->tcp, c->peer, sizeof(c->peer));
    uv_timer_start(&c->timer, on_deadline, srv->o.deadline_ms, 0);
    if (srv->st.open > srv->o.max_conns) {
        char why[64];
        snprintf(why, sizeof(why), "more than %u connections open", srv->o.max_conns);
        conn_answer(c, 503, MP_HTTP_TOO_MANY, why, NULL, NULL, NULL, 0, false);
        return;
    }
    rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0) {
        conn_close(c, MP_HTTP_IO, uv_strerror(rc));
    }
}

mp_status_t mp_http_server_start(uv_loop_t *loop, const struct sockaddr *addr,
                                 const mp_http_server_opts_t *opts, mp_http_server_t **srv_p)
{
    mp_http_server_t *srv = mp_calloc(1, sizeof(*srv));
    if (srv == NULL) {
        return MP_ERR_NOMEM;
    }
    srv->loop = loop;
    srv->o = *opts;
    if (srv->o.deadline_ms == 0) {
        srv->o.deadline_ms = 10000;
    }
    if (srv->o.max_conns == 0) {
        srv->o.max_conns = 64;
    }
    char want[80] = "?";
    if (addr->sa_family == AF_INET) {
        char host[48];
        uv_ip4_name((const struct sockaddr_in *)addr, host, sizeof(host));
        snprintf(want, sizeof(want), "%s:%d", host,
                 ntohs(((const struct sockaddr_in *)addr)->sin_port));
    } else if (addr->sa_family == AF_INET6) {
        char host[48];
        uv_ip6_name((const struct sockaddr_in6 *)addr, host, sizeof(host));
        snprintf(want, sizeof(want), "[%s]:%d", host,
                 ntohs(((const struct sockaddr_in6 *)addr)->sin6_port));
    }
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    srv->listener_open = true;
    int rc = uv_tcp_bind(&srv->listener, addr, 0);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&srv->listener, 64, on_connection);
    }
    if (rc != 0) {
        mp_err("cannot listen for HTTP on %s: %s", want, uv_strerror(rc));
        mp_http_server_stop(srv);
        return MP_ERR_IO;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    snprintf(srv->bound, sizeof(srv->bound), "%s", want);
    if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len) == 0) {
        char host[48];
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof(host));
            snprintf(srv->bound, sizeof(srv->bound), "%s:%d", host,
                     ntohs(((struct sockaddr_in *)&ss)->sin_port));
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof(host));
            snprintf(srv->bound, sizeof(srv->bound), "[%s]:%d", host,
                     ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
        }
    }
    *srv_p = srv;
    return MP_OK;
}

const char *mp_http_server_address(const mp_http_server_t *srv)
{
    return srv->bound;
}

const mp_http_stats_t *mp_http_server_stats(const mp_http_server_t *srv)
{
    return &srv->st;
}

static void on_listener_closed(uv_handle_t *h)
{
    mp_http_server_t *srv = h->data;
    srv->listener_open = false;
    server_maybe_free(srv);
}

void mp_http_server_stop(mp_http_server_t *srv)
{
    if (srv == NULL || srv->stopping) {
        return;
    }
    srv->stopping = true;
    for (http_conn_t *c = srv->conns; c != NULL; c = c->next) {
        conn_close(c, MP_HTTP_LOCAL, "the server stops");
    }
    if (!uv_is_closing((uv_handle_t *)&srv->listener)) {
        uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
    }
}
