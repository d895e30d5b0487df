/*
 * ucx.h - the data plane: UCX (ucp tag API) transport of tensors between
 * shard executors.
 *
 * One mp_xport_ctx_t per process (a ucp context), one mp_xport_worker_t per
 * executor thread (a ucp worker in UCS_THREAD_MODE_SINGLE: only the thread
 * that created it may touch it, its endpoints and its requests).  A worker's
 * address is exported as bytes so the engine can ship it through the
 * coordinator; a peer imports it with mp_xport_ep_connect().
 *
 * A tensor message is self-describing: a header (job, step, micro-batch,
 * kind, shape, dtype) then the payload.  The tag encodes (job, kind,
 * micro-batch, source rank), so a receive may be posted before or after its
 * send, and micro-batches may arrive in any order.  Small payloads travel in
 * one eager message with the header; large ones follow the header as a
 * second, zero-copy (rendezvous) message straight into the receiver's
 * buffer.
 *
 * Every wait has a timeout.  An idle wait sleeps on the worker's event fd
 * (ucp_worker_arm + poll) with a bounded backstop interval, never spins
 * longer than a short configurable burst.  Endpoints use
 * UCP_ERR_HANDLING_MODE_PEER, or a pidfd on the peer's process for peers on
 * this host (below): a dead peer fails every in-flight operation with it
 * (MP_ERR_PEER), never hangs.
 *
 * What UCX 1.13.1 (Debian 12) does, measured on loopback, and what we set:
 * - With peer error handling, UCX refuses its shared-memory transports
 *   unless UCX_POSIX_ERROR_HANDLING / UCX_SYSV_ERROR_HANDLING are "y", and
 *   even then it drops cma (no error handling there), so large messages
 *   between processes are copied through the FIFO: ucx_perftest -e moves
 *   16 MiB at ~1/5 of plain ucx_perftest's bandwidth.
 * - Shared memory never reports a dead peer (a receive from a SIGKILLed
 *   process waits out its timeout).
 * - So: exported addresses carry the process id, pid and network namespace
 *   and boot id; a peer on the same kernel, pid namespace and network
 *   namespace (a peer in another network namespace is another host, like
 *   the "hosts" of tests/integration/netns_cluster.sh) gets an endpoint without
 *   UCX error handling (shared memory + cma at full speed) and is watched
 *   with a pidfd (or is this very process), which fails everything in
 *   flight with it when it dies.  Peers elsewhere (tcp), and every peer
 *   when UCX_TLS leaves no shared memory (UCX_TLS=tcp), get
 *   UCP_ERR_HANDLING_MODE_PEER, and UCX reports their death itself.
 *   mp_xport_ctx_opts_t.local_err_peer puts PEER mode everywhere (setting
 *   the two variables above as environment defaults, since
 *   ucp_config_modify() rejects them).
 * - Both shared memory and tcp raise worker events (a receive sleeping with
 *   a 1 s backstop wakes within about a millisecond); over tcp the event fd
 *   can also stay readable with nothing to progress while a connection is
 *   wired up, which the wait loop detects and backs off from.
 * - UCX_TLS=tcp needs no UCX_NET_DEVICES on loopback: UCX 1.13 lists "lo"
 *   as a tcp device (ucx_info -d); lo and eth0 both work.
 */
#ifndef MP_TRANSPORT_UCX_H
#define MP_TRANSPORT_UCX_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct mp_xport_ctx mp_xport_ctx_t;
typedef struct mp_xport_worker mp_xport_worker_t;
typedef struct mp_xport_ep mp_xport_ep_t;
typedef struct mp_xport_req mp_xport_req_t;
typedef struct mp_xport_arena mp_xport_arena_t;

/* What a tensor message carries; 4 bits of the tag (15 is reserved for collectives). */
typedef enum {
    MP_XPORT_KIND_ACT = 1,   /* forward activation, stage s -> s+1 */
    MP_XPORT_KIND_GRAD = 2,  /* backward gradient, stage s+1 -> s */
    MP_XPORT_KIND_INPUT = 3, /* input micro-batch to the first stage */
    MP_XPORT_KIND_LABEL = 4, /* labels to the last stage */
    MP_XPORT_KIND_USER = 5,  /* anything else (tests, control tensors) */
    MP_XPORT_KIND_MAX = 14,
} mp_xport_kind_t;

typedef enum {
    MP_XPORT_DTYPE_F32 = 1,
    MP_XPORT_DTYPE_F64 = 2,
    MP_XPORT_DTYPE_I32 = 3,
    MP_XPORT_DTYPE_U8 = 4,
} mp_xport_dtype_t;

