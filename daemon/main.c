/*
 * main.c - mpard: reads the configuration, loads the cluster secret, binds
 * the cluster listener (coordinator) and the Unix socket, starts the roles,
 * and runs the libuv loop until SIGTERM/SIGINT.  READY=1 goes to systemd once
 * the listeners are bound and the node has registered; SIGHUP reloads the
 * configuration (read on the libuv thread pool, applied on the loop) and
 * keeps the old one on error.  Owns mpard_t and the loop.  Main thread =
 * the libuv thread.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "daemon/agent.h"
#include "daemon/coord.h"
#include "daemon/mbox.h"
#include "daemon/metrics.h"
#include "daemon/notify.h"
#include "daemon/session.h"
#include "transport/frame_conn.h"

#define SHUTDOWN_GRACE_MS 500
/* A stop waits this long for job threads to end.  One blocked in a system
 * call that nothing interrupts (open() of a FIFO, a hung NFS read) would
 * otherwise keep mpard alive forever after SIGTERM. */
#define STOP_BOUND_MS 5000

static uv_loop_t loop_storage;

/* READY=1 once listeners are bound and the node has registered. */
static void mpard_check_ready(mpard_t *d)
{
    if (d->ready_sent || d->stopping || !d->listeners_ready) {
        return;
    }
    if (d->agent != NULL && !mp_agent_registered(d->agent)) {
        return;
    }
    d->ready_sent = true;
    mp_notify_send("READY=1");
    mp_notify_status_update(d);
    mp_notice("mpard %s ready: %s%s%s", d->cfg.name, d->coord ? "coordinator on " : "",
              d->coord ? d->tcp_bound : "",
              d->agent ? (d->coord ? ", node registered" : "node registered") : "");
}

/* The parts' word that something changed (ctx.h's on_changed). */
static void on_changed(mpard_t *d)
{
    mpard_check_ready(d);
    mp_notify_status_update(d);
}

static void close_if_open(uv_handle_t *h, void *arg)
{
    /* A mailbox is closed by its owner once the threads that post to it
     * have exited (uv_async_send on a closed handle is undefined); until
     * then it keeps the loop running, which joins them as they end. */
    mpard_t *d = arg;
    if (!uv_is_closing(h) && !mp_mbox_owns(h) && h != (uv_handle_t *)&d->stuck_timer) {
        uv_close(h, NULL);
    }
}

/* Closes what is still open: connections through their own close path (so
 * their records are freed), then any remaining handle but the mailboxes. */
static void mpard_force_close(mpard_t *d)
{
    mp_session_abort_all(d);
    if (d->agent != NULL) {
        mp_agent_abort(d->agent);
    }
    uv_walk(d->loop, close_if_open, d);
}

static void on_shutdown_timer(uv_timer_t *t)
{
    /* Whatever did not flush in the grace period is closed now. */
    mpard_force_close(t->data);
}

static void on_stuck_timer(uv_timer_t *t)
{
    mpard_t *d = t->data;
    int coord = d->coord != NULL ? mp_coord_threads_left(d->coord) : 0;
    mp_warn("stop: job threads still running after %d ms (%d feeders of the coordinator; "
            "blocked in a system call, e.g. opening a data file that is a FIFO); exiting "
            "without them",
            STOP_BOUND_MS, coord);
    if (d->coord != NULL) {
        mp_coord_save_now(d->coord);
    }
    mp_notice("stopped");
    fflush(stdout);
    fflush(stderr);
    /* Not exit(): its handlers would join the thread pool, which may hold
     * the blocked thread. */
    _exit(0);
}

static void mpard_shutdown(mpard_t *d, const char *why)
{
    if (d->stopping) {
        return;
    }
    mp_notice("stopping (%s)", why);
    mp_notify_send("STOPPING=1");
    if (d->tcp_open) {
        d->tcp_open = false;
        uv_close((uv_handle_t *)&d->tcp_listener, NULL);
    }
    if (d->unix_open) {
        d->unix_open = false;
        uv_close((uv_handle_t *)&d->unix_listener, NULL);
        unlink(d->cfg.socket_path);
    }
    mp_http_server_stop(d->metrics_http);
    d->metrics_http = NULL;
    if (d->agent != NULL) {
        mp_agent_stop(d->agent); /* says Goodbye before the flag below mutes it */
    }
    d->stopping = true;
    mp_session_close_all(d);
    if (d->coord != NULL) {
        mp_coord_stop(d->coord);
    }
    uv_close((uv_handle_t *)&d->sig_term, NULL);
    uv_close((uv_handle_t *)&d->sig_int, NULL);
    uv_close((uv_handle_t *)&d->sig_hup, NULL);
    if (d->watchdog_on) {
        d->watchdog_on = false;
        uv_close((uv_handle_t *)&d->watchdog_timer, NULL);
    }
    uv_timer_init(d->loop, &d->shutdown_timer);
    d->shutdown_timer.data = d;
    uv_timer_start(&d->shutdown_timer, on_shutdown_timer, SHUTDOWN_GRACE_MS, 0);
    uv_unref((uv_handle_t *)&d->shutdown_timer);
    uv_timer_init(d->loop, &d->stuck_timer);
    d->stuck_timer.data = d;
    uv_timer_start(&d->stuck_timer, on_stuck_timer, STOP_BOUND_MS, 0);
    uv_unref((uv_handle_t *)&d->stuck_timer);
}

