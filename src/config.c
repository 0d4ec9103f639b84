/*
 * bulwark.json → cfg_t. Each section has one loader; each loader reports every
 * problem it finds and goes on, so that one `bulwark check` run lists them all.
 * Policy files are in config/policy.c, the walker in config/walk.c.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "config/internal.h"
#include "identity/jwks.h"

#define HS256_MIN_SECRET 32 /* RFC 7518 section 3.2: a key at least as long as the hash */

static const char *const top_keys[] = {
    "listen",
    "tls",
    "allow_plaintext_on_loopback",
    "identity",
    "targets",
    "audit",
    "approvals",
    "state",
    "metrics_listen",
    "policy_files",
    "max_statement_bytes",
    "shutdown_grace",
    "login_timeout",
    "max_client_conn",
    "workers",
    "masking",
    "tcp_keepalive",
    NULL,
};

typedef struct load {
    cfg_t *c;
    cfgw_t w;
    char *dir; /* of bulwark.json, "" for the current directory */
    bool identity_ok, targets_ok;
} load_t;

/* ---- small helpers ---- */

/* "host:port" or "[v6]:port"; host non-empty, port 1-65535. */
static bool parse_hostport(const char *s, char **host, int *port)
{
    const char *colon, *h = s, *hend;
    if (s[0] == '[') {
        hend = strchr(s, ']');
        if (!hend || hend[1] != ':')
            return false;
        h = s + 1;
        colon = hend + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return false;
        hend = colon;
    }
    if (hend == h)
        return false;
    for (const char *p = h; p < hend; p++)
        if (*p <= ' ' || *p == 0x7f || *p == '/' || *p == '[' || *p == ']')
            return false;
    const char *p = colon + 1;
    long v = 0;
    if (!*p || strlen(p) > 5)
        return false;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
    }
    if (v < 1 || v > 65535)
        return false;
    if (host && !(*host = strndup(h, (size_t)(hend - h))))
        return false;
    if (port)
        *port = (int)v;
    return true;
}

static int hostport(load_t *L, const cJSON *obj, const char *key, unsigned flags, char **host,
                    int *port, char **as_written)
{
    const char *s;
    int rc = cfgw_str(&L->w, obj, key, flags, &s);
    if (rc <= 0)
        return rc;
    if (!parse_hostport(s, host, port)) {
        cfgw_err_at(&L->w, key,
                    "must be \"host:port\" with a port 1-65535 (IPv6 as \"[::1]:6432\")");
        return -1;
    }
    if (as_written)
        *as_written = cfgw_strdup(&L->w, s);
    return 1;
}

/* A path key: resolved against the config directory and checked readable. */
static int path_key(load_t *L, const cJSON *obj, const char *key, unsigned flags, char **out)
{
    const char *s;
    int rc = cfgw_str(&L->w, obj, key, flags, &s);
    if (rc <= 0)
        return rc;
    char *p = cfg_join(L->dir, s);
    if (!p) {
        cfgw_err_at(&L->w, key, "out of memory");
        return -1;
    }
    *out = p;
    return 1;
}

static int readable_key(load_t *L, const cJSON *obj, const char *key, unsigned flags, char **out)
{
    int rc = path_key(L, obj, key, flags, out);
    if (rc <= 0)
        return rc;
    int fd = open(*out, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        char q[96];
        cfgw_err_at(&L->w, key, "cannot read %s: %s", cfg_q(q, sizeof(q), *out), strerror(errno));
        return -1;
    }
    close(fd);
    return 1;
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CFG_MAX_NAME)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

/* ---- sections ---- */

static void load_tls(load_t *L, const cJSON *root)
{
    static const char *const keys[] = {"cert_file", "key_file", NULL};
    cfg_t *c = L->c;
    const cJSON *tls = cfgw_get(root, "tls");
    if (tls && !cJSON_IsNull(tls)) {
        size_t m = cfgw_key(&L->w, "tls");
        if (cfgw_object(&L->w, tls, keys)) {
            (void)readable_key(L, tls, "cert_file", CFGW_REQ, &c->tls_cert_file);
            (void)readable_key(L, tls, "key_file", CFGW_REQ, &c->tls_key_file);
        }
        cfgw_pop(&L->w, m);
        return;
    }
    if (!c->allow_plaintext_on_loopback)
        cfgw_err_at(&L->w, "tls",
                    "required unless allow_plaintext_on_loopback is true (clients send their "
                    "tokens as passwords)");
}

