/*
 * agent.c - the node role of mpard: connects to the coordinator (--join, or
 * this mpard's own listener when it is the coordinator too), proves the
 * cluster secret, registers the node's devices, sends heartbeats at the
 * coordinator's interval, and reconnects with backoff when the link drops.
 * A graceful stop says Goodbye first.  The job messages of the data plane's
 * wire-up go to the node's executor threads (shard.c); losing the
 * coordinator aborts them.  Owns the connection, two timers and the shards.
 * libuv thread.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "daemon/agent.h"
#include "daemon/shards.h"
#include "proto/codec.h"
#include "transport/frame_conn.h"

#define BACKOFF_MAX_MS 2000

/* A client request this node passed on to the coordinator. */
typedef struct {
    uint64_t rid;      /* on the coordinator link */
    uint64_t orig_rid; /* the client's */
    mp_link_t *s;
    bool watch; /* a WatchJob: its events come until one says final */
} forward_t;

struct mp_agent {
    mpard_t *d;
    forward_t *fwd;
    size_t nfwd, cap_fwd;
    uint64_t next_rid;
    mp_conn_t *conn;
    bool registered;
    bool stopping;
    bool timers_open;
    uv_timer_t hb_timer;
    uv_timer_t retry_timer;
    uint64_t incarnation;
    uint64_t seq;
    uint32_t hb_ms;
    uint64_t backoff_ms;
    char target[128];
    struct sockaddr_storage addr;
    const char *state;
    mp_shards_t *shards;
};

mp_status_t mp_agent_send(mp_agent_t *a, const Mpar__Envelope *env)
{
    if (a->conn == NULL || !a->registered) {
        return MP_ERR_PEER;
    }
    return mp_conn_send(a->conn, env);
}

bool mp_agent_registered(const mp_agent_t *a)
{
    return a->registered;
}
const char *mp_agent_state(const mp_agent_t *a)
{
    return a->state;
}

static void agent_connect(mp_agent_t *a);

/* The shards' reports go to the coordinator on this node's connection. */
static mp_status_t on_shards_send(void *arg, const Mpar__Envelope *env)
{
    return mp_agent_send(arg, env);
}

/* Shards whose state one heartbeat carries (a node runs at most one per
 * device of each job; more are left out of the wait-for graph). */
#define HB_PROBES_MAX 256

static void on_heartbeat_timer(uv_timer_t *t)
{
    mp_agent_t *a = t->data;
    if (a->conn == NULL || !a->registered) {
        return;
    }
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__Heartbeat hb = MPAR__HEARTBEAT__INIT;
    hb.seq = ++a->seq;
    hb.sent_unix_ms = mpard_now_ms();
    hb.running_shards = a->shards != NULL ? mp_shards_running(a->shards) : 0;
    /* What every executor does now: the coordinator's wait-for graph. */
    Mpar__ShardProbe probes[HB_PROBES_MAX];
    Mpar__ShardProbe *pp[HB_PROBES_MAX];
    if (a->shards != NULL) {
        hb.n_shards = mp_shards_probe(a->shards, probes, HB_PROBES_MAX, &hb.shard_bytes_sent,
                                      &hb.shard_bytes_received);
        for (size_t i = 0; i < hb.n_shards; i++) {
            pp[i] = &probes[i];
        }
        hb.shards = pp;
    }
    env.msg_case = MPAR__ENVELOPE__MSG_HEARTBEAT;
    env.heartbeat = &hb;
    mp_conn_send(a->conn, &env);
}

static void on_retry_timer(uv_timer_t *t)
{
    agent_connect(t->data);
}

static void agent_send_register(mp_agent_t *a)
{
    mpard_t *d = a->d;
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__RegisterNode r = MPAR__REGISTER_NODE__INIT;
    Mpar__Device devs[MP_DAEMON_MAX_DEVICES];
    Mpar__Device *devp[MP_DAEMON_MAX_DEVICES];
    for (int i = 0; i < d->ndevices; i++) {
        mpar__device__init(&devs[i]);
        devs[i].kind = d->devices[i].kind == MP_DEVKIND_CUDA ? MPAR__DEVICE_KIND__DEVICE_KIND_CUDA
                                                             : MPAR__DEVICE_KIND__DEVICE_KIND_CPU;
        devs[i].index = d->devices[i].index;
        devs[i].memory_bytes = d->devices[i].memory_bytes;
        devp[i] = &devs[i];
    }
    r.name = d->cfg.name;
    r.devices = devp;
    r.n_devices = (size_t)d->ndevices;
    r.incarnation = a->incarnation;
    r.data_host = "";
    r.pid = (uint32_t)getpid();
    env.msg_case = MPAR__ENVELOPE__MSG_REGISTER_NODE;
    env.register_node = &r;
    mp_conn_send(a->conn, &env);
}

