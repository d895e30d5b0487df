/*
 * http.c - an HTTP/1.x request read incrementally with http_parser, under
 * the limits of http.h, and the responses of the server.  http_parser does
 * the parsing (request line, headers, chunked bodies, versions); this file
 * only keeps what the server needs (method, path) and counts bytes so that
 * a peer cannot make it store more than MP_HTTP_MAX_HEAD.  Owns its parser
 * and the target's bytes.  Pure: any thread, one request per object.
 */
#include "transport/http.h"

#include <http_parser.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"

struct mp_http_req {
    http_parser parser;
    mp_http_verdict_t verdict;
    int status;
    const char *error;
    size_t head_bytes; /* fed before the headers ended */
    bool headers_done;
    char url[MP_HTTP_MAX_URL + 1];
    size_t url_len;
    char path[MP_HTTP_MAX_URL + 1];
    char method[16];
};

static void refuse(mp_http_req_t *r, int status, const char *why)
{
    if (r->verdict == MP_HTTP_MORE) {
        r->verdict = MP_HTTP_BAD;
        r->status = status;
        r->error = why;
    }
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    mp_http_req_t *r = p->data;
    if (r->url_len + len > MP_HTTP_MAX_URL) {
        refuse(r, 414, "request target longer than 1024 bytes");
        return 1;
    }
    memcpy(r->url + r->url_len, at, len);
    r->url_len += len;
    r->url[r->url_len] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    mp_http_req_t *r = p->data;
    r->headers_done = true;
    if (p->http_major != 1) {
        refuse(r, 505, "only HTTP/1.0 and HTTP/1.1");
        return -1;
    }
    /* A GET or HEAD has no body; one that announces a body is refused
     * before its bytes arrive. */
    if ((p->flags & F_CHUNKED) != 0 || (p->content_length > 0 && p->content_length != ULLONG_MAX)) {
        refuse(r, 413, "a request body is not accepted");
        return -1; /* http_parser: anything but 0, 1, 2 is an error */
    }
    snprintf(r->method, sizeof(r->method), "%s", http_method_str((enum http_method)p->method));
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(r->url, r->url_len, p->method == HTTP_CONNECT, &u) != 0) {
        refuse(r, 400, "malformed request target");
        return -1;
    }
    if ((u.field_set & (1u << UF_PATH)) != 0) {
        memcpy(r->path, r->url + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
        r->path[u.field_data[UF_PATH].len] = '\0';
    } else {
        snprintf(r->path, sizeof(r->path), "/");
    }
    if (r->path[0] != '/') {
        /* "OPTIONS *" and the like: nothing this server answers. */
        refuse(r, 400, "the request target is not a path");
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    mp_http_req_t *r = p->data;
    if (r->verdict == MP_HTTP_MORE) {
        r->verdict = MP_HTTP_DONE;
    }
    http_parser_pause(p, 1); /* one request per connection: the rest is ignored */
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

mp_status_t mp_http_req_create(mp_http_req_t **req_p)
{
    mp_http_req_t *r = mp_calloc(1, sizeof(*r));
    if (r == NULL) {
        return MP_ERR_NOMEM;
    }
    http_parser_init(&r->parser, HTTP_REQUEST);
    r->parser.data = r;
    *req_p = r;
    return MP_OK;
}

void mp_http_req_destroy(mp_http_req_t *r)
{
    mp_free(r);
}

mp_http_verdict_t mp_http_req_feed(mp_http_req_t *r, const char *buf, size_t len)
{
    if (r->verdict != MP_HTTP_MORE) {
        return r->verdict;
    }
    if (len == 0) {
        /* The peer ended its side: http_parser decides whether that ends a
         * message (it never does for a request without its blank line). */
        http_parser_execute(&r->parser, &settings, NULL, 0);
        if (r->verdict == MP_HTTP_MORE) {
            refuse(r, 400, "the request ended early");
        }
        return r->verdict;
    }
    /* Only the bytes up to the limit reach the parser while the headers
     * last, so the limit holds however the peer cuts its bytes. */
    size_t take = len;
    bool over = false;
    if (!r->headers_done && r->head_bytes + len > MP_HTTP_MAX_HEAD) {
        take = MP_HTTP_MAX_HEAD - r->head_bytes;
        over = true;
    }
    if (take == 0) {
        refuse(r, 431, "request line and headers longer than 8192 bytes");
        return r->verdict;
    }
    size_t n = http_parser_execute(&r->parser, &settings, buf, take);
    if (!r->headers_done) {
        r->head_bytes += n;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&r->parser);
    if (r->verdict != MP_HTTP_MORE) {
        return r->verdict; /* a callback decided (DONE, or a refusal) */
    }
    if (e != HPE_OK && e != HPE_PAUSED) {
        refuse(r, e == HPE_HEADER_OVERFLOW ? 431 : 400, http_errno_description(e));
    } else if (over && !r->headers_done) {
        refuse(r, 431, "request line and headers longer than 8192 bytes");
    }
    return r->verdict;
}

int mp_http_req_status(const mp_http_req_t *r)
{
    return r->status;
}

const char *mp_http_req_error(const mp_http_req_t *r)
{
    return r->error != NULL ? r->error : "";
}

const char *mp_http_req_method(const mp_http_req_t *r)
{
    return r->method;
}

const char *mp_http_req_path(const mp_http_req_t *r)
{
    return r->path;
}

int mp_http_req_decide(const mp_http_req_t *r, const char *served_path, bool *head_p)
{
    *head_p = false;
    if (r->verdict != MP_HTTP_DONE) {
        return r->verdict == MP_HTTP_BAD ? r->status : 400;
    }
    *head_p = strcmp(r->method, "HEAD") == 0;
    if (!*head_p && strcmp(r->method, "GET") != 0) {
        return 405;
    }
    return strcmp(r->path, served_path) == 0 ? 200 : 404;
}

const char *mp_http_status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

mp_status_t mp_http_response(int status, const char *content_type, const char *extra_header,
                             const char *body, size_t body_len, bool head_only, char **out_p,
                             size_t *len_p)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s"
                     "Connection: close\r\n\r\n",
                     status, mp_http_status_text(status), content_type, body_len,
                     extra_header != NULL ? extra_header : "", extra_header != NULL ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head)) {
        return MP_ERR_INVAL;
    }
    size_t blen = head_only ? 0 : body_len;
    char *out = mp_malloc((size_t)n + blen + 1);
    if (out == NULL) {
        return MP_ERR_NOMEM;
    }
    memcpy(out, head, (size_t)n);
    if (blen > 0) {
        memcpy(out + n, body, blen);
    }
    out[(size_t)n + blen] = '\0';
    *out_p = out;
    *len_p = (size_t)n + blen;
    return MP_OK;
}
