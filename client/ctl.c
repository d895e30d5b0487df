/*
 * ctl.c - mpar-client's cluster commands (see ctl.h): connects to mpard,
 * runs the client side of the handshake (transport/auth.h), sends one
 * request and prints the reply as a table or as JSON.  `-f` keeps reading the
 * job's events until the job ends.  Owns one socket.  Single-threaded,
 * blocking I/O with a reply timeout (none while following).
 */
#include "client/ctl.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client/client.h"
#include "common/alloc.h"
#include "proto/codec.h"
#include "proto/json.h"
#include "transport/auth.h"

#define DEFAULT_SOCKET "/run/mpar/mpard.sock"
#define REPLY_TIMEOUT_MS 30000

typedef struct {
    const char *socket_path;
    const char *connect;
    const char *secret_file;
    bool json;
    bool follow;
    const char *save_weights; /* submit --save-weights DIR */
    const char *resume;       /* submit --resume CKPT_DIR */
    int fd;
    uint64_t next_rid;
    char where[300];
} ctl_t;

static const char *user_name(void)
{
    struct passwd *pw = getpwuid(getuid());
    return pw != NULL ? pw->pw_name : "unknown";
}

/* One command's synopsis and what it does; --help prints it. */
typedef struct {
    const char *name;
    int nargs; /* positional arguments: none, or a JOB id / JOB.json */
    const char *synopsis;
    const char *what;
} ctl_cmd_t;

static const ctl_cmd_t ctl_cmds[] = {
    {"nodes", 0, "nodes", "the cluster's nodes: name, state, devices, address, last heartbeat"},
    {"jobs", 0, "jobs", "the job queue: every job's id, name, state, grid and reason"},
    {"submit", 1, "submit JOB.json [-f] [--save-weights DIR] [--resume CKPT_DIR]",
     "validate and queue a job (-f: follow it to its end, progress on stderr; DIR: where\n"
     "the coordinator writes the trained weights as <layer>.<param>.npy, made and checked\n"
     "at submit; CKPT_DIR: continue from the checkpoint its latest names, on any grid)"},
    {"status", 1, "status JOB",
     "one job's state, grid, placement and results (a running one's live step, loss and\n"
     "samples/s)"},
    {"waits", 1, "waits JOB",
     "a running job's wait-for graph: what each shard does, what it waits for from whom\n"
     "and since when, and the shards at its root that hold the job up"},
    {"logs", 1, "logs JOB [-f]", "a job's events (-f: until it ends)"},
    {"cancel", 1, "cancel JOB", "cancel a job"},
};

static const ctl_cmd_t *ctl_cmd_find(const char *name)
{
    for (size_t i = 0; i < sizeof(ctl_cmds) / sizeof(ctl_cmds[0]); i++) {
        if (strcmp(ctl_cmds[i].name, name) == 0) {
            return &ctl_cmds[i];
        }
    }
    return NULL;
}

/* cmd NULL: every command. */
static void ctl_usage(FILE *f, const ctl_cmd_t *cmd)
{
    if (cmd != NULL) {
        fprintf(f, "usage: mpar-client %s [options]\n%s\n", cmd->synopsis, cmd->what);
    } else {
        fprintf(f, "usage: mpar-client COMMAND [options]\n");
        for (size_t i = 0; i < sizeof(ctl_cmds) / sizeof(ctl_cmds[0]); i++) {
            fprintf(f, "  %s\n", ctl_cmds[i].synopsis);
        }
    }
    fprintf(f,
            "options (before or after the command):\n"
            "  --socket PATH           mpard's Unix socket (default %s, or $MPAR_SOCKET)\n"
            "  --connect HOST:PORT     a coordinator over TCP instead\n"
            "  --secret-file FILE      the cluster secret for --connect\n"
            "  -o json|table           print one JSON document\n"
            "exit codes: 0 ok, 1 the job failed or no such job, 2 usage or invalid spec,\n"
            "            3 daemon unreachable, 4 authentication or permission refused\n",
            DEFAULT_SOCKET);
}

/* ---- connection ---------------------------------------------------------- */

