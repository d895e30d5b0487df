/*
 * fuzz_http.c - libFuzzer harness (clang, ASan+UBSan) over the request
 * handling of mpard's metrics listener (transport/http.c): the incremental
 * request reader fed in fuzzer-chosen pieces, optionally ended by EOF, the
 * decision of what to answer, and the answer itself.  Checks the contract:
 * the verdict never changes once given, refusals carry one of the statuses
 * of http.h, a request's path is short and starts with '/', and the answer
 * is a well-formed HTTP/1.1 response.  Input: byte 0 picks the piece size
 * and whether the stream ends with EOF, the rest is the byte stream.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "transport/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    size_t piece = (size_t)(data[0] & 0x7f) * 37 + 1;
    bool eof = (data[0] & 0x80) != 0;
    data++;
    size--;
    mp_http_req_t *r;
    if (mp_http_req_create(&r) != MP_OK) {
        return 0;
    }
    mp_http_verdict_t v = MP_HTTP_MORE;
    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        mp_http_verdict_t nv = mp_http_req_feed(r, (const char *)data + off, n);
        if (v != MP_HTTP_MORE && nv != v) {
            abort(); /* a verdict is final */
        }
        v = nv;
    }
    if (eof) {
        mp_http_verdict_t nv = mp_http_req_feed(r, NULL, 0);
        if ((v != MP_HTTP_MORE && nv != v) || nv == MP_HTTP_MORE) {
            abort(); /* EOF decides */
        }
        v = nv;
    }
    if (v == MP_HTTP_BAD) {
        int st = mp_http_req_status(r);
        if (st != 400 && st != 413 && st != 414 && st != 431 && st != 505) {
            abort();
        }
        if (mp_http_req_error(r)[0] == '\0') {
            abort();
        }
    }
    if (v == MP_HTTP_DONE) {
        const char *path = mp_http_req_path(r);
        if (path[0] != '/' || strlen(path) > MP_HTTP_MAX_URL || mp_http_req_method(r)[0] == '\0') {
            abort();
        }
    }
    if (v != MP_HTTP_MORE) {
        bool head;
        int st = mp_http_req_decide(r, "/metrics", &head);
        char *out;
        size_t len;
        const char *body = "mpar_up 1\n";
        if (mp_http_response(st, "text/plain", st == 405 ? "Allow: GET, HEAD" : NULL, body,
                             strlen(body), head, &out, &len) == MP_OK) {
            if (len < 17 || memcmp(out, "HTTP/1.1 ", 9) != 0 || strstr(out, "\r\n\r\n") == NULL) {
                abort();
            }
            mp_free(out);
        }
    }
    mp_http_req_destroy(r);
    return 0;
}
