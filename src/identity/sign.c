/*
 * Minting RS/PS/ES/EdDSA tokens from a PEM private key, for `bulwark token`
 * and tests (ident_sign_pem in ident.h). The gateway itself never signs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "identity/ident.h"
#include "identity/jwks.h"
#include "util/b64.h"

/* Never prompt on a terminal for a passphrase: an encrypted key is an error. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Describe the private key as the JWK of its public half would be. */
static bool key_shape(EVP_PKEY *pkey, ident_jwk_t *k, char *why, size_t whysz)
{
    static const struct {
        const char *group, *crv;
    } groups[] = {{"prime256v1", "P-256"}, {"secp384r1", "P-384"}, {"secp521r1", "P-521"}};
    memset(k, 0, sizeof(*k));
    k->pkey = pkey;
    k->bits = EVP_PKEY_get_bits(pkey);
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        k->kty = JWK_RSA;
        if (k->bits < 2048) {
            snprintf(why, whysz, "RSA key of %d bits; the gateway accepts 2048 or more", k->bits);
            return false;
        }
        return true;
    }
    if (EVP_PKEY_is_a(pkey, "ED25519")) {
        k->kty = JWK_OKP;
        k->curve = "Ed25519";
        return true;
    }
    char group[64] = "";
    if (EVP_PKEY_is_a(pkey, "EC") &&
        EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       NULL) == 1) {
        for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++) {
            if (!strcmp(groups[i].group, group)) {
                k->kty = JWK_EC;
                k->curve = groups[i].crv;
                return true;
            }
        }
    }
    snprintf(why, whysz, "unsupported key type (RSA, EC P-256/P-384/P-521 or Ed25519)");
    return false;
}

/* DER ECDSA-Sig-Value → r || s, each `half` bytes (RFC 7518 section 3.4). */
static bool der_to_raw(const unsigned char *der, size_t derlen, unsigned char *out, size_t half)
{
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
    bool ok = es && BN_bn2binpad(ECDSA_SIG_get0_r(es), out, (int)half) == (int)half &&
              BN_bn2binpad(ECDSA_SIG_get0_s(es), out + half, (int)half) == (int)half;
    ECDSA_SIG_free(es);
    return ok;
}

/* The raw JWS signature of msg; malloc'd, *siglen bytes. */
static unsigned char *sign_raw(const ident_jwk_t *k, const char *alg, const char *msg, size_t len,
                               size_t *siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    const EVP_MD *md = ident_alg_md(alg);
    unsigned char *sig = NULL;
    size_t n = 0;
    bool ok = ctx && EVP_DigestSignInit(ctx, &pctx, md, NULL, k->pkey) == 1;
    if (ok && k->kty == JWK_RSA && ident_alg_is_pss(alg))
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) == 1;
    else if (ok && k->kty == JWK_RSA)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1;
    ok = ok && EVP_DigestSign(ctx, NULL, &n, (const unsigned char *)msg, len) == 1 &&
         (sig = malloc(n)) && EVP_DigestSign(ctx, sig, &n, (const unsigned char *)msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    if (ok && k->kty == JWK_EC) {
        size_t raw_len = ident_alg_es_len(alg);
        unsigned char *raw = malloc(raw_len);
        ok = raw && der_to_raw(sig, n, raw, raw_len / 2);
        free(sig);
        sig = raw;
        n = raw_len;
    }
    if (!ok) {
        free(sig);
        return NULL;
    }
    *siglen = n;
    return sig;
}

static char *header_json(const char *alg, const char *kid)
{
    cJSON *h = cJSON_CreateObject();
    char *out = NULL;
    if (h && cJSON_AddStringToObject(h, "alg", alg) && cJSON_AddStringToObject(h, "typ", "JWT") &&
        (!kid || cJSON_AddStringToObject(h, "kid", kid)))
        out = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    return out;
}

/* header.payload.signature, all base64url */
static char *assemble(const ident_jwk_t *k, const char *alg, const char *kid, const cJSON *claims)
{
    char *hj = header_json(alg, kid), *pj = cJSON_PrintUnformatted(claims);
    char *h = hj ? b64_encode_alloc(hj, strlen(hj), B64_URL) : NULL;
    char *p = pj ? b64_encode_alloc(pj, strlen(pj), B64_URL) : NULL;
    char *tok = NULL;
    free(hj);
    free(pj);
    if (h && p) {
        size_t hl = strlen(h), pl = strlen(p), siglen = 0;
        char *input = malloc(hl + 1 + pl + 1);
        unsigned char *sig = NULL;
        if (input) {
            snprintf(input, hl + 1 + pl + 1, "%s.%s", h, p);
            sig = sign_raw(k, alg, input, hl + 1 + pl, &siglen);
        }
        if (sig && (tok = malloc(hl + 1 + pl + 1 + b64_encoded_len(siglen, B64_URL) + 1))) {
            memcpy(tok, input, hl + 1 + pl);
            tok[hl + 1 + pl] = '.';
            b64_encode(tok + hl + 1 + pl + 1, sig, siglen, B64_URL);
        }
        free(sig);
        free(input);
    }
    free(h);
    free(p);
    return tok;
}

char *ident_sign_pem(const char *pem, size_t pem_len, const char *alg, const char *kid,
                     const cJSON *claims, char *why, size_t whysz)
{
    if (whysz)
        why[0] = 0;
    if (!pem || pem_len > INT32_MAX || !cJSON_IsObject(claims)) {
        snprintf(why, whysz, "no key or no claims");
        return NULL;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)pem_len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    if (!pkey) {
        snprintf(why, whysz, "not an unencrypted PEM private key");
        return NULL;
    }
    ident_jwk_t k;
    char *tok = NULL;
    if (key_shape(pkey, &k, why, whysz)) {
        if (!alg)
            alg = k.kty == JWK_RSA ? "RS256" : ident_jwk_accepted(&k);
        if (!ident_jwk_accepts(&k, alg))
            snprintf(why, whysz, "a %s key signs %s, not %s", k.kty == JWK_RSA ? "RSA" : k.curve,
                     ident_jwk_accepted(&k), alg);
        else if (!(tok = assemble(&k, alg, kid, claims)))
            snprintf(why, whysz, "signing failed");
    }
    ERR_clear_error();
    EVP_PKEY_free(pkey);
    return tok;
}
