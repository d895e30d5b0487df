/*
 * ucx.c - the UCX data plane: context, workers, endpoints, registered
 * arenas, and tagged tensor messages with their requests.
 *
 * Owns the process's ucp context and, per executor thread, a ucp worker
 * with its endpoints and in-flight requests.  A worker and everything
 * hanging off it run on the thread that created it (UCS_THREAD_MODE_SINGLE);
 * only the context and the arena list are shared, the latter under a mutex.
 *
 * A request is ours (mp_xport_req_t) and holds up to two UCX operations
 * ("subs"): a tensor send is header(+inline payload) and, for payloads over
 * MP_XPORT_INLINE_MAX, the payload as a second message that UCX moves by
 * rendezvous, zero-copy.  A tensor receive first takes the header into the
 * request's bounce buffer, then posts the payload receive into the user's
 * buffer; both steps are driven from worker progress, so a receive that
 * nobody waits on still makes progress and never stalls its sender.
 * UCX completion callbacks write into the request, so a request whose UCX
 * operations are still pending is never freed: it becomes a zombie on the
 * worker's list until they complete.
 */
#include "transport/ucx.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include "common/alloc.h"
#include "common/log.h"
#include "transport/ucx_internal.h"

#define WIRE_MAGIC 0x4d505831u /* "MPX1" */
#define WIRE_VERSION 1
#define WIRE_FLAG_INLINE 1u
#define TAG_PART_PAYLOAD (1ull << 20)
#define TAG_FULL_MASK (~0ull)
#define MAX_ARENAS 32
#define FREE_REQS_MAX 64
#define CLOSE_WAIT_NS (2ull * 1000 * 1000 * 1000)
#define ADDR_MAGIC 0x4d504144u /* "MPAD" */
#define LIVENESS_PERIOD_NS (50ull * 1000 * 1000)

/*
 * What an exported address carries in front of the ucp address: who the
 * worker's process is.  UCX 1.13's shared-memory transports never notice
 * that a peer process died (measured: a receive from a SIGKILLed peer
 * waits out its whole timeout), so for a peer on the same kernel, in the
 * same pid namespace and the same network namespace we watch its process
 * with a pidfd.  The network namespace is part of "same host": a peer in
 * another one (a container, or a "host" of the netns test bed) is reached
 * over the network like any other machine, and a pidfd on it would see its
 * process but not its link, so it gets UCX's peer error handling instead.
 */
typedef struct {
    uint32_t magic;
    uint32_t pid;
    uint64_t pidns;   /* inode of /proc/self/ns/pid */
    uint64_t netns;   /* inode of /proc/self/ns/net */
    char boot_id[40]; /* /proc/sys/kernel/random/boot_id */
} addr_hdr_t;

/* The header on the wire (host byte order: the cluster is homogeneous x86-64/arm64 LE). */
typedef struct {
    uint32_t magic;
    uint16_t version;
    uint16_t flags;
    uint32_t job, step, micro_batch, kind, dtype, ndim;
    uint64_t shape[MP_XPORT_MAX_DIMS];
    uint64_t nbytes;
} wire_hdr_t;

struct mp_xport_arena {
    mp_xport_ctx_t *ctx;
    ucp_mem_h memh;
    char *base;
    size_t size;
    size_t used;
};

struct mp_xport_ctx {
    ucp_context_h ucp;
    int local_err_peer;
    pthread_mutex_t lock; /* guards arenas */
    mp_xport_arena_t *arenas[MAX_ARENAS];
};

typedef enum { REQ_SEND, REQ_RECV, REQ_RAW_SEND, REQ_RAW_RECV } req_type_t;

typedef struct {
    mp_xport_req_t *req;
    void *handle; /* UCX request while pending, else NULL */
    int pending;  /* posted and not completed */
    ucs_status_t st;
    size_t len; /* received length */
} sub_t;

struct mp_xport_req {
    mp_xport_worker_t *worker;
    mp_xport_ep_t *ep;
    req_type_t type;
    mp_status_t status; /* MP_ERR_INPROGRESS until final */
    int zombie;
    int phase; /* REQ_RECV: 0 header, 1 payload */
    uint64_t tag;
    void *buf;
    size_t cap;
    size_t nbytes;
    mp_xport_hdr_t hdr;
    sub_t sub[2];
    mp_xport_req_t *prev, *next;
    unsigned char bounce[sizeof(wire_hdr_t) + MP_XPORT_INLINE_MAX];
};

struct mp_xport_ep {
    mp_xport_worker_t *worker;
    ucp_ep_h ucp;
    uint32_t peer_rank;
    mp_status_t status;
    int ucp_closed; /* closed (forced after a failure); ucp is NULL */
    int pidfd;      /* the peer's process on this host, or -1 */
    int local; /* same kernel and pid namespace: UCX error handling off (see mp_xport_ep_connect) */
    int peer_alive_unknown; /* a failure not known to be the peer's death (a timeout) */
    mp_xport_ep_t *prev, *next;
};

struct mp_xport_worker {
    mp_xport_ctx_t *ctx;
    ucp_worker_h ucp;
    int efd;
    uint32_t rank;
    int64_t timeout_ms;
    int backstop_ms;
    int spin_us;
    const atomic_bool *abort_flag; /* mp_xport_worker_set_abort */
    int neps;
    mp_xport_ep_t *eps;
    uint64_t next_liveness_ns;
    addr_hdr_t self;
    mp_xport_req_t *live; /* active and zombie requests */
    mp_xport_req_t *free_reqs;
    int nfree;
    mp_xport_worker_stats_t stats;
    int dirty;         /* a completion or failure since the requests were last walked */
    int woke_by_event; /* the last sleep ended by the event fd */
    int spurious;      /* event wake-ups in a burst after which progress found nothing */
    uint64_t spurious_t0; /* when the burst began (worker_sleep) */
    unsigned backoffs; /* sleeps taken without the event fd since the last useful wake-up */
};

/* worker_sleep's backoff (see there). */
#define SPURIOUS_MAX 4
#define SPURIOUS_WINDOW_NS (1000ull * 1000)
#define BACKOFF_NS (2ull * 1000 * 1000)
#define BACKOFF_RETRY 8

uint64_t mp_xport_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static mp_status_t status_from_ucs(ucs_status_t st)
{
    switch (st) {
    case UCS_OK:
        return MP_OK;
    case UCS_INPROGRESS:
        return MP_ERR_INPROGRESS;
    case UCS_ERR_NO_MEMORY:
        return MP_ERR_NOMEM;
    case UCS_ERR_INVALID_PARAM:
        return MP_ERR_INVAL;
    case UCS_ERR_TIMED_OUT:
        return MP_ERR_TIMEOUT;
    case UCS_ERR_CANCELED:
        return MP_ERR_CANCELLED;
    case UCS_ERR_MESSAGE_TRUNCATED:
        return MP_ERR_TOOBIG;
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
        return MP_ERR_PEER;
    case UCS_ERR_UNSUPPORTED:
        return MP_ERR_UNSUPPORTED;
    default:
        return MP_ERR_TRANSPORT;
    }
}

