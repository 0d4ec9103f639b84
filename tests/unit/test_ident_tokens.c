/*
 * Unit tests for identity with real keys: the token case table in
 * tests/fixtures/tokens/cases.json (the same table test_identity.py runs
 * through psql and psycopg2), JWKS parsing, minting with ident_sign_pem, and
 * the config's JWKS and watch-file handling.
 *
 * Tokens are built here with this file's own base64url and OpenSSL calls
 * (not the module's), from the exact header and payload text of each case.
 * BULWARK_TEST_VERBOSE=1 prints every case's status and reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "helpers.h"

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "config.h"
#include "identity/ident.h"
#include "identity/jwks.h"

#define NOW 1800000000LL /* 2027-01-15T08:00:00Z */

/* ---- fixtures ---- */

static cfg_t *load_cfg(void)
{
    cfg_errors_t errs = {0};
    cfg_t *c = cfg_load(test_fixture("tokens/bulwark.json"), &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_message("config: %s\n", errs.msgs[i]);
    cfg_errors_free(&errs);
    assert_non_null(c);
    return c;
}

/* ---- this test's own token builder (test_b64url: helpers.h) ---- */

static uint8_t *unb64url(const char *s, size_t *n)
{
    size_t len = strlen(s);
    char *t = malloc(len + 4);
    for (size_t i = 0; i < len; i++)
        t[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    while (len % 4)
        t[len++] = '=';
    t[len] = 0;
    uint8_t *out = malloc(len);
    int m = EVP_DecodeBlock(out, (unsigned char *)t, (int)len);
    assert_true(m >= 0);
    size_t pad = 0;
    while (len && t[len - 1 - pad] == '=')
        pad++;
    *n = (size_t)m - pad;
    free(t);
    return out;
}

/* {now}, {now+N}, {now-N} → seconds */
static char *subst(const char *tmpl, long long now)
{
    size_t cap = strlen(tmpl) + 256, o = 0;
    char *out = malloc(cap);
    for (const char *p = tmpl; *p;) {
        if (!strncmp(p, "{now", 4)) {
            const char *end = strchr(p, '}');
            assert_non_null(end);
            long long off = end > p + 4 ? strtoll(p + 4, NULL, 10) : 0;
            o += (size_t)snprintf(out + o, cap - o, "%lld", now + off);
            p = end + 1;
        } else {
            out[o++] = *p++;
        }
        assert_true(o + 32 < cap);
    }
    out[o] = 0;
    return out;
}

static EVP_PKEY *load_key(const char *name)
{
    char rel[64];
    snprintf(rel, sizeof(rel), "keys/%s.pem", !strcmp(name, "ed1") ? "ed25519" : name);
    FILE *f = fopen(test_fixture("%s", rel), "r");
    assert_non_null(f);
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

static const EVP_MD *md_of(const char *alg)
{
    if (strstr(alg, "384"))
        return EVP_sha384();
    if (strstr(alg, "512"))
        return EVP_sha512();
    return EVP_sha256();
}

/* The signature segment for `input` as case `sign` says. */
static char *sign_input(const char *sign, const char *alg, const char *input)
{
    size_t in_len = strlen(input);
    if (!strcmp(sign, "none"))
        return strdup("");
    if (!strcmp(sign, "dev") || !strncmp(sign, "hmac:", 5)) {
        char rel[64];
        size_t klen;
        snprintf(rel, sizeof(rel), "keys/%s", !strcmp(sign, "dev") ? "dev.secret" : sign + 5);
        char *key = test_slurp(test_fixture("%s", rel), &klen);
        if (!strcmp(sign, "dev") && klen && key[klen - 1] == '\n')
            klen--;
        unsigned char mac[32];
        unsigned int mlen = 0;
        HMAC(EVP_sha256(), key, (int)klen, (unsigned char *)input, in_len, mac, &mlen);
        free(key);
        return test_b64url(mac, mlen);
    }
    EVP_PKEY *k = load_key(sign);
    const EVP_MD *md = NULL;
    bool pss = false, ec = EVP_PKEY_is_a(k, "EC");
    size_t es_half = 0;
    if (EVP_PKEY_is_a(k, "RSA")) {
        bool rsa_alg =
            alg && (!strncmp(alg, "RS", 2) || !strncmp(alg, "PS", 2)) && strlen(alg) == 5;
        md = md_of(rsa_alg ? alg : "RS256");
        pss = rsa_alg && alg[0] == 'P';
    } else if (ec) {
        int bits = EVP_PKEY_get_bits(k);
        md = bits == 384 ? EVP_sha384() : EVP_sha256();
        es_half = bits == 384 ? 48 : 32;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    assert_int_equal(EVP_DigestSignInit(ctx, &pctx, md, NULL, k), 1);
    if (pss) {
        assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
        assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST), 1);
    }
    size_t n = 0;
    assert_int_equal(EVP_DigestSign(ctx, NULL, &n, (unsigned char *)input, in_len), 1);
    unsigned char *sig = malloc(n);
    assert_int_equal(EVP_DigestSign(ctx, sig, &n, (unsigned char *)input, in_len), 1);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
    if (ec) {
        const unsigned char *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)n);
        unsigned char raw[96];
        assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)es_half), (int)es_half);
        assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + es_half, (int)es_half),
                         (int)es_half);
        ECDSA_SIG_free(es);
        memcpy(sig, raw, 2 * es_half);
        n = 2 * es_half;
    }
    char *out = test_b64url(sig, n);
    free(sig);
    return out;
}

