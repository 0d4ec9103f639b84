/*
 * ident — validate the JWT a client sends as its password and match it to a
 * role (SPEC section 4).
 *
 * ident_login() is a pure function of (config, role, token, now): no I/O, no
 * clock, no globals, so every forgery case is a unit test. Order of checks:
 *
 *   1. size (16 KiB) and shape: three base64url segments, strictly decoded;
 *      header and payload are JSON objects without duplicate members
 *   2. header: alg is a string and not "none" in any case; jku, x5u, jwk, x5c,
 *      crit are refused (keys come from the config, never from the token)
 *   3. issuer: the payload's iss, matched exactly against identity.issuers
 *   4. key: chosen from the issuer's config; the accepted algorithms come from
 *      the key (an HS256 secret accepts exactly "HS256")
 *   5. signature over "header.payload", compared in constant time
 *   6. claims: exp (required), nbf, iat (integers, with leeway), aud, sub,
 *      exp - iat (or exp - now) <= max_token_lifetime
 *   7. role: one of role->identities matches (skipped when role is NULL)
 *
 * Reasons are for the operator and the client's FATAL message; they never
 * contain the token, and strings taken from an unverified token are escaped
 * and shortened.
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
    IDENT_ROLE_MISMATCH
} ident_status_t;

typedef struct ident {
    char *subject, *issuer;
    int64_t exp, iat; /* seconds since the epoch; iat 0 if the token has none */
    cJSON *claims;    /* the whole verified payload, owned */
} ident_t;

/* On IDENT_OK fills *out (free with ident_free); otherwise *out is zeroed and
 * reason (always NUL-terminated) says why. role NULL: validate the token only. */
ident_status_t ident_login(const cfg_t *cfg, const cfg_role_t *role, const char *token, size_t len,
                           int64_t now_s, ident_t *out, char *reason, size_t reasonsz)
    __attribute__((warn_unused_result));
void ident_free(ident_t *id);
const char *ident_status_name(ident_status_t s);     /* "expired", "audience", ... for logs */
const char *ident_status_sqlstate(ident_status_t s); /* "28P01", or "28000" for ROLE_MISMATCH */

/* Does this verified identity match one of the role's identities? */
bool ident_matches_role(const ident_t *id, const cfg_role_t *role);

/* Mint an HS256 JWS over the given claims (header {"alg":"HS256","typ":"JWT"}).
 * Returns a malloc'd NUL-terminated token, or NULL. For `bulwark token` and tests. */
char *ident_sign_hs256(const uint8_t *secret, size_t secret_len, const cJSON *claims);

#endif
