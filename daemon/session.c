/*
 * session.c - one accepted connection of mpard, from the cluster TCP
 * listener or the Unix socket.  Framed requests (mpar-client, node agents)
 * are answered with Envelopes; on the Unix socket a first byte other than
 * 0x00 makes it the status socket, answering newline-delimited JSON.
 * Permissions: on the Unix socket, SO_PEERCRED decides (root and the daemon's
 * own user may change things, anyone else who can open the 0660 socket, i.e.
 * its group, may only read); over TCP, a client proven by the cluster secret
 * may change things, and without a secret (loopback only) it may only read.
 * Owns the session record; it is freed from the connection's close callback.
 * libuv thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fs.h"
#include "common/log.h"
#include "daemon/agent.h"
#include "daemon/coord.h"
#include "daemon/metrics.h"
#include "daemon/session.h"
#include "model/spec.h"
#include "model/train.h"
#include "proto/codec.h"
#include "proto/json.h"
#include "transport/frame_conn.h"

typedef struct submit_check submit_check_t;

struct mp_session {
    mp_link_t link; /* first: the roles hold sessions as links */
    mpard_t *d;
    mp_conn_t *conn;
    bool is_unix;
    bool counted; /* in d->conn_open */
    bool has_uid; /* a Unix peer whose credentials were read */
    uid_t uid;
    bool can_mutate;
    bool peer_done; /* the JSON peer half-closed; end once its replies are out */
    submit_check_t *checks; /* submits waiting for their data check */
    mp_session_t *prev, *next;
};

/*
 * A submit is accepted only after what the file system tells is checked
 * (mp_train_check_data: data.path a file or folder, never a FIFO; a text
 * that holds a window in both splits, the IDX headers, the kjv program, the
 * batch against the training samples; the save_weights folder made and
 * writable): the check runs on the thread pool, since the loop does no
 * disk I/O, and the submit completes on the loop when it is done.  A
 * session that closes meanwhile only loses its pointer (s = NULL); the
 * check then ends without submitting, as the client never heard back.
 */
struct submit_check {
    uv_work_t req;
    mp_session_t *s;
    bool lines; /* answer as a status-socket JSON line */
    uint64_t rid;
    char *spec_json, *who, *save_weights, *resume_dir;
    mp_spec_t *spec;
    mp_status_t st;
    mp_errbuf_t err;
    submit_check_t *next;
};

static void session_unlink(mp_session_t *s)
{
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else if (s->d->sessions == s) {
        s->d->sessions = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    s->prev = s->next = NULL;
}

static void line_reply(mp_session_t *s, json_t *o);
static void line_error(mp_session_t *s, const char *msg, bool close);
static void submit_job(mp_session_t *s, bool lines, uint64_t rid, const char *spec_json,
                       const char *who, const char *save_weights, const char *resume_dir);

/* A status-socket (JSON) session gets a relayed reply as one JSON line. */
static mp_status_t send_as_json(mp_session_t *s, const Mpar__Envelope *env)
{
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_boolean(env->msg_case != MPAR__ENVELOPE__MSG_ERROR));
    switch (env->msg_case) {
    case MPAR__ENVELOPE__MSG_NODE_LIST:
    case MPAR__ENVELOPE__MSG_JOB_LIST: {
        bool nodes = env->msg_case == MPAR__ENVELOPE__MSG_NODE_LIST;
        json_t *l = mp_proto_to_json(nodes ? &env->node_list->base : &env->job_list->base);
        json_object_set(o, nodes ? "nodes" : "jobs", json_object_get(l, nodes ? "nodes" : "jobs"));
        json_decref(l);
        break;
    }
    case MPAR__ENVELOPE__MSG_JOB_REPLY:
        json_object_set_new(o, "job",
                            env->job_reply->job ? mp_proto_to_json(&env->job_reply->job->base)
                                                : json_null());
        break;
    case MPAR__ENVELOPE__MSG_JOB_ACCEPTED:
        json_object_set_new(o, "job",
                            env->job_accepted->job ? mp_proto_to_json(&env->job_accepted->job->base)
                                                   : json_null());
        break;
    case MPAR__ENVELOPE__MSG_WAIT_GRAPH:
        json_object_set_new(o, "waits", mp_proto_to_json(&env->wait_graph->base));
        break;
    case MPAR__ENVELOPE__MSG_ERROR:
        json_object_set_new(o, "error",
                            json_string(env->error->message ? env->error->message : ""));
        break;
    default:
        json_decref(o);
        return MP_OK; /* nothing a JSON request asked for */
    }
    line_reply(s, o);
    return MP_OK;
}

static mp_status_t session_send(mp_session_t *s, const Mpar__Envelope *env)
{
    if (mp_conn_is_lines(s->conn)) {
        mp_status_t st = send_as_json(s, env);
        if (s->peer_done && s->checks == NULL &&
            (s->d->agent == NULL || mp_agent_pending(s->d->agent, &s->link) == 0)) {
            mp_conn_end(s->conn, MP_CONN_EOF, "peer closed");
        }
        return st;
    }
    return mp_conn_send(s->conn, env);
}

static void session_close(mp_session_t *s, const char *why)
{
    mp_conn_close(s->conn, MP_CONN_LOCAL, why);
}

/* A session as the roles see it (link.h). */
static mp_status_t on_link_send(mp_link_t *l, const Mpar__Envelope *env)
{
    return session_send((mp_session_t *)l, env);
}

static void on_link_close(mp_link_t *l, const char *why)
{
    session_close((mp_session_t *)l, why);
}

static const mp_link_ops_t link_ops = {.send = on_link_send, .close = on_link_close};

