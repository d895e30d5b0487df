/*
 * metrics.c - the Prometheus text exposition of mpard (status socket
 * {"cmd":"metrics"}): mpar_ prefix, base units, _total counters, HELP and
 * TYPE for every family, mpar_build_info.  Builds the text in one
 * mp_malloc'ed buffer.  libuv thread.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "daemon/agent.h"
#include "daemon/coord.h"
#include "daemon/metrics.h"
#include "proto/json.h"
#include "transport/frame_conn.h"

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

/* A label value as the exposition format wants it: \\, \" and \n escaped. */
static void label(char *dst, size_t cap, const char *src)
{
    size_t o = 0;
    for (const char *p = src != NULL ? src : ""; *p != '\0' && o + 3 < cap; p++) {
        if (*p == '\\' || *p == '"') {
            dst[o++] = '\\';
            dst[o++] = *p;
        } else if (*p == '\n') {
            dst[o++] = '\\';
            dst[o++] = 'n';
        } else {
            dst[o++] = *p;
        }
    }
    dst[o] = '\0';
}

/* The coordinator's per-job series: one sample per RUNNING job, labelled
 * with its id and name, so that a dashboard plots training live. */
static void render_jobs(text_t *t, mp_coord_t *c)
{
    size_t n;
    Mpar__JobInfo **jobs = mp_coord_jobs(c, &n);
    if (jobs == NULL && n > 0) {
        t->failed = true;
        return;
    }
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"mpar_job_step", "gauge", "Training steps a running job has completed."},
        {"mpar_job_steps_total", "gauge", "Training steps a running job will run."},
        {"mpar_job_loss", "gauge",
         "A running job's loss at its latest step (mean over the global batch)."},
        {"mpar_job_samples_per_second", "gauge", "A running job's training throughput so far."},
        {"mpar_job_tokens_per_second", "gauge",
         "A running text job's training throughput so far, in tokens (positions)."},
        {"mpar_job_bubble_fraction", "gauge", "A running job's measured pipeline bubble so far."},
        {"mpar_job_restarts", "gauge",
         "Resumes of a running job from a checkpoint (after a failure or a coordinator restart)."},
        {"mpar_job_failures", "gauge",
         "Failed runs of a running job (shard errors, lost nodes), bounded by max_restarts."},
    };
    for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        family(t, fam[f].name, fam[f].type, fam[f].help);
        for (size_t i = 0; i < n; i++) {
            const Mpar__JobInfo *j = jobs[i];
            if (j->state != MPAR__JOB_STATE__JOB_STATE_RUNNING ||
                (f == 4 && !j->has_tokens_per_s)) {
                continue; /* tokens/s: text jobs only */
            }
            char id[64], name[200];
            label(id, sizeof(id), j->id);
            label(name, sizeof(name), j->name);
            /* Not "job": a Prometheus server sets that label on every series
             * of a scrape job, and would rename this one exported_job. */
            put(t, "%s{job_id=\"%s\",job_name=\"%s\"} ", fam[f].name, id, name);
            switch (f) {
            case 0:
                put(t, "%llu\n", (unsigned long long)j->steps);
                break;
            case 1:
                put(t, "%llu\n", (unsigned long long)j->total_steps);
                break;
            case 2:
                /* Before the first step there is no loss: NaN, as Prometheus
                 * writes a missing value, rather than a made-up 0. */
                if (j->has_final_loss && isfinite(j->final_loss)) {
                    put(t, "%.9g\n", j->final_loss);
                } else {
                    put(t, "%s\n",
                        j->has_final_loss && isinf(j->final_loss)
                            ? (j->final_loss > 0 ? "+Inf" : "-Inf")
                            : "NaN");
                }
                break;
            case 3:
                put(t, "%.6g\n", j->samples_per_s);
                break;
            case 4:
                put(t, "%.6g\n", j->tokens_per_s);
                break;
            case 5:
                put(t, "%.6g\n", j->has_bubble_fraction ? j->bubble_fraction : 0.0);
                break;
            case 6:
                put(t, "%u\n", j->restarts);
                break;
            default:
                put(t, "%u\n", j->failures);
                break;
            }
        }
    }
    mp_free(jobs);
}

/* The coordinator's per-node series, from the nodes' heartbeats. */
static void render_nodes(text_t *t, mp_coord_t *c)
{
    size_t n;
    Mpar__NodeInfo **nodes = mp_coord_nodes(c, &n);
    if (nodes == NULL && n > 0) {
        t->failed = true;
        return;
    }
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"mpar_node_shards_running", "gauge", "Shard executors running on a node."},
        {"mpar_node_shard_sent_bytes_total", "counter",
         "Payload bytes a node's shard executors sent on the data plane."},
        {"mpar_node_shard_received_bytes_total", "counter",
         "Payload bytes a node's shard executors received on the data plane."},
    };
    for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        family(t, fam[f].name, fam[f].type, fam[f].help);
        for (size_t i = 0; i < n; i++) {
            const Mpar__NodeInfo *ni = nodes[i];
            char name[200];
            label(name, sizeof(name), ni->name);
            uint64_t v = f == 0   ? ni->running_shards
                         : f == 1 ? ni->shard_bytes_sent
                                  : ni->shard_bytes_received;
            put(t, "%s{node=\"%s\"} %llu\n", fam[f].name, name, (unsigned long long)v);
        }
    }
    mp_free(nodes);
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
        render_jobs(&t, d->coord);
        render_nodes(&t, d->coord);
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
    family(&t, "mpar_connections_refused_total", "counter",
           "Connections refused because their listener held its cap.");
    put(&t, "mpar_connections_refused_total{listener=\"unix\"} %llu\n",
        (unsigned long long)d->n.conn_refused[0]);
    put(&t, "mpar_connections_refused_total{listener=\"tcp\"} %llu\n",
        (unsigned long long)d->n.conn_refused[1]);
    counter(&t, "mpar_accept_errors_total", "accept() failures (EMFILE, ENFILE, ...).",
            d->n.accept_errors);
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
