/*
 * log — one line per event on stderr: `ts=... level=... event=... key=value ...`.
 *
 * Callers pass the key=value tail as a format; values that may contain spaces
 * or quotes go through log_q(), which quotes and escapes into a caller buffer.
 * Never pass a token, password or row value.
 */
#ifndef BULWARK_UTIL_LOG_H
#define BULWARK_UTIL_LOG_H

#include <stddef.h>

typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

void log_set_level(log_level_t min);
void log_event(log_level_t lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Quote `s` for a log value into out (always NUL-terminated); returns out. */
const char *log_q(char *out, size_t outsz, const char *s);

#endif
