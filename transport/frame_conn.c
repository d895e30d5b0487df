/*
 * frame_conn.c - control connections on libuv streams: reads into one
 * loop-wide buffer, decodes frames (or lines) from it, drives the handshake,
 * queues writes with a byte cap, and closes on any bad input with a counted
 * reason.  Owns the stream handle, its two timers, the decoder, the
 * handshake and the pending-line buffer; all are freed from the last close
 * callback, after on_close, so a connection that is still on the call stack
 * is never freed in place.  libuv thread only.
 */
#include "transport/frame_conn.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "common/alloc.h"
#include "common/log.h"
#include "proto/codec.h"

#define READ_BUF_LEN (64 * 1024)
#define QUEUE_HIGH (64 * 1024)
#define QUEUE_LOW (16 * 1024)

typedef enum { MODE_SNIFF = 0, MODE_FRAMES, MODE_LINES } conn_mode_t;

struct mp_conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t stall_timer;
    uv_timer_t hs_timer;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
    int handles_open;
    mp_conn_params_t p;
    mp_conn_cbs_t cbs;
    void *data;
    conn_mode_t mode;
    mp_frame_decoder_t *dec;
    mp_handshake_t *hs;
    char *line;
    size_t line_len, line_cap;
    size_t queued;
    /* Back-pressure: above QUEUE_HIGH bytes of unsent replies the connection
     * stops taking requests; the bytes already read wait in `held`. */
    bool paused;
    bool peer_eof; /* line mode: the peer half-closed, replies may follow */
    uint8_t *held;
    size_t held_len;
    bool ready, ending, closing, has_cred;
    uid_t uid;
    gid_t gid;
    pid_t pid;
    mp_conn_reason_t reason;
    char why[256];
    char peer[80];
};

typedef struct {
    uv_write_t req;
    mp_conn_t *conn;
    size_t len;
    uint8_t *buf;
} conn_write_t;

static mp_conn_stats_t stats;
static char read_buf[READ_BUF_LEN];
static bool read_buf_busy;

const mp_conn_stats_t *mp_conn_stats(void)
{
    return &stats;
}

const char *mp_conn_reason_name(mp_conn_reason_t reason)
{
    static const char *names[] = {
#define MP_CONN_REASON_NAME_(name, text) text,
        MP_CONN_REASON_LIST(MP_CONN_REASON_NAME_)
#undef MP_CONN_REASON_NAME_
    };
    return (unsigned)reason < MP_CONN_REASON_COUNT ? names[reason] : "unknown";
}

bool mp_conn_is_lines(const mp_conn_t *conn)
{
    return conn->mode == MODE_LINES;
}
bool mp_conn_is_closing(const mp_conn_t *conn)
{
    return conn->closing || conn->ending;
}
const mp_handshake_t *mp_conn_handshake(const mp_conn_t *conn)
{
    return conn->hs;
}
const char *mp_conn_peer(const mp_conn_t *conn)
{
    return conn->peer;
}
void *mp_conn_data(const mp_conn_t *conn)
{
    return conn->data;
}
void mp_conn_set_data(mp_conn_t *conn, void *data)
{
    conn->data = data;
}

bool mp_conn_peer_cred(const mp_conn_t *conn, uid_t *uid_p, gid_t *gid_p, pid_t *pid_p)
{
    if (!conn->has_cred) {
        return false;
    }
    *uid_p = conn->uid;
    *gid_p = conn->gid;
    *pid_p = conn->pid;
    return true;
}