static bool url_ok(const char *u)
{
    if (!strncmp(u, "https://", 8))
        return u[8] != 0;
    static const char *const local[] = {"http://127.0.0.1", "http://localhost", "http://[::1]"};
    for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
        size_t n = strlen(local[i]);
        if (!strncmp(u, local[i], n) && (u[n] == 0 || u[n] == ':' || u[n] == '/'))
            return true;
    }
    return false;
}

static void load_algorithms(load_t *L, const cJSON *v, cfg_issuer_t *is)
{
    static const char *const jwks_algs[] = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                            "ES256", "ES384", "ES512", "EdDSA", NULL};
    static const char *const hs_algs[] = {"HS256", NULL};
    static const char *const jwks_default[] = {"RS256", "ES256", NULL};
    const cJSON *arr = NULL;
    int rc = cfgw_array(&L->w, v, "algorithms", CFGW_NONEMPTY, &arr);
    const char *const *names = is->hs256_secret_file ? hs_algs : jwks_algs;
    if (rc == 0)
        arr = NULL;
    else if (rc < 0)
        return;
    size_t n = arr ? (size_t)cJSON_GetArraySize(arr) : is->hs256_secret_file ? 1 : 2;
    is->algorithms = calloc(n, sizeof(char *));
    if (!is->algorithms) {
        cfgw_err(&L->w, "out of memory");
        return;
    }
    if (!arr) {
        for (size_t i = 0; i < n; i++)
            is->algorithms[is->n_algorithms++] =
                cfgw_strdup(&L->w, is->hs256_secret_file ? hs_algs[i] : jwks_default[i]);
        return;
    }
    size_t m = cfgw_key(&L->w, "algorithms");
    const cJSON *a;
    size_t i = 0;
    cJSON_ArrayForEach(a, arr)
    {
        size_t mi = cfgw_idx(&L->w, i++);
        int which;
        if (cJSON_IsString(a) && !strcasecmp(a->valuestring, "none")) {
            cfgw_err(&L->w, "\"none\" is never accepted");
        } else if (is->hs256_secret_file && cJSON_IsString(a) && strcmp(a->valuestring, "HS256")) {
            cfgw_err(&L->w, "an hs256_secret_file accepts only \"HS256\"");
        } else if (cfgw_v_enum(&L->w, a, "algorithm", names, &which)) {
            bool dup = false;
            for (size_t k = 0; k < is->n_algorithms; k++)
                dup |= !strcmp(is->algorithms[k], a->valuestring);
            if (dup)
                cfgw_err(&L->w, "duplicate algorithm \"%s\"", a->valuestring);
            else
                is->algorithms[is->n_algorithms++] = cfgw_strdup(&L->w, a->valuestring);
        }
        cfgw_pop(&L->w, mi);
    }
    cfgw_pop(&L->w, m);
}

static void load_hs256_secret(load_t *L, cfg_issuer_t *is)
{
    char why[256];
    char q[96];
    if (cfg_read_secret_file(is->hs256_secret_file, &is->hs256_secret, &is->hs256_secret_len, why,
                             sizeof(why)) < 0) {
        cfgw_err_at(&L->w, "hs256_secret_file", "cannot read %s: %s",
                    cfg_q(q, sizeof(q), is->hs256_secret_file), why);
        return;
    }
    if (is->hs256_secret_len < HS256_MIN_SECRET)
        cfgw_err_at(&L->w, "hs256_secret_file",
                    "the secret in %s must be at least %d bytes (RFC 7518 section 3.2)",
                    cfg_q(q, sizeof(q), is->hs256_secret_file), HS256_MIN_SECRET);
}

/* The keys are parsed now, so that a bad file fails `bulwark check` and a
 * reload (which then keeps the old config); errors name the file and the key:
 * "keys/idp.json: keys[1].crv: unsupported curve "P-192"". */
static void load_jwks_file(load_t *L, cfg_issuer_t *is)
{
    cfgw_t w2;
    char why[256];
    cfgw_init(&w2, L->w.errs, is->jwks_file);
    cJSON *j = cfgw_load_json(&w2, is->jwks_file);
    if (j && !(is->jwks = ident_jwks_parse(j, why, sizeof(why))))
        cfgw_err(&w2, "%s", why);
    cJSON_Delete(j);
    L->w.n_err += w2.n_err;
}

