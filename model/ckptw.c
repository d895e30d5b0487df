/*
 * ckptw.c - the checkpoint writer thread of a shard (ckptw.h): waits for a
 * snapshot under a mutex, writes it with blocking file I/O, reports the
 * outcome through the callback (from this thread), and sleeps again.
 * Owns its thread; the snapshot stays the executor's.
 */
#include "model/ckptw.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>

#include "common/alloc.h"
#include "common/log.h"

struct mp_ckptw {
    char dir[PATH_MAX];
    mp_ckptw_done_cb_t cb;
    void *arg;
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const mp_ckpt_snap_t *job; /* to write, or being written */
    bool busy, stop;
};

static void *writer_main(void *arg)
{
    mp_ckptw_t *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->job == NULL && !w->stop) {
            pthread_cond_wait(&w->cv, &w->mu);
        }
        if (w->job == NULL) {
            break;
        }
        const mp_ckpt_snap_t *snap = w->job;
        pthread_mutex_unlock(&w->mu);
        mp_errbuf_t err = {{0}};
        char path[PATH_MAX + 128] = "";
        mp_status_t st = mp_ckpt_snap_write(snap, w->dir, path, sizeof(path), &err);
        if (st == MP_OK) {
            mp_ckpt_fault("after_first_file");
        }
        if (w->cb != NULL) {
            w->cb(mp_ckpt_snap_step(snap), st, st == MP_OK ? path : err.msg, w->arg);
        }
        pthread_mutex_lock(&w->mu);
        w->job = NULL;
        w->busy = false;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

mp_status_t mp_ckptw_create(const char *dir, mp_ckptw_done_cb_t cb, void *arg, mp_ckptw_t **w_p)
{
    mp_ckptw_t *w = mp_calloc(1, sizeof(*w));
    if (w == NULL) {
        return MP_ERR_NOMEM;
    }
    snprintf(w->dir, sizeof(w->dir), "%s", dir);
    w->cb = cb;
    w->arg = arg;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->tid, NULL, writer_main, w) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        mp_free(w);
        return MP_ERR_NOMEM;
    }
    *w_p = w;
    return MP_OK;
}

void mp_ckptw_wait_idle(mp_ckptw_t *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->busy) {
        pthread_cond_wait(&w->cv, &w->mu);
    }
    pthread_mutex_unlock(&w->mu);
}

void mp_ckptw_submit(mp_ckptw_t *w, const mp_ckpt_snap_t *snap)
{
    pthread_mutex_lock(&w->mu);
    while (w->busy) {
        pthread_cond_wait(&w->cv, &w->mu);
    }
    w->job = snap;
    w->busy = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void mp_ckptw_destroy(mp_ckptw_t *w)
{
    if (w == NULL) {
        return;
    }
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->tid, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    mp_free(w);
}