static void params_defaults(mp_conn_params_t *p)
{
    if (p->max_frame == 0) {
        p->max_frame = MP_FRAME_MAX_DEFAULT;
    }
    if (p->stall_ms == 0) {
        p->stall_ms = 10000;
    }
    if (p->handshake_ms == 0) {
        p->handshake_ms = 10000;
    }
    if (p->max_queued == 0) {
        p->max_queued = 16u << 20;
    }
    if (p->max_line == 0) {
        p->max_line = 1u << 20;
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    mp_conn_t *conn = h->data;
    if (--conn->handles_open > 0) {
        return;
    }
    if (stats.open > 0) {
        stats.open--;
    }
    if (conn->cbs.on_close != NULL) {
        conn->cbs.on_close(conn, conn->reason, conn->why, conn->data);
    }
    mp_frame_decoder_destroy(conn->dec);
    mp_handshake_destroy(conn->hs);
    mp_free(conn->line);
    mp_free(conn->held);
    mp_free(conn);
}

void mp_conn_close(mp_conn_t *conn, mp_conn_reason_t reason, const char *why)
{
    if (conn->closing) {
        return;
    }
    conn->closing = true;
    conn->reason = reason;
    if (why != conn->why) {
        snprintf(conn->why, sizeof(conn->why), "%s", why ? why : "");
    }
    stats.closed[reason]++;
    if (reason != MP_CONN_EOF && reason != MP_CONN_LOCAL) {
        mp_info("connection %s closed (%s): %s", conn->peer, mp_conn_reason_name(reason),
                conn->why);
    } else {
        mp_debug("connection %s closed (%s): %s", conn->peer, mp_conn_reason_name(reason),
                 conn->why);
    }
    uv_close(&conn->h.handle, on_handle_closed);
    uv_close((uv_handle_t *)&conn->stall_timer, on_handle_closed);
    uv_close((uv_handle_t *)&conn->hs_timer, on_handle_closed);
}

static void on_stall(uv_timer_t *t);

static void on_shutdown(uv_shutdown_t *req, int status)
{
    mp_conn_t *conn = req->data;
    mp_conn_close(conn, conn->reason, conn->why);
}

void mp_conn_end(mp_conn_t *conn, mp_conn_reason_t reason, const char *why)
{
    if (conn->closing || conn->ending) {
        return;
    }
    conn->ending = true;
    conn->reason = reason;
    if (why != conn->why) {
        snprintf(conn->why, sizeof(conn->why), "%s", why ? why : "");
    }
    uv_read_stop(&conn->h.stream);
    uv_timer_stop(&conn->stall_timer);
    /* A peer that never reads must not hold the connection open: the stall
     * timer bounds the flush. */
    uv_timer_start(&conn->stall_timer, on_stall, conn->p.stall_ms, 0);
    conn->shutdown_req.data = conn;
    if (conn->queued == 0 || uv_shutdown(&conn->shutdown_req, &conn->h.stream, on_shutdown) != 0) {
        mp_conn_close(conn, reason, conn->why);
    }
}

static void conn_resume(mp_conn_t *conn);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status)
{
    conn_write_t *w = (conn_write_t *)req;
    mp_conn_t *conn = w->conn;
    conn->queued -= w->len;
    mp_free(w->buf);
    mp_free(w);
    if (status < 0 && !conn->closing) {
        mp_conn_close(conn, MP_CONN_IO, uv_strerror(status));
        return;
    }
    if (conn->paused && conn->queued <= QUEUE_LOW && !conn->closing && !conn->ending) {
        conn_resume(conn);
    }
}

/* Takes ownership of buf (mp_malloc'ed). */
static mp_status_t conn_write(mp_conn_t *conn, uint8_t *buf, size_t len)
{
    if (conn->closing) {
        mp_free(buf);
        return MP_ERR_CLOSED;
    }
    if (conn->queued + len > conn->p.max_queued) {
        mp_free(buf);
        mp_conn_close(conn, MP_CONN_SLOW_READER, "peer does not read its replies");
        return MP_ERR_CLOSED;
    }
    conn_write_t *w = mp_malloc(sizeof(*w));
    if (w == NULL) {
        mp_free(buf);
        mp_conn_close(conn, MP_CONN_LOCAL, "out of memory");
        return MP_ERR_NOMEM;
    }
    w->conn = conn;
    w->len = len;
    w->buf = buf;
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    int rc = uv_write(&w->req, &conn->h.stream, &b, 1, on_write);
    if (rc != 0) {
        mp_free(buf);
        mp_free(w);
        mp_conn_close(conn, MP_CONN_IO, uv_strerror(rc));
        return MP_ERR_IO;
    }
    conn->queued += len;
    stats.bytes_out += len;
    return MP_OK;
}

