/*
 * metrics.h - the Prometheus text exposition of mpard (metrics.c).
 */
#ifndef MP_DAEMON_METRICS_H
#define MP_DAEMON_METRICS_H

#include "daemon/ctx.h"

/* The text; free with mp_free.  NULL when out of memory. */
char *mp_metrics_render(mpard_t *d);

#endif
