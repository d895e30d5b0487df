/*
 * metrics.c - the Prometheus text exposition of mpard (status socket
 * {"cmd":"metrics"}): mpar_ prefix, base units, _total counters, HELP and
 * TYPE for every family, mpar_build_info.  Builds the text in one
 * mp_malloc'ed buffer.  libuv thread.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "daemon/mpard.h"
#include "proto/json.h"

typedef struct {
    char *buf;
    size_t len, cap;
    bool failed;
} text_t;

static void put(text_t *t, const char *fmt, ...) MP_PRINTF(2, 3);

static void put(text_t *t, const char *fmt, ...)
{
    if (t->failed) {
        return;
    }
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *nb = mp_realloc(t->buf, cap);
        if (nb == NULL) {
            t->failed = true;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
}

static void family(text_t *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(text_t *t, const char *name, const char *help, uint64_t v)
{
    family(t, name, "counter", help);
    put(t, "%s %llu\n", name, (unsigned long long)v);
}

static void lower(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src[i] && i + 1 < cap; i++) {
        dst[i] = (char)(src[i] >= 'A' && src[i] <= 'Z' ? src[i] + 32 : src[i]);
    }
    dst[i] = '\0';
}

char *mp_metrics_render(mpard_t *d)
{
    text_t t = {.cap = 8192};
    t.buf = mp_malloc(t.cap);
    if (t.buf == NULL) {
        return NULL;
    }
    t.buf[0] = '\0';
    const mp_conn_stats_t *cs = mp_conn_stats();
    family(&t, "mpar_build_info", "gauge", "Build information of this mpard; always 1.");
    put(&t, "mpar_build_info{version=\"%s\",coordinator=\"%s\",node=\"%s\"} 1\n", MP_VERSION,
        d->coord ? "true" : "false", d->agent ? "true" : "false");
    family(&t, "mpar_start_time_seconds", "gauge", "Start time of mpard, seconds since the epoch.");
    put(&t, "mpar_start_time_seconds %.3f\n", (double)d->start_unix_ms / 1000.0);
    family(&t, "mpar_ready", "gauge", "1 once mpard told systemd READY=1.");
    put(&t, "mpar_ready %d\n", d->ready_sent ? 1 : 0);
    family(&t, "mpar_devices", "gauge", "Devices this node offers, by kind.");
    int cpu = 0, cuda = 0;
    for (int i = 0; i < d->ndevices; i++) {
        if (d->devices[i].kind == MP_DEVKIND_CUDA) {
            cuda++;
        } else {
            cpu++;
        }
    }
    put(&t, "mpar_devices{kind=\"cpu\"} %d\nmpar_devices{kind=\"cuda\"} %d\n", cpu, cuda);
    if (d->agent != NULL) {
        family(&t, "mpar_node_registered", "gauge",
               "1 while this node is registered with its coordinator.");
        put(&t, "mpar_node_registered %d\n", mp_agent_registered(d->agent) ? 1 : 0);
    }
    if (d->coord != NULL) {
        int ns[5], js[6];
        char name[32];
        mp_coord_counts(d->coord, ns, js);
        family(&t, "mpar_cluster_nodes", "gauge", "Nodes known to the coordinator, by state.");
        for (int i = 1; i < 5; i++) {
            lower(name, sizeof(name), mp_proto_enum_short(&mpar__node_state__descriptor, i));
            put(&t, "mpar_cluster_nodes{state=\"%s\"} %d\n", name, ns[i]);
        }
        family(&t, "mpar_jobs", "gauge", "Jobs known to the coordinator, by state.");
        for (int i = 1; i < 6; i++) {
            lower(name, sizeof(name), mp_proto_enum_short(&mpar__job_state__descriptor, i));
            put(&t, "mpar_jobs{state=\"%s\"} %d\n", name, js[i]);
        }
        family(&t, "mpar_cluster_epoch", "gauge", "The coordinator's epoch (one per start).");
        put(&t, "mpar_cluster_epoch %llu\n", (unsigned long long)mp_coord_epoch(d->coord));
        counter(&t, "mpar_jobs_submitted_total", "Jobs accepted into the queue.",
                d->n.jobs_submitted);
        counter(&t, "mpar_jobs_refused_total", "Job submissions refused as invalid.",
                d->n.jobs_refused);
        counter(&t, "mpar_heartbeats_received_total", "Heartbeats received from nodes.",
                d->n.heartbeats);
        counter(&t, "mpar_node_registrations_total", "Node registrations, rejoins included.",
                d->n.registrations);
    }
    family(&t, "mpar_connections", "gauge", "Open control connections.");
    put(&t, "mpar_connections %llu\n", (unsigned long long)cs->open);
    counter(&t, "mpar_connections_accepted_total", "Control connections accepted.", cs->accepted);
    family(&t, "mpar_connections_closed_total", "counter",
           "Control connections closed, by reason.");
    for (int r = 0; r < MP_CONN_REASON_COUNT; r++) {
        put(&t, "mpar_connections_closed_total{reason=\"%s\"} %llu\n",
            mp_conn_reason_name((mp_conn_reason_t)r), (unsigned long long)cs->closed[r]);
    }
    /* The metrics listener's connections, in the same family: every bad
     * HTTP request closes its connection with one of these reasons. */
    const mp_http_stats_t *hs = d->metrics_http ? mp_http_server_stats(d->metrics_http) : NULL;
    for (int r = 0; hs != NULL && r < MP_HTTP_REASON_COUNT; r++) {
        put(&t, "mpar_connections_closed_total{reason=\"%s\"} %llu\n",
            mp_http_reason_name((mp_http_reason_t)r), (unsigned long long)hs->closed[r]);
    }
    if (hs != NULL) {
        family(&t, "mpar_http_connections", "gauge", "Open connections of the metrics listener.");
        put(&t, "mpar_http_connections %llu\n", (unsigned long long)hs->open);
        counter(&t, "mpar_http_requests_total", "Whole HTTP requests read by the metrics listener.",
                hs->requests);
    }
    counter(&t, "mpar_frames_received_total", "Protocol frames received.", cs->frames_in);
    counter(&t, "mpar_frames_sent_total", "Protocol frames sent.", cs->frames_out);
    counter(&t, "mpar_received_bytes_total", "Bytes received on control connections.",
            cs->bytes_in);
    counter(&t, "mpar_sent_bytes_total", "Bytes queued on control connections.", cs->bytes_out);
    counter(&t, "mpar_requests_total", "Framed requests handled.", d->n.requests);
    counter(&t, "mpar_requests_denied_total", "Requests refused for lack of permission.",
            d->n.requests_denied);
    counter(&t, "mpar_status_requests_total", "Status socket JSON requests handled.",
            d->n.status_requests);
    counter(&t, "mpar_status_request_errors_total",
            "Status socket requests refused as malformed, oversized or unknown.",
            d->n.status_errors);
    counter(&t, "mpar_config_reloads_total", "Configuration reloads (SIGHUP) applied.",
            d->n.reloads);
    counter(&t, "mpar_config_reload_failures_total",
            "Configuration reloads refused; the old configuration stayed.", d->n.reload_failures);
    family(&t, "mpar_allocated_bytes", "gauge", "Host bytes allocated through mpar's allocator.");
    put(&t, "mpar_allocated_bytes %lld\n", (long long)mp_alloc_live_bytes());
    if (t.failed) {
        mp_free(t.buf);
        return NULL;
    }
    return t.buf;
}
