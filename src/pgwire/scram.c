/*
 * pgwire — SCRAM-SHA-256 client (RFC 5802, RFC 7677; PG docs 55.3.1), the MD5 password
 * response (PG docs 55.2.2) and strict base64.
 *
 * SASLprep (RFC 4013) is not implemented. For an ASCII password it is the identity, or it
 * fails on control characters, in which case PostgreSQL (server and libpq alike) falls
 * back to the raw password: either way the raw bytes are right. A non-ASCII password is
 * used as raw bytes too, which matches the server only when it is already NFKC-normalised
 * and holds no characters that SASLprep maps (to space or to nothing).
 */
#include "pgwire/pgwire.h"
#include "util/b64.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

enum {
    SCRAM_NONE = 0, /* not initialised, failed or finished */
    SCRAM_FIRST,    /* next: client-first */
    SCRAM_CONTINUE, /* next: server-first -> client-final */
    SCRAM_FINAL,    /* next: server-final */
    SCRAM_DONE,     /* server verified */
};

#define SCRAM_RAW_NONCE_LEN 18 /* as libpq */
#define SCRAM_MAX_MESSAGE 4096 /* server-first / server-final are ~100 bytes in practice */

/* ------------------------------------------------------------------ */
/* Base64: SCRAM's fields are standard padded base64 (RFC 5802 section 7);  */
/* util/b64 does the strict work, these add the caller's buffer bound.      */

size_t pgw_base64_encode(const uint8_t *in, size_t n, char *out, size_t outsz)
{
    if (n > SIZE_MAX / 2 || outsz < b64_encoded_len(n, B64_STD) + 1)
        return 0;
    return b64_encode(out, in, n, B64_STD);
}

int pgw_base64_decode(const char *in, size_t n, uint8_t *out, size_t outsz)
{
    uint8_t tmp[SCRAM_MAX_MESSAGE];
    size_t len = 0;
    if (b64_decoded_maxlen(n) > sizeof(tmp) || !b64_decode(tmp, &len, in, n, B64_STD) ||
        len > outsz || len > (size_t)INT_MAX)
        return -1;
    memcpy(out, tmp, len);
    OPENSSL_cleanse(tmp, sizeof(tmp));
    return (int)len;
}

/* ------------------------------------------------------------------ */
/* Crypto helpers                                                      */

static int hmac256(const uint8_t *key, size_t klen, const void *msg, size_t n, uint8_t out[32])
{
    unsigned int olen = 0;
    if (!HMAC(EVP_sha256(), key, (int)klen, msg, n, out, &olen) || olen != 32)
        return -1;
    return 0;
}

static int sha256(const void *msg, size_t n, uint8_t out[32])
{
    unsigned int olen = 0;
    if (!EVP_Digest(msg, n, out, &olen, EVP_sha256(), NULL) || olen != 32)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* SCRAM                                                               */

/* RFC 5802 5.1: a printable nonce: 0x21..0x7E except ','. */
static bool nonce_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',')
            return false;
    }
    return true;
}

/* RFC 5802 5.1: in saslname ',' is "=2C" and '=' is "=3D". */
static void put_saslname(buf_t *b, const char *user)
{
    for (const char *p = user; *p; p++) {
        if (*p == ',')
            buf_append(b, "=2C", 3);
        else if (*p == '=')
            buf_append(b, "=3D", 3);
        else
            buf_put_u8(b, (uint8_t)*p);
    }
}

static char *buf_take_str(buf_t *b)
{
    buf_put_u8(b, 0);
    if (b->failed) {
        buf_free(b);
        return NULL;
    }
    return (char *)b->data; /* ownership passes to the caller */
}