mp_status_t mp_conn_send(mp_conn_t *conn, const Mpar__Envelope *env)
{
    uint8_t *buf;
    size_t len;
    if (conn->closing) {
        return MP_ERR_CLOSED;
    }
    mp_status_t st = mp_frame_pack(env, conn->p.max_frame, &buf, &len);
    if (st != MP_OK) {
        mp_err("cannot encode %s for %s: %s", mp_frame_msg_name(env->msg_case), conn->peer,
               mp_strerror(st));
        mp_conn_close(conn, MP_CONN_LOCAL, "reply could not be encoded");
        return st;
    }
    stats.frames_out++;
    return conn_write(conn, buf, len);
}

mp_status_t mp_conn_send_raw(mp_conn_t *conn, const void *bytes, size_t len)
{
    if (conn->closing) {
        return MP_ERR_CLOSED;
    }
    if (conn->queued == 0 && len > 0) {
        /* Nothing queued: the reply usually fits the socket buffer whole,
         * and a write now saves the copy, the request and its callback
         * (the status socket's requests/s are mostly this). */
        uv_buf_t b = uv_buf_init((char *)bytes, (unsigned)len);
        int w = uv_try_write(&conn->h.stream, &b, 1);
        if (w > 0) {
            stats.bytes_out += (uint64_t)w;
            bytes = (const uint8_t *)bytes + w;
            len -= (size_t)w;
            if (len == 0) {
                return MP_OK;
            }
        } else if (w != UV_EAGAIN && w != UV_ENOSYS) {
            mp_conn_close(conn, MP_CONN_IO, uv_strerror(w));
            return MP_ERR_IO;
        }
    }
    uint8_t *buf = mp_malloc(len > 0 ? len : 1);
    if (buf == NULL) {
        mp_conn_close(conn, MP_CONN_LOCAL, "out of memory");
        return MP_ERR_NOMEM;
    }
    memcpy(buf, bytes, len);
    return conn_write(conn, buf, len);
}

void mp_conn_fail(mp_conn_t *conn, Mpar__ErrorCode code, mp_conn_reason_t reason,
                  const char *message)
{
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__Error e = MPAR__ERROR__INIT;
    e.code = code;
    e.message = (char *)message;
    env.msg_case = MPAR__ENVELOPE__MSG_ERROR;
    env.error = &e;
    if (mp_conn_send(conn, &env) == MP_OK) {
        mp_conn_end(conn, reason, message);
    } else {
        mp_conn_close(conn, reason, message);
    }
}

static void on_stall(uv_timer_t *t)
{
    mp_conn_t *conn = t->data;
    if (conn->ending) {
        mp_conn_close(conn, conn->reason, conn->why);
        return;
    }
    if (conn->paused) {
        mp_conn_close(conn, MP_CONN_SLOW_READER, "peer does not read its replies");
        return;
    }
    if (conn->peer_eof) {
        mp_conn_close(conn, MP_CONN_EOF, "no reply in time after the peer's end");
        return;
    }
    mp_conn_close(conn, MP_CONN_STALL, "peer stalled in the middle of a message");
}