static void load_issuer(load_t *L, const cJSON *v, cfg_issuer_t *is)
{
    static const char *const keys[] = {"issuer",     "audience", "hs256_secret_file",
                                       "jwks_file",  "jwks_url", "jwks_ca_file",
                                       "algorithms", "refresh",  NULL};
    if (!cfgw_object(&L->w, v, keys))
        return;
    const char *s;
    if (cfgw_str(&L->w, v, "issuer", CFGW_REQ, &s) > 0)
        is->issuer = cfgw_strdup(&L->w, s);
    if (cfgw_str(&L->w, v, "audience", CFGW_REQ, &s) > 0)
        is->audience = cfgw_strdup(&L->w, s);
    int hs = path_key(L, v, "hs256_secret_file", 0, &is->hs256_secret_file);
    int jf = readable_key(L, v, "jwks_file", 0, &is->jwks_file);
    int ju = cfgw_str(&L->w, v, "jwks_url", 0, &s);
    if (ju > 0) {
        if (url_ok(s))
            is->jwks_url = cfgw_strdup(&L->w, s);
        else
            cfgw_err_at(&L->w, "jwks_url", "must be an https:// URL (http:// only for localhost)");
    }
    if (hs >= 0 && jf >= 0 && ju >= 0 && (hs != 0) + (jf != 0) + (ju != 0) != 1)
        cfgw_err(&L->w, "exactly one of hs256_secret_file, jwks_file, jwks_url is required");
    if (hs > 0)
        load_hs256_secret(L, is);
    if (jf > 0)
        load_jwks_file(L, is);
    if (hs >= 0 && jf >= 0 && ju >= 0)
        load_algorithms(L, v, is);
    is->refresh_ms = 600000;
    if (cfgw_get(v, "refresh") && ju <= 0)
        cfgw_err_at(&L->w, "refresh", "only valid with jwks_url");
    else
        (void)cfgw_dur(&L->w, v, "refresh", 0, 10000, INT64_MAX, &is->refresh_ms);
    if (cfgw_get(v, "jwks_ca_file") && ju <= 0)
        cfgw_err_at(&L->w, "jwks_ca_file", "only valid with jwks_url");
    else
        (void)readable_key(L, v, "jwks_ca_file", 0, &is->jwks_ca_file);
}

static void load_identity(load_t *L, const cJSON *root)
{
    static const char *const keys[] = {"issuers", "leeway", "max_token_lifetime", NULL};
    cfg_t *c = L->c;
    const cJSON *id = NULL;
    size_t before = L->w.n_err;
    if (cfgw_objval(&L->w, root, "identity", CFGW_REQ, &id) <= 0)
        return;
    size_t m = cfgw_key(&L->w, "identity");
    if (!cfgw_object(&L->w, id, keys))
        goto out;
    (void)cfgw_dur(&L->w, id, "leeway", 0, 0, 300000, &c->leeway_ms);
    (void)cfgw_dur(&L->w, id, "max_token_lifetime", 0, 1000, INT64_MAX, &c->max_token_lifetime_ms);
    const cJSON *arr;
    if (cfgw_array(&L->w, id, "issuers", CFGW_REQ | CFGW_NONEMPTY, &arr) <= 0)
        goto out;
    size_t n = (size_t)cJSON_GetArraySize(arr);
    c->issuers = calloc(n, sizeof(*c->issuers));
    if (!c->issuers) {
        cfgw_err(&L->w, "out of memory");
        goto out;
    }
    size_t mk = cfgw_key(&L->w, "issuers");
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        size_t i = c->n_issuers++;
        size_t mi = cfgw_idx(&L->w, i);
        load_issuer(L, v, &c->issuers[i]);
        for (size_t k = 0; k < i && c->issuers[i].issuer; k++) {
            if (c->issuers[k].issuer && !strcmp(c->issuers[k].issuer, c->issuers[i].issuer)) {
                cfgw_err_at(&L->w, "issuer", "duplicate issuer (also identity.issuers[%zu])", k);
                break;
            }
        }
        cfgw_pop(&L->w, mi);
    }
    cfgw_pop(&L->w, mk);
out:
    cfgw_pop(&L->w, m);
    L->identity_ok = L->w.n_err == before;
}

static void load_target(load_t *L, const char *name, const cJSON *v, cfg_target_t *t)
{
    static const char *const keys[] = {"host", "port", "dbname", "sslmode", "sslrootcert", NULL};
    static const char *const modes[] = {"disable", "prefer", "require", "verify-full", NULL};
    t->name = cfgw_strdup(&L->w, name);
    t->port = 5432;
    t->sslmode = CFG_SSL_PREFER;
    if (!name_ok(name)) {
        cfgw_err(&L->w, "target name must be 1-%d characters without control characters",
                 CFG_MAX_NAME);
        return;
    }
    if (!strcmp(name, "bulwark")) {
        cfgw_err(&L->w, "the target name \"bulwark\" is reserved for the admin console");
        return;
    }
    if (!cfgw_object(&L->w, v, keys))
        return;
    const char *s;
    int64_t port;
    int mode;
    if (cfgw_str(&L->w, v, "host", CFGW_REQ, &s) > 0)
        t->host = cfgw_strdup(&L->w, s);
    if (cfgw_int(&L->w, v, "port", 0, 1, 65535, &port) > 0)
        t->port = (int)port;
    t->dbname = cfgw_strdup(&L->w, cfgw_str(&L->w, v, "dbname", 0, &s) > 0 ? s : name);
    if (cfgw_enum(&L->w, v, "sslmode", 0, "sslmode", modes, &mode) > 0)
        t->sslmode = (cfg_sslmode_t)mode;
    (void)readable_key(L, v, "sslrootcert", 0, &t->sslrootcert);
}