int pgw_scram_init_nonce(pgw_scram_t *s, const char *user, const char *password, const char *nonce)
{
    memset(s, 0, sizeof(*s));
    if (!user || !password || !nonce || !nonce_ok(nonce, strlen(nonce)))
        return -1;
    buf_t b;
    buf_init(&b, 0);
    buf_append(&b, "n=", 2);
    put_saslname(&b, user);
    buf_append(&b, ",r=", 3);
    s->nonce_off = b.len;
    s->nonce_len = strlen(nonce);
    buf_append(&b, nonce, s->nonce_len);
    s->client_first_bare = buf_take_str(&b);
    s->password = strdup(password);
    if (!s->client_first_bare || !s->password) {
        pgw_scram_free(s);
        return -1;
    }
    s->state = SCRAM_FIRST;
    return 0;
}

int pgw_scram_init(pgw_scram_t *s, const char *user, const char *password)
{
    uint8_t raw[SCRAM_RAW_NONCE_LEN];
    char nonce[2 * SCRAM_RAW_NONCE_LEN + 1];
    memset(s, 0, sizeof(*s));
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    if (pgw_base64_encode(raw, sizeof(raw), nonce, sizeof(nonce)) == 0)
        return -1;
    return pgw_scram_init_nonce(s, user, password, nonce);
}

void pgw_scram_set_cache(pgw_scram_t *s, pgw_scram_cache_t *cache)
{
    s->cache = cache;
}

void pgw_scram_cache_clear(pgw_scram_cache_t *c)
{
    OPENSSL_cleanse(c, sizeof(*c));
}

int pgw_scram_client_first(pgw_scram_t *s, buf_t *out)
{
    if (s->state != SCRAM_FIRST)
        return -1;
    /* gs2-header "n,,": no channel binding, no authzid (PostgreSQL ignores the user). */
    buf_append(out, "n,,", 3);
    buf_append(out, s->client_first_bare, strlen(s->client_first_bare));
    if (out->failed)
        return -1;
    s->state = SCRAM_CONTINUE;
    return 0;
}

typedef struct server_first {
    const char *nonce;
    size_t nonce_len;
    uint8_t salt[PGW_SCRAM_MAX_SALT];
    size_t salt_len;
    uint32_t iterations;
} server_first_t;

/* "<attr>=<value>" up to the next ',' or the end; advances *p past the ','. */
static const char *take_attr(const char **p, const char *end, char attr, size_t *vlen)
{
    const char *q = *p;
    if (end - q < 2 || q[0] != attr || q[1] != '=')
        return NULL;
    q += 2;
    const char *comma = memchr(q, ',', (size_t)(end - q));
    const char *vend = comma ? comma : end;
    *vlen = (size_t)(vend - q);
    *p = comma ? comma + 1 : end;
    return q;
}

static int parse_iterations(const char *v, size_t n, uint32_t *out)
{
    uint64_t it = 0;
    if (n == 0 || n > 10)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        it = it * 10 + (uint64_t)(v[i] - '0');
    }
    if (it < 1 || it > PGW_SCRAM_MAX_ITERATIONS)
        return -1;
    *out = (uint32_t)it;
    return 0;
}

/* RFC 5802 7: server-first-message = nonce "," salt "," iteration-count. Like libpq we
   accept neither a mandatory extension ("m=") nor trailing extensions. */
static int parse_server_first(const pgw_scram_t *s, const char *msg, size_t n, server_first_t *sf)
{
    const char *p = msg, *end = msg + n;
    size_t slen = 0, ilen = 0;
    sf->nonce = take_attr(&p, end, 'r', &sf->nonce_len);
    const char *salt = sf->nonce ? take_attr(&p, end, 's', &slen) : NULL;
    const char *iter = salt ? take_attr(&p, end, 'i', &ilen) : NULL;
    if (!iter || p != end || iter + ilen != end)
        return -1;
    /* The server's nonce is ours followed by its own part (RFC 5802 5.1 "r="). */
    const char *ours = s->client_first_bare + s->nonce_off;
    if (sf->nonce_len <= s->nonce_len || memcmp(sf->nonce, ours, s->nonce_len) != 0 ||
        !nonce_ok(sf->nonce, sf->nonce_len))
        return -1;
    int k = pgw_base64_decode(salt, slen, sf->salt, sizeof(sf->salt));
    if (k <= 0)
        return -1;
    sf->salt_len = (size_t)k;
    return parse_iterations(iter, ilen, &sf->iterations);
}

