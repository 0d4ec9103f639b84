/* Unit tests for util/dur, util/glob and util/b64: tables of (input, expected). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/b64.h"
#include "util/dur.h"
#include "util/glob.h"

/* ---- durations ---- */

static const struct {
    const char *in;
    bool ok;
    int64_t ms;
} dur_cases[] = {
    {"500ms", true, 500},
    {"0ms", true, 0},
    {"0s", true, 0},
    {"30s", true, 30000},
    {"5m", true, 300000},
    {"1h", true, 3600000},
    {"24h", true, 86400000},
    {"1d", true, 86400000},
    {"7d", true, 604800000},
    {"007s", true, 7000},
    {"9223372036854775807ms", true, INT64_MAX},
    {"9223372036854775808ms", false, 0}, /* overflows int64 */
    {"106751991167301d", false, 0},      /* overflows once scaled */
    {"99999999999999999999999s", false, 0},
    {"", false, 0},
    {"s", false, 0},
    {"30", false, 0},  /* unit required */
    {"30S", false, 0}, /* units are lower case */
    {"5M", false, 0},
    {"30 s", false, 0},
    {" 30s", false, 0},
    {"30s ", false, 0},
    {"-5s", false, 0},
    {"+5s", false, 0},
    {"1.5h", false, 0},
    {"1e3ms", false, 0},
    {"1h30m", false, 0}, /* one term only */
    {"30sec", false, 0},
    {"30us", false, 0},
    {"0x10s", false, 0},
    {"ms", false, 0},
};

static void parses_durations_strictly(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(dur_cases) / sizeof(dur_cases[0]); i++) {
        int64_t ms = -42;
        bool ok = dur_parse(dur_cases[i].in, &ms);
        if (ok != dur_cases[i].ok)
            fail_msg("dur_parse(\"%s\") returned %d", dur_cases[i].in, ok);
        if (ok && ms != dur_cases[i].ms)
            fail_msg("dur_parse(\"%s\") = %lld", dur_cases[i].in, (long long)ms);
        if (!ok && ms != -42)
            fail_msg("dur_parse(\"%s\") wrote its output on failure", dur_cases[i].in);
    }
    int64_t ms;
    assert_false(dur_parse(NULL, &ms));
}

static void formats_durations_in_largest_exact_unit(void **state)
{
    (void)state;
    char b[32];
    assert_string_equal(dur_format(0, b, sizeof(b)), "0ms");
    assert_string_equal(dur_format(500, b, sizeof(b)), "500ms");
    assert_string_equal(dur_format(1500, b, sizeof(b)), "1500ms");
    assert_string_equal(dur_format(30000, b, sizeof(b)), "30s");
    assert_string_equal(dur_format(90000, b, sizeof(b)), "90s");
    assert_string_equal(dur_format(300000, b, sizeof(b)), "5m");
    assert_string_equal(dur_format(86400000, b, sizeof(b)), "1d");
    assert_string_equal(dur_format(90000000, b, sizeof(b)), "25h");
}

/* ---- sizes ---- */

static const struct {
    const char *in;
    bool ok;
    uint64_t bytes;
} size_cases[] = {
    {"512B", true, 512},
    {"0B", true, 0},
    {"64KiB", true, 65536},
    {"1MiB", true, 1048576},
    {"1GiB", true, 1073741824ULL},
    {"2TiB", true, 2199023255552ULL},
    {"18446744073709551615B", true, UINT64_MAX},
    {"18446744073709551616B", false, 0},
    {"16777216TiB", false, 0}, /* 2^64 */
    {"", false, 0},
    {"64", false, 0},
    {"64K", false, 0},
    {"64KB", false, 0},
    {"64kib", false, 0},
    {"64 KiB", false, 0},
    {"1.5MiB", false, 0},
    {"-1B", false, 0},
    {"KiB", false, 0},
    {"1MiBs", false, 0},
    {"1b", false, 0},
};

