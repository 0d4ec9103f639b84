/*
 * Unit tests for identity: a table of HS256 tokens (RS/ES/EdDSA and the shared
 * case table are in test_ident_tokens.c), each built here from
 * explicit header and payload text with this file's own base64url and HMAC
 * (not the module's), so every forgery case reads as what goes on the wire.
 * BULWARK_TEST_VERBOSE=1 prints every case's status and reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "helpers.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "identity/ident.h"

#define NOW 1800000000LL /* 2027-01-15T08:00:00Z */

static const char dev_secret[] = "dev-secret-for-tests-only-0123456789abcdef";
static const char other_secret[] = "another-secret-of-enough-length-0123456789";

/* ---- a hand-built config: three issuers, one role ---- */

static char *hs256[] = {"HS256"};
static char *rs_es[] = {"RS256", "ES256"};
static cfg_issuer_t issuers[] = {
    {.issuer = "dev",
     .audience = "bulwark",
     .hs256_secret_file = "dev.secret",
     .hs256_secret = (uint8_t *)dev_secret,
     .hs256_secret_len = sizeof(dev_secret) - 1,
     .algorithms = hs256,
     .n_algorithms = 1},
    {.issuer = "other",
     .audience = "bulwark",
     .hs256_secret_file = "other.secret",
     .hs256_secret = (uint8_t *)other_secret,
     .hs256_secret_len = sizeof(other_secret) - 1,
     .algorithms = hs256,
     .n_algorithms = 1},
    {.issuer = "https://idp.example.com",
     .audience = "bulwark",
     .jwks_file = "jwks.json",
     .algorithms = rs_es,
     .n_algorithms = 2},
    /* a secret that failed to load must never verify anything */
    {.issuer = "nosecret",
     .audience = "bulwark",
     .hs256_secret_file = "empty.secret",
     .hs256_secret = NULL,
     .hs256_secret_len = 0,
     .algorithms = hs256,
     .n_algorithms = 1},
};
static cfg_identity_match_t analyst_ids[] = {
    {.iss = "dev", .sub = "svc-agent-*"},
    {.iss = "dev", .claim = "groups", .includes = "analytics"},
    {.iss = "nosecret", .sub = "*"},
};
static cfg_role_t analyst = {.name = "analyst", .identities = analyst_ids, .n_identities = 3};
static cfg_t cfg = {
    .issuers = issuers,
    .n_issuers = 4,
    .leeway_ms = 30000,
    .max_token_lifetime_ms = 3600000,
    .roles = &analyst,
    .n_roles = 1,
};

/* ---- this test's own token builder (test_b64url: helpers.h) ---- */

enum { K_DEV, K_OTHER, K_EMPTY };

/* header.payload.signature; sig overrides the computed signature segment */
static char *make_token(const char *header, const char *payload, int key, const char *sig)
{
    char *h = test_b64url(header, strlen(header)), *p = test_b64url(payload, strlen(payload));
    size_t in_len = strlen(h) + 1 + strlen(p);
    char *signing_input = malloc(in_len + 1);
    snprintf(signing_input, in_len + 1, "%s.%s", h, p);
    const char *secret = key == K_DEV ? dev_secret : key == K_OTHER ? other_secret : "";
    unsigned char mac[32];
    unsigned int mac_len = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)signing_input, in_len, mac,
         &mac_len);
    char *s = sig ? strdup(sig) : test_b64url(mac, mac_len);
    char *tok = malloc(in_len + 1 + strlen(s) + 1);
    sprintf(tok, "%s.%s", signing_input, s);
    free(h);
    free(p);
    free(signing_input);
    free(s);
    return tok;
}

/* ---- the table ---- */

#define HDR "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define CLAIMS_AFTER_SUB "\"aud\":\"bulwark\",\"iat\":1799999940,\"exp\":1800000600"
#define GOOD "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB "}"

