/*
 * config — bulwark.json and the policy files it names, turned into one
 * immutable, reference-counted cfg_t (SPEC sections 3 and 5).
 *
 * Loading is all-or-nothing: cfg_load() returns NULL if anything at all is
 * wrong, after appending every problem it found to errs as
 * "FILE: path.to.key: reason" (FILE as the operator can open it from the
 * current directory; keys that are not plain identifiers are quoted, e.g.
 * targets["eu.shop"].port; array elements are [i]). Typos must not weaken
 * security, so unknown keys, duplicate keys, wrong types and out-of-range
 * values are errors everywhere, including in rules and masks that later code
 * interprets.
 *
 * Paths in bulwark.json are relative to the directory of bulwark.json; paths in
 * a policy file (password_file) are relative to that policy file. Resolved
 * paths are usable from the current directory at load time (the gateway does
 * not chdir).
 *
 * Required: listen, identity.issuers (at least one), targets (at least one),
 * audit.path; tls unless allow_plaintext_on_loopback is true. A policy_files
 * pattern that matches no file is an error (a typo would silently drop roles).
 * docs/configuration.md lists every key with its default.
 *
 * Secrets (HS256 secrets, upstream passwords) are read at load time, kept only
 * in this struct, never printed, and wiped when the last reference goes.
 */
#ifndef BULWARK_CONFIG_H
#define BULWARK_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* "workers": event loops on threads of their own (docs/scaling.md). */
#define CFG_MAX_WORKERS 256

typedef enum {
    CFG_SSL_DISABLE,
    CFG_SSL_PREFER,
    CFG_SSL_REQUIRE,
    CFG_SSL_VERIFY_FULL
} cfg_sslmode_t;
typedef enum { CFG_DENY, CFG_ALLOW } cfg_default_t;

typedef struct cfg_target {
    char *name, *host;
    int port;              /* default 5432 */
    char *dbname;          /* default: the target's name */
    cfg_sslmode_t sslmode; /* default prefer */
    char *sslrootcert;     /* resolved path or NULL (system store) */
} cfg_target_t;

typedef struct cfg_upstream {
    char *target, *user;
    char *
        password; /* NULL if none; from password_file (trailing newline stripped) or password_env */
    char *password_file; /* resolved path, or NULL */
    char *password_env;  /* variable name, or NULL */
} cfg_upstream_t;

/* A token matches when every condition given holds: iss equal, sub matches the
 * glob (util/glob.h), and the top-level claim `claim` is a string equal to
 * `includes` or an array containing that string. iss is always set (it must
 * name a configured issuer); at least one of sub / claim is set. */
typedef struct cfg_identity_match {
    char *iss, *sub;        /* sub: glob, NULL = any */
    char *claim, *includes; /* both or neither */
} cfg_identity_match_t;

typedef struct cfg_role {
    char *name, *description, *source_file;
    cfg_identity_match_t *identities;
    size_t n_identities;
    cfg_upstream_t *upstreams;
    size_t n_upstreams;
    cfg_default_t default_action;                                      /* default deny */
    bool read_only, catalog_reads, admin, end_session_at_token_expiry; /* default false */
    cJSON *rules, *masks; /* validated, owned copies for later issues; empty arrays if absent */
} cfg_role_t;

struct ident_keyset; /* identity/jwks.h */

typedef struct cfg_issuer {
    char *issuer, *audience;
    char *hs256_secret_file; /* resolved path */
    uint8_t *hs256_secret;   /* file contents minus one trailing newline; >= 32 bytes */
    size_t hs256_secret_len;
    char *jwks_file, *jwks_url; /* exactly one of the three sources is set */
    struct ident_keyset *jwks;  /* jwks_file's keys, parsed at load (identity/jwks.h) */
    char *jwks_ca_file;         /* jwks_url only: resolved path of the CA bundle to trust
                                   instead of the system store, or NULL */
    char **algorithms;          /* HS: {"HS256"}; JWKS default {"RS256", "ES256"} */
    size_t n_algorithms;
    int64_t refresh_ms; /* jwks_url only; default 10m */
} cfg_issuer_t;

typedef enum { CFG_DUR_STRICT, CFG_DUR_STRICT_WRITES, CFG_DUR_BATCHED } cfg_durability_t;