static bool cache_hit(const pgw_scram_cache_t *c, const server_first_t *sf,
                      const uint8_t pwhash[32])
{
    return c && c->valid && c->iterations == sf->iterations && c->salt_len == sf->salt_len &&
           memcmp(c->salt, sf->salt, sf->salt_len) == 0 &&
           CRYPTO_memcmp(c->password_hash, pwhash, 32) == 0;
}

/* SaltedPassword := Hi(password, salt, i) = PBKDF2-HMAC-SHA-256 (RFC 5802 3). */
static int salted_password(pgw_scram_t *s, const server_first_t *sf, uint8_t out[PGW_SCRAM_KEY_LEN])
{
    size_t pwlen = strlen(s->password);
    uint8_t pwhash[32];
    if (sha256(s->password, pwlen, pwhash) < 0)
        return -1;
    pgw_scram_cache_t *c = s->cache;
    if (cache_hit(c, sf, pwhash)) {
        memcpy(out, c->salted, PGW_SCRAM_KEY_LEN);
        OPENSSL_cleanse(pwhash, sizeof(pwhash));
        return 0;
    }
    int ok = PKCS5_PBKDF2_HMAC(s->password, (int)pwlen, sf->salt, (int)sf->salt_len,
                               (int)sf->iterations, EVP_sha256(), PGW_SCRAM_KEY_LEN, out);
    if (ok == 1 && c) {
        c->valid = true;
        c->iterations = sf->iterations;
        c->salt_len = sf->salt_len;
        memcpy(c->salt, sf->salt, sf->salt_len);
        memcpy(c->password_hash, pwhash, 32);
        memcpy(c->salted, out, PGW_SCRAM_KEY_LEN);
    }
    OPENSSL_cleanse(pwhash, sizeof(pwhash));
    return ok == 1 ? 0 : -1;
}

/* RFC 5802 3: ClientKey, StoredKey, ClientSignature, ClientProof, ServerSignature over
   AuthMessage = client-first-bare "," server-first "," client-final-without-proof. */
static int compute_proof(pgw_scram_t *s, const uint8_t salted[32], const char *auth, size_t alen,
                         uint8_t proof[32])
{
    uint8_t client_key[32], stored_key[32], sig[32], server_key[32];
    int rc = -1;
    if (hmac256(salted, 32, "Client Key", 10, client_key) < 0 ||
        sha256(client_key, 32, stored_key) < 0 || hmac256(stored_key, 32, auth, alen, sig) < 0 ||
        hmac256(salted, 32, "Server Key", 10, server_key) < 0 ||
        hmac256(server_key, 32, auth, alen, s->server_signature) < 0)
        goto out;
    for (int i = 0; i < 32; i++)
        proof[i] = client_key[i] ^ sig[i];
    rc = 0;
out:
    OPENSSL_cleanse(client_key, sizeof(client_key));
    OPENSSL_cleanse(stored_key, sizeof(stored_key));
    OPENSSL_cleanse(sig, sizeof(sig));
    OPENSSL_cleanse(server_key, sizeof(server_key));
    return rc;
}

/* client-final-message-without-proof: "c=biws" is base64("n,,"), then the server's nonce. */
static void put_final_without_proof(buf_t *b, const server_first_t *sf)
{
    buf_append(b, "c=biws,r=", 9);
    buf_append(b, sf->nonce, sf->nonce_len);
}