/* A reload: the configuration is read on the thread pool (the loop never
 * touches the disk) and applied back on the loop. */
typedef struct {
    uv_work_t req;
    mpard_t *d;
    mp_daemon_config_t nc;
    mp_errbuf_t err;
    mp_status_t st;
} reload_req_t;

static void mpard_reload(mpard_t *d);

static void reload_apply(mpard_t *d, const mp_daemon_config_t *nc)
{
    static const struct {
        const char *key;
        size_t off, len;
    } fixed[] = {
#define F(k, f) {k, offsetof(mp_daemon_config_t, f), sizeof(((mp_daemon_config_t *)0)->f)}
        F("name", name),
        F("coordinator", coordinator),
        F("listen", listen),
        F("metrics-listen", metrics_listen),
        F("join", join),
        F("socket", socket_path),
        F("state-dir", state_dir),
        F("secret-file", secret_file),
        F("devices", devices),
#undef F
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (memcmp((const char *)nc + fixed[i].off, (char *)&d->cfg + fixed[i].off, fixed[i].len) !=
            0) {
            mp_warn("reload: '%s' changed; it takes effect at the next restart", fixed[i].key);
        }
    }
    d->cfg.heartbeat_ms = nc->heartbeat_ms;
    d->cfg.dead_after_ms = nc->dead_after_ms;
    d->cfg.log_level = nc->log_level;
    memcpy(d->cfg.log_level_name, nc->log_level_name, sizeof(nc->log_level_name));
    mp_log_set_level(d->cfg.log_level);
    if (d->coord != NULL) {
        mp_coord_apply_config(d->coord);
    }
    d->n.reloads++;
    mp_notice("configuration reloaded (heartbeat %u ms, dead after %u ms, log level %s)",
              d->cfg.heartbeat_ms, d->cfg.dead_after_ms, d->cfg.log_level_name);
}

static void reload_work(uv_work_t *req)
{
    reload_req_t *r = (reload_req_t *)req;
    bool help;
    r->st = mp_daemon_config_load(r->d->argc, r->d->argv, &r->nc, &help, &r->err);
}

static void reload_after(uv_work_t *req, int status)
{
    reload_req_t *r = (reload_req_t *)req;
    mpard_t *d = r->d;
    d->reload_inflight = false;
    if (d->stopping) {
        mp_free(r);
        return;
    }
    if (r->st != MP_OK) {
        d->n.reload_failures++;
        mp_err("reload refused, keeping the running configuration: %s", r->err.msg);
    } else {
        reload_apply(d, &r->nc);
    }
    mp_free(r);
    if (d->ready_sent) {
        mp_notify_send("READY=1");
    }
    if (d->reload_again) {
        d->reload_again = false;
        mpard_reload(d);
    }
}

static void mpard_reload(mpard_t *d)
{
    if (d->reload_inflight) {
        d->reload_again = true; /* getopt and the file are not for two readers at once */
        return;
    }
    mp_notify_send("RELOADING=1");
    reload_req_t *r = mp_calloc(1, sizeof(*r));
    int rc = UV_ENOMEM;
    if (r != NULL) {
        r->d = d;
        rc = uv_queue_work(d->loop, &r->req, reload_work, reload_after);
    }
    if (rc != 0) {
        mp_free(r);
        d->n.reload_failures++;
        mp_err("reload refused, keeping the running configuration: %s", uv_strerror(rc));
        if (d->ready_sent) {
            mp_notify_send("READY=1");
        }
        return;
    }
    d->reload_inflight = true;
}

static void on_signal(uv_signal_t *h, int signum)
{
    mpard_t *d = h->data;
    if (signum == SIGHUP) {
        mpard_reload(d);
    } else {
        mpard_shutdown(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
    }
}

static bool addr_is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
    return memcmp(&a6->sin6_addr, &in6addr_loopback, sizeof(in6addr_loopback)) == 0;
}

