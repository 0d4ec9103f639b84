/*
 * JWKS parsing and JWS signature checks with OpenSSL 3 (see jwks.h).
 *
 * Signatures are checked with EVP_DigestVerify directly, not through libjwt
 * 1.10: that version has no PS algorithms, wants a PEM for every check (we
 * hold keys as EVP_PKEY), and re-parses the token with its own JSON reader,
 * which would be a second opinion on a token we have already decided about.
 * docs/identity.md says more.
 */
#include "identity/jwks.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include "util/b64.h"

#define RSA_MIN_BITS 2048
#define RSA_MAX_BITS 16384

struct ident_keyset {
    atomic_int refs;
    size_t n;
    ident_jwk_t keys[];
};

/* ---- algorithms ---- */

typedef struct alg_info {
    const char *name;
    jwk_kty_t kty;
    const EVP_MD *(*md)(void); /* NULL: EdDSA */
    bool pss;
    size_t es_len; /* ES: bytes of r || s */
    const char *curve;
} alg_info_t;

static const alg_info_t algs[] = {
    {"RS256", JWK_RSA, EVP_sha256, false, 0, NULL},
    {"RS384", JWK_RSA, EVP_sha384, false, 0, NULL},
    {"RS512", JWK_RSA, EVP_sha512, false, 0, NULL},
    {"PS256", JWK_RSA, EVP_sha256, true, 0, NULL},
    {"PS384", JWK_RSA, EVP_sha384, true, 0, NULL},
    {"PS512", JWK_RSA, EVP_sha512, true, 0, NULL},
    {"ES256", JWK_EC, EVP_sha256, false, 64, "P-256"},
    {"ES384", JWK_EC, EVP_sha384, false, 96, "P-384"},
    {"ES512", JWK_EC, EVP_sha512, false, 132, "P-521"},
    {"EdDSA", JWK_OKP, NULL, false, 0, "Ed25519"},
};

static const alg_info_t *alg_find(const char *name)
{
    for (size_t i = 0; name && i < sizeof(algs) / sizeof(algs[0]); i++)
        if (!strcmp(algs[i].name, name))
            return &algs[i];
    return NULL;
}

const EVP_MD *ident_alg_md(const char *alg)
{
    const alg_info_t *a = alg_find(alg);
    return a && a->md ? a->md() : NULL;
}

bool ident_alg_is_pss(const char *alg)
{
    const alg_info_t *a = alg_find(alg);
    return a && a->pss;
}

size_t ident_alg_es_len(const char *alg)
{
    const alg_info_t *a = alg_find(alg);
    return a ? a->es_len : 0;
}

/* The key's type and curve admit the algorithm (ignoring the JWK's own alg). */
static bool type_accepts(const ident_jwk_t *k, const alg_info_t *a)
{
    if (!a || a->kty != k->kty)
        return false;
    return k->kty == JWK_RSA || (k->curve && !strcmp(a->curve, k->curve));
}

bool ident_jwk_accepts(const ident_jwk_t *k, const char *alg)
{
    const alg_info_t *a = alg_find(alg);
    if (!k || !type_accepts(k, a))
        return false;
    return !k->alg[0] || !strcmp(k->alg, alg);
}

const char *ident_jwk_accepted(const ident_jwk_t *k)
{
    if (k->alg[0])
        return k->alg;
    if (k->kty == JWK_RSA)
        return "RS256/384/512 and PS256/384/512";
    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++)
        if (algs[i].kty == k->kty && algs[i].curve && k->curve && !strcmp(algs[i].curve, k->curve))
            return algs[i].name;
    return "nothing";
}

const char *ident_jwk_describe(const ident_jwk_t *k, char *buf, size_t sz)
{
    if (k->kty == JWK_RSA)
        snprintf(buf, sz, "RSA %d", k->bits);
    else
        snprintf(buf, sz, "%s %s", k->kty == JWK_EC ? "EC" : "OKP", k->curve ? k->curve : "?");
    return buf;
}

/* ---- verification ---- */

/* JWS carries ECDSA signatures as r || s, each the curve's size (RFC 7518
 * section 3.4); OpenSSL wants DER. The caller has checked the length. */
static unsigned char *es_to_der(const uint8_t *sig, size_t siglen, int *derlen)
{
    size_t half = siglen / 2;
    BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *s = BN_bin2bn(sig + half, (int)half, NULL);
    ECDSA_SIG *es = ECDSA_SIG_new();
    unsigned char *der = NULL;
    if (!r || !s || !es || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return NULL;
    }
    *derlen = i2d_ECDSA_SIG(es, &der);
    ECDSA_SIG_free(es);
    if (*derlen <= 0) {
        OPENSSL_free(der);
        return NULL;
    }
    return der;
}