static const char *str(const cJSON *c, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), o = 0;
    char *out = malloc(strlen(s) * (tl > fl ? tl : 1) + 1);
    while (*s) {
        if (!strncmp(s, from, fl)) {
            memcpy(out + o, to, tl);
            o += tl;
            s += fl;
        } else {
            out[o++] = *s++;
        }
    }
    out[o] = 0;
    return out;
}

/* The token of one case at time now. */
static char *build_case(const cJSON *doc, const cJSON *c, long long now)
{
    if (str(c, "raw"))
        return strdup(str(c, "raw"));
    const char *pl = str(c, "payload"), *edit = str(c, "edit");
    if (pl[0] == '@')
        pl = str(cJSON_GetObjectItemCaseSensitive(doc, "payloads"), pl + 1);
    char *header = subst(str(c, "header"), now), *payload = subst(pl, now);
    if (edit && !strcmp(edit, "pad_20k")) {
        char *padded = malloc(strlen(payload) + 15100);
        size_t n = strlen(payload) - 1; /* before the closing brace */
        memcpy(padded, payload, n);
        n += (size_t)sprintf(padded + n, ",\"pad\":\"");
        memset(padded + n, 'x', 15000);
        strcpy(padded + n + 15000, "\"}");
        free(payload);
        payload = padded;
    }
    char *alg = NULL;
    cJSON *h = cJSON_Parse(header);
    if (str(c, "sign_alg"))
        alg = strdup(str(c, "sign_alg"));
    else if (h && str(h, "alg"))
        alg = strdup(str(h, "alg"));
    cJSON_Delete(h);
    char *hb = test_b64url(header, strlen(header)), *pb = test_b64url(payload, strlen(payload));
    size_t in_len = strlen(hb) + 1 + strlen(pb);
    char *input = malloc(in_len + 1);
    snprintf(input, in_len + 1, "%s.%s", hb, pb);
    char *sig = str(c, "sig") ? strdup(str(c, "sig")) : sign_input(str(c, "sign"), alg, input);
    if (edit && !strcmp(edit, "truncate_sig")) {
        size_t n;
        uint8_t *raw = unb64url(sig, &n);
        free(sig);
        sig = test_b64url(raw, n - 1);
        free(raw);
    }
    if (edit && !strcmp(edit, "swap_payload")) {
        char *evil = replace_all(payload, "svc-agent-1", "svc-admin-1");
        free(pb);
        pb = test_b64url(evil, strlen(evil));
        free(evil);
        snprintf(input, in_len + 1, "%s.%s", hb, pb);
    }
    char *tok = malloc(strlen(input) + strlen(sig) + 16);
    sprintf(tok, "%s.%s", input, sig);
    if (edit && !strcmp(edit, "trailing_dot"))
        strcat(tok, ".");
    if (edit && !strcmp(edit, "four_segments"))
        strcat(tok, ".AAAA");
    free(header);
    free(payload);
    free(alg);
    free(hb);
    free(pb);
    free(input);
    free(sig);
    return tok;
}