/* ---- headers and tags ---- */

size_t mp_xport_dtype_size(uint32_t dtype)
{
    switch (dtype) {
    case MP_XPORT_DTYPE_F32:
    case MP_XPORT_DTYPE_I32:
        return 4;
    case MP_XPORT_DTYPE_F64:
        return 8;
    case MP_XPORT_DTYPE_U8:
        return 1;
    default:
        return 0;
    }
}

mp_status_t mp_xport_hdr_nbytes(const mp_xport_hdr_t *hdr, size_t *nbytes_p)
{
    size_t n = mp_xport_dtype_size(hdr->dtype);
    if (n == 0 || hdr->ndim > MP_XPORT_MAX_DIMS) {
        return MP_ERR_INVAL;
    }
    for (uint32_t i = 0; i < hdr->ndim; i++) {
        if (hdr->shape[i] != 0 && n > SIZE_MAX / hdr->shape[i]) {
            return MP_ERR_INVAL;
        }
        n *= (size_t)hdr->shape[i];
    }
    *nbytes_p = n;
    return MP_OK;
}

static uint64_t tag_tensor(uint32_t job, uint32_t kind, uint32_t mb, uint32_t src)
{
    return ((uint64_t)(job & MP_XPORT_JOB_MAX) << 48) | ((uint64_t)(kind & 0xfu) << 44) |
           ((uint64_t)(mb & MP_XPORT_MB_MAX) << 21) | (uint64_t)(src & MP_XPORT_RANK_MAX);
}

uint64_t mp_xport_tag_coll(uint16_t group, uint16_t seq, uint32_t step, uint32_t src)
{
    return ((uint64_t)group << 48) | ((uint64_t)MP_XPORT_TAG_KIND_COLL << 44) |
           ((uint64_t)seq << 28) | ((uint64_t)(step & MP_XPORT_COLL_STEP_MAX) << 20) |
           (uint64_t)(src & MP_XPORT_RANK_MAX);
}

/* ---- context ---- */

static void config_default(ucp_config_t *cfg, const char *env, const char *key, const char *value)
{
    if (getenv(env) != NULL) {
        return;
    }
    ucs_status_t st = ucp_config_modify(cfg, key, value);
    if (st != UCS_OK) {
        mp_debug("xport: UCX option %s=%s not taken: %s", key, value, ucs_status_string(st));
    }
}

/*
 * Transport-level options that ucp_config_modify() does not reach in UCX
 * 1.13 (it reports them as invalid): set as environment defaults, which the
 * transports read when a worker opens them.  Never overrides the user's
 * environment.  setenv() is not thread-safe, which is why the context is
 * made before the process starts its threads.
 */
static void env_default(const char *env, const char *value)
{
    if (getenv(env) == NULL) {
        setenv(env, value, 0);
    }
}

mp_status_t mp_xport_ctx_create(const mp_xport_ctx_opts_t *opts, mp_xport_ctx_t **ctx_p)
{
    mp_xport_ctx_opts_t o = {0};
    if (opts != NULL) {
        o = *opts;
    }
    mp_xport_ctx_t *ctx = mp_calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        return MP_ERR_NOMEM;
    }
    ucp_config_t *cfg;
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK) {
        mp_err("xport: ucp_config_read: %s", ucs_status_string(st));
        goto err_free;
    }
    if (o.tls != NULL) {
        config_default(cfg, "UCX_TLS", "TLS", o.tls);
    }
    /* Peer error handling is refused by UCX's shared-memory transports
     * unless they are told to support it; without this, processes of one
     * node would talk over loopback TCP. */
    const char *tls = getenv("UCX_TLS");
    if (tls == NULL && o.tls != NULL) {
        tls = o.tls;
    }
    int shm = tls == NULL || strstr(tls, "all") != NULL || strstr(tls, "sm") != NULL ||
              strstr(tls, "posix") != NULL || strstr(tls, "sysv") != NULL ||
              strstr(tls, "cma") != NULL || strstr(tls, "mm") != NULL;
    /* Without shared memory (UCX_TLS=tcp: what runs between hosts) local
     * peers gain nothing from running without UCX error handling. */
    ctx->local_err_peer = o.local_err_peer || !shm;
    if (o.local_err_peer && shm) {
        env_default("UCX_POSIX_ERROR_HANDLING", "y");
        env_default("UCX_SYSV_ERROR_HANDLING", "y");
    }
    char ka[32];
    snprintf(ka, sizeof(ka), "%dms", o.keepalive_ms > 0 ? o.keepalive_ms : 1000);
    config_default(cfg, "UCX_KEEPALIVE_INTERVAL", "KEEPALIVE_INTERVAL", ka);

    ucp_params_t params = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED,
        .features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP,
        .mt_workers_shared = 0,
    };
    st = ucp_init(&params, cfg, &ctx->ucp);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
        mp_err("xport: ucp_init: %s", ucs_status_string(st));
        goto err_free;
    }
    pthread_mutex_init(&ctx->lock, NULL);
    *ctx_p = ctx;
    return MP_OK;

err_free:
    mp_free(ctx);
    return status_from_ucs(st);
}

void mp_xport_ctx_destroy(mp_xport_ctx_t *ctx)
{
    if (ctx == NULL) {
        return;
    }
    for (int i = 0; i < MAX_ARENAS; i++) {
        if (ctx->arenas[i] != NULL) {
            mp_warn("xport: arena of %zu bytes still alive at context destroy",
                    ctx->arenas[i]->size);
        }
    }
    ucp_cleanup(ctx->ucp);
    pthread_mutex_destroy(&ctx->lock);
    mp_free(ctx);
}

/* ---- arenas ---- */

mp_status_t mp_xport_arena_create(mp_xport_ctx_t *ctx, size_t bytes, mp_xport_arena_t **arena_p)
{
    if (bytes == 0) {
        return MP_ERR_INVAL;
    }
    mp_xport_arena_t *a = mp_calloc(1, sizeof(*a));
    if (a == NULL) {
        return MP_ERR_NOMEM;
    }
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS,
        .address = NULL,
        .length = bytes,
        .flags = UCP_MEM_MAP_ALLOCATE,
    };
    ucs_status_t st = ucp_mem_map(ctx->ucp, &mp, &a->memh);
    if (st != UCS_OK) {
        mp_err("xport: ucp_mem_map of %zu bytes: %s", bytes, ucs_status_string(st));
        mp_free(a);
        return status_from_ucs(st);
    }
    ucp_mem_attr_t attr = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH};
    st = ucp_mem_query(a->memh, &attr);
    if (st != UCS_OK) {
        mp_err("xport: ucp_mem_query: %s", ucs_status_string(st));
        ucp_mem_unmap(ctx->ucp, a->memh);
        mp_free(a);
        return status_from_ucs(st);
    }
    a->ctx = ctx;
    a->base = attr.address;
    a->size = attr.length;
    pthread_mutex_lock(&ctx->lock);
    int slot = -1;
    for (int i = 0; i < MAX_ARENAS && slot < 0; i++) {
        if (ctx->arenas[i] == NULL) {
            slot = i;
        }
    }
    if (slot >= 0) {
        ctx->arenas[slot] = a;
    }
    pthread_mutex_unlock(&ctx->lock);
    if (slot < 0) {
        mp_err("xport: more than %d arenas", MAX_ARENAS);
        ucp_mem_unmap(ctx->ucp, a->memh);
        mp_free(a);
        return MP_ERR_BUSY;
    }
    *arena_p = a;
    return MP_OK;
}

