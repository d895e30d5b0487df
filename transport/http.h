/*
 * http.h - one HTTP/1.x request as it arrives on a stream, parsed by
 * http_parser (Debian's libhttp-parser), and the response that answers it.
 * Pure: no I/O, no loop; the server (transport/http_server.h) and the
 * fuzzer feed it bytes in whatever pieces the network cut them.
 *
 * Limits, checked as the bytes come, before anything is stored beyond them:
 * the request line and headers together at most MP_HTTP_MAX_HEAD bytes
 * (431), the target at most MP_HTTP_MAX_URL (414), no body (413: the
 * server only answers GET and HEAD), HTTP/1.x only (505).  Anything
 * http_parser refuses is 400.
 */
#ifndef MP_TRANSPORT_HTTP_H
#define MP_TRANSPORT_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"

#define MP_HTTP_MAX_HEAD 8192
#define MP_HTTP_MAX_URL 1024

typedef struct mp_http_req mp_http_req_t;

typedef enum {
    MP_HTTP_MORE = 0, /* the request is not complete yet: feed more */
    MP_HTTP_DONE,     /* a whole request: method and path are known */
    MP_HTTP_BAD,      /* refused: mp_http_req_status says with what */
} mp_http_verdict_t;

mp_status_t mp_http_req_create(mp_http_req_t **req_p);
void mp_http_req_destroy(mp_http_req_t *req);

/* Feeds the next len bytes (len 0: the peer closed its side).  Once DONE or
 * BAD the verdict stays; bytes after a whole request are ignored (the
 * server answers one request per connection). */
mp_http_verdict_t mp_http_req_feed(mp_http_req_t *req, const char *buf, size_t len);

/* After BAD: the status to answer with (400, 413, 414, 431, 505) and why. */
int mp_http_req_status(const mp_http_req_t *req);
const char *mp_http_req_error(const mp_http_req_t *req);
/* After DONE: "GET", "HEAD", ... and the target's path ("/metrics"),
 * without its query. */
const char *mp_http_req_method(const mp_http_req_t *req);
const char *mp_http_req_path(const mp_http_req_t *req);

/* What a server that serves GET and HEAD of served_path answers a request
 * that is DONE or BAD: 200, 404 (another path), 405 (another method), or
 * the refusal's status; *head_p is set for HEAD (no body in the answer). */
int mp_http_req_decide(const mp_http_req_t *req, const char *served_path, bool *head_p);

/* The reason phrase of a status ("Not Found"). */
const char *mp_http_status_text(int status);

/* A whole response: status line, Content-Type, Content-Length, Connection:
 * close, then the body unless head_only (a HEAD request).  extra_header, if
 * not NULL, is one more "Name: value" line (without CRLF).  mp_free it. */
mp_status_t mp_http_response(int status, const char *content_type, const char *extra_header,
                             const char *body, size_t body_len, bool head_only, char **out_p,
                             size_t *len_p);

#endif