static int ctl_connect(ctl_t *c)
{
    if (c->connect != NULL) {
        char host[256];
        const char *colon = strrchr(c->connect, ':');
        if (colon == NULL || colon == c->connect || (size_t)(colon - c->connect) >= sizeof(host)) {
            fprintf(stderr, "mpar-client: --connect expects HOST:PORT, not '%s'\n", c->connect);
            return MP_EXIT_USAGE;
        }
        memcpy(host, c->connect, (size_t)(colon - c->connect));
        host[colon - c->connect] = '\0';
        if (host[0] == '[' && host[strlen(host) - 1] == ']') {
            memmove(host, host + 1, strlen(host));
            host[strlen(host) - 1] = '\0';
        }
        snprintf(c->where, sizeof(c->where), "%s", c->connect);
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
        int rc = getaddrinfo(host, colon + 1, &hints, &res);
        if (rc != 0) {
            fprintf(stderr, "mpar-client: cannot resolve %s: %s\n", c->connect, gai_strerror(rc));
            return MP_EXIT_UNREACHABLE;
        }
        int err = 0;
        for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
            int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd < 0) {
                err = errno;
                continue;
            }
            if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                c->fd = fd;
                break;
            }
            err = errno;
            close(fd);
        }
        freeaddrinfo(res);
        if (c->fd < 0) {
            fprintf(stderr,
                    "mpar-client: cannot connect to %s (%s): is the coordinator's mpard "
                    "running and listening there?\n",
                    c->connect, strerror(err));
            return MP_EXIT_UNREACHABLE;
        }
        return MP_EXIT_OK;
    }
    const char *path = c->socket_path;
    if (path == NULL) {
        path = getenv("MPAR_SOCKET");
    }
    if (path == NULL || path[0] == '\0') {
        path = DEFAULT_SOCKET;
    }
    snprintf(c->where, sizeof(c->where), "%s", path);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "mpar-client: socket path too long: %s\n", path);
        return MP_EXIT_USAGE;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
        }
        if (e == EACCES || e == EPERM) {
            /* mpard may well be running: the socket (or its folder) is not
             * open to this user. */
            fprintf(stderr,
                    "mpar-client: permission denied on %s: user %s may not open mpard's socket; "
                    "members of the socket's group may (usermod -aG mpar %s, then log in "
                    "again), or run as root\n",
                    path, user_name(), user_name());
            return MP_EXIT_AUTH;
        }
        fprintf(stderr,
                "mpar-client: cannot connect to %s (%s): is mpard running? try: systemctl "
                "status mpard\n",
                path, strerror(e));
        return MP_EXIT_UNREACHABLE;
    }
    c->fd = fd;
    return MP_EXIT_OK;
}

static int write_all(int fd, const uint8_t *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Reads exactly len bytes; timeout_ms < 0 waits forever.  0, or -1 with errno. */
static int read_all(int fd, uint8_t *buf, size_t len, int timeout_ms)
{
    while (len > 0) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, timeout_ms);
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        ssize_t r = read(fd, buf, len);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            if (r == 0) {
                errno = ECONNRESET;
            }
            return -1;
        }
        buf += r;
        len -= (size_t)r;
    }
    return 0;
}

static int ctl_send(ctl_t *c, Mpar__Envelope *env)
{
    uint8_t *buf;
    size_t len;
    mp_status_t st = mp_frame_pack(env, MP_FRAME_MAX_DEFAULT, &buf, &len);
    if (st != MP_OK) {
        fprintf(stderr, "mpar-client: cannot encode the request: %s\n", mp_strerror(st));
        return st == MP_ERR_TOOBIG ? MP_EXIT_USAGE : MP_EXIT_FAILED;
    }
    int rc = write_all(c->fd, buf, len);
    mp_free(buf);
    if (rc != 0) {
        fprintf(stderr, "mpar-client: lost the connection to %s: %s\n", c->where, strerror(errno));
        return MP_EXIT_UNREACHABLE;
    }
    return MP_EXIT_OK;
}

static int ctl_recv(ctl_t *c, int timeout_ms, Mpar__Envelope **env_p)
{
    uint8_t hdr[4];
    if (read_all(c->fd, hdr, 4, timeout_ms) != 0) {
        fprintf(stderr, "mpar-client: no reply from %s: %s\n", c->where, strerror(errno));
        return MP_EXIT_UNREACHABLE;
    }
    uint32_t n =
        ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) | ((uint32_t)hdr[2] << 8) | hdr[3];
    if (n == 0 || n > MP_FRAME_MAX_DEFAULT) {
        fprintf(stderr, "mpar-client: %s sent a frame of %u bytes; is it mpard?\n", c->where, n);
        return MP_EXIT_UNREACHABLE;
    }
    uint8_t *body = mp_malloc(n);
    if (body == NULL) {
        return MP_EXIT_FAILED;
    }
    if (read_all(c->fd, body, n, timeout_ms) != 0) {
        fprintf(stderr, "mpar-client: truncated reply from %s: %s\n", c->where, strerror(errno));
        mp_free(body);
        return MP_EXIT_UNREACHABLE;
    }
    mp_errbuf_t err;
    mp_status_t st = mp_frame_unpack(body, n, env_p, &err);
    mp_free(body);
    if (st != MP_OK) {
        fprintf(stderr, "mpar-client: bad reply from %s: %s\n", c->where, err.msg);
        return MP_EXIT_UNREACHABLE;
    }
    return MP_EXIT_OK;
}