void mp_session_close_all(mpard_t *d)
{
    for (mp_session_t *s = d->sessions; s != NULL; s = s->next) {
        mp_conn_end(s->conn, MP_CONN_LOCAL, "mpard is stopping");
    }
}

void mp_session_abort_all(mpard_t *d)
{
    for (mp_session_t *s = d->sessions; s != NULL; s = s->next) {
        mp_conn_close(s->conn, MP_CONN_LOCAL, "mpard is stopping");
    }
}

/* ---- framed requests ---------------------------------------------------- */

static void reply_error(mp_session_t *s, uint64_t rid, Mpar__ErrorCode code, const char *msg)
{
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__Error e = MPAR__ERROR__INIT;
    e.code = code;
    e.message = (char *)msg;
    env.request_id = rid;
    env.msg_case = MPAR__ENVELOPE__MSG_ERROR;
    env.error = &e;
    mp_conn_send(s->conn, &env);
}

static void reply_job(mp_session_t *s, uint64_t rid, Mpar__JobInfo *j)
{
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__JobReply jr = MPAR__JOB_REPLY__INIT;
    jr.job = j;
    env.request_id = rid;
    env.msg_case = MPAR__ENVELOPE__MSG_JOB_REPLY;
    env.job_reply = &jr;
    mp_conn_send(s->conn, &env);
}

static const char *peer_user(mp_session_t *s, const char *claimed, char *buf, size_t cap)
{
    uid_t uid;
    gid_t gid;
    pid_t pid;
    /* On the Unix socket the kernel says who it is; a claim is not trusted. */
    if (mp_conn_peer_cred(s->conn, &uid, &gid, &pid)) {
        snprintf(buf, cap, "uid %u", (unsigned)uid);
        if (claimed != NULL && claimed[0] != '\0') {
            snprintf(buf, cap, "%.64s (uid %u)", claimed, (unsigned)uid);
        }
        return buf;
    }
    snprintf(buf, cap, "%.64s@%.64s", claimed && claimed[0] ? claimed : "unknown",
             mp_conn_peer(s->conn));
    return buf;
}

static bool need_mutate(mp_session_t *s, uint64_t rid);

/* True when this mpard answers the request itself; a node passes it on to
 * its coordinator (mutating ones after its own permission check). */
static bool need_coord(mp_session_t *s, const Mpar__Envelope *in)
{
    uint64_t rid = in->request_id;
    if (s->d->coord != NULL) {
        return true;
    }
    if (s->d->agent != NULL) {
        bool mutating = in->msg_case == MPAR__ENVELOPE__MSG_SUBMIT_JOB ||
                        in->msg_case == MPAR__ENVELOPE__MSG_CANCEL_JOB;
        if (mutating && !need_mutate(s, rid)) {
            return false;
        }
        char who[200];
        mp_errbuf_t err;
        const char *claimed =
            in->msg_case == MPAR__ENVELOPE__MSG_SUBMIT_JOB   ? in->submit_job->submitter
            : in->msg_case == MPAR__ENVELOPE__MSG_CANCEL_JOB ? in->cancel_job->requester
                                                             : NULL;
        if (mp_agent_forward(s->d->agent, &s->link, in, peer_user(s, claimed, who, sizeof(who)),
                             &err) != MP_OK) {
            reply_error(s, rid, MPAR__ERROR_CODE__ERROR_CODE_NOT_COORDINATOR, err.msg);
        }
        return false;
    }
    char msg[300];
    snprintf(msg, sizeof(msg),
             "mpard '%s' is a node, not the coordinator: ask the coordinator (--connect %s "
             "--secret-file FILE)",
             s->d->cfg.name, s->d->cfg.join);
    reply_error(s, rid, MPAR__ERROR_CODE__ERROR_CODE_NOT_COORDINATOR, msg);
    return false;
}

static bool need_mutate(mp_session_t *s, uint64_t rid)
{
    if (s->can_mutate) {
        return true;
    }
    s->d->n.requests_denied++;
    reply_error(s, rid, MPAR__ERROR_CODE__ERROR_CODE_PERMISSION,
                s->is_unix ? "permission denied: only root and the mpard user may change jobs"
                           : "permission denied: without a cluster secret, TCP clients may only "
                             "read; use the Unix socket");
    return false;
}

