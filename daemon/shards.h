/*
 * shards.h - the executor threads of this node (shard.c): one per shard
 * placed on it, reporting to the coordinator through the send callback its
 * creator (the agent) hands it.  libuv thread, but for the threads.
 */
#ifndef MP_DAEMON_SHARDS_H
#define MP_DAEMON_SHARDS_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/ctx.h"
#include "proto/mpar.pb-c.h"

typedef struct mp_shards mp_shards_t;

/* Sends an envelope to the coordinator (the agent's connection). */
typedef mp_status_t (*mp_shards_send_t)(void *arg, const Mpar__Envelope *env);

mp_status_t mp_shards_create(mpard_t *d, mp_shards_send_t send, void *send_arg,
                             mp_shards_t **shards_p);
void mp_shards_on_envelope(mp_shards_t *sh, const Mpar__Envelope *env);
/* Cancels every job (the coordinator is gone, or mpard stops). */
void mp_shards_abort_all(mp_shards_t *sh, const char *reason);
uint32_t mp_shards_running(const mp_shards_t *sh);
/* What each executor of this node does now, into out[cap] (strings point
 * into the shards' records and static names, valid until the loop runs
 * again); the payload bytes the node's executors sent and received so far,
 * ended ones included.  Returns the number of entries. */
size_t mp_shards_probe(mp_shards_t *sh, Mpar__ShardProbe *out, size_t cap, uint64_t *sent_p,
                       uint64_t *received_p);
/* Shutdown: cancels every job and returns; each thread is joined when its
 * exit reaches the loop, and the mailbox closes after the last one. */
void mp_shards_stop(mp_shards_t *sh);
/* After the loop: joins any thread still there (none, normally), frees. */
void mp_shards_destroy(mp_shards_t *sh);

#endif