static int ctl_handshake(ctl_t *c)
{
    mp_auth_secret_t *secret = NULL;
    mp_errbuf_t err;
    if (c->secret_file != NULL && mp_auth_secret_load(c->secret_file, &secret, &err) != MP_OK) {
        fprintf(stderr, "mpar-client: %s\n", err.msg);
        return MP_EXIT_AUTH;
    }
    mp_handshake_params_t p = {.side = MP_AUTH_SIDE_CLIENT,
                               .secret = secret,
                               .name = user_name(),
                               .role = MPAR__PEER_ROLE__PEER_ROLE_CLIENT};
    mp_handshake_t *hs;
    if (mp_handshake_create(&p, &hs) != MP_OK) {
        mp_auth_secret_free(secret);
        return MP_EXIT_FAILED;
    }
    mp_handshake_out_t out;
    int rc = mp_handshake_start(hs, &out) == MP_OK ? ctl_send(c, &out.env) : MP_EXIT_FAILED;
    while (rc == MP_EXIT_OK && !mp_handshake_done(hs)) {
        Mpar__Envelope *in;
        rc = ctl_recv(c, REPLY_TIMEOUT_MS, &in);
        if (rc != MP_EXIT_OK) {
            break;
        }
        mp_status_t st = mp_handshake_on_envelope(hs, in, &out, &err);
        mp_frame_envelope_free(in);
        if (st != MP_OK) {
            fprintf(stderr, "mpar-client: %s: %s\n", c->where, err.msg);
            rc = st == MP_ERR_AUTH ? MP_EXIT_AUTH : MP_EXIT_UNREACHABLE;
            break;
        }
        if (out.has_msg) {
            rc = ctl_send(c, &out.env);
        }
    }
    mp_handshake_destroy(hs);
    mp_auth_secret_free(secret);
    return rc;
}

/* Sends a request and waits for its reply; an Error reply is printed and
 * turned into the exit code. */
static int ctl_call(ctl_t *c, Mpar__Envelope *req, Mpar__Envelope **reply_p)
{
    req->request_id = ++c->next_rid;
    int rc = ctl_send(c, req);
    while (rc == MP_EXIT_OK) {
        Mpar__Envelope *in;
        rc = ctl_recv(c, REPLY_TIMEOUT_MS, &in);
        if (rc != MP_EXIT_OK) {
            break;
        }
        if (in->request_id != req->request_id && in->msg_case != MPAR__ENVELOPE__MSG_ERROR) {
            mp_frame_envelope_free(in);
            continue;
        }
        if (in->msg_case == MPAR__ENVELOPE__MSG_ERROR) {
            const char *m = in->error->message ? in->error->message : "";
            switch (in->error->code) {
            case MPAR__ERROR_CODE__ERROR_CODE_INVALID_SPEC:
                fprintf(stderr, "mpar-client: invalid job spec: %s\n", m);
                rc = MP_EXIT_USAGE;
                break;
            case MPAR__ERROR_CODE__ERROR_CODE_AUTH:
            case MPAR__ERROR_CODE__ERROR_CODE_PERMISSION:
                fprintf(stderr, "mpar-client: %s\n", m);
                rc = MP_EXIT_AUTH;
                break;
            case MPAR__ERROR_CODE__ERROR_CODE_NOT_COORDINATOR:
            case MPAR__ERROR_CODE__ERROR_CODE_VERSION:
                fprintf(stderr, "mpar-client: %s\n", m);
                rc = MP_EXIT_UNREACHABLE;
                break;
            default:
                fprintf(stderr, "mpar-client: %s\n", m);
                rc = MP_EXIT_FAILED;
                break;
            }
            mp_frame_envelope_free(in);
            return rc;
        }
        *reply_p = in;
        return MP_EXIT_OK;
    }
    return rc;
}

/* ---- output -------------------------------------------------------------- */

static void print_json(json_t *doc)
{
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_REAL_PRECISION(12));
    if (text != NULL) {
        printf("%s\n", text);
        free(text);
    }
    json_decref(doc);
}

