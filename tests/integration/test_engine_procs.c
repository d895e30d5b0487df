/*
 * test_engine_procs.c - the engine across processes, driven the way the
 * daemons drive it: the feeder and every shard executor in a forked
 * process of its own, each with its own UCX context, the feeder's data set
 * sizes and every worker address relayed by the parent (the
 * coordinator's role) through pipes.  The loss curve reported by the last
 * stage must equal the serial trainer's within 1e-5 relative, and the
 * test-split evaluation must match.  The parent never touches UCX (it is
 * not fork-safe); a child that stalls is killed at a deadline and fails
 * the test.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "engine/executor.h"
#include "engine/feeder.h"
#include "model/train.h"

#define STEPS 5
#define MAXP 8
#define DEADLINE_MS 60000

static const char *spec_json =
    "{\"name\": \"procs\", \"model\": {\"input\": 12, \"layers\": ["
    "{\"type\": \"linear\", \"out\": 16}, {\"type\": \"gelu\"},"
    "{\"type\": \"linear\", \"out\": 16}, {\"type\": \"relu\"},"
    "{\"type\": \"mlp_block\", \"hidden\": 16, \"ffn\": 32},"
    "{\"type\": \"linear\", \"out\": 6}], \"loss\": \"softmax_xent\"},"
    "\"data\": {\"dataset\": \"synthetic\", \"samples\": 120, \"test_samples\": 30,"
    "\"classes\": 6, \"seed\": 9},"
    "\"parallel\": {\"pp\": 2, \"tp\": 2, \"dp\": 1, \"micro_batches\": 3,"
    "\"schedule\": \"1f1b\"},"
    "\"train\": {\"batch_size\": 24, \"steps\": 5, \"optimizer\": \"sgd\", \"lr\": 0.1,"
    "\"momentum\": 0.9, \"seed\": 4}}";

static mp_spec_t *make_spec(void)
{
    mp_spec_t *spec = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_spec_parse(spec_json, strlen(spec_json), &spec, &err), MP_OK, "%s", err.msg);
    return spec;
}

/* ---- pipes with a deadline ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t deadline_ms;

static int put(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return -1;
        }
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static int get(int fd, void *p, size_t n)
{
    char *c = p;
    while (n > 0) {
        int64_t left = deadline_ms - now_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) {
            return -1;
        }
        ssize_t k = read(fd, c, n);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return -1;
        }
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static int put_blob(int fd, const void *p, uint64_t n)
{
    return put(fd, &n, sizeof(n)) || put(fd, p, n);
}

static int get_blob(int fd, void **p, uint64_t *n)
{
    if (get(fd, n, sizeof(*n)) != 0 || *n > 65536) {
        return -1;
    }
    *p = malloc(*n ? *n : 1);
    return get(fd, *p, *n);
}

/* ---- children ---- */

typedef struct {
    double loss_sum[STEPS];
    double eval_loss;
    int64_t eval_correct, eval_samples;
} child_result_t;

static void on_report(const mp_exec_report_t *rep, void *arg)
{
    child_result_t *r = arg;
    if (!rep->has_loss) {
        return;
    }
    if (rep->ev.kind == MP_ENGINE_EV_TRAIN) {
        r->loss_sum[rep->ev.step - 1] = rep->loss_sum;
    } else {
        r->eval_loss += rep->loss_sum;
        r->eval_correct += rep->correct;
        r->eval_samples += rep->samples;
    }
}

/* Reads the table of every rank's address (n + 1 entries) from the parent. */
static int get_table(int down, int n, void **addrs, size_t *lens)
{
    for (int r = 0; r <= n; r++) {
        uint64_t len;
        if (get_blob(down, &addrs[r], &len) != 0) {
            return -1;
        }
        lens[r] = len;
    }
    return 0;
}

/* The end: report, then close endpoints only once every process is done. */
static int finish(int up, int down, int32_t status, const child_result_t *res)
{
    char c;
    if (put(up, &status, sizeof(status)) || put(up, res, sizeof(*res)) || get(down, &c, 1)) {
        return -1;
    }
    return 0;
}

