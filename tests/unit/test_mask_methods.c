/*
 * Unit tests for masking methods and content detectors: tables of (input,
 * expected), tests/fixtures/mask/detectors.tsv, Unicode, empty strings and
 * values longer than 1 MiB.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "helpers.h"

#include "mask/internal.h"

static mask_rules_t *rules_from(const char *json, const char *key)
{
    cJSON *m = cJSON_Parse(json);
    char err[256];
    mask_rules_t *r =
        mask_rules_compile(m, (const uint8_t *)key, key ? strlen(key) : 0, err, sizeof(err));
    if (!r)
        print_message("compile: %s\n", err);
    cJSON_Delete(m);
    assert_non_null(r);
    return r;
}

/* Applies the method of the first column mask of `json` to v; returns a
   malloc'd NUL-terminated result, or NULL for SQL NULL. */
static char *apply(const char *json, const char *key, const char *v, size_t n)
{
    mask_rules_t *r = rules_from(json, key);
    mask_scratch_t *s = mask_scratch_new();
    buf_t out;
    buf_init(&out, 0);
    int isnull = mask_method_apply(r, s, &r->cols[0].method, (const uint8_t *)v, n, &out);
    char *res = NULL;
    if (!isnull) {
        buf_put_u8(&out, 0);
        res = strdup((const char *)out.data);
    }
    buf_free(&out);
    mask_scratch_free(s);
    mask_rules_release(r);
    return res;
}

#define COL(method) "[{\"column\":\"s.t.c\",\"method\":\"" method "\""
static const struct {
    const char *rules, *key, *in, *out; /* out NULL = SQL NULL */
} method_cases[] = {
    {COL("redact") "}]", NULL, "123-45-6789", "****"},
    {COL("redact") "}]", NULL, "", "****"},
    {COL("redact") "}]", NULL, "ñandú", "****"},
    {COL("partial") ",\"keep_last\":4}]", NULL, "4111111111111111", "************1111"},
    {COL("partial") ",\"keep_last\":4}]", NULL, "abc", "***"},   /* shorter than kept */
    {COL("partial") ",\"keep_last\":4}]", NULL, "abcd", "****"}, /* all kept = all masked */
    {COL("partial") ",\"keep_last\":4}]", NULL, "", ""},
    {COL("partial") ",\"keep_last\":4}]", NULL, "ñandú1234", "*****1234"},
    {COL("partial") ",\"keep_first\":2}]", NULL, "ñandú", "ña***"},
    {COL("partial") ",\"keep_first\":1,\"keep_last\":1}]", NULL, "日本語テキスト", "日*****ト"},
    {COL("partial") ",\"keep_first\":1,\"keep_last\":1}]", NULL, "日本", "**"},
    {COL("partial") ",\"keep_last\":2}]", NULL,
     "\xff\xfe"
     "ab",
     "**ab"}, /* invalid UTF-8: 1 char/byte */
    {COL("partial") ",\"keep_last\":1}]", NULL, "a\xe6\x97", "**\x97"}, /* truncated sequence */
    {COL("partial") ",\"keep_first\":0,\"keep_last\":0}]", NULL, "secret", "******"},
    {COL("email") "}]", NULL, "alice.archer@example.com", "a***@example.com"},
    {COL("email") "}]", NULL, "josé@exämple.de", "j***@exämple.de"},
    {COL("email") "}]", NULL, "élodie@example.fr", "é***@example.fr"},
    {COL("email") "}]", NULL, "a@b@example.com", "a***@example.com"},
    {COL("email") "}]", NULL, "@example.com", "***@example.com"},
    {COL("email") "}]", NULL, "no-at-sign", "****"},
    {COL("email") "}]", NULL, "trailing@", "****"},
    {COL("email") "}]", NULL, "", "****"},
    {COL("hash") "}]", "k", "alice",
     "ec631a55bb81f5b9dc96aa930a45628d452abe41f899db1085bc350c0c9cf9a1"},
    {COL("hash") "}]", "k", "", "8bb990c40a7d61cb97597a942125025be50ac8beb74436e3735b98893a7f6620"},
    {COL("hash") "}]",
     "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk"
     "kkkkkkk",
     "alice", "bb3371a06e0b7cdbf3413fd51417624ee3bdd447892b7354aa1eceb17c2cd65d"}, /* key > block */
    {COL("null") "}]", NULL, "anything", NULL},
    {COL("null") "}]", NULL, "", NULL},
    {COL("fixed") ",\"value\":\"[hidden]\"}]", NULL, "123-45-6789", "[hidden]"},
    {COL("fixed") ",\"value\":\"\"}]", NULL, "x", ""},
};

static void methods_mask_as_documented(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(method_cases) / sizeof(method_cases[0]); i++) {
        char *got = apply(method_cases[i].rules, method_cases[i].key, method_cases[i].in,
                          strlen(method_cases[i].in));
        if (method_cases[i].out == NULL ? got != NULL : !got || strcmp(got, method_cases[i].out)) {
            print_message("case %zu: %s on \"%s\": want %s got %s\n", i, method_cases[i].rules,
                          method_cases[i].in, method_cases[i].out ? method_cases[i].out : "NULL",
                          got ? got : "NULL");
            fail();
        }
        free(got);
    }
}