#define MP_XPORT_MAX_DIMS 4
/* Limits of the tag fields. */
#define MP_XPORT_JOB_MAX 0xffffu   /* 16 bits */
#define MP_XPORT_MB_MAX 0x7fffffu  /* 23 bits */
#define MP_XPORT_RANK_MAX 0xfffffu /* 20 bits */
/* Payloads up to this many bytes travel in one message with the header. */
#define MP_XPORT_INLINE_MAX 8192

/* The self-describing header of a tensor message. */
typedef struct {
    uint32_t job;         /* tag: low 16 bits */
    uint32_t step;        /* header only */
    uint32_t micro_batch; /* tag: 23 bits */
    uint32_t kind;        /* mp_xport_kind_t */
    uint32_t dtype;       /* mp_xport_dtype_t */
    uint32_t ndim;        /* 0..MP_XPORT_MAX_DIMS */
    uint64_t shape[MP_XPORT_MAX_DIMS];
} mp_xport_hdr_t;

/* Bytes of one element of dtype, 0 for an unknown one. */
size_t mp_xport_dtype_size(uint32_t dtype);
/* Payload bytes that hdr describes; MP_ERR_INVAL for a bad dtype/ndim or overflow. */
mp_status_t mp_xport_hdr_nbytes(const mp_xport_hdr_t *hdr, size_t *nbytes_p);

typedef struct {
    /* Read before the context is created; NULL values keep UCX's own
     * defaults/environment.  tls overrides UCX_TLS only when that is unset. */
    const char *tls;
    /* Dead-peer detection interval over transports that need keepalive
     * (shared memory); 0 = 1000 ms.  UCX_KEEPALIVE_INTERVAL wins when set. */
    int keepalive_ms;
    /* 1: UCX peer error handling on every endpoint, also between processes
     * of one host (then without cma: ~1/5 of the bandwidth there). */
    int local_err_peer;
} mp_xport_ctx_opts_t;

/*
 * Creates the process's ucp context (tag + wakeup features, workers single
 * threaded).  With local_err_peer it enables UCX's error handling on the
 * shared-memory transports through setenv() (never overriding the user's
 * environment): then call it before the process starts threads.
 */
mp_status_t mp_xport_ctx_create(const mp_xport_ctx_opts_t *opts, mp_xport_ctx_t **ctx_p);
void mp_xport_ctx_destroy(mp_xport_ctx_t *ctx);

typedef struct {
    uint32_t rank;      /* this worker's rank in the job: the source field of its tags */
    int64_t timeout_ms; /* default wait timeout; <= 0 = 30000 */
    int backstop_ms;    /* longest sleep between progress calls when idle; <= 0 = 10 */
    int spin_us;        /* progress-and-yield burst before sleeping; < 0 = none, 0 = 50 */
} mp_xport_worker_opts_t;

/* Creates a worker owned by the calling thread. */
mp_status_t mp_xport_worker_create(mp_xport_ctx_t *ctx, const mp_xport_worker_opts_t *opts,
                                   mp_xport_worker_t **worker_p);
/* Every endpoint of the worker must have been destroyed first. */
void mp_xport_worker_destroy(mp_xport_worker_t *worker);
/* An abort flag (NULL: none) that every wait of this worker, collectives'
 * included, checks between progress calls (at least every backstop): once
 * it reads true, the wait ends with MP_ERR_CANCELLED.  The flag may be set
 * from any thread and must outlive the worker or be unset first. */
void mp_xport_worker_set_abort(mp_xport_worker_t *worker, const atomic_bool *abort_flag);
uint32_t mp_xport_worker_rank(const mp_xport_worker_t *worker);
mp_xport_ctx_t *mp_xport_worker_ctx(const mp_xport_worker_t *worker);
int64_t mp_xport_worker_timeout_ms(const mp_xport_worker_t *worker);
/* The worker's address as bytes, to ship to peers; free it with mp_free(). */
mp_status_t mp_xport_worker_address(mp_xport_worker_t *worker, void **addr_p, size_t *len_p);
/* Progresses the worker once without blocking; returns 1 if anything happened. */
int mp_xport_worker_progress(mp_xport_worker_t *worker);

typedef struct {
    uint64_t sleeps;        /* poll() calls that blocked */
    uint64_t event_wakeups; /* of those, the ones woken by the event fd */
    uint64_t timer_wakeups; /* of those, the ones that ran into the backstop */
    uint64_t bytes_sent;    /* payload bytes of completed sends (tensors, raw, collectives) */
    uint64_t bytes_received; /* payload bytes of completed receives */
} mp_xport_worker_stats_t;
void mp_xport_worker_stats(const mp_xport_worker_t *worker, mp_xport_worker_stats_t *stats_p);

