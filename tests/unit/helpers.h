/*
 * What the unit tests share: where the fixtures are, scratch directories, and
 * reading and writing small files. Include after <cmocka.h> (the helpers
 * fail the running test through cmocka's assertions).
 *
 * Fixtures: tests/fixtures/... relative to the repository root, which is
 * $BULWARK_TEST_ROOT if set (and not "."), else the current directory (`make
 * unit` runs from the root). The path is relative when the root is, so that
 * messages quoting it (test_config's expected errors) read the same.
 *
 * Tokens: test_b64url is the tests' own base64url (OpenSSL's encoder, not the
 * library's), so that a token a test builds does not share a bug with the code
 * that reads it.
 *
 * Scratch directories: $TMPDIR/NAME-XXXXXX (P_tmpdir without TMPDIR), made
 * with mkdtemp and removed whole with test_rmtree.
 */
#ifndef BULWARK_TESTS_UNIT_HELPERS_H
#define BULWARK_TESTS_UNIT_HELPERS_H

#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#define TEST_PATH_MAX 1024
#define TEST_DIR_MAX 200 /* a scratch directory's path (test_mkdtemp fails the test if longer) */

/* tests/fixtures/ followed by the printf-formatted rest ("config/%s", name); the
 * result lives until 8 more calls. */
__attribute__((format(printf, 1, 2))) static inline const char *test_fixture(const char *fmt, ...)
{
    static char ring[8][TEST_PATH_MAX];
    static unsigned next;
    char *b = ring[next++ % 8];
    const char *root = getenv("BULWARK_TEST_ROOT");
    int n;
    if (root && *root && strcmp(root, "."))
        n = snprintf(b, TEST_PATH_MAX, "%s/tests/fixtures/", root);
    else
        n = snprintf(b, TEST_PATH_MAX, "tests/fixtures/");
    assert_true(n > 0 && n < TEST_PATH_MAX);
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b + n, TEST_PATH_MAX - (size_t)n, fmt, ap);
    va_end(ap);
    assert_true(k >= 0 && k < TEST_PATH_MAX - n);
    return b;
}

/* The directory for scratch files: $TMPDIR, else P_tmpdir. */
static inline const char *test_tmp_base(void)
{
    const char *t = getenv("TMPDIR");
    return t && *t ? t : P_tmpdir;
}

/* A new empty directory $TMPDIR/NAME-XXXXXX, its path written to buf. */
static inline char *test_mkdtemp(char *buf, size_t n, const char *name)
{
    int k = snprintf(buf, n, "%s/%s-XXXXXX", test_tmp_base(), name);
    assert_true(k > 0 && (size_t)k < n);
    assert_non_null(mkdtemp(buf));
    return buf;
}

static inline int test_rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    return remove(p);
}

/* Removes dir and everything below it (links are removed, not followed). */
static inline void test_rmtree(const char *dir)
{
    nftw(dir, test_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The whole file, NUL-terminated (its length in *len if len); fails the test if unreadable. */
static inline char *test_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    assert_true(n >= 0);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    if (len)
        *len = (size_t)n;
    return s;
}

/* Writes text to DIR/NAME (replacing it). */
static inline void test_write_file(const char *dir, const char *name, const char *text)
{
    char p[TEST_PATH_MAX];
    int k = snprintf(p, sizeof(p), "%s/%s", dir, name);
    assert_true(k > 0 && (size_t)k < sizeof(p));
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* base64url without padding of n bytes (malloc'd). */
static inline char *test_b64url(const void *p, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    assert_non_null(out);
    int len = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = 0;
    for (char *c = out; *c; c++)
        *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
    return out;
}

#endif