void mp_xport_arena_destroy(mp_xport_arena_t *a)
{
    if (a == NULL) {
        return;
    }
    mp_xport_ctx_t *ctx = a->ctx;
    pthread_mutex_lock(&ctx->lock);
    for (int i = 0; i < MAX_ARENAS; i++) {
        if (ctx->arenas[i] == a) {
            ctx->arenas[i] = NULL;
        }
    }
    pthread_mutex_unlock(&ctx->lock);
    ucp_mem_unmap(ctx->ucp, a->memh);
    mp_free(a);
}

void *mp_xport_arena_base(const mp_xport_arena_t *a)
{
    return a->base;
}
size_t mp_xport_arena_size(const mp_xport_arena_t *a)
{
    return a->size;
}

void *mp_xport_arena_alloc(mp_xport_arena_t *a, size_t bytes)
{
    size_t start = (a->used + 63) & ~(size_t)63;
    if (start > a->size || bytes > a->size - start) {
        return NULL;
    }
    a->used = start + bytes;
    return a->base + start;
}

void mp_xport_arena_reset(mp_xport_arena_t *a)
{
    a->used = 0;
}

/* The registration covering [p, p+len), or NULL. */
static ucp_mem_h arena_lookup(mp_xport_ctx_t *ctx, const void *p, size_t len)
{
    ucp_mem_h memh = NULL;
    const char *c = p;
    pthread_mutex_lock(&ctx->lock);
    for (int i = 0; i < MAX_ARENAS && memh == NULL; i++) {
        mp_xport_arena_t *a = ctx->arenas[i];
        if (a != NULL && c >= a->base && len <= a->size && (size_t)(c - a->base) <= a->size - len) {
            memh = a->memh;
        }
    }
    pthread_mutex_unlock(&ctx->lock);
    return memh;
}

/* ---- worker ---- */

mp_status_t mp_xport_worker_create(mp_xport_ctx_t *ctx, const mp_xport_worker_opts_t *opts,
                                   mp_xport_worker_t **worker_p)
{
    mp_xport_worker_opts_t o = {0};
    if (opts != NULL) {
        o = *opts;
    }
    if (o.rank > MP_XPORT_RANK_MAX) {
        mp_err("xport: rank %u over the tag's limit %u", o.rank, MP_XPORT_RANK_MAX);
        return MP_ERR_INVAL;
    }
    mp_xport_worker_t *w = mp_calloc(1, sizeof(*w));
    if (w == NULL) {
        return MP_ERR_NOMEM;
    }
    w->ctx = ctx;
    w->rank = o.rank;
    w->timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : 30000;
    w->backstop_ms = o.backstop_ms > 0 ? o.backstop_ms : 10;
    w->spin_us = o.spin_us < 0 ? 0 : (o.spin_us == 0 ? 50 : o.spin_us);
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    ucs_status_t st = ucp_worker_create(ctx->ucp, &wp, &w->ucp);
    if (st != UCS_OK) {
        mp_err("xport: ucp_worker_create: %s", ucs_status_string(st));
        mp_free(w);
        return status_from_ucs(st);
    }
    w->self.magic = ADDR_MAGIC;
    w->self.pid = (uint32_t)getpid();
    struct stat nsst;
    if (stat("/proc/self/ns/pid", &nsst) == 0) {
        w->self.pidns = (uint64_t)nsst.st_ino;
    }
    if (stat("/proc/self/ns/net", &nsst) == 0) {
        w->self.netns = (uint64_t)nsst.st_ino;
    }
    FILE *bf = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (bf != NULL) {
        if (fgets(w->self.boot_id, sizeof(w->self.boot_id), bf) == NULL) {
            w->self.boot_id[0] = 0;
        }
        fclose(bf);
    }
    st = ucp_worker_get_efd(w->ucp, &w->efd);
    if (st != UCS_OK) {
        mp_err("xport: ucp_worker_get_efd: %s", ucs_status_string(st));
        ucp_worker_destroy(w->ucp);
        mp_free(w);
        return status_from_ucs(st);
    }
    *worker_p = w;
    return MP_OK;
}

uint32_t mp_xport_worker_rank(const mp_xport_worker_t *w)
{
    return w->rank;
}
mp_xport_ctx_t *mp_xport_worker_ctx(const mp_xport_worker_t *w)
{
    return w->ctx;
}
int64_t mp_xport_worker_timeout_ms(const mp_xport_worker_t *w)
{
    return w->timeout_ms;
}

void mp_xport_worker_stats(const mp_xport_worker_t *w, mp_xport_worker_stats_t *stats_p)
{
    *stats_p = w->stats;
}

mp_status_t mp_xport_worker_address(mp_xport_worker_t *w, void **addr_p, size_t *len_p)
{
    ucp_address_t *addr;
    size_t len;
    ucs_status_t st = ucp_worker_get_address(w->ucp, &addr, &len);
    if (st != UCS_OK) {
        mp_err("xport: ucp_worker_get_address: %s", ucs_status_string(st));
        return status_from_ucs(st);
    }
    char *copy = mp_malloc(sizeof(addr_hdr_t) + len);
    if (copy == NULL) {
        ucp_worker_release_address(w->ucp, addr);
        return MP_ERR_NOMEM;
    }
    memcpy(copy, &w->self, sizeof(addr_hdr_t));
    memcpy(copy + sizeof(addr_hdr_t), addr, len);
    ucp_worker_release_address(w->ucp, addr);
    *addr_p = copy;
    *len_p = sizeof(addr_hdr_t) + len;
    return MP_OK;
}

/* ---- requests ---- */

static void list_remove(mp_xport_worker_t *w, mp_xport_req_t *r)
{
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        w->live = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    r->prev = r->next = NULL;
}

