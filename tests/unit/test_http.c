/*
 * test_http.c - HTTP requests read by transport/http.c: whole requests in
 * any cut of their bytes, the path without its query, and every refusal
 * with its status (garbage 400, oversized headers 431, long targets 414,
 * bodies 413, a request that ends early 400); responses as written.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "transport/http.h"

/* Feeds text in pieces of `step` bytes; returns the final verdict. */
static mp_http_verdict_t feed_in(mp_http_req_t *r, const char *text, size_t len, size_t step)
{
    mp_http_verdict_t v = MP_HTTP_MORE;
    for (size_t off = 0; off < len && v == MP_HTTP_MORE; off += step) {
        size_t n = len - off < step ? len - off : step;
        v = mp_http_req_feed(r, text + off, n);
    }
    return v;
}

static mp_http_req_t *req_new(void)
{
    mp_http_req_t *r;
    cr_assert_eq(mp_http_req_create(&r), MP_OK);
    return r;
}

Test(http, reads_a_get_cut_at_every_byte)
{
    const char *get = "GET /metrics?x=1 HTTP/1.1\r\nHost: localhost:9464\r\nAccept: */*\r\n\r\n";
    for (size_t step = 1; step <= strlen(get); step++) {
        mp_http_req_t *r = req_new();
        cr_assert_eq(feed_in(r, get, strlen(get), step), MP_HTTP_DONE, "step %zu", step);
        cr_assert_str_eq(mp_http_req_method(r), "GET");
        cr_assert_str_eq(mp_http_req_path(r), "/metrics");
        mp_http_req_destroy(r);
    }
}

Test(http, reads_head_and_http_1_0_and_ignores_what_follows)
{
    mp_http_req_t *r = req_new();
    const char *head = "HEAD /metrics HTTP/1.0\r\n\r\nGET /other HTTP/1.1\r\n\r\n";
    cr_assert_eq(mp_http_req_feed(r, head, strlen(head)), MP_HTTP_DONE);
    cr_assert_str_eq(mp_http_req_method(r), "HEAD");
    cr_assert_str_eq(mp_http_req_path(r), "/metrics");
    cr_assert_eq(mp_http_req_feed(r, "x", 1), MP_HTTP_DONE, "the verdict stays");
    mp_http_req_destroy(r);
}

Test(http, reports_other_methods_for_the_server_to_refuse)
{
    mp_http_req_t *r = req_new();
    const char *del = "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(mp_http_req_feed(r, del, strlen(del)), MP_HTTP_DONE);
    cr_assert_str_eq(mp_http_req_method(r), "DELETE");
    mp_http_req_destroy(r);
}

Test(http, refuses_garbage_with_400)
{
    const char *cases[] = {"garbage\r\n\r\n", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                           "GET /metrics HTTP/1.1\r\nNo colon\r\n\r\n",
                           "GET\r\n\r\n"};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mp_http_req_t *r = req_new();
        cr_assert_eq(mp_http_req_feed(r, cases[i], strlen(cases[i])), MP_HTTP_BAD, "case %zu", i);
        cr_assert_eq(mp_http_req_status(r), 400, "case %zu", i);
        cr_assert_neq(mp_http_req_error(r)[0], '\0');
        mp_http_req_destroy(r);
    }
}

Test(http, refuses_headers_over_the_limit_with_431_however_they_arrive)
{
    static char big[3 * MP_HTTP_MAX_HEAD];
    int n = snprintf(big, sizeof(big), "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(big + n, 'a', 2 * MP_HTTP_MAX_HEAD);
    memcpy(big + n + 2 * MP_HTTP_MAX_HEAD, "\r\n\r\n", 4);
    size_t len = (size_t)n + 2 * MP_HTTP_MAX_HEAD + 4;
    size_t steps[] = {1, 7, 4096, len};
    for (size_t i = 0; i < 4; i++) {
        mp_http_req_t *r = req_new();
        cr_assert_eq(feed_in(r, big, len, steps[i]), MP_HTTP_BAD);
        cr_assert_eq(mp_http_req_status(r), 431, "step %zu", steps[i]);
        mp_http_req_destroy(r);
    }
    /* Many small headers add up the same way. */
    mp_http_req_t *r = req_new();
    cr_assert_eq(mp_http_req_feed(r, "GET / HTTP/1.1\r\n", 16), MP_HTTP_MORE);
    mp_http_verdict_t v = MP_HTTP_MORE;
    for (int k = 0; k < 2000 && v == MP_HTTP_MORE; k++) {
        v = mp_http_req_feed(r, "A: b\r\n", 6);
    }
    cr_assert_eq(v, MP_HTTP_BAD);
    cr_assert_eq(mp_http_req_status(r), 431);
    mp_http_req_destroy(r);
}

Test(http, refuses_other_versions_with_505)
{
    mp_http_req_t *r = req_new();
    const char *get = "GET /metrics HTTP/2.0\r\n\r\n";
    cr_assert_eq(mp_http_req_feed(r, get, strlen(get)), MP_HTTP_BAD);
    cr_assert_eq(mp_http_req_status(r), 505);
    mp_http_req_destroy(r);
}

Test(http, refuses_a_long_target_with_414)
{
    static char req[MP_HTTP_MAX_URL + 100];
    int n = snprintf(req, sizeof(req), "GET /");
    memset(req + n, 'p', MP_HTTP_MAX_URL + 10);
    memcpy(req + n + MP_HTTP_MAX_URL + 10, " HTTP/1.1\r\n\r\n", 13);
    mp_http_req_t *r = req_new();
    cr_assert_eq(feed_in(r, req, (size_t)n + MP_HTTP_MAX_URL + 23, 100), MP_HTTP_BAD);
    cr_assert_eq(mp_http_req_status(r), 414);
    mp_http_req_destroy(r);
}

Test(http, refuses_a_body_with_413_before_it_arrives)
{
    const char *cases[] = {"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                           "GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"};
    for (int i = 0; i < 2; i++) {
        mp_http_req_t *r = req_new();
        cr_assert_eq(mp_http_req_feed(r, cases[i], strlen(cases[i])), MP_HTTP_BAD);
        cr_assert_eq(mp_http_req_status(r), 413, "case %d", i);
        mp_http_req_destroy(r);
    }
}

Test(http, refuses_a_request_that_ends_early)
{
    mp_http_req_t *r = req_new();
    const char *part = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
    cr_assert_eq(mp_http_req_feed(r, part, strlen(part)), MP_HTTP_MORE);
    cr_assert_eq(mp_http_req_feed(r, NULL, 0), MP_HTTP_BAD);
    cr_assert_eq(mp_http_req_status(r), 400);
    mp_http_req_destroy(r);
}

Test(http, writes_responses_with_length_and_close)
{
    char *out;
    size_t len;
    cr_assert_eq(mp_http_response(200, "text/plain", NULL, "abc", 3, false, &out, &len), MP_OK);
    cr_assert_str_eq(out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                          "Connection: close\r\n\r\nabc");
    cr_assert_eq(len, strlen(out));
    mp_free(out);
    cr_assert_eq(mp_http_response(405, "text/plain", "Allow: GET, HEAD", "no", 2, true, &out, &len),
                 MP_OK);
    cr_assert_str_eq(out, "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\n"
                          "Content-Length: 2\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\n");
    mp_free(out);
}
