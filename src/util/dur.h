/*
 * dur — strict parsing of the duration and size strings used in config files.
 *
 * Duration: one unsigned decimal integer and one unit, nothing else:
 *   "500ms"  "30s"  "5m"  "1h"  "1d"        (units ms, s, m, h, d; lower case)
 * Size: one unsigned decimal integer and one binary unit:
 *   "512B"  "64KiB"  "1MiB"  "1GiB"  "1TiB"  (case as written)
 * Rejected: signs, spaces, fractions, exponents, a missing or unknown unit,
 * compound forms ("1h30m"), and values that overflow. Bounds that depend on the
 * setting (e.g. "must be more than 0") are the caller's business.
 */
#ifndef BULWARK_UTIL_DUR_H
#define BULWARK_UTIL_DUR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parse a duration into milliseconds; false (out untouched) if not valid. */
bool dur_parse(const char *s, int64_t *out_ms) __attribute__((warn_unused_result));
/* Parse a size into bytes; false (out untouched) if not valid. */
bool size_parse(const char *s, uint64_t *out_bytes) __attribute__((warn_unused_result));

/* Format with the largest unit that represents the value exactly ("90s", "5m",
 * "1500ms"); always NUL-terminates; returns out. */
const char *dur_format(int64_t ms, char *out, size_t outsz);
const char *size_format(uint64_t bytes, char *out, size_t outsz);

#endif
