/*
 * local.c - `mpar-client run JOB.json` without --serial: a throwaway local
 * cluster on loopback sized for the job's grid (a coordinator and pp*dp
 * nodes of tp CPU shards each, so every TP group sits inside one node),
 * the job submitted and followed, its result and timeline SVG, and the
 * cluster stopped again.  The daemons live in their own process group with
 * PR_SET_PDEATHSIG, so neither Ctrl-C nor a killed client leaves one behind.
 * Single-threaded; blocks.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/client.h"
#include "common/fs.h"
#include "common/alloc.h"
#include "proto/json.h"

#define LC_MAX_DAEMONS 65

typedef struct {
    char dir[PATH_MAX];
    char self[PATH_MAX];
    char mpard[PATH_MAX + 32];
    char coord_sock[PATH_MAX + 16];
    pid_t pids[LC_MAX_DAEMONS];
    int npids;
    pid_t submit_pid;
} local_cluster_t;

static volatile sig_atomic_t lc_interrupted;

static void on_signal(int sig) { lc_interrupted = sig; }

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* mpard sits next to mpar-client in a build (build/bin) and in ../sbin
 * when installed. */
static int find_mpard(local_cluster_t *lc)
{
    ssize_t n = readlink("/proc/self/exe", lc->self, sizeof(lc->self) - 1);
    if (n <= 0) {
        return -1;
    }
    lc->self[n] = '\0';
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", lc->self);
    char *slash = strrchr(dir, '/');
    if (slash != NULL) {
        *slash = '\0';
    }
    snprintf(lc->mpard, sizeof(lc->mpard), "%s/mpard", dir);
    if (access(lc->mpard, X_OK) == 0) {
        return 0;
    }
    snprintf(lc->mpard, sizeof(lc->mpard), "%s/../sbin/mpard", dir);
    return access(lc->mpard, X_OK) == 0 ? 0 : -1;
}

static pid_t spawn_daemon(local_cluster_t *lc, const char *log_name, char *const argv[])
{
    char log_path[PATH_MAX + 32];
    snprintf(log_path, sizeof(log_path), "%s/%s", lc->dir, log_name);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) {
        return pid;
    }
    /* Child: its own process group (the terminal's Ctrl-C reaches only the
     * client, which stops the cluster in order), and death with the client. */
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) {
        _exit(1);
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        close(null);
    }
    execv(argv[0], argv);
    _exit(127);
}

/* One newline-delimited JSON request on the status socket; NULL on error. */
static json_t *sock_request(const char *path, const char *line)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return NULL;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    json_t *o = NULL;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        write(fd, line, strlen(line)) == (ssize_t)strlen(line)) {
        char buf[65536];
        size_t used = 0;
        while (used < sizeof(buf) - 1) {
            ssize_t n = read(fd, buf + used, sizeof(buf) - 1 - used);
            if (n <= 0) {
                break;
            }
            used += (size_t)n;
            if (memchr(buf, '\n', used) != NULL) {
                break;
            }
        }
        buf[used] = '\0';
        json_error_t e;
        o = json_loads(buf, JSON_DISABLE_EOF_CHECK, &e);
    }
    close(fd);
    return o;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* SIGTERM to every daemon (a graceful stop), SIGKILL to what is left after 5 s. */
static void stop_cluster(local_cluster_t *lc)
{
    if (lc->submit_pid > 0) {
        kill(lc->submit_pid, SIGTERM);
        waitpid(lc->submit_pid, NULL, 0);
        lc->submit_pid = 0;
    }
    for (int i = lc->npids - 1; i >= 0; i--) {
        kill(lc->pids[i], SIGTERM);
    }
    double deadline = mono_s() + 5.0;
    int left = lc->npids;
    while (left > 0) {
        left = 0;
        for (int i = 0; i < lc->npids; i++) {
            if (lc->pids[i] > 0) {
                if (waitpid(lc->pids[i], NULL, WNOHANG) == lc->pids[i]) {
                    lc->pids[i] = 0;
                } else {
                    left++;
                }
            }
        }
        if (left > 0 && mono_s() > deadline) {
            for (int i = 0; i < lc->npids; i++) {
                if (lc->pids[i] > 0) {
                    kill(lc->pids[i], SIGKILL);
                    waitpid(lc->pids[i], NULL, 0);
                    lc->pids[i] = 0;
                }
            }
            left = 0;
        } else if (left > 0) {
            sleep_ms(20);
        }
    }
    lc->npids = 0;
}

