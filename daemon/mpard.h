/*
 * mpard.h - the daemon's pieces and how they call each other (internal to
 * daemon/).  One mpard_t per process, owned by main.c; everything here runs
 * on the libuv thread.
 *
 *   main.c      flags/config, listeners, signals, sd_notify, shutdown, reload
 *   session.c   one accepted connection (cluster TCP or the Unix socket):
 *               framed requests and the status socket's JSON lines
 *   coord.c     the coordinator role: membership, job queue, persistence
 *   agent.c     the node role: registration and heartbeats to the coordinator
 *   metrics.c   Prometheus text exposition
 *   notify.c    sd_notify READY/STATUS/STOPPING and the watchdog timer
 *   coord_run.c the coordinator's side of a running job: the data feeder and
 *               weight gatherer thread, wire-up, per-step aggregation, the end
 *   shard.c     the node's side of a running job: one executor thread per shard
 *   mbox.c      worker threads -> loop mailbox; the process's UCX context
 */
#ifndef MP_DAEMON_MPARD_H
#define MP_DAEMON_MPARD_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include <pthread.h>
#include <uv.h>

#include "daemon/config.h"
#include "proto/mpar.pb-c.h"
#include "transport/auth.h"
#include "transport/frame_conn.h"
#include "transport/http_server.h"
#include "transport/ucx.h"

typedef struct mp_coord mp_coord_t;
typedef struct mp_agent mp_agent_t;
typedef struct mp_session mp_session_t;
typedef struct mp_coord_node mp_coord_node_t;
typedef struct mp_shards mp_shards_t;

/* mbox.c: a message a worker thread hands to the libuv thread; embed it
 * first in the sender's own struct. */
typedef struct mp_mbox_msg {
    struct mp_mbox_msg *next;
} mp_mbox_msg_t;
typedef void (*mp_mbox_cb_t)(void *owner, mp_mbox_msg_t *msg);
typedef struct {
    uv_async_t async; /* first: mp_mbox_owns relies on it */
    pthread_mutex_t mu;
    mp_mbox_msg_t *head, *tail;
    mp_mbox_cb_t cb;
    void *owner;
    bool open;
} mp_mbox_t;
mp_status_t mp_mbox_init(uv_loop_t *loop, mp_mbox_t *mb, mp_mbox_cb_t cb, void *owner);
/* Any thread; the loop calls cb(owner, msg), which owns msg from then on. */
void mp_mbox_post(mp_mbox_t *mb, mp_mbox_msg_t *msg);
/* Handles what is queued now (the loop thread, e.g. while joining threads). */
void mp_mbox_drain(mp_mbox_t *mb);
/* Handles what is queued, then closes (no thread may post afterwards):
 * its owner does so once the last thread that posts to it has exited. */
void mp_mbox_close(mp_mbox_t *mb);
/* Whether h is a mailbox's async, which a shutdown's sweep of the loop's
 * handles leaves to its owner (a thread may still post to it). */
bool mp_mbox_owns(const uv_handle_t *h);
/* The process's UCX context, made on first use (any thread). */
mp_status_t mpard_xport_ctx(mp_xport_ctx_t **ctx_p);
/* At exit, after every thread that used it has ended. */
void mpard_xport_ctx_release(void);

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
} mpard_counters_t;

typedef struct mpard {
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
    bool watchdog_on;
    bool listeners_ready;
    bool ready_sent;
    bool stopping;
    bool reload_inflight;   /* the config file is being read on the thread pool */
    bool reload_again;      /* a SIGHUP came meanwhile: read it once more after */
    mp_coord_t *coord;      /* coordinator role, or NULL */
    mp_agent_t *agent;      /* node role (devices not "none"), or NULL */
    mp_session_t *sessions; /* doubly linked, for shutdown */
    mpard_counters_t n;
} mpard_t;

uint64_t mpard_now_ms(void); /* wall clock, Unix ms */

/* main.c: READY=1 once listeners are bound and the node has registered. */
void mpard_check_ready(mpard_t *d);
/* notify.c */
void mp_notify_send(const char *fmt, ...) MP_PRINTF(1, 2);
void mp_notify_watchdog_start(mpard_t *d);
void mp_notify_status_update(mpard_t *d);

/* session.c */
void mp_session_on_accept(uv_stream_t *server, int status);
void mp_session_close_all(mpard_t *d); /* flush, then close */
void mp_session_abort_all(mpard_t *d); /* close now */
/* Sends to a session's connection (used by coord.c for watchers). */
mp_status_t mp_session_send(mp_session_t *s, const Mpar__Envelope *env);
/* Closes a session (a node replaced by its own re-registration, or DEAD). */
void mp_session_close(mp_session_t *s, const char *why);
/* The node a session registered, and clearing it. */
void mp_session_set_node(mp_session_t *s, mp_coord_node_t *n);

/* coord.c */
mp_status_t mp_coord_create(mpard_t *d, mp_coord_t **coord_p);
/* Shutdown: closes its timers, fails the running jobs; the feeder threads
 * are joined as they exit, and the mailbox closes after the last one. */
void mp_coord_stop(mp_coord_t *c);
void mp_coord_destroy(mp_coord_t *c); /* after the loop ended: final save */
void mp_coord_apply_config(mp_coord_t *c);
uint64_t mp_coord_epoch(const mp_coord_t *c);
/* Membership. */
mp_status_t mp_coord_node_register(mp_coord_t *c, mp_session_t *s, const Mpar__RegisterNode *r,
                                   const char *address, mp_coord_node_t **node_p, mp_errbuf_t *err);
