/*
 * mbox.c - how worker threads talk to the libuv thread: a mailbox (a
 * locked queue and a uv_async_t) whose messages the loop hands to its
 * owner's callback; and the process's one UCX context (ucp context), which
 * every executor, feeder and gatherer thread of this mpard shares, made on
 * first use by whichever thread needs it first.  mp_mbox_post runs on any
 * thread; the rest on the libuv thread.
 */
#include <pthread.h>

#include "common/log.h"
#include "daemon/mbox.h"

static void on_async(uv_async_t *a)
{
    mp_mbox_t *mb = a->data;
    for (;;) {
        pthread_mutex_lock(&mb->mu);
        mp_mbox_msg_t *m = mb->head;
        if (m != NULL) {
            mb->head = m->next;
            if (mb->head == NULL) {
                mb->tail = NULL;
            }
        }
        pthread_mutex_unlock(&mb->mu);
        if (m == NULL) {
            return;
        }
        m->next = NULL;
        mb->cb(mb->owner, m);
    }
}

mp_status_t mp_mbox_init(uv_loop_t *loop, mp_mbox_t *mb, mp_mbox_cb_t cb, void *owner)
{
    mb->head = mb->tail = NULL;
    mb->cb = cb;
    mb->owner = owner;
    if (pthread_mutex_init(&mb->mu, NULL) != 0) {
        return MP_ERR_NOMEM;
    }
    int rc = uv_async_init(loop, &mb->async, on_async);
    if (rc != 0) {
        pthread_mutex_destroy(&mb->mu);
        mp_err("mailbox: %s", uv_strerror(rc));
        return MP_ERR_NOMEM;
    }
    mb->async.data = mb; /* mp_mbox_owns tells a mailbox by this */
    mb->open = true;
    return MP_OK;
}

void mp_mbox_post(mp_mbox_t *mb, mp_mbox_msg_t *m)
{
    m->next = NULL;
    pthread_mutex_lock(&mb->mu);
    if (mb->tail != NULL) {
        mb->tail->next = m;
    } else {
        mb->head = m;
    }
    mb->tail = m;
    pthread_mutex_unlock(&mb->mu);
    uv_async_send(&mb->async);
}

void mp_mbox_drain(mp_mbox_t *mb)
{
    if (mb->open) {
        on_async(&mb->async);
    }
}

bool mp_mbox_owns(const uv_handle_t *h)
{
    /* Only a mailbox's async has itself as data (async is mp_mbox_t's first
     * member); the pointers are compared, nothing behind them is read. */
    return h->type == UV_ASYNC && h->data == (const void *)h;
}

void mp_mbox_close(mp_mbox_t *mb)
{
    if (!mb->open) {
        return;
    }
    /* Marked first: the owner may close it again from a callback below. */
    mb->open = false;
    on_async(&mb->async); /* what the threads said last is still handled */
    uv_close((uv_handle_t *)&mb->async, NULL);
}

/* ---- the process's UCX context ------------------------------------------ */

static pthread_mutex_t ctx_mu = PTHREAD_MUTEX_INITIALIZER;
static mp_xport_ctx_t *ctx_shared;

mp_status_t mpard_xport_ctx(mp_xport_ctx_t **ctx_p)
{
    mp_status_t st = MP_OK;
    pthread_mutex_lock(&ctx_mu);
    if (ctx_shared == NULL) {
        mp_xport_ctx_opts_t o = {0};
        st = mp_xport_ctx_create(&o, &ctx_shared);
        if (st != MP_OK) {
            mp_err("cannot create the UCX context: %s", mp_strerror(st));
        }
    }
    if (st == MP_OK) {
        *ctx_p = ctx_shared;
    }
    pthread_mutex_unlock(&ctx_mu);
    return st;
}

void mpard_xport_ctx_release(void)
{
    pthread_mutex_lock(&ctx_mu);
    if (ctx_shared != NULL) {
        mp_xport_ctx_destroy(ctx_shared);
        ctx_shared = NULL;
    }
    pthread_mutex_unlock(&ctx_mu);
}