static int wait_alive(local_cluster_t *lc, int nodes, char *listen, size_t listen_len)
{
    double deadline = mono_s() + 30.0;
    while (!lc_interrupted && mono_s() < deadline) {
        json_t *st = sock_request(lc->coord_sock, "{\"cmd\":\"status\"}\n");
        if (st != NULL) {
            const char *l = json_string_value(json_object_get(st, "listen"));
            if (l != NULL && listen != NULL) {
                snprintf(listen, listen_len, "%s", l);
            }
            json_int_t alive = json_integer_value(
                json_object_get(json_object_get(st, "nodes"), "ALIVE"));
            json_decref(st);
            if (l != NULL && alive >= nodes) {
                return 0;
            }
        }
        for (int i = 0; i < lc->npids; i++) {
            if (waitpid(lc->pids[i], NULL, WNOHANG) == lc->pids[i]) {
                fprintf(stderr, "mpar-client run: mpard exited early; see the logs in %s\n",
                        lc->dir);
                lc->pids[i] = 0;
                return -1;
            }
        }
        sleep_ms(50);
    }
    return -1;
}

/* MemAvailable of /proc/meminfo in bytes; 0 when unknown. */
static uint64_t mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            break;
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    return (uint64_t)kb * 1024;
}

/*
 * Whether this machine can hold the grid as a local cluster: a coordinator
 * and pp*dp daemons holding pp*tp*dp shard threads.  Shards sleep while
 * they wait, but every daemon's loop must still answer its heartbeats in
 * time; beyond these a starved node misses them and the job dies of it:
 * at most LC_DAEMONS_PER_CORE daemons and LC_SHARDS_PER_CORE shards per
 * core (the coordinator counted), and LC_DAEMON_BYTES of available memory
 * per daemon.  0 when it fits, else the refusal is printed.
 */
#define LC_DAEMONS_PER_CORE 4
#define LC_SHARDS_PER_CORE 8
#define LC_DAEMON_BYTES (64ull << 20)

int mp_client_local_capacity(int pp, int tp, int dp, long cores, uint64_t mem, char *why,
                             size_t why_len)
{
    long long daemons = 1 + (long long)pp * dp, shards = (long long)pp * tp * dp;
    long long max_daemons = 1 + LC_DAEMONS_PER_CORE * (long long)(cores > 0 ? cores : 1);
    long long max_shards = LC_SHARDS_PER_CORE * (long long)(cores > 0 ? cores : 1);
    if (max_daemons > LC_MAX_DAEMONS) {
        max_daemons = LC_MAX_DAEMONS;
    }
    const char *short_of = daemons > max_daemons ? "daemons"
                           : shards > max_shards ? "shards"
                           : mem > 0 && (uint64_t)daemons * LC_DAEMON_BYTES > mem
                               ? "memory"
                               : NULL;
    if (short_of == NULL) {
        return 0;
    }
    snprintf(why, why_len,
             "the grid pp=%d x tp=%d x dp=%d needs %lld daemons (a coordinator and pp*dp nodes) "
             "and %lld shards, and this machine has %ld core%s and %.1f GiB available: a local "
             "cluster here holds at most %lld daemons and %lld shards (%d daemons and %d shards "
             "a core, %llu MiB a daemon); too many %s. Run it on a cluster (mpar-client submit) "
             "or with --serial",
             pp, tp, dp, daemons, shards, cores, cores == 1 ? "" : "s",
             (double)mem / (double)(1ull << 30), max_daemons, max_shards, LC_DAEMONS_PER_CORE,
             LC_SHARDS_PER_CORE, LC_DAEMON_BYTES >> 20, short_of);
    return -1;
}

