/*
 * control.c - mpar-bench-control: starts a coordinator and 3 nodes (mpard,
 * from this binary's folder or --mpard PATH) on loopback in a temporary
 * folder, then measures (1) status-socket requests/s with 1 and 64
 * concurrent clients, each a persistent connection sending {"cmd":"status"}
 * and waiting for its reply, and (2) the coordinator's and a node's idle RSS
 * (VmRSS) with the 3 nodes registered.  No peer exists for these, so each
 * result carries its target (DESIGN.md: >= 20,000 requests/s, <= 8 MiB) as
 * the reference.  Stops every process it started.  Threads: one per client.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RPS_TARGET 20000.0
#define RSS_TARGET (8ll * 1024 * 1024)
#define NNODES 3

static char tmpdir[PATH_MAX];
static pid_t pids[1 + NNODES];
static int npids;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void stop_all(void)
{
    for (int i = npids - 1; i >= 0; i--) {
        kill(pids[i], SIGTERM);
    }
    for (int i = npids - 1; i >= 0; i--) {
        waitpid(pids[i], NULL, 0);
    }
    npids = 0;
    if (tmpdir[0] != '\0') {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) {
            fprintf(stderr, "mpar-bench-control: could not remove %s\n", tmpdir);
        }
    }
}

static int unix_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One request, one reply line (into buf).  Returns the reply length or -1. */
static ssize_t request(int fd, const char *req, char *buf, size_t cap)
{
    size_t n = strlen(req);
    if (write(fd, req, n) != (ssize_t)n) {
        return -1;
    }
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, buf + have, cap - have - 1);
        if (r <= 0) {
            return -1;
        }
        have += (size_t)r;
        if (buf[have - 1] == '\n') {
            buf[have] = '\0';
            return (ssize_t)have;
        }
        if (have + 1 >= cap) {
            return -1;
        }
    }
}

static json_t *query(const char *sock, const char *req)
{
    int fd = unix_connect(sock);
    if (fd < 0) {
        return NULL;
    }
    char buf[65536];
    ssize_t n = request(fd, req, buf, sizeof(buf));
    close(fd);
    return n > 0 ? json_loads(buf, 0, NULL) : NULL;
}

static pid_t spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid > 0) {
        pids[npids++] = pid;
    }
    return pid;
}

typedef struct {
    const char *sock;
    double until;
    long done;
    bool failed;
} client_t;

static atomic_int clients_ready;

static void *client_main(void *arg)
{
    client_t *c = arg;
    char buf[8192];
    int fd = unix_connect(c->sock);
    atomic_fetch_add(&clients_ready, 1);
    if (fd < 0) {
        c->failed = true;
        return NULL;
    }
    while (now_s() < c->until) {
        if (request(fd, "{\"cmd\":\"status\"}\n", buf, sizeof(buf)) < 0 ||
            strncmp(buf, "{\"ok\":true", 10) != 0) {
            c->failed = true;
            break;
        }
        c->done++;
    }
    close(fd);
    return NULL;
}