static bool digest_verify(const ident_jwk_t *k, const alg_info_t *a, const void *msg, size_t len,
                          const unsigned char *sig, size_t siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ok = ctx && EVP_DigestVerifyInit(ctx, &pctx, a->md ? a->md() : NULL, NULL, k->pkey) == 1;
    if (ok && a->pss) {
        /* RFC 7518 section 3.5: MGF1 with the same hash, salt as long as the hash */
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, a->md()) == 1;
    } else if (ok && k->kty == JWK_RSA) {
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1;
    }
    ok = ok && EVP_DigestVerify(ctx, sig, siglen, msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

bool ident_jwk_verify(const ident_jwk_t *k, const char *alg, const void *msg, size_t len,
                      const uint8_t *sig, size_t siglen)
{
    const alg_info_t *a = alg_find(alg);
    bool ok = false;
    if (!k || !k->pkey || !ident_jwk_accepts(k, alg) || !sig || siglen == 0)
        return false;
    if (k->kty == JWK_RSA) {
        /* RFC 8017 section 8.2.2: the signature is exactly as long as the modulus */
        ok = siglen == (size_t)EVP_PKEY_get_size(k->pkey) &&
             digest_verify(k, a, msg, len, sig, siglen);
    } else if (k->kty == JWK_EC) {
        int derlen = 0;
        unsigned char *der = siglen == a->es_len ? es_to_der(sig, siglen, &derlen) : NULL;
        ok = der && digest_verify(k, a, msg, len, der, (size_t)derlen);
        OPENSSL_free(der);
    } else {
        ok = siglen == 64 && digest_verify(k, a, msg, len, sig, siglen);
    }
    /* a failed check leaves errors on the thread's queue, where the proxy's
     * next SSL_get_error() would find them */
    ERR_clear_error();
    return ok;
}

/* ---- parsing ---- */

typedef struct pctx {
    char *why;
    size_t whysz;
    size_t idx;
} pctx_t;

static bool perr(pctx_t *p, const char *member, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool perr(pctx_t *p, const char *member, const char *fmt, ...)
{
    if (!p->whysz)
        return false;
    int n = member ? snprintf(p->why, p->whysz, "keys[%zu].%s: ", p->idx, member)
                   : snprintf(p->why, p->whysz, "keys[%zu]: ", p->idx);
    if (n >= 0 && (size_t)n < p->whysz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->why + n, p->whysz - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return false;
}

static const cJSON *member(const cJSON *o, const char *name)
{
    return cJSON_GetObjectItemCaseSensitive(o, name);
}

/* A base64url member decoded; *len bytes, exactly `want` when want != 0. */
static uint8_t *b64_member(pctx_t *p, const cJSON *o, const char *name, size_t want, size_t *len)
{
    const cJSON *v = member(o, name);
    if (!v)
        return perr(p, name, "required"), NULL;
    if (!cJSON_IsString(v) || !*v->valuestring)
        return perr(p, name, "must be a non-empty base64url string"), NULL;
    uint8_t *b = b64_decode_alloc(v->valuestring, strlen(v->valuestring), B64_URL, len);
    if (!b)
        return perr(p, name, "is not base64url (RFC 7515 section 2, no padding)"), NULL;
    if (want && *len != want) {
        perr(p, name, "must be %zu bytes for this curve, got %zu", want, *len);
        free(b);
        return NULL;
    }
    return b;
}

static EVP_PKEY *fromdata(const char *type, OSSL_PARAM *params)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

static bool parse_rsa(pctx_t *p, const cJSON *o, ident_jwk_t *k)
{
    size_t nlen, elen;
    uint8_t *n = b64_member(p, o, "n", 0, &nlen), *e = n ? b64_member(p, o, "e", 0, &elen) : NULL;
    BIGNUM *bn = n ? BN_bin2bn(n, (int)nlen, NULL) : NULL,
           *be = e ? BN_bin2bn(e, (int)elen, NULL) : NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    bool ok = false;
    if (!n || !e)
        goto out;
    if (!bn || !be) {
        perr(p, NULL, "out of memory");
        goto out;
    }
    int bits = BN_num_bits(bn);
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) {
        perr(p, "n", "RSA modulus of %d bits; %d to %d are accepted", bits, RSA_MIN_BITS,
             RSA_MAX_BITS);
        goto out;
    }
    if (!BN_is_odd(be) || BN_num_bits(be) < 2 || BN_num_bits(be) > 64) {
        perr(p, "e", "not a usable RSA public exponent");
        goto out;
    }
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
        !(params = OSSL_PARAM_BLD_to_param(bld)) || !(k->pkey = fromdata("RSA", params))) {
        perr(p, NULL, "OpenSSL refused the RSA key");
        goto out;
    }
    k->kty = JWK_RSA;
    k->bits = bits;
    ok = true;
out:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return ok;
}

static const struct {
    const char *crv, *group;
    size_t size;
    int bits;
} curves[] = {
    {"P-256", "prime256v1", 32, 256},
    {"P-384", "secp384r1", 48, 384},
    {"P-521", "secp521r1", 66, 521},
};

static bool public_check(EVP_PKEY *pkey)
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    bool ok = c && EVP_PKEY_public_check(c) == 1;
    EVP_PKEY_CTX_free(c);
    return ok;
}