static void on_ready(mp_conn_t *conn, void *data)
{
    mp_agent_t *a = data;
    const mp_handshake_t *hs = mp_conn_handshake(conn);
    if (!mp_handshake_peer_coordinator(hs)) {
        mp_conn_close(conn, MP_CONN_PROTO, "the mpard at --join is not a coordinator");
        return;
    }
    a->state = "registering";
    agent_send_register(a);
}

static void fwd_remove(mp_agent_t *a, size_t i)
{
    a->fwd[i] = a->fwd[--a->nfwd];
}

/* Fails every passed-on request: the coordinator link is gone. */
static void fwd_fail_all(mp_agent_t *a, const char *why)
{
    while (a->nfwd > 0) {
        forward_t f = a->fwd[0];
        fwd_remove(a, 0);
        Mpar__Envelope env = MPAR__ENVELOPE__INIT;
        Mpar__Error e = MPAR__ERROR__INIT;
        e.code = MPAR__ERROR_CODE__ERROR_CODE_NOT_COORDINATOR;
        e.message = (char *)why;
        env.request_id = f.orig_rid;
        env.msg_case = MPAR__ENVELOPE__MSG_ERROR;
        env.error = &e;
        mp_link_send(f.s, &env);
    }
}

/* A reply to a passed-on request goes back to its client; true if it was one. */
static bool fwd_reply(mp_agent_t *a, const Mpar__Envelope *env)
{
    if (env->request_id == 0) {
        return false;
    }
    for (size_t i = 0; i < a->nfwd; i++) {
        if (a->fwd[i].rid != env->request_id) {
            continue;
        }
        forward_t f = a->fwd[i];
        bool more =
            f.watch && env->msg_case == MPAR__ENVELOPE__MSG_JOB_EVENT && !env->job_event->final;
        if (!more) {
            fwd_remove(a, i);
        }
        Mpar__Envelope copy = *env;
        copy.request_id = f.orig_rid;
        mp_link_send(f.s, &copy);
        return true;
    }
    return false;
}

mp_status_t mp_agent_forward(mp_agent_t *a, mp_link_t *s, const Mpar__Envelope *req,
                             const char *who, mp_errbuf_t *err)
{
    if (a->conn == NULL || !a->registered) {
        return mp_errbuf_set(err, MP_ERR_PEER,
                             "this node is not connected to its coordinator at %s (%s)", a->target,
                             a->state);
    }
    if (a->nfwd == a->cap_fwd) {
        size_t cap = a->cap_fwd ? a->cap_fwd * 2 : 8;
        forward_t *nf = mp_realloc(a->fwd, cap * sizeof(*nf));
        if (nf == NULL) {
            return mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory");
        }
        a->fwd = nf;
        a->cap_fwd = cap;
    }
    Mpar__Envelope copy = *req;
    Mpar__SubmitJob sj;
    Mpar__CancelJob cj;
    char name[256];
    snprintf(name, sizeof(name), "%s via node %s", who, a->d->cfg.name);
    if (req->msg_case == MPAR__ENVELOPE__MSG_SUBMIT_JOB) {
        sj = *req->submit_job;
        sj.submitter = name;
        copy.submit_job = &sj;
    } else if (req->msg_case == MPAR__ENVELOPE__MSG_CANCEL_JOB) {
        cj = *req->cancel_job;
        cj.requester = name;
        copy.cancel_job = &cj;
    }
    copy.request_id = ++a->next_rid;
    forward_t f = {.rid = copy.request_id,
                   .orig_rid = req->request_id,
                   .s = s,
                   .watch = req->msg_case == MPAR__ENVELOPE__MSG_WATCH_JOB};
    a->fwd[a->nfwd++] = f;
    if (mp_conn_send(a->conn, &copy) != MP_OK) {
        a->nfwd--;
        return mp_errbuf_set(err, MP_ERR_PEER, "lost the coordinator at %s", a->target);
    }
    return MP_OK;
}

size_t mp_agent_pending(const mp_agent_t *a, const mp_link_t *s)
{
    size_t n = 0;
    for (size_t i = 0; i < a->nfwd; i++) {
        n += a->fwd[i].s == s;
    }
    return n;
}

