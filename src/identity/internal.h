/*
 * Private to src/identity/: what ident.c asks of the key store (keystore.c).
 * Both are called on the loop thread.
 */
#ifndef BULWARK_IDENTITY_INTERNAL_H
#define BULWARK_IDENTITY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "identity/ident.h"
#include "identity/jwks.h"

/* The last good key set fetched from the issuer's jwks_url, retained (the
 * caller releases it), or NULL with why (not fetched yet, last error, not
 * registered by ident_keystore_sync). */
ident_keyset_t *ident_keystore_keys(ident_keystore_t *ks, const cfg_issuer_t *is, char *why,
                                    size_t whysz);

/* The token's kid is not in the cached set. True: a fetch of the set is queued
 * (now, if the last attempt started at least refresh/10 ago) or running, and
 * notify will follow; the login should wait for it. False: no fetch will come
 * soon; why says why (rate limit, not registered). */
bool ident_keystore_refetch(ident_keystore_t *ks, const cfg_issuer_t *is, char *why, size_t whysz);

#endif