/* A new request on ep, taken from the free list when it can be; MP_OK only while ep is usable. */
static mp_status_t req_new(mp_xport_ep_t *ep, req_type_t type, mp_xport_req_t **req_p)
{
    if (ep == NULL) {
        return MP_ERR_INVAL;
    }
    if (ep->status != MP_OK) {
        return ep->status;
    }
    mp_xport_worker_t *w = ep->worker;
    mp_xport_req_t *r = w->free_reqs;
    if (r != NULL) {
        w->free_reqs = r->next;
        w->nfree--;
    } else {
        r = mp_malloc(sizeof(*r));
        if (r == NULL) {
            return MP_ERR_NOMEM;
        }
    }
    memset(r, 0, offsetof(mp_xport_req_t, bounce));
    r->worker = w;
    r->ep = ep;
    r->type = type;
    r->status = MP_ERR_INPROGRESS;
    r->sub[0].req = r;
    r->sub[1].req = r;
    r->next = w->live;
    if (w->live != NULL) {
        w->live->prev = r;
    }
    w->live = r;
    *req_p = r;
    return MP_OK;
}

static int req_subs_pending(const mp_xport_req_t *r)
{
    return r->sub[0].pending || r->sub[1].pending;
}

/* Returns the request to the free list; its UCX operations are all complete. */
static void req_release(mp_xport_req_t *r)
{
    mp_xport_worker_t *w = r->worker;
    list_remove(w, r);
    if (w->nfree < FREE_REQS_MAX) {
        r->next = w->free_reqs;
        w->free_reqs = r;
        w->nfree++;
    } else {
        mp_free(r);
    }
}

static void on_send_done(void *request, ucs_status_t st, void *user_data)
{
    sub_t *s = user_data;
    s->req->worker->dirty = 1;
    s->st = st;
    s->pending = 0;
    s->handle = NULL;
    ucp_request_free(request);
}

static void on_recv_done(void *request, ucs_status_t st, const ucp_tag_recv_info_t *info,
                         void *user_data)
{
    sub_t *s = user_data;
    s->req->worker->dirty = 1;
    s->st = st;
    s->len = st == UCS_OK ? info->length : 0;
    s->pending = 0;
    s->handle = NULL;
    ucp_request_free(request);
}

/*
 * Outcome of a nbx call: done now, in flight, or failed.  The caller set
 * s->pending before the call, because UCX may run the completion callback
 * inside it (always so for a receive that matches an unexpected message
 * under UCP_OP_ATTR_FLAG_NO_IMM_CMPL); then the request is already freed.
 */
static void sub_started(sub_t *s, ucs_status_ptr_t p, size_t len)
{
    if (p == NULL) {
        s->st = UCS_OK;
        s->len = len;
        s->pending = 0;
    } else if (UCS_PTR_IS_ERR(p)) {
        s->st = UCS_PTR_STATUS(p);
        s->pending = 0;
    } else if (s->pending) {
        s->handle = p;
    }
}

static void sub_send(sub_t *s, ucp_ep_h ep, uint64_t tag, const void *buf, size_t len,
                     ucp_mem_h memh)
{
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = on_send_done,
        .user_data = s,
    };
    if (memh != NULL) {
        prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        prm.memh = memh;
    }
    s->pending = 1;
    s->handle = NULL;
    sub_started(s, ucp_tag_send_nbx(ep, buf, len, tag, &prm), len);
}

static void sub_recv(sub_t *s, ucp_worker_h w, uint64_t tag, void *buf, size_t len, ucp_mem_h memh)
{
    /* Always through the callback: it is the one place that learns the received length. */
    ucp_request_param_t prm = {
        .op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL,
        .cb.recv = on_recv_done,
        .user_data = s,
    };
    if (memh != NULL) {
        prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        prm.memh = memh;
    }
    s->pending = 1;
    s->handle = NULL;
    sub_started(s, ucp_tag_recv_nbx(w, buf, len, tag, TAG_FULL_MASK, &prm), 0);
}

/*
 * Closes ep's UCX endpoint (flags: 0 flushes first, UCP_EP_CLOSE_FLAG_FORCE
 * does not), progressing the worker for at most CLOSE_WAIT_NS while the
 * close runs.  A close that does not finish in time is released by UCX when
 * it does (or with the worker).
 */
static void ep_close_ucp(mp_xport_ep_t *ep, uint32_t flags)
{
    ep->ucp_closed = 1;
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = flags};
    ucs_status_ptr_t p = ucp_ep_close_nbx(ep->ucp, &prm);
    if (p != NULL && !UCS_PTR_IS_ERR(p)) {
        uint64_t end = mp_xport_now_ns() + CLOSE_WAIT_NS;
        while (ucp_request_check_status(p) == UCS_INPROGRESS && mp_xport_now_ns() < end) {
            ucp_worker_progress(ep->worker->ucp);
        }
        ucp_request_free(p);
    }
    ep->ucp = NULL;
}

/* Force-closes ep's UCX endpoint so that UCX fails its pending sends. */
static void ep_fail(mp_xport_ep_t *ep, mp_status_t why)
{
    ep->worker->dirty = 1;
    if (ep->status == MP_OK) {
        ep->status = why;
    }
    if (ep->ucp_closed) {
        return;
    }
    if (ep->local && ep->status != MP_ERR_PEER) {
        /* Force-closing an endpoint without UCX error handling is undefined
         * for a live peer: the failed endpoint is left as it is, its
         * pending sends as zombies, until mp_xport_ep_destroy(). */
        ep->peer_alive_unknown = 1;
        return;
    }
    ep_close_ucp(ep, UCP_EP_CLOSE_FLAG_FORCE);
}

/*
 * Ends r with an error: cancels its receives.  A send still pending cannot
 * be cancelled in UCX; with close_sends its endpoint is force-closed (the
 * only way to get the buffer back at once), else the send is left to finish
 * or fail on its own while r waits as a zombie.
 */
static void req_abort_ex(mp_xport_req_t *r, mp_status_t why, int close_sends)
{
    if (r->status == MP_ERR_INPROGRESS) {
        r->status = why;
    }
    int send_pending = 0;
    for (int i = 0; i < 2; i++) {
        sub_t *s = &r->sub[i];
        if (!s->pending) {
            continue;
        }
        if (r->type == REQ_RECV || r->type == REQ_RAW_RECV) {
            if (s->handle != NULL) {
                ucp_request_cancel(r->worker->ucp, s->handle);
            }
        } else {
            send_pending = 1;
        }
    }
    if (send_pending && close_sends) {
        ep_fail(r->ep, why);
    }
}

static void req_abort(mp_xport_req_t *r, mp_status_t why)
{
    req_abort_ex(r, why, 1);
}

static mp_status_t sub_status(const sub_t *s)
{
    return status_from_ucs(s->st);
}

