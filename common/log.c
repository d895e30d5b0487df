/*
 * log.c - leveled logging to stderr, with syslog priority prefixes when run
 * by systemd.  Any thread: each line is formatted into a local buffer and
 * written with one write(2), so lines from several threads never interleave.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = MP_LOG_INFO;
static _Atomic int log_prefix = -1; /* -1: decide from JOURNAL_STREAM */
static char log_tag[32] = "mpar";

void mp_log_set_level(mp_log_level_t level) { log_level = (int)level; }
mp_log_level_t mp_log_get_level(void) { return (mp_log_level_t)log_level; }
void mp_log_set_syslog_prefix(int on) { log_prefix = on ? 1 : 0; }

void mp_log_set_tag(const char *tag)
{
    snprintf(log_tag, sizeof(log_tag), "%s", tag);
}

mp_status_t mp_log_level_parse(const char *name, mp_log_level_t *level_p)
{
    static const struct {
        const char *name;
        mp_log_level_t level;
    } names[] = {
        {"err", MP_LOG_ERR},     {"error", MP_LOG_ERR},   {"warn", MP_LOG_WARN},
        {"warning", MP_LOG_WARN}, {"notice", MP_LOG_NOTICE}, {"info", MP_LOG_INFO},
        {"debug", MP_LOG_DEBUG},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(name, names[i].name) == 0) {
            *level_p = names[i].level;
            return MP_OK;
        }
    }
    return MP_ERR_INVAL;
}

void mp_log(mp_log_level_t level, const char *fmt, ...)
{
    if ((int)level > log_level) {
        return;
    }
    int prefix = log_prefix;
    if (prefix < 0) {
        prefix = getenv("JOURNAL_STREAM") != NULL;
        log_prefix = prefix;
    }
    static const char *names[] = {"", "", "", "error", "warning", "notice", "info", "debug"};
    char line[2048];
    size_t n = 0;
    if (prefix) {
        n = (size_t)snprintf(line, sizeof(line), "<%d>", (int)level);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        localtime_r(&ts.tv_sec, &tm);
        n = strftime(line, sizeof(line), "%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ld %s %s: ", ts.tv_nsec / 1000000,
                              log_tag, names[level]);
    }
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (k > 0) {
        n += (size_t)k;
    }
    if (n > sizeof(line) - 2) {
        n = sizeof(line) - 2;
    }
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