static int child_main(int rank, int n, int up, int down)
{
    mp_spec_t *spec = make_spec();
    mp_xport_ctx_t *ctx;
    mp_errbuf_t err = {{0}};
    void *addrs[MAXP + 1];
    size_t lens[MAXP + 1];
    child_result_t res;
    memset(&res, 0, sizeof(res));
    if (mp_xport_ctx_create(NULL, &ctx) != MP_OK) {
        return 10;
    }
    void *addr;
    size_t len;
    mp_status_t st;
    char c;
    if (rank == n) {
        mp_feeder_t *f;
        mp_feeder_opts_t fo = {.spec = spec, .job = 7, .timeout_ms = 20000};
        int64_t sizes[2];
        if (mp_feeder_create(ctx, &fo, &f, &err) != MP_OK ||
            mp_feeder_address(f, &addr, &len) != MP_OK) {
            return 11;
        }
        mp_feeder_sizes(f, &sizes[0], &sizes[1]);
        if (put(up, sizes, sizeof(sizes)) || put_blob(up, addr, len) ||
            get_table(down, n, addrs, lens)) {
            return 12;
        }
        st = mp_feeder_connect(f, (const void *const *)addrs, lens, &err);
        if (st == MP_OK) {
            st = mp_feeder_run(f, &err);
        }
        if (st != MP_OK) {
            fprintf(stderr, "feeder: %s\n", err.msg);
        }
        if (finish(up, down, st, &res) != 0) {
            return 13;
        }
        mp_feeder_disconnect(f);
        if (put(up, "x", 1) || get(down, &c, 1)) {
            return 14;
        }
        mp_feeder_destroy(f);
    } else {
        int64_t sizes[2];
        if (get(down, sizes, sizeof(sizes)) != 0) {
            return 20;
        }
        int t = rank % spec->parallel.tp, s = rank / spec->parallel.tp;
        mp_exec_opts_t eo = {
            .spec = spec,
            .job = 7,
            .stage = s,
            .tp_rank = t,
            .dp_rank = 0,
            .threads = 1,
            .train_n = sizes[0],
            .test_n = sizes[1],
            .timeout_ms = 20000,
            .on_report = on_report,
            .arg = &res,
        };
        mp_exec_t *ex;
        if (mp_exec_create(ctx, &eo, &ex, &err) != MP_OK ||
            mp_exec_address(ex, &addr, &len) != MP_OK) {
            fprintf(stderr, "rank %d: %s\n", rank, err.msg);
            return 21;
        }
        if (put_blob(up, addr, len) || get_table(down, n, addrs, lens)) {
            return 22;
        }
        st = mp_exec_connect(ex, (const void *const *)addrs, lens, &err);
        if (st == MP_OK) {
            st = mp_exec_run(ex, &err);
        }
        if (st != MP_OK) {
            fprintf(stderr, "rank %d: %s\n", rank, err.msg);
        }
        if (finish(up, down, st, &res) != 0) {
            return 23;
        }
        mp_exec_disconnect(ex);
        if (put(up, "x", 1) || get(down, &c, 1)) {
            return 24;
        }
        mp_exec_destroy(ex);
    }
    mp_xport_ctx_destroy(ctx);
    mp_spec_free(spec);
    return 0;
}

/* ---- the parent: the coordinator's relay ---- */

Test(engine_procs, shards_in_separate_processes_equal_serial, .timeout = 120)
{
    mp_spec_t *spec = make_spec();
    int n = spec->parallel.pp * spec->parallel.tp * spec->parallel.dp;
    cr_assert_leq(n, MAXP);
    deadline_ms = now_ms() + DEADLINE_MS;
    int up[MAXP + 1], down[MAXP + 1];
    pid_t pid[MAXP + 1];
    for (int r = 0; r <= n; r++) {
        int a[2], b[2];
        cr_assert_eq(pipe(a), 0);
        cr_assert_eq(pipe(b), 0);
        pid[r] = fork();
        cr_assert_geq(pid[r], 0);
        if (pid[r] == 0) {
            close(a[0]);
            close(b[1]);
            _exit(child_main(r, n, a[1], b[0]));
        }
        close(a[1]);
        close(b[0]);
        up[r] = a[0];
        down[r] = b[1];
    }
    void *addrs[MAXP + 1];
    uint64_t lens[MAXP + 1];
    int64_t sizes[2];
    int bad = get(up[n], sizes, sizeof(sizes)) || get_blob(up[n], &addrs[n], &lens[n]);
    for (int r = 0; r < n && !bad; r++) {
        bad = put(down[r], sizes, sizeof(sizes)) || get_blob(up[r], &addrs[r], &lens[r]);
    }
    for (int r = 0; r <= n && !bad; r++) {
        for (int j = 0; j <= n && !bad; j++) {
            bad = put_blob(down[r], addrs[j], lens[j]);
        }
    }
    child_result_t res[MAXP + 1];
    int32_t status[MAXP + 1];
    for (int r = 0; r <= n && !bad; r++) {
        bad = get(up[r], &status[r], sizeof(status[r])) || get(up[r], &res[r], sizeof(res[r]));
    }
    char c;
    for (int r = 0; r <= n && !bad; r++) {
        bad = put(down[r], "g", 1);
    }
    for (int r = 0; r <= n && !bad; r++) {
        bad = get(up[r], &c, 1);
    }
    for (int r = 0; r <= n && !bad; r++) {
        bad = put(down[r], "g", 1);
    }
    for (int r = 0; r <= n; r++) {
        int ws;
        if (bad) {
            kill(pid[r], SIGKILL);
        }
        waitpid(pid[r], &ws, 0);
        cr_expect(!bad && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child %d: exit %d", r,
                  WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
        close(up[r]);
        close(down[r]);
    }
    cr_assert(!bad, "a child stalled or died (see stderr)");
    for (int r = 0; r <= n; r++) {
        cr_expect_eq(status[r], MP_OK, "rank %d: %s", r, mp_strerror(status[r]));
    }
    /* The reference runs after the fork: OpenMP does not survive one. */
    mp_train_opts_t so = {.device = "cpu", .threads = 1};
    mp_train_result_t ref;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_train_serial(spec, &so, &ref, &err), MP_OK, "%s", err.msg);
    /* The last stage's tp rank 0 reports the losses. */
    int last0 = (spec->parallel.pp - 1) * spec->parallel.tp;
    for (int i = 0; i < STEPS; i++) {
        double loss = res[last0].loss_sum[i] / (double)spec->train.batch_size;
        cr_expect_leq(fabs(loss - ref.losses[i]), 1e-5 * fabs(ref.losses[i]),
                      "step %d: loss %.9g, serial %.9g", i + 1, loss, ref.losses[i]);
    }
    cr_expect_eq(res[last0].eval_samples, 30);
    cr_expect_leq(fabs(res[last0].eval_loss / 30 - ref.test_loss), 1e-4 * ref.test_loss);
    /* The other last-stage rank computes the loss too but does not report it. */
    cr_expect_eq(res[last0 + 1].loss_sum[0], 0.0);
    for (int r = 0; r <= n; r++) {
        free(addrs[r]);
    }
    mp_train_result_free(&ref);
    mp_spec_free(spec);
}
