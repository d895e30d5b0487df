/*
 * session.h - the connections mpard accepts (session.c): cluster TCP and
 * the Unix status socket.  libuv thread.
 */
#ifndef MP_DAEMON_SESSION_H
#define MP_DAEMON_SESSION_H

#include <uv.h>

#include "daemon/ctx.h"

/* A status-socket reader that sends no request for this many dead-after
 * periods is closed (30 s at the default dead-after of 5 s). */
#define MP_SESSION_IDLE_FACTOR 6

void mp_session_on_accept(uv_stream_t *server, int status);
void mp_session_close_all(mpard_t *d); /* flush, then close */
void mp_session_abort_all(mpard_t *d); /* close now */

#endif
