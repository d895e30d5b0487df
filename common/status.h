/*
 * status.h - the one status enum of mpar (0 = ok, negative = error) and
 * mp_strerror().  Foreign codes (uv, ucs, cuda, cublas, dnnl, errno) are
 * converted to these at the module edge that called them.
 */
#ifndef MP_STATUS_H
#define MP_STATUS_H

#define MP_STATUS_LIST(X)                                         \
    X(MP_OK, 0, "ok")                                             \
    X(MP_ERR_NOMEM, -1, "out of memory")                          \
    X(MP_ERR_INVAL, -2, "invalid argument")                       \
    X(MP_ERR_IO, -3, "input/output error")                        \
    X(MP_ERR_FORMAT, -4, "malformed data")                        \
    X(MP_ERR_SPEC, -5, "invalid job spec")                        \
    X(MP_ERR_TIMEOUT, -6, "timed out")                            \
    X(MP_ERR_PEER, -7, "peer failed or unreachable")              \
    X(MP_ERR_DEVICE, -8, "device error")                          \
    X(MP_ERR_UNSUPPORTED, -9, "not supported")                    \
    X(MP_ERR_AUTH, -10, "authentication refused")                 \
    X(MP_ERR_PROTO, -11, "protocol violation")                    \
    X(MP_ERR_CANCELLED, -12, "cancelled")                         \
    X(MP_ERR_NODEV, -13, "no such device")                        \
    X(MP_ERR_BUSY, -14, "resource busy")                          \
    X(MP_ERR_TRANSPORT, -15, "transport error")                   \
    X(MP_ERR_NOTFOUND, -16, "not found")                          \
    X(MP_ERR_CLOSED, -17, "connection closed")                    \
    X(MP_ERR_TOOBIG, -18, "message too large")                    \
    X(MP_ERR_INPROGRESS, -19, "operation in progress")            \
    X(MP_ERR_STATE, -20, "invalid state for this operation")      \
    X(MP_ERR_NONFINITE, -21, "not a finite number")

typedef enum {
#define MP_STATUS_ENUM_(name, value, text) name = value,
    MP_STATUS_LIST(MP_STATUS_ENUM_)
#undef MP_STATUS_ENUM_
} mp_status_t;

const char *mp_strerror(mp_status_t status);
/* The symbolic name, e.g. "MP_ERR_TIMEOUT". */
const char *mp_status_name(mp_status_t status);
/* errno value -> status. */
mp_status_t mp_status_from_errno(int err);

/* Returns expr's status from the calling function unless it is MP_OK. */
#define MP_TRY(expr)                                                                               \
    do {                                                                                           \
        mp_status_t try_st_ = (expr);                                                              \
        if (try_st_ != MP_OK) {                                                                    \
            return try_st_;                                                                        \
        }                                                                                          \
    } while (0)

/*
 * A buffer for a human-readable reason that travels with a status to the
 * user (a job spec's field path, a corrupt file's name).  Functions that take
 * one fill it only when they return an error.
 */
typedef struct {
    char msg[1024];
} mp_errbuf_t;

#if defined(__GNUC__)
#define MP_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define MP_PRINTF(fmt_idx, arg_idx)
#endif

/* Sets err->msg (when err is not NULL) and returns status, for `return mp_errbuf_set(...)`. */
mp_status_t mp_errbuf_set(mp_errbuf_t *err, mp_status_t status, const char *fmt, ...)
    MP_PRINTF(3, 4);

#endif
