/*
 * agent.h - the node role (agent.c): registration with the coordinator,
 * heartbeats (with what every executor does), the node's shards, and the
 * forwarding of a client's request to the coordinator.  libuv thread.
 */
#ifndef MP_DAEMON_AGENT_H
#define MP_DAEMON_AGENT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"
#include "daemon/ctx.h"
#include "daemon/link.h"
#include "proto/mpar.pb-c.h"

mp_status_t mp_agent_create(mpard_t *d, mp_agent_t **agent_p);
bool mp_agent_registered(const mp_agent_t *a);
void mp_agent_stop(mp_agent_t *a);  /* says Goodbye, closes */
void mp_agent_abort(mp_agent_t *a); /* closes its connection now */
void mp_agent_destroy(mp_agent_t *a);
/* A node that is not the coordinator passes a client's request on to it and
 * relays the replies (and a watch's events) back to the session. */
mp_status_t mp_agent_forward(mp_agent_t *a, mp_link_t *s, const Mpar__Envelope *req,
                             const char *who, mp_errbuf_t *err);
void mp_agent_link_closed(mp_agent_t *a, mp_link_t *s);
/* Requests of s still waiting for the coordinator's reply. */
size_t mp_agent_pending(const mp_agent_t *a, const mp_link_t *s);
const char *mp_agent_state(const mp_agent_t *a);
/* Sends to the coordinator; MP_ERR_PEER when not connected. */
mp_status_t mp_agent_send(mp_agent_t *a, const Mpar__Envelope *env);

#endif
