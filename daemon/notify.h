/*
 * notify.h - mpard's messages to systemd (notify.c).  libuv thread.
 */
#ifndef MP_DAEMON_NOTIFY_H
#define MP_DAEMON_NOTIFY_H

#include "common/log.h"
#include "daemon/ctx.h"

void mp_notify_send(const char *fmt, ...) MP_PRINTF(1, 2);
void mp_notify_watchdog_start(mpard_t *d);
/* STATUS= from the roles' counts. */
void mp_notify_status_update(mpard_t *d);

#endif
