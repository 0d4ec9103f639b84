/*
 * JWT login (SPEC section 4). The token is hostile until its signature
 * verifies: before that, only the header and the payload's `iss` are read, and
 * only to choose the key. Keys and accepted algorithms come from the config.
 */
#include "identity/ident.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "identity/internal.h"
#include "identity/jwks.h"
#include "util/b64.h"
#include "util/glob.h"

/* 9999-12-31T23:59:59Z: claims past it are not times but attacks on arithmetic */
#define MAX_TIME 253402300799LL

/* ---- reasons ---- */

static ident_status_t fail(char *reason, size_t sz, ident_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static ident_status_t fail(char *reason, size_t sz, ident_status_t st, const char *fmt, ...)
{
    if (sz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, sz, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* A string from the token, fit for a log line and a client message: quoted,
 * printable ASCII only, at most ~48 characters. */
static const char *q(char *out, size_t outsz, const char *s)
{
    size_t o = 0;
    out[o++] = '"';
    for (; *s && o + 6 < outsz; s++) {
        if (o >= 48) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            out[o++] = '\\';
        out[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[o++] = '"';
    out[o] = 0;
    return out;
}

static const char *iso8601(char *out, size_t outsz, int64_t t)
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (!gmtime_r(&tt, &tm) || !strftime(out, outsz, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(out, outsz, "%lld", (long long)t);
    return out;
}

/* ---- decoding ---- */

static bool b64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

typedef struct parts {
    const char *seg[3];
    size_t len[3];
} parts_t;

/* Exactly three segments of base64url characters; header and payload non-empty. */
static bool split(const char *t, size_t len, parts_t *p)
{
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || t[i] == '.') {
            if (k == 3)
                return false;
            p->seg[k] = t + start;
            p->len[k] = i - start;
            k++;
            start = i + 1;
        } else if (!b64url_char(t[i])) {
            return false;
        }
    }
    return k == 3 && p->len[0] && p->len[1];
}

static cJSON *decode_json(const char *seg, size_t len, const char *what, char *reason, size_t rsz)
{
    size_t n;
    uint8_t *raw = b64_decode_alloc(seg, len, B64_URL, &n);
    if (!raw) {
        fail(reason, rsz, IDENT_MALFORMED, "token %s is not base64url", what);
        return NULL;
    }
    char why[128];
    cJSON *j = cfg_json_parse_strict((const char *)raw, n, why, sizeof(why));
    free(raw);
    if (!j) {
        fail(reason, rsz, IDENT_MALFORMED, "token %s: %s", what, why);
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        fail(reason, rsz, IDENT_MALFORMED, "token %s is not a JSON object", what);
        return NULL;
    }
    return j;
}

/* A NumericDate (RFC 7519 section 2) as we accept it: an integral JSON number
 * in [0, MAX_TIME]. 1 = present and valid, 0 = absent, -1 = invalid. */
static int numeric_date(const cJSON *payload, const char *name, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(payload, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= (double)MAX_TIME) || d != (double)(int64_t)d)
        return -1;
    *out = (int64_t)d;
    return 1;
}

/* ---- keys ---- */

/* The key a token is checked with, chosen from the issuer's config only. */
typedef enum { KEY_HS256, KEY_JWK } key_kind_t;

typedef struct key {
    key_kind_t kind;
    const uint8_t *secret; /* HS256 */
    size_t secret_len;
    const ident_jwk_t *jwk; /* JWK: a key of `set` */
    ident_keyset_t *set;    /* retained while the key is in use */
} ident_key_t;

static bool issuer_accepts(const cfg_issuer_t *is, const char *alg)
{
    for (size_t i = 0; i < is->n_algorithms; i++)
        if (!strcmp(is->algorithms[i], alg))
            return true;
    return false;
}

/* The issuer's JWKS: the file's keys (parsed with the config), or the key
 * store's last good set for its URL. */
static ident_keyset_t *issuer_keys(const cfg_issuer_t *is, ident_keystore_t *ks, char *why,
                                   size_t whysz)
{
    if (is->jwks_file) {
        if (!is->jwks)
            snprintf(why, whysz, "its jwks_file was not loaded");
        return ident_keyset_retain(is->jwks);
    }
    if (!ks) {
        snprintf(why, whysz, "no key store fetches its jwks_url");
        return NULL;
    }
    return ident_keystore_keys(ks, is, why, whysz);
}

/* kid unknown (or no set yet): for a jwks_url issuer, ask for a refetch and
 * have the caller wait for it. */
static ident_status_t key_missing(const cfg_issuer_t *is, ident_keystore_t *ks, const char *kid,
                                  const ident_keyset_t *set, const char *setwhy, char *reason,
                                  size_t rsz)
{
    char b1[64], b2[64], why[160] = "";
    if (is->jwks_url && ks && ident_keystore_refetch(ks, is, why, sizeof(why)))
        return fail(reason, rsz, IDENT_KEY_PENDING, "waiting for the keys of issuer %s",
                    q(b1, sizeof(b1), is->issuer));
    if (!set)
        return fail(reason, rsz, IDENT_UNKNOWN_KEY, "issuer %s has no keys: %s",
                    q(b1, sizeof(b1), is->issuer), setwhy);
    if (!kid)
        return fail(reason, rsz, IDENT_UNKNOWN_KEY, "token has no kid and issuer %s has %zu keys",
                    q(b1, sizeof(b1), is->issuer), ident_keyset_count(set));
    return fail(reason, rsz, IDENT_UNKNOWN_KEY, "issuer %s has no key with kid %s%s%s",
                q(b1, sizeof(b1), is->issuer), q(b2, sizeof(b2), kid), *why ? "; " : "", why);
}

static ident_status_t resolve_jwk(const cfg_issuer_t *is, ident_keystore_t *ks, const cJSON *header,
                                  const char *alg, ident_key_t *key, char *reason, size_t rsz)
{
    char b1[64], b2[64], b3[32], why[160] = "";
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(header, "kid");
    const char *kid = cJSON_IsString(k) ? k->valuestring : NULL;
    ident_keyset_t *set = issuer_keys(is, ks, why, sizeof(why));
    const ident_jwk_t *jwk = ident_keyset_find(set, kid);
    if (!jwk) {
        ident_status_t st = key_missing(is, ks, kid, set, why, reason, rsz);
        ident_keyset_release(set);
        return st;
    }
    /* the key decides what it accepts, never the token: RS256 against an EC
     * key, or HS256 keyed with an RSA key's public PEM, fail here */
    if (!ident_jwk_accepts(jwk, alg)) {
        fail(reason, rsz, IDENT_BAD_ALG, "key %s (%s) accepts %s, not %s",
             q(b1, sizeof(b1), jwk->kid ? jwk->kid : ""), ident_jwk_describe(jwk, b3, sizeof(b3)),
             ident_jwk_accepted(jwk), q(b2, sizeof(b2), alg));
        ident_keyset_release(set);
        return IDENT_BAD_ALG;
    }
    key->kind = KEY_JWK;
    key->jwk = jwk;
    key->set = set;
    return IDENT_OK;
}

static ident_status_t resolve_key(const cfg_issuer_t *is, ident_keystore_t *ks, const cJSON *header,
                                  const char *alg, ident_key_t *key, char *reason, size_t rsz)
{
    char b1[64], b2[64];
    if (is->hs256_secret_file) {
        if (strcmp(alg, "HS256") != 0)
            return fail(reason, rsz, IDENT_BAD_ALG, "issuer %s accepts only HS256, not %s",
                        q(b1, sizeof(b1), is->issuer), q(b2, sizeof(b2), alg));
        key->kind = KEY_HS256;
        key->secret = is->hs256_secret;
        key->secret_len = is->hs256_secret_len;
        return IDENT_OK;
    }
    /* a JWKS issuer never takes an HMAC: its "secret" would be public */
    if (!issuer_accepts(is, alg) || !strncmp(alg, "HS", 2))
        return fail(reason, rsz, IDENT_BAD_ALG, "issuer %s does not accept alg %s",
                    q(b1, sizeof(b1), is->issuer), q(b2, sizeof(b2), alg));
    return resolve_jwk(is, ks, header, alg, key, reason, rsz);
}

static bool hmac_sha256(const uint8_t *key, size_t key_len, const char *msg, size_t len,
                        uint8_t mac[32])
{
    unsigned int n = 0;
    return HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)msg, len, mac, &n) &&
           n == 32;
}

static bool verify_hs256(const ident_key_t *key, const char *msg, size_t len, const uint8_t *sig,
                         size_t sig_len)
{
    uint8_t mac[32];
    /* never an empty key: HMAC with "" is a MAC anyone can compute */
    if (!key->secret || key->secret_len == 0 || key->secret_len > INT32_MAX ||
        sig_len != sizeof(mac))
        return false;
    if (!hmac_sha256(key->secret, key->secret_len, msg, len, mac))
        return false;
    bool ok = CRYPTO_memcmp(mac, sig, sizeof(mac)) == 0;
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok;
}

/* signing input = the first two segments and the dot between them */
static bool verify(const ident_key_t *key, const char *alg, const char *token, const parts_t *p,
                   const uint8_t *sig, size_t sig_len)
{
    size_t in_len = p->len[0] + 1 + p->len[1];
    if (key->kind == KEY_HS256)
        return verify_hs256(key, token, in_len, sig, sig_len);
    return key->jwk && ident_jwk_verify(key->jwk, alg, token, in_len, sig, sig_len);
}

/* ---- header and claims ---- */

static ident_status_t check_header(const cJSON *h, const char **alg, char *reason, size_t rsz)
{
    /* keys come from the config, never from the token (RFC 8725 section 3.10) */
    static const char *const key_headers[] = {"jku", "x5u", "jwk", "x5c"};
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(h, "alg");
    if (!cJSON_IsString(a))
        return fail(reason, rsz, IDENT_MALFORMED, "token header has no alg string");
    if (!strcasecmp(a->valuestring, "none")) {
        char b[16];
        return fail(reason, rsz, IDENT_BAD_ALG, "alg %s is never accepted",
                    q(b, sizeof(b), a->valuestring));
    }
    for (size_t i = 0; i < sizeof(key_headers) / sizeof(key_headers[0]); i++)
        if (cJSON_GetObjectItemCaseSensitive(h, key_headers[i]))
            return fail(reason, rsz, IDENT_UNKNOWN_KEY,
                        "token header names its own key (%s); keys come only from the "
                        "configuration",
                        key_headers[i]);
    /* RFC 7515 section 4.1.11: extensions we do not understand must be refused */
    if (cJSON_GetObjectItemCaseSensitive(h, "crit"))
        return fail(reason, rsz, IDENT_MALFORMED, "token header has crit extensions");
    const cJSON *typ = cJSON_GetObjectItemCaseSensitive(h, "typ");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(h, "kid");
    if ((typ && !cJSON_IsString(typ)) || (kid && !cJSON_IsString(kid)))
        return fail(reason, rsz, IDENT_MALFORMED, "token header typ and kid must be strings");
    *alg = a->valuestring;
    return IDENT_OK;
}

typedef struct times {
    int64_t exp, nbf, iat;
    bool has_nbf, has_iat;
} times_t;

static ident_status_t check_claim_types(const cJSON *p, times_t *t, char *reason, size_t rsz)
{
    int rc = numeric_date(p, "exp", &t->exp);
    if (rc == 0)
        return fail(reason, rsz, IDENT_MALFORMED, "token has no exp claim");
    if (rc < 0)
        return fail(reason, rsz, IDENT_MALFORMED, "token exp is not an integer time");
    if ((rc = numeric_date(p, "nbf", &t->nbf)) < 0)
        return fail(reason, rsz, IDENT_MALFORMED, "token nbf is not an integer time");
    t->has_nbf = rc > 0;
    if ((rc = numeric_date(p, "iat", &t->iat)) < 0)
        return fail(reason, rsz, IDENT_MALFORMED, "token iat is not an integer time");
    t->has_iat = rc > 0;
    if (t->has_iat && t->exp < t->iat)
        return fail(reason, rsz, IDENT_MALFORMED, "token exp is before its iat");
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(p, "sub");
    if (!cJSON_IsString(sub) || !*sub->valuestring)
        return fail(reason, rsz, IDENT_MALFORMED, "token has no sub string");
    const cJSON *aud = cJSON_GetObjectItemCaseSensitive(p, "aud"), *a;
    if (cJSON_IsArray(aud)) {
        cJSON_ArrayForEach(a, aud)
        {
            if (!cJSON_IsString(a))
                return fail(reason, rsz, IDENT_MALFORMED, "token aud array holds a non-string");
        }
    } else if (aud && !cJSON_IsString(aud)) {
        return fail(reason, rsz, IDENT_MALFORMED, "token aud is neither a string nor an array");
    }
    return IDENT_OK;
}

static bool audience_ok(const cJSON *p, const char *audience)
{
    const cJSON *aud = cJSON_GetObjectItemCaseSensitive(p, "aud"), *a;
    if (!audience || !*audience)
        return false;
    if (cJSON_IsString(aud))
        return !strcmp(aud->valuestring, audience);
    const cJSON *list = cJSON_IsArray(aud) ? aud : NULL;
    cJSON_ArrayForEach(a, list)
    {
        if (cJSON_IsString(a) && !strcmp(a->valuestring, audience))
            return true;
    }
    return false;
}

static ident_status_t check_claims(const cfg_t *cfg, const cfg_issuer_t *is, const cJSON *p,
                                   const times_t *t, int64_t now, char *reason, size_t rsz)
{
    char b[40];
    int64_t leeway = cfg->leeway_ms / 1000, max_life = cfg->max_token_lifetime_ms / 1000;
    /* now is clamped so that the sums below stay in range */
    now = now < 0 ? 0 : now > MAX_TIME ? MAX_TIME : now;
    if (now >= t->exp + leeway)
        return fail(reason, rsz, IDENT_EXPIRED, "token expired at %s",
                    iso8601(b, sizeof(b), t->exp));
    if (t->has_nbf && t->nbf > now + leeway)
        return fail(reason, rsz, IDENT_NOT_YET_VALID, "token not valid before %s",
                    iso8601(b, sizeof(b), t->nbf));
    if (t->has_iat && t->iat > now + leeway)
        return fail(reason, rsz, IDENT_ISSUED_IN_FUTURE, "token issued in the future (iat %s)",
                    iso8601(b, sizeof(b), t->iat));
    if (!audience_ok(p, is->audience))
        return fail(reason, rsz, IDENT_AUDIENCE, "audience does not include %s",
                    q(b, sizeof(b), is->audience ? is->audience : ""));
    int64_t life = t->has_iat ? t->exp - t->iat : t->exp - now;
    if (life > max_life)
        return fail(reason, rsz, IDENT_LIFETIME,
                    "token lifetime %llds (%s) exceeds max_token_lifetime %llds", (long long)life,
                    t->has_iat ? "exp - iat" : "exp - now, no iat", (long long)max_life);
    return IDENT_OK;
}

/* ---- roles ---- */

static bool claim_includes(const cJSON *claims, const char *claim, const char *value)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(claims, claim), *e;
    if (cJSON_IsString(c))
        return !strcmp(c->valuestring, value);
    const cJSON *list = cJSON_IsArray(c) ? c : NULL;
    cJSON_ArrayForEach(e, list)
    {
        if (cJSON_IsString(e) && !strcmp(e->valuestring, value))
            return true;
    }
    return false;
}

