/*
 * status.c - text for mp_status_t, generated from the X-macro list.
 * Pure functions; any thread.
 */
#include "status.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

const char *mp_strerror(mp_status_t status)
{
    switch (status) {
#define MP_STATUS_TEXT_(name, value, text) \
    case name:                             \
        return text;
        MP_STATUS_LIST(MP_STATUS_TEXT_)
#undef MP_STATUS_TEXT_
    }
    return "unknown status";
}

const char *mp_status_name(mp_status_t status)
{
    switch (status) {
#define MP_STATUS_NAME_(name, value, text) \
    case name:                             \
        return #name;
        MP_STATUS_LIST(MP_STATUS_NAME_)
#undef MP_STATUS_NAME_
    }
    return "MP_ERR_UNKNOWN";
}

mp_status_t mp_status_from_errno(int err)
{
    switch (err) {
    case 0:
        return MP_OK;
    case ENOMEM:
        return MP_ERR_NOMEM;
    case EINVAL:
        return MP_ERR_INVAL;
    case ENOENT:
        return MP_ERR_NOTFOUND;
    case ETIMEDOUT:
        return MP_ERR_TIMEOUT;
    case EACCES:
    case EPERM:
        return MP_ERR_AUTH;
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
        return MP_ERR_CLOSED;
    case EBUSY:
        return MP_ERR_BUSY;
    default:
        return MP_ERR_IO;
    }
}

mp_status_t mp_errbuf_set(mp_errbuf_t *err, mp_status_t status, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return status;
}
