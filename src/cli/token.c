/*
 * bulwark token: mint a token for development and tests (SPEC section 2): HS256
 * from an issuer's secret file, or RS/PS/ES/EdDSA from a PEM private key whose
 * public half is in the issuer's JWKS under --kid.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "cli/cli.h"
#include "config.h"
#include "identity/ident.h"
#include "util/dur.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bulwark token --secret-file F --iss I --aud A --sub S [options]\n"
            "       bulwark token --key PEM [--kid K] [--alg A] --iss I --aud A --sub S [options]\n"
            "\n"
            "Print a JWT on stdout: HS256, signed with the secret in F (one trailing\n"
            "newline ignored, as the gateway reads it), or signed with the private key\n"
            "in PEM, whose public key the issuer's JWKS holds under kid K.\n"
            "\n"
            "  --secret-file F  the issuer's hs256_secret_file\n"
            "  --key PEM        a PEM private key: RSA (2048 bits or more), EC P-256,\n"
            "                   P-384, P-521, or Ed25519\n"
            "  --kid K          the key's kid in the JWKS (header kid)\n"
            "  --alg A          RS256 (default for RSA), RS384, RS512, PS256, PS384,\n"
            "                   PS512; ES256/ES384/ES512 (the EC key's curve decides);\n"
            "                   EdDSA\n"
            "  --iss I          issuer (iss)\n"
            "  --aud A          audience (aud)\n"
            "  --sub S          subject (sub)\n"
            "  --ttl D          lifetime, a duration such as 15m (default 15m)\n"
            "  --iat N          issued-at, seconds since the epoch (default now)\n"
            "  --exp N          expiry, seconds since the epoch (default iat + ttl)\n"
            "  --claim k=v      an extra claim, repeatable; v is taken as JSON if it parses\n"
            "                   (5, true, [\"a\",\"b\"]), else as a string; replaces a claim\n"
            "                   of the same name set by the options above\n"
            "  -h, --help       this text\n");
}

typedef struct opts {
    const char *secret_file, *key, *kid, *alg, *iss, *aud, *sub, *ttl, *iat, *exp;
    cJSON *extra; /* the --claim values, in order */
} opts_t;

static int bad(const char *fmt, const char *arg)
{
    fprintf(stderr, "bulwark token: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    return 2;
}

/* Whole non-negative decimal seconds. */
static bool parse_time(const char *s, int64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < 0)
        return false;
    *out = v;
    return true;
}

static int add_claim(opts_t *o, const char *kv)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return bad("--claim needs k=v, got \"%s\"", kv);
    char *key = strndup(kv, (size_t)(eq - kv));
    char why[128];
    cJSON *v = cfg_json_parse_strict(eq + 1, strlen(eq + 1), why, sizeof(why));
    if (!v)
        v = cJSON_CreateString(eq + 1);
    if (!key || !v) {
        free(key);
        cJSON_Delete(v);
        return bad("%s", "out of memory");
    }
    cJSON_DeleteItemFromObjectCaseSensitive(o->extra, key);
    cJSON_AddItemToObject(o->extra, key, v);
    free(key);
    return 0;
}

/* 0 ok, 2 bad arguments, -1 --help printed */
static int parse_args(int argc, char **argv, opts_t *o)
{
    struct {
        const char *name;
        const char **dst;
    } flags[] = {
        {"--secret-file", &o->secret_file},
        {"--key", &o->key},
        {"--kid", &o->kid},
        {"--alg", &o->alg},
        {"--iss", &o->iss},
        {"--aud", &o->aud},
        {"--sub", &o->sub},
        {"--ttl", &o->ttl},
        {"--iat", &o->iat},
        {"--exp", &o->exp},
        {"--claim", NULL},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return -1;
        size_t k = 0, n = 0;
        for (; k < sizeof(flags) / sizeof(flags[0]); k++) {
            n = strlen(flags[k].name);
            if (!strncmp(a, flags[k].name, n) && (a[n] == 0 || a[n] == '='))
                break;
        }
        if (k == sizeof(flags) / sizeof(flags[0]))
            return bad("unexpected argument \"%s\" (try `bulwark token --help`)", a);
        const char *val = a[n] == '=' ? a + n + 1 : NULL;
        if (!val && i + 1 >= argc)
            return bad("%s needs a value", flags[k].name);
        if (!val)
            val = argv[++i];
        if (!flags[k].dst) {
            if (add_claim(o, val))
                return 2;
        } else if (*flags[k].dst) {
            return bad("%s given more than once", flags[k].name);
        } else {
            *flags[k].dst = val;
        }
    }
    static const char *const algs[] = {"RS256", "RS384", "RS512", "PS256", "PS384",
                                       "PS512", "ES256", "ES384", "ES512", "EdDSA"};
    bool alg_known = !o->alg;
    for (size_t k = 0; o->alg && k < sizeof(algs) / sizeof(algs[0]); k++)
        alg_known |= !strcmp(o->alg, algs[k]);
    if (!alg_known)
        return bad("--alg must be RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, "
                   "ES512 or EdDSA, got \"%s\"",
                   o->alg);
    if (o->secret_file && o->key)
        return bad("%s", "--secret-file and --key exclude each other");
    if (o->secret_file && (o->kid || o->alg))
        return bad("%s", "--kid and --alg go with --key (--secret-file always signs HS256)");
    const char *missing = !o->secret_file && !o->key ? "--secret-file or --key"
                          : !o->iss                  ? "--iss"
                          : !o->aud                  ? "--aud"
                          : !o->sub                  ? "--sub"
                                                     : NULL;
    if (missing)
        return bad("%s is required (try `bulwark token --help`)", missing);
    if (o->ttl && o->exp)
        return bad("%s", "--ttl and --exp exclude each other");
    return 0;
}

