/*
 * test_engine_feeder.c - the data feeder and the job geometry with samples
 * of more than one label (text windows: T positions, T next tokens): the
 * geometry's widths, and a feeder over a real UCX worker streaming a
 * shard every input micro-batch [R, T] and every label micro-batch [R, T]
 * of the serial trainer's order, then the test split in chunks, exactly
 * the windows of DESIGN.md "Text data".  A one-stage grid, so that this
 * thread plays the only shard; the feeder runs on its own thread.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "engine/feeder.h"
#include "engine/internal.h"
#include "engine/job.h"
#include "model/data.h"

enum { TEXT_LEN = 1000, T = 4, BATCH = 8, M = 2, STEPS = 3 };

static unsigned char text_byte(int i) { return (unsigned char)((i * 53 + i / 5) & 0xFF); }

/* A text spec over a temporary file of TEXT_LEN bytes (its path in path). */
static mp_spec_t *text_spec(char *path, size_t size, unsigned char *bytes)
{
    snprintf(path, size, "/tmp/mpar-test-feeder-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    for (int i = 0; i < TEXT_LEN; i++) {
        bytes[i] = text_byte(i);
    }
    cr_assert_eq(write(fd, bytes, TEXT_LEN), TEXT_LEN);
    close(fd);
    char json[1024];
    snprintf(json, sizeof(json),
             "{\"name\": \"feed\", \"model\": {\"layers\": ["
             "{\"type\": \"embedding\", \"vocab\": 256, \"dim\": 8, \"max_seq\": 8},"
             "{\"type\": \"linear\", \"out\": 256}]},"
             "\"data\": {\"dataset\": \"text\", \"path\": \"%s\", \"block_size\": %d},"
             "\"parallel\": {\"micro_batches\": %d, \"schedule\": \"gpipe\"},"
             "\"train\": {\"batch_size\": %d, \"steps\": %d, \"optimizer\": \"sgd\", "
             "\"lr\": 0.1, \"shuffle\": false}}",
             path, T, M, BATCH, STEPS);
    mp_spec_t *spec = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_spec_parse(json, strlen(json), &spec, &err), MP_OK, "%s", err.msg);
    return spec;
}