static void fmt_time(uint64_t ms, char *buf, size_t cap)
{
    if (ms == 0) {
        snprintf(buf, cap, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

static void fmt_age(uint64_t ms, char *buf, size_t cap)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    if (ms == 0) {
        snprintf(buf, cap, "-");
    } else if (now <= ms) {
        snprintf(buf, cap, "now");
    } else if (now - ms < 10000) {
        snprintf(buf, cap, "%.1fs ago", (double)(now - ms) / 1000.0);
    } else if (now - ms < 3600000) {
        snprintf(buf, cap, "%llus ago", (unsigned long long)((now - ms) / 1000));
    } else {
        snprintf(buf, cap, "%lluh ago", (unsigned long long)((now - ms) / 3600000));
    }
}

static const char *node_state(Mpar__NodeState s)
{
    return mp_proto_enum_short(&mpar__node_state__descriptor, (int)s);
}

static const char *job_state(Mpar__JobState s)
{
    return mp_proto_enum_short(&mpar__job_state__descriptor, (int)s);
}

static void print_job(const Mpar__JobInfo *j)
{
    char t1[64], t2[64], t3[64];
    fmt_time(j->submitted_unix_ms, t1, sizeof(t1));
    fmt_time(j->started_unix_ms, t2, sizeof(t2));
    fmt_time(j->finished_unix_ms, t3, sizeof(t3));
    printf("job %s (%s)\n", j->id, j->name);
    printf("  state:       %s\n", job_state(j->state));
    printf("  reason:      %s\n", j->reason);
    printf("  submitter:   %s\n", j->submitter);
    printf("  grid:        pp %u x tp %u x dp %u (%u devices)\n", j->pp, j->tp, j->dp,
           j->devices_needed);
    printf("  submitted:   %s\n  started:     %s\n  finished:    %s\n", t1, t2, t3);
    bool running = j->state == MPAR__JOB_STATE__JOB_STATE_RUNNING;
    if (running && j->total_steps > 0) {
        printf("  step:        %llu of %llu\n", (unsigned long long)j->steps,
               (unsigned long long)j->total_steps);
    } else {
        printf("  steps:       %llu\n", (unsigned long long)j->steps);
    }
    if (j->has_final_loss) {
        printf("  %s  %.6f\n", running ? "loss:      " : "final loss:", j->final_loss);
    }
    if (j->has_test_accuracy) {
        printf("  test acc.:   %.4f\n", j->test_accuracy);
    }
    if (j->has_test_loss) {
        printf("  test loss:   %.6f\n", j->test_loss);
    }
    if (j->samples_per_s > 0) {
        printf("  samples/s:   %.1f\n", j->samples_per_s);
    }
    if (j->has_tokens_per_s) {
        printf("  tokens/s:    %.0f\n", j->tokens_per_s);
    }
    if (j->has_bubble_fraction && j->has_predicted_bubble) {
        printf("  bubble:      %.4f (predicted %.4f)\n", j->bubble_fraction, j->predicted_bubble);
    } else if (j->has_predicted_bubble) {
        printf("  bubble:      predicted %.4f\n", j->predicted_bubble);
    } else if (j->has_bubble_fraction) {
        printf("  bubble:      %.4f\n", j->bubble_fraction);
    }
    if (j->restarts > 0 || j->failures > 0 || j->has_resumed_from_step) {
        printf("  restarts:    %u (failures %u)", j->restarts, j->failures);
        if (j->has_resumed_from_step) {
            printf(", resumed from step %llu", (unsigned long long)j->resumed_from_step);
        }
        printf("\n");
    }
    if (j->checkpoint_step > 0) {
        printf("  checkpoint:  step %llu\n", (unsigned long long)j->checkpoint_step);
    }
    if (j->save_weights != NULL && j->save_weights[0] != '\0') {
        printf("  weights:     %s\n", j->save_weights);
    }
    if (j->n_placement > 0) {
        /* One line per TP group: a stage of one replica, inside one node. */
        printf("  placement:\n");
        for (uint32_t d = 0; d < j->dp; d++) {
            for (uint32_t st = 0; st < j->pp; st++) {
                const char *node = NULL, *layers = "";
                char devs[256] = "";
                size_t off = 0;
                for (size_t k = 0; k < j->n_placement; k++) {
                    const Mpar__PlacementEntry *p = j->placement[k];
                    if (p->stage != st || p->dp != d) {
                        continue;
                    }
                    node = p->node;
                    layers = p->layers != NULL ? p->layers : "";
                    int w = snprintf(devs + off, sizeof(devs) - off, "%stp %u: rank %u on %s",
                                     off ? ", " : "", p->tp, p->rank, p->device);
                    off += w > 0 && (size_t)w < sizeof(devs) - off ? (size_t)w : 0;
                }
                if (node != NULL) {
                    printf("    stage %u, dp %u%s%s: TP group of %u on node %s (%s)\n", st, d,
                           layers[0] != '\0' ? ", layers " : "", layers, j->tp, node, devs);
                }
            }
        }
    }
    if (j->n_losses > 0) {
        printf("  losses:      ");
        for (size_t i = 0; i < j->n_losses; i++) {
            if (j->n_losses > 12 && i == 5) {
                printf(" ... (%zu more)", j->n_losses - 10);
                i = j->n_losses - 5;
            }
            printf("%s%.4f", i ? " " : "", j->losses[i]);
        }
        printf("\n");
    }
}

static void print_waits(const Mpar__WaitGraph *g)
{
    printf("job %s: %s\n", g->job_id, g->state);
    printf("verdict: %s\n", g->verdict);
    if (g->n_shards == 0) {
        return;
    }
    printf("%-5s %-5s %-3s %-3s %-14s %-8s %-10s %-4s %-14s %-6s %s\n", "RANK", "STAGE", "TP", "DP",
           "NODE", "STEP", "ACTION", "MB", "WAITS FOR", "PEER", "FOR");
    for (size_t i = 0; i < g->n_shards; i++) {
        const Mpar__ShardWait *w = g->shards[i];
        char peer[16] = "-", mb[16] = "-", action[24];
        if (w->peer >= 0) {
            snprintf(peer, sizeof(peer), "%d", w->peer);
        } else if (w->wait[0] != '\0') {
            snprintf(peer, sizeof(peer), "group");
        }
        if (w->mb >= 0) {
            snprintf(mb, sizeof(mb), "%d", w->mb);
        }
        snprintf(action, sizeof(action), "%s",
                 w->op[0] ? w->op : (w->phase[0] ? w->phase : "(no report)"));
        printf("%-5u %-5u %-3u %-3u %-14s %-8llu %-10s %-4s %-14s %-6s %.1fs%s\n", w->rank,
               w->stage, w->tp, w->dp, w->node, (unsigned long long)w->step, action, mb,
               w->wait[0] ? w->wait : "(computing)", peer, (double)w->for_ms / 1000.0,
               w->stale ? "  (node silent: stopped or dead)" : "");
    }
    for (size_t i = 0; i < g->n_blocking; i++) {
        const Mpar__BlockingShard *b = g->blocking[i];
        printf("blocking: rank %u (stage %u, tp %u, dp %u) on %s: %s\n", b->rank, b->stage, b->tp,
               b->dp, b->node, b->why);
    }
}

static int cmd_waits(ctl_t *c, const char *id)
{
    Mpar__Envelope req = MPAR__ENVELOPE__INIT, *rep;
    Mpar__GetWaits gw = MPAR__GET_WAITS__INIT;
    gw.job_id = (char *)id;
    req.msg_case = MPAR__ENVELOPE__MSG_GET_WAITS;
    req.get_waits = &gw;
    int rc = ctl_call(c, &req, &rep);
    if (rc != MP_EXIT_OK) {
        return rc;
    }
    if (rep->msg_case != MPAR__ENVELOPE__MSG_WAIT_GRAPH) {
        fprintf(stderr, "mpar-client: unexpected %s in reply to waits\n",
                mp_frame_msg_name(rep->msg_case));
        mp_frame_envelope_free(rep);
        return MP_EXIT_FAILED;
    }
    if (c->json) {
        print_json(mp_proto_to_json(&rep->wait_graph->base));
    } else {
        print_waits(rep->wait_graph);
    }
    mp_frame_envelope_free(rep);
    return MP_EXIT_OK;
}

static int job_exit(const Mpar__JobInfo *j)
{
    return j->state == MPAR__JOB_STATE__JOB_STATE_FAILED ? MP_EXIT_FAILED : MP_EXIT_OK;
}

static int cmd_job(ctl_t *c, const char *id, bool cancel);

/* ---- commands ------------------------------------------------------------ */

static int cmd_nodes(ctl_t *c)
{
    Mpar__Envelope req = MPAR__ENVELOPE__INIT, *rep;
    Mpar__ListNodes ln = MPAR__LIST_NODES__INIT;
    req.msg_case = MPAR__ENVELOPE__MSG_LIST_NODES;
    req.list_nodes = &ln;
    int rc = ctl_call(c, &req, &rep);
    if (rc != MP_EXIT_OK) {
        return rc;
    }
    if (rep->msg_case != MPAR__ENVELOPE__MSG_NODE_LIST) {
        fprintf(stderr, "mpar-client: unexpected reply %s\n", mp_frame_msg_name(rep->msg_case));
        mp_frame_envelope_free(rep);
        return MP_EXIT_FAILED;
    }
    const Mpar__NodeList *nl = rep->node_list;
    if (c->json) {
        print_json(mp_proto_to_json(&nl->base));
    } else {
        printf("%-20s %-8s %-12s %-24s %-14s %s\n", "NAME", "STATE", "DEVICES", "ADDRESS",
               "HEARTBEAT", "JOINS");
        for (size_t i = 0; i < nl->n_nodes; i++) {
            const Mpar__NodeInfo *n = nl->nodes[i];
            char devs[32], age[32];
            int cpu = 0, cuda = 0;
            for (size_t k = 0; k < n->n_devices; k++) {
                if (n->devices[k]->kind == MPAR__DEVICE_KIND__DEVICE_KIND_CUDA) {
                    cuda++;
                } else {
                    cpu++;
                }
            }
            if (cuda > 0 && cpu > 0) {
                snprintf(devs, sizeof(devs), "cpu:%d+cuda:%d", cpu, cuda);
            } else if (cuda > 0) {
                snprintf(devs, sizeof(devs), "cuda:%d", cuda);
            } else {
                snprintf(devs, sizeof(devs), "cpu:%d", cpu);
            }
            fmt_age(n->last_heartbeat_unix_ms, age, sizeof(age));
            printf("%-20s %-8s %-12s %-24s %-14s %u\n", n->name, node_state(n->state), devs,
                   n->address, age, n->registrations);
        }
    }
    mp_frame_envelope_free(rep);
    return MP_EXIT_OK;
}

static int cmd_jobs(ctl_t *c)
{
    Mpar__Envelope req = MPAR__ENVELOPE__INIT, *rep;
    Mpar__ListJobs lj = MPAR__LIST_JOBS__INIT;
    req.msg_case = MPAR__ENVELOPE__MSG_LIST_JOBS;
    req.list_jobs = &lj;
    int rc = ctl_call(c, &req, &rep);
    if (rc != MP_EXIT_OK) {
        return rc;
    }
    if (rep->msg_case != MPAR__ENVELOPE__MSG_JOB_LIST) {
        mp_frame_envelope_free(rep);
        return MP_EXIT_FAILED;
    }
    const Mpar__JobList *jl = rep->job_list;
    if (c->json) {
        print_json(mp_proto_to_json(&jl->base));
    } else {
        printf("%-6s %-20s %-10s %-10s %-24s %s\n", "ID", "NAME", "STATE", "PPxTPxDP", "SUBMITTED",
               "REASON");
        for (size_t i = 0; i < jl->n_jobs; i++) {
            const Mpar__JobInfo *j = jl->jobs[i];
            char grid[32], t[64];
            snprintf(grid, sizeof(grid), "%ux%ux%u", j->pp, j->tp, j->dp);
            fmt_time(j->submitted_unix_ms, t, sizeof(t));
            printf("%-6s %-20.20s %-10s %-10s %-24s %s\n", j->id, j->name, job_state(j->state),
                   grid, t, j->reason);
        }
    }
    mp_frame_envelope_free(rep);
    return MP_EXIT_OK;
}

/* logs [-f]: the events on stdout.  submit -f (progress): the events on
 * stderr, then the job's final document (or summary) on stdout. */
static int cmd_follow(ctl_t *c, const char *id, bool follow, bool progress)
{
    Mpar__Envelope req = MPAR__ENVELOPE__INIT;
    Mpar__WatchJob wj = MPAR__WATCH_JOB__INIT;
    wj.job_id = (char *)id;
    wj.follow = follow;
    req.msg_case = MPAR__ENVELOPE__MSG_WATCH_JOB;
    req.watch_job = &wj;
    Mpar__Envelope *ev;
    int rc = ctl_call(c, &req, &ev);
    json_t *events = c->json && !follow && !progress ? json_array() : NULL;
    Mpar__JobState last = MPAR__JOB_STATE__JOB_STATE_UNSPECIFIED;
    while (rc == MP_EXIT_OK) {
        if (ev->msg_case != MPAR__ENVELOPE__MSG_JOB_EVENT) {
            mp_frame_envelope_free(ev);
            rc = MP_EXIT_FAILED;
            break;
        }
        const Mpar__JobEvent *e = ev->job_event;
        last = e->state;
        if (progress) {
            char t[64];
            fmt_time(e->unix_ms, t, sizeof(t));
            fprintf(stderr, "%s  %s\n", t, e->message);
            fflush(stderr);
        } else if (events != NULL) {
            json_array_append_new(events, mp_proto_to_json(&e->base));
        } else if (c->json) {
            /* Following: one JSON object per event, as they come. */
            char *text = json_dumps(mp_proto_to_json(&e->base), JSON_COMPACT);
            printf("%s\n", text ? text : "{}");
            free(text);
        } else {
            char t[64];
            fmt_time(e->unix_ms, t, sizeof(t));
            printf("%s  %s\n", t, e->message);
        }
        fflush(stdout);
        bool final = e->final;
        mp_frame_envelope_free(ev);
        if (final) {
            break;
        }
        rc = ctl_recv(c, follow ? -1 : REPLY_TIMEOUT_MS, &ev);
    }
    if (events != NULL) {
        json_t *doc = json_object();
        json_object_set_new(doc, "job_id", json_string(id));
        json_object_set_new(doc, "events", events);
        if (rc == MP_EXIT_OK) {
            print_json(doc);
        } else {
            json_decref(doc);
        }
    }
    if (rc == MP_EXIT_OK && progress) {
        /* The final record: state, losses, placement, timeline. */
        rc = cmd_job(c, id, false);
        if (rc == MP_EXIT_OK && last != MPAR__JOB_STATE__JOB_STATE_SUCCEEDED) {
            rc = MP_EXIT_FAILED;
        }
        return rc;
    }
    if (rc == MP_EXIT_OK && follow) {
        return last == MPAR__JOB_STATE__JOB_STATE_SUCCEEDED ? MP_EXIT_OK : MP_EXIT_FAILED;
    }
    return rc;
}

int mp_client_read_spec_text(const char *path, char **text_p)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "mpar-client: cannot read %s: %s\n", path, strerror(errno));
        return MP_EXIT_USAGE;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (buf == NULL) {
            fclose(f);
            return MP_EXIT_FAILED;
        }
        len += fread(buf + len, 1, cap - len - 1, f);
        if (len < cap - 1) {
            break;
        }
        cap *= 2;
        if (cap > MP_FRAME_MAX_DEFAULT) {
            fprintf(stderr, "mpar-client: %s is larger than a job spec can be\n", path);
            free(buf);
            fclose(f);
            return MP_EXIT_USAGE;
        }
        buf = realloc(buf, cap);
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "mpar-client: cannot read %s\n", path);
        free(buf);
        return MP_EXIT_USAGE;
    }
    buf[len] = '\0';
    *text_p = buf;
    return MP_EXIT_OK;
}