static void on_hs_timeout(uv_timer_t *t)
{
    mp_conn_t *conn = t->data;
    if (conn->mode == MODE_LINES) {
        /* In line mode this timer is the idle timer: a reader that holds a
         * connection without asking anything gives its descriptor back. */
        if (!conn->ending && !conn->paused && !conn->peer_eof) {
            mp_conn_close(conn, MP_CONN_IDLE, "no request in time (idle status-socket reader)");
        }
        return;
    }
    if (!conn->ready) {
        mp_conn_close(conn, MP_CONN_HANDSHAKE_TIMEOUT, "no handshake in time");
    }
}

/* Line mode: (re)arms the idle timer after a request. */
static void conn_idle_rearm(mp_conn_t *conn)
{
    if (conn->p.idle_ms > 0 && !conn->closing) {
        uv_timer_start(&conn->hs_timer, on_hs_timeout, conn->p.idle_ms, 0);
    } else {
        uv_timer_stop(&conn->hs_timer);
    }
}

static mp_conn_reason_t reason_of(mp_status_t st)
{
    switch (st) {
    case MP_ERR_AUTH:
        return MP_CONN_AUTH;
    case MP_ERR_UNSUPPORTED:
        return MP_CONN_VERSION;
    case MP_ERR_TOOBIG:
        return MP_CONN_TOOBIG;
    default:
        return MP_CONN_PROTO;
    }
}

static void conn_set_ready(mp_conn_t *conn)
{
    conn->ready = true;
    uv_timer_stop(&conn->hs_timer);
    mp_frame_decoder_set_max(conn->dec, conn->p.max_frame);
    if (conn->cbs.on_ready != NULL) {
        conn->cbs.on_ready(conn, conn->data);
    }
}

static void conn_on_frame(mp_conn_t *conn, const uint8_t *frame, size_t len)
{
    mp_errbuf_t err;
    Mpar__Envelope *env;
    mp_status_t st = mp_frame_unpack(frame, len, &env, &err);
    if (st != MP_OK) {
        mp_conn_fail(conn, MPAR__ERROR_CODE__ERROR_CODE_PROTOCOL, MP_CONN_PROTO, err.msg);
        return;
    }
    stats.frames_in++;
    if (conn->ready) {
        if (conn->cbs.on_envelope != NULL) {
            conn->cbs.on_envelope(conn, env, conn->data);
        }
        mp_frame_envelope_free(env);
        return;
    }
    mp_handshake_out_t out;
    st = mp_handshake_on_envelope(conn->hs, env, &out, &err);
    mp_frame_envelope_free(env);
    if (out.has_msg) {
        mp_conn_send(conn, &out.env);
    }
    if (st != MP_OK) {
        mp_conn_end(conn, reason_of(st), err.msg);
        return;
    }
    if (mp_handshake_done(conn->hs)) {
        conn_set_ready(conn);
    }
}

/* Stops reading and keeps the unprocessed bytes until the replies drain; a
 * peer that does not drain them within stall_ms is a slow reader. */
static void conn_pause(mp_conn_t *conn, const void *rest, size_t len)
{
    uint8_t *held = mp_malloc(len);
    if (held == NULL) {
        mp_conn_close(conn, MP_CONN_LOCAL, "out of memory");
        return;
    }
    memcpy(held, rest, len);
    mp_free(conn->held);
    conn->held = held;
    conn->held_len = len;
    conn->paused = true;
    uv_read_stop(&conn->h.stream);
    uv_timer_start(&conn->stall_timer, on_stall, conn->p.stall_ms, 0);
}

static void conn_feed_frames(mp_conn_t *conn, const uint8_t *data, size_t len)
{
    while (len > 0 && !conn->closing && !conn->ending) {
        size_t used = 0;
        const uint8_t *frame;
        size_t flen;
        mp_errbuf_t err;
        mp_status_t st = mp_frame_decoder_feed(conn->dec, data, len, &used, &frame, &flen, &err);
        data += used;
        len -= used;
        if (st == MP_ERR_INPROGRESS) {
            break;
        }
        if (st != MP_OK) {
            mp_conn_fail(conn,
                         st == MP_ERR_TOOBIG ? MPAR__ERROR_CODE__ERROR_CODE_TOO_BIG
                                             : MPAR__ERROR_CODE__ERROR_CODE_PROTOCOL,
                         reason_of(st), err.msg);
            return;
        }
        conn_on_frame(conn, frame, flen);
        if (len > 0 && conn->queued > QUEUE_HIGH && !conn->closing && !conn->ending) {
            conn_pause(conn, data, len);
            return;
        }
    }
}