bool ident_matches_role(const ident_t *id, const cfg_role_t *role)
{
    if (!id || !role || !id->issuer || !id->subject)
        return false;
    for (size_t i = 0; i < role->n_identities; i++) {
        const cfg_identity_match_t *m = &role->identities[i];
        if (!m->iss || strcmp(m->iss, id->issuer) != 0)
            continue;
        if (!m->sub && !m->claim)
            continue; /* never "anyone from this issuer"; config refuses it too */
        if (m->sub && !glob_match(m->sub, id->subject))
            continue;
        if (m->claim && (!m->includes || !claim_includes(id->claims, m->claim, m->includes)))
            continue;
        return true;
    }
    return false;
}

/* ---- login ---- */

/* After the signature verified, the subject is the issuer's word: name it in
 * the reason of a claim failure (expired, audience, ...) for the operator. */
static void name_subject(const cJSON *payload, char *reason, size_t rsz)
{
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(payload, "sub");
    size_t n = rsz ? strlen(reason) : 0;
    char b[64];
    if (cJSON_IsString(sub) && *sub->valuestring && n + 1 < rsz)
        snprintf(reason + n, rsz - n, " (subject %s)", q(b, sizeof(b), sub->valuestring));
}

/* Everything up to a verified signature: the header, the issuer, the key. */
static ident_status_t verify_token(const cfg_t *cfg, ident_keystore_t *ks, const char *token,
                                   const parts_t *p, cJSON *header, const cJSON *payload,
                                   const cfg_issuer_t **isp, char *reason, size_t rsz)
{
    char b[64];
    const char *alg = NULL;
    ident_status_t st = check_header(header, &alg, reason, rsz);
    if (st != IDENT_OK)
        return st;
    const cJSON *iss = cJSON_GetObjectItemCaseSensitive(payload, "iss");
    if (!cJSON_IsString(iss))
        return fail(reason, rsz, IDENT_MALFORMED, "token has no iss string");
    const cfg_issuer_t *is = cfg_find_issuer(cfg, iss->valuestring);
    if (!is)
        return fail(reason, rsz, IDENT_UNKNOWN_ISSUER, "unknown issuer %s",
                    q(b, sizeof(b), iss->valuestring));
    ident_key_t key = {0};
    if ((st = resolve_key(is, ks, header, alg, &key, reason, rsz)) != IDENT_OK)
        return st;
    size_t sig_len;
    uint8_t *sig = b64_decode_alloc(p->seg[2], p->len[2], B64_URL, &sig_len);
    bool ok = sig && verify(&key, alg, token, p, sig, sig_len);
    free(sig);
    ident_keyset_release(key.set);
    if (!sig)
        return fail(reason, rsz, IDENT_MALFORMED, "token signature is not base64url");
    if (!ok)
        return fail(reason, rsz, IDENT_SIGNATURE, "signature does not verify");
    *isp = is;
    return IDENT_OK;
}