static void on_request(mp_session_t *s, const Mpar__Envelope *in)
{
    mpard_t *d = s->d;
    uint64_t rid = in->request_id;
    mp_errbuf_t err;
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    env.request_id = rid;
    d->n.requests++;
    switch (in->msg_case) {
    case MPAR__ENVELOPE__MSG_LIST_NODES: {
        if (!need_coord(s, in)) {
            return;
        }
        Mpar__NodeList nl = MPAR__NODE_LIST__INIT;
        nl.nodes = mp_coord_nodes(d->coord, &nl.n_nodes);
        nl.epoch = mp_coord_epoch(d->coord);
        env.msg_case = MPAR__ENVELOPE__MSG_NODE_LIST;
        env.node_list = &nl;
        mp_conn_send(s->conn, &env);
        mp_free(nl.nodes);
        return;
    }
    case MPAR__ENVELOPE__MSG_LIST_JOBS: {
        if (!need_coord(s, in)) {
            return;
        }
        Mpar__JobList jl = MPAR__JOB_LIST__INIT;
        jl.jobs = mp_coord_jobs(d->coord, &jl.n_jobs);
        env.msg_case = MPAR__ENVELOPE__MSG_JOB_LIST;
        env.job_list = &jl;
        mp_conn_send(s->conn, &env);
        mp_free(jl.jobs);
        return;
    }
    case MPAR__ENVELOPE__MSG_GET_JOB: {
        if (!need_coord(s, in)) {
            return;
        }
        Mpar__JobInfo *j = mp_coord_job_find(d->coord, in->get_job->job_id);
        if (j == NULL) {
            snprintf(err.msg, sizeof(err.msg), "no job %s", in->get_job->job_id);
            reply_error(s, rid, MPAR__ERROR_CODE__ERROR_CODE_NOT_FOUND, err.msg);
            return;
        }
        reply_job(s, rid, j);
        return;
    }
    case MPAR__ENVELOPE__MSG_SUBMIT_JOB: {
        if (!need_coord(s, in) || !need_mutate(s, rid)) {
            return;
        }
        char who[200];
        submit_job(s, false, rid, in->submit_job->spec_json,
                   peer_user(s, in->submit_job->submitter, who, sizeof(who)),
                   in->submit_job->save_weights, in->submit_job->resume_dir);
        return;
    }
    case MPAR__ENVELOPE__MSG_CANCEL_JOB: {
        if (!need_coord(s, in) || !need_mutate(s, rid)) {
            return;
        }
        char who[200];
        Mpar__JobInfo *j;
        mp_status_t st = mp_coord_job_cancel(
            d->coord, in->cancel_job->job_id,
            peer_user(s, in->cancel_job->requester, who, sizeof(who)), &j, &err);
        if (st != MP_OK) {
            reply_error(s, rid,
                        st == MP_ERR_NOTFOUND ? MPAR__ERROR_CODE__ERROR_CODE_NOT_FOUND
                                              : MPAR__ERROR_CODE__ERROR_CODE_STATE,
                        err.msg);
            return;
        }
        reply_job(s, rid, j);
        return;
    }
    case MPAR__ENVELOPE__MSG_GET_WAITS: {
        if (!need_coord(s, in)) {
            return;
        }
        Mpar__WaitGraph *g;
        if (mp_coord_waits(d->coord, in->get_waits->job_id, &g, &err) != MP_OK) {
            reply_error(s, rid, MPAR__ERROR_CODE__ERROR_CODE_NOT_FOUND, err.msg);
            return;
        }
        env.msg_case = MPAR__ENVELOPE__MSG_WAIT_GRAPH;
        env.wait_graph = g;
        mp_conn_send(s->conn, &env);
        mp_coord_waits_free(g);
        return;
    }
    case MPAR__ENVELOPE__MSG_WATCH_JOB: {
        if (!need_coord(s, in)) {
            return;
        }
        if (mp_coord_job_watch(d->coord, in->watch_job->job_id, in->watch_job->follow, &s->link,
                               rid, &err) != MP_OK) {
            reply_error(s, rid, MPAR__ERROR_CODE__ERROR_CODE_NOT_FOUND, err.msg);
        }
        return;
    }
    default:
        break;
    }
    /* Node messages: only from a connection that said it is a node. */
    bool is_node =
        mp_handshake_peer_role(mp_conn_handshake(s->conn)) == MPAR__PEER_ROLE__PEER_ROLE_NODE;
    if (is_node && d->coord != NULL) {
        switch (in->msg_case) {
        case MPAR__ENVELOPE__MSG_REGISTER_NODE: {
            mp_coord_node_t *n;
            if (mp_coord_node_register(d->coord, &s->link, in->register_node, mp_conn_peer(s->conn),
                                       &n, &err) != MP_OK) {
                mp_conn_fail(s->conn, MPAR__ERROR_CODE__ERROR_CODE_PROTOCOL, MP_CONN_PROTO,
                             err.msg);
                return;
            }
            s->link.node = n;
            Mpar__NodeRegistered nr = MPAR__NODE_REGISTERED__INIT;
            nr.epoch = mp_coord_epoch(d->coord);
            nr.heartbeat_ms = d->cfg.heartbeat_ms;
            nr.dead_after_ms = d->cfg.dead_after_ms;
            env.msg_case = MPAR__ENVELOPE__MSG_NODE_REGISTERED;
            env.node_registered = &nr;
            mp_conn_send(s->conn, &env);
            return;
        }
        case MPAR__ENVELOPE__MSG_HEARTBEAT:
            if (s->link.node != NULL) {
                mp_coord_node_heartbeat(d->coord, s->link.node, in->heartbeat);
                return;
            }
            break;
        case MPAR__ENVELOPE__MSG_SHARD_READY:
            if (s->link.node != NULL) {
                mp_coord_shard_ready(d->coord, s->link.node, in->shard_ready);
                return;
            }
            break;
        case MPAR__ENVELOPE__MSG_SHARD_REPORT:
            if (s->link.node != NULL) {
                mp_coord_shard_report(d->coord, s->link.node, in->shard_report);
                return;
            }
            break;
        case MPAR__ENVELOPE__MSG_GOODBYE:
            if (s->link.node != NULL) {
                mp_coord_node_goodbye(d->coord, s->link.node, in->goodbye->reason);
                mp_coord_node_t *n = s->link.node;
                s->link.node = NULL;
                mp_coord_node_disconnected(d->coord, n, &s->link);
                mp_conn_end(s->conn, MP_CONN_EOF, "node said goodbye");
                return;
            }
            break;
        default:
            break;
        }
    }
    char msg[160];
    snprintf(msg, sizeof(msg), "unexpected %s from %s", mp_frame_msg_name(in->msg_case),
             is_node ? (s->link.node ? "a registered node" : "an unregistered node") : "a client");
    mp_conn_fail(s->conn, MPAR__ERROR_CODE__ERROR_CODE_PROTOCOL, MP_CONN_PROTO, msg);
}

/* ---- the status socket's JSON ------------------------------------------- */