/* Adds data to the pending line; false when the line would exceed max_line
 * or cannot grow. */
static bool line_append(mp_conn_t *conn, const char *data, size_t len)
{
    if (conn->line_len + len > conn->p.max_line) {
        return false;
    }
    if (conn->line_len + len + 1 > conn->line_cap) {
        size_t cap = conn->line_cap ? conn->line_cap : 1024;
        while (cap < conn->line_len + len + 1) {
            cap *= 2;
        }
        char *nl = mp_realloc(conn->line, cap);
        if (nl == NULL) {
            return false;
        }
        conn->line = nl;
        conn->line_cap = cap;
    }
    memcpy(conn->line + conn->line_len, data, len);
    conn->line_len += len;
    conn->line[conn->line_len] = '\0';
    return true;
}

/* line is NUL-terminated at len and writable (read buffer or conn->line). */
static void conn_line(mp_conn_t *conn, char *line, size_t len)
{
    stats.lines_in++;
    conn->ready = true;
    if (len > 0 && line[len - 1] == '\r') {
        line[--len] = '\0';
    }
    if (len > 0) {
        conn_idle_rearm(conn); /* a blank line is no request: it keeps no reader */
    }
    conn->cbs.on_line(conn, line, len, false, conn->data);
}

/* Hands the pending line (conn->line) to on_line and empties it. */
static void conn_line_flush(mp_conn_t *conn)
{
    size_t total = conn->line_len;
    conn->line_len = 0;
    conn_line(conn, conn->line, total);
}

static void conn_oversized_line(mp_conn_t *conn)
{
    conn->line_len = 0;
    conn->cbs.on_line(conn, "", 0, true, conn->data);
    if (!conn->closing && !conn->ending) {
        mp_conn_end(conn, MP_CONN_TOOBIG, "request line too long");
    }
}

/* data is the loop-wide read buffer: lines are NUL-terminated in place. */
static void conn_feed_lines(mp_conn_t *conn, char *data, size_t len)
{
    while (len > 0 && !conn->closing && !conn->ending) {
        char *nl = memchr(data, '\n', len);
        if (nl == NULL) {
            if (!line_append(conn, data, len)) {
                conn_oversized_line(conn);
            }
            return;
        }
        size_t n = (size_t)(nl - data);
        if (conn->line_len == 0) {
            if (n > conn->p.max_line) {
                conn_oversized_line(conn);
                return;
            }
            *nl = '\0';
            conn_line(conn, data, n);
        } else {
            if (!line_append(conn, data, n)) {
                conn_oversized_line(conn);
                return;
            }
            conn_line_flush(conn);
        }
        data = nl + 1;
        len -= n + 1;
        if (len > 0 && conn->queued > QUEUE_HIGH && !conn->closing && !conn->ending) {
            conn_pause(conn, data, len);
            return;
        }
    }
}

static void conn_after_input(mp_conn_t *conn)
{
    if (conn->closing || conn->ending || conn->paused) {
        return;
    }
    if (mp_frame_decoder_partial(conn->dec) || conn->line_len > 0) {
        uv_timer_start(&conn->stall_timer, on_stall, conn->p.stall_ms, 0);
    } else {
        uv_timer_stop(&conn->stall_timer);
    }
}