static void load_targets(load_t *L, const cJSON *root)
{
    cfg_t *c = L->c;
    const cJSON *tg;
    size_t before = L->w.n_err;
    if (cfgw_objval(&L->w, root, "targets", CFGW_REQ, &tg) <= 0)
        return;
    size_t n = (size_t)cJSON_GetArraySize(tg);
    if (n == 0) {
        cfgw_err_at(&L->w, "targets", "must name at least one target");
        return;
    }
    c->targets = calloc(n, sizeof(*c->targets));
    if (!c->targets) {
        cfgw_err(&L->w, "out of memory");
        return;
    }
    size_t m = cfgw_key(&L->w, "targets");
    const cJSON *v;
    cJSON_ArrayForEach(v, tg)
    {
        size_t mt = cfgw_key(&L->w, v->string);
        load_target(L, v->string, v, &c->targets[c->n_targets++]);
        cfgw_pop(&L->w, mt);
    }
    cfgw_pop(&L->w, m);
    L->targets_ok = L->w.n_err == before;
}

/* audit.retention: {"max_age": "90d", "max_size": "800MiB"}, either or both (docs/audit.md). */
static void load_retention(load_t *L, const cJSON *a)
{
    static const char *const keys[] = {"max_age", "max_size", NULL};
    cfg_t *c = L->c;
    const cJSON *r;
    if (cfgw_objval(&L->w, a, "retention", 0, &r) <= 0)
        return;
    size_t m = cfgw_key(&L->w, "retention");
    if (cfgw_object(&L->w, r, keys)) {
        (void)cfgw_dur(&L->w, r, "max_age", 0, 60000, INT64_MAX / 1000,
                       &c->audit.retention_max_age_ms);
        if (cfgw_size(&L->w, r, "max_size", 0, 1u << 19, UINT64_MAX, &c->audit.retention_max_size) >
                0 &&
            c->audit.retention_max_size >= c->audit.map_size)
            cfgw_err_at(&L->w, "max_size", "must be less than audit.map_size");
    }
    cfgw_pop(&L->w, m);
}

static void load_audit(load_t *L, const cJSON *root)
{
    static const char *const keys[] = {
        "path",          "map_size",         "durability", "capture_rows",
        "capture_bytes", "signing_key_file", "on_failure", "retention",
        "max_map_size",  "replica",          NULL};
    static const char *const durability[] = {"strict", "strict-writes", "batched", NULL};
    static const char *const on_failure[] = {"deny", "allow", NULL};
    cfg_t *c = L->c;
    const cJSON *a;
    if (cfgw_objval(&L->w, root, "audit", CFGW_REQ, &a) <= 0)
        return;
    size_t m = cfgw_key(&L->w, "audit");
    if (cfgw_object(&L->w, a, keys)) {
        int d, f;
        int64_t rows;
        (void)path_key(L, a, "path", CFGW_REQ, &c->audit.path);
        (void)cfgw_size(&L->w, a, "map_size", 0, 1u << 20, UINT64_MAX, &c->audit.map_size);
        if (cfgw_size(&L->w, a, "max_map_size", 0, 1u << 20, UINT64_MAX, &c->audit.max_map_size) >
                0 &&
            c->audit.max_map_size < c->audit.map_size)
            cfgw_err_at(&L->w, "max_map_size", "must be at least audit.map_size");
        if (cfgw_enum(&L->w, a, "durability", 0, "durability", durability, &d) > 0)
            c->audit.durability = (cfg_durability_t)d;
        if (cfgw_int(&L->w, a, "capture_rows", 0, 0, 1000000, &rows) > 0)
            c->audit.capture_rows = (int)rows;
        (void)cfgw_size(&L->w, a, "capture_bytes", 0, 0, 1ULL << 30, &c->audit.capture_bytes);
        (void)readable_key(L, a, "signing_key_file", 0, &c->audit.signing_key_file);
        if (cfgw_enum(&L->w, a, "on_failure", 0, "value", on_failure, &f) > 0)
            c->audit.on_failure_allow = f == 1;
        const char *rep;
        if (cfgw_str(&L->w, a, "replica", 0, &rep) > 0) {
            size_t n = strlen(rep);
            bool ok = n >= 1 && n <= 64;
            for (size_t i = 0; ok && i < n; i++)
                ok = (rep[i] >= 'a' && rep[i] <= 'z') || (rep[i] >= 'A' && rep[i] <= 'Z') ||
                     (rep[i] >= '0' && rep[i] <= '9') || rep[i] == '-' || rep[i] == '_' ||
                     rep[i] == '.';
            if (ok)
                c->audit.replica = cfgw_strdup(&L->w, rep);
            else
                cfgw_err_at(&L->w, "replica", "must be 1 to 64 of A-Z a-z 0-9 . _ -");
        }
        load_retention(L, a);
    }
    cfgw_pop(&L->w, m);
}

