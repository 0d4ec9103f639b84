/*
 * policy — the SQL-aware gate (SPEC section 5): every statement is parsed with
 * libpg_query, its intent (the accesses it makes: an operation on an object)
 * is found anywhere in its tree, and the role's rules decide allow, review or
 * deny. Pure functions over strings and structs: no sockets, no globals.
 *
 * Objects and their lifetimes (nothing here is thread-safe by itself; each
 * object belongs to one loop, a policy_set_t may be shared read-only):
 *
 *   policy_set_t      every role's rules compiled once from a cfg_t. Build one
 *                     per config generation (at load and reload); immutable;
 *                     must outlive the sessions and results that use it.
 *   policy_cache_t    parse cache: statement text -> extracted intent,
 *                     bounded in entries and bytes (LRU). One per loop.
 *   policy_session_t  what changes a statement's meaning within a session:
 *                     search_path, SQL-level prepared statements, temp schema.
 *                     One per client session.
 *   policy_result_t   the decision for one query string, owned by the caller
 *                     (policy_result_free). Holds copies of what it shows, so
 *                     it stays valid after the cache evicts the text; rule ids
 *                     and review settings point into the policy_set_t.
 *
 * Simple Query ('Q' with text T):
 *     policy_result_t r;
 *     if (policy_check(role, cache, ps, T, strlen(T), &r) < 0) -> out of memory: fail closed
 *     switch (r.decision) {
 *     case POLICY_ALLOW:  forward T; policy_session_apply(ps, &r); break;
 *     case POLICY_REVIEW: (until approvals exist) refuse with 42501 r.message; break;
 *     case POLICY_DENY:   refuse with r.sqlstate, r.message and, if r.cursorpos > 0,
 *                         the position field 'P' = r.cursorpos;
 *     }
 *     policy_result_free(&r);
 *     ... on the ReadyForQuery that ends the cycle: policy_session_txn_end() (see below).
 *
 * Extended protocol: decide at Parse (one statement by protocol rule), keep the
 * decision with the named statement, refuse Bind/Execute of a refused one.
 * Apply the effects (policy_session_apply) when the statement is executed
 * (Execute of a portal of that statement); a statement Parse'd once and
 * executed many times applies each time (PREPARE/SET are idempotent here).
 *
 * Decision order (SPEC 5.2), per access: built-in protections that no rule
 * lifts (COPY to/from server files or programs, pinned settings, EXECUTE of an
 * unknown prepared statement, writes by a read_only role); then any matching
 * deny rule; then review; then allow (catalog_reads counts as an allow); else
 * the role's default. Dangerous functions, secret catalogs and `unknown`
 * accesses are denied unless a rule names them exactly (no wildcard in the
 * name) or, for `unknown`, lists the operation explicitly. A statement takes
 * the strictest decision of its accesses; a query string the strictest of
 * its statements. A statement with no access at all (SELECT 1, BEGIN, SHOW,
 * a safe SET) is allowed.
 */
#ifndef BULWARK_POLICY_H
#define BULWARK_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Ordered by strictness: a larger value wins. */
typedef enum { POLICY_ALLOW, POLICY_REVIEW, POLICY_DENY } policy_decision_t;

/* SPEC 5.1 operations, in the order of config's "operations" list. */
typedef enum {
    POLICY_OP_SELECT,
    POLICY_OP_INSERT,
    POLICY_OP_UPDATE,
    POLICY_OP_DELETE,
    POLICY_OP_MERGE,
    POLICY_OP_TRUNCATE,
    POLICY_OP_COPY_TO,
    POLICY_OP_COPY_FROM,
    POLICY_OP_EXPLAIN,
    POLICY_OP_DDL,
    POLICY_OP_DCL,
    POLICY_OP_FUNCTION,
    POLICY_OP_SESSION,
    POLICY_OP_UTILITY,
    POLICY_OP_DO,
    POLICY_OP_UNKNOWN,
    POLICY_OP__COUNT
} policy_op_t;

/* What an access's object names. Rules with "relations" globs match only
 * relation objects, rules with "functions" globs only function objects. */
