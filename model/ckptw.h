/*
 * ckptw.h - a shard's checkpoint writer thread: the executor (or the
 * serial trainer, a grid of one) copies its blocks to a host snapshot at a
 * step boundary (model/ckpt.h) and hands it here; this thread writes it as the shard's safetensors file (fsync,
 * rename, fsync of the folder) while training goes on, then calls the
 * callback from its own thread with the outcome.  One write at a time: a
 * snapshot is handed over only when the previous one is written
 * (mp_ckptw_wait_idle), which is what a checkpoint costs training when the
 * disk is slower than the checkpoints are frequent.
 *
 * mp_ckptw_create, _wait_idle, _submit and _destroy are called from the
 * executor's (or trainer's) thread.  Fault injection (model/ckpt.h): MPAR_FAULT=
 * after_first_file kills the process once its first file is durable.
 */
#ifndef MP_MODEL_CKPTW_H
#define MP_MODEL_CKPTW_H

#include <stdint.h>

#include "common/status.h"
#include "model/ckpt.h"

typedef struct mp_ckptw mp_ckptw_t;

/* path: the file written (st MP_OK), or msg: why it was not. */
typedef void (*mp_ckptw_done_cb_t)(int64_t step, mp_status_t st, const char *path_or_msg,
                                   void *arg);

mp_status_t mp_ckptw_create(const char *dir, mp_ckptw_done_cb_t cb, void *arg, mp_ckptw_t **w_p);
/* Blocks until no write is in flight (the snapshot may be refilled). */
void mp_ckptw_wait_idle(mp_ckptw_t *w);
/* Writes snap (the caller's, untouched until the write is done). */
void mp_ckptw_submit(mp_ckptw_t *w, const mp_ckpt_snap_t *snap);
/* Finishes the write in flight, then ends the thread. */
void mp_ckptw_destroy(mp_ckptw_t *w);

#endif