static void load_approvals(load_t *L, const cJSON *root)
{
    static const char *const keys[] = {"webhook_url", "poll_interval", NULL};
    cfg_t *c = L->c;
    const cJSON *a;
    if (cfgw_objval(&L->w, root, "approvals", 0, &a) <= 0)
        return;
    size_t m = cfgw_key(&L->w, "approvals");
    if (cfgw_object(&L->w, a, keys)) {
        const char *s;
        if (cfgw_str(&L->w, a, "webhook_url", 0, &s) > 0) {
            if (!strncmp(s, "https://", 8) || !strncmp(s, "http://", 7))
                c->approvals.webhook_url = cfgw_strdup(&L->w, s);
            else
                cfgw_err_at(&L->w, "webhook_url", "must be an http:// or https:// URL");
        }
        (void)cfgw_dur(&L->w, a, "poll_interval", 0, 1, 60000, &c->approvals.poll_interval_ms);
    }
    cfgw_pop(&L->w, m);
}

/* state: {"backend": "lmdb" | "postgres", "dsn_file", "channel"} (docs/replicas.md):
 * where approval requests, decisions and grants live. */
static void load_state(load_t *L, const cJSON *root)
{
    static const char *const keys[] = {"backend", "dsn_file", "channel", NULL};
    static const char *const backends[] = {"lmdb", "postgres", NULL};
    cfg_t *c = L->c;
    const cJSON *a;
    if (cfgw_objval(&L->w, root, "state", 0, &a) <= 0)
        return;
    size_t m = cfgw_key(&L->w, "state");
    if (cfgw_object(&L->w, a, keys)) {
        int b = 0;
        if (cfgw_enum(&L->w, a, "backend", CFGW_REQ, "backend", backends, &b) > 0)
            c->state.postgres = b == 1;
        (void)readable_key(L, a, "dsn_file", 0, &c->state.dsn_file);
        const char *ch;
        if (cfgw_str(&L->w, a, "channel", 0, &ch) > 0) {
            size_t n = strlen(ch);
            bool ok = n > 0 && n <= 63;
            for (size_t i = 0; ok && i < n; i++)
                ok = (ch[i] >= 'a' && ch[i] <= 'z') || ch[i] == '_' ||
                     (i > 0 && ch[i] >= '0' && ch[i] <= '9');
            if (ok)
                snprintf(c->state.channel, sizeof(c->state.channel), "%s", ch);
            else
                cfgw_err_at(&L->w, "channel",
                            "must be 1-63 characters of a-z, 0-9 and _, not starting with a digit");
        }
        if (c->state.postgres && !c->state.dsn_file)
            cfgw_err_at(&L->w, "dsn_file", "is required with backend \"postgres\"");
        if (!c->state.postgres && c->state.dsn_file)
            cfgw_err_at(&L->w, "dsn_file", "is only used with backend \"postgres\"");
    }
    cfgw_pop(&L->w, m);
}

/* masking: {"hash_key_file", "max_row_bytes", "catalog_refresh"} (docs/configuration.md).
 * Called after the policies: a role whose masks use "hash" needs the key. */
static bool role_uses_hash(const cfg_role_t *r)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, r->masks)
    {
        const char *meth = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "method"));
        if (meth && !strcmp(meth, "hash"))
            return true;
    }
    return false;
}

