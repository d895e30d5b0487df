/*
 * link.h - a connection as the roles see it: the coordinator keeps a link
 * per registered node and per watcher of a job, a node's agent one per
 * request it forwards.  session.c implements the operations (its sessions
 * begin with one), so the roles send and close without calling up into
 * it.  libuv thread.
 */
#ifndef MP_DAEMON_LINK_H
#define MP_DAEMON_LINK_H

#include "common/status.h"
#include "proto/mpar.pb-c.h"

typedef struct mp_link mp_link_t;
typedef struct mp_coord_node mp_coord_node_t;

typedef struct {
    /* Sends one envelope (a JSON line on the status socket). */
    mp_status_t (*send)(mp_link_t *link, const Mpar__Envelope *env);
    /* Closes the connection (a node replaced by its own re-registration,
     * or declared DEAD). */
    void (*close)(mp_link_t *link, const char *why);
} mp_link_ops_t;

struct mp_link {
    const mp_link_ops_t *ops;
    mp_coord_node_t *node; /* the node this connection registered, or NULL */
};

static inline mp_status_t mp_link_send(mp_link_t *l, const Mpar__Envelope *env)
{
    return l->ops->send(l, env);
}

static inline void mp_link_close(mp_link_t *l, const char *why)
{
    l->ops->close(l, why);
}

#endif