ident_status_t ident_login(const cfg_t *cfg, ident_keystore_t *ks, const cfg_role_t *role,
                           const char *token, size_t len, int64_t now_s, ident_t *out, char *reason,
                           size_t reasonsz)
{
    memset(out, 0, sizeof(*out));
    if (reasonsz)
        reason[0] = 0;
    if (len > IDENT_MAX_TOKEN)
        return fail(reason, reasonsz, IDENT_TOO_LARGE, "token is %zu bytes; the limit is %d", len,
                    IDENT_MAX_TOKEN);
    parts_t p;
    if (!token || !split(token, len, &p))
        return fail(reason, reasonsz, IDENT_MALFORMED,
                    "not a JWT (three base64url segments separated by dots)");
    cJSON *header = decode_json(p.seg[0], p.len[0], "header", reason, reasonsz);
    cJSON *payload = header ? decode_json(p.seg[1], p.len[1], "payload", reason, reasonsz) : NULL;
    if (!payload) {
        cJSON_Delete(header);
        return IDENT_MALFORMED;
    }
    const cfg_issuer_t *is = NULL;
    times_t t = {0};
    ident_status_t st = verify_token(cfg, ks, token, &p, header, payload, &is, reason, reasonsz);
    cJSON_Delete(header);
    bool verified = st == IDENT_OK;
    if (st == IDENT_OK)
        st = check_claim_types(payload, &t, reason, reasonsz);
    if (st == IDENT_OK)
        st = check_claims(cfg, is, payload, &t, now_s, reason, reasonsz);
    if (st != IDENT_OK) {
        if (verified)
            name_subject(payload, reason, reasonsz);
        cJSON_Delete(payload);
        return st;
    }
    ident_t id = {
        .subject = strdup(cJSON_GetObjectItemCaseSensitive(payload, "sub")->valuestring),
        .issuer = strdup(is->issuer),
        .exp = t.exp,
        .iat = t.has_iat ? t.iat : 0,
        .claims = payload,
    };
    if (!id.subject || !id.issuer) {
        ident_free(&id);
        return fail(reason, reasonsz, IDENT_MALFORMED, "out of memory");
    }
    if (role && !ident_matches_role(&id, role)) {
        char b1[64], b2[64], b3[64];
        fail(reason, reasonsz, IDENT_ROLE_MISMATCH,
             "subject %s of issuer %s matches no identity of role %s",
             q(b1, sizeof(b1), id.subject), q(b2, sizeof(b2), id.issuer),
             q(b3, sizeof(b3), role->name ? role->name : ""));
        ident_free(&id);
        return IDENT_ROLE_MISMATCH;
    }
    *out = id;
    return IDENT_OK;
}