static void hash_is_deterministic_and_keyed(void **state)
{
    (void)state;
    char *a = apply(COL("hash") "}]", "k", "alice", 5);
    char *b = apply(COL("hash") "}]", "k", "alice", 5);
    char *c = apply(COL("hash") "}]", "other", "alice", 5);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_int_equal(strlen(a), 64);
    free(a);
    free(b);
    free(c);
}

static void methods_handle_values_over_one_mebibyte(void **state)
{
    (void)state;
    size_t n = 1536 * 1024;
    char *v = malloc(n);
    memset(v, 'x', n);
    char *got = apply(COL("partial") ",\"keep_last\":4}]", NULL, v, n);
    assert_int_equal(strlen(got), n);
    for (size_t i = 0; i < n - 4; i++)
        if (got[i] != '*')
            fail_msg("byte %zu not masked", i);
    assert_memory_equal(got + n - 4, "xxxx", 4);
    free(got);
    got = apply(COL("hash") "}]", "k", v, n);
    assert_string_equal(got, "6823a404d7cbf5c3a12677c150d127d3dfab00bcbf5efb66804fc83fc3198a04");
    free(got);
    got = apply(COL("redact") "}]", NULL, v, n);
    assert_string_equal(got, "****");
    free(got);
    /* 1.5 MiB of a multi-byte character: characters, not bytes */
    size_t m = 512 * 1024;
    char *u = malloc(m * 3);
    for (size_t i = 0; i < m; i++)
        memcpy(u + 3 * i, "語", 3);
    got = apply(COL("partial") ",\"keep_first\":1}]", NULL, u, m * 3);
    assert_int_equal(strlen(got), 3 + m - 1);
    assert_memory_equal(got, "語", 3);
    free(got);
    free(u);
    free(v);
}

static void opaque_binary_values_get_text_methods_only(void **state)
{
    (void)state;
    mask_rules_t *r = rules_from(COL("partial") ",\"keep_last\":2}]", NULL);
    mask_scratch_t *s = mask_scratch_new();
    buf_t out;
    buf_init(&out, 0);
    const uint8_t numeric_bin[] = {0, 1, 0, 0, 0, 0, 0, 2, 0, 42};
    assert_int_equal(
        mask_method_apply_opaque(r, s, &r->cols[0].method, numeric_bin, sizeof(numeric_bin), &out),
        0);
    assert_int_equal(out.len, 4);
    assert_memory_equal(out.data, "****", 4);
    buf_free(&out);
    mask_scratch_free(s);
    mask_rules_release(r);
}

/* ---- detectors ---- */

static char *unescape_nl(const char *s)
{
    char *d = strdup(s), *o = d;
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] == 'n') {
            *o++ = '\n';
            s++;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
    return d;
}

static char *detect_rewrite(const mask_rules_t *r, mask_scratch_t *s, const char *v, size_t n)
{
    int k = mask_detect_value(r, s, (const uint8_t *)v, n);
    assert_true(k >= 0);
    buf_t out;
    buf_init(&out, 0);
    mask_apply_spans(r, s, (const uint8_t *)v, n, s->spans, s->nspans, 0, &out);
    buf_put_u8(&out, 0);
    char *res = strdup((const char *)out.data);
    buf_free(&out);
    return res;
}

#define ALL_DETECTORS                                                                              \
    "[{\"detectors\":[\"email\",\"credit_card\",\"us_ssn\",\"iban\",\"phone\",\"secret\"],"        \
    "\"method\":\"redact\"}]"

static void detectors_match_the_table(void **state)
{
    (void)state;
    FILE *f = fopen(test_fixture("mask/detectors.tsv"), "r");
    assert_non_null(f);
    mask_rules_t *r = rules_from(ALL_DETECTORS, NULL);
    mask_scratch_t *s = mask_scratch_new();
    char line[4096];
    int n = 0, failed = 0;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0] == '#' || !line[0])
            continue;
        char *in = strchr(line, '\t'), *want;
        assert_non_null(in);
        *in++ = 0;
        want = strchr(in, '\t');
        assert_non_null(want);
        *want++ = 0;
        char *v = unescape_nl(in), *w = !strcmp(want, "=") ? strdup(v) : unescape_nl(want);
        char *got = detect_rewrite(r, s, v, strlen(v));
        n++;
        if (strcmp(got, w)) {
            failed++;
            print_message("%s: \"%s\"\n  want \"%s\"\n  got  \"%s\"\n", line, in, w, got);
        }
        free(v);
        free(w);
        free(got);
    }
    fclose(f);
    print_message("detectors.tsv: %d cases, %d mismatches\n", n, failed);
    assert_true(n >= 80);
    assert_int_equal(failed, 0);
    mask_scratch_free(s);
    mask_rules_release(r);
}