static void load_masking(load_t *L, const cJSON *root)
{
    static const char *const keys[] = {"hash_key_file", "max_row_bytes", "catalog_refresh", NULL};
    cfg_t *c = L->c;
    const cJSON *a = NULL;
    if (cfgw_objval(&L->w, root, "masking", 0, &a) > 0) {
        size_t m = cfgw_key(&L->w, "masking");
        if (cfgw_object(&L->w, a, keys)) {
            if (readable_key(L, a, "hash_key_file", 0, &c->masking.hash_key_file) > 0) {
                char why[256], q[96];
                if (cfg_read_secret_file(c->masking.hash_key_file, &c->masking.hash_key,
                                         &c->masking.hash_key_len, why, sizeof(why)) < 0)
                    cfgw_err_at(&L->w, "hash_key_file", "cannot read %s: %s",
                                cfg_q(q, sizeof(q), c->masking.hash_key_file), why);
                else if (c->masking.hash_key_len < 32)
                    cfgw_err_at(&L->w, "hash_key_file", "the key in %s must be at least 32 bytes",
                                cfg_q(q, sizeof(q), c->masking.hash_key_file));
            }
            (void)cfgw_size(&L->w, a, "max_row_bytes", 0, 64 * 1024, 1ULL << 30,
                            &c->masking.max_row_bytes);
            (void)cfgw_dur(&L->w, a, "catalog_refresh", 0, 1000, 86400000,
                           &c->masking.catalog_refresh_ms);
        }
        cfgw_pop(&L->w, m);
    }
    for (size_t i = 0; i < c->n_roles; i++)
        if (!c->masking.hash_key && role_uses_hash(&c->roles[i])) {
            cfgw_err(&L->w,
                     "role \"%s\" masks with method \"hash\": masking.hash_key_file is required",
                     c->roles[i].name);
            break;
        }
}

static void load_knobs(load_t *L, const cJSON *root)
{
    cfg_t *c = L->c;
    int64_t n;
    (void)cfgw_size(&L->w, root, "max_statement_bytes", 0, 1024, 1ULL << 30,
                    &c->max_statement_bytes);
    (void)cfgw_dur(&L->w, root, "shutdown_grace", 0, 0, 3600000, &c->shutdown_grace_ms);
    (void)cfgw_dur(&L->w, root, "login_timeout", 0, 1, 600000, &c->login_timeout_ms);
    if (cfgw_int(&L->w, root, "max_client_conn", 0, 1, 1000000, &n) > 0)
        c->max_client_conn = (int)n;
    if (cfgw_int(&L->w, root, "workers", 0, 1, CFG_MAX_WORKERS, &n) > 0)
        c->workers = (int)n;
    (void)cfgw_dur(&L->w, root, "tcp_keepalive", 0, 1000, 7200000, &c->tcp_keepalive_ms);
}

/* ---- policy files ---- */

typedef struct seen {
    char **v;
    size_t n;
} seen_t;

/* glob(3) has no user pointer for its error callback. */
static __thread int glob_errno;

/* A directory that does not exist simply matches nothing; anything else
 * (permission denied, I/O error) stops the search. */
static int glob_error(const char *epath, int eerrno)
{
    (void)epath;
    if (eerrno == ENOENT || eerrno == ENOTDIR)
        return 0;
    glob_errno = eerrno;
    return 1;
}

/* Same file reached by two patterns: load it once. */
static bool seen_add(seen_t *s, const char *path)
{
    char *rp = realpath(path, NULL);
    if (!rp)
        rp = strdup(path);
    if (!rp)
        return false;
    for (size_t i = 0; i < s->n; i++) {
        if (!strcmp(s->v[i], rp)) {
            free(rp);
            return false;
        }
    }
    char **g = realloc(s->v, (s->n + 1) * sizeof(*g));
    if (!g) {
        free(rp);
        return false;
    }
    s->v = g;
    s->v[s->n++] = rp;
    return true;
}

static void load_policies(load_t *L, const cJSON *root)
{
    const cJSON *arr;
    if (cfgw_array(&L->w, root, "policy_files", 0, &arr) <= 0)
        return;
    seen_t seen = {0};
    cfg_refs_t *refs = cfg_refs_new();
    size_t m = cfgw_key(&L->w, "policy_files");
    size_t i = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, arr)
    {
        size_t mi = cfgw_idx(&L->w, i++);
        char q[96];
        char *pat = cfgw_v_str(&L->w, p, 0) ? cfg_join(L->dir, p->valuestring) : NULL;
        glob_t g;
        glob_errno = 0;
        int rc = pat ? glob(pat, GLOB_MARK, glob_error, &g) : GLOB_NOSPACE;
        size_t files = 0;
        if (rc == 0) {
            for (size_t k = 0; k < g.gl_pathc; k++) {
                const char *f = g.gl_pathv[k];
                if (f[strlen(f) - 1] == '/')
                    continue; /* a directory */
                files++;
                if (seen_add(&seen, f))
                    L->w.n_err +=
                        cfg_policy_load(L->c, L->w.errs, f, L->identity_ok, L->targets_ok, refs);
            }
            globfree(&g);
        }
        if (pat && (rc == GLOB_NOMATCH || (rc == 0 && files == 0)))
            cfgw_err(&L->w, "%s matches no file", cfg_q(q, sizeof(q), p->valuestring));
        else if (pat && rc != 0)
            cfgw_err(&L->w, "cannot search %s: %s", cfg_q(q, sizeof(q), p->valuestring),
                     glob_errno ? strerror(glob_errno) : "out of memory");
        free(pat);
        cfgw_pop(&L->w, mi);
    }
    cfgw_pop(&L->w, m);
    L->w.n_err += cfg_policy_check_refs(L->c, L->w.errs, refs);
    cfg_refs_free(refs);
    for (size_t k = 0; k < seen.n; k++)
        free(seen.v[k]);
    free(seen.v);
}