static bool parse_ec(pctx_t *p, const cJSON *o, ident_jwk_t *k)
{
    const cJSON *crv = member(o, "crv");
    size_t c = 0;
    if (!cJSON_IsString(crv))
        return perr(p, "crv", "required: \"P-256\", \"P-384\" or \"P-521\"");
    while (c < sizeof(curves) / sizeof(curves[0]) && strcmp(curves[c].crv, crv->valuestring))
        c++;
    if (c == sizeof(curves) / sizeof(curves[0]))
        return perr(p, "crv", "unsupported curve \"%.20s\"", crv->valuestring);
    size_t xl, yl, sz = curves[c].size;
    uint8_t *x = b64_member(p, o, "x", sz, &xl), *y = x ? b64_member(p, o, "y", sz, &yl) : NULL;
    bool ok = false;
    if (x && y) {
        /* SEC 1 section 2.3.3: an uncompressed point is 0x04 || x || y */
        uint8_t pt[1 + 2 * 66];
        pt[0] = 0x04;
        memcpy(pt + 1, x, sz);
        memcpy(pt + 1 + sz, y, sz);
        OSSL_PARAM params[] = {
            OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)curves[c].group, 0),
            OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pt, 1 + 2 * sz),
            OSSL_PARAM_END,
        };
        k->pkey = fromdata("EC", params);
        if (!k->pkey || !public_check(k->pkey)) {
            perr(p, NULL, "x, y is not a point on %s", curves[c].crv);
        } else {
            k->kty = JWK_EC;
            k->curve = curves[c].crv;
            k->bits = curves[c].bits;
            ok = true;
        }
    }
    free(x);
    free(y);
    return ok;
}

static bool parse_okp(pctx_t *p, const cJSON *o, ident_jwk_t *k)
{
    const cJSON *crv = member(o, "crv");
    if (!cJSON_IsString(crv) || strcmp(crv->valuestring, "Ed25519"))
        return perr(p, "crv", "only \"Ed25519\" is supported for OKP keys");
    size_t xl;
    uint8_t *x = b64_member(p, o, "x", 32, &xl);
    if (!x)
        return false;
    k->pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xl);
    free(x);
    if (!k->pkey)
        return perr(p, "x", "OpenSSL refused the Ed25519 key");
    k->kty = JWK_OKP;
    k->curve = "Ed25519";
    k->bits = 256;
    return true;
}

/* RFC 7517 sections 4.2 and 4.3: a key for something else than verifying
 * signatures is not ours to use. */
static bool for_signatures(const cJSON *o)
{
    const cJSON *use = member(o, "use"), *ops = member(o, "key_ops"), *op;
    if (use && (!cJSON_IsString(use) || strcmp(use->valuestring, "sig")))
        return false;
    if (!ops)
        return true;
    const cJSON *list = cJSON_IsArray(ops) ? ops : NULL;
    cJSON_ArrayForEach(op, list)
    {
        if (cJSON_IsString(op) && !strcmp(op->valuestring, "verify"))
            return true;
    }
    return false;
}

