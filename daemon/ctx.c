/*
 * ctx.c - the daemon context's clock (ctx.h).  Any thread.
 */
#include <time.h>

#include "daemon/ctx.h"

uint64_t mpard_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