/* ---- files to watch ---- */

static bool watch_add(cfg_t *c, const char *path)
{
    if (!path)
        return true;
    for (size_t i = 0; i < c->n_watch_files; i++)
        if (!strcmp(c->watch_files[i], path))
            return true;
    char **v = realloc(c->watch_files, (c->n_watch_files + 1) * sizeof(*v));
    if (!v)
        return false;
    c->watch_files = v;
    return (v[c->n_watch_files] = strdup(path)) && ++c->n_watch_files;
}

static bool collect_watch_files(cfg_t *c)
{
    bool ok = watch_add(c, c->path) && watch_add(c, c->tls_cert_file) &&
              watch_add(c, c->tls_key_file) && watch_add(c, c->audit.signing_key_file) &&
              watch_add(c, c->masking.hash_key_file);
    for (size_t i = 0; ok && i < c->n_issuers; i++) {
        const cfg_issuer_t *is = &c->issuers[i];
        ok = watch_add(c, is->hs256_secret_file) && watch_add(c, is->jwks_file) &&
             watch_add(c, is->jwks_ca_file);
    }
    for (size_t i = 0; ok && i < c->n_targets; i++)
        ok = watch_add(c, c->targets[i].sslrootcert);
    for (size_t i = 0; ok && i < c->n_roles; i++) {
        const cfg_role_t *r = &c->roles[i];
        ok = watch_add(c, r->source_file);
        for (size_t k = 0; ok && k < r->n_upstreams; k++)
            ok = watch_add(c, r->upstreams[k].password_file);
    }
    return ok;
}

size_t cfg_watch_files(const cfg_t *c, const char *const **out)
{
    *out = c ? (const char *const *)c->watch_files : NULL;
    return c ? c->n_watch_files : 0;
}

/* ---- load, lifecycle ---- */

static void set_defaults(cfg_t *c)
{
    c->refcount = 1;
    c->leeway_ms = 30000;
    c->max_token_lifetime_ms = 24 * 3600000LL;
    c->audit.map_size = 1ULL << 30;
    c->audit.durability = CFG_DUR_STRICT_WRITES;
    c->audit.capture_rows = 50;
    c->audit.capture_bytes = 64 << 10;
    c->approvals.poll_interval_ms = 200;
    snprintf(c->state.channel, sizeof(c->state.channel), "bulwark_approvals");
    c->max_statement_bytes = 1 << 20;
    c->shutdown_grace_ms = 30000;
    c->login_timeout_ms = 15000;
    c->max_client_conn = 10000;
    c->masking.max_row_bytes = 16u << 20;
    c->masking.catalog_refresh_ms = 60000;
    c->tcp_keepalive_ms = 60000;
}

static void load_root(load_t *L, const cJSON *root)
{
    cfg_t *c = L->c;
    if (!cfgw_object(&L->w, root, top_keys))
        return;
    (void)hostport(L, root, "listen", CFGW_REQ, &c->listen_host, &c->listen_port, NULL);
    (void)cfgw_bool(&L->w, root, "allow_plaintext_on_loopback", 0, &c->allow_plaintext_on_loopback);
    load_tls(L, root);
    load_identity(L, root);
    load_targets(L, root);
    load_audit(L, root);
    load_approvals(L, root);
    load_state(L, root);
    (void)hostport(L, root, "metrics_listen", 0, NULL, NULL, &c->metrics_listen);
    load_knobs(L, root);
    load_policies(L, root);
    load_masking(L, root);
}