static void conn_resume(mp_conn_t *conn)
{
    uint8_t *held = conn->held;
    size_t len = conn->held_len;
    conn->held = NULL;
    conn->held_len = 0;
    conn->paused = false;
    uv_timer_stop(&conn->stall_timer);
    if (held != NULL) {
        /* The held bytes were a read buffer's tail; lines are cut in place. */
        if (conn->mode == MODE_LINES) {
            conn_feed_lines(conn, (char *)held, len);
        } else {
            conn_feed_frames(conn, held, len);
        }
        mp_free(held);
    }
    if (!conn->paused && !conn->closing && !conn->ending) {
        int rc = uv_read_start(&conn->h.stream, on_alloc, on_read);
        if (rc != 0) {
            mp_conn_close(conn, MP_CONN_IO, uv_strerror(rc));
            return;
        }
    }
    conn_after_input(conn);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    if (read_buf_busy) {
        /* Not reached with one loop thread; refuse rather than share. */
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    read_buf_busy = true;
    buf->base = read_buf;
    buf->len = sizeof(read_buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    mp_conn_t *conn = s->data;
    if (buf->base == read_buf) {
        read_buf_busy = false;
    }
    if (nread == 0 || conn->closing) {
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF && conn->mode == MODE_LINES && conn->line_len > 0) {
            /* A last request without its newline is still answered. */
            conn_line_flush(conn);
            mp_conn_end(conn, MP_CONN_EOF, "peer closed");
        } else if (nread == UV_EOF && conn->mode == MODE_LINES && conn->cbs.on_eof != NULL) {
            conn->peer_eof = true;
            uv_read_stop(&conn->h.stream);
            uv_timer_start(&conn->stall_timer, on_stall, conn->p.stall_ms, 0);
            conn->cbs.on_eof(conn, conn->data);
        } else if (nread == UV_EOF) {
            mp_conn_close(conn,
                          mp_frame_decoder_partial(conn->dec) || conn->line_len > 0 ? MP_CONN_PROTO
                                                                                    : MP_CONN_EOF,
                          mp_frame_decoder_partial(conn->dec) ? "truncated frame" : "peer closed");
        } else {
            mp_conn_close(conn, MP_CONN_IO, uv_strerror((int)nread));
        }
        return;
    }
    stats.bytes_in += (uint64_t)nread;
    if (conn->mode == MODE_SNIFF) {
        conn->mode = buf->base[0] == 0 ? MODE_FRAMES : MODE_LINES;
        if (conn->mode == MODE_LINES) {
            /* Line mode has no handshake; the timer bounds idleness instead. */
            conn_idle_rearm(conn);
        }
    }
    if (conn->mode == MODE_LINES) {
        conn_feed_lines(conn, buf->base, (size_t)nread);
    } else {
        conn_feed_frames(conn, (const uint8_t *)buf->base, (size_t)nread);
    }
    conn_after_input(conn);
}

static mp_status_t conn_new(uv_loop_t *loop, bool pipe, const mp_conn_params_t *params,
                            const mp_conn_cbs_t *cbs, void *data, mp_conn_t **conn_p)
{
    mp_conn_t *conn = mp_calloc(1, sizeof(*conn));
    if (conn == NULL) {
        return MP_ERR_NOMEM;
    }
    conn->p = *params;
    params_defaults(&conn->p);
    conn->cbs = *cbs;
    conn->data = data;
    conn->mode = conn->p.sniff_lines ? MODE_SNIFF : MODE_FRAMES;
    mp_status_t st = mp_frame_decoder_create(MP_FRAME_MAX_PREAUTH, &conn->dec);
    if (st == MP_OK) {
        st = mp_handshake_create(&conn->p.hs, &conn->hs);
    }
    if (st != MP_OK) {
        mp_frame_decoder_destroy(conn->dec);
        mp_free(conn);
        return st;
    }
    if (pipe) {
        uv_pipe_init(loop, &conn->h.pipe, 0);
    } else {
        uv_tcp_init(loop, &conn->h.tcp);
    }
    uv_timer_init(loop, &conn->stall_timer);
    uv_timer_init(loop, &conn->hs_timer);
    conn->h.handle.data = conn;
    conn->stall_timer.data = conn;
    conn->hs_timer.data = conn;
    conn->handles_open = 3;
    stats.open++;
    snprintf(conn->peer, sizeof(conn->peer), "%s", pipe ? "unix" : "tcp");
    *conn_p = conn;
    return MP_OK;
}

static void conn_peer_describe(mp_conn_t *conn)
{
    if (conn->h.handle.type == UV_NAMED_PIPE) {
        uv_os_fd_t fd;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (uv_fileno(&conn->h.handle, &fd) == 0 &&
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
            conn->has_cred = true;
            conn->uid = cred.uid;
            conn->gid = cred.gid;
            conn->pid = cred.pid;
            snprintf(conn->peer, sizeof(conn->peer), "unix:pid=%d,uid=%u", (int)cred.pid,
                     (unsigned)cred.uid);
        }
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[64] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&conn->h.tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            uv_ip4_name(a, host, sizeof(host));
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, host, sizeof(host));
            port = ntohs(a->sin6_port);
        }
    }
    snprintf(conn->peer, sizeof(conn->peer), "tcp:%s:%d", host, port);
}