/* ---- the table ---- */

static void validates_token_case_table(void **state)
{
    (void)state;
    cfg_t *cfg = load_cfg();
    char *text = test_slurp(test_fixture("tokens/cases.json"), NULL);
    cJSON *doc = cJSON_Parse(text);
    free(text);
    assert_non_null(doc);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(doc, "cases"), *c;
    int n = 0, failed = 0;
    cJSON_ArrayForEach(c, cases)
    {
        n++;
        const char *name = str(c, "name"), *want = str(c, "want"), *want_reason = str(c, "reason");
        const char *role_name = str(c, "role") ? str(c, "role") : "agent";
        const cfg_role_t *role = cfg_find_role(cfg, role_name);
        assert_non_null(role);
        char *tok = build_case(doc, c, NOW);
        ident_t id;
        char reason[256];
        memset(reason, 'Z', sizeof(reason));
        ident_status_t st =
            ident_login(cfg, NULL, role, tok, strlen(tok), NOW, &id, reason, sizeof(reason));
        bool terminated = memchr(reason, 0, sizeof(reason)) != NULL;
        bool ok = terminated && !strcmp(ident_status_name(st), want);
        if (ok && want_reason && !strstr(reason, want_reason))
            ok = false;
        /* never echo the token, its payload or its signature */
        const char *dot = strchr(tok, '.'), *last = strrchr(tok, '.');
        if (terminated && dot && strlen(dot) > 8 && strstr(reason, dot + 1))
            ok = false;
        if (terminated && last && strlen(last + 1) >= 8 && strstr(reason, last + 1))
            ok = false;
        /* a subject is named only once the signature verified */
        if (terminated && st >= IDENT_TOO_LARGE && st <= IDENT_SIGNATURE &&
            strstr(reason, "(subject"))
            ok = false;
        if (st == IDENT_OK && (!id.subject || !id.issuer || !id.claims || id.exp <= NOW - 30))
            ok = false;
        if (st != IDENT_OK && (id.subject || id.issuer || id.claims))
            ok = false;
        if (getenv("BULWARK_TEST_VERBOSE"))
            print_message("%-36s %-16s %s\n", name, ident_status_name(st),
                          terminated ? reason : "(unterminated)");
        if (!ok) {
            failed++;
            print_message("FAIL %s: got %s (%s), want %s%s%s\n", name, ident_status_name(st),
                          terminated ? reason : "(unterminated)", want,
                          want_reason ? " with reason containing " : "",
                          want_reason ? want_reason : "");
        }
        ident_free(&id);
        free(tok);
    }
    print_message("%d token cases, %d failed\n", n, failed);
    assert_true(n >= 35);
    assert_int_equal(failed, 0);
    cJSON_Delete(doc);
    cfg_release(cfg);
}

/* ---- minting ---- */