static void parses_sizes_strictly(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(size_cases) / sizeof(size_cases[0]); i++) {
        uint64_t v = 42;
        bool ok = size_parse(size_cases[i].in, &v);
        if (ok != size_cases[i].ok)
            fail_msg("size_parse(\"%s\") returned %d", size_cases[i].in, ok);
        if (ok && v != size_cases[i].bytes)
            fail_msg("size_parse(\"%s\") = %llu", size_cases[i].in, (unsigned long long)v);
        if (!ok && v != 42)
            fail_msg("size_parse(\"%s\") wrote its output on failure", size_cases[i].in);
    }
    char b[32];
    assert_string_equal(size_format(65536, b, sizeof(b)), "64KiB");
    assert_string_equal(size_format(1000, b, sizeof(b)), "1000B");
    assert_string_equal(size_format(1073741824ULL, b, sizeof(b)), "1GiB");
}

/* ---- glob ---- */

static const struct {
    const char *pat, *s;
    bool match;
} glob_cases[] = {
    {"svc-agent-*", "svc-agent-7", true},
    {"svc-agent-*", "svc-agent-", true},
    {"svc-agent-*", "svc-agent", false},
    {"svc-agent-*", "xsvc-agent-1", false},
    {"*", "", true},
    {"*", "anything.at/all", true},
    {"", "", true},
    {"", "a", false},
    {"public.*", "public.orders", true},
    {"public.*", "public", false},
    {"public.*", "publicx.orders", false},
    {"public.*", "Public.orders", false}, /* case-sensitive */
    {"*.orders", "shop.orders", true},
    {"*.orders", "shop.orders2", false},
    {"pg_ls_*", "pg_ls_dir", true},
    {"a?c", "abc", true},
    {"a?c", "ac", false},
    {"a?c", "abbc", false},
    {"a?c",
     "a\xc3\xa9"
     "c",
     true}, /* ? is one UTF-8 character */
    {"a??c",
     "a\xc3\xa9"
     "c",
     false},
    {"a*b*c", "aXbYc", true},
    {"a*b*c", "abc", true},
    {"a*b*c", "acb", false},
    {"*a*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
    {"**", "x", true},
    {"*?", "", false},
    {"*?", "x", true},
    {"a*", "a", true},
    {"*c", "abc", true},
    {"*c", "abcd", false},
    {"a.b", "aXb", false}, /* '.' is literal */
    {"[ab]", "a", false},  /* no classes: '[' is literal */
    {"[ab]", "[ab]", true},
};

static void matches_globs(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(glob_cases) / sizeof(glob_cases[0]); i++) {
        bool m = glob_match(glob_cases[i].pat, glob_cases[i].s);
        if (m != glob_cases[i].match)
            fail_msg("glob_match(\"%s\", \"%s\") = %d", glob_cases[i].pat, glob_cases[i].s, m);
    }
    assert_true(glob_has_wildcard("a*"));
    assert_true(glob_has_wildcard("a?"));
    assert_false(glob_has_wildcard("public.orders"));
}

/* ---- base64 ---- */

static const struct {
    const char *raw, *std, *url;
} b64_vectors[] = {
    /* RFC 4648 section 10 */
    {"", "", ""},
    {"f", "Zg==", "Zg"},
    {"fo", "Zm8=", "Zm8"},
    {"foo", "Zm9v", "Zm9v"},
    {"foob", "Zm9vYg==", "Zm9vYg"},
    {"fooba", "Zm9vYmE=", "Zm9vYmE"},
    {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
    /* the two alphabets differ at 62 and 63 */
    {"\xfb\xff\xbf", "+/+/", "-_-_"},
    {"{\"alg\":\"HS256\"}", "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJIUzI1NiJ9"},
};

static void encodes_and_decodes_rfc4648_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(b64_vectors) / sizeof(b64_vectors[0]); i++) {
        const char *raw = b64_vectors[i].raw;
        size_t n = strlen(raw);
        char *e = b64_encode_alloc(raw, n, B64_STD);
        assert_non_null(e);
        assert_string_equal(e, b64_vectors[i].std);
        assert_int_equal(strlen(e), b64_encoded_len(n, B64_STD));
        free(e);
        e = b64_encode_alloc(raw, n, B64_URL);
        assert_non_null(e);
        assert_string_equal(e, b64_vectors[i].url);
        assert_int_equal(strlen(e), b64_encoded_len(n, B64_URL));
        free(e);

        size_t len = 99;
        uint8_t *d =
            b64_decode_alloc(b64_vectors[i].std, strlen(b64_vectors[i].std), B64_STD, &len);
        assert_non_null(d);
        assert_int_equal(len, n);
        assert_memory_equal(d, raw, n);
        assert_int_equal(d[len], 0);
        free(d);
        d = b64_decode_alloc(b64_vectors[i].url, strlen(b64_vectors[i].url), B64_URL, &len);
        assert_non_null(d);
        assert_int_equal(len, n);
        assert_memory_equal(d, raw, n);
        free(d);
    }
}