static mp_status_t listen_tcp(mpard_t *d)
{
    mp_errbuf_t err;
    struct sockaddr_storage ss;
    if (mp_daemon_addr_parse(d->cfg.listen, &ss, &err) != MP_OK) {
        mp_err("listen: %s", err.msg);
        return MP_ERR_INVAL;
    }
    if (d->secret == NULL && !addr_is_loopback(&ss)) {
        if (ss.ss_family == AF_INET) {
            ((struct sockaddr_in *)&ss)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        } else {
            ((struct sockaddr_in6 *)&ss)->sin6_addr = in6addr_loopback;
        }
        mp_warn("no cluster secret (--secret-file): listening on loopback only instead of %s",
                d->cfg.listen);
    }
    uv_tcp_init(d->loop, &d->tcp_listener);
    d->tcp_listener.data = d;
    d->tcp_open = true;
    int rc = uv_tcp_bind(&d->tcp_listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&d->tcp_listener, 128, mp_session_on_accept);
    }
    if (rc != 0) {
        mp_err("cannot listen on %s: %s", d->cfg.listen, uv_strerror(rc));
        return MP_ERR_IO;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    char host[64] = "?";
    int port = 0;
    uv_tcp_getsockname(&d->tcp_listener, (struct sockaddr *)&bound, &len);
    if (bound.ss_family == AF_INET) {
        uv_ip4_name((struct sockaddr_in *)&bound, host, sizeof(host));
        port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        snprintf(d->tcp_bound, sizeof(d->tcp_bound), "%s:%d", host, port);
    } else {
        uv_ip6_name((struct sockaddr_in6 *)&bound, host, sizeof(host));
        port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        snprintf(d->tcp_bound, sizeof(d->tcp_bound), "[%s]:%d", host, port);
    }
    mp_info("cluster listener on %s (%s)", d->tcp_bound,
            d->secret ? "cluster secret required" : "no secret: loopback only");
    return MP_OK;
}

static mp_status_t listen_unix(mpard_t *d)
{
    const char *path = d->cfg.socket_path;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            mp_err("cannot create %s for the status socket: %s", dir, strerror(errno));
            return MP_ERR_IO;
        }
    }
    struct stat sb;
    if (lstat(path, &sb) == 0 && S_ISSOCK(sb.st_mode)) {
        unlink(path); /* a previous mpard's socket; systemd stops one before starting one */
    }
    uv_pipe_init(d->loop, &d->unix_listener, 0);
    d->unix_listener.data = d;
    d->unix_open = true;
    /* Group may connect (0660); the umask keeps others out from the start. */
    mode_t old = umask(0117);
    int rc = uv_pipe_bind(&d->unix_listener, path);
    umask(old);
    if (rc == 0 && chmod(path, 0660) != 0) {
        rc = uv_translate_sys_error(errno);
    }
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&d->unix_listener, 128, mp_session_on_accept);
    }
    if (rc != 0) {
        mp_err("cannot listen on the status socket %s: %s", path, uv_strerror(rc));
        return MP_ERR_IO;
    }
    mp_info("status socket %s", path);
    return MP_OK;
}

static char *on_metrics_get(void *arg, const char *path, size_t *len_p)
{
    (void)path;
    char *text = mp_metrics_render(arg);
    if (text != NULL) {
        *len_p = strlen(text);
    }
    return text;
}

/* --metrics-listen: GET /metrics over HTTP, what a Prometheus server scrapes. */
static mp_status_t listen_metrics(mpard_t *d)
{
    if (d->cfg.metrics_listen[0] == '\0') {
        return MP_OK;
    }
    mp_errbuf_t err;
    struct sockaddr_storage ss;
    if (mp_daemon_addr_parse(d->cfg.metrics_listen, &ss, &err) != MP_OK) {
        mp_err("metrics-listen: %s", err.msg);
        return MP_ERR_INVAL;
    }
    mp_http_server_opts_t o = {.path = "/metrics",
                               .content_type = "text/plain; version=0.0.4; charset=utf-8",
                               .handler = on_metrics_get,
                               .arg = d,
                               /* As the control connections' stall limit. */
                               .deadline_ms = d->cfg.dead_after_ms};
    MP_TRY(mp_http_server_start(d->loop, (const struct sockaddr *)&ss, &o, &d->metrics_http));
    mp_info("metrics on http://%s/metrics", mp_http_server_address(d->metrics_http));
    return MP_OK;
}

/*
 * The file descriptors: the soft limit is raised to the hard one (the unit
 * sets LimitNOFILE), and each listener may hold a quarter of what is left
 * after a reserve for UCX, data files and the state file, between 16 and
 * 4096 connections.  A flood of status-socket readers then fills its own
 * share and is refused there, while nodes and clients still get in over TCP.
 */
#define FD_RESERVE 128
#define CONN_CAP_MIN 16
#define CONN_CAP_MAX 4096