static void mints_tokens_that_verify(void **state)
{
    (void)state;
    static const struct {
        const char *key, *kid, *alg;
    } mint[] = {
        {"rsa1", "rsa1", "RS256"}, {"rsa1", "rsa1", "PS256"},   {"rsa1", "rsa1", NULL},
        {"ec256", "ec256", NULL},  {"ec256", "ec256", "ES256"}, {"ec384", "ec384", "ES384"},
        {"ed25519", "ed1", NULL},
    };
    cfg_t *cfg = load_cfg();
    const cfg_role_t *agent = cfg_find_role(cfg, "agent");
    cJSON *claims = cJSON_Parse("{\"iss\":\"https://idp.test\",\"sub\":\"svc-mint\","
                                "\"aud\":\"bulwark\",\"iat\":1799999999,\"exp\":1800000900}");
    for (size_t i = 0; i < sizeof(mint) / sizeof(mint[0]); i++) {
        char rel[64], why[256];
        size_t len;
        snprintf(rel, sizeof(rel), "keys/%s.pem", mint[i].key);
        char *pem = test_slurp(test_fixture("%s", rel), &len);
        char *tok = ident_sign_pem(pem, len, mint[i].alg, mint[i].kid, claims, why, sizeof(why));
        if (!tok)
            fail_msg("%s %s: %s", mint[i].key, mint[i].alg ? mint[i].alg : "(default)", why);
        ident_t id;
        char reason[256];
        ident_status_t st =
            ident_login(cfg, NULL, agent, tok, strlen(tok), NOW, &id, reason, sizeof(reason));
        if (st != IDENT_OK)
            fail_msg("%s %s: %s (%s)", mint[i].key, mint[i].alg ? mint[i].alg : "(default)",
                     ident_status_name(st), reason);
        assert_string_equal(id.subject, "svc-mint");
        assert_int_equal(id.exp, 1800000900);
        ident_free(&id);
        free(tok);
        free(pem);
    }
    /* the algorithm must fit the key */
    char why[256];
    size_t len;
    char *pem = test_slurp(test_fixture("keys/ec384.pem"), &len);
    assert_null(ident_sign_pem(pem, len, "ES256", "ec384", claims, why, sizeof(why)));
    assert_non_null(strstr(why, "P-384 key signs ES384, not ES256"));
    assert_null(ident_sign_pem(pem, len, "RS256", NULL, claims, why, sizeof(why)));
    free(pem);
    pem = test_slurp(test_fixture("keys/rsa1024.pem"), &len);
    assert_null(ident_sign_pem(pem, len, "RS256", NULL, claims, why, sizeof(why)));
    assert_non_null(strstr(why, "1024 bits"));
    free(pem);
    pem = test_slurp(test_fixture("keys/rsa1.pub.pem"), &len);
    assert_null(ident_sign_pem(pem, len, "RS256", NULL, claims, why, sizeof(why)));
    free(pem);
    cJSON_Delete(claims);
    cfg_release(cfg);
    assert_int_equal(ERR_peek_error(), 0);
}

/* ---- JWKS parsing ---- */