/* CPU seconds (user + system) a process has used so far. */
static double cpu_seconds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    char buf[1024];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    /* After "pid (comm)": state and 10 more fields, then utime and stime. */
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) {
        return 0;
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double bench_rps(const char *sock, int nclients, double seconds, bool *ok_p)
{
    client_t *cs = calloc((size_t)nclients, sizeof(*cs));
    pthread_t *th = calloc((size_t)nclients, sizeof(*th));
    double t0 = now_s();
    atomic_store(&clients_ready, 0);
    for (int i = 0; i < nclients; i++) {
        cs[i].sock = sock;
        cs[i].until = t0 + seconds;
        pthread_create(&th[i], NULL, client_main, &cs[i]);
    }
    long total = 0;
    for (int i = 0; i < nclients; i++) {
        pthread_join(th[i], NULL);
        total += cs[i].done;
        *ok_p = *ok_p && !cs[i].failed;
    }
    double took = now_s() - t0;
    free(cs);
    free(th);
    return (double)total / took;
}

static long rss_bytes(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) {
            break;
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    return kb < 0 ? -1 : kb * 1024;
}

static int alive_nodes(const char *sock)
{
    json_t *st = query(sock, "{\"cmd\":\"status\"}\n");
    int n = (int)json_integer_value(json_object_get(json_object_get(st, "nodes"), "ALIVE"));
    json_decref(st);
    return n;
}

int main(int argc, char **argv)
{
    bool quick = false, as_json = false;
    char mpard[PATH_MAX + 16] = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            quick = true;
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc && !strcmp(argv[i + 1], "json")) {
            as_json = true;
            i++;
        } else if (!strcmp(argv[i], "--mpard") && i + 1 < argc) {
            snprintf(mpard, sizeof(mpard), "%s", argv[++i]);
        } else {
            fprintf(stderr, "usage: mpar-bench-control [--quick] [-o json] [--mpard PATH]\n");
            return 2;
        }
    }
    if (mpard[0] == '\0') {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        self[n > 0 ? n : 0] = '\0';
        char *slash = strrchr(self, '/');
        if (slash != NULL) {
            *slash = '\0';
        }
        snprintf(mpard, sizeof(mpard), "%s/mpard", self);
    }
    if (access(mpard, X_OK) != 0) {
        fprintf(stderr, "mpar-bench-control: no mpard at %s (--mpard PATH)\n", mpard);
        return 1;
    }
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/mpar-bench-control.XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    atexit(stop_all);
    signal(SIGPIPE, SIG_IGN);

    char csock[PATH_MAX + 16], cstate[PATH_MAX + 16], log[PATH_MAX + 16];
    snprintf(csock, sizeof(csock), "%s/c0.sock", tmpdir);
    snprintf(cstate, sizeof(cstate), "%s/c0", tmpdir);
    snprintf(log, sizeof(log), "%s/mpard.log", tmpdir);
    char *cargv[] = {mpard,         "--name",   "c0",          "--coordinator", "--devices",
                     "none",        "--listen", "127.0.0.1:0", "--socket",      csock,
                     "--state-dir", cstate,     "--log-level", "warn",          NULL};
    pid_t coord = spawn(cargv, log);
    json_t *st = NULL;
    for (int i = 0; i < 100 && st == NULL; i++) {
        usleep(50000);
        st = query(csock, "{\"cmd\":\"status\"}\n");
    }
    const char *listen = json_string_value(json_object_get(st, "listen"));
    if (listen == NULL) {
        fprintf(stderr, "mpar-bench-control: the coordinator did not start (see %s)\n", log);
        return 1;
    }
    char join[128];
    snprintf(join, sizeof(join), "%s", listen);
    json_decref(st);
    pid_t node0 = 0;
    for (int i = 0; i < NNODES; i++) {
        char name[16], sock[PATH_MAX + 40], state[PATH_MAX + 40];
        snprintf(name, sizeof(name), "n%d", i + 1);
        snprintf(sock, sizeof(sock), "%s/%s.sock", tmpdir, name);
        snprintf(state, sizeof(state), "%s/%s", tmpdir, name);
        char *nargv[] = {mpard,       "--name",      name,       "--join", join,
                         "--devices", "cpu:1",       "--socket", sock,     "--state-dir",
                         state,       "--log-level", "warn",     NULL};
        pid_t p = spawn(nargv, log);
        if (i == 0) {
            node0 = p;
        }
    }
    for (int i = 0; i < 200 && alive_nodes(csock) < NNODES; i++) {
        usleep(50000);
    }
    if (alive_nodes(csock) < NNODES) {
        fprintf(stderr, "mpar-bench-control: nodes did not register (see %s)\n", log);
        return 1;
    }

    /* Idle RSS first, before any load touched more memory. */
    sleep(quick ? 1 : 3);
    long rss_coord = rss_bytes(coord), rss_node = rss_bytes(node0);

    double secs = quick ? 3.0 : 10.0;
    bool ok1 = true, ok64 = true;
    /* mpard's own CPU time per request, a figure less at the mercy of a
     * shared machine than requests/s. */
    double c0 = cpu_seconds(coord);
    double rps1 = bench_rps(csock, 1, secs, &ok1);
    double c1 = cpu_seconds(coord);
    double rps64 = bench_rps(csock, 64, secs, &ok64);
    double c2 = cpu_seconds(coord);
    double us1 = rps1 > 0 ? (c1 - c0) * 1e6 / (rps1 * secs) : 0;
    double us64 = rps64 > 0 ? (c2 - c1) * 1e6 / (rps64 * secs) : 0;
    if (!ok1 || !ok64 || alive_nodes(csock) != NNODES) {
        fprintf(stderr, "mpar-bench-control: requests failed or nodes were lost under load\n");
        return 1;
    }

    json_t *results = json_array();
    int clients[2] = {1, 64};
    double rps[2] = {rps1, rps64}, us[2] = {us1, us64};
    for (int i = 0; i < 2; i++) {
        json_array_append_new(
            results, json_pack("{s:s, s:i, s:f, s:n, s:f, s:s, s:s, s:f, s:f}", "test",
                               "status_rps", "clients", clients[i], "mpar", rps[i], "peer",
                               "target", RPS_TARGET, "reference", "target", "unit", "requests/s",
                               "ratio", rps[i] / RPS_TARGET, "mpard_cpu_us_per_request", us[i]));
    }
    const char *roles[2] = {"coordinator", "node"};
    long rss[2] = {rss_coord, rss_node};
    for (int i = 0; i < 2; i++) {
        json_array_append_new(
            results,
            json_pack("{s:s, s:s, s:i, s:I, s:n, s:I, s:s, s:s, s:f}", "test", "idle_rss", "role",
                      roles[i], "nodes", NNODES, "mpar", (json_int_t)rss[i], "peer", "target",
                      (json_int_t)RSS_TARGET, "reference", "target", "unit", "bytes", "ratio",
                      rss[i] > 0 ? (double)RSS_TARGET / (double)rss[i] : 0.0));
    }
    json_t *doc = json_pack("{s:s, s:o}", "bench", "control", "results", results);
    if (as_json) {
        char *text = json_dumps(doc, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
        printf("%s\n", text);
        free(text);
    } else {
        printf("status socket, 1 client:    %10.0f requests/s (target >= %.0f), mpard %.1f "
               "us CPU/request\n",
               rps1, RPS_TARGET, us1);
        printf("status socket, 64 clients:  %10.0f requests/s (target >= %.0f), mpard %.1f "
               "us CPU/request\n",
               rps64, RPS_TARGET, us64);
        printf("idle RSS, coordinator (3 nodes registered): %6.2f MiB (target <= 8 MiB)\n",
               (double)rss_coord / 1048576.0);
        printf("idle RSS, node:                             %6.2f MiB (target <= 8 MiB)\n",
               (double)rss_node / 1048576.0);
    }
    json_decref(doc);
    return 0;
}