void mp_agent_link_closed(mp_agent_t *a, mp_link_t *s)
{
    for (size_t i = 0; i < a->nfwd;) {
        if (a->fwd[i].s == s) {
            fwd_remove(a, i);
        } else {
            i++;
        }
    }
}

static void on_envelope(mp_conn_t *conn, const Mpar__Envelope *env, void *data)
{
    mp_agent_t *a = data;
    if (fwd_reply(a, env)) {
        return;
    }
    switch (env->msg_case) {
    case MPAR__ENVELOPE__MSG_NODE_REGISTERED: {
        const Mpar__NodeRegistered *nr = env->node_registered;
        a->registered = true;
        a->state = "registered";
        a->backoff_ms = 0;
        a->hb_ms = nr->heartbeat_ms >= 10 ? nr->heartbeat_ms : a->d->cfg.heartbeat_ms;
        uv_timer_start(&a->hb_timer, on_heartbeat_timer, a->hb_ms, a->hb_ms);
        mp_info("registered with the coordinator at %s (epoch %llu, heartbeat %u ms)", a->target,
                (unsigned long long)nr->epoch, a->hb_ms);
        mpard_changed(a->d); /* may make mpard ready */
        return;
    }
    case MPAR__ENVELOPE__MSG_ERROR:
        mp_err("coordinator at %s refused this node: %s", a->target,
               env->error->message ? env->error->message : "");
        return;
    case MPAR__ENVELOPE__MSG_JOB_ASSIGNMENT:
    case MPAR__ENVELOPE__MSG_PEER_ADDRESSES:
    case MPAR__ENVELOPE__MSG_JOB_START:
    case MPAR__ENVELOPE__MSG_JOB_END:
    case MPAR__ENVELOPE__MSG_JOB_ABORT:
        if (a->registered) {
            mp_shards_on_envelope(a->shards, env);
        }
        return;
    case MPAR__ENVELOPE__MSG_JOB_EVENT:
    case MPAR__ENVELOPE__MSG_NODE_LIST:
    case MPAR__ENVELOPE__MSG_JOB_LIST:
    case MPAR__ENVELOPE__MSG_JOB_REPLY:
    case MPAR__ENVELOPE__MSG_JOB_ACCEPTED:
        /* For a client that has gone away meanwhile. */
        mp_debug("dropped a %s for a departed client", mp_frame_msg_name(env->msg_case));
        return;
    default: {
        char msg[128];
        snprintf(msg, sizeof(msg), "unexpected %s from the coordinator",
                 mp_frame_msg_name(env->msg_case));
        mp_conn_fail(conn, MPAR__ERROR_CODE__ERROR_CODE_PROTOCOL, MP_CONN_PROTO, msg);
        return;
    }
    }
}

static void on_close(mp_conn_t *conn, mp_conn_reason_t reason, const char *why, void *data)
{
    mp_agent_t *a = data;
    if (a->conn != conn) {
        return;
    }
    a->conn = NULL;
    bool was = a->registered;
    a->registered = false;
    fwd_fail_all(a, "this node lost its coordinator; retry when `mpar-client nodes` answers");
    /* Its reports can no longer arrive: the coordinator fails the jobs. */
    mp_shards_abort_all(a->shards, "lost the coordinator");
    if (a->stopping) {
        return;
    }
    uv_timer_stop(&a->hb_timer);
    a->state = reason == MP_CONN_AUTH ? "authentication refused" : "disconnected";
    if (reason == MP_CONN_AUTH) {
        mp_err("the coordinator at %s refused this node's cluster secret (%s)", a->target, why);
        a->backoff_ms = BACKOFF_MAX_MS;
    } else if (was) {
        mp_warn("lost the coordinator at %s (%s): %s", a->target, mp_conn_reason_name(reason), why);
    } else {
        mp_debug("cannot reach the coordinator at %s (%s): %s", a->target,
                 mp_conn_reason_name(reason), why);
    }
    a->backoff_ms = a->backoff_ms == 0 ? 100 : a->backoff_ms * 2;
    if (a->backoff_ms > BACKOFF_MAX_MS) {
        a->backoff_ms = BACKOFF_MAX_MS;
    }
    uv_timer_start(&a->retry_timer, on_retry_timer, a->backoff_ms, 0);
    mpard_changed(a->d);
}