Test(geom, a_text_sample_has_block_size_inputs_and_labels)
{
    char path[64];
    unsigned char bytes[TEXT_LEN];
    mp_spec_t *spec = text_spec(path, sizeof(path), bytes);
    mp_engine_geom_t g;
    mp_errbuf_t err = {{0}};
    /* 900 training bytes: 224 windows; 100 test bytes: 24. */
    cr_assert_eq(mp_engine_geom_init(spec, 224, 24, &g, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(g.in_dim, T);
    cr_expect_eq(g.label_dim, T);
    cr_expect_eq(g.mb_rows, BATCH / M);
    cr_expect_eq(g.steps_per_epoch, 224 / BATCH);
    cr_expect_eq(g.eval_chunks, 24 / (BATCH / M));
    mp_spec_free(spec);
    unlink(path);
}

typedef struct {
    mp_xport_ctx_t *ctx;
    const mp_spec_t *spec;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *faddr, *saddr; /* the feeder's and the shard's worker addresses */
    size_t flen, slen;
    bool failed;
    mp_status_t st;
    mp_errbuf_t err;
} feed_t;

static void *feeder_main(void *arg)
{
    feed_t *f = arg;
    mp_feeder_t *fd = NULL;
    mp_errbuf_t err = {{0}};
    mp_feeder_opts_t o = {.spec = f->spec, .job = 1, .timeout_ms = 20000};
    mp_status_t st = mp_feeder_create(f->ctx, &o, &fd, &err);
    void *addr = NULL;
    size_t len = 0;
    if (st == MP_OK) {
        st = mp_feeder_address(fd, &addr, &len);
    }
    pthread_mutex_lock(&f->mu);
    f->faddr = addr;
    f->flen = len;
    f->failed = st != MP_OK;
    pthread_cond_broadcast(&f->cv);
    while (st == MP_OK && f->saddr == NULL) {
        pthread_cond_wait(&f->cv, &f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    if (st == MP_OK) {
        const void *addrs[1] = {f->saddr};
        size_t lens[1] = {f->slen};
        st = mp_feeder_connect(fd, addrs, lens, &err);
    }
    if (st == MP_OK) {
        st = mp_feeder_run(fd, &err);
    }
    if (fd != NULL) {
        mp_feeder_disconnect(fd);
        mp_feeder_destroy(fd);
    }
    f->st = st;
    f->err = err;
    return NULL;
}

/* Receives one [rows, cols] tensor of `kind` with sequence number seq. */
static void recv2d(mp_xport_ep_t *ep, uint32_t kind, uint64_t seq, void *buf, int64_t rows,
                   int64_t cols)
{
    mp_xport_hdr_t hdr;
    mp_status_t st = mp_xport_recv_wait(ep, 1, kind, mp_engine_tag_mb(seq), buf,
                                        (size_t)(rows * cols) * 4, 20000, &hdr);
    cr_assert_eq(st, MP_OK, "kind %u seq %llu: %s", kind, (unsigned long long)seq,
                 mp_strerror(st));
    cr_assert_eq(hdr.ndim, 2);
    cr_assert_eq(hdr.shape[0], (uint64_t)rows, "kind %u: %llu rows", kind,
                 (unsigned long long)hdr.shape[0]);
    cr_assert_eq(hdr.shape[1], (uint64_t)cols, "kind %u: %llu columns", kind,
                 (unsigned long long)hdr.shape[1]);
    cr_assert_eq(hdr.dtype, kind == MP_XPORT_KIND_LABEL ? MP_XPORT_DTYPE_I32 : MP_XPORT_DTYPE_F32);
}

/* Rows [first, first + rows) of a split beginning at byte `base`: exactly its windows. */
static void expect_rows(const float *x, const int32_t *y, const unsigned char *bytes, int64_t base,
                        int64_t first, int64_t rows)
{
    for (int64_t r = 0; r < rows; r++) {
        for (int t = 0; t < T; t++) {
            int64_t b = base + (first + r) * T + t;
            cr_expect_eq(x[r * T + t], (float)bytes[b], "sample %lld pos %d input",
                         (long long)(first + r), t);
            cr_expect_eq(y[r * T + t], bytes[b + 1], "sample %lld pos %d label",
                         (long long)(first + r), t);
        }
    }
}

Test(feeder, streams_every_position_label_of_text_windows, .timeout = 60)
{
    char path[64];
    unsigned char bytes[TEXT_LEN];
    mp_spec_t *spec = text_spec(path, sizeof(path), bytes);
    mp_xport_ctx_opts_t co = {0};
    feed_t f = {.spec = spec};
    cr_assert_eq(mp_xport_ctx_create(&co, &f.ctx), MP_OK);
    pthread_mutex_init(&f.mu, NULL);
    pthread_cond_init(&f.cv, NULL);
    pthread_t tid;
    cr_assert_eq(pthread_create(&tid, NULL, feeder_main, &f), 0);

    /* The shard: rank 0 of a one-rank grid; the feeder is rank 1. */
    mp_xport_worker_t *w = NULL;
    mp_xport_worker_opts_t wo = {.rank = 0, .timeout_ms = 20000};
    cr_assert_eq(mp_xport_worker_create(f.ctx, &wo, &w), MP_OK);
    void *saddr;
    size_t slen;
    cr_assert_eq(mp_xport_worker_address(w, &saddr, &slen), MP_OK);
    pthread_mutex_lock(&f.mu);
    while (f.faddr == NULL && !f.failed) {
        pthread_cond_wait(&f.cv, &f.mu);
    }
    f.saddr = saddr;
    f.slen = slen;
    pthread_cond_broadcast(&f.cv);
    pthread_mutex_unlock(&f.mu);
    cr_assert(!f.failed, "the feeder did not start");
    mp_xport_ep_t *ep = NULL;
    cr_assert_eq(mp_xport_ep_connect(w, f.faddr, f.flen, 1, &ep), MP_OK);

    mp_engine_geom_t g;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_engine_geom_init(spec, 224, 24, &g, &err), MP_OK, "%s", err.msg);
    int64_t R = g.mb_rows;
    float x[BATCH * T];
    int32_t y[BATCH * T];
    int64_t it = 0, trains = 0, chunks = 0;
    for (;;) {
        mp_engine_ev_t ev;
        mp_engine_geom_next(&g, &it, &ev);
        if (ev.kind == MP_ENGINE_EV_END) {
            break;
        }
        uint64_t seq = mp_engine_geom_seq(&g, 0, &ev);
        if (ev.kind == MP_ENGINE_EV_TRAIN) {
            /* No shuffle: batch k is training samples [k B, k B + B). */
            for (int k = 0; k < M; k++) {
                recv2d(ep, MP_XPORT_KIND_INPUT, seq + (uint64_t)k, x, R, T);
                recv2d(ep, MP_XPORT_KIND_LABEL, seq + (uint64_t)k, y, R, T);
                expect_rows(x, y, bytes, 0, ev.step_in_epoch * BATCH + k * R, R);
            }
            trains++;
        } else {
            for (int64_t c = 0; c < g.eval_chunks; c++) {
                int64_t rows = mp_engine_geom_chunk_rows(&g, c);
                recv2d(ep, MP_XPORT_KIND_INPUT, seq + (uint64_t)c, x, rows, T);
                recv2d(ep, MP_XPORT_KIND_LABEL, seq + (uint64_t)c, y, rows, T);
                /* The test split starts at byte floor(0.9 * 1000) = 900. */
                expect_rows(x, y, bytes, 900, c * g.eval_rows, rows);
                chunks++;
            }
        }
        int32_t token = (int32_t)ev.index;
        mp_xport_hdr_t hdr =
            mp_engine_hdr(1, MP_XPORT_KIND_USER, (uint64_t)ev.index, (uint64_t)ev.step, 1, 1, true);
        cr_assert_eq(mp_xport_send_wait(ep, &hdr, &token, 20000), MP_OK);
    }
    pthread_join(tid, NULL);
    cr_expect_eq(f.st, MP_OK, "feeder: %s", f.err.msg);
    cr_expect_eq(trains, STEPS);
    cr_expect_eq(chunks, 24 / R);
    mp_xport_ep_destroy(ep);
    mp_xport_worker_destroy(w);
    mp_free(saddr);
    mp_free(f.faddr);
    mp_xport_ctx_destroy(f.ctx);
    mp_spec_free(spec);
    unlink(path);
}