/*
 * {"cmd":"status"} is what monitoring polls: its reply is written straight
 * into a buffer, not built as a jansson tree and dumped, and without printf
 * but for the one real number (a third of the instructions per request).
 * The text is the same JSON object.
 */
typedef struct {
    char *p;
    size_t left;
    bool full;
} sbuf_t;

static void sb_mem(sbuf_t *b, const char *s, size_t n)
{
    if (b->full || n >= b->left) {
        b->full = true;
        return;
    }
    memcpy(b->p, s, n);
    b->p += n;
    b->left -= n;
    *b->p = '\0';
}

static void sb_lit(sbuf_t *b, const char *s)
{
    sb_mem(b, s, strlen(s));
}

static void sb_u64(sbuf_t *b, uint64_t v)
{
    char tmp[24];
    size_t n = sizeof(tmp);
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    sb_mem(b, tmp + n, sizeof(tmp) - n);
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void sb_str(sbuf_t *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    sb_mem(b, "\"", 1);
    for (const char *run = s;; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch != '\0' && ch != '"' && ch != '\\' && ch >= 0x20) {
            continue;
        }
        sb_mem(b, run, (size_t)(s - run));
        if (ch == '\0') {
            break;
        }
        char esc[6] = {'\\', (char)ch};
        if (ch < 0x20) {
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[ch >> 4];
            esc[5] = hex[ch & 15];
        }
        sb_mem(b, esc, ch < 0x20 ? 6 : 2);
        run = s + 1;
    }
    sb_mem(b, "\"", 1);
}

/* The short names of the node and job states, made once. */
static const char *state_name(bool node, int i)
{
    static const char *names[2][6];
    if (names[node][i] == NULL) {
        names[node][i] = mp_proto_enum_short(
            node ? &mpar__node_state__descriptor : &mpar__job_state__descriptor, i);
    }
    return names[node][i];
}

/* The status reply with its newline; its length, or 0 when cap is too small. */
static size_t status_line(mpard_t *d, char *buf, size_t cap)
{
    sbuf_t b = {buf, cap, false};
    char up[32];
    snprintf(up, sizeof(up), "%.3f", (double)(mpard_now_ms() - d->start_unix_ms) / 1000.0);
    sb_lit(&b, "{\"ok\":true,\"name\":");
    sb_str(&b, d->cfg.name);
    sb_lit(&b, ",\"version\":");
    sb_str(&b, MP_VERSION);
    sb_lit(&b, ",\"pid\":");
    sb_u64(&b, (uint64_t)d->pid);
    sb_lit(&b, ",\"uptime_s\":");
    sb_lit(&b, up);
    sb_lit(&b, d->coord != NULL && d->agent != NULL ? ",\"roles\":[\"coordinator\",\"node\"]"
               : d->coord != NULL                    ? ",\"roles\":[\"coordinator\"]"
               : d->agent != NULL                    ? ",\"roles\":[\"node\"]"
                                                     : ",\"roles\":[]");
    sb_lit(&b, d->ready_sent ? ",\"ready\":true,\"devices\":" : ",\"ready\":false,\"devices\":");
    sb_u64(&b, (uint64_t)d->ndevices);
    sb_lit(&b, ",\"connections\":");
    sb_u64(&b, mp_conn_stats()->open);
    if (d->agent != NULL) {
        sb_lit(&b, ",\"node_state\":");
        sb_str(&b, mp_agent_state(d->agent));
        sb_lit(&b, ",\"coordinator_address\":");
        sb_str(&b, d->cfg.join[0] ? d->cfg.join : d->tcp_bound);
    }
    if (d->coord != NULL) {
        int ns[5], js[6];
        mp_coord_counts(d->coord, ns, js);
        sb_lit(&b, ",\"epoch\":");
        sb_u64(&b, mp_coord_epoch(d->coord));
        sb_lit(&b, ",\"listen\":");
        sb_str(&b, d->tcp_bound);
        sb_lit(&b, ",\"nodes\":{");
        for (int i = 1; i < 5; i++) {
            sb_lit(&b, i > 1 ? ",\"" : "\"");
            sb_lit(&b, state_name(true, i));
            sb_lit(&b, "\":");
            sb_u64(&b, (uint64_t)ns[i]);
        }
        sb_lit(&b, "},\"jobs\":{");
        for (int i = 1; i < 6; i++) {
            sb_lit(&b, i > 1 ? ",\"" : "\"");
            sb_lit(&b, state_name(false, i));
            sb_lit(&b, "\":");
            sb_u64(&b, (uint64_t)js[i]);
        }
        sb_lit(&b, "}");
    }
    sb_lit(&b, "}\n");
    return b.full ? 0 : cap - b.left;
}

static void status_reply(mp_session_t *s)
{
    char buf[2048];
    size_t n = status_line(s->d, buf, sizeof(buf));
    if (n == 0) {
        line_error(s, "status reply too long", false);
        return;
    }
    mp_conn_send_raw(s->conn, buf, n);
}

static void line_reply(mp_session_t *s, json_t *o)
{
    /* Most replies fit a stack buffer: dumped there, and sent from there. */
    char small[8192];
    size_t flags = JSON_COMPACT | JSON_REAL_PRECISION(12);
    size_t n = json_dumpb(o, small, sizeof(small) - 1, flags);
    if (n > 0 && n < sizeof(small) - 1) {
        json_decref(o);
        small[n] = '\n';
        mp_conn_send_raw(s->conn, small, n + 1);
        return;
    }
    char *text = json_dumps(o, flags);
    json_decref(o);
    n = text ? strlen(text) : 0;
    char *line = text ? realloc(text, n + 1) : NULL; /* jansson allocates with malloc */
    if (line == NULL) {
        free(text);
        mp_conn_close(s->conn, MP_CONN_LOCAL, "out of memory");
        return;
    }
    line[n] = '\n'; /* replaces the NUL: the line goes out by length */
    mp_conn_send_raw(s->conn, line, n + 1);
    free(line);
}

