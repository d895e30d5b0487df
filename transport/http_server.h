/*
 * http_server.h - a small HTTP/1.1 server on the libuv loop for what a
 * monitoring system scrapes (mpard's GET /metrics): one request per
 * connection, parsed by transport/http.h, answered by the caller's handler
 * from the loop (which must not block), then closed.  Every connection that
 * goes wrong (garbage, oversized headers, a body, a peer too slow to send
 * its request or to read the answer, a wrong path or method, too many at
 * once) is answered when it can be (400, 404, 405, 408, 413, 414, 431, 503),
 * closed, logged and counted by reason; the server and the loop go on.
 * libuv thread only.
 */
#ifndef MP_TRANSPORT_HTTP_SERVER_H
#define MP_TRANSPORT_HTTP_SERVER_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "common/status.h"

/* Why an HTTP connection closed, counted per reason. */
#define MP_HTTP_REASON_LIST(X)                                                                     \
    X(MP_HTTP_SERVED, "http_served")                                                               \
    X(MP_HTTP_BAD_REQUEST, "http_bad_request")                                                     \
    X(MP_HTTP_TOO_LARGE, "http_too_large")                                                         \
    X(MP_HTTP_NOT_FOUND, "http_not_found")                                                         \
    X(MP_HTTP_METHOD, "http_method_not_allowed")                                                   \
    X(MP_HTTP_TIMEOUT, "http_timeout")                                                             \
    X(MP_HTTP_EOF, "http_eof")                                                                     \
    X(MP_HTTP_IO, "http_io_error")                                                                 \
    X(MP_HTTP_TOO_MANY, "http_too_many")                                                           \
    X(MP_HTTP_INTERNAL, "http_internal_error")                                                     \
    X(MP_HTTP_LOCAL, "http_local")

typedef enum {
#define MP_HTTP_REASON_ENUM_(name, text) name,
    MP_HTTP_REASON_LIST(MP_HTTP_REASON_ENUM_)
#undef MP_HTTP_REASON_ENUM_
        MP_HTTP_REASON_COUNT
} mp_http_reason_t;

const char *mp_http_reason_name(mp_http_reason_t reason);

/* The body of a GET of `path` (only paths the server was given reach it):
 * mp_malloc'ed text, its length in *len_p; NULL answers 500. */
typedef char *(*mp_http_handler_t)(void *arg, const char *path, size_t *len_p);

typedef struct {
    const char *path;         /* the one path served, e.g. "/metrics" */
    const char *content_type; /* of its body */
    mp_http_handler_t handler;
    void *arg;
    uint64_t deadline_ms; /* a connection's whole life, request and answer; default 10000 */
    unsigned max_conns;   /* open at once; more are answered 503 and closed; default 64 */
} mp_http_server_opts_t;

typedef struct {
    uint64_t accepted;
    uint64_t open;
    uint64_t requests; /* whole requests read */
    uint64_t closed[MP_HTTP_REASON_COUNT];
} mp_http_stats_t;

typedef struct mp_http_server mp_http_server_t;

/* Binds addr and listens.  MP_ERR_IO (logged, naming the address) when the
 * address cannot be bound. */
mp_status_t mp_http_server_start(uv_loop_t *loop, const struct sockaddr *addr,
                                 const mp_http_server_opts_t *opts, mp_http_server_t **srv_p);
/* "127.0.0.1:9464" as bound (the port a :0 request got). */
const char *mp_http_server_address(const mp_http_server_t *srv);
const mp_http_stats_t *mp_http_server_stats(const mp_http_server_t *srv);
/* Closes the listener and every connection; frees once their handles have
 * closed (the loop must run on). */
void mp_http_server_stop(mp_http_server_t *srv);

#endif
