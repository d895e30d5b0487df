/*
 * log.h - leveled logging to stderr.  Under systemd (JOURNAL_STREAM set, or
 * mp_log_set_syslog_prefix(1)) every line starts with a syslog priority
 * prefix such as "<3>", so journald files it at the right level.
 * Thread-safe: one write(2) per line.
 */
#ifndef MP_LOG_H
#define MP_LOG_H

#include "status.h"

typedef enum {
    MP_LOG_ERR = 3,
    MP_LOG_WARN = 4,
    MP_LOG_NOTICE = 5,
    MP_LOG_INFO = 6,
    MP_LOG_DEBUG = 7,
} mp_log_level_t;

void mp_log_set_level(mp_log_level_t level);
mp_log_level_t mp_log_get_level(void);
/* Returns 0, or MP_ERR_INVAL for an unknown name ("err", "warn", "notice", "info", "debug"). */
mp_status_t mp_log_level_parse(const char *name, mp_log_level_t *level_p);
void mp_log_set_syslog_prefix(int on);
void mp_log_set_tag(const char *tag);
void mp_log(mp_log_level_t level, const char *fmt, ...) MP_PRINTF(2, 3);

#define MP_LOG_ERR_(...) mp_log(MP_LOG_ERR, __VA_ARGS__)
#define mp_err(...) mp_log(MP_LOG_ERR, __VA_ARGS__)
#define mp_warn(...) mp_log(MP_LOG_WARN, __VA_ARGS__)
#define mp_notice(...) mp_log(MP_LOG_NOTICE, __VA_ARGS__)
#define mp_info(...) mp_log(MP_LOG_INFO, __VA_ARGS__)
#define mp_debug(...) mp_log(MP_LOG_DEBUG, __VA_ARGS__)

#endif