static void only_enabled_detectors_fire(void **state)
{
    (void)state;
    mask_rules_t *r = rules_from("[{\"detectors\":[\"email\"],\"method\":\"email\"}]", NULL);
    mask_scratch_t *s = mask_scratch_new();
    char *got = detect_rewrite(r, s, "bob.baker@example.org 4111111111111111 123-45-6789",
                               strlen("bob.baker@example.org 4111111111111111 123-45-6789"));
    assert_string_equal(got, "b***@example.org 4111111111111111 123-45-6789");
    free(got);
    mask_scratch_free(s);
    mask_rules_release(r);
}

static void each_detector_uses_its_own_method(void **state)
{
    (void)state;
    mask_rules_t *r = rules_from("[{\"detectors\":[\"credit_card\"],\"method\":\"partial\","
                                 "\"keep_last\":4},"
                                 "{\"detectors\":[\"email\"],\"method\":\"email\"},"
                                 "{\"detectors\":[\"us_ssn\"],\"method\":\"null\"}]",
                                 NULL);
    mask_scratch_t *s = mask_scratch_new();
    const char *v = "card 5500-0055-5555-5559 of carol.chen@example.net";
    char *got = detect_rewrite(r, s, v, strlen(v));
    assert_string_equal(got, "card ***************5559 of c***@example.net");
    free(got);
    /* null cannot blank a span: the value as a whole becomes NULL (rewriter),
       inside a message the span is redacted */
    v = "ssn 123-45-6789";
    assert_int_equal(mask_detect_value(r, s, (const uint8_t *)v, strlen(v)), 1);
    assert_true(mask_spans_null(r, s->spans, s->nspans));
    got = detect_rewrite(r, s, v, strlen(v));
    assert_string_equal(got, "ssn ****");
    free(got);
    /* an email whose local part is a card number: overlapping spans of
       different methods merge and are redacted */
    v = "4111111111111111@example.com";
    got = detect_rewrite(r, s, v, strlen(v));
    assert_string_equal(got, "****");
    free(got);
    mask_scratch_free(s);
    mask_rules_release(r);
}

static void detectors_handle_values_over_one_mebibyte(void **state)
{
    (void)state;
    mask_rules_t *r = rules_from(ALL_DETECTORS, NULL);
    mask_scratch_t *s = mask_scratch_new();
    size_t n = (1 << 20) + 4096;
    char *v = malloc(n + 64);
    /* digits only: one long run, never a card number; one scan, no hit */
    memset(v, '4', n);
    clock_t t0 = clock();
    assert_int_equal(mask_detect_value(r, s, (const uint8_t *)v, n), 0);
    /* digits and spaces: groups of one, never a card shape */
    for (size_t i = 1; i < n; i += 2)
        v[i] = ' ';
    assert_int_equal(mask_detect_value(r, s, (const uint8_t *)v, n), 0);
    /* text with a secret and an email at the very end */
    memset(v, 'a', n);
    memcpy(v + n - 60, " AKIAIOSFODNN7EXAMPLE dan.dent@example.com", 42);
    assert_int_equal(mask_detect_value(r, s, (const uint8_t *)v, n - 18), 2);
    assert_int_equal(s->spans[0].end, n - 39);
    /* a pathological run of emails: every one found */
    for (size_t i = 0; i + 8 <= n; i += 8)
        memcpy(v + i, "a@bc.de ", 8);
    int k = mask_detect_value(r, s, (const uint8_t *)v, n);
    assert_int_equal(k, (int)(n / 8));
    double ms = (double)(clock() - t0) * 1000.0 / CLOCKS_PER_SEC;
    print_message("4 scans of 1 MiB: %.1f ms\n", ms);
    free(v);
    mask_scratch_free(s);
    mask_rules_release(r);
}

static void regions_keep_values_apart(void **state)
{
    (void)state;
    mask_rules_t *r = rules_from(ALL_DETECTORS, NULL);
    mask_scratch_t *s = mask_scratch_new();
    /* "4111 1111" + "1111 1111" would join into a card across two values */
    const char *buf = "4111 1111 1111 1111";
    mask_region_t reg[2] = {{0, 9}, {10, 19}};
    assert_int_equal(mask_detect(r, s, (const uint8_t *)buf, strlen(buf), reg, 2), 0);
    mask_region_t one[1] = {{0, 19}};
    assert_int_equal(mask_detect(r, s, (const uint8_t *)buf, strlen(buf), one, 1), 1);
    mask_scratch_free(s);
    mask_rules_release(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(methods_mask_as_documented),
        cmocka_unit_test(hash_is_deterministic_and_keyed),
        cmocka_unit_test(methods_handle_values_over_one_mebibyte),
        cmocka_unit_test(opaque_binary_values_get_text_methods_only),
        cmocka_unit_test(detectors_match_the_table),
        cmocka_unit_test(only_enabled_detectors_fire),
        cmocka_unit_test(each_detector_uses_its_own_method),
        cmocka_unit_test(detectors_handle_values_over_one_mebibyte),
        cmocka_unit_test(regions_keep_values_apart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