static int cmd_submit(ctl_t *c, const char *path)
{
    char *text;
    int rc = mp_client_read_spec_text(path, &text);
    if (rc != MP_EXIT_OK) {
        return rc;
    }
    char *prepared = NULL, resume_abs[PATH_MAX] = "";
    rc = mp_client_spec_prepare(path, text, c->resume, &prepared, resume_abs, sizeof(resume_abs));
    if (rc != MP_EXIT_OK) {
        free(text);
        return rc;
    }
    if (prepared != NULL) {
        free(text);
        text = prepared;
    }
    Mpar__Envelope req = MPAR__ENVELOPE__INIT, *rep;
    Mpar__SubmitJob sj = MPAR__SUBMIT_JOB__INIT;
    sj.spec_json = text;
    sj.submitter = (char *)user_name();
    sj.save_weights = (char *)(c->save_weights ? c->save_weights : "");
    sj.resume_dir = resume_abs;
    req.msg_case = MPAR__ENVELOPE__MSG_SUBMIT_JOB;
    req.submit_job = &sj;
    rc = ctl_call(c, &req, &rep);
    free(text);
    if (rc != MP_EXIT_OK) {
        return rc;
    }
    if (rep->msg_case != MPAR__ENVELOPE__MSG_JOB_ACCEPTED || rep->job_accepted->job == NULL) {
        mp_frame_envelope_free(rep);
        return MP_EXIT_FAILED;
    }
    const Mpar__JobInfo *j = rep->job_accepted->job;
    char id[32];
    snprintf(id, sizeof(id), "%s", j->id);
    if (c->json && !c->follow) {
        print_json(mp_proto_to_json(&j->base));
    } else if (c->follow) {
        fprintf(stderr, "submitted job %s (%s): %s: %s\n", j->id, j->name, job_state(j->state),
                j->reason);
    } else {
        printf("submitted job %s (%s): %s: %s\n", j->id, j->name, job_state(j->state), j->reason);
    }
    mp_frame_envelope_free(rep);
    fflush(stdout);
    return c->follow ? cmd_follow(c, id, true, true) : MP_EXIT_OK;
}