mp_status_t mp_conn_accept(uv_stream_t *server, const mp_conn_params_t *params,
                           const mp_conn_cbs_t *cbs, void *data, mp_conn_t **conn_p)
{
    mp_conn_t *conn;
    mp_status_t st =
        conn_new(server->loop, server->type == UV_NAMED_PIPE, params, cbs, data, &conn);
    if (st != MP_OK) {
        return st;
    }
    int rc = uv_accept(server, &conn->h.stream);
    if (rc == 0) {
        rc = uv_read_start(&conn->h.stream, on_alloc, on_read);
    }
    stats.accepted++;
    if (rc != 0) {
        mp_conn_close(conn, MP_CONN_IO, uv_strerror(rc));
        return MP_ERR_IO;
    }
    conn_peer_describe(conn);
    uv_timer_start(&conn->hs_timer, on_hs_timeout, conn->p.handshake_ms, 0);
    *conn_p = conn;
    return MP_OK;
}

static void on_connect(uv_connect_t *req, int status)
{
    mp_conn_t *conn = req->data;
    if (conn->closing) {
        return;
    }
    if (status < 0) {
        mp_conn_close(conn, MP_CONN_CONNECT, uv_strerror(status));
        return;
    }
    conn_peer_describe(conn);
    int rc = uv_read_start(&conn->h.stream, on_alloc, on_read);
    if (rc != 0) {
        mp_conn_close(conn, MP_CONN_IO, uv_strerror(rc));
        return;
    }
    mp_handshake_out_t out;
    if (mp_handshake_start(conn->hs, &out) != MP_OK) {
        mp_conn_close(conn, MP_CONN_LOCAL, "cannot start the handshake");
        return;
    }
    mp_conn_send(conn, &out.env);
}

mp_status_t mp_conn_connect_tcp(uv_loop_t *loop, const struct sockaddr *addr,
                                const mp_conn_params_t *params, const mp_conn_cbs_t *cbs,
                                void *data, mp_conn_t **conn_p)
{
    mp_conn_t *conn;
    mp_status_t st = conn_new(loop, false, params, cbs, data, &conn);
    if (st != MP_OK) {
        return st;
    }
    conn->connect_req.data = conn;
    int rc = uv_tcp_connect(&conn->connect_req, &conn->h.tcp, addr, on_connect);
    if (rc != 0) {
        mp_conn_close(conn, MP_CONN_CONNECT, uv_strerror(rc));
        return MP_ERR_IO;
    }
    uv_timer_start(&conn->hs_timer, on_hs_timeout, conn->p.handshake_ms, 0);
    *conn_p = conn;
    return MP_OK;
}