/* Moves r's state machine on after progress. */
static void req_advance(mp_xport_req_t *r)
{
    if (r->status != MP_ERR_INPROGRESS || r->zombie) {
        return;
    }
    if (r->ep->status != MP_OK && req_subs_pending(r)) {
        req_abort(r, r->ep->status);
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (!r->sub[i].pending && r->sub[i].st != UCS_OK) {
            mp_status_t st = sub_status(&r->sub[i]);
            if (r->ep->status != MP_OK) {
                /* UCX fails the operations of a failed endpoint with various
                 * codes (cancelled, reset, i/o error); the endpoint's is the cause. */
                st = r->ep->status;
            }
            req_abort(r, st);
            return;
        }
    }
    if (req_subs_pending(r)) {
        return;
    }
    switch (r->type) {
    case REQ_SEND:
    case REQ_RAW_SEND:
        r->status = MP_OK;
        r->worker->stats.bytes_sent += r->nbytes;
        return;
    case REQ_RAW_RECV:
        r->status = r->sub[0].len == r->cap ? MP_OK : MP_ERR_PROTO;
        if (r->status == MP_OK) {
            r->worker->stats.bytes_received += r->cap;
        } else {
            mp_err("xport: message of %zu bytes where %zu were expected (tag %#llx)", r->sub[0].len,
                   r->cap, (unsigned long long)r->tag);
        }
        return;
    case REQ_RECV:
        break;
    }
    if (r->phase == 1) {
        r->status = r->sub[1].len == r->nbytes ? MP_OK : MP_ERR_PROTO;
        if (r->status == MP_OK) {
            r->worker->stats.bytes_received += r->nbytes;
        } else {
            mp_err("xport: payload of %zu bytes, header said %zu", r->sub[1].len, r->nbytes);
        }
        return;
    }
    /* The header has arrived. */
    wire_hdr_t wh;
    if (r->sub[0].len < sizeof(wh)) {
        mp_err("xport: tensor message of %zu bytes is shorter than its header", r->sub[0].len);
        r->status = MP_ERR_PROTO;
        return;
    }
    memcpy(&wh, r->bounce, sizeof(wh));
    mp_xport_hdr_t h = {.job = wh.job,
                        .step = wh.step,
                        .micro_batch = wh.micro_batch,
                        .kind = wh.kind,
                        .dtype = wh.dtype,
                        .ndim = wh.ndim};
    memcpy(h.shape, wh.shape, sizeof(h.shape));
    size_t nbytes;
    if (wh.magic != WIRE_MAGIC || wh.version != WIRE_VERSION ||
        mp_xport_hdr_nbytes(&h, &nbytes) != MP_OK || nbytes != wh.nbytes) {
        mp_err("xport: bad tensor header from rank %u", r->ep->peer_rank);
        r->status = MP_ERR_PROTO;
        return;
    }
    r->hdr = h;
    r->nbytes = nbytes;
    if (nbytes > r->cap) {
        mp_err("xport: tensor of %zu bytes from rank %u does not fit the receive buffer of %zu",
               nbytes, r->ep->peer_rank, r->cap);
        r->status = MP_ERR_TOOBIG;
        return;
    }
    if (wh.flags & WIRE_FLAG_INLINE) {
        if (r->sub[0].len != sizeof(wh) + nbytes) {
            mp_err("xport: inline tensor message of %zu bytes, header said %zu", r->sub[0].len,
                   nbytes);
            r->status = MP_ERR_PROTO;
            return;
        }
        if (nbytes > 0) {
            memcpy(r->buf, r->bounce + sizeof(wh), nbytes);
        }
        r->status = MP_OK;
        r->worker->stats.bytes_received += nbytes;
        return;
    }
    r->phase = 1;
    sub_recv(&r->sub[1], r->worker->ucp, r->tag | TAG_PART_PAYLOAD, r->buf, nbytes,
             arena_lookup(r->worker->ctx, r->buf, nbytes));
    if (!r->sub[1].pending) {
        req_advance(r);
    }
}

/* Marks endpoints whose peer process (watched by pidfd) has exited; rate-limited. */
static void worker_check_liveness(mp_xport_worker_t *w)
{
    uint64_t now = mp_xport_now_ns();
    if (now < w->next_liveness_ns) {
        return;
    }
    w->next_liveness_ns = now + LIVENESS_PERIOD_NS;
    for (mp_xport_ep_t *ep = w->eps; ep != NULL; ep = ep->next) {
        if (ep->pidfd < 0 || ep->status != MP_OK) {
            continue;
        }
        struct pollfd pfd = {.fd = ep->pidfd, .events = POLLIN};
        if (poll(&pfd, 1, 0) > 0) {
            mp_warn("xport: peer rank %u failed: its process exited", ep->peer_rank);
            ep->status = MP_ERR_PEER;
            w->dirty = 1;
        }
    }
}

int mp_xport_worker_progress(mp_xport_worker_t *w)
{
    int any = 0;
    while (ucp_worker_progress(w->ucp) != 0) {
        any = 1;
    }
    worker_check_liveness(w);
    if (any) {
        w->spurious = 0;
        w->backoffs = 0;
    } else if (w->woke_by_event) {
        /* A burst: SPURIOUS_MAX of them within SPURIOUS_WINDOW_NS. */
        uint64_t now = mp_xport_now_ns();
        if (w->spurious == 0 || now - w->spurious_t0 > SPURIOUS_WINDOW_NS) {
            w->spurious = 0;
            w->spurious_t0 = now;
        }
        w->spurious++;
    }
    w->woke_by_event = 0;
    /* Requests only move on when a completion or failure was seen. */
    if (!w->dirty) {
        return any;
    }
    w->dirty = 0;
    mp_xport_req_t *r = w->live;
    while (r != NULL) {
        mp_xport_req_t *next = r->next;
        if (r->zombie) {
            if (!req_subs_pending(r)) {
                req_release(r);
            }
        } else {
            req_advance(r);
        }
        r = next;
    }
    return any;
}

/* ---- endpoints ---- */

static void on_ep_error(void *arg, ucp_ep_h uep, ucs_status_t st)
{
    mp_xport_ep_t *ep = arg;
    ep->worker->dirty = 1;
    if (ep->status == MP_OK) {
        mp_warn("xport: peer rank %u failed: %s", ep->peer_rank, ucs_status_string(st));
        ep->status = MP_ERR_PEER;
    }
}