static void line_error(mp_session_t *s, const char *msg, bool close)
{
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_false());
    json_object_set_new(o, "error", json_string(msg));
    s->d->n.status_errors++;
    line_reply(s, o);
    if (close) {
        mp_conn_end(s->conn, MP_CONN_PROTO, msg);
    }
}

/* The JSON peer may change jobs; if not, it is told so. */
static bool line_need_mutate(mp_session_t *s)
{
    if (s->can_mutate) {
        return true;
    }
    s->d->n.requests_denied++;
    line_error(s, "permission denied: only root and the mpard user may change jobs", false);
    return false;
}

/* The job spec of a "submit" as text ("spec": an object, or a string);
 * NULL when it has none.  Freed with free(). */
static char *line_spec_text(json_t *req)
{
    json_t *spec = json_object_get(req, "spec");
    return json_is_string(spec)   ? strdup(json_string_value(spec))
           : json_is_object(spec) ? json_dumps(spec, JSON_COMPACT)
                                  : NULL;
}

static json_t *job_json(const Mpar__JobInfo *j)
{
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "job", mp_proto_to_json(&j->base));
    return o;
}

static json_t *list_json(const char *key, ProtobufCMessage **items, size_t n)
{
    json_t *o = json_object(), *a = json_array();
    json_object_set_new(o, "ok", json_true());
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(a, mp_proto_to_json(items[i]));
    }
    json_object_set_new(o, key, a);
    return o;
}

/* On a node: the cluster's JSON commands go to the coordinator as framed
 * requests; the replies come back through the link (session_send) as JSON lines. */
static void line_forward(mp_session_t *s, json_t *req, const char *cmd, const char *id)
{
    mpard_t *d = s->d;
    mp_errbuf_t err;
    char who[200];
    if (d->agent == NULL) {
        char msg[300];
        snprintf(msg, sizeof(msg), "mpard '%s' is not the coordinator and has no node role",
                 d->cfg.name);
        line_error(s, msg, false);
        return;
    }
    bool mutating = !strcmp(cmd, "submit") || !strcmp(cmd, "cancel");
    if (mutating && !line_need_mutate(s)) {
        return;
    }
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__ListNodes ln = MPAR__LIST_NODES__INIT;
    Mpar__ListJobs lj = MPAR__LIST_JOBS__INIT;
    Mpar__GetJob gj = MPAR__GET_JOB__INIT;
    Mpar__GetWaits gw = MPAR__GET_WAITS__INIT;
    Mpar__CancelJob cj = MPAR__CANCEL_JOB__INIT;
    Mpar__SubmitJob sj = MPAR__SUBMIT_JOB__INIT;
    char *text = NULL;
    if (!strcmp(cmd, "nodes")) {
        env.msg_case = MPAR__ENVELOPE__MSG_LIST_NODES;
        env.list_nodes = &ln;
    } else if (!strcmp(cmd, "jobs")) {
        env.msg_case = MPAR__ENVELOPE__MSG_LIST_JOBS;
        env.list_jobs = &lj;
    } else if (!strcmp(cmd, "submit")) {
        text = line_spec_text(req);
        if (text == NULL) {
            line_error(s, "\"submit\" needs \"spec\" (the job spec, an object)", false);
            return;
        }
        sj.spec_json = text;
        sj.save_weights = (char *)json_string_value(json_object_get(req, "save_weights"));
        if (sj.save_weights == NULL) {
            sj.save_weights = "";
        }
        sj.resume_dir = (char *)json_string_value(json_object_get(req, "resume_dir"));
        if (sj.resume_dir == NULL) {
            sj.resume_dir = "";
        }
        env.msg_case = MPAR__ENVELOPE__MSG_SUBMIT_JOB;
        env.submit_job = &sj;
    } else if (id == NULL) {
        line_error(s, "this command needs \"id\"", false);
        return;
    } else if (!strcmp(cmd, "job")) {
        gj.job_id = (char *)id;
        env.msg_case = MPAR__ENVELOPE__MSG_GET_JOB;
        env.get_job = &gj;
    } else if (!strcmp(cmd, "waits")) {
        gw.job_id = (char *)id;
        env.msg_case = MPAR__ENVELOPE__MSG_GET_WAITS;
        env.get_waits = &gw;
    } else {
        cj.job_id = (char *)id;
        env.msg_case = MPAR__ENVELOPE__MSG_CANCEL_JOB;
        env.cancel_job = &cj;
    }
    if (mp_agent_forward(d->agent, &s->link, &env, peer_user(s, NULL, who, sizeof(who)), &err) !=
        MP_OK) {
        line_error(s, err.msg, false);
    }
    free(text);
}

/* ---- submitting ----------------------------------------------------------- */

/* Submits to the coordinator now and answers (a framed JobAccepted or
 * Error, or a JSON line). */