static const struct {
    const char *in;
    b64_variant_t v;
} b64_bad[] = {
    {"Zg", B64_STD},  /* padding required */
    {"Zg=", B64_STD}, /* wrong amount of padding */
    {"Zg===", B64_STD},  {"Z===", B64_STD},
    {"====", B64_STD},   {"Zm8=Zm8=", B64_STD}, /* padding in the middle */
    {"Zh==", B64_STD},                          /* non-zero unused bits */
    {"Zm9=", B64_STD},   {"Zm 9v", B64_STD},    /* whitespace */
    {"Zm9v\n", B64_STD}, {"-_-_", B64_STD},     /* url alphabet in std */
    {"Zg==", B64_URL},                          /* no padding in url */
    {"Zm8=", B64_URL},   {"Z", B64_URL},        /* 1 mod 4 */
    {"Zm9vY", B64_URL},  {"Zh", B64_URL},       /* non-zero unused bits */
    {"Zm9", B64_URL},    {"+/+/", B64_URL},     /* std alphabet in url */
    {"Zm9v.", B64_URL},  {"Zm9v\0v", B64_URL},  /* NUL inside (length 6 below) */
};

static void refuses_malformed_base64(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(b64_bad) / sizeof(b64_bad[0]); i++) {
        size_t len = strlen(b64_bad[i].in);
        if (i == sizeof(b64_bad) / sizeof(b64_bad[0]) - 1)
            len = 6;
        size_t outlen;
        uint8_t *d = b64_decode_alloc(b64_bad[i].in, len, b64_bad[i].v, &outlen);
        if (d) {
            free(d);
            fail_msg("decoded \"%s\" (%s)", b64_bad[i].in, b64_bad[i].v == B64_STD ? "std" : "url");
        }
    }
}

static void round_trips_every_length_and_byte(void **state)
{
    (void)state;
    uint8_t raw[300];
    for (size_t i = 0; i < sizeof(raw); i++)
        raw[i] = (uint8_t)(i * 7 + 3);
    for (size_t n = 0; n <= sizeof(raw); n++) {
        for (int v = B64_STD; v <= B64_URL; v++) {
            char enc[512];
            size_t el = b64_encode(enc, raw, n, (b64_variant_t)v);
            assert_int_equal(el, b64_encoded_len(n, (b64_variant_t)v));
            assert_int_equal(enc[el], 0);
            uint8_t dec[400];
            size_t dl = 0;
            assert_true(b64_decoded_maxlen(el) <= sizeof(dec));
            assert_true(b64_decode(dec, &dl, enc, el, (b64_variant_t)v));
            assert_int_equal(dl, n);
            assert_memory_equal(dec, raw, n);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_durations_strictly),
        cmocka_unit_test(formats_durations_in_largest_exact_unit),
        cmocka_unit_test(parses_sizes_strictly),
        cmocka_unit_test(matches_globs),
        cmocka_unit_test(encodes_and_decodes_rfc4648_vectors),
        cmocka_unit_test(refuses_malformed_base64),
        cmocka_unit_test(round_trips_every_length_and_byte),
    };
    return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