mp_status_t mp_xport_ep_connect(mp_xport_worker_t *w, const void *addr, size_t len,
                                uint32_t peer_rank, mp_xport_ep_t **ep_p)
{
    addr_hdr_t peer;
    if (addr == NULL || len <= sizeof(peer) || peer_rank > MP_XPORT_RANK_MAX) {
        mp_err("xport: invalid worker address of %zu bytes", len);
        return MP_ERR_INVAL;
    }
    memcpy(&peer, addr, sizeof(peer));
    if (peer.magic != ADDR_MAGIC) {
        mp_err("xport: not an mpar worker address");
        return MP_ERR_FORMAT;
    }
    mp_xport_ep_t *ep = mp_calloc(1, sizeof(*ep));
    if (ep == NULL) {
        return MP_ERR_NOMEM;
    }
    ep->worker = w;
    ep->peer_rank = peer_rank;
    ep->pidfd = -1;
    /*
     * A peer on this kernel, in this pid and network namespace (the
     * namespace ids are only compared once the boot ids say "this kernel";
     * 0 means unknown, which is never "same"), is watched through its
     * process (a pidfd, or nothing to watch when it is this process), and
     * its endpoint runs without UCX error handling: measured on UCX 1.13,
     * peer error handling excludes cma, so large messages between processes
     * fall back to copies through the shared-memory FIFO at about 1/5 of the
     * bandwidth (ucx_perftest -e shows the same).  A dead local peer still
     * fails everything in flight with it; UCX's own error handling remains
     * for peers on other hosts (tcp), or everywhere with local_err_peer.
     */
    int local = w->self.boot_id[0] != 0 &&
                strncmp(peer.boot_id, w->self.boot_id, sizeof(peer.boot_id)) == 0 &&
                w->self.pidns != 0 && peer.pidns == w->self.pidns && w->self.netns != 0 &&
                peer.netns == w->self.netns;
    if (local && peer.pid != w->self.pid) {
        ep->pidfd = (int)syscall(SYS_pidfd_open, (pid_t)peer.pid, 0);
        if (ep->pidfd < 0 && errno == ESRCH) {
            mp_err("xport: peer rank %u (pid %u) has already exited", peer_rank, peer.pid);
            mp_free(ep);
            return MP_ERR_PEER;
        }
        if (ep->pidfd < 0) {
            local = 0; /* cannot watch it: let UCX do it */
        }
    }
    ep->local = local && !w->ctx->local_err_peer;
    addr = (const char *)addr + sizeof(peer);
    ucp_ep_params_t ep_params = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .address = addr,
        .err_mode = ep->local ? UCP_ERR_HANDLING_MODE_NONE : UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = on_ep_error, .arg = ep},
    };
    ucs_status_t st = ucp_ep_create(w->ucp, &ep_params, &ep->ucp);
    if (st != UCS_OK) {
        mp_err("xport: ucp_ep_create to rank %u: %s", peer_rank, ucs_status_string(st));
        if (ep->pidfd >= 0) {
            close(ep->pidfd);
        }
        mp_free(ep);
        return status_from_ucs(st);
    }
    mp_debug("xport: rank %u -> rank %u: %s", w->rank, peer_rank,
             !local      ? "another host (kernel or network namespace), UCX peer error handling"
             : ep->local ? "this host, watched by pidfd"
                         : "this host, watched by pidfd and UCX peer error handling");
    ep->next = w->eps;
    if (w->eps != NULL) {
        w->eps->prev = ep;
    }
    w->eps = ep;
    w->neps++;
    *ep_p = ep;
    return MP_OK;
}

void mp_xport_ep_destroy(mp_xport_ep_t *ep)
{
    if (ep == NULL) {
        return;
    }
    mp_xport_worker_t *w = ep->worker;
    for (mp_xport_req_t *r = w->live; r != NULL; r = r->next) {
        if (r->ep == ep && req_subs_pending(r)) {
            req_abort(r, MP_ERR_CLOSED);
        }
    }
    if (!ep->ucp_closed) {
        int force = ep->status != MP_OK && !(ep->local && ep->peer_alive_unknown);
        ep_close_ucp(ep, force ? UCP_EP_CLOSE_FLAG_FORCE : 0);
    }
    /* Requests that still point at ep are done or zombies; detach them. */
    for (mp_xport_req_t *r = w->live; r != NULL; r = r->next) {
        if (r->ep == ep) {
            if (!r->zombie) {
                mp_warn("xport: endpoint to rank %u destroyed with a request not waited for",
                        ep->peer_rank);
            }
            r->zombie = 1;
            r->ep = NULL;
        }
    }
    if (ep->prev != NULL) {
        ep->prev->next = ep->next;
    } else {
        w->eps = ep->next;
    }
    if (ep->next != NULL) {
        ep->next->prev = ep->prev;
    }
    if (ep->pidfd >= 0) {
        close(ep->pidfd);
    }
    w->neps--;
    mp_free(ep);
}

uint32_t mp_xport_ep_peer_rank(const mp_xport_ep_t *ep)
{
    return ep->peer_rank;
}
mp_status_t mp_xport_ep_status(const mp_xport_ep_t *ep)
{
    return ep->status;
}

void mp_xport_worker_set_abort(mp_xport_worker_t *w, const atomic_bool *abort_flag)
{
    w->abort_flag = abort_flag;
}

static int worker_aborted(const mp_xport_worker_t *w)
{
    return w->abort_flag != NULL && atomic_load_explicit(w->abort_flag, memory_order_relaxed);
}

void mp_xport_worker_destroy(mp_xport_worker_t *w)
{
    if (w == NULL) {
        return;
    }
    if (w->neps != 0) {
        mp_warn("xport: worker destroyed with %d endpoints open", w->neps);
    }
    /* Zombies hold UCX requests that complete (or are dropped) with the worker. */
    uint64_t end = mp_xport_now_ns() + CLOSE_WAIT_NS;
    while (w->live != NULL && mp_xport_now_ns() < end) {
        mp_xport_worker_progress(w);
        for (mp_xport_req_t *r = w->live; r != NULL; r = r->next) {
            if (!r->zombie) {
                r->zombie = 1;
            }
        }
    }
    ucp_worker_destroy(w->ucp);
    while (w->live != NULL) {
        mp_xport_req_t *r = w->live;
        list_remove(w, r);
        mp_free(r);
    }
    while (w->free_reqs != NULL) {
        mp_xport_req_t *r = w->free_reqs;
        w->free_reqs = r->next;
        mp_free(r);
    }
    mp_free(w);
}

/* ---- sends and receives ---- */