int mp_client_run_local(const char *spec_path, int pp, int tp, int dp, const char *name,
                        bool json, const char *save_dir, const char *timeline_path, bool quiet,
                        const mp_spec_t *spec, const char *curve_path, int64_t sample_tokens,
                        const char *resume_dir)
{
    local_cluster_t lc = {0};
    int code = MP_EXIT_FAILED;
    int nodes = pp * dp;
    char why[600];
    if (mp_client_local_capacity(pp, tp, dp, sysconf(_SC_NPROCESSORS_ONLN), mem_available(), why,
                                 sizeof(why)) != 0) {
        fprintf(stderr, "mpar-client run: %s\n", why);
        return MP_EXIT_USAGE;
    }
    if (find_mpard(&lc) != 0) {
        fprintf(stderr, "mpar-client run: cannot find mpard next to %s (or in ../sbin)\n",
                lc.self);
        return MP_EXIT_FAILED;
    }
    char abs_spec[PATH_MAX], abs_save[PATH_MAX];
    if (realpath(spec_path, abs_spec) == NULL) {
        fprintf(stderr, "mpar-client run: %s: %s\n", spec_path, strerror(errno));
        return MP_EXIT_USAGE;
    }
    if (save_dir != NULL) {
        /* Made and proved writable before any daemon starts (run.c has
         * already for its own flag; verify's folder is made here); the
         * coordinator wants it absolute. */
        mp_errbuf_t err = {{0}};
        if (mp_fs_dir_prepare(save_dir, &err) != MP_OK) {
            fprintf(stderr, "mpar-client run: --save-weights: %s\n", err.msg);
            return MP_EXIT_USAGE;
        }
        if (realpath(save_dir, abs_save) == NULL) {
            fprintf(stderr, "mpar-client run: --save-weights: %s: %s\n", save_dir,
                    strerror(errno));
            return MP_EXIT_USAGE;
        }
    }
    snprintf(lc.dir, sizeof(lc.dir), "%s/mpar-run-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(lc.dir) == NULL) {
        fprintf(stderr, "mpar-client run: cannot create a temporary folder: %s\n",
                strerror(errno));
        return MP_EXIT_FAILED;
    }
    /* A text job's final sample needs its weights: gathered into the
     * cluster's folder when the user keeps none. */
    bool want_sample = sample_tokens > 0 && mp_client_is_text_job(spec);
    char sample_dir[PATH_MAX + 16] = "";
    if (want_sample) {
        if (save_dir != NULL) {
            snprintf(sample_dir, sizeof(sample_dir), "%s", abs_save);
        } else {
            snprintf(sample_dir, sizeof(sample_dir), "%s/weights", lc.dir);
            if (mkdir(sample_dir, 0755) != 0) {
                want_sample = false;
            }
        }
    }
    struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term, old_hup;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);

    /* The coordinator: no devices, an ephemeral loopback port. */
    snprintf(lc.coord_sock, sizeof(lc.coord_sock), "%s/coord.sock", lc.dir);
    char state[PATH_MAX + 32];
    snprintf(state, sizeof(state), "%s/coord", lc.dir);
    char *cargv[] = {lc.mpard, "--name", "coordinator", "--coordinator", "--listen",
                     "127.0.0.1:0", "--socket", lc.coord_sock, "--state-dir", state,
                     "--devices", "none", "--heartbeat-ms", "500", "--dead-after-ms", "3000",
                     "--log-level", "notice", NULL};
    lc.pids[lc.npids++] = spawn_daemon(&lc, "coordinator.log", cargv);
    char listen[128] = "";
    if (!quiet) {
        fprintf(stderr, "mpar-client run: starting a local cluster: a coordinator and %d node%s "
                        "of %d CPU shard%s each (logs in %s)\n",
                nodes, nodes == 1 ? "" : "s", tp, tp == 1 ? "" : "s", lc.dir);
    }
    if (wait_alive(&lc, 0, listen, sizeof(listen)) != 0) {
        goto out_stop;
    }
    for (int i = 0; i < nodes; i++) {
        char nname[32], nsock[PATH_MAX + 64], nstate[PATH_MAX + 64], devs[32], log[48];
        snprintf(nname, sizeof(nname), "node-%d", i + 1);
        snprintf(nsock, sizeof(nsock), "%s/%s.sock", lc.dir, nname);
        snprintf(nstate, sizeof(nstate), "%s/%s", lc.dir, nname);
        snprintf(devs, sizeof(devs), "cpu:%d", tp);
        snprintf(log, sizeof(log), "%s.log", nname);
        char *nargv[] = {lc.mpard, "--name", nname, "--join", listen, "--socket", nsock,
                         "--state-dir", nstate, "--devices", devs, "--heartbeat-ms", "500",
                         "--dead-after-ms", "3000", "--log-level", "notice", NULL};
        lc.pids[lc.npids++] = spawn_daemon(&lc, log, nargv);
    }
    if (wait_alive(&lc, nodes, NULL, 0) != 0) {
        if (!lc_interrupted) {
            fprintf(stderr, "mpar-client run: the local cluster did not come up within 30 s; "
                            "see the logs in %s\n", lc.dir);
        }
        goto out_stop;
    }

    /* Submit and follow through this same program's cluster commands. */
    int pfd[2];
    if (pipe(pfd) != 0) {
        goto out_stop;
    }
    lc.submit_pid = fork();
    if (lc.submit_pid == 0) {
        char *argv[16];
        int a = 0;
        argv[a++] = lc.self;
        argv[a++] = "submit";
        argv[a++] = abs_spec;
        argv[a++] = "-f";
        argv[a++] = "-o";
        argv[a++] = "json";
        argv[a++] = "--socket";
        argv[a++] = lc.coord_sock;
        if (save_dir != NULL || want_sample) {
            argv[a++] = "--save-weights";
            argv[a++] = save_dir != NULL ? abs_save : sample_dir;
        }
        if (resume_dir != NULL) {
            argv[a++] = "--resume";
            argv[a++] = (char *)resume_dir;
        }
        argv[a] = NULL;
        signal(SIGINT, SIG_DFL);
        dup2(pfd[1], STDOUT_FILENO);
        if (quiet) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, STDERR_FILENO);
        }
        close(pfd[0]);
        close(pfd[1]);
        execv(lc.self, argv);
        _exit(127);
    }
    close(pfd[1]);
    json_error_t jerr;
    json_t *doc = json_loadfd(pfd[0], JSON_DISABLE_EOF_CHECK, &jerr);
    close(pfd[0]);
    if (lc_interrupted) {
        kill(lc.submit_pid, SIGTERM);
    }
    int status = 0;
    while (waitpid(lc.submit_pid, &status, 0) < 0 && errno == EINTR) {
        kill(lc.submit_pid, SIGTERM);
    }
    lc.submit_pid = 0;
    int sub_code = WIFEXITED(status) ? WEXITSTATUS(status) : MP_EXIT_FAILED;
    if (lc_interrupted) {
        json_decref(doc);
        goto out_stop;
    }
    json_t *job = json_object_get(doc, "job") ? json_object_get(doc, "job") : doc;
    if (doc == NULL) {
        fprintf(stderr, "mpar-client run: no result from the cluster (submit exited %d); see "
                        "the logs in %s\n", sub_code, lc.dir);
        code = sub_code ? sub_code : MP_EXIT_FAILED;
        goto out_stop;
    }
    code = sub_code;

    /* The timeline of the last step, next to the result. */
    char tl_default[PATH_MAX];
    if (timeline_path == NULL) {
        snprintf(tl_default, sizeof(tl_default), "%s-timeline.svg", name);
        timeline_path = tl_default;
    }
    bool have_svg = false;
    if (code == MP_EXIT_OK && strcmp(timeline_path, "none") != 0) {
        FILE *f = fopen(timeline_path, "w");
        char why[256] = "", title[256];
        snprintf(title, sizeof(title), "%s: pp=%d tp=%d dp=%d", name, pp, tp, dp);
        if (f == NULL) {
            fprintf(stderr, "mpar-client run: cannot write %s: %s\n", timeline_path,
                    strerror(errno));
        } else {
            have_svg = mp_client_trace_render(job, "svg", f, title, why, sizeof(why)) == 0;
            fclose(f);
            if (!have_svg) {
                fprintf(stderr, "mpar-client run: no timeline: %s\n", why);
                remove(timeline_path);
            }
        }
    }
    /* The learning curve, next to the timeline. */
    char cv_default[PATH_MAX];
    if (curve_path == NULL) {
        snprintf(cv_default, sizeof(cv_default), "%s-curve.svg", name);
        curve_path = cv_default;
    }
    bool have_curve = false;
    json_t *losses = json_object_get(job, "losses");
    if (code == MP_EXIT_OK && strcmp(curve_path, "none") != 0 && json_array_size(losses) > 0) {
        size_t n = json_array_size(losses);
        double *lv = mp_malloc(n * sizeof(double));
        if (lv != NULL) {
            for (size_t i = 0; i < n; i++) {
                json_t *v = json_array_get(losses, i);
                lv[i] = json_is_number(v) ? json_number_value(v) : NAN;
            }
            json_t *tl = json_object_get(job, "test_loss");
            char title[300];
            snprintf(title, sizeof(title), "%s: pp=%d tp=%d dp=%d", name, pp, tp, dp);
            have_curve = mp_client_write_curve(curve_path, title, lv, (int64_t)n,
                                               json_number_value(tl), json_is_number(tl)) == 0;
            mp_free(lv);
        }
    }
    char *sample = NULL;
    size_t sample_len = 0;
    if (code == MP_EXIT_OK && want_sample) {
        sample = mp_client_run_sample(spec, sample_dir, sample_tokens, &sample_len);
    }
    if (json) {
        json_object_set_new(job, "mode", json_string("cluster"));
        if (have_svg) {
            json_object_set_new(job, "timeline_svg", json_string(timeline_path));
        }
        if (have_curve) {
            json_object_set_new(job, "curve_svg", json_string(curve_path));
        }
        if (sample != NULL) {
            json_object_set_new(job, "sample", mp_client_json_bytes(sample, sample_len));
        }
        json_object_del(job, "timeline");
        char *text = json_dumps(job, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
        puts(text ? text : "{}");
        free(text);
    } else {
        const char *st = json_string_value(json_object_get(job, "state"));
        printf("job %s: %s on a local cluster (pp=%d, tp=%d, dp=%d)\n", name, st ? st : "?", pp,
               tp, dp);
        const char *reason = json_string_value(json_object_get(job, "reason"));
        if (reason != NULL && reason[0] != '\0' && code != MP_EXIT_OK) {
            printf("  reason: %s\n", reason);
        }
        json_t *v;
        double x, y;
        if ((v = json_object_get(job, "steps")) != NULL) {
            x = NAN;
            mp_json_real_value(json_object_get(job, "final_loss"), &x);
            printf("  steps %lld, final loss %.4f\n", (long long)json_integer_value(v), x);
        }
        if ((v = json_object_get(job, "test_accuracy")) != NULL && !json_is_null(v) &&
            mp_json_real_value(v, &x)) {
            json_t *tl = json_object_get(job, "test_loss");
            if (tl != NULL && !json_is_null(tl) && mp_json_real_value(tl, &y)) {
                printf("  test accuracy %.4f, test loss %.4f\n", x, y);
            } else {
                printf("  test accuracy %.4f\n", x);
            }
        }
        if ((v = json_object_get(job, "samples_per_s")) != NULL && mp_json_real_value(v, &x)) {
            double bubble = NAN, tps;
            mp_json_real_value(json_object_get(job, "bubble_fraction"), &bubble);
            json_t *t = json_object_get(job, "tokens_per_s");
            if (t != NULL && !json_is_null(t) && mp_json_real_value(t, &tps)) {
                printf("  %.0f tokens/s (%.0f samples/s), measured bubble fraction %.3f\n", tps, x,
                       bubble);
            } else {
                printf("  %.0f samples/s, measured bubble fraction %.3f\n", x, bubble);
            }
        }
        if (save_dir != NULL && code == MP_EXIT_OK) {
            printf("  weights saved in %s\n", save_dir);
        }
        if (have_svg) {
            printf("  timeline of the last step: %s\n", timeline_path);
        }
        if (have_curve) {
            printf("  learning curve: %s\n", curve_path);
        }
        if (sample != NULL) {
            mp_client_print_sample(stdout, sample, sample_len, sample_tokens);
        }
    }
    mp_free(sample);
    json_decref(doc);

out_stop:
    stop_cluster(&lc);
    if (lc_interrupted) {
        fprintf(stderr, "mpar-client run: interrupted; the local cluster is stopped\n");
        code = 128 + lc_interrupted;
    }
    if (code == MP_EXIT_OK || lc_interrupted) {
        nftw(lc.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    } else {
        fprintf(stderr, "mpar-client run: the daemons' logs are kept in %s\n", lc.dir);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    return code;
}