void ident_free(ident_t *id)
{
    if (!id)
        return;
    free(id->subject);
    free(id->issuer);
    cJSON_Delete(id->claims);
    memset(id, 0, sizeof(*id));
}

static const char *const status_names[] = {
    [IDENT_OK] = "ok",
    [IDENT_MALFORMED] = "malformed",
    [IDENT_TOO_LARGE] = "size",
    [IDENT_BAD_ALG] = "bad_alg",
    [IDENT_UNKNOWN_ISSUER] = "issuer",
    [IDENT_UNKNOWN_KEY] = "unknown_key",
    [IDENT_SIGNATURE] = "signature",
    [IDENT_EXPIRED] = "expired",
    [IDENT_NOT_YET_VALID] = "not_yet_valid",
    [IDENT_ISSUED_IN_FUTURE] = "issued_in_future",
    [IDENT_AUDIENCE] = "audience",
    [IDENT_LIFETIME] = "lifetime",
    [IDENT_ROLE_MISMATCH] = "role_mismatch",
    [IDENT_KEY_PENDING] = "key_pending",
};

const char *ident_status_name(ident_status_t s)
{
    if ((unsigned)s < sizeof(status_names) / sizeof(status_names[0]) && status_names[s])
        return status_names[s];
    return "unknown";
}

