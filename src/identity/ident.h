/*
 * ident — validate the JWT a client sends as its password and match it to a
 * role (SPEC section 4). docs/identity.md is the operator's view.
 *
 * ident_login() is a function of (config, key store, role, token, now): no
 * network, no disk, no clock. With a NULL key store it is pure, and every
 * forgery case is a unit test. Order of checks:
 *
 *   1. size (16 KiB) and shape: three base64url segments, strictly decoded;
 *      header and payload are JSON objects without duplicate members
 *   2. header: alg is a string and not "none" in any case; jku, x5u, jwk, x5c,
 *      crit are refused (keys come from the config, never from the token)
 *   3. issuer: the payload's iss, matched exactly against identity.issuers
 *   4. key, chosen from the issuer's config only: its HS256 secret, or the JWKS
 *      key named by the header's kid (a string looked up in memory, never a
 *      path; no kid: the only key of a one-key set). The algorithm must be one
 *      the issuer lists AND one the key accepts: an HS secret HS256 only, an
 *      RSA key RS/PS, an EC key the ES algorithm of its curve, Ed25519 EdDSA
 *   5. signature over "header.payload": HMAC compared in constant time, or
 *      EVP_DigestVerify (ES signatures are raw r||s of exactly the curve's size)
 *   6. claims: exp (required), nbf, iat (integers, with leeway), aud, sub,
 *      exp - iat (or exp - now) <= max_token_lifetime
 *   7. role: one of role->identities matches (skipped when role is NULL)
 *
 * Reasons are for the operator and the client's FATAL message; they never
 * contain the token, and strings taken from an unverified token are escaped
 * and shortened.
 *
 * Keys from a jwks_url live in a key store (below), which a worker thread
 * fills; the loop thread only reads it. When the token's kid is not in the
 * cached set, ident_login() asks the worker for a refetch (at most once per
 * refresh/10) and returns IDENT_KEY_PENDING: the caller keeps the token, waits
 * for the store's notify callback, and calls ident_login() again. The second
 * call gives a final answer unless another fetch of that set is under way.
 */
#ifndef BULWARK_IDENTITY_IDENT_H
#define BULWARK_IDENTITY_IDENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "config.h"

#define IDENT_MAX_TOKEN 16384

typedef enum {
    IDENT_OK = 0,
    IDENT_MALFORMED,
    IDENT_TOO_LARGE,
    IDENT_BAD_ALG,
    IDENT_UNKNOWN_ISSUER,
    IDENT_UNKNOWN_KEY,
    IDENT_SIGNATURE,
    IDENT_EXPIRED,
    IDENT_NOT_YET_VALID,
    IDENT_ISSUED_IN_FUTURE,
    IDENT_AUDIENCE,
    IDENT_LIFETIME,
    IDENT_ROLE_MISMATCH,
    /* not a failure: the kid is unknown and a fetch of the issuer's jwks_url is
     * queued or running; call again after the key store's notify */
    IDENT_KEY_PENDING
} ident_status_t;

typedef struct ident {
    char *subject, *issuer;
    int64_t exp, iat; /* seconds since the epoch; iat 0 if the token has none.
                         exp is what end_session_at_token_expiry ends the session at */
    cJSON *claims;    /* the whole verified payload, owned */
} ident_t;

/* ---- key store: keys of jwks_url issuers, fetched off the loop ---- */

typedef struct ident_keystore ident_keystore_t;

/* Starts the worker thread (and initialises libcurl: call while the process
 * has no other threads using it, e.g. at startup). notify(arg) is called on
 * the WORKER thread after every fetch attempt, successful or not; it must be
 * thread-safe and quick (ev_async_send). NULL if the thread cannot start. */
ident_keystore_t *ident_keystore_new(void (*notify)(void *arg), void *arg)
    __attribute__((warn_unused_result));
/* Loop thread, after every config (re)load: registers the URL issuers of cfg
 * (keyed by jwks_url and jwks_ca_file; a set already cached stays, new ones are
 * fetched at once by the worker) and forgets URLs no longer configured. Does
 * no network or disk I/O itself; keeps no pointer into cfg. */
void ident_keystore_sync(ident_keystore_t *ks, const cfg_t *cfg);
/* Stops the worker (an in-flight fetch is aborted) and frees everything.
 * notify is not called after this returns. */
void ident_keystore_free(ident_keystore_t *ks);

/* ---- login ---- */

/* On IDENT_OK fills *out (free with ident_free); otherwise *out is zeroed and
 * reason (always NUL-terminated) says why. role NULL: validate the token only.
 * ks may be NULL: jwks_url issuers then refuse every token (unknown key). */
ident_status_t ident_login(const cfg_t *cfg, ident_keystore_t *ks, const cfg_role_t *role,
                           const char *token, size_t len, int64_t now_s, ident_t *out, char *reason,
                           size_t reasonsz) __attribute__((warn_unused_result));
void ident_free(ident_t *id);
/* For logs: "expired", "audience", "issuer", "unknown_key", "signature", "size",
 * "role_mismatch", "malformed", "bad_alg", "not_yet_valid", "issued_in_future",
 * "lifetime", "key_pending". */
const char *ident_status_name(ident_status_t s);
const char *ident_status_sqlstate(ident_status_t s); /* "28P01", or "28000" for ROLE_MISMATCH */

/* Does this verified identity match one of the role's identities? */
bool ident_matches_role(const ident_t *id, const cfg_role_t *role);

/* ---- minting, for `bulwark token` and tests ---- */

/* An HS256 JWS over the given claims (header {"alg":"HS256","typ":"JWT"}).
 * Returns a malloc'd NUL-terminated token, or NULL. */
char *ident_sign_hs256(const uint8_t *secret, size_t secret_len, const cJSON *claims);
/* A JWS signed with the private key in pem (PKCS#8 or traditional PEM): alg
 * RS256/384/512 or PS256/384/512 for an RSA key, ES256/384/512 for an EC key of
 * that curve, EdDSA for Ed25519; NULL alg picks RS256, the curve's ES, or
 * EdDSA. Header {"alg":..,"typ":"JWT"[,"kid":kid]}. NULL with why on error. */
char *ident_sign_pem(const char *pem, size_t pem_len, const char *alg, const char *kid,
                     const cJSON *claims, char *why, size_t whysz);

#endif