static void agent_connect(mp_agent_t *a)
{
    if (a->stopping || a->conn != NULL) {
        return;
    }
    mpard_t *d = a->d;
    mp_conn_params_t p = {
        .hs = {.side = MP_AUTH_SIDE_CLIENT,
               .secret = d->secret,
               .name = d->cfg.name,
               .role = MPAR__PEER_ROLE__PEER_ROLE_NODE},
        .stall_ms = d->cfg.dead_after_ms,
        .handshake_ms = d->cfg.dead_after_ms,
    };
    static const mp_conn_cbs_t cbs = {
        .on_envelope = on_envelope, .on_ready = on_ready, .on_close = on_close};
    a->state = "connecting";
    mp_conn_t *conn;
    /* The pointer is kept before the connect can fail, so on_close knows it. */
    if (mp_conn_connect_tcp(d->loop, (const struct sockaddr *)&a->addr, &p, &cbs, a, &conn) ==
        MP_OK) {
        a->conn = conn;
    } else {
        a->backoff_ms = BACKOFF_MAX_MS;
        uv_timer_start(&a->retry_timer, on_retry_timer, a->backoff_ms, 0);
    }
}

mp_status_t mp_agent_create(mpard_t *d, mp_agent_t **agent_p)
{
    mp_errbuf_t err;
    mp_agent_t *a = mp_calloc(1, sizeof(*a));
    if (a == NULL) {
        return MP_ERR_NOMEM;
    }
    a->d = d;
    a->state = "starting";
    const char *target = d->cfg.join;
    if (target[0] == '\0') {
        /* The coordinator in this process: its listener, reached on loopback
         * when it listens on every address. */
        target = d->tcp_bound;
        if (!strncmp(target, "0.0.0.0:", 8)) {
            snprintf(a->target, sizeof(a->target), "127.0.0.1:%s", target + 8);
        } else if (!strncmp(target, "[::]:", 5)) {
            snprintf(a->target, sizeof(a->target), "[::1]:%s", target + 5);
        } else {
            snprintf(a->target, sizeof(a->target), "%s", target);
        }
    } else {
        snprintf(a->target, sizeof(a->target), "%s", target);
    }
    if (mp_daemon_addr_parse(a->target, &a->addr, &err) != MP_OK) {
        mp_err("join: %s", err.msg);
        mp_free(a);
        return MP_ERR_INVAL;
    }
    uint64_t r = 0;
    uint8_t bytes[MP_AUTH_NONCE_LEN];
    if (mp_auth_nonce_fill(bytes) == MP_OK) {
        memcpy(&r, bytes, sizeof(r));
    }
    /* 53 bits: exact in every JSON reader. */
    a->incarnation = (r ? r : mpard_now_ms()) & ((1ull << 53) - 1);
    if (mp_shards_create(d, on_shards_send, a, &a->shards) != MP_OK) {
        mp_err("cannot start the shard executors' mailbox");
        mp_free(a);
        return MP_ERR_NOMEM;
    }
    uv_timer_init(d->loop, &a->hb_timer);
    uv_timer_init(d->loop, &a->retry_timer);
    a->hb_timer.data = a;
    a->retry_timer.data = a;
    a->timers_open = true;
    agent_connect(a);
    *agent_p = a;
    return MP_OK;
}

void mp_agent_stop(mp_agent_t *a)
{
    if (a->stopping) {
        return;
    }
    a->stopping = true;
    mp_shards_stop(a->shards);
    if (a->timers_open) {
        a->timers_open = false;
        uv_close((uv_handle_t *)&a->hb_timer, NULL);
        uv_close((uv_handle_t *)&a->retry_timer, NULL);
    }
    if (a->conn != NULL) {
        if (a->registered) {
            Mpar__Envelope env = MPAR__ENVELOPE__INIT;
            Mpar__Goodbye g = MPAR__GOODBYE__INIT;
            g.reason = "mpard stopped";
            env.msg_case = MPAR__ENVELOPE__MSG_GOODBYE;
            env.goodbye = &g;
            mp_conn_send(a->conn, &env);
        }
        mp_conn_end(a->conn, MP_CONN_LOCAL, "mpard is stopping");
    }
}

void mp_agent_abort(mp_agent_t *a)
{
    if (a->conn != NULL) {
        mp_conn_close(a->conn, MP_CONN_LOCAL, "mpard is stopping");
    }
}

void mp_agent_destroy(mp_agent_t *a)
{
    mp_shards_destroy(a->shards);
    mp_free(a->fwd);
    mp_free(a);
}