/*
 * Connects to a peer worker from its exported address; peer_rank is that
 * worker's rank (the source field its tags carry).
 */
mp_status_t mp_xport_ep_connect(mp_xport_worker_t *worker, const void *addr, size_t len,
                                uint32_t peer_rank, mp_xport_ep_t **ep_p);
/* Closes (flushing when the peer is alive, with a bounded wait) and frees. */
void mp_xport_ep_destroy(mp_xport_ep_t *ep);
uint32_t mp_xport_ep_peer_rank(const mp_xport_ep_t *ep);
/* MP_OK while the peer is reachable, else the error that failed the endpoint. */
mp_status_t mp_xport_ep_status(const mp_xport_ep_t *ep);

/*
 * A registered arena: one ucp_mem_map'ed region that tensors are carved
 * from, so that large sends and receives from it are zero-copy without a
 * registration per message.  Any thread of the process may create one; its
 * memory is used through the workers of the same context.
 */
mp_status_t mp_xport_arena_create(mp_xport_ctx_t *ctx, size_t bytes, mp_xport_arena_t **arena_p);
void mp_xport_arena_destroy(mp_xport_arena_t *arena);
void *mp_xport_arena_base(const mp_xport_arena_t *arena);
size_t mp_xport_arena_size(const mp_xport_arena_t *arena);
/* Bump allocation of 64-byte aligned bytes; NULL when the arena is full. */
void *mp_xport_arena_alloc(mp_xport_arena_t *arena, size_t bytes);
/* Frees everything carved so far. */
void mp_xport_arena_reset(mp_xport_arena_t *arena);

/*
 * Starts sending a tensor (hdr describes data) to ep.  The data must stay
 * untouched until the request completes.  On MP_OK *req_p is a request to
 * pass to mp_xport_wait()/mp_xport_req_test().
 */
mp_status_t mp_xport_send(mp_xport_ep_t *ep, const mp_xport_hdr_t *hdr, const void *data,
                          mp_xport_req_t **req_p);
/*
 * Posts a receive of the tensor (job, kind, micro_batch) sent by ep's peer
 * into buf (capacity bytes).  It may be posted before or after the send.
 */
mp_status_t mp_xport_recv(mp_xport_ep_t *ep, uint32_t job, uint32_t kind, uint32_t micro_batch,
                          void *buf, size_t capacity, mp_xport_req_t **req_p);
/*
 * Waits for req (timeout_ms <= 0: the worker's default) and frees it.
 * A receive fills *hdr_p (may be NULL) with the sender's header.  On a
 * timeout a receive is cancelled (its buffer is free once this returns) and
 * a send fails its endpoint: with UCX error handling (peers on other hosts)
 * that force-closes it, the only way UCX gives the buffer back.  To a peer
 * on this host UCX cannot close a live endpoint by force; the send is left
 * pending and the buffer may still be read by that peer (never written)
 * until mp_xport_ep_destroy().
 */
mp_status_t mp_xport_wait(mp_xport_req_t *req, int64_t timeout_ms, mp_xport_hdr_t *hdr_p);
/*
 * mp_xport_wait with an absolute deadline (mp_xport_now_ns) and a cancel
 * flag (NULL: none), checked between sleeps: it sleeps on the worker's
 * event fd as mp_xport_wait does, so that a message wakes it as soon as it
 * lands, and a raised flag is seen within the worker's backstop interval.
 * A timeout gives MP_ERR_TIMEOUT, the flag MP_ERR_CANCELLED; either way the
 * request is given up and freed as mp_xport_wait's timeout does.
 */
mp_status_t mp_xport_wait_until(mp_xport_req_t *req, uint64_t deadline_ns,
                                const atomic_bool *cancel, mp_xport_hdr_t *hdr_p);
/* Waits for all of reqs and frees them; returns the first error, if any. */
mp_status_t mp_xport_wait_all(mp_xport_req_t **reqs, size_t n, int64_t timeout_ms);
/* Progresses once; returns 1 if req is complete (wait on it then), else 0. */
int mp_xport_req_test(mp_xport_req_t *req);

/* Blocking helpers: send/recv then wait. */
mp_status_t mp_xport_send_wait(mp_xport_ep_t *ep, const mp_xport_hdr_t *hdr, const void *data,
                               int64_t timeout_ms);
mp_status_t mp_xport_recv_wait(mp_xport_ep_t *ep, uint32_t job, uint32_t kind, uint32_t micro_batch,
                               void *buf, size_t capacity, int64_t timeout_ms,
                               mp_xport_hdr_t *hdr_p);

#endif