static void submit_now(mp_session_t *s, bool lines, uint64_t rid, const char *spec_json,
                       const char *who, const char *save_weights, const char *resume_dir)
{
    Mpar__JobInfo *j;
    mp_errbuf_t err;
    mp_status_t st = mp_coord_job_submit(s->d->coord, spec_json, strlen(spec_json), who,
                                         save_weights, resume_dir, &j, &err);
    if (lines) {
        if (st != MP_OK) {
            line_error(s, err.msg, false);
        } else {
            line_reply(s, job_json(j));
        }
        return;
    }
    if (st != MP_OK) {
        reply_error(s, rid,
                    st == MP_ERR_SPEC ? MPAR__ERROR_CODE__ERROR_CODE_INVALID_SPEC
                                      : MPAR__ERROR_CODE__ERROR_CODE_INTERNAL,
                    err.msg);
        return;
    }
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__JobAccepted ja = MPAR__JOB_ACCEPTED__INIT;
    env.request_id = rid;
    ja.job = j;
    env.msg_case = MPAR__ENVELOPE__MSG_JOB_ACCEPTED;
    env.job_accepted = &ja;
    mp_conn_send(s->conn, &env);
}

static void check_free(submit_check_t *c)
{
    mp_spec_free(c->spec);
    mp_free(c->spec_json);
    mp_free(c->who);
    mp_free(c->save_weights);
    mp_free(c->resume_dir);
    mp_free(c);
}

/* Thread pool: the data checks that read the file system. */
static void check_work(uv_work_t *req)
{
    submit_check_t *c = req->data;
    c->st = mp_train_check_data(c->spec, &c->err);
    /* The weights' folder is made and proved writable now, not after the
     * training; a relative one is the coordinator's to refuse. */
    mp_errbuf_t why = {{0}};
    if (c->st == MP_OK && c->save_weights[0] == '/' &&
        mp_fs_dir_prepare(c->save_weights, &why) != MP_OK) {
        c->st = mp_errbuf_set(&c->err, MP_ERR_SPEC, "save_weights: %s", why.msg);
    }
}

static void check_after(uv_work_t *req, int status)
{
    submit_check_t *c = req->data;
    mp_session_t *s = c->s;
    if (s == NULL || status != 0) {
        mp_notice("a submit's data check ended after its client left: not submitted");
        check_free(c);
        return;
    }
    for (submit_check_t **pp = &s->checks; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    if (c->st != MP_OK) {
        s->d->n.jobs_refused++;
        if (c->lines) {
            line_error(s, c->err.msg, false);
        } else {
            reply_error(s, c->rid, MPAR__ERROR_CODE__ERROR_CODE_INVALID_SPEC, c->err.msg);
        }
    } else {
        submit_now(s, c->lines, c->rid, c->spec_json, c->who, c->save_weights, c->resume_dir);
    }
    check_free(c);
    if (s->peer_done && s->checks == NULL &&
        (s->d->agent == NULL || mp_agent_pending(s->d->agent, &s->link) == 0)) {
        mp_conn_end(s->conn, MP_CONN_EOF, "peer closed");
    }
}

/* A submit at the coordinator, after its checks on the thread pool.  A
 * spec that does not parse is submitted at once, which refuses it. */
static void submit_job(mp_session_t *s, bool lines, uint64_t rid, const char *spec_json,
                       const char *who, const char *save_weights, const char *resume_dir)
{
    mp_spec_t *spec = NULL;
    mp_errbuf_t err;
    if (mp_spec_parse(spec_json, strlen(spec_json), &spec, &err) != MP_OK) {
        mp_spec_free(spec);
        submit_now(s, lines, rid, spec_json, who, save_weights, resume_dir);
        return;
    }
    submit_check_t *c = mp_calloc(1, sizeof(*c));
    if (c != NULL) {
        c->spec_json = mp_strdup(spec_json);
        c->who = mp_strdup(who);
        c->save_weights = mp_strdup(save_weights ? save_weights : "");
        c->resume_dir = mp_strdup(resume_dir ? resume_dir : "");
    }
    if (c == NULL || c->spec_json == NULL || c->who == NULL || c->save_weights == NULL ||
        c->resume_dir == NULL) {
        mp_spec_free(spec);
        if (c != NULL) {
            check_free(c);
        }
        if (lines) {
            line_error(s, "out of memory", false);
        } else {
            reply_error(s, rid, MPAR__ERROR_CODE__ERROR_CODE_INTERNAL, "out of memory");
        }
        return;
    }
    c->s = s;
    c->lines = lines;
    c->rid = rid;
    c->spec = spec;
    c->req.data = c;
    int rc = uv_queue_work(s->d->loop, &c->req, check_work, check_after);
    if (rc != 0) {
        check_free(c);
        if (lines) {
            line_error(s, "cannot queue the data check", false);
        } else {
            reply_error(s, rid, MPAR__ERROR_CODE__ERROR_CODE_INTERNAL,
                        "cannot queue the data check");
        }
        return;
    }
    c->next = s->checks;
    s->checks = c;
}

static void on_line(mp_conn_t *conn, const char *line, size_t len, bool oversized, void *data)
{
    mp_session_t *s = data;
    mpard_t *d = s->d;
    if (oversized) {
        line_error(s, "request too long", true);
        return;
    }
    if (len == 0) {
        return; /* blank lines are ignored, as by any line protocol */
    }
    json_error_t jerr;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    if (req == NULL || !json_is_object(req) || cmd == NULL) {
        char msg[300];
        if (req == NULL) {
            snprintf(msg, sizeof(msg), "malformed request: %s (column %d)", jerr.text, jerr.column);
        } else {
            snprintf(msg, sizeof(msg), "malformed request: expected {\"cmd\": \"...\"}");
        }
        json_decref(req);
        line_error(s, msg, true);
        return;
    }
    d->n.status_requests++;
    mp_errbuf_t err;
    const char *id = json_string_value(json_object_get(req, "id"));
    if (!strcmp(cmd, "status")) {
        status_reply(s);
    } else if (!strcmp(cmd, "metrics")) {
        char *text = mp_metrics_render(d);
        json_t *o = json_object();
        json_object_set_new(o, "ok", json_true());
        json_object_set_new(o, "metrics", json_string(text ? text : ""));
        mp_free(text);
        line_reply(s, o);
    } else if (d->coord == NULL &&
               (!strcmp(cmd, "nodes") || !strcmp(cmd, "jobs") || !strcmp(cmd, "job") ||
                !strcmp(cmd, "waits") || !strcmp(cmd, "submit") || !strcmp(cmd, "cancel"))) {
        line_forward(s, req, cmd, id);
    } else if (!strcmp(cmd, "nodes")) {
        size_t n;
        Mpar__NodeInfo **v = mp_coord_nodes(d->coord, &n);
        line_reply(s, list_json("nodes", (ProtobufCMessage **)v, n));
        mp_free(v);
    } else if (!strcmp(cmd, "jobs")) {
        size_t n;
        Mpar__JobInfo **v = mp_coord_jobs(d->coord, &n);
        line_reply(s, list_json("jobs", (ProtobufCMessage **)v, n));
        mp_free(v);
    } else if (!strcmp(cmd, "job")) {
        Mpar__JobInfo *j = id ? mp_coord_job_find(d->coord, id) : NULL;
        if (j == NULL) {
            line_error(s, id ? "no such job" : "\"job\" needs \"id\"", false);
        } else {
            json_t *o = job_json(j);
            json_object_set_new(o, "events", mp_coord_job_events_json(d->coord, id));
            line_reply(s, o);
        }
    } else if (!strcmp(cmd, "waits")) {
        Mpar__WaitGraph *g;
        if (id == NULL) {
            line_error(s, "\"waits\" needs \"id\"", false);
        } else if (mp_coord_waits(d->coord, id, &g, &err) != MP_OK) {
            line_error(s, err.msg, false);
        } else {
            json_t *o = json_object();
            json_object_set_new(o, "ok", json_true());
            json_object_set_new(o, "waits", mp_proto_to_json(&g->base));
            mp_coord_waits_free(g);
            line_reply(s, o);
        }
    } else if ((!strcmp(cmd, "submit") || !strcmp(cmd, "cancel")) && !line_need_mutate(s)) {
        /* Refused; line_need_mutate said why. */
    } else if (!strcmp(cmd, "cancel")) {
        Mpar__JobInfo *j;
        char who[200];
        if (id == NULL) {
            line_error(s, "\"cancel\" needs \"id\"", false);
        } else if (mp_coord_job_cancel(d->coord, id, peer_user(s, NULL, who, sizeof(who)), &j,
                                       &err) != MP_OK) {
            line_error(s, err.msg, false);
        } else {
            line_reply(s, job_json(j));
        }
    } else if (!strcmp(cmd, "submit")) {
        char *text = line_spec_text(req);
        char who[200];
        if (text == NULL) {
            line_error(s, "\"submit\" needs \"spec\" (the job spec, an object)", false);
        } else {
            submit_job(s, true, 0, text, peer_user(s, NULL, who, sizeof(who)),
                       json_string_value(json_object_get(req, "save_weights")),
                       json_string_value(json_object_get(req, "resume_dir")));
        }
        free(text);
    } else {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "unknown cmd '%.64s' (status, nodes, jobs, job, waits, metrics, submit, cancel)",
                 cmd);
        line_error(s, msg, false);
    }
    json_decref(req);
}