static cJSON *build_claims(const opts_t *o, int *rc)
{
    int64_t iat = (int64_t)time(NULL), exp, ttl_ms = 15 * 60000;
    *rc = 2;
    if (o->iat && !parse_time(o->iat, &iat)) {
        bad("--iat must be whole seconds since the epoch, got \"%s\"", o->iat);
        return NULL;
    }
    if (o->ttl && (!dur_parse(o->ttl, &ttl_ms) || ttl_ms < 1000 || ttl_ms % 1000)) {
        bad("--ttl must be whole seconds or more, such as 15m, got \"%s\"", o->ttl);
        return NULL;
    }
    if (o->exp && !parse_time(o->exp, &exp)) {
        bad("--exp must be whole seconds since the epoch, got \"%s\"", o->exp);
        return NULL;
    }
    if (!o->exp)
        exp = iat + ttl_ms / 1000;
    cJSON *c = cJSON_CreateObject();
    if (!c || !cJSON_AddStringToObject(c, "iss", o->iss) ||
        !cJSON_AddStringToObject(c, "sub", o->sub) || !cJSON_AddStringToObject(c, "aud", o->aud) ||
        !cJSON_AddNumberToObject(c, "iat", (double)iat) ||
        !cJSON_AddNumberToObject(c, "exp", (double)exp)) {
        cJSON_Delete(c);
        *rc = 1;
        return NULL;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, o->extra)
    {
        cJSON *dup = cJSON_Duplicate(e, true);
        cJSON_DeleteItemFromObjectCaseSensitive(c, e->string);
        cJSON_AddItemToObject(c, e->string, dup);
    }
    *rc = 0;
    return c;
}

static char *sign_with_secret(const opts_t *o, const cJSON *claims, int *rc)
{
    uint8_t *secret;
    size_t len;
    char why[256];
    *rc = 1;
    if (cfg_read_secret_file(o->secret_file, &secret, &len, why, sizeof(why)) < 0) {
        fprintf(stderr, "bulwark token: cannot read %s: %s\n", o->secret_file, why);
        return NULL;
    }
    char *tok = ident_sign_hs256(secret, len, claims);
    OPENSSL_cleanse(secret, len);
    free(secret);
    if (!tok)
        fprintf(stderr, "bulwark token: could not sign\n");
    return tok;
}

static char *sign_with_key(const opts_t *o, const cJSON *claims, int *rc)
{
    uint8_t *pem;
    size_t len;
    char why[256];
    *rc = 1;
    /* a PEM key is a secret file too: same size cap, wiped after use */
    if (cfg_read_secret_file(o->key, &pem, &len, why, sizeof(why)) < 0) {
        fprintf(stderr, "bulwark token: cannot read %s: %s\n", o->key, why);
        return NULL;
    }
    char *tok = ident_sign_pem((const char *)pem, len, o->alg, o->kid, claims, why, sizeof(why));
    OPENSSL_cleanse(pem, len);
    free(pem);
    if (!tok) {
        fprintf(stderr, "bulwark token: %s: %s\n", o->key, why);
        if (o->alg)
            *rc = 2; /* most likely --alg does not fit the key */
    }
    return tok;
}

int cli_token(int argc, char **argv)
{
    opts_t o = {0};
    o.extra = cJSON_CreateObject();
    int rc = o.extra ? parse_args(argc, argv, &o) : 1;
    if (rc < 0) {
        usage(stdout);
        cJSON_Delete(o.extra);
        return 0;
    }
    cJSON *claims = rc == 0 ? build_claims(&o, &rc) : NULL;
    cJSON_Delete(o.extra);
    if (!claims)
        return rc;
    char *tok = o.key ? sign_with_key(&o, claims, &rc) : sign_with_secret(&o, claims, &rc);
    cJSON_Delete(claims);
    if (!tok)
        return rc;
    printf("%s\n", tok);
    OPENSSL_cleanse(tok, strlen(tok));
    free(tok);
    return 0;
}