mp_status_t mp_xport_send(mp_xport_ep_t *ep, const mp_xport_hdr_t *hdr, const void *data,
                          mp_xport_req_t **req_p)
{
    size_t nbytes;
    if (hdr == NULL || mp_xport_hdr_nbytes(hdr, &nbytes) != MP_OK || hdr->kind == 0 ||
        hdr->kind > MP_XPORT_KIND_MAX || hdr->job > MP_XPORT_JOB_MAX ||
        hdr->micro_batch > MP_XPORT_MB_MAX || (nbytes > 0 && data == NULL)) {
        mp_err("xport: send with an invalid tensor header");
        return MP_ERR_INVAL;
    }
    mp_xport_req_t *r;
    mp_status_t st = req_new(ep, REQ_SEND, &r);
    if (st != MP_OK) {
        return st;
    }
    mp_xport_worker_t *w = ep->worker;
    r->tag = tag_tensor(hdr->job, hdr->kind, hdr->micro_batch, w->rank);
    r->nbytes = nbytes;
    wire_hdr_t wh = {.magic = WIRE_MAGIC,
                     .version = WIRE_VERSION,
                     .job = hdr->job,
                     .step = hdr->step,
                     .micro_batch = hdr->micro_batch,
                     .kind = hdr->kind,
                     .dtype = hdr->dtype,
                     .ndim = hdr->ndim,
                     .nbytes = nbytes};
    memcpy(wh.shape, hdr->shape, sizeof(wh.shape));
    for (uint32_t i = hdr->ndim; i < MP_XPORT_MAX_DIMS; i++) {
        wh.shape[i] = 0;
    }
    size_t first = sizeof(wh);
    if (nbytes <= MP_XPORT_INLINE_MAX) {
        wh.flags = WIRE_FLAG_INLINE;
        if (nbytes > 0) {
            memcpy(r->bounce + sizeof(wh), data, nbytes);
        }
        first += nbytes;
    }
    memcpy(r->bounce, &wh, sizeof(wh));
    sub_send(&r->sub[0], ep->ucp, r->tag, r->bounce, first, NULL);
    if (nbytes > MP_XPORT_INLINE_MAX && (r->sub[0].pending || r->sub[0].st == UCS_OK)) {
        sub_send(&r->sub[1], ep->ucp, r->tag | TAG_PART_PAYLOAD, data, nbytes,
                 arena_lookup(w->ctx, data, nbytes));
    }
    req_advance(r);
    *req_p = r;
    return MP_OK;
}

mp_status_t mp_xport_recv(mp_xport_ep_t *ep, uint32_t job, uint32_t kind, uint32_t micro_batch,
                          void *buf, size_t capacity, mp_xport_req_t **req_p)
{
    if (kind == 0 || kind > MP_XPORT_KIND_MAX || job > MP_XPORT_JOB_MAX ||
        micro_batch > MP_XPORT_MB_MAX || (capacity > 0 && buf == NULL)) {
        mp_err("xport: receive with invalid job/kind/micro-batch");
        return MP_ERR_INVAL;
    }
    mp_xport_req_t *r;
    mp_status_t st = req_new(ep, REQ_RECV, &r);
    if (st != MP_OK) {
        return st;
    }
    r->tag = tag_tensor(job, kind, micro_batch, ep->peer_rank);
    r->buf = buf;
    r->cap = capacity;
    sub_recv(&r->sub[0], ep->worker->ucp, r->tag, r->bounce, sizeof(r->bounce), NULL);
    req_advance(r);
    *req_p = r;
    return MP_OK;
}

mp_status_t mp_xport_raw_send(mp_xport_ep_t *ep, uint64_t tag, const void *buf, size_t len,
                              mp_xport_req_t **req_p)
{
    mp_xport_req_t *r;
    mp_status_t st = req_new(ep, REQ_RAW_SEND, &r);
    if (st != MP_OK) {
        return st;
    }
    r->tag = tag;
    r->nbytes = len;
    sub_send(&r->sub[0], ep->ucp, tag, buf, len, arena_lookup(ep->worker->ctx, buf, len));
    req_advance(r);
    *req_p = r;
    return MP_OK;
}

mp_status_t mp_xport_raw_recv(mp_xport_ep_t *ep, uint64_t tag, void *buf, size_t len,
                              mp_xport_req_t **req_p)
{
    mp_xport_req_t *r;
    mp_status_t st = req_new(ep, REQ_RAW_RECV, &r);
    if (st != MP_OK) {
        return st;
    }
    r->tag = tag;
    r->buf = buf;
    r->cap = len;
    sub_recv(&r->sub[0], ep->worker->ucp, tag, buf, len, arena_lookup(ep->worker->ctx, buf, len));
    req_advance(r);
    *req_p = r;
    return MP_OK;
}

int mp_xport_req_test(mp_xport_req_t *r)
{
    mp_xport_worker_progress(r->worker);
    return r->status != MP_ERR_INPROGRESS;
}

/* ---- waiting ---- */


/*
 * Sleeps on the worker's event fd for at most max_ns (and at most the
 * backstop); returns at once if events are pending.
 *
 * Measured on UCX 1.13: over tcp, while a connection is still being wired
 * up with a peer that is not progressing, the event fd stays readable and
 * progress finds nothing, tens of thousands of times a second.  After a
 * burst of SPURIOUS_MAX such wake-ups within SPURIOUS_WINDOW_NS we sleep
 * without the fd for BACKOFF_NS, retrying the fd every BACKOFF_RETRY
 * sleeps, until progress does something again.  Only a burst: a few
 * wake-ups that find nothing happen in any long wait (a signal of a message
 * that the spin before the sleep already took), and counting those into a
 * backoff made a pipeline stage waiting at the start of a step sleep
 * through its first activation for up to 2 ms.  The shared-memory
 * transports do raise events.
 */
static void worker_sleep(mp_xport_worker_t *w, uint64_t max_ns)
{
    uint64_t backstop_ns = (uint64_t)w->backstop_ms * 1000000ull;
    if (max_ns > backstop_ns) {
        max_ns = backstop_ns;
    }
    /* In a burst, or a retry of the fd during one found nothing again. */
    bool burst = w->spurious >= SPURIOUS_MAX || (w->backoffs > 0 && w->spurious > 0);
    if (burst && (++w->backoffs % BACKOFF_RETRY) != 0) {
        uint64_t ns = max_ns < BACKOFF_NS ? max_ns : BACKOFF_NS;
        struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                              .tv_nsec = (long)(ns % 1000000000ull)};
        w->stats.sleeps++;
        w->stats.timer_wakeups++;
        nanosleep(&ts, NULL);
        return;
    }
    ucs_status_t st = ucp_worker_arm(w->ucp);
    if (st == UCS_ERR_BUSY) {
        return;
    }
    if (st != UCS_OK) {
        /* Without a wake-up we still sleep, but only for the backstop. */
        mp_debug("xport: ucp_worker_arm: %s", ucs_status_string(st));
    }
    int ms = (int)((max_ns + 999999) / 1000000);
    struct pollfd pfd = {.fd = w->efd, .events = POLLIN};
    w->stats.sleeps++;
    int n = poll(&pfd, 1, ms);
    if (n > 0) {
        w->stats.event_wakeups++;
        w->woke_by_event = 1;
    } else if (n == 0) {
        w->stats.timer_wakeups++;
    }
}

static uint64_t deadline_from(mp_xport_worker_t *w, int64_t timeout_ms)
{
    if (timeout_ms <= 0) {
        timeout_ms = w->timeout_ms;
    }
    return mp_xport_now_ns() + (uint64_t)timeout_ms * 1000000ull;
}

/* Frees a request once it has a final status; a request with UCX operations pending becomes a
 * zombie. */
static void req_finish(mp_xport_req_t *r)
{
    if (req_subs_pending(r)) {
        r->zombie = 1;
    } else {
        req_release(r);
    }
}

#define SEND_GRACE_NS (200ull * 1000 * 1000)