/* SPEC section 8: authentication failed 28P01; the token is fine but not for
 * this role: 28000 (invalid_authorization_specification). */
const char *ident_status_sqlstate(ident_status_t s)
{
    if (s == IDENT_OK)
        return "00000";
    return s == IDENT_ROLE_MISMATCH ? "28000" : "28P01";
}

/* ---- minting ---- */

char *ident_sign_hs256(const uint8_t *secret, size_t secret_len, const cJSON *claims)
{
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    if (!secret || !secret_len || secret_len > INT32_MAX || !cJSON_IsObject(claims))
        return NULL;
    char *payload = cJSON_PrintUnformatted(claims);
    char *h = b64_encode_alloc(header, sizeof(header) - 1, B64_URL);
    char *pl = payload ? b64_encode_alloc(payload, strlen(payload), B64_URL) : NULL;
    char *tok = NULL;
    free(payload);
    if (h && pl) {
        size_t hl = strlen(h), pll = strlen(pl);
        size_t sl = b64_encoded_len(32, B64_URL);
        tok = malloc(hl + 1 + pll + 1 + sl + 1);
        uint8_t mac[32];
        if (tok) {
            memcpy(tok, h, hl);
            tok[hl] = '.';
            memcpy(tok + hl + 1, pl, pll);
            if (hmac_sha256(secret, secret_len, tok, hl + 1 + pll, mac)) {
                tok[hl + 1 + pll] = '.';
                b64_encode(tok + hl + 1 + pll + 1, mac, sizeof(mac), B64_URL);
            } else {
                free(tok);
                tok = NULL;
            }
            OPENSSL_cleanse(mac, sizeof(mac));
        }
    }
    free(h);
    free(pl);
    return tok;
}
