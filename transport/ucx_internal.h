/*
 * ucx_internal.h - what the collectives (coll.c) use of the UCX transport
 * beyond its public API: raw tagged messages (no tensor header) and a wait
 * over a set of requests with an abort check.  Same threading rule as
 * ucx.h: a worker and everything of it belong to one thread.
 */
#ifndef MP_TRANSPORT_UCX_INTERNAL_H
#define MP_TRANSPORT_UCX_INTERNAL_H

#include "transport/ucx.h"

/*
 * Collective tags: bits 63..48 the group's namespace, 47..44 = 15 (no
 * tensor kind uses it), 43..28 the group's operation sequence number,
 * 27..20 the step inside the operation, 19..0 the source's rank in the
 * group.
 */
#define MP_XPORT_TAG_KIND_COLL 15u
#define MP_XPORT_COLL_STEP_MAX 0xffu

uint64_t mp_xport_tag_coll(uint16_t group, uint16_t seq, uint32_t step, uint32_t src);

/* Monotonic clock in nanoseconds. */
uint64_t mp_xport_now_ns(void);

/* A message of exactly len bytes with tag, to/from ep's peer. */
mp_status_t mp_xport_raw_send(mp_xport_ep_t *ep, uint64_t tag, const void *buf, size_t len,
                              mp_xport_req_t **req_p);
mp_status_t mp_xport_raw_recv(mp_xport_ep_t *ep, uint64_t tag, void *buf, size_t len,
                              mp_xport_req_t **req_p);

/* Returns MP_OK to go on waiting, an error to abort the wait with it. */
typedef mp_status_t (*mp_xport_check_fn)(void *arg);

/*
 * Waits until every request of reqs (NULL entries are skipped) completes,
 * one fails, check() reports an error, or deadline_ns (mp_xport_now_ns()
 * clock) passes; then frees them all (failing the rest) and returns the
 * first error, or MP_OK.  Unlike mp_xport_wait_all(), a failure does not
 * force-close the endpoints of sends still pending (a collective that
 * fails because of one dead member must not break the links between the
 * survivors): they get a short grace period to finish, then wait as zombies
 * until they complete or their endpoint is destroyed.
 */
mp_status_t mp_xport_wait_set(mp_xport_worker_t *worker, mp_xport_req_t **reqs, size_t n,
                              uint64_t deadline_ns, mp_xport_check_fn check, void *arg);

#endif
