/*
 * Shared by the libFuzzer targets in tests/fuzz/ (see tests/fuzz/README.md).
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