typedef struct tcase {
    const char *name;
    const char *header; /* NULL: HDR */
    const char *payload;
    int key;
    const char *sig; /* signature segment override */
    const char *raw; /* the whole token, verbatim */
    int edit;        /* 1 trailing dot, 2 fourth segment, 3 drop the signature, 4 truncate it,
                        5 pad past 16 KiB, 6 swap in another payload after signing */
    bool no_role;
    ident_status_t want;
    const char *reason; /* substring of the reason */
} tcase_t;

static const tcase_t cases[] = {
    {"valid", NULL, GOOD, K_DEV, .want = IDENT_OK},
    {"valid_aud_array_with_ours", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-1\",\"aud\":[\"x\",\"bulwark\"],\"iat\":1799999940,"
     "\"exp\":1800000600}",
     K_DEV, .want = IDENT_OK},
    {"valid_by_claim_array", NULL,
     "{\"iss\":\"dev\",\"sub\":\"batch-1\",\"groups\":[\"x\",\"analytics\"]," CLAIMS_AFTER_SUB "}",
     K_DEV, .want = IDENT_OK},
    {"valid_by_claim_string", NULL,
     "{\"iss\":\"dev\",\"sub\":\"batch-1\",\"groups\":\"analytics\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_OK},
    {"valid_with_kid_and_other_claims", "{\"typ\":\"JWT\",\"kid\":\"k1\",\"alg\":\"HS256\"}",
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"nested\":{\"a\":[1,{\"b\":null}]},"
     "\"nbf\":1799999940," CLAIMS_AFTER_SUB "}",
     K_DEV, .want = IDENT_OK},
    {"valid_no_role_given", NULL, "{\"iss\":\"other\",\"sub\":\"anyone\"," CLAIMS_AFTER_SUB "}",
     K_OTHER, .no_role = true, .want = IDENT_OK},

    /* algorithm */
    {"alg_none", "{\"alg\":\"none\",\"typ\":\"JWT\"}", GOOD, K_DEV, .sig = "",
     .want = IDENT_BAD_ALG, .reason = "\"none\""},
    {"alg_None", "{\"alg\":\"None\"}", GOOD, K_DEV, .sig = "", .want = IDENT_BAD_ALG,
     .reason = "alg \"None\" is never accepted"},
    {"alg_NONE", "{\"alg\":\"NONE\"}", GOOD, K_DEV, .want = IDENT_BAD_ALG,
     .reason = "never accepted"},
    {"alg_lowercase_hs256", "{\"alg\":\"hs256\"}", GOOD, K_DEV, .want = IDENT_BAD_ALG,
     .reason = "accepts only HS256"},
    {"alg_RS256_on_hs_issuer", "{\"alg\":\"RS256\"}", GOOD, K_DEV, .want = IDENT_BAD_ALG},
    {"alg_HS512", "{\"alg\":\"HS512\"}", GOOD, K_DEV, .want = IDENT_BAD_ALG},
    {"alg_missing", "{\"typ\":\"JWT\"}", GOOD, K_DEV, .want = IDENT_MALFORMED, .reason = "alg"},
    {"alg_not_a_string", "{\"alg\":[\"HS256\"]}", GOOD, K_DEV, .want = IDENT_MALFORMED},
    {"alg_duplicated", "{\"alg\":\"HS256\",\"alg\":\"none\"}", GOOD, K_DEV, .want = IDENT_MALFORMED,
     .reason = "duplicate"},
    {"hs256_against_jwks_issuer", NULL,
     "{\"iss\":\"https://idp.example.com\",\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_BAD_ALG},
    {"rs256_jwks_file_not_loaded", "{\"alg\":\"RS256\",\"kid\":\"k\"}",
     "{\"iss\":\"https://idp.example.com\",\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_UNKNOWN_KEY, .reason = "jwks_file was not loaded"},
    {"jku_header", "{\"alg\":\"HS256\",\"jku\":\"https://evil.example/jwks\"}", GOOD, K_DEV,
     .want = IDENT_UNKNOWN_KEY, .reason = "jku"},
    {"x5u_header", "{\"alg\":\"HS256\",\"x5u\":\"https://evil.example/cert\"}", GOOD, K_DEV,
     .want = IDENT_UNKNOWN_KEY},
    {"jwk_header", "{\"alg\":\"HS256\",\"jwk\":{\"kty\":\"oct\",\"k\":\"AAAA\"}}", GOOD, K_DEV,
     .want = IDENT_UNKNOWN_KEY},
    {"x5c_header", "{\"alg\":\"HS256\",\"x5c\":[\"MIIB\"]}", GOOD, K_DEV,
     .want = IDENT_UNKNOWN_KEY},
    {"crit_header", "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", GOOD, K_DEV, .want = IDENT_MALFORMED,
     .reason = "crit"},

    /* signature */
    {"wrong_secret", NULL, GOOD, K_OTHER, .want = IDENT_SIGNATURE,
     .reason = "signature does not verify"},
    {"signature_empty", NULL, GOOD, K_DEV, .sig = "", .want = IDENT_SIGNATURE},
    {"signature_AAAA", NULL, GOOD, K_DEV, .sig = "AAAA", .want = IDENT_SIGNATURE},
    {"signature_truncated", NULL, GOOD, K_DEV, .edit = 4, .want = IDENT_SIGNATURE},
    {"payload_swapped_after_signing", NULL, GOOD, K_DEV, .edit = 6, .want = IDENT_SIGNATURE},
    {"signature_not_base64url", NULL, GOOD, K_DEV, .sig = "abc+def/", .want = IDENT_MALFORMED},
    {"issuer_with_no_secret", NULL,
     "{\"iss\":\"nosecret\",\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB "}", K_EMPTY,
     .want = IDENT_SIGNATURE},

    /* shape */
    {"trailing_dot", NULL, GOOD, K_DEV, .edit = 1, .want = IDENT_MALFORMED},
    {"four_segments", NULL, GOOD, K_DEV, .edit = 2, .want = IDENT_MALFORMED},
    {"two_segments", NULL, GOOD, K_DEV, .edit = 3, .want = IDENT_MALFORMED},
    {"empty_token", .raw = "", .want = IDENT_MALFORMED},
    {"not_a_jwt", .raw = "hunter2", .want = IDENT_MALFORMED},
    {"padding_in_segment", .raw = "eyJhbGciOiJIUzI1NiJ9.e30=.AAAA", .want = IDENT_MALFORMED},
    {"space_in_token", .raw = "eyJhbGciOiJIUzI1NiJ9 .e30.AAAA", .want = IDENT_MALFORMED},
    {"header_not_an_object", "[\"HS256\"]", GOOD, K_DEV, .want = IDENT_MALFORMED},
    {"header_not_json", "{alg:HS256}", GOOD, K_DEV, .want = IDENT_MALFORMED},
    {"payload_not_an_object", NULL, "\"svc-agent-7\"", K_DEV, .want = IDENT_MALFORMED},
    {"payload_trailing_garbage", NULL, GOOD "x", K_DEV, .want = IDENT_MALFORMED},
    {"duplicate_sub", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"sub\":\"admin\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_MALFORMED, .reason = "sub: duplicate key"},
    {"duplicate_exp", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB ",\"exp\":9999999999}", K_DEV,
     .want = IDENT_MALFORMED, .reason = "exp: duplicate key"},
    {"duplicate_by_escape", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"s\\u0075b\":\"admin\"," CLAIMS_AFTER_SUB "}",
     K_DEV, .want = IDENT_MALFORMED},
    {"nul_in_sub", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\\u0000admin\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_MALFORMED},
    {"too_large_20k", .edit = 5, .want = IDENT_TOO_LARGE, .reason = "16384"},

    /* issuer */
    {"unknown_issuer", NULL, "{\"iss\":\"evil\",\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB "}",
     K_DEV, .want = IDENT_UNKNOWN_ISSUER, .reason = "\"evil\""},
    {"issuer_differs_in_case", NULL,
     "{\"iss\":\"Dev\",\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_UNKNOWN_ISSUER},
    {"issuer_missing", NULL, "{\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_MALFORMED, .reason = "iss"},
    {"issuer_not_a_string", NULL,
     "{\"iss\":[\"dev\"],\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_MALFORMED},

    /* exp, nbf, iat */
    {"exp_missing", NULL, "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\"}", K_DEV,
     .want = IDENT_MALFORMED, .reason = "exp"},
    {"exp_string", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"exp\":\"1800000600\"}", K_DEV,
     .want = IDENT_MALFORMED},
    {"exp_fraction", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"exp\":1800000600.5}", K_DEV,
     .want = IDENT_MALFORMED},
    {"exp_1e26", NULL, "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"exp\":1e26}",
     K_DEV, .want = IDENT_MALFORMED},
    {"exp_negative", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"exp\":-1}", K_DEV,
     .want = IDENT_MALFORMED},
    {"exp_null", NULL, "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"exp\":null}",
     K_DEV, .want = IDENT_MALFORMED},
    {"expired_beyond_leeway", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"iat\":1799999000,"
     "\"exp\":1799999969}",
     K_DEV, .want = IDENT_EXPIRED, .reason = "token expired at 2027-01-15T07:59:29Z"},
    {"expired_at_leeway_edge", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"exp\":1799999970}", K_DEV,
     .want = IDENT_EXPIRED},
    {"expired_within_leeway", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"exp\":1799999971}", K_DEV,
     .want = IDENT_OK},
    {"nbf_future_beyond_leeway", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"nbf\":1800000031," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_NOT_YET_VALID, .reason = "2027-01-15T08:00:31Z"},
    {"nbf_future_within_leeway", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"nbf\":1800000029," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_OK},
    {"nbf_string", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"nbf\":\"0\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_MALFORMED},
    {"iat_in_future", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"iat\":1800000060,"
     "\"exp\":1800000600}",
     K_DEV, .want = IDENT_ISSUED_IN_FUTURE},
    {"iat_float", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"iat\":1799999940.25,"
     "\"exp\":1800000600}",
     K_DEV, .want = IDENT_MALFORMED},

    /* audience */
    {"aud_missing", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"iat\":1799999940,\"exp\":1800000600}", K_DEV,
     .want = IDENT_AUDIENCE, .reason = "audience does not include \"bulwark\""},
    {"aud_wrong", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark-staging\",\"iat\":1799999940,"
     "\"exp\":1800000600}",
     K_DEV, .want = IDENT_AUDIENCE},
    {"aud_array_without_ours", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":[\"a\",\"Bulwark\"],\"iat\":1799999940,"
     "\"exp\":1800000600}",
     K_DEV, .want = IDENT_AUDIENCE},
    {"aud_empty_array", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":[],\"iat\":1799999940,\"exp\":1800000600}",
     K_DEV, .want = IDENT_AUDIENCE},
    {"aud_array_with_non_string", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":[7,\"bulwark\"],\"iat\":1799999940,"
     "\"exp\":1800000600}",
     K_DEV, .want = IDENT_MALFORMED},

    /* lifetime: max 1h */
    {"lifetime_too_long", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"iat\":1799999940,"
     "\"exp\":1800003600}",
     K_DEV, .want = IDENT_LIFETIME, .reason = "max_token_lifetime"},
    {"lifetime_too_long_without_iat", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"exp\":1800003601}", K_DEV,
     .want = IDENT_LIFETIME},
    {"lifetime_ok_without_iat", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"exp\":1800003600}", K_DEV,
     .want = IDENT_OK},
    {"exp_before_iat", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\",\"aud\":\"bulwark\",\"iat\":1800000000,"
     "\"exp\":1799999990}",
     K_DEV, .want = IDENT_MALFORMED},

    /* subject and role */
    {"sub_missing", NULL, "{\"iss\":\"dev\"," CLAIMS_AFTER_SUB "}", K_DEV, .want = IDENT_MALFORMED,
     .reason = "sub"},
    {"sub_not_a_string", NULL, "{\"iss\":\"dev\",\"sub\":7," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_MALFORMED},
    {"role_mismatch_sub_glob", NULL,
     "{\"iss\":\"dev\",\"sub\":\"svc-agentX\"," CLAIMS_AFTER_SUB "}", K_DEV,
     .want = IDENT_ROLE_MISMATCH, .reason = "\"svc-agentX\""},
    {"role_mismatch_claim_not_included", NULL,
     "{\"iss\":\"dev\",\"sub\":\"batch-1\",\"groups\":[\"analytics-admins\"]," CLAIMS_AFTER_SUB "}",
     K_DEV, .want = IDENT_ROLE_MISMATCH, .reason = "role \"analyst\""},
    {"role_mismatch_claim_wrong_type", NULL,
     "{\"iss\":\"dev\",\"sub\":\"batch-1\",\"groups\":{\"analytics\":true}," CLAIMS_AFTER_SUB "}",
     K_DEV, .want = IDENT_ROLE_MISMATCH},
    {"role_mismatch_other_issuer_same_sub", NULL,
     "{\"iss\":\"other\",\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB "}", K_OTHER,
     .want = IDENT_ROLE_MISMATCH},
};

static char *build(const tcase_t *c)
{
    if (c->raw)
        return strdup(c->raw);
    if (c->edit == 5) {
        /* a valid token padded past 16 KiB with a big claim */
        char *payload = malloc(21000);
        int n =
            snprintf(payload, 21000,
                     "{\"iss\":\"dev\",\"sub\":\"svc-agent-7\"," CLAIMS_AFTER_SUB ",\"pad\":\"");
        memset(payload + n, 'x', 15000);
        strcpy(payload + n + 15000, "\"}");
        char *t = make_token(HDR, payload, K_DEV, NULL);
        free(payload);
        assert_true(strlen(t) > 20000);
        return t;
    }
    char *t = make_token(c->header ? c->header : HDR, c->payload, c->key, c->sig);
    if (c->edit == 6) {
        /* the signature of GOOD on a payload naming another subject */
        const char *evil = "{\"iss\":\"dev\",\"sub\":\"svc-agent-0\"," CLAIMS_AFTER_SUB "}";
        char *e = make_token(HDR, evil, K_DEV, strrchr(t, '.') + 1);
        free(t);
        t = e;
    }
    size_t len = strlen(t);
    char *out = malloc(len + 16);
    strcpy(out, t);
    free(t);
    if (c->edit == 1)
        strcat(out, ".");
    else if (c->edit == 2)
        strcat(out, ".AAAA");
    else if (c->edit == 3)
        *strrchr(out, '.') = 0;
    else if (c->edit == 4)
        out[len - 3] = 0; /* 40 characters: still valid base64url, 30 bytes */
    return out;
}

static void validates_token_table(void **state)
{
    (void)state;
    int failed = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const tcase_t *c = &cases[i];
        char *tok = build(c);
        ident_t id;
        char reason[256];
        memset(reason, 'Z', sizeof(reason));
        ident_status_t st = ident_login(&cfg, NULL, c->no_role ? NULL : &analyst, tok, strlen(tok),
                                        NOW, &id, reason, sizeof(reason));
        bool ok = st == c->want;
        if (ok && c->reason && !strstr(reason, c->reason))
            ok = false;
        if (!memchr(reason, 0, sizeof(reason)))
            ok = false;
        /* never echo the token or its payload segment */
        const char *dot = strchr(tok, '.');
        if (dot && strlen(dot) > 8 && strstr(reason, dot + 1))
            ok = false;
        if (st == IDENT_OK && (!id.subject || !id.issuer || !id.claims))
            ok = false;
        if (st != IDENT_OK && (id.subject || id.issuer || id.claims))
            ok = false;
        if (getenv("BULWARK_TEST_VERBOSE"))
            print_message("%-36s %-16s %s\n", c->name, ident_status_name(st),
                          memchr(reason, 0, sizeof(reason)) ? reason : "(unterminated)");
        if (!ok) {
            failed++;
            print_message("FAIL %s: got %s (%s), want %s%s%s\n", c->name, ident_status_name(st),
                          memchr(reason, 0, sizeof(reason)) ? reason : "(unterminated)",
                          ident_status_name(c->want), c->reason ? " with reason containing " : "",
                          c->reason ? c->reason : "");
        }
        ident_free(&id);
        free(tok);
    }
    print_message("%zu token cases, %d failed\n", sizeof(cases) / sizeof(cases[0]), failed);
    assert_int_equal(failed, 0);
}

static void returns_verified_identity(void **state)
{
    (void)state;
    char *tok = make_token(HDR, GOOD, K_DEV, NULL);
    ident_t id;
    char reason[128];
    assert_int_equal(
        ident_login(&cfg, NULL, &analyst, tok, strlen(tok), NOW, &id, reason, sizeof(reason)),
        IDENT_OK);
    assert_string_equal(id.subject, "svc-agent-7");
    assert_string_equal(id.issuer, "dev");
    assert_int_equal(id.exp, 1800000600);
    assert_int_equal(id.iat, 1799999940);
    assert_string_equal(cJSON_GetObjectItem(id.claims, "aud")->valuestring, "bulwark");
    assert_true(ident_matches_role(&id, &analyst));
    ident_free(&id);
    assert_null(id.claims);
    ident_free(&id); /* twice is harmless */

    /* the length is what counts: a NUL or a byte past len is not part of the token */
    size_t len = strlen(tok);
    char *longer = malloc(len + 2);
    memcpy(longer, tok, len);
    memcpy(longer + len, "x", 2);
    assert_int_equal(
        ident_login(&cfg, NULL, &analyst, longer, len, NOW, &id, reason, sizeof(reason)), IDENT_OK);
    ident_free(&id);
    assert_int_equal(
        ident_login(&cfg, NULL, &analyst, longer, len + 1, NOW, &id, reason, sizeof(reason)),
        IDENT_SIGNATURE);
    free(longer);
    free(tok);
}

static void signs_tokens_that_verify(void **state)
{
    (void)state;
    cJSON *claims = cJSON_Parse("{\"iss\":\"dev\",\"sub\":\"svc-agent-2\",\"aud\":\"bulwark\","
                                "\"iat\":1799999999,\"exp\":1800000900}");
    char *tok = ident_sign_hs256((const uint8_t *)dev_secret, strlen(dev_secret), claims);
    assert_non_null(tok);
    /* header as the module writes it, compared with this file's own encoding */
    char *h = test_b64url(HDR, strlen(HDR));
    assert_memory_equal(tok, h, strlen(h));
    free(h);
    ident_t id;
    char reason[128];
    assert_int_equal(
        ident_login(&cfg, NULL, &analyst, tok, strlen(tok), NOW, &id, reason, sizeof(reason)),
        IDENT_OK);
    assert_int_equal(id.exp, 1800000900);
    ident_free(&id);
    free(tok);
    cJSON_Delete(claims);
}

static void names_statuses_and_sqlstates(void **state)
{
    (void)state;
    assert_string_equal(ident_status_name(IDENT_EXPIRED), "expired");
    assert_string_equal(ident_status_name(IDENT_AUDIENCE), "audience");
    assert_string_equal(ident_status_name(IDENT_ROLE_MISMATCH), "role_mismatch");
    assert_string_equal(ident_status_name(IDENT_TOO_LARGE), "size");
    assert_string_equal(ident_status_name(IDENT_UNKNOWN_ISSUER), "issuer");
    assert_string_equal(ident_status_name(IDENT_UNKNOWN_KEY), "unknown_key");
    assert_string_equal(ident_status_name(IDENT_SIGNATURE), "signature");
    assert_string_equal(ident_status_name(IDENT_KEY_PENDING), "key_pending");
    assert_string_equal(ident_status_name((ident_status_t)99), "unknown");
    for (int s = IDENT_MALFORMED; s < IDENT_ROLE_MISMATCH; s++)
        assert_string_equal(ident_status_sqlstate((ident_status_t)s), "28P01");
    assert_string_equal(ident_status_sqlstate(IDENT_ROLE_MISMATCH), "28000");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(validates_token_table),
        cmocka_unit_test(returns_verified_identity),
        cmocka_unit_test(signs_tokens_that_verify),
        cmocka_unit_test(names_statuses_and_sqlstates),
    };
    return cmocka_run_group_tests_name("ident", tests, NULL, NULL);
}
