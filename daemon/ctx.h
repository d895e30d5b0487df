/*
 * ctx.h - the daemon context (mpard_t) that main.c owns and hands down to
 * every part of mpard, and how the parts depend on each other: one way,
 * downwards, each including only the headers of the parts below it.
 *
 *   main.c       flags/config, listeners, signals, shutdown, reload; registers
 *                the callbacks below (on_changed) and starts the roles
 *   session.c    one accepted connection (cluster TCP or the Unix socket):
 *                framed requests and the status socket's JSON lines; it
 *                serves the roles and is, to them, a link (link.h)
 *   notify.c     sd_notify READY/STATUS/STOPPING and the watchdog timer
 *   metrics.c    Prometheus text exposition
 *   coord.c      the coordinator role: membership, job queue, persistence
 *   coord_run.c  ... the coordinator's side of a running job
 *   coord_waits.c ... a running job's wait-for graph
 *   agent.c      the node role: registration and heartbeats, forwarding
 *   shard.c      the node's side of a running job: one executor thread per shard
 *   mbox.c       worker threads -> loop mailbox; the process's UCX context
 *   ctx.c        this context's clock
 *
 * A part reports upwards only through what it is handed: a link's
 * operations (link.h), the context's on_changed, the send callback the
 * agent gives its shards.  Everything here runs on the libuv thread.
 */
#ifndef MP_DAEMON_CTX_H
#define MP_DAEMON_CTX_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/config.h"
#include "transport/auth.h"
#include "transport/http_server.h"

/* The roles and sessions, opaque to everything but their own files. */
typedef struct mp_coord mp_coord_t;
typedef struct mp_agent mp_agent_t;
typedef struct mp_session mp_session_t;

typedef struct {
    uint64_t status_requests; /* JSON lines answered */
    uint64_t status_errors;   /* malformed, oversized or unknown JSON requests */
    uint64_t requests;        /* framed requests answered */
    uint64_t requests_denied; /* refused for lack of permission */
    uint64_t jobs_submitted;
    uint64_t jobs_refused; /* invalid specs */
    uint64_t heartbeats;
    uint64_t registrations;
    uint64_t reloads;
    uint64_t reload_failures;
    uint64_t conn_refused[2]; /* over the listener's cap: [0] Unix socket, [1] TCP */
    uint64_t accept_errors;   /* accept() failed (EMFILE, ENFILE, ...) */
} mpard_counters_t;

typedef struct mpard mpard_t;
/* Called by a part of mpard when something changed that may make it ready
 * (a node registered) or change its systemd status line; main registers
 * it, so that the parts below never call up into main.c or notify.c. */
typedef void (*mpard_changed_cb_t)(mpard_t *d);

struct mpard {
    uv_loop_t *loop;
    int argc;
    char **argv;
    mp_daemon_config_t cfg;
    mp_daemon_device_t devices[MP_DAEMON_MAX_DEVICES];
    int ndevices;
    mp_auth_secret_t *secret;
    uint64_t start_unix_ms;
    int pid;
    uv_tcp_t tcp_listener;
    bool tcp_open;
    char tcp_bound[128];
    uv_pipe_t unix_listener;
    bool unix_open;
    mp_http_server_t *metrics_http; /* --metrics-listen, or NULL */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t watchdog_timer;
    uv_timer_t status_timer;
    uv_timer_t shutdown_timer;
    uv_timer_t stuck_timer; /* bounds a stop that waits on threads */
    bool watchdog_on;
    bool listeners_ready;
    bool ready_sent;
    bool stopping;
    bool reload_inflight;   /* the config file is being read on the thread pool */
    bool reload_again;      /* a SIGHUP came meanwhile: read it once more after */
    mp_coord_t *coord;      /* coordinator role, or NULL */
    mp_agent_t *agent;      /* node role (devices not "none"), or NULL */
    mp_session_t *sessions; /* doubly linked, for shutdown */
    uint32_t conn_open[2];  /* sessions per listener: [0] Unix socket, [1] TCP */
    uint32_t conn_cap;      /* the most sessions one listener holds (main.c) */
    uint64_t refuse_logged_ms, accept_err_logged_ms; /* rate limits of those logs */
    mpard_counters_t n;
    mpard_changed_cb_t on_changed;
};

uint64_t mpard_now_ms(void); /* wall clock, Unix ms (ctx.c) */

/* Tells main that something changed (readiness, the status line). */
static inline void mpard_changed(mpard_t *d)
{
    if (d->on_changed != NULL) {
        d->on_changed(d);
    }
}

#endif