/* ---- connection callbacks ----------------------------------------------- */

static void on_envelope(mp_conn_t *conn, const Mpar__Envelope *env, void *data)
{
    on_request(data, env);
}

static void on_ready(mp_conn_t *conn, void *data)
{
    mp_session_t *s = data;
    if (!mp_conn_is_lines(conn)) {
        const mp_handshake_t *hs = mp_conn_handshake(conn);
        mp_debug("%s: handshake done (%s '%s')", mp_conn_peer(conn),
                 mp_handshake_peer_role(hs) == MPAR__PEER_ROLE__PEER_ROLE_NODE ? "node" : "client",
                 mp_handshake_peer_name(hs));
        if (!s->is_unix) {
            s->can_mutate = s->d->secret != NULL;
        }
    }
}

static void on_eof(mp_conn_t *conn, void *data)
{
    mp_session_t *s = data;
    if ((s->d->agent != NULL && mp_agent_pending(s->d->agent, &s->link) > 0) ||
        s->checks != NULL) {
        s->peer_done = true; /* relayed or checked replies are still to come */
        return;
    }
    mp_conn_end(conn, MP_CONN_EOF, "peer closed");
}

static void on_close(mp_conn_t *conn, mp_conn_reason_t reason, const char *why, void *data)
{
    mp_session_t *s = data;
    if (s == NULL) {
        return;
    }
    if (s->d->coord != NULL) {
        if (s->link.node != NULL) {
            mp_coord_node_disconnected(s->d->coord, s->link.node, &s->link);
        }
        mp_coord_link_closed(s->d->coord, &s->link);
    }
    if (s->d->agent != NULL) {
        mp_agent_link_closed(s->d->agent, &s->link);
    }
    /* Checks still running finish without this session. */
    for (submit_check_t *c = s->checks; c != NULL; c = c->next) {
        c->s = NULL;
    }
    if (s->counted && s->d->conn_open[s->is_unix ? 0 : 1] > 0) {
        s->d->conn_open[s->is_unix ? 0 : 1]--;
    }
    session_unlink(s);
    mp_free(s);
}

/* Logs of refused and failed accepts: at most one a second, with the count. */
#define ACCEPT_LOG_EVERY_MS 1000

static void on_refused_closed(uv_handle_t *h)
{
    mp_free(h);
}

