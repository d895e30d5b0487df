/*
 * seeds_http.c - writes the seed corpus of fuzz_http: good requests, each
 * refusal of transport/http.h, and requests cut short, each under a few
 * first bytes (piece sizes, with and without EOF).
 *
 * usage: seeds_http DIR
 */
#include <stdio.h>
#include <string.h>

static int put(const char *dir, int k, unsigned char first, const char *req, size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/seed-%03d", dir, k);
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        perror(path);
        return -1;
    }
    fputc(first, f);
    fwrite(req, 1, len, f);
    return fclose(f);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: seeds_http DIR\n");
        return 2;
    }
    static char big[10000];
    int n = snprintf(big, sizeof(big), "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(big + n, 'a', sizeof(big) - (size_t)n - 5);
    memcpy(big + sizeof(big) - 5, "\r\n\r\n", 4);
    const char *reqs[] = {
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nUser-Agent: Prometheus/2.42.0\r\n"
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n"
        "Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
        "GET /metrics HTTP/1.0\r\n\r\n",
        "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /metrics?a=b#frag HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://host:9464/metrics HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        "PUT /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "CONNECT host:443 HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/2.0\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nbroken\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\n",
        "GET /metr",
        "garbage\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "GET /metrics HTTP/1.1\r\n Folded: x\r\n\r\n",
        "GET /metrics HTTP/1.1\n\n",
        "GET /%00%ff HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nA: b\r\nA: c\r\nA: d\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
    };
    int k = 0;
    unsigned char firsts[] = {0x00, 0x80, 0x01, 0x7f};
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        for (size_t f = 0; f < 2; f++) {
            if (put(argv[1], k++, firsts[(i + f) % 4] | (f ? 0x80 : 0), reqs[i], strlen(reqs[i])) !=
                0) {
                return 1;
            }
        }
    }
    if (put(argv[1], k++, 0x00, big, sizeof(big) - 1) != 0 ||
        put(argv[1], k++, 0x05, big, sizeof(big) - 1) != 0) {
        return 1;
    }
    printf("%d seeds in %s\n", k, argv[1]);
    return 0;
}