/*
 * Progresses w until every request of reqs (NULL entries are skipped) has
 * completed, one has failed, check() reports an error, the worker's abort
 * flag is set, or deadline_ns passes: after any progress it spins (yielding
 * the core) for the worker's spin_us, then sleeps on the event fd.  Returns
 * the first failed request's status or the reason it stopped, MP_OK when
 * all completed; requests still in flight are left to the caller.
 */
static mp_status_t wait_progress(mp_xport_worker_t *w, mp_xport_req_t *const *reqs, size_t n,
                                 uint64_t deadline_ns, mp_xport_check_fn check, void *arg)
{
    uint64_t spin_ns = (uint64_t)w->spin_us * 1000ull;
    uint64_t spin_end = mp_xport_now_ns() + spin_ns;
    for (;;) {
        int any = mp_xport_worker_progress(w);
        int all_done = 1;
        for (size_t i = 0; i < n; i++) {
            if (reqs[i] == NULL) {
                continue;
            }
            if (reqs[i]->status == MP_ERR_INPROGRESS) {
                all_done = 0;
            } else if (reqs[i]->status != MP_OK) {
                return reqs[i]->status;
            }
        }
        if (all_done) {
            return MP_OK;
        }
        mp_status_t st;
        if (check != NULL && (st = check(arg)) != MP_OK) {
            return st;
        }
        if (worker_aborted(w)) {
            return MP_ERR_CANCELLED;
        }
        uint64_t now = mp_xport_now_ns();
        if (now >= deadline_ns) {
            return MP_ERR_TIMEOUT;
        }
        if (any) {
            spin_end = now + spin_ns;
        } else if (now < spin_end) {
            /* Spin politely: on an oversubscribed host the peer we wait for may need this core. */
            sched_yield();
        } else {
            worker_sleep(w, deadline_ns - now);
            spin_end = mp_xport_now_ns() + spin_ns;
        }
    }
}

static mp_status_t wait_set_impl(mp_xport_worker_t *w, mp_xport_req_t **reqs, size_t n,
                                 uint64_t deadline_ns, mp_xport_check_fn check, void *arg,
                                 int close_sends)
{
    mp_status_t result = wait_progress(w, reqs, n, deadline_ns, check, arg);
    for (size_t i = 0; i < n; i++) {
        mp_xport_req_t *r = reqs[i];
        if (r == NULL) {
            continue;
        }
        if (r->status == MP_ERR_INPROGRESS) {
            req_abort_ex(r, result, close_sends);
        }
    }
    /* Sends left pending to live peers usually finish within moments (an
     * eager message still leaving); give them that, so that their buffers
     * are free when we return.  A rendezvous send whose receive will never
     * be posted stays a zombie and never reads its buffer again. */
    uint64_t grace_end = mp_xport_now_ns() + (result != MP_OK ? SEND_GRACE_NS : 0);
    for (;;) {
        int pending = 0;
        for (size_t i = 0; i < n; i++) {
            if (reqs[i] != NULL && req_subs_pending(reqs[i])) {
                pending = 1;
            }
        }
        if (!pending || mp_xport_now_ns() >= grace_end) {
            break;
        }
        if (!mp_xport_worker_progress(w)) {
            worker_sleep(w, 1000000);
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (reqs[i] != NULL) {
            req_finish(reqs[i]);
            reqs[i] = NULL;
        }
    }
    return result;
}

mp_status_t mp_xport_wait_set(mp_xport_worker_t *w, mp_xport_req_t **reqs, size_t n,
                              uint64_t deadline_ns, mp_xport_check_fn check, void *arg)
{
    return wait_set_impl(w, reqs, n, deadline_ns, check, arg, 0);
}

static mp_status_t check_cancel(void *arg)
{
    const atomic_bool *cancel = arg;
    return atomic_load_explicit(cancel, memory_order_relaxed) ? MP_ERR_CANCELLED : MP_OK;
}

/* mp_xport_wait and mp_xport_wait_until: one request, an absolute deadline. */
static mp_status_t wait_one(mp_xport_req_t *req, uint64_t deadline, const atomic_bool *cancel,
                            mp_xport_hdr_t *hdr_p)
{
    mp_xport_worker_t *w = req->worker;
    int is_recv = req->type == REQ_RECV;
    mp_xport_hdr_t hdr = {0};
    if (req->status == MP_ERR_INPROGRESS) {
        mp_status_t why = wait_progress(w, &req, 1, deadline, cancel != NULL ? check_cancel : NULL,
                                        (void *)cancel);
        if (req->status == MP_ERR_INPROGRESS) {
            req_abort(req, why); /* timed out or aborted */
        }
    }
    mp_status_t st = req->status;
    if (st == MP_OK && is_recv) {
        hdr = req->hdr;
    }
    req_finish(req);
    if (st != MP_OK) {
        mp_xport_worker_progress(w);
    } else if (hdr_p != NULL && is_recv) {
        *hdr_p = hdr;
    }
    return st;
}

mp_status_t mp_xport_wait(mp_xport_req_t *req, int64_t timeout_ms, mp_xport_hdr_t *hdr_p)
{
    return wait_one(req, deadline_from(req->worker, timeout_ms), NULL, hdr_p);
}

mp_status_t mp_xport_wait_until(mp_xport_req_t *req, uint64_t deadline_ns,
                                const atomic_bool *cancel, mp_xport_hdr_t *hdr_p)
{
    return wait_one(req, deadline_ns, cancel, hdr_p);
}

mp_status_t mp_xport_wait_all(mp_xport_req_t **reqs, size_t n, int64_t timeout_ms)
{
    mp_xport_worker_t *w = NULL;
    for (size_t i = 0; i < n && w == NULL; i++) {
        if (reqs[i] != NULL) {
            w = reqs[i]->worker;
        }
    }
    if (w == NULL) {
        return MP_OK;
    }
    return wait_set_impl(w, reqs, n, deadline_from(w, timeout_ms), NULL, NULL, 1);
}

mp_status_t mp_xport_send_wait(mp_xport_ep_t *ep, const mp_xport_hdr_t *hdr, const void *data,
                               int64_t timeout_ms)
{
    mp_xport_req_t *r;
    mp_status_t st = mp_xport_send(ep, hdr, data, &r);
    if (st != MP_OK) {
        return st;
    }
    return mp_xport_wait(r, timeout_ms, NULL);
}

mp_status_t mp_xport_recv_wait(mp_xport_ep_t *ep, uint32_t job, uint32_t kind, uint32_t micro_batch,
                               void *buf, size_t capacity, int64_t timeout_ms,
                               mp_xport_hdr_t *hdr_p)
{
    mp_xport_req_t *r;
    mp_status_t st = mp_xport_recv(ep, job, kind, micro_batch, buf, capacity, &r);
    if (st != MP_OK) {
        return st;
    }
    return mp_xport_wait(r, timeout_ms, hdr_p);
}
