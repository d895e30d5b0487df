/*
 * notify.c - mpard's messages to systemd (sd_notify): READY=1, STATUS=,
 * STOPPING=1, RELOADING=1, and WATCHDOG=1 from a libuv timer at half of
 * WatchdogSec, so a stuck loop is restarted.  Without NOTIFY_SOCKET these
 * are no-ops.  libuv thread.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "common/log.h"
#include "daemon/agent.h"
#include "daemon/coord.h"
#include "daemon/notify.h"

void mp_notify_send(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    static bool warned;
    int rc = sd_notify(0, buf);
    if (rc < 0 && !warned) {
        /* Once: a NOTIFY_SOCKET nobody listens on must not flood the log. */
        warned = true;
        mp_warn("sd_notify to %s: %s", getenv("NOTIFY_SOCKET"), strerror(-rc));
    }
}

static void on_watchdog(uv_timer_t *t)
{
    mp_notify_send("WATCHDOG=1");
}

void mp_notify_watchdog_start(mpard_t *d)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
        return;
    }
    uint64_t every = usec / 2000;
    if (every == 0) {
        every = 1;
    }
    uv_timer_init(d->loop, &d->watchdog_timer);
    d->watchdog_on = true;
    uv_timer_start(&d->watchdog_timer, on_watchdog, every, every);
    mp_info("systemd watchdog: WATCHDOG=1 every %llu ms", (unsigned long long)every);
}

void mp_notify_status_update(mpard_t *d)
{
    if (getenv("NOTIFY_SOCKET") == NULL || d->stopping) {
        return;
    }
    char text[300] = "";
    size_t n = 0;
    if (d->coord != NULL) {
        int ns[5], js[6];
        mp_coord_counts(d->coord, ns, js);
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "coordinator on %s: %d alive node%s, %d pending job%s; ",
                              d->tcp_bound, ns[MPAR__NODE_STATE__NODE_STATE_ALIVE],
                              ns[MPAR__NODE_STATE__NODE_STATE_ALIVE] == 1 ? "" : "s",
                              js[MPAR__JOB_STATE__JOB_STATE_PENDING],
                              js[MPAR__JOB_STATE__JOB_STATE_PENDING] == 1 ? "" : "s");
    }
    if (d->agent != NULL && n < sizeof(text)) {
        snprintf(text + n, sizeof(text) - n, "node %s (%d device%s): %s", d->cfg.name, d->ndevices,
                 d->ndevices == 1 ? "" : "s", mp_agent_state(d->agent));
    }
    mp_notify_send("STATUS=%s", text);
}
