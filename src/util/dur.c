#include "util/dur.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

typedef struct unit {
    const char *name;
    uint64_t scale;
} unit_t;

static const unit_t dur_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
};

static const unit_t size_units[] = {
    {"B", 1}, {"KiB", 1ULL << 10}, {"MiB", 1ULL << 20}, {"GiB", 1ULL << 30}, {"TiB", 1ULL << 40},
};

/* Digits then exactly one unit name; value * scale must fit in max. */
static bool parse_scaled(const char *s, const unit_t *units, size_t n_units, uint64_t max,
                         uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    uint64_t v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    for (size_t i = 0; i < n_units; i++) {
        if (strcmp(p, units[i].name) != 0)
            continue;
        if (v > max / units[i].scale)
            return false;
        *out = v * units[i].scale;
        return true;
    }
    return false;
}

bool dur_parse(const char *s, int64_t *out_ms)
{
    uint64_t v;
    if (!parse_scaled(s, dur_units, sizeof(dur_units) / sizeof(dur_units[0]), INT64_MAX, &v))
        return false;
    *out_ms = (int64_t)v;
    return true;
}

bool size_parse(const char *s, uint64_t *out_bytes)
{
    return parse_scaled(s, size_units, sizeof(size_units) / sizeof(size_units[0]), UINT64_MAX,
                        out_bytes);
}

static const char *format_scaled(uint64_t v, const unit_t *units, size_t n_units, char *out,
                                 size_t outsz)
{
    size_t best = 0;
    for (size_t i = 1; i < n_units; i++)
        if (v != 0 && v % units[i].scale == 0)
            best = i;
    snprintf(out, outsz, "%" PRIu64 "%s", v / units[best].scale, units[best].name);
    return out;
}

const char *dur_format(int64_t ms, char *out, size_t outsz)
{
    if (ms < 0) {
        snprintf(out, outsz, "%" PRId64 "ms", ms);
        return out;
    }
    return format_scaled((uint64_t)ms, dur_units, sizeof(dur_units) / sizeof(dur_units[0]), out,
                         outsz);
}

const char *size_format(uint64_t bytes, char *out, size_t outsz)
{
    return format_scaled(bytes, size_units, sizeof(size_units) / sizeof(size_units[0]), out, outsz);
}