typedef struct cfg {
    char *path;        /* the config file */
    char *listen_host; /* without IPv6 brackets */
    int listen_port;
    char *tls_cert_file, *tls_key_file; /* resolved relative to the config file; NULL = no TLS */
    bool allow_plaintext_on_loopback;
    cfg_issuer_t *issuers;
    size_t n_issuers;
    int64_t leeway_ms, max_token_lifetime_ms; /* 30s, 24h */
    cfg_target_t *targets;
    size_t n_targets;
    struct {
        char *path;                   /* resolved */
        uint64_t map_size;            /* default 1GiB */
        uint64_t max_map_size;        /* grow the map up to this when full; 0 = never */
        cfg_durability_t durability;  /* default strict-writes */
        int capture_rows;             /* default 50 */
        uint64_t capture_bytes;       /* default 64KiB */
        char *signing_key_file;       /* resolved, or NULL */
        char *replica;                /* "replica" in every record, or NULL (docs/audit.md) */
        bool on_failure_allow;        /* default false (deny) */
        int64_t retention_max_age_ms; /* "retention.max_age"; 0 = keep forever */
        uint64_t retention_max_size;  /* "retention.max_size"; 0 = no size limit */
    } audit;
    struct {
        char *webhook_url;        /* or NULL */
        int64_t poll_interval_ms; /* default 200ms */
    } approvals;
    struct {
        bool postgres;    /* backend "postgres" (default "lmdb": the audit store) */
        char *dsn_file;   /* resolved: a file holding a libpq connection string */
        char channel[64]; /* LISTEN/NOTIFY channel; default "bulwark_approvals" */
    } state;
    char *metrics_listen; /* "host:port" as written, or NULL */
    struct {
        char *hash_key_file; /* resolved, or NULL */
        uint8_t *hash_key;   /* its contents (>= 32 bytes), wiped on release */
        size_t hash_key_len;
        uint64_t max_row_bytes;     /* default 16MiB: larger rows to rewrite end the session */
        int64_t catalog_refresh_ms; /* default 60s */
    } masking;
    cfg_role_t *roles;
    size_t n_roles;
    /* gateway knobs not in SPEC's example (documented in docs/configuration.md): */
    uint64_t max_statement_bytes; /* "max_statement_bytes", default 1MiB */
    int64_t shutdown_grace_ms;    /* "shutdown_grace", default "30s" */
    int64_t login_timeout_ms;     /* "login_timeout", default "15s" */
    int max_client_conn;          /* "max_client_conn", default 10000 */
    int workers;                  /* "workers" (1..CFG_MAX_WORKERS), 0 = one per core */
    int64_t tcp_keepalive_ms;     /* "tcp_keepalive", default "60s" (proxy/limits.c) */
    char **watch_files;           /* see cfg_watch_files */
    size_t n_watch_files;         /* (its count) */
    atomic_int refcount;          /* any thread (worker loops): cfg_retain/cfg_release */
} cfg_t;

typedef struct cfg_errors {
    char **msgs;
    size_t n;
} cfg_errors_t;

/* NULL on any error; every error appended as "file: path.to.key: reason".
 * errs may be NULL. The result has refcount 1. */
cfg_t *cfg_load(const char *path, cfg_errors_t *errs) __attribute__((warn_unused_result));
void cfg_errors_free(cfg_errors_t *e);
cfg_t *cfg_retain(cfg_t *c);
void cfg_release(cfg_t *c); /* frees at 0 (OPENSSL_cleanse secrets & passwords) */

const cfg_role_t *cfg_find_role(const cfg_t *c, const char *name);
const cfg_target_t *cfg_find_target(const cfg_t *c, const char *name);
const cfg_upstream_t *cfg_role_upstream(const cfg_role_t *r, const char *target);
const cfg_issuer_t *cfg_find_issuer(const cfg_t *c, const char *issuer);

/* Every file this config was built from, each once, as resolved at load time:
 * the config file, the policy files, HS256 secret files, JWKS files, JWKS CA
 * files, upstream password files, TLS certificate and key files, target root
 * certificates and the audit signing key. When one of them changes, loading the
 * config anew picks the change up (key and password rotation without a
 * restart). *out points into c and lives as long as c; returns the count. */
size_t cfg_watch_files(const cfg_t *c, const char *const **out);

/* Helpers shared with identity and the CLI. */

/* Parse JSON strictly: exactly one value filling the whole text, no NUL bytes
 * and no \u0000 escapes (a C string would silently end there), and no object
 * with two members of the same name at any depth (cJSON would keep both, and
 * different readers would pick different ones). On failure returns NULL and
 * writes "line L, column C: invalid JSON" or "path.to.key: duplicate key" to
 * why. */
cJSON *cfg_json_parse_strict(const char *text, size_t len, char *why, size_t whysz)
    __attribute__((warn_unused_result));

/* Read a secret file: at most 64 KiB, one trailing "\n" or "\r\n" removed.
 * Returns 0 and a malloc'd buffer (with an extra NUL after *len bytes), or -1
 * with a reason in why ("No such file or directory", "file is empty", ...).
 * The caller wipes and frees the buffer. */
int cfg_read_secret_file(const char *path, uint8_t **out, size_t *len, char *why, size_t whysz)
    __attribute__((warn_unused_result));

#endif