static int build_final(pgw_scram_t *s, const char *msg, size_t n, const server_first_t *sf,
                       buf_t *out)
{
    uint8_t salted[32], proof[32];
    char proof64[45];
    buf_t auth;
    buf_init(&auth, 0);
    buf_append(&auth, s->client_first_bare, strlen(s->client_first_bare));
    buf_put_u8(&auth, ',');
    buf_append(&auth, msg, n);
    buf_put_u8(&auth, ',');
    put_final_without_proof(&auth, sf);
    int rc = -1;
    if (auth.failed || salted_password(s, sf, salted) < 0 ||
        compute_proof(s, salted, (const char *)auth.data, auth.len, proof) < 0)
        goto out;
    pgw_base64_encode(proof, sizeof(proof), proof64, sizeof(proof64));
    put_final_without_proof(out, sf);
    buf_append(out, ",p=", 3);
    buf_append(out, proof64, 44);
    rc = out->failed ? -1 : 0;
out:
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(proof, sizeof(proof));
    OPENSSL_cleanse(proof64, sizeof(proof64));
    buf_free(&auth);
    return rc;
}

int pgw_scram_client_final(pgw_scram_t *s, const uint8_t *server_first, size_t n, buf_t *out)
{
    if (s->state != SCRAM_CONTINUE)
        return -1;
    s->state = SCRAM_NONE; /* any failure ends the exchange */
    if (!server_first || n == 0 || n > SCRAM_MAX_MESSAGE || memchr(server_first, 0, n))
        return -1;
    server_first_t sf;
    if (parse_server_first(s, (const char *)server_first, n, &sf) < 0)
        return -1;
    if (build_final(s, (const char *)server_first, n, &sf, out) < 0)
        return -1;
    s->state = SCRAM_FINAL;
    return 0;
}

/* RFC 5802 7: server-final-message = (server-error / verifier) ["," extensions]; like
   libpq we accept exactly "v=<base64 ServerSignature>"; "e=..." is a failure. */
int pgw_scram_verify_final(pgw_scram_t *s, const uint8_t *server_final, size_t n)
{
    if (s->state != SCRAM_FINAL)
        return -1;
    s->state = SCRAM_NONE;
    if (!server_final || n < 2 || n > SCRAM_MAX_MESSAGE || server_final[0] != 'v' ||
        server_final[1] != '=')
        return -1;
    uint8_t sig[PGW_SCRAM_MAX_SALT];
    int k = pgw_base64_decode((const char *)server_final + 2, n - 2, sig, sizeof(sig));
    if (k != PGW_SCRAM_KEY_LEN || CRYPTO_memcmp(sig, s->server_signature, PGW_SCRAM_KEY_LEN) != 0)
        return -1;
    s->state = SCRAM_DONE;
    return 0;
}

void pgw_scram_free(pgw_scram_t *s)
{
    if (s->password) {
        OPENSSL_cleanse(s->password, strlen(s->password));
        free(s->password);
    }
    free(s->client_first_bare);
    OPENSSL_cleanse(s, sizeof(*s));
}

/* ------------------------------------------------------------------ */
/* MD5 (PG docs 55.2.2, AuthenticationMD5Password)                     */

static int md5_hex(const void *a, size_t alen, const void *b, size_t blen, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t d[16];
    unsigned int dlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, a, alen) == 1 && EVP_DigestUpdate(ctx, b, blen) == 1 &&
             EVP_DigestFinal_ex(ctx, d, &dlen) == 1 && dlen == 16;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -1;
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[32] = 0;
    return 0;
}

/* "md5" + md5hex(md5hex(password || user) || salt). On failure (no MD5 provider, e.g.
   FIPS mode) out is "" and the server will reject the login. */
void pgw_md5_password(const char *user, const char *password, const uint8_t salt[4], char out[36])
{
    char inner[33];
    out[0] = 0;
    if (md5_hex(password, strlen(password), user, strlen(user), inner) < 0)
        return;
    if (md5_hex(inner, 32, salt, 4, out + 3) == 0)
        memcpy(out, "md5", 3);
    else
        out[0] = 0;
    OPENSSL_cleanse(inner, sizeof(inner));
}