static int cmd_job(ctl_t *c, const char *id, bool cancel)
{
    Mpar__Envelope req = MPAR__ENVELOPE__INIT, *rep;
    Mpar__GetJob gj = MPAR__GET_JOB__INIT;
    Mpar__CancelJob cj = MPAR__CANCEL_JOB__INIT;
    if (cancel) {
        cj.job_id = (char *)id;
        cj.requester = (char *)user_name();
        req.msg_case = MPAR__ENVELOPE__MSG_CANCEL_JOB;
        req.cancel_job = &cj;
    } else {
        gj.job_id = (char *)id;
        req.msg_case = MPAR__ENVELOPE__MSG_GET_JOB;
        req.get_job = &gj;
    }
    int rc = ctl_call(c, &req, &rep);
    if (rc != MP_EXIT_OK) {
        return rc;
    }
    if (rep->msg_case != MPAR__ENVELOPE__MSG_JOB_REPLY || rep->job_reply->job == NULL) {
        mp_frame_envelope_free(rep);
        return MP_EXIT_FAILED;
    }
    const Mpar__JobInfo *j = rep->job_reply->job;
    if (c->json) {
        print_json(mp_proto_to_json(&j->base));
    } else if (cancel) {
        printf("job %s (%s): %s: %s\n", j->id, j->name, job_state(j->state), j->reason);
    } else {
        print_job(j);
    }
    rc = cancel ? MP_EXIT_OK : job_exit(j);
    mp_frame_envelope_free(rep);
    return rc;
}

