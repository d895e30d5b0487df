/*
 * frame_conn.h - one control connection on a libuv stream (TCP or Unix):
 * framing with the length checked before allocation (MP_FRAME_MAX_PREAUTH
 * until the handshake is done, then the connection's max_frame), the
 * handshake of transport/auth.h, a stall timeout for a peer that stops
 * mid-frame, a handshake timeout, and a cap on queued output so that a slow
 * reader cannot make the daemon buffer without bound.  A connection may also
 * sniff its first byte and switch to newline-delimited lines (the status
 * socket's JSON): a frame always starts with 0x00 because frames are far
 * below 16 MiB.  libuv thread only.
 */
#ifndef MP_TRANSPORT_FRAME_CONN_H
#define MP_TRANSPORT_FRAME_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/status.h"
#include "proto/mpar.pb-c.h"
#include "transport/auth.h"

typedef struct mp_conn mp_conn_t;

/* Why a connection closed; counted per reason for the metrics. */
#define MP_CONN_REASON_LIST(X)                                                                     \
    X(MP_CONN_EOF, "eof")                                                                          \
    X(MP_CONN_LOCAL, "local")                                                                      \
    X(MP_CONN_IO, "io_error")                                                                      \
    X(MP_CONN_PROTO, "protocol")                                                                   \
    X(MP_CONN_TOOBIG, "oversized")                                                                 \
    X(MP_CONN_AUTH, "auth")                                                                        \
    X(MP_CONN_VERSION, "version")                                                                  \
    X(MP_CONN_STALL, "stalled")                                                                    \
    X(MP_CONN_HANDSHAKE_TIMEOUT, "handshake_timeout")                                              \
    X(MP_CONN_SLOW_READER, "slow_reader")                                                          \
    X(MP_CONN_CONNECT, "connect_failed")                                                           \
    X(MP_CONN_IDLE, "idle")

typedef enum {
#define MP_CONN_REASON_ENUM_(name, text) name,
    MP_CONN_REASON_LIST(MP_CONN_REASON_ENUM_)
#undef MP_CONN_REASON_ENUM_
        MP_CONN_REASON_COUNT
} mp_conn_reason_t;

const char *mp_conn_reason_name(mp_conn_reason_t reason);

typedef struct {
    /* A whole frame after the handshake.  The Envelope is freed after the
     * callback returns.  The callback may close the connection. */
    void (*on_envelope)(mp_conn_t *conn, const Mpar__Envelope *env, void *data);
    /* The handshake is done (framed) or the first line arrived (lines). */
    void (*on_ready)(mp_conn_t *conn, void *data);
    /* Line mode: one line without its newline, NUL-terminated.  `oversized`
     * is set (and line empty) when a line exceeded max_line: reply and end. */
    void (*on_line)(mp_conn_t *conn, const char *line, size_t len, bool oversized, void *data);
    /* Line mode, optional: the peer finished sending (a half-close) with no
     * partial line.  Reading stops; the connection stays for replies until
     * mp_conn_end (bounded by stall_ms).  Without it the connection closes. */
    void (*on_eof)(mp_conn_t *conn, void *data);
    /* Exactly once, from the close callback; the connection is freed after. */
    void (*on_close)(mp_conn_t *conn, mp_conn_reason_t reason, const char *why, void *data);
} mp_conn_cbs_t;

typedef struct {
    mp_handshake_params_t hs; /* side, secret, epoch/name (server), role/name (client) */
    uint32_t max_frame;       /* after the handshake; default MP_FRAME_MAX_DEFAULT */
    uint64_t stall_ms;        /* a partial frame or line with no progress: close; default 10000 */
    uint64_t handshake_ms;    /* default 10000 */
    size_t max_queued; /* bytes of queued output before the peer counts as a slow reader; default 16
                          MiB */
    bool sniff_lines;  /* a first byte other than 0x00 switches to line mode */
    size_t max_line;   /* default 1 MiB */
    uint64_t idle_ms;  /* line mode: no request (a line not blank) for this long
                          closes; 0 = never */
} mp_conn_params_t;

/* Accepts a pending connection of `server` (a uv_tcp_t or uv_pipe_t). */
mp_status_t mp_conn_accept(uv_stream_t *server, const mp_conn_params_t *params,
                           const mp_conn_cbs_t *cbs, void *data, mp_conn_t **conn_p);
/* Connects over TCP to host:port (numeric host) and starts the client handshake. */
mp_status_t mp_conn_connect_tcp(uv_loop_t *loop, const struct sockaddr *addr,
                                const mp_conn_params_t *params, const mp_conn_cbs_t *cbs,
                                void *data, mp_conn_t **conn_p);

/* Queues one Envelope.  MP_ERR_CLOSED after close; on MP_ERR_TOOBIG or a
 * write failure the connection is closed.  Callers propagate, never retry. */
mp_status_t mp_conn_send(mp_conn_t *conn, const Mpar__Envelope *env);
/* Queues raw bytes (line mode replies); copies them. */
mp_status_t mp_conn_send_raw(mp_conn_t *conn, const void *bytes, size_t len);
/* Sends an Error envelope and ends the connection. */
void mp_conn_fail(mp_conn_t *conn, Mpar__ErrorCode code, mp_conn_reason_t reason,
                  const char *message);
/* Stops reading, flushes queued output, then closes (reason counted). */
void mp_conn_end(mp_conn_t *conn, mp_conn_reason_t reason, const char *why);
/* Closes now, dropping queued output.  Idempotent. */
void mp_conn_close(mp_conn_t *conn, mp_conn_reason_t reason, const char *why);

bool mp_conn_is_lines(const mp_conn_t *conn);
bool mp_conn_is_closing(const mp_conn_t *conn);
const mp_handshake_t *mp_conn_handshake(const mp_conn_t *conn);
/* "tcp:1.2.3.4:5678" or "unix" */
const char *mp_conn_peer(const mp_conn_t *conn);
/* Unix peers: credentials from SO_PEERCRED; false for TCP. */
bool mp_conn_peer_cred(const mp_conn_t *conn, uid_t *uid_p, gid_t *gid_p, pid_t *pid_p);
void *mp_conn_data(const mp_conn_t *conn);
void mp_conn_set_data(mp_conn_t *conn, void *data);

/* Process-wide counters (libuv thread). */
typedef struct {
    uint64_t accepted;
    uint64_t open;
    uint64_t frames_in;
    uint64_t frames_out;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t lines_in;
    uint64_t closed[MP_CONN_REASON_COUNT];
} mp_conn_stats_t;

const mp_conn_stats_t *mp_conn_stats(void);

#endif
