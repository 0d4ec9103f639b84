/*
 * jwks — JSON Web Key Sets (RFC 7517) into OpenSSL 3 public keys, and JWS
 * signature checks with them (RFC 7518 section 3).
 *
 * A leaf of the identity module: it depends on cJSON, OpenSSL and util only,
 * so that the config loader can parse a jwks_file at load time (a bad file is
 * a config error, and a reload with one keeps the old config) and the key
 * store's worker can parse a fetched set with the same code.
 *
 * A key set is immutable once parsed and reference-counted with atomics: the
 * key store's worker swaps in a new set while the loop thread still verifies
 * with the old one.
 *
 * What a set may hold (anything else makes ident_jwks_parse fail, naming the
 * member): RSA keys (n, e; 2048 to 16384 bits), EC keys (crv P-256, P-384,
 * P-521 with x and y of the curve's exact size, on the curve), OKP keys (crv
 * Ed25519). Keys with "use" other than "sig", or "key_ops" without "verify",
 * are skipped. Symmetric ("oct") keys and private members (d, p, q, ...) are
 * refused, as are two keys with the same kid. A key's own "alg", when given,
 * must fit its type and then narrows what it accepts to that one algorithm.
 */
#ifndef BULWARK_IDENTITY_JWKS_H
#define BULWARK_IDENTITY_JWKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>

#define IDENT_JWKS_MAX_KEYS 64

typedef enum { JWK_RSA, JWK_EC, JWK_OKP } jwk_kty_t;

typedef struct ident_jwk {
    char *kid; /* NULL when the JWK has none */
    jwk_kty_t kty;
    char alg[8];       /* the JWK's own "alg", or "" */
    const char *curve; /* "P-256", "P-384", "P-521", "Ed25519"; NULL for RSA */
    int bits;          /* RSA modulus / EC field size in bits */
    EVP_PKEY *pkey;
} ident_jwk_t;

typedef struct ident_keyset ident_keyset_t;

/* jwks: the parsed JSON document, an object with a "keys" array. NULL on any
 * error, with why = "keys[2].crv: unsupported curve \"P-192\"" and the like. An
 * empty set ({"keys": []}) is valid; its refcount starts at 1. */
ident_keyset_t *ident_jwks_parse(const cJSON *jwks, char *why, size_t whysz)
    __attribute__((warn_unused_result));
ident_keyset_t *ident_keyset_retain(ident_keyset_t *ks);
void ident_keyset_release(ident_keyset_t *ks); /* NULL is fine */
size_t ident_keyset_count(const ident_keyset_t *ks);
const ident_jwk_t *ident_keyset_key(const ident_keyset_t *ks, size_t i);
/* By kid (exact); kid NULL picks the only key of a one-key set. */
const ident_jwk_t *ident_keyset_find(const ident_keyset_t *ks, const char *kid);

/* Does the key accept JWS algorithm alg (exact spelling)? RSA: RS256, RS384,
 * RS512, PS256, PS384, PS512; EC: the ES algorithm of its curve; Ed25519:
 * EdDSA; and the JWK's own alg when it names one. */
bool ident_jwk_accepts(const ident_jwk_t *k, const char *alg);
/* What the key accepts, for a reason message: "ES256", "RS* and PS*", ... */
const char *ident_jwk_accepted(const ident_jwk_t *k);
/* "RSA 2048", "EC P-256", "OKP Ed25519" */
const char *ident_jwk_describe(const ident_jwk_t *k, char *buf, size_t sz);

/* Verify the JWS signature sig (as decoded from the token: raw r||s for ES)
 * over msg with key k and algorithm alg. False when the key does not accept
 * alg, the length is not exactly the algorithm's, or the check fails. Leaves
 * the thread's OpenSSL error queue empty. */
bool ident_jwk_verify(const ident_jwk_t *k, const char *alg, const void *msg, size_t len,
                      const uint8_t *sig, size_t siglen) __attribute__((warn_unused_result));

/* The digest of an RS/PS/ES algorithm (NULL for EdDSA or unknown), and
 * whether it is one of the RSA-PSS ones. For signing (ident_sign_pem). */
const EVP_MD *ident_alg_md(const char *alg);
bool ident_alg_is_pss(const char *alg);
/* ES signature length in bytes (64, 96, 132); 0 for other algorithms. */
size_t ident_alg_es_len(const char *alg);

#endif