int mp_client_ctl_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"connect", required_argument, NULL, 'c'},
        {"secret-file", required_argument, NULL, 'k'},
        {"output", required_argument, NULL, 'o'},
        {"follow", no_argument, NULL, 'f'},
        {"save-weights", required_argument, NULL, 'w'},
        {"resume", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    ctl_t c = {.fd = -1};
    if (argc < 1) {
        ctl_usage(stderr, NULL);
        return MP_EXIT_USAGE;
    }
    const char *cmd = argv[0];
    const ctl_cmd_t *info = ctl_cmd_find(cmd);
    if (info == NULL) {
        fprintf(stderr, "mpar-client: unknown command '%s' (see mpar-client --help)\n", cmd);
        return MP_EXIT_USAGE;
    }
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "+o:fh", opts, NULL)) != -1 || optind < argc) {
        if (ch == -1) {
            /* Positional arguments may come before options: skip them. */
            optind++;
            continue;
        }
        switch (ch) {
        case 's':
            c.socket_path = optarg;
            break;
        case 'c':
            c.connect = optarg;
            break;
        case 'k':
            c.secret_file = optarg;
            break;
        case 'o':
            if (strcmp(optarg, "json") != 0 && strcmp(optarg, "table") != 0) {
                fprintf(stderr, "mpar-client: -o takes json or table, not '%s'\n", optarg);
                return MP_EXIT_USAGE;
            }
            c.json = strcmp(optarg, "json") == 0;
            break;
        case 'f':
            c.follow = true;
            break;
        case 'w':
            c.save_weights = optarg;
            break;
        case 'R':
            c.resume = optarg;
            break;
        case 'h':
            ctl_usage(stdout, info);
            return MP_EXIT_OK;
        default:
            fprintf(stderr, "mpar-client %s: unknown or incomplete option '%s'\n", cmd,
                    argv[optind - 1]);
            ctl_usage(stderr, info);
            return MP_EXIT_USAGE;
        }
    }
    /* The positional arguments, in order, with the options taken out. */
    const char *pos[4];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1] != '\0') {
            bool takes = !strcmp(a, "--socket") || !strcmp(a, "--connect") ||
                         !strcmp(a, "--secret-file") || !strcmp(a, "-o") ||
                         !strcmp(a, "--output") || !strcmp(a, "--save-weights") ||
                         !strcmp(a, "--resume");
            i += takes ? 1 : 0;
            continue;
        }
        if (npos < 4) {
            pos[npos] = a;
        }
        npos++;
    }
    int want = info->nargs;
    if (npos != want) {
        fprintf(stderr, "mpar-client: %s takes %s (usage: mpar-client %s)\n", cmd,
                want == 0                ? "no argument"
                : !strcmp(cmd, "submit") ? "JOB.json"
                                         : "a JOB id",
                info->synopsis);
        return MP_EXIT_USAGE;
    }
    if (c.follow && strcmp(cmd, "submit") != 0 && strcmp(cmd, "logs") != 0) {
        fprintf(stderr, "mpar-client: -f applies to submit and logs\n");
        return MP_EXIT_USAGE;
    }
    if (c.save_weights != NULL && strcmp(cmd, "submit") != 0) {
        fprintf(stderr, "mpar-client: --save-weights applies to submit\n");
        return MP_EXIT_USAGE;
    }
    if (c.resume != NULL && strcmp(cmd, "submit") != 0) {
        fprintf(stderr, "mpar-client: --resume applies to submit\n");
        return MP_EXIT_USAGE;
    }
    /* The directory is the coordinator's: a relative one means this one's. */
    char save_abs[PATH_MAX];
    if (c.save_weights != NULL) {
        if (c.save_weights[0] == '\0') {
            fprintf(stderr, "mpar-client: --save-weights needs a directory\n");
            return MP_EXIT_USAGE;
        }
        if (c.save_weights[0] != '/') {
            char cwd[PATH_MAX];
            if (getcwd(cwd, sizeof(cwd)) == NULL ||
                (size_t)snprintf(save_abs, sizeof(save_abs), "%s/%s", cwd, c.save_weights) >=
                    sizeof(save_abs)) {
                fprintf(stderr, "mpar-client: --save-weights: path too long\n");
                return MP_EXIT_USAGE;
            }
            c.save_weights = save_abs;
        }
    }
    if (c.secret_file != NULL && c.connect == NULL) {
        fprintf(stderr, "mpar-client: --secret-file goes with --connect HOST:PORT\n");
        return MP_EXIT_USAGE;
    }
    /* Read the spec first: a missing file is a usage error, daemon or not. */
    int rc = MP_EXIT_OK;
    if (!strcmp(cmd, "submit") && access(pos[0], R_OK) != 0) {
        fprintf(stderr, "mpar-client: cannot read %s: %s\n", pos[0], strerror(errno));
        return MP_EXIT_USAGE;
    }
    rc = ctl_connect(&c);
    if (rc == MP_EXIT_OK) {
        rc = ctl_handshake(&c);
    }
    if (rc == MP_EXIT_OK) {
        if (!strcmp(cmd, "nodes")) {
            rc = cmd_nodes(&c);
        } else if (!strcmp(cmd, "jobs")) {
            rc = cmd_jobs(&c);
        } else if (!strcmp(cmd, "submit")) {
            rc = cmd_submit(&c, pos[0]);
        } else if (!strcmp(cmd, "status")) {
            rc = cmd_job(&c, pos[0], false);
        } else if (!strcmp(cmd, "logs")) {
            rc = cmd_follow(&c, pos[0], c.follow, false);
        } else if (!strcmp(cmd, "waits")) {
            rc = cmd_waits(&c, pos[0]);
        } else {
            rc = cmd_job(&c, pos[0], true);
        }
    }
    if (c.fd >= 0) {
        close(c.fd);
    }
    fflush(stdout);
    return rc;
}