static bool parse_key(pctx_t *p, const cJSON *o, ident_jwk_t *k)
{
    static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"};
    const cJSON *kty = member(o, "kty"), *kid = member(o, "kid"), *alg = member(o, "alg");
    for (size_t i = 0; i < sizeof(private_members) / sizeof(private_members[0]); i++)
        if (member(o, private_members[i]))
            return perr(p, private_members[i],
                        "private or secret key material; a JWKS must hold public keys only");
    if (!cJSON_IsString(kty))
        return perr(p, "kty", "required: \"RSA\", \"EC\" or \"OKP\"");
    if (kid && !cJSON_IsString(kid))
        return perr(p, "kid", "must be a string");
    if (alg && !cJSON_IsString(alg))
        return perr(p, "alg", "must be a string");
    bool ok;
    if (!strcmp(kty->valuestring, "RSA"))
        ok = parse_rsa(p, o, k);
    else if (!strcmp(kty->valuestring, "EC"))
        ok = parse_ec(p, o, k);
    else if (!strcmp(kty->valuestring, "OKP"))
        ok = parse_okp(p, o, k);
    else if (!strcmp(kty->valuestring, "oct"))
        return perr(p, "kty",
                    "symmetric keys are not accepted from a JWKS (use "
                    "hs256_secret_file)");
    else
        return perr(p, "kty", "unsupported key type \"%.20s\"", kty->valuestring);
    if (!ok)
        return false;
    if (alg) {
        const alg_info_t *a = alg_find(alg->valuestring);
        if (!a || !type_accepts(k, a))
            return perr(p, "alg", "\"%.20s\" is not a signature algorithm for this key",
                        alg->valuestring);
        snprintf(k->alg, sizeof(k->alg), "%s", a->name);
    }
    if (kid && !(k->kid = strdup(kid->valuestring)))
        return perr(p, NULL, "out of memory");
    return true;
}

static void free_keys(ident_keyset_t *ks)
{
    for (size_t i = 0; i < ks->n; i++) {
        free(ks->keys[i].kid);
        EVP_PKEY_free(ks->keys[i].pkey);
    }
    free(ks);
}

ident_keyset_t *ident_jwks_parse(const cJSON *jwks, char *why, size_t whysz)
{
    const cJSON *keys = cJSON_IsObject(jwks) ? member(jwks, "keys") : NULL, *o;
    if (whysz)
        why[0] = 0;
    if (!cJSON_IsArray(keys)) {
        snprintf(why, whysz, "a JWKS must be an object with a \"keys\" array");
        return NULL;
    }
    size_t n = (size_t)cJSON_GetArraySize(keys);
    if (n > IDENT_JWKS_MAX_KEYS) {
        snprintf(why, whysz, "keys: %zu keys; at most %d are accepted", n, IDENT_JWKS_MAX_KEYS);
        return NULL;
    }
    ident_keyset_t *ks = calloc(1, sizeof(*ks) + n * sizeof(ident_jwk_t));
    if (!ks) {
        snprintf(why, whysz, "out of memory");
        return NULL;
    }
    atomic_init(&ks->refs, 1);
    pctx_t p = {why, whysz, 0};
    cJSON_ArrayForEach(o, keys)
    {
        if (!cJSON_IsObject(o)) {
            perr(&p, NULL, "must be an object");
            goto fail;
        }
        if (for_signatures(o)) {
            if (!parse_key(&p, o, &ks->keys[ks->n])) {
                ident_jwk_t *k = &ks->keys[ks->n];
                EVP_PKEY_free(k->pkey);
                free(k->kid);
                goto fail;
            }
            const char *kid = ks->keys[ks->n].kid;
            ks->n++;
            for (size_t j = 0; kid && j + 1 < ks->n; j++) {
                if (ks->keys[j].kid && !strcmp(ks->keys[j].kid, kid)) {
                    perr(&p, "kid", "duplicate kid (also keys[%zu])", j);
                    goto fail;
                }
            }
        }
        p.idx++;
    }
    ERR_clear_error();
    return ks;
fail:
    ERR_clear_error();
    free_keys(ks);
    return NULL;
}

ident_keyset_t *ident_keyset_retain(ident_keyset_t *ks)
{
    if (ks)
        atomic_fetch_add_explicit(&ks->refs, 1, memory_order_relaxed);
    return ks;
}

void ident_keyset_release(ident_keyset_t *ks)
{
    if (ks && atomic_fetch_sub_explicit(&ks->refs, 1, memory_order_acq_rel) == 1)
        free_keys(ks);
}

size_t ident_keyset_count(const ident_keyset_t *ks)
{
    return ks ? ks->n : 0;
}

const ident_jwk_t *ident_keyset_key(const ident_keyset_t *ks, size_t i)
{
    return ks && i < ks->n ? &ks->keys[i] : NULL;
}

const ident_jwk_t *ident_keyset_find(const ident_keyset_t *ks, const char *kid)
{
    if (!ks)
        return NULL;
    if (!kid)
        return ks->n == 1 ? &ks->keys[0] : NULL;
    for (size_t i = 0; i < ks->n; i++)
        if (ks->keys[i].kid && !strcmp(ks->keys[i].kid, kid))
            return &ks->keys[i];
    return NULL;
}