typedef enum {
    POLICY_OBJ_NONE,     /* DO, CHECKPOINT, GRANT ON ALL TABLES IN SCHEMA, ... */
    POLICY_OBJ_RELATION, /* "schema.name" */
    POLICY_OBJ_FUNCTION, /* "schema.name" */
    POLICY_OBJ_SETTING,  /* a configuration parameter: "work_mem", "role", "all" */
    POLICY_OBJ_OTHER     /* named but neither: "schema foo", "prepared statement p" */
} policy_obj_t;

typedef struct policy_access {
    policy_op_t op;
    policy_obj_t kind;
    const char *object; /* "" when kind is NONE; identifiers that hold '.' or '"'
                           are double-quoted, so "a.b" can never pose as a.b */
    const char *verb;   /* for messages: "SELECT", "DROP TABLE", "call of", ... */
    bool without_where; /* UPDATE/DELETE with no WHERE (or WHERE <constant true>) */
    policy_decision_t decision;
    const char *rule;     /* deciding rule id, "builtin:NAME", or NULL = role default */
    const char **matched; /* ids of every rule whose conditions matched, in file order */
    size_t n_matched;
} policy_access_t;

typedef struct policy_stmt {
    size_t location, len; /* byte range of the statement in the checked text */
    const char *node;     /* parse node: "SelectStmt", "DropStmt", ... */
    bool writes;          /* may change data or schema (audit durability) */
    policy_decision_t decision;
    policy_access_t *accesses;
    size_t n_accesses;
} policy_stmt_t;

typedef struct policy_review {
    const char **approvers; /* role names */
    size_t n_approvers;
    int64_t timeout_ms; /* default 5 minutes */
    bool reject;        /* mode "reject"; false = "hold" */
} policy_review_t;

typedef struct policy_effects policy_effects_t; /* private: consumed by policy_session_apply */

typedef struct policy_result {
    policy_decision_t decision;
    char sqlstate[6]; /* "" when allowed; "42501" (denied, review), "42601" (parse error),
                         "54001" (nested too deeply to check) */
    char *message;    /* NULL when allowed; ready for ErrorResponse 'M' */
    int cursorpos;    /* 42601: 1-based character position for 'P'; 0 = none */
    const char *rule; /* id that decided (or "builtin:..."), NULL if default/none */
    const policy_access_t *decided_by; /* the access that decided; NULL if none */
    policy_review_t review;            /* set when decision is REVIEW */
    bool writes;                       /* any statement may change data or schema */
    bool cache_hit;
    policy_stmt_t *stmts;
    size_t n_stmts;
    policy_effects_t *effects;
    struct policy_arena *arena; /* private: owns every string and array above */
    char *tree; /* libpg_query's JSON parse tree of the text, when policy_check_keep was asked
                   for it and parsed (a cache miss); NULL otherwise. Lets masking plan the
                   statement without parsing it a second time. Freed by policy_result_free. */
} policy_result_t;

/* ---- compiled rules ---- */

typedef struct policy_set policy_set_t;
typedef struct policy_role policy_role_t;

/* Compile every role of cfg (rules were validated by the config loader).
 * NULL only when out of memory. The set keeps a reference on cfg. */
policy_set_t *policy_set_new(cfg_t *cfg) __attribute__((warn_unused_result));
void policy_set_free(policy_set_t *set);
/* NULL if the set has no such role. */
const policy_role_t *policy_set_role(const policy_set_t *set, const char *role);

/* ---- parse cache ---- */

typedef struct policy_cache policy_cache_t;
typedef struct policy_cache_stats {
    uint64_t hits, misses, evictions;
    size_t entries, bytes;
} policy_cache_stats_t;

/* max_entries 0 = no caching at all; max_bytes bounds texts plus intents. */
policy_cache_t *policy_cache_new(size_t max_entries, size_t max_bytes)
    __attribute__((warn_unused_result));
void policy_cache_free(policy_cache_t *c);
void policy_cache_stats(const policy_cache_t *c, policy_cache_stats_t *out);

/* ---- session state ---- */

typedef struct policy_session policy_session_t;

/* search_path as PostgreSQL shows it (e.g. `"$user", public`), read from the
 * upstream at session start; NULL means PostgreSQL's default. session_user is
 * the upstream login (it stands for "$user"). NULL when out of memory. */