/* A listener at its cap: the connection is taken off the backlog (libuv
 * stops polling a listener whose connection is not accepted) and closed. */
static void session_refuse(mpard_t *d, uv_stream_t *server)
{
    int li = server->type == UV_NAMED_PIPE ? 0 : 1;
    union {
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } *h = mp_calloc(1, sizeof(*h));
    if (h == NULL) {
        return;
    }
    if (li == 0) {
        uv_pipe_init(d->loop, &h->pipe, 0);
    } else {
        uv_tcp_init(d->loop, &h->tcp);
    }
    uv_accept(server, (uv_stream_t *)h);
    uv_close((uv_handle_t *)h, on_refused_closed);
    d->n.conn_refused[li]++;
    uint64_t now = uv_now(d->loop);
    if (d->refuse_logged_ms == 0 || now - d->refuse_logged_ms >= ACCEPT_LOG_EVERY_MS) {
        d->refuse_logged_ms = now;
        mp_warn("%s listener at its cap of %u connections: refusing new ones (%llu refused so "
                "far); idle readers are closed after %llu ms",
                li == 0 ? "Unix socket" : "TCP", d->conn_cap,
                (unsigned long long)d->n.conn_refused[li],
                (unsigned long long)d->cfg.dead_after_ms * MP_SESSION_IDLE_FACTOR);
    }
}

/* The share of the Unix socket's cap that one user who may not change jobs
 * holds (at least MP_SESSION_UID_MIN): a reader flooding the socket fills
 * its own share, not the socket, and root and mpard's user still get in. */
#define MP_SESSION_UID_SHARE 8
#define MP_SESSION_UID_MIN 8

static bool uid_over_share(mpard_t *d, mp_session_t *s)
{
    uint32_t share = d->conn_cap / MP_SESSION_UID_SHARE;
    share = share < MP_SESSION_UID_MIN ? MP_SESSION_UID_MIN : share;
    uint32_t held = 0;
    for (mp_session_t *o = d->sessions; o != NULL; o = o->next) {
        held += o->is_unix && o->has_uid && o->uid == s->uid;
    }
    if (!s->has_uid || held < share) {
        return false;
    }
    d->n.conn_refused[0]++;
    uint64_t now = uv_now(d->loop);
    if (d->refuse_logged_ms == 0 || now - d->refuse_logged_ms >= ACCEPT_LOG_EVERY_MS) {
        d->refuse_logged_ms = now;
        mp_warn("uid %u holds %u status-socket connections, its share of the cap of %u: "
                "refusing more from it (%llu refused so far)",
                (unsigned)s->uid, held, d->conn_cap, (unsigned long long)d->n.conn_refused[0]);
    }
    mp_conn_close(s->conn, MP_CONN_LOCAL, "over its user's share of the status socket");
    return true;
}

void mp_session_on_accept(uv_stream_t *server, int status)
{
    mpard_t *d = server->data;
    if (status < 0) {
        /* libuv has already drained the backlog (its EMFILE reserve fd),
         * so this does not spin; say so once a second, not per connection. */
        d->n.accept_errors++;
        uint64_t now = uv_now(d->loop);
        if (d->accept_err_logged_ms == 0 || now - d->accept_err_logged_ms >= ACCEPT_LOG_EVERY_MS) {
            d->accept_err_logged_ms = now;
            mp_warn("accept: %s (%llu accept errors so far; raise LimitNOFILE?)",
                    uv_strerror(status), (unsigned long long)d->n.accept_errors);
        }
        return;
    }
    int li = server->type == UV_NAMED_PIPE ? 0 : 1;
    if (d->conn_cap > 0 && d->conn_open[li] >= d->conn_cap) {
        session_refuse(d, server);
        return;
    }
    mp_session_t *s = mp_calloc(1, sizeof(*s));
    if (s == NULL) {
        mp_err("accept: out of memory");
        return;
    }
    s->link.ops = &link_ops;
    s->d = d;
    s->is_unix = server->type == UV_NAMED_PIPE;
    mp_conn_params_t p = {
        .hs = {.side = MP_AUTH_SIDE_SERVER,
               .secret = s->is_unix ? NULL : d->secret,
               .epoch = d->coord ? mp_coord_epoch(d->coord) : 0,
               .name = d->cfg.name,
               .coordinator = d->coord != NULL},
        .stall_ms = d->cfg.dead_after_ms,
        .handshake_ms = d->cfg.dead_after_ms,
        .sniff_lines = s->is_unix,
        .idle_ms = (uint64_t)d->cfg.dead_after_ms * MP_SESSION_IDLE_FACTOR,
    };
    static const mp_conn_cbs_t cbs = {.on_envelope = on_envelope,
                                      .on_ready = on_ready,
                                      .on_line = on_line,
                                      .on_eof = on_eof,
                                      .on_close = on_close};
    mp_conn_t *conn;
    /* accept failures close the half-made connection, which frees s. */
    if (mp_conn_accept(server, &p, &cbs, s, &conn) != MP_OK) {
        return;
    }
    s->conn = conn;
    s->counted = true;
    d->conn_open[li]++;
    if (s->is_unix) {
        gid_t gid;
        pid_t pid;
        s->has_uid = mp_conn_peer_cred(conn, &s->uid, &gid, &pid);
        s->can_mutate = s->has_uid && (s->uid == 0 || s->uid == geteuid());
        if (!s->can_mutate && uid_over_share(d, s)) {
            return; /* closed: its on_close frees s */
        }
    }
    s->next = d->sessions;
    if (d->sessions != NULL) {
        d->sessions->prev = s;
    }
    d->sessions = s;
}
