/*
 * mbox.h - worker threads -> libuv loop messages, and the process's UCX
 * context (mbox.c).  The bottom of daemon/: it depends on no other part.
 */
#ifndef MP_DAEMON_MBOX_H
#define MP_DAEMON_MBOX_H

#include <pthread.h>
#include <stdbool.h>
#include <uv.h>

#include "common/status.h"
#include "transport/ucx.h"

/* mbox.c: a message a worker thread hands to the libuv thread; embed it
 * first in the sender's own struct. */
typedef struct mp_mbox_msg {
    struct mp_mbox_msg *next;
} mp_mbox_msg_t;
typedef void (*mp_mbox_cb_t)(void *owner, mp_mbox_msg_t *msg);
typedef struct {
    uv_async_t async; /* first: mp_mbox_owns relies on it */
    pthread_mutex_t mu;
    mp_mbox_msg_t *head, *tail;
    mp_mbox_cb_t cb;
    void *owner;
    bool open;
} mp_mbox_t;
mp_status_t mp_mbox_init(uv_loop_t *loop, mp_mbox_t *mb, mp_mbox_cb_t cb, void *owner);
/* Any thread; the loop calls cb(owner, msg), which owns msg from then on. */
void mp_mbox_post(mp_mbox_t *mb, mp_mbox_msg_t *msg);
/* Handles what is queued now (the loop thread, e.g. while joining threads). */
void mp_mbox_drain(mp_mbox_t *mb);
/* Handles what is queued, then closes (no thread may post afterwards):
 * its owner does so once the last thread that posts to it has exited. */
void mp_mbox_close(mp_mbox_t *mb);
/* Whether h is a mailbox's async, which a shutdown's sweep of the loop's
 * handles leaves to its owner (a thread may still post to it). */
bool mp_mbox_owns(const uv_handle_t *h);
/* The process's UCX context, made on first use (any thread). */
mp_status_t mpard_xport_ctx(mp_xport_ctx_t **ctx_p);
/* At exit, after every thread that used it has ended. */
void mpard_xport_ctx_release(void);

#endif
