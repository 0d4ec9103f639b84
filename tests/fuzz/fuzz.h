/*
 * Shared by the libFuzzer targets in tests/fuzz/ (see tests/fuzz/README.md):
 * fixture paths and the configuration they load, a checked requirement, a
 * cursor over the input, exact copies (so that ASan sees a read past the end
 * of what a parser was given), and walking typed protocol messages.
 *
 * Fixtures are found relative to the repository root: $BULWARK_TEST_ROOT if
 * set, else the current directory (`make fuzz` runs from the root). A target
 * that cannot load its fixture aborts at once rather than fuzz nothing.
 */
#ifndef BULWARK_TESTS_FUZZ_H
#define BULWARK_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "pgwire/pgwire.h"

static inline const char *fuzz_fixture(const char *rel)
{
    static char b[4][1024];
    static int next;
    const char *root = getenv("BULWARK_TEST_ROOT");
    char *p = b[next++ % 4];
    snprintf(p, sizeof(b[0]), "%s/tests/fixtures/%s", root && *root ? root : ".", rel);
    return p;
}

#define FUZZ_REQUIRE(cond, what)                                                                   \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz setup failed: %s\n", what);                                      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The configuration fixture rel (e.g. "policy/bulwark.json"); aborts if it does not load. */
static inline cfg_t *fuzz_load_config(const char *rel)
{
    cfg_errors_t errs = {0};
    cfg_t *cfg = cfg_load(fuzz_fixture(rel), &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "config: %s\n", errs.msgs[i]);
    cfg_errors_free(&errs);
    FUZZ_REQUIRE(cfg, rel);
    return cfg;
}

/* A malloc'd copy of exactly n bytes (never NULL, even for n == 0). */
static inline uint8_t *fuzz_copy_of(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    FUZZ_REQUIRE(c, "memory");
    if (n)
        memcpy(c, p, n);
    return c;
}

/* Calls fn with each whole typed message (type byte, length, body) of data from
 * off on, each body a copy of exactly its bytes; stops at the first that does not
 * frame or is cut short. */
static inline void fuzz_each_message(const uint8_t *data, size_t size, size_t off,
                                     uint32_t max_body, void (*fn)(char, const uint8_t *, size_t))
{
    while (off < size) {
        pgw_hdr_t h;
        int r = pgw_frame(data + off, size - off, max_body, &h);
        if (r != 1 || 5 + (size_t)h.len > size - off)
            break;
        uint8_t *body = fuzz_copy_of(data + off + 5, h.len);
        fn(h.type, body, h.len);
        free(body);
        off += 5 + h.len;
    }
}

/* A cursor over the fuzz input, for targets that take several values from it. */
typedef struct fuzz_in {
    const uint8_t *p;
    size_t n;
} fuzz_in_t;

static inline uint8_t fuzz_u8(fuzz_in_t *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t fuzz_u16(fuzz_in_t *in)
{
    return (uint16_t)(fuzz_u8(in) << 8 | fuzz_u8(in));
}

/* Up to max bytes (fewer at the end of the input). */
static inline size_t fuzz_take(fuzz_in_t *in, size_t max, const uint8_t **out)
{
    size_t k = max < in->n ? max : in->n;
    *out = in->p;
    in->p += k;
    in->n -= k;
    return k;
}

#endif
