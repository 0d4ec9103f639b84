/* Ed25519 keys and signatures for checkpoints (OpenSSL 3, one-shot EVP_DigestSign). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "audit/internal.h"

EVP_PKEY *sign_load_key(const char *path, bool want_private, char *why, size_t whysz)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(why, whysz, "%s: %s", path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    if (!k && !want_private) {
        ERR_clear_error();
        rewind(f);
        k = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    }
    fclose(f);
    ERR_clear_error();
    if (!k) {
        snprintf(why, whysz, "%s: not a PEM %s key", path, want_private ? "private" : "Ed25519");
        return NULL;
    }
    if (EVP_PKEY_get_id(k) != EVP_PKEY_ED25519) {
        snprintf(why, whysz, "%s: not an Ed25519 key", path);
        EVP_PKEY_free(k);
        return NULL;
    }
    return k;
}

bool sign_key_id(EVP_PKEY *k, uint8_t out[AUDIT_HASH_LEN])
{
    uint8_t raw[32];
    size_t len = sizeof(raw);
    unsigned int olen = 0;
    return EVP_PKEY_get_raw_public_key(k, raw, &len) == 1 && len == 32 &&
           EVP_Digest(raw, len, out, &olen, EVP_sha256(), NULL) == 1;
}

bool sign_ed25519(EVP_PKEY *k, const void *msg, size_t len, uint8_t sig[64])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t siglen = 64;
    bool ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, k) == 1 &&
              EVP_DigestSign(ctx, sig, &siglen, msg, len) == 1 && siglen == 64;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

bool sign_verify(EVP_PKEY *k, const void *msg, size_t len, const uint8_t *sig, size_t siglen)
{
    if (siglen != 64)
        return false;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k) == 1 &&
              EVP_DigestVerify(ctx, sig, siglen, msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}
