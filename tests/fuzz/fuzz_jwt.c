/*
 * JWT decoding and validation (src/identity, ident_login) with the token
 * fixtures' configuration (tests/fixtures/tokens: a JWKS issuer and an HS256
 * issuer). First input byte:
 *   even: the rest is the token, verbatim (shape, base64url, JSON, header checks);
 *   odd:  the rest is "HEADER-JSON\nPAYLOAD-JSON"; they are encoded and signed
 *         with the HS256 fixture secret, so the claim checks behind the
 *         signature are reached too (exp, nbf, iat, aud, lifetime, role match).
 * The clock is fixed, so a run is reproducible.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "config.h"
#include "fuzz.h"
#include "identity/ident.h"
#include "util/b64.h"

#define NOW_S 1767225600 /* 2026-01-01 */

static cfg_t *cfg;
static uint8_t secret[256];
static size_t secret_len;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    cfg = fuzz_load_config("tokens/bulwark.json");
    FILE *f = fopen(fuzz_fixture("keys/dev.secret"), "rb");
    FUZZ_REQUIRE(f, "keys/dev.secret");
    secret_len = fread(secret, 1, sizeof(secret), f);
    fclose(f);
    if (secret_len && secret[secret_len - 1] == '\n')
        secret_len--;
    return 0;
}

static char *sign(const uint8_t *hdr, size_t hn, const uint8_t *pay, size_t pn)
{
    char *h = b64_encode_alloc(hdr, hn, B64_URL), *p = b64_encode_alloc(pay, pn, B64_URL);
    size_t sl = strlen(h) + 1 + strlen(p);
    char *tok = malloc(sl + 1 + 64);
    snprintf(tok, sl + 1, "%s.%s", h, p);
    uint8_t mac[32];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), secret, (int)secret_len, (const uint8_t *)tok, sl, mac, &ml);
    tok[sl] = '.';
    b64_encode(tok + sl + 1, mac, ml, B64_URL);
    free(h);
    free(p);
    return tok;
}

static void check(const char *tok, size_t len)
{
    char reason[256];
    ident_t id;
    for (size_t r = 0; r <= cfg->n_roles && r < 3; r++) {
        const cfg_role_t *role = r ? &cfg->roles[r - 1] : NULL;
        ident_status_t st =
            ident_login(cfg, NULL, role, tok, len, NOW_S, &id, reason, sizeof(reason));
        FUZZ_REQUIRE(memchr(reason, 0, sizeof(reason)), "reason is NUL-terminated");
        (void)ident_status_name(st);
        (void)ident_status_sqlstate(st);
        if (st == IDENT_OK) {
            FUZZ_REQUIRE(id.subject && id.issuer && id.exp > 0,
                         "an accepted token has sub, iss, exp");
            ident_free(&id);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 20000)
        return 0;
    if (!(data[0] & 1)) {
        char *tok = malloc(size);
        memcpy(tok, data + 1, size - 1);
        tok[size - 1] = 0;
        check(tok, size - 1);
        free(tok);
        return 0;
    }
    const uint8_t *rest = data + 1, *nl = memchr(rest, '\n', size - 1);
    if (!nl)
        return 0;
    char *tok = sign(rest, (size_t)(nl - rest), nl + 1, size - 1 - (size_t)(nl + 1 - rest));
    check(tok, strlen(tok));
    free(tok);
    return 0;
}