policy_session_t *policy_session_new(const char *search_path, const char *session_user)
    __attribute__((warn_unused_result));
void policy_session_free(policy_session_t *ps);

/* Optional: the schemas that exist in the database (SELECT nspname FROM
 * pg_namespace, at session start). Once given, search_path entries naming
 * other schemas are skipped as PostgreSQL skips them, and "$user" counts only
 * when that schema exists. Without it every named schema is a candidate and
 * "$user" is skipped (see docs/policies.md). Returns -1 when out of memory. */
int policy_session_set_schemas(policy_session_t *ps, const char *const *names, size_t n)
    __attribute__((warn_unused_result));

/* Apply an allowed result's effects after forwarding it: SET/RESET
 * search_path, PREPARE, DEALLOCATE, DISCARD, temp tables, CREATE SCHEMA. A
 * search_path change counts as tentative: until policy_session_txn_end()
 * confirms it, both the old and the new path are candidates (strictest
 * wins). Calling this for a denied result does nothing. */
void policy_session_apply(policy_session_t *ps, const policy_result_t *r);

/* The proxy calls this when a transaction ends: explicit (COMMIT, ROLLBACK)
 * or the implicit one of a Simple Query cycle, i.e. on ReadyForQuery 'I'.
 * committed: the transaction committed (no error in an implicit one, the
 * command tag of its end was COMMIT). Tentative SETs then become the path
 * (SET LOCAL ones revert) or are dropped. Not calling it is safe: old paths
 * stay candidates, which only makes decisions stricter. */
void policy_session_txn_end(policy_session_t *ps, bool committed);

/* The search_path candidates believed possible now (see policy_session_apply),
 * for modules that resolve names as the policy does (masking): how many, and
 * the i-th as schema names in order ("$user" as written). */
size_t policy_session_npaths(const policy_session_t *ps);
const char *const *policy_session_path(const policy_session_t *ps, size_t i, size_t *n);
const char *policy_session_user(const policy_session_t *ps);

/* ---- checking ---- */

/* Decide sql[0..len) for role. Never fails open: returns 0 with out filled
 * (allow, review or deny), or -1 when out of memory (out is then a deny with
 * no message; the caller refuses the statement). cache may be NULL. */
int policy_check(const policy_role_t *role, policy_cache_t *cache, policy_session_t *ps,
                 const char *sql, size_t len, policy_result_t *out)
    __attribute__((warn_unused_result));
/* The same; with keep_tree, a text that was parsed (not found in the cache) leaves its
 * parse tree in out->tree for the caller's second look at the statement (masking). */
int policy_check_keep(const policy_role_t *role, policy_cache_t *cache, policy_session_t *ps,
                      const char *sql, size_t len, bool keep_tree, policy_result_t *out)
    __attribute__((warn_unused_result));
void policy_result_free(policy_result_t *r);

/* libpg_query fingerprint of sql[0..len) as 16 hex digits; -1 if it does not parse. */
int policy_fingerprint(const char *sql, size_t len, char out[17])
    __attribute__((warn_unused_result));

const char *policy_decision_name(policy_decision_t d); /* "allow", "review", "deny" */
const char *policy_op_name(policy_op_t op);            /* "select", ..., "unknown" */

/* ---- explain (shared by `bulwark explain` and the tests) ---- */

/* JSON object with stable keys:
 *   {"decision":"deny","rule":"no-ddl","sqlstate":"42501","message":"...",
 *    "position":0,"writes":true,"cache_hit":false,
 *    "statements":[{"text":"...","node":"DropStmt","fingerprint":"...",
 *      "decision":"deny","writes":true,
 *      "accesses":[{"op":"ddl","object":"public.customers","decision":"deny",
 *                   "rule":"no-ddl","matched":["no-ddl"],"without_where":false}]}],
 *    "review":{"approvers":["dba"],"timeout_ms":30000,"mode":"hold"}}   (review only)
 * "rule" is null when the role's default decided. Returns a malloc'd string. */
char *policy_explain_json(const policy_result_t *r, const char *sql, size_t len);
/* The same as a human-readable table. Returns a malloc'd string. */
char *policy_explain_text(const policy_result_t *r, const char *sql, size_t len);

#endif