static void parses_and_refuses_jwks(void **state)
{
    (void)state;
    /* real key material from the fixture set, to build variants from */
    char *text = test_slurp(test_fixture("keys/jwks.json"), NULL);
    cJSON *fixture = cJSON_Parse(text);
    free(text);
    const cJSON *keys = cJSON_GetObjectItemCaseSensitive(fixture, "keys");
    const char *n = str(cJSON_GetArrayItem(keys, 0), "n");
    const char *x = str(cJSON_GetArrayItem(keys, 1), "x"),
               *y = str(cJSON_GetArrayItem(keys, 1), "y");
    char rsa[1024], ec[512], buf[4096];
    snprintf(rsa, sizeof(rsa), "\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\"", n);
    snprintf(ec, sizeof(ec), "\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"", x, y);
    /* y with one bit changed: no longer on the curve */
    char bad_y[128];
    snprintf(bad_y, sizeof(bad_y), "%s", y);
    bad_y[5] = bad_y[5] == 'A' ? 'B' : 'A';
    const struct {
        const char *name, *fmt, *a1, *a2, *why;
        size_t n;
    } cases[] = {
        {"the fixture set", "%s", NULL, NULL, NULL, 4},
        {"empty set", "{\"keys\":[]}", NULL, NULL, NULL, 0},
        {"not an object", "[]", NULL, NULL, "must be an object with a \"keys\" array", 0},
        {"keys not an array", "{\"keys\":{}}", NULL, NULL, "\"keys\" array", 0},
        {"rsa with kid", "{\"keys\":[{%s,\"kid\":\"a\"}]}", rsa, NULL, NULL, 1},
        {"rsa with alg", "{\"keys\":[{%s,\"kid\":\"a\",\"alg\":\"PS256\"}]}", rsa, NULL, NULL, 1},
        {"rsa with EC alg", "{\"keys\":[{%s,\"alg\":\"ES256\"}]}", rsa, NULL,
         "keys[0].alg: \"ES256\" is not a signature algorithm for this key", 0},
        {"rsa with encryption alg", "{\"keys\":[{%s,\"alg\":\"RSA-OAEP\"}]}", rsa, NULL,
         "keys[0].alg", 0},
        {"use enc is skipped", "{\"keys\":[{%s,\"use\":\"enc\"},{%s,\"kid\":\"e\"}]}", rsa, ec,
         NULL, 1},
        {"key_ops without verify is skipped", "{\"keys\":[{%s,\"key_ops\":[\"encrypt\"]}]}", rsa,
         NULL, NULL, 0},
        {"private rsa", "{\"keys\":[{%s,\"d\":\"AQAB\"}]}", rsa, NULL,
         "keys[0].d: private or secret key material", 0},
        {"oct", "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}", NULL, NULL,
         "keys[0].k: private or secret", 0},
        {"oct without k", "{\"keys\":[{\"kty\":\"oct\"}]}", NULL, NULL,
         "keys[0].kty: symmetric keys are not accepted", 0},
        {"unknown kty", "{\"keys\":[{\"kty\":\"rsa\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", NULL, NULL,
         "keys[0].kty: unsupported key type \"rsa\"", 0},
        {"rsa too small", "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\"}]}",
         "wVpDwzVnxxuZbhcg0mLXjhU7M0dlRo-Vjtxy8HiYNGJQOxoaMz6WvjaFuK0QtwWkAkVh1PVAXGjNfg9l-Kr5QQ",
         NULL, "keys[0].n: RSA modulus of 512 bits", 0},
        {"rsa n not base64url", "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"ab+c\",\"e\":\"AQAB\"}]}",
         NULL, NULL, "keys[0].n: is not base64url", 0},
        {"rsa even e", "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAA\"}]}", n, NULL,
         "keys[0].e: not a usable RSA public exponent", 0},
        {"rsa missing e", "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\"}]}", n, NULL,
         "keys[0].e: required", 0},
        {"ec off the curve",
         "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}", x, bad_y,
         "keys[0]: x, y is not a point on P-256", 0},
        {"ec x of P-384 size on P-256",
         "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"%s\",\"y\":\"%s\"}]}", x, y,
         "keys[0].x: must be 48 bytes for this curve, got 32", 0},
        {"ec unknown curve",
         "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-192\",\"x\":\"%s\",\"y\":\"%s\"}]}", x, y,
         "keys[0].crv: unsupported curve \"P-192\"", 0},
        {"duplicate kid", "{\"keys\":[{%s,\"kid\":\"k\"},{%s,\"kid\":\"k\"}]}", rsa, ec,
         "keys[1].kid: duplicate kid (also keys[0])", 0},
        {"kid not a string", "{\"keys\":[{%s,\"kid\":7}]}", rsa, NULL,
         "keys[0].kid: must be a string", 0},
        {"key not an object", "{\"keys\":[{%s},7]}", rsa, NULL, "keys[1]: must be an object", 0},
        {"okp x448", "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed448\",\"x\":\"AAAA\"}]}", NULL, NULL,
         "keys[0].crv: only \"Ed25519\"", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (i == 0) {
            char *fixture_text = cJSON_PrintUnformatted(fixture);
            snprintf(buf, sizeof(buf), "%s", fixture_text);
            free(fixture_text);
        } else {
            snprintf(buf, sizeof(buf), cases[i].fmt, cases[i].a1, cases[i].a2);
        }
        cJSON *j = cJSON_Parse(buf);
        if (!j)
            fail_msg("%s: the test's JSON does not parse", cases[i].name);
        char why[256];
        ident_keyset_t *ks = ident_jwks_parse(j, why, sizeof(why));
        cJSON_Delete(j);
        if (cases[i].why) {
            if (ks || !strstr(why, cases[i].why))
                fail_msg("%s: %s, why \"%s\"; want failure with \"%s\"", cases[i].name,
                         ks ? "parsed" : "refused", why, cases[i].why);
        } else {
            if (!ks)
                fail_msg("%s: refused: %s", cases[i].name, why);
            if (ident_keyset_count(ks) != cases[i].n)
                fail_msg("%s: %zu keys, want %zu", cases[i].name, ident_keyset_count(ks),
                         cases[i].n);
        }
        ident_keyset_release(ks);
        assert_int_equal(ERR_peek_error(), 0);
    }
    cJSON_Delete(fixture);
}

static void pins_algorithms_by_key(void **state)
{
    (void)state;
    char *text = test_slurp(test_fixture("keys/jwks.json"), NULL);
    cJSON *j = cJSON_Parse(text);
    free(text);
    char why[256];
    ident_keyset_t *ks = ident_jwks_parse(j, why, sizeof(why));
    cJSON *j2 = j;
    assert_non_null(ks);
    const ident_jwk_t *rsa = ident_keyset_find(ks, "rsa1"), *ec256 = ident_keyset_find(ks, "ec256"),
                      *ec384 = ident_keyset_find(ks, "ec384"), *ed = ident_keyset_find(ks, "ed1");
    assert_non_null(rsa);
    assert_non_null(ed);
    assert_null(ident_keyset_find(ks, "RSA1"));
    assert_null(ident_keyset_find(ks, NULL)); /* four keys: a token must name one */
    assert_true(ident_jwk_accepts(rsa, "RS256") && ident_jwk_accepts(rsa, "PS512"));
    assert_false(ident_jwk_accepts(rsa, "ES256") || ident_jwk_accepts(rsa, "HS256") ||
                 ident_jwk_accepts(rsa, "rs256") || ident_jwk_accepts(rsa, "none"));
    assert_true(ident_jwk_accepts(ec256, "ES256"));
    assert_false(ident_jwk_accepts(ec256, "ES384") || ident_jwk_accepts(ec256, "RS256"));
    assert_true(ident_jwk_accepts(ec384, "ES384"));
    assert_false(ident_jwk_accepts(ec384, "ES256"));
    assert_true(ident_jwk_accepts(ed, "EdDSA"));
    char d[32];
    assert_string_equal(ident_jwk_describe(rsa, d, sizeof(d)), "RSA 2048");
    assert_string_equal(ident_jwk_describe(ec384, d, sizeof(d)), "EC P-384");
    /* a verify with a key that does not accept the algorithm never reaches OpenSSL */
    uint8_t sig[64] = {1};
    assert_false(ident_jwk_verify(ec256, "RS256", "a.b", 3, sig, sizeof(sig)));
    assert_false(ident_jwk_verify(ec256, "ES256", "a.b", 3, sig, 0));
    assert_false(ident_jwk_verify(ec256, "ES256", "a.b", 3, sig, sizeof(sig)));
    assert_int_equal(ERR_peek_error(), 0);
    /* a one-key set: a token without kid gets that key */
    cJSON *k0 = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(k0, "keys");
    cJSON_AddItemToArray(
        arr, cJSON_Duplicate(cJSON_GetArrayItem(cJSON_GetObjectItem(j2, "keys"), 0), 1));
    ident_keyset_t *one = ident_jwks_parse(k0, why, sizeof(why));
    cJSON_Delete(k0);
    assert_non_null(one);
    assert_non_null(ident_keyset_find(one, NULL));
    assert_non_null(ident_keyset_find(one, "rsa1"));
    ident_keyset_release(one);
    assert_null(ident_jwks_parse(NULL, why, sizeof(why))); /* refused, not a crash */
    ident_keyset_release(ident_keyset_retain(ks));
    ident_keyset_release(ks);
    cJSON_Delete(j2);
}

/* ---- config ---- */

static void config_parses_jwks_files_and_lists_watch_files(void **state)
{
    (void)state;
    cfg_t *cfg = load_cfg();
    const cfg_issuer_t *idp = cfg_find_issuer(cfg, "https://idp.test");
    assert_non_null(idp->jwks);
    assert_int_equal(ident_keyset_count(idp->jwks), 4);
    const char *const *files;
    size_t n = cfg_watch_files(cfg, &files);
    const char *want[] = {"tokens/bulwark.json", "tokens/../keys/jwks.json",
                          "tokens/../keys/dev.secret", "tokens/policies/roles.json"};
    assert_int_equal(n, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        bool found = false;
        for (size_t k = 0; k < n; k++)
            found |= !strcmp(files[k], test_fixture("%s", want[i]));
        if (!found)
            fail_msg("watch files lack %s", test_fixture("%s", want[i]));
    }
    cfg_release(cfg);

    /* a broken JWKS file, a jwks_ca_file without jwks_url: errors naming the key */
    char dir[TEST_DIR_MAX];
    test_mkdtemp(dir, sizeof(dir), "bulwark-test-ident");
    char *jwks = test_slurp(test_fixture("keys/jwks-rsa1024.json"), NULL);
    test_write_file(dir, "small.json", jwks);
    free(jwks);
    test_write_file(dir, "ca.pem", "not read at load time\n");
    test_write_file(dir, "p.json",
                    "{\"role\":\"r\",\"identities\":[{\"iss\":\"u\",\"sub\":\"*\"}],"
                    "\"upstream\":{\"shop\":{\"user\":\"u\"}}}");
    test_write_file(dir, "bulwark.json",
                    "{\"listen\":\"127.0.0.1:1\",\"allow_plaintext_on_loopback\":true,"
                    "\"identity\":{\"issuers\":["
                    "{\"issuer\":\"f\",\"audience\":\"b\",\"jwks_file\":\"small.json\"},"
                    "{\"issuer\":\"g\",\"audience\":\"b\",\"jwks_file\":\"small.json\","
                    "\"jwks_ca_file\":\"ca.pem\"},"
                    "{\"issuer\":\"u\",\"audience\":\"b\",\"jwks_url\":\"https://idp.example/k\","
                    "\"jwks_ca_file\":\"ca.pem\",\"refresh\":\"1m\"}]},"
                    "\"targets\":{\"shop\":{\"host\":\"h\"}},\"audit\":{\"path\":\"a\"},"
                    "\"policy_files\":[\"p.json\"]}");
    char cfgpath[512];
    snprintf(cfgpath, sizeof(cfgpath), "%s/bulwark.json", dir);
    cfg_errors_t errs = {0};
    assert_null(cfg_load(cfgpath, &errs));
    int saw_small = 0, saw_ca = 0;
    for (size_t i = 0; i < errs.n; i++) {
        saw_small +=
            strstr(errs.msgs[i], "small.json: keys[0].n: RSA modulus of 1024 bits") != NULL;
        saw_ca += strstr(errs.msgs[i],
                         "identity.issuers[1].jwks_ca_file: only valid with jwks_url") != NULL;
        if (getenv("BULWARK_TEST_VERBOSE"))
            print_message("%s\n", errs.msgs[i]);
    }
    cfg_errors_free(&errs);
    assert_int_equal(saw_small, 2);
    assert_int_equal(saw_ca, 1);

    /* the URL issuer alone loads, with its CA file resolved and watched */
    test_write_file(dir, "bulwark.json",
                    "{\"listen\":\"127.0.0.1:1\",\"allow_plaintext_on_loopback\":true,"
                    "\"identity\":{\"issuers\":["
                    "{\"issuer\":\"u\",\"audience\":\"b\",\"jwks_url\":\"https://idp.example/k\","
                    "\"jwks_ca_file\":\"ca.pem\",\"refresh\":\"1m\"}]},"
                    "\"targets\":{\"shop\":{\"host\":\"h\"}},\"audit\":{\"path\":\"a\"},"
                    "\"policy_files\":[\"p.json\"]}");
    cfg = cfg_load(cfgpath, NULL);
    assert_non_null(cfg);
    char want_ca[600];
    snprintf(want_ca, sizeof(want_ca), "%s/ca.pem", dir);
    assert_string_equal(cfg->issuers[0].jwks_ca_file, want_ca);
    assert_null(cfg->issuers[0].jwks);
    assert_int_equal(cfg->issuers[0].refresh_ms, 60000);
    n = cfg_watch_files(cfg, &files);
    assert_int_equal(n, 3); /* bulwark.json, ca.pem, p.json */
    cfg_release(cfg);
    const char *names[] = {"small.json", "ca.pem", "p.json", "bulwark.json"};
    for (size_t i = 0; i < 4; i++) {
        char p[600];
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(validates_token_case_table),
        cmocka_unit_test(mints_tokens_that_verify),
        cmocka_unit_test(parses_and_refuses_jwks),
        cmocka_unit_test(pins_algorithms_by_key),
        cmocka_unit_test(config_parses_jwks_files_and_lists_watch_files),
    };
    return cmocka_run_group_tests_name("ident_tokens", tests, NULL, NULL);
}