cfg_t *cfg_load(const char *path, cfg_errors_t *errs)
{
    cfg_errors_t local = {0};
    if (!errs)
        errs = &local;
    load_t L = {0};
    cfgw_init(&L.w, errs, path);
    L.c = calloc(1, sizeof(*L.c));
    L.dir = cfg_dirname(path);
    if (!L.c || !L.dir || !(L.c->path = strdup(path))) {
        cfgw_err(&L.w, "out of memory");
    } else {
        set_defaults(L.c);
        cJSON *root = cfgw_load_json(&L.w, path);
        if (root)
            load_root(&L, root);
        cJSON_Delete(root);
    }
    if (!L.w.n_err && !collect_watch_files(L.c))
        cfgw_err(&L.w, "out of memory");
    free(L.dir);
    cfg_errors_free(&local);
    if (L.w.n_err) {
        if (L.c)
            L.c->refcount = 1;
        cfg_release(L.c);
        return NULL;
    }
    return L.c;
}

cfg_t *cfg_retain(cfg_t *c)
{
    if (c)
        atomic_fetch_add_explicit(&c->refcount, 1, memory_order_relaxed);
    return c;
}

static void free_secret(void *p, size_t n)
{
    if (p) {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

void cfg_role_free(cfg_role_t *r)
{
    free(r->name);
    free(r->description);
    free(r->source_file);
    for (size_t i = 0; i < r->n_identities; i++) {
        free(r->identities[i].iss);
        free(r->identities[i].sub);
        free(r->identities[i].claim);
        free(r->identities[i].includes);
    }
    free(r->identities);
    for (size_t i = 0; i < r->n_upstreams; i++) {
        cfg_upstream_t *u = &r->upstreams[i];
        free(u->target);
        free(u->user);
        free_secret(u->password, u->password ? strlen(u->password) : 0);
        free(u->password_file);
        free(u->password_env);
    }
    free(r->upstreams);
    cJSON_Delete(r->rules);
    cJSON_Delete(r->masks);
}

void cfg_release(cfg_t *c)
{
    if (!c || atomic_fetch_sub_explicit(&c->refcount, 1, memory_order_acq_rel) > 1)
        return;
    free(c->path);
    free(c->listen_host);
    free(c->tls_cert_file);
    free(c->tls_key_file);
    for (size_t i = 0; i < c->n_issuers; i++) {
        cfg_issuer_t *is = &c->issuers[i];
        free(is->issuer);
        free(is->audience);
        free(is->hs256_secret_file);
        free_secret(is->hs256_secret, is->hs256_secret_len);
        free(is->jwks_file);
        free(is->jwks_url);
        free(is->jwks_ca_file);
        ident_keyset_release(is->jwks);
        for (size_t k = 0; k < is->n_algorithms; k++)
            free(is->algorithms[k]);
        free(is->algorithms);
    }
    free(c->issuers);
    for (size_t i = 0; i < c->n_targets; i++) {
        free(c->targets[i].name);
        free(c->targets[i].host);
        free(c->targets[i].dbname);
        free(c->targets[i].sslrootcert);
    }
    free(c->targets);
    free(c->audit.path);
    free(c->audit.replica);
    free(c->audit.signing_key_file);
    free(c->approvals.webhook_url);
    free(c->state.dsn_file);
    free(c->metrics_listen);
    free_secret(c->masking.hash_key, c->masking.hash_key_len);
    free(c->masking.hash_key_file);
    for (size_t i = 0; i < c->n_roles; i++)
        cfg_role_free(&c->roles[i]);
    free(c->roles);
    for (size_t i = 0; i < c->n_watch_files; i++)
        free(c->watch_files[i]);
    free(c->watch_files);
    free(c);
}

/* ---- lookups ---- */

const cfg_role_t *cfg_find_role(const cfg_t *c, const char *name)
{
    for (size_t i = 0; c && name && i < c->n_roles; i++)
        if (c->roles[i].name && !strcmp(c->roles[i].name, name))
            return &c->roles[i];
    return NULL;
}

const cfg_target_t *cfg_find_target(const cfg_t *c, const char *name)
{
    for (size_t i = 0; c && name && i < c->n_targets; i++)
        if (c->targets[i].name && !strcmp(c->targets[i].name, name))
            return &c->targets[i];
    return NULL;
}

const cfg_upstream_t *cfg_role_upstream(const cfg_role_t *r, const char *target)
{
    for (size_t i = 0; r && target && i < r->n_upstreams; i++)
        if (r->upstreams[i].target && !strcmp(r->upstreams[i].target, target))
            return &r->upstreams[i];
    return NULL;
}

const cfg_issuer_t *cfg_find_issuer(const cfg_t *c, const char *issuer)
{
    for (size_t i = 0; c && issuer && i < c->n_issuers; i++)
        if (c->issuers[i].issuer && !strcmp(c->issuers[i].issuer, issuer))
            return &c->issuers[i];
    return NULL;
}