static uint32_t mpard_conn_cap(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return 256;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit raised = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
            rl = raised;
        }
    }
    rlim_t n = rl.rlim_cur == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_cur;
    rlim_t cap = n > FD_RESERVE ? (n - FD_RESERVE) / 4 : 0;
    cap = cap < CONN_CAP_MIN ? CONN_CAP_MIN : cap > CONN_CAP_MAX ? CONN_CAP_MAX : cap;
    return (uint32_t)cap;
}

int main(int argc, char **argv)
{
    static mpard_t d;
    mp_errbuf_t err;
    bool help;
    mp_log_set_tag("mpard");
    if (mp_daemon_config_load(argc, argv, &d.cfg, &help, &err) != MP_OK) {
        fprintf(stderr, "mpard: %s\n", err.msg);
        return 2;
    }
    if (help) {
        mp_daemon_config_usage();
        return 0;
    }
    d.argc = argc;
    d.argv = argv;
    d.on_changed = on_changed;
    mp_log_set_level(d.cfg.log_level);
    if (mp_daemon_devices_parse(d.cfg.devices, d.devices, &d.ndevices, &err) != MP_OK) {
        mp_err("devices: %s", err.msg);
        return 2;
    }
    /* Under systemd, LoadCredential=cluster-secret:FILE hands the secret to
     * the service's own user; it is used when no secret-file is set. */
    const char *creds = getenv("CREDENTIALS_DIRECTORY");
    if (d.cfg.secret_file[0] == '\0' && creds != NULL) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/cluster-secret", creds);
        if (access(path, F_OK) == 0) {
            snprintf(d.cfg.secret_file, sizeof(d.cfg.secret_file), "%s", path);
        }
    }
    if (d.cfg.secret_file[0] != '\0' &&
        mp_auth_secret_load(d.cfg.secret_file, &d.secret, &err) != MP_OK) {
        mp_err("%s", err.msg);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    d.conn_cap = mpard_conn_cap();
    d.loop = &loop_storage;
    uv_loop_init(d.loop);
    d.start_unix_ms = mpard_now_ms();
    d.pid = (int)getpid();
    uv_signal_init(d.loop, &d.sig_term);
    uv_signal_init(d.loop, &d.sig_int);
    uv_signal_init(d.loop, &d.sig_hup);
    d.sig_term.data = d.sig_int.data = d.sig_hup.data = &d;
    uv_signal_start(&d.sig_term, on_signal, SIGTERM);
    uv_signal_start(&d.sig_int, on_signal, SIGINT);
    uv_signal_start(&d.sig_hup, on_signal, SIGHUP);

    int rc = 0;
    if (d.cfg.coordinator && (listen_tcp(&d) != MP_OK || mp_coord_create(&d, &d.coord) != MP_OK)) {
        rc = 1;
    }
    if (rc == 0 && listen_unix(&d) != MP_OK) {
        rc = 1;
    }
    if (rc == 0 && listen_metrics(&d) != MP_OK) {
        rc = 1;
    }
    if (rc == 0) {
        d.listeners_ready = true;
        if (d.ndevices > 0 && mp_agent_create(&d, &d.agent) != MP_OK) {
            rc = 1;
        }
    }
    if (rc == 0) {
        mp_info("mpard %s %s: %s%s, %d device%s (%s), heartbeat %u ms, dead after %u ms",
                MP_VERSION, d.cfg.name, d.coord ? "coordinator" : "",
                d.agent ? (d.coord ? " + node" : "node") : "", d.ndevices,
                d.ndevices == 1 ? "" : "s", d.cfg.devices, d.cfg.heartbeat_ms, d.cfg.dead_after_ms);
        mp_notify_watchdog_start(&d);
        mpard_check_ready(&d);
    } else {
        mpard_shutdown(&d, "start-up failed");
    }
    uv_run(d.loop, UV_RUN_DEFAULT);
    /* The loop ends when nothing active is left, every thread joined: the
     * bound on the stop is not needed any more; idle handles close now. */
    if (d.stopping && !uv_is_closing((uv_handle_t *)&d.stuck_timer)) {
        uv_close((uv_handle_t *)&d.stuck_timer, NULL);
    }
    mpard_force_close(&d);
    uv_run(d.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(d.loop) != 0) {
        mp_warn("the loop still had open handles at exit");
    }
    /* The loop ended once the mailboxes closed, so every executor and
     * feeder thread has been joined; destroying joins any left, should one
     * be, before the UCX context they share goes. */
    mp_coord_destroy(d.coord);
    if (d.agent != NULL) {
        mp_agent_destroy(d.agent);
    }
    mpard_xport_ctx_release();
    mp_auth_secret_free(d.secret);
    if (rc == 0) {
        mp_notice("stopped");
    }
    return rc;
}