void mp_coord_node_heartbeat(mp_coord_t *c, mp_coord_node_t *n, const Mpar__Heartbeat *hb);
void mp_coord_node_goodbye(mp_coord_t *c, mp_coord_node_t *n, const char *reason);
void mp_coord_node_disconnected(mp_coord_t *c, mp_coord_node_t *n, mp_session_t *s);
void mp_coord_session_closed(mp_coord_t *c, mp_session_t *s);
/* Views: pointers into the coordinator's own records, valid until the loop
 * runs again.  Free the returned arrays with mp_free. */
Mpar__NodeInfo **mp_coord_nodes(mp_coord_t *c, size_t *n_p);
Mpar__JobInfo **mp_coord_jobs(mp_coord_t *c, size_t *n_p);
Mpar__JobInfo *mp_coord_job_find(mp_coord_t *c, const char *id);
/* Counts by state, for status and metrics. */
void mp_coord_counts(mp_coord_t *c, int nodes_by_state[5], int jobs_by_state[6]);
/* Jobs.  submit: MP_ERR_SPEC with the spec's message in err (or a
 * save_weights directory that is not absolute; NULL or "" for none). */
mp_status_t mp_coord_job_submit(mp_coord_t *c, const char *spec_json, size_t len,
                                const char *submitter, const char *save_weights,
                                Mpar__JobInfo **job_p, mp_errbuf_t *err);
/* MP_ERR_NOTFOUND, or MP_ERR_STATE when already finished. */
mp_status_t mp_coord_job_cancel(mp_coord_t *c, const char *id, const char *who,
                                Mpar__JobInfo **job_p, mp_errbuf_t *err);
/* Sends the job's events so far to s (as JobEvents with request_id), and
 * when follow is set keeps s as a watcher until the job ends. */
mp_status_t mp_coord_job_watch(mp_coord_t *c, const char *id, bool follow, mp_session_t *s,
                               uint64_t request_id, mp_errbuf_t *err);
/* The JSON form of a job's events (status socket "job" command). */
json_t *mp_coord_job_events_json(mp_coord_t *c, const char *id);
/* The live wait-for graph of job id (coord_waits.c): MP_ERR_NOTFOUND, else
 * a graph (empty unless the job runs); free with mp_coord_waits_free. */
mp_status_t mp_coord_waits(mp_coord_t *c, const char *id, Mpar__WaitGraph **graph_p,
                           mp_errbuf_t *err);
void mp_coord_waits_free(Mpar__WaitGraph *g);
/* The data plane's wire-up and results, from a node (coord_run.c). */
void mp_coord_shard_ready(mp_coord_t *c, mp_coord_node_t *n, const Mpar__ShardReady *r);
void mp_coord_shard_report(mp_coord_t *c, mp_coord_node_t *n, const Mpar__ShardReport *r);

/* agent.c */
mp_status_t mp_agent_create(mpard_t *d, mp_agent_t **agent_p);
bool mp_agent_registered(const mp_agent_t *a);
void mp_agent_stop(mp_agent_t *a);  /* says Goodbye, closes */
void mp_agent_abort(mp_agent_t *a); /* closes its connection now */
void mp_agent_destroy(mp_agent_t *a);
/* A node that is not the coordinator passes a client's request on to it and
 * relays the replies (and a watch's events) back to the session. */
mp_status_t mp_agent_forward(mp_agent_t *a, mp_session_t *s, const Mpar__Envelope *req,
                             const char *who, mp_errbuf_t *err);
void mp_agent_session_closed(mp_agent_t *a, mp_session_t *s);
/* Requests of s still waiting for the coordinator's reply. */
size_t mp_agent_pending(const mp_agent_t *a, const mp_session_t *s);
const char *mp_agent_state(const mp_agent_t *a);
/* Sends to the coordinator; MP_ERR_PEER when not connected. */
mp_status_t mp_agent_send(mp_agent_t *a, const Mpar__Envelope *env);

/* shard.c: the executor threads of this node. */
mp_status_t mp_shards_create(mpard_t *d, mp_shards_t **shards_p);
void mp_shards_on_envelope(mp_shards_t *sh, const Mpar__Envelope *env);
/* Cancels every job (the coordinator is gone, or mpard stops). */
void mp_shards_abort_all(mp_shards_t *sh, const char *reason);
uint32_t mp_shards_running(const mp_shards_t *sh);
/* What each executor of this node does now, into out[cap] (strings point
 * into the shards' records and static names, valid until the loop runs
 * again); the payload bytes the node's executors sent and received so far,
 * ended ones included.  Returns the number of entries. */
size_t mp_shards_probe(mp_shards_t *sh, Mpar__ShardProbe *out, size_t cap, uint64_t *sent_p,
                       uint64_t *received_p);
/* Shutdown: cancels every job and returns; each thread is joined when its
 * exit reaches the loop, and the mailbox closes after the last one. */
void mp_shards_stop(mp_shards_t *sh);
/* After the loop: joins any thread still there (none, normally), frees. */
void mp_shards_destroy(mp_shards_t *sh);

/* metrics.c: the Prometheus text exposition; free with mp_free. */
char *mp_metrics_render(mpard_t *d);

#endif
